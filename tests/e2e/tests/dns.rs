//! Service addresses and the DNS proxy: names only the mesh knows resolve
//! inside pods and lead, over mutual TLS, to a backend on another node;
//! other names still come from the pod's nameserver (dnsmasq here),
//! over UDP and TCP.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use strait_e2e::{
    Mesh, Result, curl_body, http_server, metric_sum, namespace_yaml, require_root, two_nodes,
    workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

const USERS: &str = "users-marker-0d41";
const REVIEWS: &str = "reviews-marker-77e0";
const OUTSIDE: &str = "outside-marker-3b9c";

/// `web` (in the mesh) on n1; `reviews`, `users` (in the mesh), `ext` (a
/// server outside the mesh) and `nsd` (the nameserver) on n2.
fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("web", "n1")
        .pod("reviews", "n2")
        .pod("users", "n2")
        .pod("ext", "n2")
        .pod("nsd", "n2")
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("frontend", true),
        namespace_yaml("default", true),
        namespace_yaml("production", true),
        workload_yaml(topo.pod("web")?, "frontend", "web", &[]),
        workload_yaml(topo.pod("reviews")?, "default", "reviews", &[]),
        workload_yaml(
            topo.pod("users")?,
            "production",
            "users",
            &[("service", "user-service")],
        ),
        "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
spec:
  clusterIP: 10.96.0.20
  selector:
    app: reviews
  ports:
  - name: http
    port: 9080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: user-service
  namespace: production
spec:
  hosts: [user-service.production.global]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels:
      service: user-service
  ports:
  - number: 80
    name: http
    targetPort: 8080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: outside
  namespace: frontend
spec:
  hosts: [outside-svc.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - number: 80
    name: http
    targetPort: 8090
---
"
        .to_string(),
    ]
    .concat())
}

/// dnsmasq in `nsd`: it knows `outside.test` and `outside-svc.test` (both
/// `ext`), and nothing under cluster.local.
fn nameserver(topo: &Topology) -> Result<Process> {
    let (nsd, ext) = (topo.pod("nsd")?, topo.pod("ext")?);
    let pid = nsd.scratch_dir()?.join("dnsmasq.pid");
    let mut dnsmasq = nsd.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={}", nsd.ipv4),
        "--user=root",
        "--local=/cluster.local/",
        &format!("--address=/outside.test/{}", ext.ipv4),
        &format!("--address=/outside-svc.test/{}", ext.ipv4),
        &format!("--pid-file={}", pid.display()),
        "--log-queries",
        "--log-facility=-",
    ])?;
    dnsmasq.wait_listening(53, Duration::from_secs(10))?;
    Ok(dnsmasq)
}

fn resolv_conf(place: &Place, name: &str, text: &str) -> Result<PathBuf> {
    let path = place.scratch_dir()?.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn getent(place: &Place, name: &str) -> Result<String> {
    let out = place.run(&["getent", "hosts", name], Duration::from_secs(15))?;
    if !out.status.success() {
        return Err(format!("getent hosts {name}: {}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn mesh_names_resolve_and_lead_to_backends_over_mtls() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _nsd = nameserver(&topo)?;
    let ns_ip = topo.pod("nsd")?.ipv4;

    // The agents resolve DNS ServiceEntries through the node's resolver.
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        let n = topo.node(node)?;
        let conf = resolv_conf(&n.place, "resolv.conf", &format!("nameserver {ns_ip}\n"))?;
        agents.push(mesh.start_agent_at(n, &n.place.with_resolv_conf(conf), &[])?);
    }
    let _servers = [
        http_server(topo.pod("users")?, 8080, USERS)?,
        http_server(topo.pod("reviews")?, 9080, REVIEWS)?,
        http_server(topo.pod("ext")?, 8090, OUTSIDE)?,
    ];

    let web = topo.pod("web")?;
    let search = "search frontend.svc.cluster.local svc.cluster.local cluster.local\n\
                  options ndots:5 timeout:2 attempts:2\n";
    let udp = web.place.with_resolv_conf(resolv_conf(
        &web.place,
        "resolv.conf",
        &format!("nameserver {ns_ip}\n{search}"),
    )?);
    let tcp = web.place.with_resolv_conf(resolv_conf(
        &web.place,
        "resolv-tcp.conf",
        &format!("nameserver {ns_ip}\n{search}options use-vc\n"),
    )?);

    let capture = topo.node("n1")?.capture("eth0", &["tcp"])?;
    assert_eq!(
        curl_body(&udp, "http://user-service.production.global/marker")?,
        USERS
    );
    assert_eq!(
        curl_body(&udp, "http://reviews.default.svc.cluster.local:9080/marker")?,
        REVIEWS
    );
    // The short form the pod's search path implies.
    assert_eq!(
        curl_body(&udp, "http://reviews.default:9080/marker")?,
        REVIEWS
    );
    let pcap = capture.finish()?;
    assert!(pcap.tls_handshakes() >= 1, "no TLS on the wire");
    for marker in [USERS, REVIEWS] {
        assert!(
            !pcap.contains(marker.as_bytes()),
            "{marker} crossed the wire in the clear"
        );
    }
    let ports = pcap.tcp_ports();
    assert!(ports.contains(&15008), "no HBONE: {ports:?}");
    for plain in [80, 8080, 9080] {
        assert!(
            !ports.contains(&plain),
            "port {plain} on the wire: {ports:?}"
        );
    }

    // A MESH_EXTERNAL entry resolved by DNS: the agent looks the host up and
    // passes the connection through to the entry's target port.
    assert_eq!(curl_body(&udp, "http://outside-svc.test/marker")?, OUTSIDE);

    // Names the mesh does not know come from the pod's nameserver, through
    // the proxy; over TCP as well.
    let ext_ip = topo.pod("ext")?.ipv4.to_string();
    for (place, proto) in [(&udp, "udp"), (&tcp, "tcp")] {
        let out = getent(place, "outside.test")?;
        assert!(
            out.starts_with(&ext_ip),
            "{proto}: outside.test gave {out:?}"
        );
        let out = getent(place, "reviews.default.svc.cluster.local")?;
        assert!(
            out.starts_with("10.96.0.20"),
            "{proto}: reviews gave {out:?}"
        );
        let out = getent(place, "user-service.production.global")?;
        let ip: IpAddr = out
            .split_whitespace()
            .next()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| format!("{proto}: no address in {out:?}"))?;
        assert!(
            matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]),
            "{proto}: not an allocated address: {ip}"
        );
    }
    assert!(
        getent(&udp, "nowhere.test").is_err(),
        "an unknown name must not resolve"
    );

    let metrics = mesh.metrics("n1")?;
    let asked = metric_sum(&metrics, "istio_dns_requests_total", &[]);
    let forwarded = metric_sum(&metrics, "istio_dns_upstream_requests_total", &[]);
    println!("DNS queries at n1's proxy: {asked}, forwarded: {forwarded}");
    assert!(forwarded >= 2, "forwarded {forwarded}");
    assert!(asked > forwarded, "asked {asked}, forwarded {forwarded}");
    let capture = mesh.straitctl("n1", &["capture"])?;
    assert!(
        capture.contains("dns_redirected") && capture.contains("dns_answer_restored"),
        "{capture}"
    );
    Ok(())
}

/// DNS over UDP by hand: `ask(sock, addr_or_None, name)` sends an A query
/// (to `addr`, or on a connected socket), `answer(sock)` returns
/// (first A record, source address).
const DNS_PY: &str = r#"
import random, socket, struct
def query(name):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
def ask(sock, addr, name):
    if addr is None:
        sock.send(query(name))
    else:
        sock.sendto(query(name), addr)
def answer(sock):
    data, src = sock.recvfrom(4096)
    ancount = struct.unpack(">H", data[6:8])[0]
    if ancount == 0:
        return None, src[0]
    return socket.inet_ntoa(data[-4:]), src[0]
"#;

/// Two sockets ask two nameservers the same name, interleaved: each query
/// is forwarded to the nameserver it was sent to (not the one asked last),
/// and each answer appears to come from it.
#[test]
fn each_query_goes_to_the_nameserver_it_was_sent_to() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[("web", "n1"), ("nsd1", "n2"), ("nsd2", "n2")]))?;
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            workload_yaml(topo.pod("web")?, "frontend", "web", &[]),
        ]
        .concat(),
    )?;
    let _agent = mesh.start_agent("n1", &[])?;
    let mut servers = Vec::new();
    for (pod, answer) in [("nsd1", "192.0.2.1"), ("nsd2", "192.0.2.2")] {
        let nsd = topo.pod(pod)?;
        let mut dnsmasq = nsd.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={}", nsd.ipv4),
            "--user=root",
            &format!("--address=/who.test/{answer}"),
            &format!(
                "--pid-file={}",
                nsd.scratch_dir()?.join("dnsmasq.pid").display()
            ),
        ])?;
        dnsmasq.wait_listening(53, Duration::from_secs(10))?;
        servers.push(dnsmasq);
    }
    let (ns1, ns2) = (topo.pod("nsd1")?.ipv4, topo.pod("nsd2")?.ipv4);
    let script = format!(
        "{DNS_PY}
import sys
ns1, ns2 = (sys.argv[1], 53), (sys.argv[2], 53)
out = []
for connected in (False, True):
    for order in ((ns1, ns2), (ns2, ns1)):
        socks = []
        for ns in order:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            if connected:
                s.connect(ns)
            socks.append(s)
        for s, ns in zip(socks, order):
            ask(s, None if connected else ns, 'who.test')
        for s, ns in zip(socks, order):
            ip, src = answer(s)
            out.append('%s:%s<-%s' % (ns[0], ip, src))
print(' '.join(out))
"
    );
    let web = topo.pod("web")?;
    let out = web.run_ok(
        &["python3", "-c", &script, &ns1.to_string(), &ns2.to_string()],
        Duration::from_secs(60),
    )?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("{said}");
    for pair in said.split_whitespace() {
        let (asked, rest) = pair.split_once(':').ok_or("bad line")?;
        let (ip, src) = rest.split_once("<-").ok_or("bad line")?;
        let want = if asked == ns1.to_string() {
            "192.0.2.1"
        } else {
            "192.0.2.2"
        };
        assert_eq!(
            ip, want,
            "a query to {asked} was answered by the other nameserver: {said}"
        );
        assert_eq!(src, asked, "the answer did not come from {asked}: {said}");
    }
    let metrics = mesh.metrics("n1")?;
    assert!(metric_sum(&metrics, "istio_dns_upstream_requests_total", &[]) >= 8);
    Ok(())
}

/// One pod floods the DNS proxy with queries to a nameserver that never
/// answers: it is held to its share (queries dropped, counted), the agent's
/// descriptors stay bounded, and another pod's lookups keep being answered.
#[test]
fn a_dns_flood_from_one_pod_leaves_the_others_answered() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[
        ("web", "n1"),
        ("flood", "n1"),
        ("nsd", "n2"),
        ("ext", "n2"),
    ]))?;
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            workload_yaml(topo.pod("web")?, "frontend", "web", &[]),
            workload_yaml(topo.pod("flood")?, "frontend", "flood", &[]),
        ]
        .concat(),
    )?;
    let agent = mesh.start_agent("n1", &[])?;
    let _nsd = nameserver(&topo)?;
    let fds =
        |pid: u32| -> Result<usize> { Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count()) };
    let before = fds(agent.pid())?;

    // 20,000 queries, as fast as one process sends them, to an address in
    // n2's pod subnet where nothing answers.
    let flood_script = format!(
        "{DNS_PY}
import sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
for i in range(20000):
    ask(socks[i % 50], ('10.2.0.250', 53), 'q%d.nowhere.test' % i)
print('sent 20000', flush=True)
"
    );
    let mut flood = topo
        .pod("flood")?
        .spawn(&["python3", "-c", &flood_script])?;

    // web asks the real nameserver meanwhile, one query after another.
    let nsd = topo.pod("nsd")?.ipv4;
    let web_script = format!(
        "{DNS_PY}
import sys, time
ok = fail = 0
worst = 0.0
for i in range(200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        ask(s, (sys.argv[1], 53), 'outside.test')
        ip, _ = answer(s)
        ok += ip is not None
        fail += ip is None
    except OSError:
        fail += 1
    worst = max(worst, time.monotonic() - t)
    s.close()
print(ok, fail, '%.3f' % worst)
"
    );
    let web = topo.pod("web")?;
    let out = web.run_ok(
        &["python3", "-c", &web_script, &nsd.to_string()],
        Duration::from_secs(700),
    )?;
    let peak = fds(agent.pid())?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    flood.wait_timeout(Duration::from_secs(60))?;
    let metrics = mesh.metrics("n1")?;
    let dropped = metric_sum(&metrics, "strait_dns_dropped_total", &[]);
    println!(
        "web's 200 lookups during the flood (answered, failed, slowest s): {said}; agent descriptors {before} -> {peak}; flood queries dropped {dropped}"
    );
    let mut fields = said.split_whitespace();
    let (ok, failed) = (fields.next(), fields.next());
    assert_eq!((ok, failed), (Some("200"), Some("0")), "{said}");
    assert!(dropped > 0, "the flood was not held to its share");
    assert!(
        peak < before + 200,
        "the agent holds {peak} descriptors (from {before})"
    );
    Ok(())
}
