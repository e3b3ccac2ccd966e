//! The harness shared by the end-to-end tests and `cargo xtask demo`:
//! starting strait's binaries and unmodified client and server programs in a
//! topology.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::Mutex,
    time::{Duration, Instant},
};

use strait_topology::{Locality, Node, Place, Pod, Process, Spec, Topology};

pub mod ca;
pub mod dashboard;
pub mod install;
pub mod kube;
pub mod kubelet;
pub mod l7;
pub mod portforward;
pub mod prometheus;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A strait binary built next to the test binaries (`cargo xtask test`
/// builds them first).
pub fn strait_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("STRAIT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test> -> target/<profile>
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
                .unwrap_or_default()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, or run `cargo xtask test`)",
        path.display()
    );
    path
}

/// These tests make namespaces, cgroups and eBPF programs: they need root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (run `cargo xtask test` as root)"
    );
}

/// Two nodes of one cluster and network, in two zones of one region
/// (`n1` in r1/z1, `n2` in r1/z2), with `pods` as (name, node).
pub fn two_nodes(pods: &[(&str, &str)]) -> Spec {
    pods.iter().fold(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z2", "")),
        |spec, (pod, node)| spec.pod(pod, node),
    )
}

/// A process's resident memory (KiB) and open descriptors.
pub fn footprint(pid: u32) -> Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

/// Two networks of two nodes with two pods each. Node `a1` and `b1` are the
/// gateways; the `a` nodes are cluster `c1` in region `r1`, the `b` nodes
/// cluster `c2` in region `r2`.
pub fn two_networks() -> Spec {
    let mut spec = Spec::new()
        .gateway_node("a1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("a2", "c1", "net1", Locality::new("r1", "z2", ""))
        .gateway_node("b1", "c2", "net2", Locality::new("r2", "z1", ""))
        .node("b2", "c2", "net2", Locality::new("r2", "z2", ""));
    for node in ["a1", "a2", "b1", "b2"] {
        for pod in ["x", "y"] {
            spec = spec.pod(&format!("{node}{pod}"), node);
        }
    }
    spec
}

/// Python's `http.server` (its ThreadingHTTPServer and
/// SimpleHTTPRequestHandler, as `python3 -m http.server` runs them) serving
/// a directory that holds `marker` (with the given content), listening on
/// `port` for IPv4 and IPv6. The one change: a listen backlog of 1024
/// instead of 5, so bursts of connections are not met with dropped SYNs
/// (a 1 s retransmit the mesh would rightly treat as a slow endpoint).
pub fn http_server(place: &Place, port: u16, marker: &str) -> Result<Process> {
    const SCRIPT: &str = r#"
import functools, http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
Server(("::", int(sys.argv[1])), handler).serve_forever()
"#;
    let dir = place.scratch_dir()?.join(format!("www-{port}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("marker"), marker)?;
    let dir = dir.to_string_lossy().into_owned();
    let mut server = place.spawn(&["python3", "-c", SCRIPT, &port.to_string(), &dir])?;
    server.wait_listening(port, Duration::from_secs(10))?;
    Ok(server)
}

/// An HTTP/1.1 app for the L7 tests, on `port` (IPv4 and IPv6), that
/// answers every GET and POST (reading the body) as `behaviour` says:
/// `ok` (200, body `marker`), `fail` (503), `slow` (200 after 2 s), `echo`
/// (200, body `marker path host=<Host> x-route=<x-route header>`),
/// `headers` (200, the request's headers as a JSON object, names in
/// lowercase), `log` (200, body `marker`, and a line `request <path>
/// host=<Host>` on its output for each request).
pub fn http_app(place: &Place, port: u16, behaviour: &str, marker: &str) -> Result<Process> {
    app(place, port, behaviour, marker, None)
}

/// [`http_app`] over TLS, with `cert` and `key` (PEM files).
pub fn https_app(
    place: &Place,
    port: u16,
    behaviour: &str,
    marker: &str,
    (cert, key): (&str, &str),
) -> Result<Process> {
    app(place, port, behaviour, marker, Some((cert, key)))
}

fn app(
    place: &Place,
    port: u16,
    behaviour: &str,
    marker: &str,
    tls: Option<(&str, &str)>,
) -> Result<Process> {
    const SCRIPT: &str = r#"
import http.server, json, socket, ssl, sys, time
port, behaviour, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written apart: without this, Nagle holds the
    # body for the peer's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        while length > 0:
            length -= len(self.rfile.read(min(length, 65536)))
        if behaviour == "slow":
            time.sleep(2)
        code = 503 if behaviour == "fail" else 200
        body = b"failing" if code == 503 else marker
        if behaviour == "echo":
            body = b"%s %s host=%s x-route=%s" % (marker, self.path.encode(),
                (self.headers.get("host") or "").encode(), (self.headers.get("x-route") or "").encode())
        if behaviour == "log":
            print("request %s host=%s" % (self.path, self.headers.get("host") or ""), flush=True)
        if behaviour == "headers":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = answer
    do_POST = answer
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
server = Server(("::", port), Handler)
if len(sys.argv) > 5:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
    let port_arg = port.to_string();
    let mut argv = vec!["python3", "-c", SCRIPT, &port_arg, behaviour, marker];
    if let Some((cert, key)) = tls {
        argv.extend([cert, key]);
    }
    let mut server = place.spawn(&argv)?;
    server.wait_listening(port, Duration::from_secs(10))?;
    Ok(server)
}

/// Runs iperf3 with the server in `server` and the client in `client`, in
/// reverse mode (the server sends, the client receives) with the client's
/// extra `args`; returns (bytes the server sent, bytes the client received).
///
/// Reverse mode, because its receiving end (the client) ends the test only
/// once it has everything. Forward, iperf3's server stops counting when the
/// client's end-of-test message arrives on the control connection, which
/// overtakes data still buffered in any proxy on the way.
pub fn iperf_reverse(
    client: &Place,
    server: &Place,
    server_ip: std::net::IpAddr,
    args: &[&str],
) -> Result<(u64, u64)> {
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-J", "-p", "5201"])?;
    srv.wait_listening(5201, Duration::from_secs(10))?;
    let ip = server_ip.to_string();
    let mut argv = vec!["iperf3", "-c", &ip, "-p", "5201", "-R", "-J"];
    argv.extend_from_slice(args);
    let out = client.run_ok(&argv, Duration::from_secs(120))?;
    let client_json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    srv.wait_timeout(Duration::from_secs(10))?;
    let server_json: serde_json::Value = serde_json::from_str(&srv.log())?;
    let sent = server_json["end"]["sum_sent"]["bytes"]
        .as_u64()
        .ok_or("the iperf3 server reported no bytes sent")?;
    let received = client_json["end"]["sum_received"]["bytes"]
        .as_u64()
        .ok_or("the iperf3 client reported no bytes received")?;
    Ok((sent, received))
}

/// `curl` for `url`, failing fast when nothing answers.
pub fn curl(place: &Place, url: &str) -> Result<Output> {
    Ok(place.run(
        &[
            "curl",
            "-sS",
            "--connect-timeout",
            "2",
            "--max-time",
            "5",
            url,
        ],
        Duration::from_secs(10),
    )?)
}

/// The body [`curl`] fetched; a failed fetch is an error with curl's own
/// words.
pub fn curl_body(place: &Place, url: &str) -> Result<String> {
    let out = curl(place, url)?;
    if !out.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP echo server (`socat`, one `cat` per connection) on `port`, with
/// a listen backlog of 1024 rather than 5, so bursts of connections are
/// not met with dropped SYNs.
pub fn echo_server(place: &Place, port: u16) -> Result<Process> {
    let listen = format!("TCP-LISTEN:{port},fork,reuseaddr,backlog=1024");
    let mut server = place.spawn(&["socat", &listen, "EXEC:cat"])?;
    server.wait_listening(port, Duration::from_secs(10))?;
    Ok(server)
}

/// Holds `n` connections to `ip:port` (an echo server) from `place`: each
/// sends a byte and waits for it back, all kept open for `seconds` (or
/// until the process is dropped). Returns once all were tried, with how
/// many were (served, refused).
pub fn hold_connections(
    place: &Place,
    ip: std::net::IpAddr,
    port: u16,
    n: u32,
    seconds: u32,
) -> Result<(Process, (u64, u64))> {
    const HOLD: &str = r#"
import socket, sys, time
ip, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
for _ in range(n):
    try:
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(b"x")
        socks.append(s)
    except OSError:
        pass
ok = 0
for s in socks:
    try:
        s.settimeout(5)
        if s.recv(1) == b"x":
            ok += 1
    except OSError:
        pass
print("held", ok, n - ok, flush=True)
time.sleep(seconds)
"#;
    let mut hold = place.spawn(&[
        "python3",
        "-c",
        HOLD,
        &ip.to_string(),
        &port.to_string(),
        &n.to_string(),
        &seconds.to_string(),
    ])?;
    wait_for_line_prefix(&mut hold, "held", Duration::from_secs(120))?;
    let counts: Vec<u64> = hold
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("held "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match counts.as_slice() {
        [ok, refused] => Ok((hold, (*ok, *refused))),
        _ => Err(format!("no counts from the holding client: {}", hold.log()).into()),
    }
}

/// `hbone-probe`'s answer (one CONNECT as `source`, to `peer` at `addr`,
/// asking for `authority`; see its doc), run in `place` with `env`
/// (`NAME=value`) set; `ca_dir` holds the mesh root it signs with.
pub fn hbone_probe(
    place: &Place,
    ca_dir: &std::path::Path,
    env: &[&str],
    (source, peer, addr): (&str, &str, &str),
    authority: &str,
) -> Result<String> {
    let probe = strait_bin("hbone-probe").display().to_string();
    let ca_dir = ca_dir.display().to_string();
    let mut argv = vec!["env"];
    argv.extend_from_slice(env);
    argv.extend([probe.as_str(), &ca_dir, source, peer, addr, authority]);
    let out = place.run_ok(&argv, Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One long-lived connection to an echo server: a line every 50 ms for
/// `seconds`, each checked as it comes back. Prints `connected` once the
/// first line came back, `echoed N` and exits 0 when every line came back,
/// non-zero at the first failure.
pub fn echo_client(
    place: &Place,
    ip: std::net::IpAddr,
    port: u16,
    seconds: u32,
) -> Result<Process> {
    const SCRIPT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
f = s.makefile("rwb")
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end:
    line = b"line %d\n" % n
    f.write(line); f.flush()
    if f.readline() != line:
        sys.exit("echo %d did not come back" % n)
    if n == 0:
        print("connected", flush=True)
    n += 1
    time.sleep(0.05)
print("echoed", n, flush=True)
"#;
    Ok(place.spawn(&[
        "python3",
        "-c",
        SCRIPT,
        &ip.to_string(),
        &port.to_string(),
        &seconds.to_string(),
    ])?)
}

/// What [`connections`] saw: which endpoint answered how often, and the
/// failures.
#[derive(Debug, Default)]
pub struct Load {
    pub answers: std::collections::BTreeMap<String, u64>,
    pub failures: u64,
    /// The first few failures' errors.
    pub errors: Vec<String>,
    /// When each failed connection was started, in ms after `since`.
    pub failed_at_ms: Vec<f64>,
    /// Per answer: milliseconds from `since` to the first connection it
    /// served.
    pub first_ms: std::collections::BTreeMap<String, f64>,
    /// When the client script started, in ms after `since`: `first_ms`
    /// includes starting the client process.
    pub started_ms: f64,
    pub seconds: f64,
}

impl Load {
    pub fn total(&self) -> u64 {
        self.answers.values().sum::<u64>() + self.failures
    }

    /// How many connections the answers in `names` served.
    pub fn count(&self, names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| self.answers.get(*n).copied().unwrap_or(0))
            .sum()
    }

    /// How many, how long, who answered, how many failed: one line.
    pub fn summary(&self) -> String {
        format!(
            "{} connections in {:.1}s, answers {:?}, failed {}",
            self.total(),
            self.seconds,
            self.answers,
            self.failures
        )
    }

    /// Prints the summary of `step`; asserts that nothing failed and that
    /// the answers in `to` served every connection.
    pub fn check_all(&self, to: &[&str], step: &str) {
        println!("{step}: {}", self.summary());
        assert_eq!(self.failures, 0, "{step}: failures {:?}", self.errors);
        assert_eq!(
            self.count(to),
            self.total(),
            "{step}: not all answered by {to:?}: {:?}",
            self.answers
        );
    }

    /// Failed connections started after `ms` (after `since`).
    pub fn failures_after(&self, ms: f64) -> usize {
        self.failed_at_ms.iter().filter(|t| **t >= ms).count()
    }

    /// The earliest first answer among `names`, in ms after `since`.
    pub fn first_of(&self, names: &[&str]) -> Option<f64> {
        names
            .iter()
            .filter_map(|n| self.first_ms.get(*n).copied())
            .min_by(f64::total_cmp)
    }
}

/// `CLOCK_MONOTONIC` in seconds: the clock Python's `time.monotonic()`
/// reads, so a moment here can be compared with one in a client script.
pub fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// `n` connections from `place` to `http://ip:port/marker`, `concurrency`
/// at a time, each a fresh TCP connection (HTTP/1.0) whose answer body
/// names the endpoint. `since` (a [`monotonic_now`] value, or 0 for the
/// script's start) is where `first_ms` counts from. Bounded: every
/// connection has a 5 s timeout, and the whole run 300 s.
pub fn connections(
    place: &Place,
    ip: std::net::IpAddr,
    port: u16,
    n: u32,
    concurrency: u32,
    since: f64,
) -> Result<Load> {
    const SCRIPT: &str = r#"
import json, socket, sys, threading, time
ip, port, n, conc, since = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
start = time.monotonic()
if since == 0:
    since = start
answers, first, errors, failed_at = {}, {}, [], []
state = {"next": 0, "failures": 0}
lock = threading.Lock()
request = b"GET /marker HTTP/1.0\r\nHost: load\r\n\r\n"
def one():
    s = socket.create_connection((ip, port), timeout=5)
    try:
        s.settimeout(5)
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise Exception("reply %r" % head[:60])
    return body.decode().strip()
def worker():
    while True:
        with lock:
            if state["next"] >= n:
                return
            state["next"] += 1
        t0 = time.monotonic()
        try:
            name = one()
            t = time.monotonic()
            with lock:
                answers[name] = answers.get(name, 0) + 1
                first.setdefault(name, (t - since) * 1000)
        except Exception as e:
            with lock:
                state["failures"] += 1
                failed_at.append((t0 - since) * 1000)
                if len(errors) < 5:
                    errors.append(repr(e))
threads = [threading.Thread(target=worker) for _ in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"answers": answers, "failures": state["failures"], "errors": errors,
                  "failed_at_ms": failed_at,
                  "first_ms": first, "started_ms": (start - since) * 1000,
                  "seconds": time.monotonic() - start}))
"#;
    let out = place.run_ok(
        &[
            "python3",
            "-c",
            SCRIPT,
            &ip.to_string(),
            &port.to_string(),
            &n.to_string(),
            &concurrency.to_string(),
            &since.to_string(),
        ],
        Duration::from_secs(300),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let counts = |key: &str| -> std::collections::BTreeMap<String, u64> {
        v[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Load {
        answers: counts("answers"),
        failures: v["failures"].as_u64().unwrap_or(u64::MAX),
        errors: v["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default(),
        failed_at_ms: v["failed_at_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default(),
        first_ms: v["first_ms"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, t)| (k.clone(), t.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default(),
        started_ms: v["started_ms"].as_f64().unwrap_or(f64::NAN),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
    })
}

/// A Kubernetes Node with its topology labels: workloads take their
/// locality from their node, as pods do.
pub fn node_yaml(name: &str, region: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n---\n"
    )
}

/// The Node object of a topology node with all it says of where the node
/// is: region, zone, network and cluster labels.
pub fn topology_node_yaml(node: &Node) -> String {
    let s = &node.spec;
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    topology.kubernetes.io/region: {}\n    topology.kubernetes.io/zone: {}\n    topology.istio.io/network: {}\n    topology.istio.io/cluster: {}\n---\n",
        s.name, s.locality.region, s.locality.zone, s.network, s.cluster
    )
}

/// An east-west Gateway into `network` (`istio-system/eastwest-<network>`,
/// as Istio's docs name it) at the shared-segment addresses of the gateway
/// nodes `nodes`, with a WorkloadEntry per instance: the CA signs the
/// gateway's identity for the node that runs an instance, and the
/// network's agents know its inside addresses (where it connects to their
/// pods from) as a gateway's, as they know a gateway pod's address.
pub fn east_west_gateway_yaml(topo: &Topology, network: &str, nodes: &[&str]) -> Result<String> {
    let name = format!("eastwest-{network}");
    let mut addresses = String::new();
    let mut instances = String::new();
    for node in nodes {
        let addrs = &topo.node(node)?.addrs;
        let (v4, v6) = addrs
            .internet
            .ok_or_else(|| format!("{node} is not a gateway node"))?;
        let inside = format!("{},{}", addrs.ipv4, addrs.ipv6);
        addresses.push_str(&format!(
            "  - {{type: IPAddress, value: \"{v4}\"}}\n  - {{type: IPAddress, value: \"{v6}\"}}\n"
        ));
        instances.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}-{node}\n  namespace: istio-system\n  annotations:\n    strait.dev/node: {node}\n    strait.dev/addresses: \"{v6},{inside}\"\nspec:\n  address: {v4}\n  serviceAccount: {name}-istio-east-west\n  labels:\n    gateway.networking.k8s.io/gateway-name: {name}\n---\n"
        ));
    }
    Ok(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: istio-system\n  labels:\n    topology.istio.io/network: {network}\nspec:\n  gatewayClassName: istio-east-west\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n  addresses:\n{addresses}---\n{instances}"
    ))
}

/// `http://<ip>:<port>/marker`, bracketing IPv6.
pub fn marker_url(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("http://{v4}:{port}/marker"),
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{port}/marker"),
    }
}

/// A mesh on a topology: the config directory its agents and CA read, the
/// CA's directory, the nodes' credentials, and the binaries they run.
/// Everything lives in the topology's scratch directory and goes with it.
///
/// The CA service runs as its own process, one replica per network on the
/// network's first node (its control node), started with the first agent
/// of that network; replicas share the CA directory, which no agent sees.
pub struct Mesh<'t> {
    pub topo: &'t Topology,
    pub config_dir: PathBuf,
    pub ca_dir: PathBuf,
    /// The cluster's API server, when the agents and CAs read their config
    /// there instead of `config_dir`.
    pub kubeconfig: Option<PathBuf>,
    /// Where `strait-agent`, `strait-ca` and `straitctl` are.
    bin_dir: PathBuf,
    /// The running CA replica of each network.
    cas: Mutex<BTreeMap<String, CaReplica>>,
    /// Where the CA runs, instead of each network's first node.
    ca_node: Option<String>,
    /// The CA's own kubeconfig and flags, when they differ from the agents'.
    ca_kubeconfig: Option<PathBuf>,
    ca_flags: Vec<String>,
}

/// A running `strait-ca serve`.
pub struct CaReplica {
    pub process: Process,
    pub addr: SocketAddr,
    /// The node it runs on.
    pub node: String,
}

/// The CA service's port, istiod's.
pub const CA_PORT: u16 = 15012;

impl<'t> Mesh<'t> {
    /// A mesh run by the binaries built with the tests.
    pub fn new(topo: &'t Topology) -> Result<Self> {
        let agent = strait_bin("strait-agent");
        Self::with_bin_dir(topo, agent.parent().map(PathBuf::from).unwrap_or_default())
    }

    /// Where the mesh's binaries are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Agents, gateways and CAs started from now on run the binaries in
    /// `dir` (the image's static ones, say); those running keep theirs.
    pub fn set_bin_dir(&mut self, dir: PathBuf) {
        self.bin_dir = dir;
    }

    /// A mesh run by the binaries in `bin_dir` (a release build, say).
    pub fn with_bin_dir(topo: &'t Topology, bin_dir: PathBuf) -> Result<Self> {
        let config_dir = topo.scratch_dir().join("config");
        let ca_dir = topo.scratch_dir().join("ca");
        std::fs::create_dir_all(&config_dir)?;
        Ok(Self {
            topo,
            config_dir,
            ca_dir,
            kubeconfig: None,
            bin_dir,
            cas: Mutex::new(BTreeMap::new()),
            ca_node: None,
            ca_kubeconfig: None,
            ca_flags: Vec::new(),
        })
    }

    /// A mesh whose agents and CAs watch the API server `kubeconfig`
    /// leads to, with no config directory.
    pub fn with_cluster(topo: &'t Topology, kubeconfig: PathBuf) -> Result<Self> {
        Ok(Self {
            kubeconfig: Some(kubeconfig),
            ..Self::new(topo)?
        })
    }

    /// This mesh's CA runs on `node` (a second cluster's own CA, sharing
    /// the first one's root).
    pub fn with_ca_on(self, node: &str) -> Self {
        Self {
            ca_node: Some(node.to_owned()),
            ..self
        }
    }

    /// The CA reads the cluster with `kubeconfig` (its own ServiceAccount)
    /// and runs with `flags` besides.
    pub fn with_ca(self, kubeconfig: PathBuf, flags: &[&str]) -> Self {
        Self {
            ca_kubeconfig: Some(kubeconfig),
            ca_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..self
        }
    }

    /// The roots alone (`strait-ca roots`), as agents that authenticate
    /// with a ServiceAccount token hold them; the directory.
    pub fn roots_dir(&self) -> Result<PathBuf> {
        let out = self.topo.scratch_dir().join("roots");
        let status = std::process::Command::new(self.bin("strait-ca"))
            .args(["roots", "--ca-dir"])
            .arg(&self.ca_dir)
            .arg("--out")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("strait-ca roots: {status}").into());
        }
        Ok(out)
    }

    /// Kills `network`'s CA replica (by its PID).
    pub fn stop_ca(&self, network: &str) -> Result<()> {
        let ca = self
            .cas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(network);
        match ca {
            Some(mut ca) => {
                ca.process.kill()?;
                Ok(())
            }
            None => Err(format!("no CA runs on network {network}").into()),
        }
    }

    /// The flag and value that tell a binary where the config is.
    fn source(&self) -> (&'static str, String) {
        match &self.kubeconfig {
            Some(kubeconfig) => ("--kubeconfig", kubeconfig.display().to_string()),
            None => ("--config-dir", self.config_dir.display().to_string()),
        }
    }

    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    /// The address of `network`'s CA replica, started on the network's
    /// first node if it is not running yet.
    pub fn ca_addr(&self, network: &str) -> Result<SocketAddr> {
        let mut cas = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = cas.get(network) {
            return Ok(ca.addr);
        }
        let node = self
            .topo
            .nodes()
            .iter()
            .find(|n| match &self.ca_node {
                Some(name) => n.name() == name,
                None => n.spec.network == network,
            })
            .ok_or_else(|| format!("no node on network {network}"))?;
        let ca = self.start_ca(node.name(), &self.ca_dir, CA_PORT, &[])?;
        let addr = ca.addr;
        cas.insert(network.to_owned(), ca);
        Ok(addr)
    }

    /// The CA replica of `network`, if it runs: its node and address.
    pub fn ca_of(&self, network: &str) -> Option<(String, SocketAddr, u32)> {
        let cas = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        cas.get(network)
            .map(|ca| (ca.node.clone(), ca.addr, ca.process.pid()))
    }

    /// Starts `strait-ca serve` on `node` with the keys in `ca_dir`,
    /// listening on the node's address at `port` (metrics on the node's
    /// address at `port + 2`, for Prometheus), and waits until it listens.
    pub fn start_ca(
        &self,
        node: &str,
        ca_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<CaReplica> {
        let place_node = self.topo.node(node)?;
        let addr = SocketAddr::new(place_node.addrs.ipv4.into(), port);
        let (listen, metrics) = (
            addr.to_string(),
            SocketAddr::new(addr.ip(), port + 2).to_string(),
        );
        let ca = self.bin("strait-ca");
        let ca_dir = ca_dir.display().to_string();
        let (source, mut config) = self.source();
        if let Some(kubeconfig) = &self.ca_kubeconfig {
            config = kubeconfig.display().to_string();
        }
        let mut argv = vec![
            ca.as_str(),
            "serve",
            "--ca-dir",
            &ca_dir,
            source,
            &config,
            "--listen",
            &listen,
            "--metrics-addr",
            &metrics,
        ];
        argv.extend(self.ca_flags.iter().map(String::as_str));
        argv.extend_from_slice(extra);
        let mut process = place_node.place.spawn(&argv)?;
        process.wait_listening(port, Duration::from_secs(15))?;
        Ok(CaReplica {
            process,
            addr,
            node: node.to_owned(),
        })
    }

    /// The CA metrics of `network`'s replica, from its node.
    pub fn ca_metrics(&self, network: &str) -> Result<String> {
        let (node, addr, _) = self
            .ca_of(network)
            .ok_or_else(|| format!("no CA runs on network {network}"))?;
        let url = format!(
            "http://{}/metrics",
            SocketAddr::new(addr.ip(), addr.port() + 2)
        );
        let out = self.topo.node(&node)?.run_ok(
            &["curl", "-sf", "--max-time", "3", &url],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `node`'s credential from the CA whose keys are in `ca_dir`, made
    /// once (as setup does) in the scratch directory.
    pub fn node_credential(&self, node: &str, ca_dir: &Path) -> Result<PathBuf> {
        let ca_name = ca_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ca".into());
        let out = self
            .topo
            .scratch_dir()
            .join("credentials")
            .join(ca_name)
            .join(node);
        if !out.join("node-cert.pem").exists() {
            let status = std::process::Command::new(self.bin("strait-ca"))
                .args(["node-credential", "--node", node, "--ca-dir"])
                .arg(ca_dir)
                .arg("--out")
                .arg(&out)
                .stdout(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                return Err(format!("strait-ca node-credential for {node}: {status}").into());
            }
        }
        Ok(out)
    }

    /// Writes (or replaces) one manifest file of the config directory.
    pub fn write(&self, file: &str, yaml: &str) -> Result<()> {
        std::fs::write(self.config_dir.join(file), yaml)?;
        Ok(())
    }

    /// Starts the east-west gateway role on gateway node `node`, for the
    /// Gateway [`east_west_gateway_yaml`] writes for `network`.
    pub fn start_gateway(&self, node: &str, network: &str) -> Result<Process> {
        let gateway = format!("istio-system/eastwest-{network}");
        self.start_agent(
            node,
            &[
                ("--role", "east-west-gateway"),
                ("--gateway", gateway.as_str()),
            ],
        )
    }

    /// Starts `strait-waypoint` in pod `pod` (an instance of the Gateway
    /// `namespace/name` that [`waypoint_yaml`] writes), with the node
    /// credential of the pod's node, and waits for its HBONE listener.
    pub fn start_waypoint(&self, pod: &str, gateway: &str) -> Result<Process> {
        self.start_waypoint_with(pod, gateway, &[])
    }

    /// [`Mesh::start_waypoint`] with `extra` flags.
    pub fn start_waypoint_with(&self, pod: &str, gateway: &str, extra: &[&str]) -> Result<Process> {
        let pod = self.topo.pod(pod)?;
        let node = self.topo.node(&pod.node)?;
        let ca_addr = self.ca_addr(&node.spec.network)?.to_string();
        let credential = self
            .node_credential(node.name(), &self.ca_dir)?
            .display()
            .to_string();
        let config = self.config_dir.display().to_string();
        let status = self.topo.scratch_dir().join("status").display().to_string();
        let stats = format!("{}:15020", pod.ipv4);
        let bin = self.bin("strait-waypoint");
        let argv = [
            bin.as_str(),
            "--node",
            node.name(),
            "--gateway",
            gateway,
            "--config-dir",
            &config,
            "--ca-addr",
            &ca_addr,
            "--credential-dir",
            &credential,
            "--status-dir",
            &status,
            "--stats-addr",
            &stats,
        ];
        let argv: Vec<&str> = argv.iter().chain(extra).copied().collect();
        let mut process = pod.place.spawn(&argv)?;
        process.wait_listening(15008, Duration::from_secs(30))?;
        Ok(process)
    }

    /// Starts the agent of `node` and waits for readiness. `overrides`
    /// replace the value of a flag (`("--config-dir", "/elsewhere")`) or add
    /// it (`("--exec-probes-on-host", "")` for one without a value).
    pub fn start_agent(&self, node: &str, overrides: &[(&str, &str)]) -> Result<Process> {
        let node = self.topo.node(node)?;
        self.start_agent_at(node, &node.place, overrides)
    }

    /// Like [`Mesh::start_agent`], with the agent's processes in `place`
    /// (the node's namespace, another cgroup).
    pub fn start_agent_at(
        &self,
        node: &Node,
        place: &Place,
        overrides: &[(&str, &str)],
    ) -> Result<Process> {
        let ca_addr = self.ca_addr(&node.spec.network)?;
        let credential = self.node_credential(node.name(), &self.ca_dir)?;
        let mut flags: Vec<(String, String)> = vec![
            ("--node".into(), node.name().into()),
            {
                let (flag, value) = self.source();
                (flag.into(), value)
            },
            ("--ca-addr".into(), ca_addr.to_string()),
            ("--credential-dir".into(), credential.display().to_string()),
            (
                "--status-dir".into(),
                self.topo.scratch_dir().join("status").display().to_string(),
            ),
            (
                "--capture-cgroup".into(),
                node.pods_cgroup.display().to_string(),
            ),
            ("--pin-dir".into(), node.pin_dir.display().to_string()),
            (
                "--netns-dir".into(),
                self.topo.netns_dir().display().to_string(),
            ),
        ];
        for (flag, value) in overrides {
            match flags.iter_mut().find(|(f, _)| f == flag) {
                Some(slot) => slot.1 = value.to_string(),
                None => flags.push((flag.to_string(), value.to_string())),
            }
        }
        let agent = self.bin("strait-agent");
        let mut argv = vec![agent.as_str()];
        for (flag, value) in &flags {
            argv.push(flag);
            // An empty value: a flag that takes none.
            if !value.is_empty() {
                argv.push(value);
            }
        }
        let mut process = place.spawn(&argv)?;
        wait_ready(node, &mut process)?;
        Ok(process)
    }

    /// An agent's admin endpoint, through `straitctl` on its node.
    pub fn straitctl(&self, node: &str, args: &[&str]) -> Result<String> {
        let ctl = self.bin_dir.join("straitctl");
        let ctl = ctl.to_string_lossy();
        let mut argv = vec![ctl.as_ref()];
        argv.extend_from_slice(args);
        let out = self
            .topo
            .node(node)?
            .run_ok(&argv, Duration::from_secs(10))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A document of the agent's admin endpoint (`/config_dump`, ...), from
    /// its node.
    pub fn admin(&self, node: &str, path: &str) -> Result<serde_json::Value> {
        admin_at(self.topo.node(node)?, path)
    }

    /// `straitctl` on this host (no agent needed: `validate`): its exit
    /// code and stdout.
    pub fn straitctl_local(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = std::process::Command::new(self.bin_dir.join("straitctl"))
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Polls the state `/workloads` on `node` shows for `pod` (empty while
    /// it is not listed) until `done` accepts it or `timeout` passes; the
    /// state and how long it took.
    pub fn wait_state(
        &self,
        node: &str,
        pod: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<(String, Duration)> {
        wait_state_at(self.topo.node(node)?, pod, timeout, done)
            .map_err(|e| format!("on {node}: {e}").into())
    }

    /// Polls `node`'s metrics until the samples of `name` with `labels`
    /// sum to `want`, or `timeout` passes; how long it took.
    pub fn wait_metric(
        &self,
        node: &str,
        name: &str,
        labels: &[&str],
        want: u64,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let got = metric_sum(&self.metrics(node)?, name, labels);
            if got == want {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "{node}: {name}{labels:?} is {got}, not {want}, after {timeout:?}"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The body of the agent's readiness endpoint, from its node.
    pub fn readiness(&self, node: &str) -> Result<String> {
        let out = self.topo.node(node)?.run_ok(
            &[
                "curl",
                "-sf",
                "--max-time",
                "3",
                "http://127.0.0.1:15021/healthz/ready",
            ],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The agent's Prometheus metrics, from its node.
    pub fn metrics(&self, node: &str) -> Result<String> {
        let out = self.topo.node(node)?.run_ok(
            &[
                "curl",
                "-sf",
                "--max-time",
                "3",
                "http://127.0.0.1:15020/metrics",
            ],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A document of the admin endpoint of the agent whose network namespace
/// `place` is (its node's, or its own pod's in Kubernetes).
pub fn admin_at(place: &Place, path: &str) -> Result<serde_json::Value> {
    let url = format!("http://127.0.0.1:15000{path}");
    let out = place.run_ok(
        &["curl", "-sf", "--max-time", "3", &url],
        Duration::from_secs(10),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls the state the agent at `place` shows for `pod` in `/workloads`
/// (empty while it is not listed) until `done` accepts it or `timeout`
/// passes; the state and how long it took.
pub fn wait_state_at(
    place: &Place,
    pod: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<(String, Duration)> {
    let started = Instant::now();
    loop {
        let workloads = admin_at(place, "/workloads")?;
        let state = workloads
            .as_array()
            .and_then(|all| all.iter().find(|w| w["name"] == pod))
            .and_then(|w| w["state"].as_str())
            .unwrap_or_default()
            .to_owned();
        if done(&state) {
            return Ok((state, started.elapsed()));
        }
        if started.elapsed() > timeout {
            return Err(format!("{pod} is still {state:?} after {timeout:?}: {workloads}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of a metric's samples whose label sets contain every `labels`
/// pair (`name="value"`).
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A waypoint (Gateway of class `istio-waypoint`) `name` in `namespace`,
/// with `pod` as its instance (a WorkloadEntry running as the waypoint's
/// service account, labelled with its name).
pub fn waypoint_yaml(name: &str, namespace: &str, pod: &Pod, labels: &[(&str, &str)]) -> String {
    let mut labels_yaml = String::new();
    for (k, v) in labels {
        labels_yaml.push_str(&format!("\n    {k}: \"{v}\""));
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: {name}{labels_yaml}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n---\n{}",
        workload_yaml(
            pod,
            namespace,
            name,
            &[("gateway.networking.k8s.io/gateway-name", name)]
        )
    )
}

/// A namespace, in the mesh or not.
pub fn namespace_yaml(name: &str, in_mesh: bool) -> String {
    let labels = if in_mesh {
        "\n  labels:\n    istio.io/dataplane-mode: ambient"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n---\n")
}

/// A WorkloadEntry for `pod` (both its addresses, on its node).
pub fn workload_yaml(
    pod: &Pod,
    namespace: &str,
    service_account: &str,
    labels: &[(&str, &str)],
) -> String {
    let mut labels_yaml = String::new();
    for (k, v) in labels {
        labels_yaml.push_str(&format!("\n    {k}: \"{v}\""));
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    strait.dev/node: {node}\n    strait.dev/addresses: \"{v6}\"\nspec:\n  address: {v4}\n  serviceAccount: {service_account}\n  labels:\n    app: {name}{labels_yaml}\n---\n",
        name = pod.name,
        node = pod.node,
        v4 = pod.ipv4,
        v6 = pod.ipv6,
    )
}

/// Polls the agent's readiness endpoint from inside its node.
pub fn wait_ready(node: &Node, agent: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = node.run(
            &[
                "curl",
                "-sf",
                "--max-time",
                "1",
                "http://127.0.0.1:15021/healthz/ready",
            ],
            Duration::from_secs(3),
        )?;
        if out.status.success() {
            return Ok(());
        }
        if let Some(status) = agent.wait_timeout(Duration::ZERO)? {
            return Err(format!("agent exited ({status}) before ready:\n{}", agent.log()).into());
        }
        if Instant::now() >= deadline {
            return Err(format!("agent not ready within 15s:\n{}", agent.log()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `probe` until it gives something, for at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(found) = probe() {
            println!("{what}: after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(found);
        }
        if started.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `process` printed `line` (bounded by `timeout`).
pub fn wait_for_line(process: &mut Process, line: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = process.log();
        if log.lines().any(|l| l == line) {
            return Ok(());
        }
        if let Some(status) = process.wait_timeout(Duration::ZERO)? {
            return Err(format!("exited ({status}) before printing {line:?}:\n{log}").into());
        }
        if Instant::now() >= deadline {
            return Err(format!("no {line:?} within {timeout:?}:\n{log}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `process` printed a line starting with `prefix`.
pub fn wait_for_line_prefix(process: &mut Process, prefix: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !process.log().lines().any(|l| l.starts_with(prefix)) {
        if Instant::now() >= deadline {
            return Err(format!("no {prefix:?} within {timeout:?}:\n{}", process.log()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Opens `n` TCP connections to `host:port` and keeps them open and silent
/// (a TLS server waits for a ClientHello) until its stdin closes or 60 s
/// pass; prints how many it opened, and how many the server closed by the
/// end.
const SLOW_HANDSHAKES: &str = r#"
import resource, select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        socks.append(s)
    except OSError:
        s.close()
print("opened", len(socks), flush=True)
deadline = time.time() + float(sys.argv[4])
closed = set()
while time.time() < deadline and len(closed) < len(socks):
    r, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.5)
    for s in r:
        try:
            if not s.recv(1):
                closed.add(s)
        except OSError:
            closed.add(s)
print("closed by the server", len(closed), flush=True)
"#;

/// `n` TCP connections from `place` to `host:port`, open and silent for up
/// to `seconds` (handshakes that never start); returns once they are open.
/// The process prints, at the end, how many the server closed.
pub fn slow_handshakes(
    place: &Place,
    host: std::net::IpAddr,
    port: u16,
    n: u32,
    seconds: u32,
) -> Result<Process> {
    let mut slow = place.spawn(&[
        "python3",
        "-c",
        SLOW_HANDSHAKES,
        &host.to_string(),
        &port.to_string(),
        &n.to_string(),
        &seconds.to_string(),
    ])?;
    wait_for_line_prefix(&mut slow, "opened", Duration::from_secs(30))?;
    Ok(slow)
}

/// How many of [`slow_handshakes`]' connections the server closed (once it
/// printed so).
pub fn closed_by_the_server(slow: &Process) -> usize {
    slow.log()
        .lines()
        .find_map(|l| l.strip_prefix("closed by the server "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// curl's HTTP status for an HTTP/2 request over TLS to an HBONE port
/// (`addr` is `ip:port`), with a client certificate (`cert`, `key`) or
/// none: `400` once TLS passed (a GET is no CONNECT), `000` when the
/// handshake was refused.
pub fn hbone_tls_status(place: &Place, addr: &str, client: Option<(&str, &str)>) -> Result<String> {
    let url = format!("https://{addr}/");
    let mut argv = vec![
        "curl",
        "-sk",
        "--http2",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    if let Some((cert, key)) = client {
        argv.extend(["--cert", cert, "--key", key]);
    }
    argv.push(&url);
    let out = place.run(&argv, Duration::from_secs(10))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A self-signed certificate and its key, made with openssl in `dir` as
/// `<name>.pem` and `<name>.key`; with `uri`, that URI subject alternative
/// name (a certificate claiming an identity no mesh CA signed).
pub fn self_signed(
    place: &Place,
    dir: &Path,
    name: &str,
    uri: Option<&str>,
) -> Result<(String, String)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")).display().to_string(),
        dir.join(format!("{name}.key")).display().to_string(),
    );
    let san = uri.map(|uri| format!("subjectAltName=URI:{uri}"));
    let mut argv = vec![
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=rogue",
        "-keyout",
        &key,
        "-out",
        &cert,
    ];
    if let Some(san) = &san {
        argv.extend(["-addext", san.as_str()]);
    }
    place.run_ok(&argv, Duration::from_secs(10))?;
    Ok((cert, key))
}

/// A CA and a server certificate it signed for DNS name `host`, made with
/// openssl in `dir`: (CA certificate, server certificate, server key).
pub fn server_cert(place: &Place, dir: &Path, host: &str) -> Result<(String, String, String)> {
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        path("ca.pem"),
        path("ca.key"),
        path(&format!("{host}.pem")),
        path(&format!("{host}.key")),
        path(&format!("{host}.csr")),
        path(&format!("{host}.ext")),
    );
    let t = Duration::from_secs(10);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut argv = vec!["openssl", "req", "-x509"];
    argv.extend(ec);
    argv.extend([
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    place.run_ok(&argv, t)?;
    let subject = format!("/CN={host}");
    let mut argv = vec!["openssl", "req"];
    argv.extend(ec);
    argv.extend(["-subj", &subject, "-keyout", &key, "-out", &csr]);
    place.run_ok(&argv, t)?;
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    place.run_ok(
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
        t,
    )?;
    Ok((ca, cert, key))
}

/// A client key and certificate for `identity`, signed by the CA whose
/// certificate and key are `ca_cert`/`ca_key`, made with openssl (an
/// independent TLS implementation, not ours) in `dir`: (cert, key) paths.
/// Tests play the operator here: only they and the CA read its key.
pub fn client_cert(
    place: &Place,
    dir: &Path,
    name: &str,
    identity: &str,
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<(String, String)> {
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext,
        format!("subjectAltName=URI:{identity}\nextendedKeyUsage=clientAuth\n"),
    )?;
    let s = |p: &Path| p.display().to_string();
    place.run_ok(
        &[
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=client",
        ],
        Duration::from_secs(10),
    )?;
    place.run_ok(
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(ca_cert),
            "-CAkey",
            &s(ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &s(&cert),
            "-extfile",
            &s(&ext),
        ],
        Duration::from_secs(10),
    )?;
    Ok((s(&cert), s(&key)))
}
