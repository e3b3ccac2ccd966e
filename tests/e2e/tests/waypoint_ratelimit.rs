//! Rate limits at the waypoint from EnvoyFilters written as Istio
//! documents them: a local rate limit of 100 requests per second with a
//! burst of 1,000, bound to the waypoint's Gateway; an HTTP/2 load well
//! past it for 10 s; the requests admitted are the bucket's arithmetic
//! (1,000 at first, 10 more each 100 ms) within 2%, the rest answered 429
//! with the filter's header and `x-ratelimit-*`, and counted.
use std::time::Duration;

use strait_e2e::{
    Mesh, Result, http_app, namespace_yaml, require_root, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Spec, Topology};

const API: &str = "10.96.0.160";
const BURST: f64 = 1000.0;
const PER_FILL: f64 = 10.0;
const FILL: Duration = Duration::from_millis(100);

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("api", "n2")
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("api")?, "shop", "api", &[]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {API}
  selector: {{app: api}}
  ports:
  - {{name: http, port: 9080, targetPort: 8080}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ratelimit, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket:
              max_tokens: {BURST}
              tokens_per_fill: {PER_FILL}
              fill_interval: {fill}s
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {{numerator: 100, denominator: HUNDRED}}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {{numerator: 100, denominator: HUNDRED}}
            response_headers_to_add:
            - append: false
              header: {{key: x-local-rate-limit, value: 'true'}}
---
",
            fill = FILL.as_secs_f64()
        ),
    ]
    .concat())
}

#[test]
fn a_local_rate_limit_admits_its_bucket_and_no_more() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let _app = http_app(topo.pod("api")?, 8080, "ok", "api")?;
    let client = &topo.pod("client")?.place;
    let wp = topo.pod("wp")?;

    // Well past 100 requests per second, for 10 s: the first request makes
    // the bucket, so its fills count from the load's start.
    let out = client.run_ok(
        &[
            "h2load",
            "-c",
            "4",
            "-m",
            "10",
            "-D",
            "10",
            &format!("http://{API}:9080/load"),
        ],
        Duration::from_secs(120),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let seconds: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split('s').next()?.parse().ok())
        .ok_or_else(|| format!("h2load printed no duration: {text}"))?;
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .ok_or_else(|| format!("h2load printed no status codes: {text}"))?;
    let count = |class: &str| -> f64 {
        codes
            .split(',')
            .find_map(|p| {
                p.trim()
                    .strip_prefix("status codes:")
                    .unwrap_or(p.trim())
                    .strip_suffix(class)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (admitted, refused) = (count(" 2xx"), count(" 4xx"));
    let fills = (seconds / FILL.as_secs_f64()).floor();
    let expected = BURST + PER_FILL * fills;
    let off = (admitted - expected).abs() / expected * 100.0;
    println!(
        "{seconds:.2} s of load: {admitted} admitted, {refused} refused (429); the bucket's arithmetic: {BURST} + {PER_FILL} x {fills} fills = {expected} ({off:.2}% off)"
    );
    assert!(
        refused > admitted,
        "the load was not past the limit: {text}"
    );
    assert!(off <= 2.0, "admitted {admitted}, expected {expected}");

    // A refused answer: 429, the filter's header, the draft's headers.
    // (1,500 requests at once: the bucket, full again, holds 1,000.)
    let out = client.run_ok(
        &[
            "curl",
            "-s",
            "-Z",
            "--parallel-max",
            "50",
            "-o",
            "/dev/null",
            "-D",
            "-",
            &format!("http://{API}:9080/one?[1-1500]"),
        ],
        Duration::from_secs(120),
    )?;
    let heads = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let head = heads
        .split("\r\n\r\n")
        .find(|h| h.trim_start().starts_with("http/1.1 429"))
        .unwrap_or("")
        .to_string();
    println!("a refused answer:\n{}", head.trim());
    assert!(head.starts_with("http/1.1 429"), "{head}");
    for header in [
        "x-local-rate-limit: true",
        "x-ratelimit-limit: 1000, 1000;w=",
        "x-ratelimit-remaining: 0",
        "x-ratelimit-reset: ",
    ] {
        assert!(head.contains(header), "{header} missing:\n{head}");
    }
    let metrics = strait_e2e::curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))?;
    let counted: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("strait_waypoint_rate_limited_total{filter=\"shop/ratelimit\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!("strait_waypoint_rate_limited_total: {counted}");
    assert!(
        counted > refused,
        "{counted} counted, {refused} refused to h2load alone"
    );
    Ok(())
}
