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

const LIMITED: &str = "10.96.0.161";
const RLS: &str = "10.96.0.162";
/// The global limit, per hour.
const PER_HOUR: f64 = 200.0;
/// Envoy's, in a domain of its own.
const ENVOY_PER_HOUR: f64 = 50.0;
const ENVOY_PORT: u16 = 10000;
const ENVOY_APP_PORT: u16 = 8082;

/// Envoy with its `ratelimit` filter asking strait's service at `rls`
/// (domain `envoy`), every request one descriptor (`generic_key` `run`).
fn envoy_config(rls: &str, run: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: 0.0.0.0, port_value: {ENVOY_PORT}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rl
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              rate_limits:
              - actions: [{{generic_key: {{descriptor_value: {run}}}}}]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: envoy
              failure_mode_deny: true
              timeout: 2s
              rate_limit_service:
                grpc_service: {{envoy_grpc: {{cluster_name: ratelimit}}}}
                transport_api_version: V3
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_APP_PORT}}}}}}}
  - name: ratelimit
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ratelimit
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {rls}, port_value: 8081}}}}}}
"#
    )
}

/// The hour a count falls in (the service's fixed window).
fn hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

fn global_config(topo: &Topology, run: &str) -> Result<String> {
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("api")?, "shop", "api", &[]),
        workload_yaml(topo.pod("rls")?, "shop", "ratelimit", &[]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp1")?, &[]),
        // A second instance of the same waypoint.
        workload_yaml(
            topo.pod("wp2")?,
            "shop",
            "waypoint",
            &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
        ),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {LIMITED}
  selector: {{app: api}}
  ports:
  - {{name: http, port: 9080, targetPort: 8080}}
---
apiVersion: v1
kind: Service
metadata: {{name: ratelimit, namespace: shop}}
spec:
  clusterIP: {RLS}
  selector: {{app: rls}}
  ports:
  - {{name: grpc, port: 8081}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: global, namespace: shop}}
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
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: shop
          failure_mode_deny: true
          timeout: 2s
          enable_x_ratelimit_headers: DRAFT_VERSION_03
          rate_limit_service:
            grpc_service:
              envoy_grpc:
                cluster_name: outbound|8081||ratelimit.shop.svc.cluster.local
                authority: ratelimit.shop.svc.cluster.local
            transport_api_version: V3
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_INBOUND
      routeConfiguration:
        vhost:
          route: {{action: ANY}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - generic_key: {{descriptor_value: {run}}}
---
"
        ),
    ]
    .concat())
}

/// Counts over `PER_HOUR` a request: 429s from both waypoint replicas
/// (from the count they share in Redis) until the hour's window ends.
fn statuses(place: &strait_topology::Place, count: u32) -> Result<Vec<String>> {
    // Separate connections, so the client's agent spreads them over both
    // instances.
    let out = place.run_ok(
        &[
            "curl",
            "-s",
            "-Z",
            "--parallel-max",
            "8",
            "-H",
            "connection: close",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
            &format!("http://{LIMITED}:9080/g?[1-{count}]"),
        ],
        Duration::from_secs(300),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn a_global_rate_limit_holds_across_waypoint_replicas_and_redis_decides() -> Result<()> {
    require_root();
    let spec = Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp1", "n1")
        .pod("wp2", "n2")
        .pod("api", "n2")
        .pod("rls", "n2")
        // Redis, and Envoy with its own app, outside the mesh.
        .pod("redis", "n1")
        .pod("envoy", "n1");
    let topo = Topology::create(spec)?;
    // Each run counts under a key of its own.
    let run = format!("api-{}", std::process::id());
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &global_config(&topo, &run)?)?;
    let limits = topo.scratch_dir().join("limits.yaml");
    std::fs::write(
        &limits,
        format!(
            "domain: shop\ndescriptors:\n- key: generic_key\n  value: {run}\n  rate_limit: {{unit: hour, requests_per_unit: {PER_HOUR}}}\n"
        ),
    )?;
    let envoy_limits = topo.scratch_dir().join("envoy-limits.yaml");
    std::fs::write(
        &envoy_limits,
        format!(
            "domain: envoy\ndescriptors:\n- key: generic_key\n  value: {run}\n  rate_limit: {{unit: hour, requests_per_unit: {ENVOY_PER_HOUR}}}\n"
        ),
    )?;
    let redis = topo.pod("redis")?;
    let mut redis_server = strait_e2e::l7::redis(redis)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let rls = topo.pod("rls")?;
    let mut service = rls.place.spawn(&[
        &strait_e2e::strait_bin("strait-ratelimit")
            .display()
            .to_string(),
        "--listen",
        "0.0.0.0:8081",
        "--config",
        &limits.display().to_string(),
        "--config",
        &envoy_limits.display().to_string(),
        "--redis",
        &format!("redis://{}:6379", redis.ipv4),
        "--stats-addr",
        &format!("{}:15020", rls.ipv4),
    ])?;
    service.wait_listening(8081, Duration::from_secs(10))?;
    // Ready once it has reached Redis.
    let ready = format!("http://{}:15020/healthz/ready", rls.ipv4);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !rls
        .place
        .run(
            &["curl", "-sf", "--max-time", "1", &ready],
            Duration::from_secs(5),
        )?
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rate-limit service never reached Redis:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let waypoints = [
        mesh.start_waypoint("wp1", "shop/waypoint")?,
        mesh.start_waypoint("wp2", "shop/waypoint")?,
    ];
    let _app = http_app(topo.pod("api")?, 8080, "ok", "api")?;
    let client = &topo.pod("client")?.place;

    // 600 requests over both replicas: the hour's 200, and 429s.
    let (admitted, refused) = loop {
        let window = hour();
        let codes = statuses(client, 600)?;
        if hour() != window {
            println!("the hour's window ended during the run: again");
            continue;
        }
        let count = |c: &str| codes.iter().filter(|x| *x == c).count() as f64;
        if count("200") + count("429") != 600.0 {
            let mut seen = std::collections::BTreeMap::new();
            for c in &codes {
                *seen.entry(c.clone()).or_insert(0) += 1;
            }
            return Err(format!(
                "answers {seen:?}; the service said:\n{}\nthe waypoint:\n{}",
                service.log(),
                waypoints[0]
                    .log()
                    .lines()
                    .filter(|l| !l.contains("\"message\":\"request\""))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .into());
        }
        break (count("200"), count("429"));
    };
    let served = |w: &strait_topology::Process| {
        w.log()
            .lines()
            .filter(|l| l.contains("\"path\":\"/g\""))
            .count()
    };
    let (first, second) = (served(&waypoints[0]), served(&waypoints[1]));
    let off = (admitted - PER_HOUR).abs() / PER_HOUR * 100.0;
    println!(
        "600 requests through two waypoint replicas ({first} and {second} of them): {admitted} admitted, {refused} refused (429); the limit {PER_HOUR} per hour ({off:.1}% off)"
    );
    assert!(first > 0 && second > 0, "one replica served them all");
    assert!(off <= 2.0, "admitted {admitted} of a limit of {PER_HOUR}");
    assert_eq!(admitted + refused, 600.0);

    // Envoy 1.40's own ratelimit filter, pointed at the same service:
    // limited the same way (the protocol is Envoy's).
    let envoy_pod = topo.pod("envoy")?;
    let _envoy_app = http_app(envoy_pod, ENVOY_APP_PORT, "ok", "envoy-app")?;
    let envoy_yaml = topo.scratch_dir().join("envoy-ratelimit.yaml");
    std::fs::write(&envoy_yaml, envoy_config(&rls.ipv4.to_string(), &run))?;
    let envoy_bin = strait_e2e::install::envoy_bin();
    let mut envoy = envoy_pod.place.spawn(&[
        &envoy_bin.display().to_string(),
        "-c",
        &envoy_yaml.display().to_string(),
        "--concurrency",
        "1",
        "--log-level",
        "warn",
        "--base-id",
        &std::process::id().to_string(),
    ])?;
    envoy.wait_listening(ENVOY_PORT, Duration::from_secs(30))?;
    let out = client.run_ok(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
            &format!("http://{}:{ENVOY_PORT}/e?[1-100]", envoy_pod.ipv4),
        ],
        Duration::from_secs(120),
    )?;
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let (ok, limited) = (
        codes.iter().filter(|c| *c == "200").count(),
        codes.iter().filter(|c| *c == "429").count(),
    );
    println!(
        "Envoy 1.40 asking strait-ratelimit ({ENVOY_PER_HOUR} per hour): 100 requests, {ok} admitted, {limited} refused (429)"
    );
    assert_eq!(
        (ok as f64, limited),
        (ENVOY_PER_HOUR, 100 - ENVOY_PER_HOUR as usize),
        "{}",
        envoy.log()
    );
    envoy.stop(Duration::from_secs(5))?;

    // Redis gone: failure_mode_deny refuses (500), nothing passes.
    redis_server.stop(Duration::from_secs(5))?;
    let codes = statuses(client, 20)?;
    println!("Redis stopped, failure_mode_deny: {codes:?}");
    assert!(codes.iter().all(|c| c == "500"), "{codes:?}");
    let metrics = strait_e2e::curl_body(&rls.place, &format!("http://{}:15020/metrics", rls.ipv4))?;
    println!(
        "the service's answers: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("strait_ratelimit_answers_total"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    service.kill()?;
    Ok(())
}
