//! `cargo xtask demo`: two clusters on two networks, an agent on every node,
//! and unmodified programs in pods talking over mutual TLS, by address and
//! by names only the mesh knows, across networks through east-west
//! gateways, under an AuthorizationPolicy applied live, staying in their
//! zone and failing over to the next when it dies; and a waypoint routing a
//! service's requests by header and weight, retrying past a failing
//! endpoint.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use strait_e2e::{
    Mesh, curl, curl_body, east_west_gateway_yaml, http_app, http_server, marker_url, metric_sum,
    namespace_yaml, topology_node_yaml, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

use crate::cmd::{self, section};

const HTTP_PORT: u16 = 8080;
/// What the wire captures look at: TCP but Prometheus's scrapes of the
/// agents' metrics port (plain HTTP, and no workload's traffic).
const NOT_SCRAPES: &[&str] = &["tcp", "and", "not", "port", "15020"];

fn spec() -> Spec {
    let mut spec = Spec::new();
    for (name, cluster, region, zone) in NODES {
        let network = format!("{cluster}-net");
        let locality = Locality::new(region, zone, "");
        // Each network's edge, on the segment between networks, runs its
        // east-west gateway.
        spec = if name.ends_with("-gw") {
            spec.gateway_node(name, cluster, &network, locality)
        } else {
            spec.node(name, cluster, &network, locality)
        };
    }
    spec.pod("frontend", "east-1")
        .pod("batch", "east-1")
        .pod("backend-near", "east-1")
        .pod("backend-east", "east-2")
        .pod("client-west", "west-1")
        .pod("backend-west", "west-2")
        .pod("waypoint", "east-1")
        .pod("reviews-v1", "east-2")
        .pod("reviews-v2", "east-2")
        .pod("reviews-bad", "east-2")
        // The rate-limit service (in the mesh) and its Redis (outside it).
        .pod("ratelimit", "east-2")
        .pod("redis", "east-1")
}

pub(crate) fn boxed(err: Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error {
    anyhow::Error::from_boxed(err)
}

pub fn run(keep: bool) -> Result<()> {
    let bin = cmd::build_release(&[
        "strait-agent",
        "strait-ca",
        "straitctl",
        "strait-waypoint",
        "strait-ratelimit",
    ])?;

    section("topology: network namespaces, veth pairs and bridges");
    let topo = Topology::create(spec()).context("creating the demo topology")?;
    print_topology(&topo);

    section("mesh config: namespace `shop` is in the mesh (istio.io/dataplane-mode=ambient)");
    let mesh = Mesh::with_bin_dir(&topo, bin.clone()).map_err(boxed)?;
    let accounts = [
        ("frontend", "frontend"),
        ("batch", "batch"),
        ("backend-near", "backend"),
        ("backend-east", "backend"),
        ("client-west", "client"),
        ("backend-west", "backend"),
        ("reviews-v1", "reviews"),
        ("reviews-v2", "reviews"),
        ("reviews-bad", "reviews"),
        ("ratelimit", "ratelimit"),
    ];
    let mut yaml = namespace_yaml("shop", true);
    yaml.push_str(&namespace_yaml("istio-system", false));
    for (pod, sa) in accounts {
        let labels: &[(&str, &str)] = match pod {
            "backend-near" | "backend-east" => &[("service", "backend")],
            "reviews-v2" => &[("service", "reviews"), ("version", "v2")],
            // The bad one is a v1 that fails every request.
            "reviews-v1" | "reviews-bad" => &[("service", "reviews"), ("version", "v1")],
            "ratelimit" => &[("service", "ratelimit")],
            _ => &[],
        };
        yaml.push_str(&workload_yaml(topo.pod(pod)?, "shop", sa, labels));
        println!(
            "  WorkloadEntry shop/{pod:<13} serviceAccount {sa:<9} -> spiffe://cluster.local/ns/shop/sa/{sa}"
        );
    }
    for node in topo.nodes() {
        yaml.push_str(&topology_node_yaml(node));
    }
    for (network, gateway) in [("east-net", "east-gw"), ("west-net", "west-gw")] {
        yaml.push_str(&east_west_gateway_yaml(&topo, network, &[gateway]).map_err(boxed)?);
    }
    yaml.push_str(SERVICES);
    yaml.push_str("---\n");
    yaml.push_str(&waypoint_yaml(
        "waypoint",
        "shop",
        topo.pod("waypoint")?,
        &[],
    ));
    yaml.push_str(REVIEWS);
    println!(
        "  Node objects with topology labels: workloads take their node's locality and network"
    );
    println!("  Service      shop/backend       10.96.0.80:8080 -> pods labelled service=backend");
    println!(
        "                                  istio.io/global=true: reachable from other networks"
    );
    println!(
        "  Gateway      istio-system/eastwest-east-net, eastwest-west-net (istio-east-west, HBONE 15008)"
    );
    println!(
        "  Service      shop/backend-west  10.96.0.81:8080 -> backend-west, istio.io/global=true"
    );
    println!("  ServiceEntry shop/api           api.shop.global:80 -> the same pods, port 8080");
    println!(
        "  Gateway      shop/waypoint      (istio-waypoint): instance pod `waypoint` on east-1"
    );
    println!(
        "  Service      shop/reviews       10.96.0.85:9080 -> reviews-v1, -v2, -bad; istio.io/use-waypoint=waypoint"
    );
    println!(
        "  VirtualService shop/reviews     end-user: jason -> v2; else v1 80 / v2 20; retries 3 on 5xx"
    );
    mesh.write("demo.yaml", &yaml).map_err(boxed)?;

    section("agents: one per node; each captures only its own node's pods (real eBPF)");
    let mut agents = Vec::new();
    for node in topo.nodes() {
        if let Some((v4, v6)) = node.addrs.internet {
            let network = &node.spec.network;
            agents.push(mesh.start_gateway(node.name(), network).map_err(boxed)?);
            println!(
                "  {:<8} east-west gateway into {network}: HBONE on {v4}:15008 and [{v6}]:15008",
                node.name()
            );
            continue;
        }
        agents.push(mesh.start_agent(node.name(), &[]).map_err(boxed)?);
        let workloads = mesh.straitctl(node.name(), &["workloads"]).map_err(boxed)?;
        for line in workloads.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [name, _, _, identity, state @ ..] = fields.as_slice() {
                println!(
                    "  {:<8} {name:<13} {} ({identity})",
                    node.name(),
                    state.join(" ")
                );
            }
        }
    }

    section(
        "Prometheus (Debian's), one per network: scraping its agents, gateway, waypoint and CA every second",
    );
    let (prometheus, east_forward) = scrape(&mesh, &topo, "east-net", "east-1")?;
    let (_west_prometheus, west_forward) = scrape(&mesh, &topo, "west-net", "west-1")?;
    let dashboard = strait_e2e::dashboard::Dashboard::start(
        &bin,
        vec![east_forward, west_forward],
        2,
        &topo.scratch_dir().join("dashboard"),
    )
    .map_err(boxed)?;
    println!(
        "  straitctl dashboard: {} (the live topology view, from both; open it while the demo runs,",
        dashboard.url()
    );
    println!("  or run `cargo xtask demo --keep` to keep the demo up and look at it)");

    section("certificate authority: strait-ca, its own process, the only holder of the keys");
    for network in ["east-net", "west-net"] {
        if let Some((node, addr, pid)) = mesh.ca_of(network) {
            let metrics = mesh.ca_metrics(network).map_err(boxed)?;
            println!(
                "  {network}: replica on {node} ({addr}, pid {pid}); signed {} certificate(s), refused {}",
                metric_sum(&metrics, "strait_ca_requests_total", &["result=\"signed\""]),
                metric_sum(
                    &metrics,
                    "strait_ca_requests_total",
                    &["result=\"refused\""]
                ),
            );
        }
    }
    println!("  agents authenticate with a per-node credential and send CSRs; a node gets only");
    println!("  the identities of the workloads it runs (by the CA's own reading of the config)");

    section("traffic: curl -> python3 -m http.server, unmodified, across nodes");
    let _east = http_server(
        topo.pod("backend-east")?,
        HTTP_PORT,
        "hello from backend-east",
    )
    .map_err(boxed)?;
    let _west = http_server(
        topo.pod("backend-west")?,
        HTTP_PORT,
        "hello from backend-west",
    )
    .map_err(boxed)?;
    let mut near = http_server(
        topo.pod("backend-near")?,
        HTTP_PORT,
        "hello from backend-near",
    )
    .map_err(boxed)?;
    let frontend = topo.pod("frontend")?;
    let capture = topo.node("east-1")?.capture("eth0", NOT_SCRAPES)?;
    for (target, ip) in [
        ("backend-east", IpAddr::V4(topo.pod("backend-east")?.ipv4)),
        ("backend-east", IpAddr::V6(topo.pod("backend-east")?.ipv6)),
    ] {
        println!(
            "  frontend    -> {target:<13} {ip:<15} {}",
            answer(frontend, ip)?
        );
    }
    let pcap = capture.finish()?;
    let west = IpAddr::V4(topo.pod("backend-west")?.ipv4);
    println!(
        "  client-west -> backend-west  {west:<15} {}",
        answer(topo.pod("client-west")?, west)?
    );
    println!(
        "  frontend    -> backend-west  {west:<15} {} (another network: through west's gateway)",
        answer(frontend, west)?
    );

    section("names only the mesh knows: DNS captured by eBPF, answered by the agent");
    let resolv = frontend.scratch_dir()?.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:1 timeout:1 attempts:1\n",
    )?;
    println!(
        "  frontend's resolv.conf: nameserver 10.96.0.10 (nothing listens there), search shop.svc.cluster.local ..."
    );
    let named = frontend.place.with_resolv_conf(resolv);
    for name in [
        "backend",
        "backend.shop.svc.cluster.local",
        "api.shop.global",
    ] {
        let out = named.run(&["getent", "hosts", name], Duration::from_secs(10))?;
        let ip = String::from_utf8_lossy(&out.stdout);
        let ip = ip.split_whitespace().next().unwrap_or("(no answer)");
        println!("  getent hosts {name:<31} {ip}");
    }
    for url in [
        "http://backend:8080/marker",
        "http://backend.shop.svc.cluster.local:8080/marker",
        "http://api.shop.global/marker",
    ] {
        println!("  curl {url:<49} {}", answer_url(&named, url)?);
    }

    section("on the wire between east-1 and east-2 (tcpdump on east-1 eth0)");
    let ports = server_ports(&pcap);
    println!(
        "  {} TCP packets, server ports seen: {}",
        pcap.len(),
        ports.join(", ")
    );
    println!("  TLS ClientHellos: {}", pcap.tls_handshakes());
    let leaked = pcap.contains(b"GET /") || pcap.contains(b"hello from");
    println!(
        "  HTTP request or response bytes in the clear: {}",
        if leaked { "YES" } else { "none" }
    );
    if leaked || pcap.tls_handshakes() == 0 {
        bail!("the traffic between the nodes was not mutual TLS");
    }

    across_networks(&mesh, &topo)?;

    section("AuthorizationPolicy, applied and removed live (no restart)");
    let batch = topo.pod("batch")?;
    let backend = IpAddr::V4(topo.pod("backend-east")?.ipv4);
    println!("  before: frontend {}", answer(frontend, backend)?);
    println!("          batch    {}", answer(batch, backend)?);
    let written = Instant::now();
    mesh.write("policy.yaml", POLICY).map_err(boxed)?;
    println!("  + policy.yaml: ALLOW only cluster.local/ns/shop/sa/frontend to app=backend-east");
    let took = until(|| Ok(!reaches(batch, backend)?))?;
    println!("  in force after {} ms", took.as_millis());
    println!("  now:    frontend {}", answer(frontend, backend)?);
    println!("          batch    {}", answer(batch, backend)?);
    let denied = metric_sum(
        &mesh.metrics("east-2").map_err(boxed)?,
        "strait_connection_failures_total",
        &["reason=\"denied\""],
    );
    println!("  east-2 strait_connection_failures_total{{reason=\"denied\"}} = {denied}");
    std::fs::remove_file(mesh.config_dir.join("policy.yaml"))?;
    let removed = Instant::now();
    until(|| reaches(batch, backend))?;
    println!(
        "  - policy.yaml: batch reaches backend-east again after {} ms (policy written {} ms before)",
        removed.elapsed().as_millis(),
        written.elapsed().as_millis()
    );

    section("locality and failover: frontend is in us-east/us-east-1a");
    let table = mesh
        .straitctl("east-1", &["endpoints", "backend.shop"])
        .map_err(boxed)?;
    for line in table.lines() {
        println!("  {line}");
    }
    let vip: IpAddr = "10.96.0.80".parse()?;
    let load =
        |since| strait_e2e::connections(frontend, vip, HTTP_PORT, 1000, 4, since).map_err(boxed);
    let got = load(0.0)?;
    println!(
        "  1000 connections to backend (10.96.0.80): {:?}, failed {}",
        got.answers, got.failures
    );
    near.kill()?;
    let killed = strait_e2e::monotonic_now();
    println!("  killed backend-near's server (its zone's only endpoint)");
    let got = load(killed)?;
    println!(
        "  1000 connections to backend: {:?}, failed {}; first answer from the other zone {:.0} ms after the kill (client started {:.0} ms after it)",
        got.answers,
        got.failures,
        got.first_of(&["hello from backend-east"])
            .unwrap_or(f64::NAN),
        got.started_ms
    );
    if got.failures > 0 || got.count(&["hello from backend-east"]) != got.total() {
        bail!("failover to the other zone did not take every connection");
    }
    let table = mesh
        .straitctl("east-1", &["endpoints", "backend.shop"])
        .map_err(boxed)?;
    for line in table.lines() {
        println!("  {line}");
    }

    waypoint(&mesh, &topo)?;
    rate_limits(&mesh, &topo, &bin)?;

    section("metrics on east-2 (Istio's names; reporter=destination)");
    let metrics = mesh.metrics("east-2").map_err(boxed)?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
    {
        let pick = |key: &str| {
            line.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "  opened {} x  {} -> {}  [{}]",
            line.rsplit(' ').next().unwrap_or("?"),
            pick("source_principal"),
            pick("destination_principal"),
            pick("connection_security_policy")
        );
    }

    section("PromQL: Istio's workload dashboard, inbound TCP connections by source (east-net)");
    let query = "sum by (source_workload, destination_workload) (istio_tcp_connections_opened_total{reporter=\"destination\", destination_workload_namespace=\"shop\"})";
    println!("  {query}");
    let mut answer = prometheus.query(query).map_err(boxed)?;
    answer.sort_by(|a, b| b.value.total_cmp(&a.value));
    for sample in &answer {
        let label = |k: &str| sample.labels.get(k).map_or("?", String::as_str);
        println!(
            "  {:>6}  {} -> {}",
            sample.value,
            label("source_workload"),
            label("destination_workload")
        );
    }
    if answer.is_empty() {
        bail!("Prometheus answered nothing for {query}");
    }

    section("certificates on east-2 (straitctl certs)");
    for line in mesh.straitctl("east-2", &["certs"]).map_err(boxed)?.lines() {
        println!("  {line}");
    }

    section("the topology view (straitctl dashboard): what its page draws now");
    print_graph(&dashboard.graph().map_err(boxed)?)?;
    if keep {
        let _trickle = trickle(&topo)?;
        println!();
        println!(
            "  the demo stays up: {} (updated every 2 s; a request a second from frontend",
            dashboard.url()
        );
        println!("  and client-west keeps it live). Press Enter to tear it down.");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    drop(dashboard);
    teardown(agents, topo, "")
}

/// The dashboard's graph, as lines: each edge with its counts, security
/// and gateway.
fn print_graph(graph: &serde_json::Value) -> Result<()> {
    let nodes = graph["nodes"].as_array().map_or(0, Vec::len);
    let edges = graph["edges"].as_array().cloned().unwrap_or_default();
    println!("  {nodes} workloads and gateways, {} edges:", edges.len());
    for e in &edges {
        let via = e["via"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "  {:<30} -> {:<30} {:>5} conn {:>5} req  {:<10} {}",
            e["source"].as_str().unwrap_or("?"),
            e["target"].as_str().unwrap_or("?"),
            e["connections"],
            e["requests"],
            e["security"].as_str().unwrap_or("?"),
            if via.is_empty() {
                String::new()
            } else {
                format!("via {via}")
            }
        );
    }
    if edges.is_empty() {
        bail!("the dashboard's graph has no edges");
    }
    Ok(())
}

/// While the demo is kept up: a request a second (for an hour at most)
/// from frontend to backend and from client-west to backend-west.
fn trickle(topo: &Topology) -> Result<Vec<Process>> {
    let mut loops = Vec::new();
    for (pod, url) in [
        ("frontend", "http://10.96.0.80:8080/marker"),
        ("client-west", "http://10.96.0.81:8080/marker"),
    ] {
        let script = format!(
            "for i in $(seq 3600); do curl -s -o /dev/null --max-time 2 {url}; sleep 1; done"
        );
        loops.push(topo.pod(pod)?.spawn(&["sh", "-c", &script])?);
    }
    Ok(loops)
}

/// Prometheus in `node`'s namespace, scraping every agent and gateway of
/// `network`, its waypoints and its CA; returns once every target is up,
/// with a loopback forward to it for the dashboard.
fn scrape(
    mesh: &Mesh<'_>,
    topo: &Topology,
    network: &str,
    node: &str,
) -> Result<(strait_e2e::prometheus::Prometheus, strait_topology::Forward)> {
    let agents: Vec<String> = topo
        .nodes()
        .iter()
        .filter(|n| n.spec.network == network)
        .map(|n| format!("{}:15020", n.addrs.ipv4))
        .collect();
    let waypoints: Vec<String> = topo
        .pods()
        .iter()
        .filter(|p| p.name == "waypoint")
        .filter(|p| topo.node(&p.node).is_ok_and(|n| n.spec.network == network))
        .map(|p| format!("{}:15020", p.ipv4))
        .collect();
    let cas: Vec<String> = mesh
        .ca_of(network)
        .map(|(_, addr, _)| format!("{}:{}", addr.ip(), addr.port() + 2))
        .into_iter()
        .collect();
    // Waypoints start later in the scenario.
    let targets = agents.len() + cas.len();
    let place = &topo.node(node)?.place;
    let ip = topo.node(node)?.addrs.ipv4;
    let prometheus = strait_e2e::prometheus::Prometheus::start(
        place,
        ip.into(),
        &topo.scratch_dir().join(format!("prometheus-{network}")),
        &[
            ("strait-agents", agents.clone()),
            ("strait-waypoints", waypoints.clone()),
            ("strait-ca", cas.clone()),
        ],
    )
    .map_err(boxed)?;
    prometheus
        .wait_up(targets, Duration::from_secs(60))
        .map_err(boxed)?;
    println!(
        "  {network}: http://{} (in {node}'s namespace): agents and gateway {}, waypoints [{}], CA {}",
        prometheus.addr(),
        agents.join(" "),
        waypoints.join(" "),
        cas.join(" ")
    );
    let forward = place.forward(std::net::SocketAddr::new(
        ip.into(),
        strait_e2e::prometheus::PORT,
    ))?;
    Ok((prometheus, forward))
}

/// The reviews service, bound to the waypoint: a header route, an 80/20
/// split between subsets, and a retry hiding an endpoint that fails every
/// request.
fn waypoint(mesh: &Mesh<'_>, topo: &Topology) -> Result<()> {
    section("waypoint: L7 routes for shop/reviews (strait-waypoint, VirtualService as written)");
    let _waypoint = mesh
        .start_waypoint("waypoint", "shop/waypoint")
        .map_err(boxed)?;
    let wp = topo.pod("waypoint")?;
    println!(
        "  strait-waypoint in pod `waypoint` ({}:15008), as spiffe://cluster.local/ns/shop/sa/waypoint",
        wp.ipv4
    );
    let _apps = [
        http_app(topo.pod("reviews-v1")?, HTTP_PORT, "ok", "v1;").map_err(boxed)?,
        http_app(topo.pod("reviews-v2")?, HTTP_PORT, "ok", "v2;").map_err(boxed)?,
        http_app(topo.pod("reviews-bad")?, HTTP_PORT, "fail", "").map_err(boxed)?,
    ];
    let frontend = topo.pod("frontend")?;
    // `count` requests on one keep-alive connection; answers by version.
    let requests = |count: u32, header: Option<&str>| -> Result<(usize, usize, usize)> {
        let url = format!("http://10.96.0.85:9080/reviews?[1-{count}]");
        let mut argv = vec!["curl", "-s", "--max-time", "120"];
        if let Some(h) = header {
            argv.extend(["-H", h]);
        }
        argv.push(&url);
        let out = frontend.place.run_ok(&argv, Duration::from_secs(150))?;
        let body = String::from_utf8_lossy(&out.stdout);
        let (v1, v2) = (body.matches("v1;").count(), body.matches("v2;").count());
        Ok((v1, v2, count as usize - v1 - v2))
    };
    let (v1, v2, failed) = requests(20, Some("end-user: jason"))?;
    println!("  frontend, end-user: jason, 20 requests: v1 {v1}, v2 {v2}, failed {failed}");
    let (v1, v2, failed) = requests(1000, None)?;
    println!(
        "  frontend, 1000 requests: v1 {v1} ({:.1}%), v2 {v2} ({:.1}%), failed {failed}",
        v1 as f64 / 10.0,
        v2 as f64 / 10.0
    );
    if failed > 0 {
        bail!("{failed} requests failed through the waypoint");
    }
    let metrics =
        curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4)).map_err(boxed)?;
    println!(
        "  reviews-bad answers 503 to every request it gets; the retries ({} of them) hid it",
        metric_sum(&metrics, "strait_waypoint_retries_total", &[])
    );
    println!("  the waypoint's istio_requests_total (reporter=waypoint):");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        let pick = |key: &str| {
            line.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "    {:>5} x  {} -> {} ({})  {} {}",
            line.rsplit(' ').next().unwrap_or("?"),
            pick("source_workload"),
            pick("destination_workload"),
            pick("destination_service_name"),
            pick("response_code"),
            pick("response_flags"),
        );
    }
    let east2 = mesh.metrics("east-2").map_err(boxed)?;
    println!(
        "  east-2's agent saw {} connections from spiffe://cluster.local/ns/shop/sa/frontend to reviews, {} from the waypoint's identity: the client's identity reaches the destination",
        metric_sum(
            &east2,
            "istio_tcp_connections_opened_total",
            &[
                "source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"",
                "destination_principal=\"spiffe://cluster.local/ns/shop/sa/reviews\"",
            ]
        ),
        metric_sum(
            &east2,
            "istio_tcp_connections_opened_total",
            &["source_principal=\"spiffe://cluster.local/ns/shop/sa/waypoint\""]
        ),
    );
    Ok(())
}

/// A global rate limit on reviews, written as an EnvoyFilter, applied live:
/// the waypoint asks strait-ratelimit, which counts in Redis.
fn rate_limits(mesh: &Mesh<'_>, topo: &Topology, bin: &std::path::Path) -> Result<()> {
    section(
        "rate limits: an EnvoyFilter's global limit on reviews, counted by strait-ratelimit in Redis",
    );
    let redis = topo.pod("redis")?;
    let mut redis_server = strait_e2e::l7::redis(redis).map_err(boxed)?;
    let limits = mesh
        .config_dir
        .parent()
        .unwrap_or(&mesh.config_dir)
        .join("limits.yaml");
    std::fs::write(
        &limits,
        "domain: shop\ndescriptors:\n- key: generic_key\n  value: reviews\n  rate_limit: {unit: minute, requests_per_unit: 10}\n",
    )?;
    let rls = topo.pod("ratelimit")?;
    let mut service = rls.place.spawn(&[
        &bin.join("strait-ratelimit").display().to_string(),
        "--listen",
        "0.0.0.0:8081",
        "--config",
        &limits.display().to_string(),
        "--redis",
        &format!("redis://{}:6379", redis.ipv4),
        "--stats-addr",
        &format!("{}:15020", rls.ipv4),
    ])?;
    service.wait_listening(8081, Duration::from_secs(10))?;
    let ready = format!("http://{}:15020/healthz/ready", rls.ipv4);
    until(|| {
        Ok(rls
            .place
            .run(&["curl", "-sf", &ready], Duration::from_secs(5))?
            .status
            .success())
    })?;
    println!(
        "  redis-server in pod `redis` ({}), outside the mesh",
        redis.ipv4
    );
    println!(
        "  strait-ratelimit in pod `ratelimit` ({}:8081): domain shop, generic_key reviews, 10 a minute",
        rls.ipv4
    );
    let _waypoint = mesh
        .start_waypoint("waypoint", "shop/waypoint")
        .map_err(boxed)?;
    let _apps = [
        http_app(topo.pod("reviews-v1")?, HTTP_PORT, "ok", "v1;").map_err(boxed)?,
        http_app(topo.pod("reviews-v2")?, HTTP_PORT, "ok", "v2;").map_err(boxed)?,
    ];
    mesh.write("ratelimit.yaml", RATE_LIMIT).map_err(boxed)?;
    println!(
        "  + ratelimit.yaml: Service shop/ratelimit, and an EnvoyFilter bound to the waypoint"
    );
    println!(
        "    inserting envoy.filters.http.ratelimit (domain shop, failure_mode_deny) with the"
    );
    println!("    virtual host's rate_limits: generic_key reviews");
    let frontend = topo.pod("frontend")?;
    let codes = |count: u32| -> Result<Vec<String>> {
        let url = format!("http://10.96.0.85:9080/reviews?[1-{count}]");
        let out = frontend.place.run_ok(
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
                &url,
            ],
            Duration::from_secs(120),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    };
    // In force once the waypoint has read it: the first 429.
    until(|| Ok(codes(1)?.iter().any(|c| c == "429") || codes(20)?.iter().any(|c| c == "429")))?;
    let later = codes(15)?;
    println!(
        "  frontend, 15 more requests within the minute: {} answered 200, {} answered 429 (x-envoy-ratelimited)",
        later.iter().filter(|c| *c == "200").count(),
        later.iter().filter(|c| *c == "429").count()
    );
    std::fs::remove_file(mesh.config_dir.join("ratelimit.yaml"))?;
    until(|| Ok(codes(1)?.iter().all(|c| c == "200")))?;
    println!("  - ratelimit.yaml: reviews answers again");
    let _ = (service.kill(), redis_server.kill());
    Ok(())
}

/// client-west (west-net) calls the backend service, whose endpoints are
/// all in east-net: double HBONE through east's gateway, the identity kept.
fn across_networks(mesh: &Mesh<'_>, topo: &Topology) -> Result<()> {
    section("across networks: west-net -> east-net through east's east-west gateway");
    println!(
        "  west's pods have no route to east's pod addresses; east-gw and west-gw share a segment"
    );
    let table = mesh
        .straitctl("west-1", &["endpoints", "backend.shop"])
        .map_err(boxed)?;
    for line in table.lines() {
        println!("  {line}");
    }
    let gateway = topo.node("east-gw")?;
    let segment = gateway.capture("eth1", &["tcp"])?;
    let inside = gateway.capture("eth0", NOT_SCRAPES)?;
    let client = topo.pod("client-west")?;
    for url in [
        "http://10.96.0.80:8080/marker",
        "http://[fd00:96::80]:8080/marker",
    ] {
        println!("  client-west -> {url:<33} {}", answer_url(client, url)?);
    }
    let (segment, inside) = (segment.finish()?, inside.finish()?);
    for (what, pcap) in [
        ("between the networks (east-gw eth1)", &segment),
        ("inside east-net (east-gw eth0)", &inside),
    ] {
        let ports = server_ports(pcap);
        let leaked = pcap.contains(b"GET /") || pcap.contains(b"hello from");
        println!(
            "  {what}: {} TCP packets, server ports {}, TLS ClientHellos {}, HTTP in the clear: {}",
            pcap.len(),
            ports.join(", "),
            pcap.tls_handshakes(),
            if leaked { "YES" } else { "none" }
        );
        if leaked || pcap.tls_handshakes() == 0 || ports != ["15008"] {
            bail!("{what}: not only mutual TLS to 15008");
        }
    }
    println!("  two TLS sessions per connection: client-west's agent to the gateway (outer),");
    println!("  and to the endpoint's agent inside it (inner), which the gateway never decrypts");
    let metrics = mesh.metrics("east-1").map_err(boxed)?;
    let seen = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            "source_cluster=\"west\"",
        ],
    );
    let carried = metric_sum(
        &mesh.metrics("east-gw").map_err(boxed)?,
        "istio_tcp_connections_opened_total",
        &["reporter=\"source\""],
    );
    println!(
        "  east-1 (backend-near's node) saw {seen} connection(s) from spiffe://cluster.local/ns/shop/sa/client, cluster west;"
    );
    println!("  east-gw carried {carried}");
    if seen == 0 {
        bail!("the destination did not see the client's own identity");
    }
    Ok(())
}

/// The TCP ports below the ephemeral range in a capture: the servers'.
fn server_ports(pcap: &strait_topology::Pcap) -> Vec<String> {
    pcap.tcp_ports()
        .iter()
        .filter(|p| **p < 32768)
        .map(u16::to_string)
        .collect()
}

/// Stops the agents, removes the topology and checks nothing is left;
/// `also` names what else went with it.
pub(crate) fn teardown(agents: Vec<Process>, topo: Topology, also: &str) -> Result<()> {
    section("teardown");
    for mut agent in agents {
        agent.stop(Duration::from_secs(5))?;
    }
    let resources = topo.resources();
    topo.destroy().context("tearing the demo down")?;
    let left = resources.remaining();
    if !left.is_empty() {
        bail!("the demo left {left:?}");
    }
    println!(
        "  removed {} namespaces{also}, the cgroups and the pins; nothing left",
        resources.netns.len()
    );
    Ok(())
}

pub(crate) fn print_topology(topo: &Topology) {
    println!(
        "  {:<8} {:<8} {:<9} {:<20} {:<12} GATEWAY",
        "NODE", "CLUSTER", "NETWORK", "LOCALITY", "ADDRESS"
    );
    for node in topo.nodes() {
        let s = &node.spec;
        let gateway = node
            .addrs
            .internet
            .map(|(v4, _)| v4.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<8} {:<8} {:<9} {:<20} {:<12} {gateway}",
            s.name,
            s.cluster,
            s.network,
            s.locality.to_string(),
            node.addrs.ipv4.to_string()
        );
    }
    println!();
    println!("  {:<13} {:<8} {:<12} IPV6", "POD", "NODE", "IPV4");
    for pod in topo.pods() {
        println!(
            "  {:<13} {:<8} {:<12} {}",
            pod.name,
            pod.node,
            pod.ipv4.to_string(),
            pod.ipv6
        );
    }
}

/// The nodes: name, cluster (whose network is `<cluster>-net`), region and
/// zone, as the topology builds them and their Node objects label them.
const NODES: [(&str, &str, &str, &str); 6] = [
    ("east-1", "east", "us-east", "us-east-1a"),
    ("east-2", "east", "us-east", "us-east-1b"),
    ("east-gw", "east", "us-east", "us-east-1a"),
    ("west-1", "west", "us-west", "us-west-1a"),
    ("west-2", "west", "us-west", "us-west-1b"),
    ("west-gw", "west", "us-west", "us-west-1a"),
];

const SERVICES: &str = "apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: shop
  labels:
    istio.io/global: \"true\"
spec:
  clusterIP: 10.96.0.80
  clusterIPs: [10.96.0.80, \"fd00:96::80\"]
  selector:
    service: backend
  ports:
  - name: http
    port: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: backend-west
  namespace: shop
  labels:
    istio.io/global: \"true\"
spec:
  clusterIP: 10.96.0.81
  selector:
    app: backend-west
  ports:
  - name: http
    port: 8080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: shop
spec:
  hosts: [api.shop.global]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels:
      service: backend
  ports:
  - number: 80
    name: http
    targetPort: 8080
";

/// strait-ratelimit's Service, and a global rate limit on what the
/// waypoint serves.
const RATE_LIMIT: &str = "apiVersion: v1
kind: Service
metadata: {name: ratelimit, namespace: shop}
spec:
  clusterIP: 10.96.0.86
  selector: {service: ratelimit}
  ports:
  - {name: grpc, port: 8081}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: reviews-limit, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: shop
          failure_mode_deny: true
          timeout: 2s
          rate_limit_service:
            grpc_service:
              envoy_grpc: {cluster_name: outbound|8081||ratelimit.shop.svc.cluster.local}
            transport_api_version: V3
  - applyTo: VIRTUAL_HOST
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions: [{generic_key: {descriptor_value: reviews}}]
";

const REVIEWS: &str = "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels:
    istio.io/use-waypoint: waypoint
spec:
  clusterIP: 10.96.0.85
  selector:
    service: reviews
  ports:
  - name: http
    port: 9080
    targetPort: 8080
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - name: canary
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
    retries:
      attempts: 3
      retryOn: 5xx
---
";

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-allow-frontend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: backend-east
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend]
";

fn reaches(place: &Place, ip: IpAddr) -> Result<bool> {
    Ok(curl(place, &marker_url(ip, HTTP_PORT))
        .map_err(boxed)?
        .status
        .success())
}

/// Polls `done` for up to 5 s; how long it took to hold.
fn until(mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > Duration::from_secs(5) {
            bail!("not in effect after 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// The answer, or why there was none.
fn answer(place: &Place, ip: IpAddr) -> Result<String> {
    answer_url(place, &marker_url(ip, HTTP_PORT))
}

pub(crate) fn answer_url(place: &Place, url: &str) -> Result<String> {
    let out = curl(place, url).map_err(boxed)?;
    Ok(if out.status.success() {
        format!("-> \"{}\"", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        format!(
            "-> failed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
