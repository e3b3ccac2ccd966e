//! `cargo xtask bench` (part `waypoint`): HTTP/1.1 (wrk) and HTTP/2
//! (h2load) through the same client and origin pods, in one run: direct;
//! through Envoy 1.40 (the proxy Istio's waypoints run) doing the routing
//! below, plain; through strait at L4 only; through strait's waypoint; and
//! through the same Envoy with both pods in the mesh. The routing, the
//! same for the waypoint (a VirtualService) and Envoy (its route config):
//! a header match sending `x-canary: yes` to v2, else an 80/20 split
//! between v1 and v2, and 2 retries on 5xx; both write one access-log line
//! per request to their output. Besides requests per second and latency:
//! the L7 proxy's CPU per 1,000 requests, its peak RSS, and the CPU of every
//! mesh process per 1,000 requests (the waypoint terminates mutual TLS on
//! both sides itself; Envoy in the mesh leaves that to its node's agent, so
//! its own CPU figure excludes it, the mesh-wide one does not). Then the
//! same routing with a JWT rule and an L7 policy in force (a
//! RequestAuthentication and two AuthorizationPolicies; for Envoy,
//! `jwt_authn` and two RBAC filters as Istio generates them), every
//! request carrying a token, beside the same proxies without them.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use strait_e2e::{Mesh, install, namespace_yaml, topology_node_yaml, waypoint_yaml, workload_yaml};
use strait_topology::{Locality, Place, Process, Spec, Topology};

use crate::{
    cmd::section,
    measure::{cpu_seconds, rss_mib},
};

const SECONDS: u32 = 5;
/// Turns of the waypoint and Envoy in the mesh.
const ROUNDS: u32 = 3;
const ORIGIN_PORT: u16 = 8080;
const ENVOY_PORT: u16 = 10000;
const PLAIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const ROUTED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
/// The same routing with a JWT rule and an L7 policy in force.
const SECURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 62);
/// Envoy's listener doing the same.
const ENVOY_SECURED_PORT: u16 = 10001;
const ISSUER: &str = "https://bench.test";
/// wrk: threads and connections; h2load: connections and streams each.
const WRK: (u32, u32) = (2, 32);
const H2LOAD: (u32, u32) = (16, 8);

/// What one load run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    failed: f64,
    /// CPU seconds of the L7 proxy, and of every mesh process.
    proxy_cpu: f64,
    mesh_cpu: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    h1: Load,
    h2: Load,
    proxy_rss_mib: f64,
}

fn config(topo: &Topology, jwks: &str) -> Result<String> {
    let jwks = jwks.trim();
    let pod = |name: &str| topo.pod(name).map_err(anyhow::Error::from);
    let mut yaml = [
        namespace_yaml("bench", true),
        workload_yaml(pod("client")?, "bench", "client", &[]),
        workload_yaml(pod("envoy")?, "bench", "envoy", &[]),
        workload_yaml(
            pod("v1")?,
            "bench",
            "origin",
            &[("service", "origin"), ("version", "v1")],
        ),
        workload_yaml(
            pod("v2")?,
            "bench",
            "origin",
            &[("service", "origin"), ("version", "v2")],
        ),
        waypoint_yaml("waypoint", "bench", pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: bench}}
spec:
  clusterIP: {PLAIN_VIP}
  selector: {{version: v1}}
  ports: [{{port: 80, targetPort: {ORIGIN_PORT}}}]
---
apiVersion: v1
kind: Service
metadata:
  name: routed
  namespace: bench
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {ROUTED_VIP}
  selector: {{service: origin}}
  ports: [{{port: 80, targetPort: {ORIGIN_PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: routed, namespace: bench}}
spec:
  host: routed
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: secured
  namespace: bench
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {SECURED_VIP}
  selector: {{service: origin}}
  ports: [{{port: 80, targetPort: {ORIGIN_PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secured, namespace: bench}}
spec:
  host: secured
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secured, namespace: bench}}
spec:
  hosts: [secured]
  http:
  - name: canary
    match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: secured, subset: v2}}}}]
    retries: {{attempts: 2, retryOn: 5xx}}
  - name: split
    route:
    - {{destination: {{host: secured, subset: v1}}, weight: 80}}
    - {{destination: {{host: secured, subset: v2}}, weight: 20}}
    retries: {{attempts: 2, retryOn: 5xx}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: secured, namespace: bench}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: secured}}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [bench]
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: bench}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: secured}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: token-holders, namespace: bench}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: secured}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/*\"]}}}}]
    to: [{{operation: {{methods: [GET], paths: [/*]}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routed, namespace: bench}}
spec:
  hosts: [routed]
  http:
  - name: canary
    match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: routed, subset: v2}}}}]
    retries: {{attempts: 2, retryOn: 5xx}}
  - name: split
    route:
    - {{destination: {{host: routed, subset: v1}}, weight: 80}}
    - {{destination: {{host: routed, subset: v2}}, weight: 20}}
    retries: {{attempts: 2, retryOn: 5xx}}
---
"
        ),
    ]
    .concat();
    for node in topo.nodes() {
        yaml.push_str(&topology_node_yaml(node));
    }
    Ok(yaml)
}

/// Envoy's static config doing the VirtualService's routing.
/// Envoy's static config doing the VirtualService's routing: on
/// `ENVOY_PORT` alone, on `ENVOY_SECURED_PORT` behind the JWT rule and the
/// two policies, as Istio generates them (`jwt_authn` with `requires_any`
/// and `allow_missing`, a DENY RBAC filter, then an ALLOW one on the
/// token's issuer, which Istio reads through its `istio_authn` filter).
fn envoy_config(topo: &Topology, jwks_file: &Path) -> Result<String> {
    let ip = |name: &str| -> Result<String> { Ok(topo.pod(name)?.ipv4.to_string()) };
    let cluster = |name: &str, addr: &str| {
        format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {{http_protocol_options: {{}}, http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {addr}, port_value: {ORIGIN_PORT}}}}}}}
"#
        )
    };
    let security = format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origins-0:
                  issuer: {ISSUER}
                  audiences: [bench]
                  local_jwks: {{filename: {jwks}}}
                  payload_in_metadata: {ISSUER}
              rules:
              - match: {{prefix: /}}
                requires:
                  requires_any:
                    requirements: [{{provider_name: origins-0}}, {{allow_missing: {{}}}}]
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  ns[bench]-policy[no-admin]-rule[0]:
                    permissions: [{{and_rules: {{rules: [{{or_rules: {{rules: [{{url_path: {{path: {{prefix: /admin}}}}}}]}}}}]}}}}]
                    principals: [{{and_ids: {{ids: [{{any: true}}]}}}}]
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  ns[bench]-policy[token-holders]-rule[0]:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: {{rules: [{{header: {{name: ":method", string_match: {{exact: GET}}}}}}]}}
                        - or_rules: {{rules: [{{url_path: {{path: {{prefix: /}}}}}}]}}
                    principals:
                    - and_ids:
                        ids:
                        - or_ids:
                            ids:
                            - metadata:
                                filter: envoy.filters.http.jwt_authn
                                path: [{{key: "{ISSUER}"}}, {{key: iss}}]
                                value: {{string_match: {{exact: "{ISSUER}"}}}}
"#,
        jwks = jwks_file.display()
    );
    let listener = |name: &str, port: u16, filters: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          normalize_path: true
          # One access-log line per request, as the waypoint writes.
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}}
          route_config:
            virtual_hosts:
            - name: routed
              domains: ["*"]
              routes:
              - match:
                  prefix: /
                  headers: [{{name: x-canary, string_match: {{exact: "yes"}}}}]
                route: {{cluster: v2, retry_policy: {{retry_on: 5xx, num_retries: 2}}}}
              - match: {{prefix: /}}
                route:
                  weighted_clusters:
                    clusters: [{{name: v1, weight: 80}}, {{name: v2, weight: 20}}]
                  retry_policy: {{retry_on: 5xx, num_retries: 2}}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    Ok(format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}
static_resources:
  listeners:
{}{}  clusters:
{}{}"#,
        listener("http", ENVOY_PORT, ""),
        listener("secured", ENVOY_SECURED_PORT, &security),
        cluster("v1", &ip("v1")?),
        cluster("v2", &ip("v2")?)
    ))
}

/// A key pair and a token of it for the bench's JWT rule (the L7 tests'
/// tool, `tests/e2e/py/jwt_tool.py`): the key set's JSON, and the token.
fn jwt(scratch: &Path) -> Result<(String, String)> {
    let dir = scratch.join("jwks");
    std::fs::create_dir_all(&dir)?;
    let tool = strait_e2e::l7::JwtTool::new(&dir);
    tool.run(&["key", "bench", "RS256"])
        .map_err(anyhow::Error::from_boxed)?;
    let claims =
        format!(r#"{{"iss": "{ISSUER}", "sub": "load", "aud": "bench", "exp": "+86400"}}"#);
    let token = tool
        .sign("bench", "RS256", &claims)
        .map_err(anyhow::Error::from_boxed)?;
    Ok((std::fs::read_to_string(dir.join("jwks.json"))?, token))
}

pub fn run(bin: &Path) -> Result<()> {
    section(
        "L7: client, waypoint and Envoy pods on n1; origins v1 and v2 on n2 \
         (wrk HTTP/1.1 and h2load HTTP/2; the same routing in the waypoint and in Envoy)",
    );
    let envoy_bin = install::envoy_bin();
    if !envoy_bin.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup`",
            envoy_bin.display()
        );
    }
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
            .pod("client", "n1")
            .pod("wp", "n1")
            .pod("envoy", "n1")
            .pod("v1", "n2")
            .pod("v2", "n2"),
    )
    .context("creating the L7 bench topology")?;
    let scratch = topo.scratch_dir().to_path_buf();
    let (jwks, token) = jwt(&scratch)?;
    let bearer = format!("Authorization: Bearer {token}");
    let mesh = Mesh::with_bin_dir(&topo, bin.to_path_buf()).map_err(anyhow::Error::from_boxed)?;
    mesh.write("bench.yaml", &config(&topo, &jwks)?)
        .map_err(anyhow::Error::from_boxed)?;
    let origin = bin.join("http-origin").display().to_string();
    let mut origins = Vec::new();
    for name in ["v1", "v2"] {
        let mut p = topo
            .pod(name)?
            .place
            .spawn(&[&origin, &ORIGIN_PORT.to_string(), name])?;
        p.wait_listening(ORIGIN_PORT, Duration::from_secs(10))?;
        origins.push(p);
    }
    let client = &topo.pod("client")?.place;
    let envoy_yaml = scratch.join("envoy.yaml");
    std::fs::write(
        &envoy_yaml,
        envoy_config(&topo, &scratch.join("jwks/jwks.json"))?,
    )?;
    let envoy_pod = topo.pod("envoy")?;
    let start_envoy = || -> Result<Process> {
        let mut envoy = envoy_pod.place.spawn(&[
            &envoy_bin.display().to_string(),
            "-c",
            &envoy_yaml.display().to_string(),
            "--concurrency",
            "2",
            "--log-level",
            "warn",
            "--base-id",
            &std::process::id().to_string(),
        ])?;
        envoy.wait_listening(ENVOY_PORT, Duration::from_secs(30))?;
        Ok(envoy)
    };
    let v1 = format!("http://{}:{ORIGIN_PORT}/", topo.pod("v1")?.ipv4);
    let via_envoy = format!("http://{}:{ENVOY_PORT}/", envoy_pod.ipv4);
    let via_envoy_secured = format!("http://{}:{ENVOY_SECURED_PORT}/", envoy_pod.ipv4);

    section("direct (no mesh)");
    let direct = path(client, (&v1, &[]), &scratch, None, &[])?;

    section("Envoy 1.40, plain (no mesh)");
    let mut envoy = start_envoy()?;
    let envoy_plain = path(client, (&via_envoy, &[]), &scratch, Some(&envoy), &[])?;
    envoy.stop(Duration::from_secs(5))?;

    section("strait L4 (agents on both nodes, mTLS HBONE)");
    let agents = ["n1", "n2"]
        .iter()
        .map(|n| mesh.start_agent(n, &[]).map_err(anyhow::Error::from_boxed))
        .collect::<Result<Vec<_>>>()?;
    let agent_refs: Vec<&Process> = agents.iter().collect();
    let l4 = path(
        client,
        (&format!("http://{PLAIN_VIP}/"), &[]),
        &scratch,
        None,
        &agent_refs,
    )?;

    // The two L7 proxies in the mesh, measured in turns: the machine's
    // load drifts over a run, and turns put both under the same drift.
    let waypoint = mesh
        .start_waypoint_with("wp", "bench/waypoint", &[])
        .map_err(anyhow::Error::from_boxed)?;
    let envoy = start_envoy()?;
    // Its access log goes where every process's output goes, as in a pod.
    let mut waypoint_procs = agent_refs.clone();
    waypoint_procs.push(&waypoint);
    let mut envoy_procs = agent_refs.clone();
    envoy_procs.push(&envoy);
    let (mut through_waypoint, mut envoy_mesh) = (Vec::new(), Vec::new());
    let (mut waypoint_secured, mut envoy_secured) = (Vec::new(), Vec::new());
    let token: &[&str] = &[&bearer];
    for round in 1..=ROUNDS {
        section(&format!(
            "strait waypoint (the VirtualService's header match, 80/20 split, retries), round {round} of {ROUNDS}"
        ));
        through_waypoint.push(path(
            client,
            (&format!("http://{ROUTED_VIP}/"), &[]),
            &scratch,
            Some(&waypoint),
            &waypoint_procs,
        )?);
        section(&format!(
            "Envoy 1.40 in the mesh (its pod enrolled: mTLS HBONE in and out), round {round} of {ROUNDS}"
        ));
        envoy_mesh.push(path(
            client,
            (&via_envoy, &[]),
            &scratch,
            Some(&envoy),
            &envoy_procs,
        )?);
        section(&format!(
            "strait waypoint, the same routing with a JWT rule and two L7 policies, round {round} of {ROUNDS}"
        ));
        waypoint_secured.push(path(
            client,
            (&format!("http://{SECURED_VIP}/"), token),
            &scratch,
            Some(&waypoint),
            &waypoint_procs,
        )?);
        section(&format!(
            "Envoy 1.40 in the mesh, the same with jwt_authn and RBAC, round {round} of {ROUNDS}"
        ));
        envoy_secured.push(path(
            client,
            (&via_envoy_secured, token),
            &scratch,
            Some(&envoy),
            &envoy_procs,
        )?);
    }
    let (through_waypoint, envoy_mesh) = (rounds(&through_waypoint), rounds(&envoy_mesh));
    let (waypoint_secured, envoy_secured) = (rounds(&waypoint_secured), rounds(&envoy_secured));

    print_table(&[
        ("direct", direct),
        ("Envoy, plain", envoy_plain),
        ("strait L4", l4),
        ("strait waypoint", through_waypoint),
        ("Envoy in the mesh", envoy_mesh),
    ]);
    println!();
    println!("With a JWT rule and two L7 policies in force (every request carries a token):");
    print_table(&[
        ("strait waypoint", through_waypoint),
        ("strait waypoint, JWT + policies", waypoint_secured),
        ("Envoy in the mesh", envoy_mesh),
        ("Envoy in the mesh, JWT + RBAC", envoy_secured),
    ]);
    drop(origins);
    Ok(())
}

/// Rounds in one figure: medians of rates and latencies, CPU and requests
/// added up (so CPU per request is over all of them), the peak RSS.
fn rounds(all: &[Figures]) -> Figures {
    let median = |pick: &dyn Fn(&Figures) -> f64| {
        let mut v: Vec<f64> = all.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let sum = |pick: &dyn Fn(&Figures) -> f64| all.iter().map(pick).sum::<f64>();
    let load = |of: &dyn Fn(&Figures) -> Load| Load {
        per_second: median(&|f| of(f).per_second),
        p50_ms: median(&|f| of(f).p50_ms),
        p99_ms: median(&|f| of(f).p99_ms),
        requests: sum(&|f| of(f).requests),
        failed: sum(&|f| of(f).failed),
        proxy_cpu: sum(&|f| of(f).proxy_cpu),
        mesh_cpu: sum(&|f| of(f).mesh_cpu),
    };
    Figures {
        h1: load(&|f| f.h1),
        h2: load(&|f| f.h2),
        proxy_rss_mib: all.iter().map(|f| f.proxy_rss_mib).fold(0.0, f64::max),
    }
}

/// wrk, then h2load, against `url` with `headers` on every request;
/// `proxy` is the L7 proxy whose CPU and memory count, `mesh` every process
/// whose CPU counts.
fn path(
    client: &Place,
    (url, headers): (&str, &[&str]),
    scratch: &Path,
    proxy: Option<&Process>,
    mesh: &[&Process],
) -> Result<Figures> {
    let cpu = |p: Option<&Process>, all: &[&Process]| {
        (
            p.map_or(0.0, cpu_seconds),
            all.iter().map(|p| cpu_seconds(p)).sum::<f64>(),
        )
    };
    let (proxy0, mesh0) = cpu(proxy, mesh);
    let mut h1 = wrk(client, url, headers)?;
    let (proxy1, mesh1) = cpu(proxy, mesh);
    (h1.proxy_cpu, h1.mesh_cpu) = (proxy1 - proxy0, mesh1 - mesh0);
    // `STRAIT_BENCH_PROFILE=DIR`: the proxy's HTTP/2 run recorded by perf.
    let profile = match (proxy, std::env::var_os("STRAIT_BENCH_PROFILE")) {
        (Some(p), Some(dir)) => {
            let out = Path::new(&dir).join(format!("{}.perf.data", p.pid()));
            Some(
                std::process::Command::new("perf")
                    .args(["record", "-F", "499", "--call-graph", "dwarf", "-p"])
                    .arg(p.pid().to_string())
                    .arg("-o")
                    .arg(&out)
                    .args(["--", "sleep", &SECONDS.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting perf")?,
            )
        }
        _ => None,
    };
    let mut h2 = h2load(client, url, headers, scratch)?;
    if let Some(mut perf) = profile {
        perf.wait().context("waiting for perf")?;
    }
    let (proxy2, mesh2) = cpu(proxy, mesh);
    (h2.proxy_cpu, h2.mesh_cpu) = (proxy2 - proxy1, mesh2 - mesh1);
    let proxy_rss_mib = proxy.map_or(0.0, |p| rss_mib(p).0);
    for (what, load) in [("HTTP/1.1 (wrk)", h1), ("HTTP/2 (h2load)", h2)] {
        println!(
            "  {what}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} requests, {:.0} failed; proxy CPU {:.2} s, mesh CPU {:.2} s",
            load.per_second,
            load.p50_ms,
            load.p99_ms,
            load.requests,
            load.failed,
            load.proxy_cpu,
            load.mesh_cpu
        );
    }
    if proxy.is_some() {
        println!("  proxy peak RSS {proxy_rss_mib:.1} MiB");
    }
    Ok(Figures {
        h1,
        h2,
        proxy_rss_mib,
    })
}

fn wrk(client: &Place, url: &str, headers: &[&str]) -> Result<Load> {
    let (threads, connections, seconds) = (
        format!("-t{}", WRK.0),
        format!("-c{}", WRK.1),
        format!("-d{SECONDS}s"),
    );
    let mut argv = vec!["wrk", &threads, &connections, &seconds, "--latency"];
    for header in headers {
        argv.extend(["-H", header]);
    }
    argv.push(url);
    let out = client.run_ok(&argv, Duration::from_secs(u64::from(SECONDS) + 60))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    let percentile = |p: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(p))?;
        millis(line.split_whitespace().nth(1)?)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("wrk printed no request count: {text}"))?;
    let failed = number("Non-2xx or 3xx responses:").unwrap_or(0.0)
        + text
            .lines()
            .find(|l| l.trim_start().starts_with("Socket errors:"))
            .map_or(0.0, |l| {
                l.split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<f64>().ok())
                    .sum()
            });
    Ok(Load {
        per_second: number("Requests/sec:").ok_or_else(|| anyhow!("wrk: {text}"))?,
        p50_ms: percentile("50%").unwrap_or(0.0),
        p99_ms: percentile("99%").unwrap_or(0.0),
        requests,
        failed,
        ..Load::default()
    })
}

/// `1.23ms`, `456.00us`, `1.01s` in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => return None,
    })
}

fn h2load(client: &Place, url: &str, headers: &[&str], scratch: &Path) -> Result<Load> {
    let log = scratch.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let (connections, streams, seconds, log_file) = (
        H2LOAD.0.to_string(),
        H2LOAD.1.to_string(),
        SECONDS.to_string(),
        log.display().to_string(),
    );
    let mut argv = vec![
        "h2load",
        "-c",
        &connections,
        "-m",
        &streams,
        "-D",
        &seconds,
        "--log-file",
        &log_file,
    ];
    for header in headers {
        argv.extend(["-H", header]);
    }
    argv.push(url);
    let out = client.run_ok(&argv, Duration::from_secs(u64::from(SECONDS) + 60))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let per_second = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .ok_or_else(|| anyhow!("h2load: {text}"))?;
    let count = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("requests: "))
            .and_then(|l| {
                l.split(", ")
                    .find_map(|part| part.strip_suffix(key)?.trim().parse().ok())
            })
            .unwrap_or(0.0)
    };
    // One line per request: start time, status, duration in microseconds.
    let mut durations: Vec<f64> = std::fs::read_to_string(&log)
        .with_context(|| format!("reading {}", log.display()))?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    durations.sort_by(f64::total_cmp);
    let at = |q: f64| {
        durations
            .get(((durations.len() as f64 * q) as usize).min(durations.len().saturating_sub(1)))
            .map_or(0.0, |us| us / 1000.0)
    };
    Ok(Load {
        per_second,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        requests: count(" succeeded") + count(" failed"),
        failed: count(" failed") + count(" errored"),
        ..Load::default()
    })
}

fn print_table(paths: &[(&str, Figures)]) {
    let header: Vec<&str> = paths.iter().map(|(name, _)| *name).collect();
    println!();
    println!(
        "| L7 (wrk {}x{} HTTP/1.1, h2load {}x{} HTTP/2, {SECONDS} s each) | {} | target |",
        WRK.0,
        WRK.1,
        H2LOAD.0,
        H2LOAD.1,
        header.join(" | ")
    );
    println!("|---|{}---|", "---:|".repeat(paths.len()));
    let row = |label: &str, value: &dyn Fn(&Figures) -> Option<f64>, target: &str| {
        let cells: Vec<String> = paths
            .iter()
            .map(|(_, p)| value(p).map_or("-".into(), |v| format!("{v:.2}")))
            .collect();
        println!("| {label} | {} | {target} |", cells.join(" | "));
    };
    let per_thousand = |cpu: f64, l: &Load| (l.requests > 0.0).then(|| cpu * 1e6 / l.requests);
    for (proto, pick) in [
        ("HTTP/1.1", (|p: &Figures| p.h1) as fn(&Figures) -> Load),
        ("HTTP/2", |p: &Figures| p.h2),
    ] {
        row(
            &format!("{proto} requests/s"),
            &|p| Some(pick(p).per_second),
            "",
        );
        row(&format!("{proto} p50 (ms)"), &|p| Some(pick(p).p50_ms), "");
        row(
            &format!("{proto} p99 (ms)"),
            &|p| Some(pick(p).p99_ms),
            "waypoint ≤ Envoy in the mesh",
        );
        row(&format!("{proto} failed"), &|p| Some(pick(p).failed), "0");
        row(
            &format!("{proto} L7 proxy CPU per 1,000 requests (ms)"),
            &|p| {
                let l = pick(p);
                (l.proxy_cpu > 0.0)
                    .then(|| per_thousand(l.proxy_cpu, &l))
                    .flatten()
            },
            "waypoint ≤ Envoy",
        );
        row(
            &format!("{proto} all mesh processes' CPU per 1,000 requests (ms)"),
            &|p| {
                let l = pick(p);
                (l.mesh_cpu > 0.0)
                    .then(|| per_thousand(l.mesh_cpu, &l))
                    .flatten()
            },
            "",
        );
    }
    row(
        "L7 proxy peak RSS (MiB)",
        &|p| (p.proxy_rss_mib > 0.0).then_some(p.proxy_rss_mib),
        "waypoint < Envoy",
    );
}
