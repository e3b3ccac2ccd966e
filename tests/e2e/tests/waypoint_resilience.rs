//! What a waypoint does for a service's resilience, from the seeds' YAML:
//! retries hide an endpoint that fails every request (`attempts: 3`,
//! `retryOn: 5xx`) but a body over the replay bound is never sent twice;
//! fault injection delays and aborts its share of requests; a route's
//! timeout and per-try timeout answer 504; retries stay in their locality
//! unless `retryRemoteLocalities` lets them roam.
use std::time::{Duration, Instant};

use strait_e2e::{
    Mesh, Result, curl_body, http_app, metric_sum, namespace_yaml, require_root, waypoint_yaml,
    workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

const RATINGS: &str = "10.96.0.91";
const FAULTS: &str = "10.96.0.92";
const SLOW: &str = "10.96.0.93";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("ok", "n2")
        .pod("bad", "n2")
        .pod("slow", "n2")
}

fn service(name: &str, vip: &str, selector: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {vip}
  selector: {{{selector}: \"yes\"}}
  ports:
  - name: http
    port: 9080
    targetPort: 8080
---
"
    )
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(
            topo.pod("ok")?,
            "shop",
            "ok",
            &[("ratings", "yes"), ("faults", "yes")],
        ),
        workload_yaml(topo.pod("bad")?, "shop", "bad", &[("ratings", "yes")]),
        workload_yaml(topo.pod("slow")?, "shop", "slow", &[("slow", "yes")]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        service("ratings", RATINGS, "ratings"),
        service("faults", FAULTS, "faults"),
        service("slow", SLOW, "slow"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
    retries:
      attempts: 3
      retryOn: 5xx
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faults, namespace: shop}
spec:
  hosts: [faults]
  http:
  - route:
    - destination: {host: faults}
    fault:
      delay:
        fixedDelay: 5ms
        percentage: {value: 10}
      abort:
        httpStatus: 418
        percentage: {value: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: shop}
spec:
  hosts: [slow]
  http:
  - name: per-try
    match:
    - headers:
        x-per-try: {}
    route:
    - destination: {host: slow}
    retries:
      attempts: 1
      perTryTimeout: 300ms
      retryOn: 5xx
  - name: timeout
    route:
    - destination: {host: slow}
    timeout: 500ms
---
"
        .to_string(),
    ]
    .concat())
}

/// Each code curl saw, for `count` requests to `url` on one keep-alive
/// connection with `args` besides.
fn codes(place: &Place, url: &str, count: u32, args: &[&str]) -> Result<Vec<String>> {
    let url = format!("{url}?[1-{count}]");
    let mut argv = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n"];
    argv.extend_from_slice(args);
    argv.push(&url);
    let out = place.run_ok(&argv, Duration::from_secs(600))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn share(codes: &[String], code: &str) -> f64 {
    codes.iter().filter(|c| *c == code).count() as f64 * 100.0 / codes.len() as f64
}

#[test]
fn retries_faults_and_timeouts_act_as_the_routes_say() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let (client, wp) = (topo.pod("client")?, topo.pod("wp")?);
    let _apps = [
        http_app(topo.pod("ok")?, 8080, "ok", "from-ok")?,
        http_app(topo.pod("bad")?, 8080, "fail", "")?,
        http_app(topo.pod("slow")?, 8080, "slow", "from-slow")?,
    ];

    // Retries: one of ratings' two endpoints fails every request.
    let started = Instant::now();
    let ratings = codes(
        &client.place,
        &format!("http://{RATINGS}:9080/r"),
        10_000,
        &[],
    )?;
    let failed = ratings.iter().filter(|c| *c != "200").count();
    println!(
        "ratings, attempts 3 on 5xx, one endpoint failing: {} requests, {failed} failed ({:.2}%), {:.1} s",
        ratings.len(),
        failed as f64 * 100.0 / ratings.len() as f64,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ratings.len(), 10_000);
    assert!(failed * 100 < ratings.len(), "{failed} failed");

    // Bodies: replayed up to the bound, never beyond it.
    let dir = client.place.scratch_dir()?;
    let (small, large) = (dir.join("small"), dir.join("large"));
    std::fs::write(&small, vec![b's'; 1024])?;
    std::fs::write(&large, vec![b'l'; 200 * 1024])?;
    let post = |file: &std::path::Path| -> Result<Vec<String>> {
        let data = format!("@{}", file.display());
        codes(
            &client.place,
            &format!("http://{RATINGS}:9080/p"),
            40,
            &["--data-binary", &data],
        )
    };
    let (small, large) = (post(&small)?, post(&large)?);
    let large_failed = large.iter().filter(|c| *c == "503").count();
    println!(
        "POST 1 KiB: {} of 40 failed; POST 200 KiB (over the 64 KiB replay bound): {large_failed} of 40 answered 503, not retried",
        small.iter().filter(|c| *c != "200").count()
    );
    assert!(small.iter().all(|c| c == "200"), "{small:?}");
    assert!(large_failed > 0 && large_failed < 40, "{large:?}");

    // Faults: 50% aborted with 418, 10% delayed, over 10,000 requests.
    let started = Instant::now();
    let faults = codes(
        &client.place,
        &format!("http://{FAULTS}:9080/f"),
        10_000,
        &[],
    )?;
    let aborted = share(&faults, "418");
    let metrics = curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))?;
    let flagged = |flags: &str| {
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                "destination_service_name=\"faults\"",
                &format!("response_flags=\"{flags}\""),
            ],
        )
    };
    let delayed = (flagged("DI") + flagged("DI,FI")) as f64 * 100.0 / faults.len() as f64;
    println!(
        "faults: {} requests, {aborted:.1}% aborted (50% asked), {delayed:.1}% delayed (10% asked), {:.1} s",
        faults.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(faults.len(), 10_000);
    assert!((48.0..=52.0).contains(&aborted), "{aborted}% aborted");
    assert!((8.0..=12.0).contains(&delayed), "{delayed}% delayed");
    assert!(faults.iter().all(|c| c == "200" || c == "418"));

    // Timeouts: the route's 500 ms, and 300 ms per try (two tries).
    for (what, args) in [
        ("timeout 500ms", vec![]),
        (
            "perTryTimeout 300ms, attempts 1",
            vec!["-H", "x-per-try: 1"],
        ),
    ] {
        let started = Instant::now();
        let got = codes(&client.place, &format!("http://{SLOW}:9080/s"), 1, &args)?;
        println!(
            "{what}: {:?} after {} ms",
            got,
            started.elapsed().as_millis()
        );
        assert_eq!(got, ["504"]);
    }
    Ok(())
}

const LIMITED: &str = "10.96.0.94";
const CAPPED: &str = "10.96.0.95";
const EJECTING: &str = "10.96.0.96";
const FRESH: &str = "10.96.0.97";

/// `count` clients at once, each one request to `url`; their codes.
fn at_once(place: &Place, url: &str, count: usize) -> Result<Vec<String>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        clients.push(place.spawn(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            url,
        ])?);
    }
    let mut codes = Vec::new();
    for mut c in clients {
        c.wait_timeout(Duration::from_secs(60))?
            .ok_or("a client hung")?;
        codes.push(c.log().trim().to_string());
    }
    codes.sort();
    Ok(codes)
}

#[test]
fn circuit_breakers_and_outlier_detection_act_at_l7() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    let yaml = [
        config(&topo)?,
        service("limited", LIMITED, "slow"),
        service("capped", CAPPED, "slow"),
        service("ejecting", EJECTING, "ratings"),
        service("fresh", FRESH, "faults"),
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: fresh, namespace: shop}
spec:
  host: fresh
  trafficPolicy:
    connectionPool:
      http: {maxRequestsPerConnection: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: limited, namespace: shop}
spec:
  host: limited
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: capped, namespace: shop}
spec:
  host: capped
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ejecting, namespace: shop}
spec:
  host: ejecting
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 50
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ejecting, namespace: shop}
spec:
  hosts: [ejecting]
  http:
  - route:
    - destination: {host: ejecting}
    retries:
      attempts: 3
      retryOn: 5xx
---
"
        .to_string(),
    ]
    .concat();
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let (client, wp) = (topo.pod("client")?, topo.pod("wp")?);
    let _apps = [
        http_app(topo.pod("ok")?, 8080, "ok", "from-ok")?,
        http_app(topo.pod("bad")?, 8080, "fail", "")?,
        http_app(topo.pod("slow")?, 8080, "slow", "from-slow")?,
    ];
    let metrics = || curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4));
    let overflowed = |service: &str| -> Result<u64> {
        Ok(metric_sum(
            &metrics()?,
            "istio_requests_total",
            &[
                &format!("destination_service_name=\"{service}\""),
                "response_flags=\"UO\"",
            ],
        ))
    };

    // maxConnections 1 + http1MaxPendingRequests 1: of 5 clients at
    // once, one is served, one waits for its connection, three get 503 UO.
    let started = Instant::now();
    let codes = at_once(&client.place, &format!("http://{LIMITED}:9080/l"), 5)?;
    println!(
        "maxConnections 1, http1MaxPendingRequests 1, 5 clients at once: {codes:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(codes, ["200", "200", "503", "503", "503"]);
    assert_eq!(overflowed("limited")?, 3);

    // http2MaxRequests 2: two in flight, the other three refused.
    let codes = at_once(&client.place, &format!("http://{CAPPED}:9080/c"), 5)?;
    println!("http2MaxRequests 2, 5 clients at once: {codes:?}");
    assert_eq!(codes, ["200", "200", "503", "503", "503"]);
    assert_eq!(overflowed("capped")?, 3);

    // Consecutive 5xx eject the failing endpoint (maxEjectionPercent 50:
    // one of two): after it, no retry is needed.
    let retries = || -> Result<u64> {
        Ok(metric_sum(
            &metrics()?,
            "strait_waypoint_retries_total",
            &[],
        ))
    };
    let before = retries()?;
    let got = self::codes(
        &client.place,
        &format!("http://{EJECTING}:9080/e"),
        200,
        &[],
    )?;
    let spent = retries()? - before;
    println!(
        "outlierDetection consecutive5xxErrors 2: 200 requests, {} failed, {spent} retries",
        got.iter().filter(|c| *c != "200").count()
    );
    assert!(got.iter().all(|c| c == "200"));
    assert!(
        spent <= 3,
        "{spent} retries: the failing endpoint was not ejected"
    );

    // maxRequestsPerConnection 1: each of 20 requests on one client
    // connection reaches `ok` on a connection of its own.
    let opened = || -> Result<u64> {
        Ok(metric_sum(
            &mesh.metrics("n2")?,
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\"", "destination_workload=\"ok\""],
        ))
    };
    let before = opened()?;
    let got = self::codes(&client.place, &format!("http://{FRESH}:9080/f"), 20, &[])?;
    let fresh = opened()? - before;
    let before = opened()?;
    let reused_codes = self::codes(&client.place, &format!("http://{FAULTS}:9080/f"), 20, &[])?;
    let reused = opened()? - before;
    println!(
        "20 requests on one connection: {fresh} connections to the endpoint with maxRequestsPerConnection 1, {reused} without"
    );
    assert!(got.iter().all(|c| c == "200"), "{got:?}");
    assert_eq!(reused_codes.len(), 20);
    // The first may reuse a connection `ejecting`'s requests left to the
    // same endpoint (connections are pooled per endpoint and client).
    assert!(fresh >= 19, "{fresh}");
    assert!(reused <= 2, "{reused}");
    Ok(())
}

/// A client in a pod of the mesh doing what a waypoint must survive: one
/// request with 200 KiB of headers, `SLOW` connections sending their
/// headers a byte at a time (slowloris), and one body that never ends
/// (1 KiB every 10 ms for 10 s). Prints what it saw.
const HOSTILE: &str = r#"
import socket, sys, threading, time
vip, port, slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((vip, port))
s.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(200)) + b"\r\n")
s.settimeout(30)
try:
    line = s.recv(200).split(b"\r\n")[0].decode()
except Exception as e:
    line = "error " + str(e)
print("header flood:", line or "closed", flush=True)
conns = []
for i in range(slow):
    c = socket.create_connection((vip, port))
    c.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    conns.append(c)
print("slow opened", len(conns), flush=True)
def body():
    b = socket.create_connection((vip, port))
    b.sendall(b"POST /endless HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent, end = 0, time.time() + 10
    try:
        while time.time() < end:
            b.sendall(b"400\r\n" + b"b" * 1024 + b"\r\n")
            sent += 1024
            time.sleep(0.01)
    except OSError:
        pass
    print("endless body: sent", sent, "bytes", flush=True)
t = threading.Thread(target=body)
t.start()
open_conns, closed, deadline = list(conns), 0, time.time() + 60
while open_conns and time.time() < deadline:
    still = []
    for c in open_conns:
        try:
            c.sendall(b"a")
            # An answer (408) or the end: the server is done with it.
            c.recv(100, socket.MSG_DONTWAIT)
            closed += 1
        except BlockingIOError:
            still.append(c)
        except OSError:
            closed += 1
    open_conns = still
    time.sleep(1)
t.join()
print("slow closed by the server", closed, "of", slow, flush=True)
"#;

#[test]
fn hostile_clients_leave_the_others_served() -> Result<()> {
    require_root();
    let spec = spec().pod("hostile", "n1");
    let topo = Topology::create(spec)?;
    let mesh = Mesh::new(&topo)?;
    let yaml = [
        config(&topo)?,
        workload_yaml(topo.pod("hostile")?, "shop", "hostile", &[]),
    ]
    .concat();
    mesh.write("mesh.yaml", &yaml)?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let (client, hostile) = (topo.pod("client")?, topo.pod("hostile")?);
    let _app = http_app(topo.pod("ok")?, 8080, "ok", "from-ok")?;
    let before = strait_e2e::footprint(waypoint.pid())?;
    const SLOW: u32 = 100;
    let mut attack =
        hostile
            .place
            .spawn(&["python3", "-c", HOSTILE, FAULTS, "9080", &SLOW.to_string()])?;
    strait_e2e::wait_for_line_prefix(&mut attack, "slow opened", Duration::from_secs(60))?;
    // Meanwhile another client of the same service is served.
    let started = Instant::now();
    let served = codes(
        &client.place,
        &format!("http://{RATINGS}:9080/ok"),
        500,
        &[],
    )?;
    let during = strait_e2e::footprint(waypoint.pid())?;
    let failed = served.iter().filter(|c| *c != "200").count();
    println!(
        "the other client meanwhile: {} requests, {failed} failed ({:.1} s)",
        served.len(),
        started.elapsed().as_secs_f64()
    );
    attack
        .wait_timeout(Duration::from_secs(120))?
        .ok_or("the hostile client did not finish")?;
    // Then a stream flood: 10 HTTP/2 connections keeping 100 streams each
    // open (the waypoint's limit per connection) for 8 s, while the other
    // client is served again.
    let mut streams = hostile.place.spawn(&[
        "h2load",
        "-c",
        "10",
        "-m",
        "100",
        "-D",
        "8",
        &format!("http://{RATINGS}:9080/ok"),
    ])?;
    strait_e2e::wait_for_line_prefix(&mut streams, "starting benchmark", Duration::from_secs(30))?;
    let beside = codes(
        &client.place,
        &format!("http://{RATINGS}:9080/ok"),
        200,
        &[],
    )?;
    let flood_rss = strait_e2e::footprint(waypoint.pid())?;
    streams
        .wait_timeout(Duration::from_secs(120))?
        .ok_or("h2load did not finish")?;
    let flooded = streams.log();
    let summary = flooded
        .lines()
        .find(|l| l.starts_with("requests:"))
        .ok_or_else(|| format!("h2load printed no summary: {flooded}"))?;
    let beside_failed = beside.iter().filter(|c| *c != "200").count();
    println!(
        "stream flood (h2load, 10 connections x 100 streams, 8 s): {summary}; the other client meanwhile: {} requests, {beside_failed} failed; waypoint RSS {} KiB",
        beside.len(),
        flood_rss.0
    );
    let codes_line = flooded
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    println!("h2load {codes_line}");
    if beside_failed > 0 {
        // What the other client's agent and the waypoint said about it.
        println!("the other client's answers: {beside:?}");
        let logs = [("agent n1", agents[0].log()), ("waypoint", waypoint.log())];
        for (who, log) in &logs {
            let about = log
                .lines()
                .filter(|l| l.contains("sa/client") && !l.contains("\"status\":200"));
            for line in about.take(20) {
                println!("{who}: {line}");
            }
        }
    }
    assert_eq!(beside_failed, 0);
    let log = attack.log();
    println!("{}", log.trim());
    println!(
        "waypoint: RSS {} -> {} KiB, descriptors {} -> {}",
        before.0, during.0, before.1, during.1
    );
    if failed > 0 {
        for line in waypoint
            .log()
            .lines()
            .filter(|l| l.contains("\"status\":5"))
        {
            println!("{line}");
        }
    }
    assert_eq!(failed, 0);
    // Refused: 431, or, when the waypoint closed the stream while the
    // headers were still coming, a reset that overtook the answer (as a
    // TCP server closing with unread data does).
    let flood = log
        .lines()
        .find_map(|l| l.strip_prefix("header flood: "))
        .unwrap_or("");
    assert!(
        flood.starts_with("HTTP/1.1 431") || flood.contains("reset") || flood == "closed",
        "{log}"
    );
    assert!(
        log.contains(&format!("slow closed by the server {SLOW} of {SLOW}")),
        "{log}"
    );
    assert!(
        during.0 < before.0 + 64 * 1024,
        "the waypoint grew by 64 MiB or more"
    );
    // The stream flood holds 1,000 requests in flight (each with its own
    // connection to the HTTP/1.1 endpoint): bounded, not free.
    assert!(
        flood_rss.0 < before.0 + 96 * 1024,
        "the waypoint grew by 96 MiB or more under the stream flood"
    );
    Ok(())
}

/// `retryRemoteLocalities`: the endpoint in the waypoint's own zone fails
/// every request, the one in the other zone answers. Retries stay in the
/// first try's locality by default (Istio's), so they cannot hide it; a
/// route that lets them roam is answered from the other zone.
#[test]
fn retries_stay_in_their_locality_unless_told_to_roam() -> Result<()> {
    require_root();
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
            .pod("client", "n1")
            .pod("wp", "n1")
            .pod("near", "n1")
            .pod("far", "n2"),
    )?;
    let mesh = Mesh::new(&topo)?;
    let route = |name: &str, roam: bool| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}]
  http:
  - route: [{{destination: {{host: {name}}}}}]
    retries: {{attempts: 2, retryOn: 5xx, retryRemoteLocalities: {roam}}}
---
"
        )
    };
    mesh.write(
        "mesh.yaml",
        &[
            // The nodes' zones, as their labels say them.
            strait_e2e::node_yaml("n1", "r1", "z1"),
            strait_e2e::node_yaml("n2", "r1", "z2"),
            namespace_yaml("shop", true),
            workload_yaml(topo.pod("client")?, "shop", "client", &[]),
            workload_yaml(topo.pod("near")?, "shop", "near", &[("zoned", "yes")]),
            workload_yaml(topo.pod("far")?, "shop", "far", &[("zoned", "yes")]),
            waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
            service("stay", "10.96.0.94", "zoned"),
            service("roam", "10.96.0.95", "zoned"),
            route("stay", false),
            route("roam", true),
        ]
        .concat(),
    )?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let _apps = [
        http_app(topo.pod("near")?, 8080, "fail", "")?,
        http_app(topo.pod("far")?, 8080, "ok", "from-far")?,
    ];
    let client = topo.pod("client")?;
    let codes = |vip: &str| -> Result<std::collections::BTreeMap<String, usize>> {
        let out = client.place.run_ok(
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
                &format!("http://{vip}:9080/r/[1-20]"),
            ],
            Duration::from_secs(60),
        )?;
        let mut counts = std::collections::BTreeMap::new();
        for code in String::from_utf8_lossy(&out.stdout).lines() {
            *counts.entry(code.to_string()).or_insert(0) += 1;
        }
        Ok(counts)
    };
    let stay = codes("10.96.0.94")?;
    let roam = codes("10.96.0.95")?;
    println!("20 requests, retries kept in zone z1: {stay:?}; allowed to roam: {roam:?}");
    assert_eq!(stay.get("503"), Some(&20), "{stay:?}");
    assert_eq!(roam.get("200"), Some(&20), "{roam:?}");
    Ok(())
}
