//! `cargo xtask demo --kube`: the same mesh fed by real API servers instead
//! of a directory. Two clusters on one network, each with its own
//! kube-apiserver, etcd and CA (one shared root); strait's CRDs applied
//! with kubectl; pods created and made ready as a kubelet would, enrolled
//! by their nodes' agents, which authenticate to the CA with their own
//! pods' ServiceAccount tokens. A service that spans both clusters fails
//! over from one to the other, and keeps working while the other
//! cluster's API server is down.
use std::{path::Path, time::Instant};

use anyhow::{Context, Result, bail};
use strait_e2e::{Mesh, http_server, kube, kube::ApiServer, metric_sum, monotonic_now, node_yaml};
use strait_topology::{Locality, Spec, Topology};

use crate::{
    cmd::{self, section},
    demo::{answer_url, boxed, print_topology, teardown},
};

const HTTP_PORT: u16 = 8080;
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// (node, cluster, region, zone); the first node of each cluster runs its
/// control plane.
const NODES: [(&str, &str, &str, &str); 3] = [
    ("east-1", "east", "us-east", "us-east-1a"),
    ("east-2", "east", "us-east", "us-east-1a"),
    ("west-1", "west", "us-east", "us-east-1b"),
];

/// (pod, node, service account, app label).
const PODS: [(&str, &str, &str, &str); 3] = [
    ("frontend", "east-1", "frontend", "frontend"),
    ("backend-east", "east-2", "backend", "backend"),
    ("backend-west", "west-1", "backend", "backend"),
];

fn spec() -> Spec {
    let mut spec = Spec::new();
    for (name, cluster, region, zone) in NODES {
        spec = spec.node(name, cluster, "mesh-net", Locality::new(region, zone, ""));
    }
    for (pod, node, _, _) in PODS {
        spec = spec.pod(pod, node);
    }
    spec
}

/// One cluster's objects: the namespace, its nodes, its pods, the Service.
fn objects(topo: &Topology, cluster: &str) -> Result<String> {
    let mut yaml = String::from(
        "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080}]
---
",
    );
    for (node, in_cluster, region, zone) in NODES {
        if in_cluster == cluster {
            yaml.push_str(&node_yaml(node, region, zone));
        }
    }
    for (pod, node, account, app) in PODS {
        if NODES.iter().any(|n| n.0 == node && n.1 == cluster) {
            yaml.push_str(&kube::pod_yaml(
                topo.pod(pod)?,
                "shop",
                account,
                &[("app", app)],
            ));
        }
    }
    Ok(yaml)
}

fn cluster_of(node: &str) -> &'static str {
    NODES.iter().find(|n| n.0 == node).map_or("", |n| n.1)
}

pub fn run() -> Result<()> {
    let bin = cmd::build_release(&["strait-agent", "strait-ca", "straitctl"])?;

    section("topology: two clusters (east, west) on one network");
    let topo = Topology::create(spec()).context("creating the demo topology")?;
    print_topology(&topo);

    section("control planes: a kube-apiserver and etcd per cluster (built by setup)");
    let mut apis = Vec::new();
    for cluster in ["east", "west"] {
        let node = topo.node(&format!("{cluster}-1"))?;
        let started = Instant::now();
        let api = ApiServer::start(&node.place, node.addrs.ipv4.into(), cluster).map_err(boxed)?;
        println!(
            "  {cluster}: kube-apiserver {} at https://{} on {}, ready in {:.1} s",
            kube::VERSION,
            api.address,
            node.name(),
            started.elapsed().as_secs_f64()
        );
        apis.push(api);
    }

    section("CRDs generated from strait's types: straitctl crds | kubectl apply -f -");
    let crds = std::process::Command::new(bin.join("straitctl"))
        .arg("crds")
        .output()
        .context("straitctl crds")?;
    let crds = String::from_utf8(crds.stdout)?;
    for (api, cluster) in apis.iter().zip(["east", "west"]) {
        let out = api.apply(&crds).map_err(boxed)?;
        println!("  {cluster}: {} CRDs created", out.lines().count());
    }

    section("objects: namespace shop (in the mesh), Nodes, Pods, Service backend in both");
    for (api, cluster) in apis.iter().zip(["east", "west"]) {
        api.apply(&objects(&topo, cluster)?).map_err(boxed)?;
        println!("  {cluster}: kubectl apply -f shop.yaml");
    }

    section("a CA and agents per cluster; agents read their cluster and the other one");
    let scratch = topo.scratch_dir();
    let mut meshes = Vec::new();
    for (api, (cluster, other)) in apis.iter().zip([("east", "west"), ("west", "east")]) {
        let mut mesh = Mesh::with_bin_dir(&topo, bin.clone()).map_err(boxed)?;
        mesh.kubeconfig = Some(api.strait_kubeconfig().map_err(boxed)?);
        let flags = ["--agent-service-account", kube::AGENT_SERVICE_ACCOUNT];
        let mesh = mesh
            .with_ca(api.ca_kubeconfig().map_err(boxed)?, &flags)
            .with_ca_on(&format!("{cluster}-1"));
        meshes.push((mesh, cluster, other));
    }
    let roots = meshes[0].0.roots_dir().map_err(boxed)?;
    let mut agents = Vec::new();
    for (i, (mesh, cluster, other)) in meshes.iter().enumerate() {
        let remotes = scratch.join(format!("remotes-{cluster}"));
        std::fs::create_dir_all(&remotes)?;
        let other_api = &apis[1 - i];
        std::fs::copy(
            other_api.strait_kubeconfig().map_err(boxed)?,
            remotes.join(other),
        )?;
        for (node, _, _, _) in NODES.iter().filter(|n| n.1 == *cluster) {
            let (_, token) = apis[i].agent_token(node, &scratch).map_err(boxed)?;
            let flags = [
                ("--cluster", *cluster),
                ("--remote-kubeconfigs", path(&remotes)?),
                ("--ca-token", path(&token)?),
                ("--credential-dir", path(&roots)?),
            ];
            agents.push(mesh.start_agent(node, &flags).map_err(boxed)?);
            println!(
                "  agent on {node}: cluster {cluster}, remote cluster {other}, its pod's token for the CA"
            );
        }
    }

    section("pods made ready as a kubelet would: enrolled by their nodes' agents");
    let written = Instant::now();
    for (pod, node, _, _) in PODS {
        let api = &apis[usize::from(cluster_of(node) == "west")];
        api.make_ready("shop", topo.pod(pod)?).map_err(boxed)?;
    }
    for (pod, node, account, _) in PODS {
        let mesh = &meshes[usize::from(cluster_of(node) == "west")].0;
        mesh.wait_state(node, pod, WAIT, |s| s == "captured")
            .map_err(boxed)?;
        println!(
            "  {pod:<13} on {node}: captured, spiffe://cluster.local/ns/shop/sa/{account} ({:.2} s after the status)",
            written.elapsed().as_secs_f64()
        );
    }
    let east = &meshes[0].0;
    let mut ca_line = String::new();
    for (mesh, cluster, _) in &meshes {
        let metrics = mesh.ca_metrics("mesh-net").map_err(boxed)?;
        ca_line.push_str(&format!(
            " {cluster}: {} signed;",
            metric_sum(&metrics, "strait_ca_requests_total", &["result=\"signed\""])
        ));
    }
    println!("  CAs (TokenReview of the agents' tokens):{ca_line}");

    section("traffic: frontend (east) -> Service backend, which both clusters serve");
    let mut servers = Vec::new();
    for pod in ["backend-east", "backend-west"] {
        servers.push(
            http_server(topo.pod(pod)?, HTTP_PORT, &format!("hello from {pod}")).map_err(boxed)?,
        );
    }
    let vip = apis[0].cluster_ip("shop", "backend").map_err(boxed)?;
    let frontend = topo.pod("frontend")?;
    let capture = topo.node("east-1")?.capture("eth0", &["tcp"])?;
    let url = format!("http://{vip}:{HTTP_PORT}/marker");
    println!("  curl {url} {}", answer_url(frontend, &url)?);
    let pcap = capture.finish()?;
    let leaked = pcap.contains(b"GET /") || pcap.contains(b"hello from");
    println!(
        "  on the wire (east-1 eth0): {} TLS ClientHello(s), HTTP in the clear: {}",
        pcap.tls_handshakes(),
        if leaked { "YES" } else { "none" }
    );
    if leaked || pcap.tls_handshakes() == 0 {
        bail!("the traffic between the nodes was not mutual TLS");
    }
    show_endpoints(east)?;

    section("failover across clusters: backend-east's server dies");
    let load =
        |since| strait_e2e::connections(frontend, vip, HTTP_PORT, 500, 4, since).map_err(boxed);
    let got = load(0.0)?;
    println!(
        "  500 connections: {:?}, failed {}",
        got.answers, got.failures
    );
    servers[0].kill()?;
    let killed = monotonic_now();
    let got = load(killed)?;
    println!(
        "  500 connections after the kill: {:?}, failed {}; first answer from west {:.0} ms after it",
        got.answers,
        got.failures,
        got.first_of(&["hello from backend-west"])
            .unwrap_or(f64::NAN)
    );
    if got.failures > 0 || got.count(&["hello from backend-west"]) != got.total() {
        bail!("failover to the other cluster did not take every connection");
    }

    section("cluster west's API server stops: what it listed is kept, marked stale");
    apis[1].stop().map_err(boxed)?;
    let away = east
        .wait_metric(
            "east-1",
            "strait_cluster_connected",
            &["cluster=\"west\""],
            0,
            WAIT,
        )
        .map_err(boxed)?;
    println!(
        "  east-1 noticed after {:.2} s; its readiness says:",
        away.as_secs_f64()
    );
    for line in east.readiness("east-1").map_err(boxed)?.lines() {
        println!("    {line}");
    }
    show_endpoints(east)?;
    let got = load(0.0)?;
    println!(
        "  500 connections: {:?}, failed {}",
        got.answers, got.failures
    );
    if got.failures > 0 {
        bail!("connections failed while west's API server was away");
    }

    section("bad input through kubectl: refused with a reason, nothing else changes");
    let bad = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: shop}
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east/*
          to: {us-east/us-east-1a/*: 80, us-east/us-east-1b/*: 30}
";
    apis[0].apply(bad).map_err(boxed)?;
    println!(
        "  kubectl apply of a DestinationRule whose weights sum to 110: taken by the API server"
    );
    let started = Instant::now();
    let line = loop {
        let dump = east.admin("east-1", "/config_dump").map_err(boxed)?;
        if let Some(line) = dump["reload"]["left_out"][0].as_str() {
            break line.to_owned();
        }
        if started.elapsed() > WAIT {
            bail!("the bad DestinationRule was not left out");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    println!("  the agent leaves it out: {line}");
    let typo = bad.replace("distribute:", "distributed:");
    let file = apis[0].scratch_file("typo.yaml", &typo).map_err(boxed)?;
    let out = apis[0].kubectl(&["apply", "-f", &file]).map_err(boxed)?;
    println!(
        "  kubectl apply with a misspelt field: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("(accepted)")
    );
    println!("  curl {url} {}", answer_url(frontend, &url)?);

    // The API servers run in the topology's namespaces: they go first.
    drop(meshes);
    drop(apis);
    teardown(agents, topo, ", the API servers")
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a UTF-8 path")
}

fn show_endpoints(mesh: &Mesh<'_>) -> Result<()> {
    let table = mesh
        .straitctl("east-1", &["endpoints", "backend.shop"])
        .map_err(boxed)?;
    for line in table.lines() {
        println!("  {line}");
    }
    Ok(())
}
