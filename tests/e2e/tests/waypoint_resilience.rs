//! What a waypoint does for a service's resilience, from the seeds' YAML:
//! retries hide an endpoint that fails every request (`attempts: 3`,
//! `retryOn: 5xx`) but a body over the replay bound is never sent twice;
//! fault injection delays and aborts its share of requests; a route's
//! timeout and per-try timeout answer 504.
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
  - port: 9080
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
        "apiVersion: networking.istio.io/v1
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
    Ok(())
}
