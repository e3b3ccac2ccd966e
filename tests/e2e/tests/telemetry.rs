//! Istio's standard TCP metrics, exactly, read by a real Prometheus.
//!
//! Two clusters on one network, each with its own API server and CA: pod
//! `sleep` of Deployment `sleep` in cluster c1 reaches Service `web`,
//! whose endpoint is pod `web` of Deployment `web-v2` in cluster c2. Every
//! label of every `istio_tcp_*` series both agents report for those
//! connections is compared with what Istio's documentation defines for it;
//! a connection held open for 30 s shows its bytes growing in Prometheus
//! before it closes; the PromQL of Istio's mesh, service and workload
//! dashboards answers with the connections and bytes sent, exactly.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result,
    kube::ApiServer,
    node_yaml,
    prometheus::{Prometheus, Sample},
    require_root, wait_for, wait_for_line_prefix,
};
use strait_topology::{Locality, Pod, Spec, Topology};

const WAIT: Duration = Duration::from_secs(30);
const SHORT: u32 = 20;
const SHORT_BYTES: u64 = 1_000;
const STEP_BYTES: u64 = 10_000;
const HELD: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/sleep";
const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c2", "net1", Locality::new("r1", "z2", ""))
        .pod("sleep", "n1")
        .pod("web", "n2")
}

/// The namespace and Service `web` (both clusters have them), the node,
/// and `pod` as its Deployment's ReplicaSet made it.
fn objects(node: &str, zone: &str, pod: &Pod, deployment: &str, labels: &str) -> String {
    let hash = "7c9d8f6b5";
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app.kubernetes.io/name: web}}
  ports: [{{name: tcp-echo, port: 80, targetPort: 8080}}]
---
{node}apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {{pod-template-hash: '{hash}', {labels}}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: {deployment}-{hash}, uid: 0b6e4a52-1f7c-4d1e-9a55-3c2f0e9d7a11, controller: true}}
spec:
  nodeName: {node_name}
  serviceAccountName: {sa}
  automountServiceAccountToken: false
  containers: [{{name: app, image: none}}]
---
",
        node = node_yaml(node, "r1", zone),
        node_name = node,
        name = pod.name,
        sa = pod.name,
    )
}

/// The server: per request, a header of two 10-digit numbers (the payload
/// that follows, the answer wanted), then the payload; answers that many
/// bytes. Requests and answers differ in size, so the two directions'
/// counters cannot be taken for each other.
const SERVER: &str = r#"
import socket, socketserver, sys
class Handler(socketserver.BaseRequestHandler):
    def read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.request.recv(min(65536, n - len(data)))
            if not chunk:
                return None
            data += chunk
        return data
    def handle(self):
        while True:
            header = self.read(20)
            if header is None or self.read(int(header[:10])) is None:
                return
            self.request.sendall(b"y" * int(header[10:]))
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// The client: `SHORT` connections that each make one request of
/// `SHORT_BYTES` (answered with a quarter as many), then one connection
/// held open that makes a request of `STEP_BYTES` each time the test
/// creates file `step-N` in its directory, and closes when it creates
/// `close`.
const CLIENT: &str = r#"
import os, socket, sys, time
ip, port, short, short_bytes, step_bytes, dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def ask(s, n):
    answer = n // 4
    s.sendall(b"%010d%010d" % (n - 20, answer) + b"x" * (n - 20))
    got = 0
    while got < answer:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed early")
        got += len(chunk)
for _ in range(short):
    s = socket.create_connection((ip, port), timeout=10)
    ask(s, short_bytes)
    s.close()
print("short done", flush=True)
s = socket.create_connection((ip, port), timeout=10)
print("held open", flush=True)
step = 0
while True:
    if os.path.exists(os.path.join(dir, "close")):
        break
    if os.path.exists(os.path.join(dir, "step-%d" % step)):
        ask(s, step_bytes)
        print("step", step, flush=True)
        step += 1
        continue
    time.sleep(0.02)
s.close()
print("closed after", step, flush=True)
"#;

#[test]
fn istio_tcp_metrics_have_istios_labels_and_prometheus_answers_the_dashboards() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let (n1, n2) = (topo.node("n1")?, topo.node("n2")?);
    let (sleep, web) = (topo.pod("sleep")?, topo.pod("web")?);
    let api1 = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let api2 = ApiServer::start(&n2.place, n2.addrs.ipv4.into(), "c2")?;
    api1.apply(&objects(
        "n1",
        "z1",
        sleep,
        "sleep",
        "app: sleep, version: v1",
    ))?;
    api2.apply(&objects(
        "n2",
        "z2",
        web,
        "web-v2",
        "app.kubernetes.io/name: web, app.kubernetes.io/version: v2",
    ))?;
    let (kube1, kube2) = (api1.strait_kubeconfig()?, api2.strait_kubeconfig()?);
    let mesh1 = Mesh::with_cluster(&topo, kube1.clone())?;
    let mesh2 = Mesh::with_cluster(&topo, kube2.clone())?.with_ca_on("n2");
    let scratch = topo.scratch_dir();
    let to_c2 = strait_e2e::kube::remote_dir(&scratch.join("remotes-c1"), "c2", &kube2)?;
    let to_c1 = strait_e2e::kube::remote_dir(&scratch.join("remotes-c2"), "c1", &kube1)?;
    let _agents = [
        mesh1.start_agent(
            "n1",
            &[
                ("--cluster", "c1"),
                ("--remote-kubeconfigs", to_c2.as_str()),
            ],
        )?,
        mesh2.start_agent(
            "n2",
            &[
                ("--cluster", "c2"),
                ("--remote-kubeconfigs", to_c1.as_str()),
            ],
        )?,
    ];
    api1.make_ready("shop", sleep)?;
    api2.make_ready("shop", web)?;
    mesh1.wait_state("n1", "sleep", WAIT, |s| s == "captured")?;
    mesh2.wait_state("n2", "web", WAIT, |s| s == "captured")?;
    let mut server = web.place.spawn(&["python3", "-c", SERVER, "8080"])?;
    server.wait_listening(8080, WAIT)?;

    // Prometheus, in node n1's namespace, scrapes both agents and both CAs.
    let cas: Vec<String> = ["net1"]
        .iter()
        .flat_map(|net| [mesh1.ca_of(net), mesh2.ca_of(net)])
        .flatten()
        .map(|(_, addr, _)| std::net::SocketAddr::new(addr.ip(), addr.port() + 2).to_string())
        .collect();
    let agents: Vec<String> = [n1, n2]
        .iter()
        .map(|n| format!("{}:15020", n.addrs.ipv4))
        .collect();
    let targets = agents.len() + cas.len();
    println!("Prometheus scrapes agents {agents:?} and CAs {cas:?}");
    let prometheus = Prometheus::start(
        &n1.place,
        n1.addrs.ipv4.into(),
        &scratch.join("prometheus"),
        &[("strait-agents", agents), ("strait-ca", cas)],
    )?;
    prometheus.wait_up(targets, Duration::from_secs(60))?;

    // The client's connections, through cluster 1's address of the service.
    let vip = api1.cluster_ip("shop", "web")?;
    let steps_dir = scratch.join("client-steps");
    std::fs::create_dir_all(&steps_dir)?;
    let mut client = sleep.place.spawn(&[
        "python3",
        "-c",
        CLIENT,
        &vip.to_string(),
        "80",
        &SHORT.to_string(),
        &SHORT_BYTES.to_string(),
        &STEP_BYTES.to_string(),
        &steps_dir.display().to_string(),
    ])?;
    wait_for_line_prefix(&mut client, "held open", Duration::from_secs(120))?;
    let opened_at = Instant::now();

    // Held open: each step's bytes show in Prometheus, from both ends,
    // while the connection is still open.
    let received = |reporter: &str| {
        format!(
            "sum(istio_tcp_received_bytes_total{{reporter=\"{reporter}\", source_workload=\"sleep\", destination_service=\"web.shop.svc.cluster.local\"}})"
        )
    };
    let open = "sum(istio_tcp_connections_opened_total{reporter=\"destination\", destination_workload=\"web-v2\"}) - sum(istio_tcp_connections_closed_total{reporter=\"destination\", destination_workload=\"web-v2\"})";
    let short_total = u64::from(SHORT) * SHORT_BYTES;
    let mut seen = Vec::new();
    let mut step = 0u64;
    while step < 3 || opened_at.elapsed() < HELD {
        std::fs::write(steps_dir.join(format!("step-{step}")), "")?;
        step += 1;
        let want = (short_total + step * STEP_BYTES) as f64;
        let (source, destination, open_now) =
            wait_for(&format!("step {step} in Prometheus"), WAIT, || {
                let source = prometheus.value(&received("source")).ok()?;
                let destination = prometheus.value(&received("destination")).ok()?;
                let open_now = prometheus.value(open).ok()?;
                (source >= want && destination >= want).then_some((source, destination, open_now))
            })?;
        assert_eq!(source, want, "source reporter");
        assert_eq!(destination, want, "destination reporter");
        assert_eq!(open_now, 1.0, "the held connection is open in Prometheus");
        seen.push((opened_at.elapsed().as_secs_f64(), destination));
    }
    println!(
        "held connection, received bytes in Prometheus while open (s, bytes): {}",
        seen.iter()
            .map(|(t, b)| format!("({t:.1}, {b})"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(
        seen.windows(2).all(|w| w[1].1 > w[0].1),
        "growing: {seen:?}"
    );
    // Both agents list the held connection as open, with both identities
    // and its bytes so far.
    let so_far = short_total + step * STEP_BYTES;
    for (node, mesh) in [("n1", &mesh1), ("n2", &mesh2)] {
        let open: serde_json::Value =
            serde_json::from_str(&mesh.straitctl(node, &["connections", "-o", "json"])?)?;
        let held: Vec<&serde_json::Value> = open
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["source_principal"] == CLIENT_ID && c["destination_principal"] == WEB_ID)
            .collect();
        let [held] = held.as_slice() else {
            panic!("{node}: one open connection from sleep to web wanted: {open}");
        };
        assert_eq!(held["service"], "shop/web", "{held}");
        assert_eq!(held["bytes_received"], so_far - short_total, "{held}");
        assert_eq!(held["bytes_sent"], (so_far - short_total) / 4, "{held}");
        println!("{node}: {}", mesh.straitctl(node, &["connections"])?);
    }
    std::fs::write(steps_dir.join("close"), "")?;
    wait_for_line_prefix(&mut client, "closed after", WAIT)?;
    let held_for = opened_at.elapsed();
    println!("held for {:.1} s over {step} steps", held_for.as_secs_f64());
    let connections = u64::from(SHORT) + 1;
    // What the client sent, and what came back: Istio's `received` and
    // `sent`, from either reporter.
    let bytes = short_total + step * STEP_BYTES;
    let answered = bytes / 4;
    // Both ends' closes scraped (each agent's next scrape).
    let closed = "sum(istio_tcp_connections_closed_total{source_workload=\"sleep\"})";
    wait_for("the close in Prometheus, from both ends", WAIT, || {
        let both = prometheus.value(closed).ok()? == (2 * connections) as f64;
        (both && prometheus.value(open).ok()? == 0.0).then_some(())
    })?;

    // Every label of every series, from both agents' own endpoints.
    for (reporter, node) in [("source", "n1"), ("destination", "n2")] {
        let metrics = if node == "n1" {
            mesh1.metrics(node)?
        } else {
            mesh2.metrics(node)?
        };
        for (metric, value) in [
            ("istio_tcp_connections_opened_total", connections),
            ("istio_tcp_connections_closed_total", connections),
            ("istio_tcp_received_bytes_total", bytes),
            ("istio_tcp_sent_bytes_total", answered),
        ] {
            let series = series_of(&metrics, metric, "source_workload=\"sleep\"");
            let [(labels, got)] = series.as_slice() else {
                panic!("{reporter}: {metric}: one series wanted: {series:?}");
            };
            assert_eq!(labels, &expected(reporter), "{reporter}: {metric}");
            assert_eq!(*got, value, "{reporter}: {metric}");
        }
        println!(
            "{reporter} ({node}): {} labels as Istio defines them; {connections} connections, {bytes} bytes received, {answered} sent",
            expected(reporter).len()
        );
    }

    // The dashboards' PromQL (Istio's mesh, service and workload
    // dashboards, TCP panels), summed over the counters for exact answers.
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let answers: Vec<Panel> = vec![
        (
            "mesh: TCP bytes sent by service and workload",
            "sum by (destination_workload, destination_workload_namespace, destination_service) (istio_tcp_sent_bytes_total{reporter=\"destination\"})".to_string(),
            vec![
                ("destination_workload", "web-v2"),
                ("destination_service", "web.shop.svc.cluster.local"),
            ],
            answered as f64,
        ),
        (
            "mesh: TCP bytes received by service and workload",
            "sum by (destination_workload, destination_workload_namespace, destination_service) (istio_tcp_received_bytes_total{reporter=\"destination\"})".to_string(),
            vec![
                ("destination_workload", "web-v2"),
                ("destination_workload_namespace", "shop"),
            ],
            bytes as f64,
        ),
        (
            "service: incoming TCP bytes by source",
            format!(
                "sum by (source_workload, source_workload_namespace) (istio_tcp_received_bytes_total{{reporter=\"destination\", {mtls}, destination_service=~\"web.shop.svc.cluster.local\"}})"
            ),
            vec![
                ("source_workload", "sleep"),
                ("source_workload_namespace", "shop"),
            ],
            bytes as f64,
        ),
        (
            "service: TCP connections opened by source",
            "sum by (source_workload, source_workload_namespace) (istio_tcp_connections_opened_total{reporter=\"destination\", destination_service=~\"web.shop.svc.cluster.local\"})".to_string(),
            vec![("source_workload", "sleep")],
            connections as f64,
        ),
        (
            "workload: inbound TCP bytes sent, by source",
            format!(
                "sum by (source_workload, source_workload_namespace) (istio_tcp_sent_bytes_total{{reporter=\"destination\", {mtls}, destination_workload_namespace=~\"shop\", destination_workload=~\"web-v2\"}})"
            ),
            vec![("source_workload", "sleep")],
            answered as f64,
        ),
        (
            "workload: outbound TCP bytes received, by destination service",
            format!(
                "sum by (destination_service) (istio_tcp_received_bytes_total{{reporter=\"source\", {mtls}, source_workload_namespace=~\"shop\", source_workload=~\"sleep\"}})"
            ),
            vec![("destination_service", "web.shop.svc.cluster.local")],
            bytes as f64,
        ),
        (
            "workload: outbound TCP connections closed, by destination workload",
            "sum by (destination_workload, destination_cluster) (istio_tcp_connections_closed_total{reporter=\"source\", source_workload=~\"sleep\"})".to_string(),
            vec![
                ("destination_workload", "web-v2"),
                ("destination_cluster", "c2"),
            ],
            connections as f64,
        ),
    ];
    for (panel, promql, labels, want) in answers {
        let samples = prometheus.query(&promql)?;
        let [Sample { labels: got, value }] = samples.as_slice() else {
            panic!("{panel}: one series wanted from {promql}: {samples:?}");
        };
        for (k, v) in labels {
            assert_eq!(got.get(k).map(String::as_str), Some(v), "{panel}: {got:?}");
        }
        assert_eq!(*value, want, "{panel}");
        println!("{panel}: {value} ({got:?})");
    }
    // The panels' own rate() form answers too while bytes are recent.
    let rate = prometheus.query(
        "sum by (source_workload) (rate(istio_tcp_received_bytes_total{reporter=\"destination\", destination_service=~\"web.shop.svc.cluster.local\"}[5m]))",
    )?;
    assert!(
        rate.iter().any(
            |s| s.labels.get("source_workload").map(String::as_str) == Some("sleep")
                && s.value > 0.0
        ),
        "{rate:?}"
    );
    // The CAs are scraped too: the certificates they signed.
    let signed = prometheus.query("sum by (job) (up{job=\"strait-ca\"})")?;
    assert_eq!(signed.first().map(|s| s.value), Some(2.0), "{signed:?}");
    Ok(())
}

/// One dashboard panel's query, the labels its one series must have, and
/// its value.
type Panel = (&'static str, String, Vec<(&'static str, &'static str)>, f64);

/// Istio's labels for these connections, as its documentation defines
/// them for `reporter`.
fn expected(reporter: &str) -> BTreeMap<String, String> {
    [
        ("reporter", reporter),
        // The Deployment, through its ReplicaSet; no canonical labels, so
        // `app` and `version`.
        ("source_workload", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "shop"),
        ("source_principal", CLIENT_ID),
        ("source_app", "sleep"),
        ("source_version", "v1"),
        ("source_cluster", "c1"),
        ("destination_service", "web.shop.svc.cluster.local"),
        ("destination_service_namespace", "shop"),
        ("destination_service_name", "web"),
        // `app.kubernetes.io/name` and `-/version`.
        ("destination_workload", "web-v2"),
        ("destination_canonical_service", "web"),
        ("destination_canonical_revision", "v2"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", WEB_ID),
        ("destination_app", "web"),
        ("destination_version", "v2"),
        ("destination_cluster", "c2"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The series of `metric` in a text exposition whose labels include
/// `matching`: each one's labels and value.
fn series_of(text: &str, metric: &str, matching: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix(metric)?.strip_prefix('{'))
        .filter(|rest| rest.contains(matching))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((parse_labels(labels), value.trim().parse().ok()?))
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        out.insert(
            key.trim_start_matches(',').to_string(),
            after[..end].to_string(),
        );
        rest = &after[end + 1..];
    }
    out
}
