//! `cargo xtask demo`: two clusters on two networks, an agent on every node,
//! and unmodified programs in pods talking over mutual TLS.
use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result, bail};
use strait_e2e::{Mesh, curl, http_server, marker_url, namespace_yaml, workload_yaml};
use strait_topology::{Locality, Place, Spec, Topology};

use crate::cmd::{self, section};

const HTTP_PORT: u16 = 8080;

fn spec() -> Spec {
    Spec::new()
        .gateway_node(
            "east-1",
            "east",
            "east-net",
            Locality::new("us-east", "us-east-1a", ""),
        )
        .node(
            "east-2",
            "east",
            "east-net",
            Locality::new("us-east", "us-east-1b", ""),
        )
        .gateway_node(
            "west-1",
            "west",
            "west-net",
            Locality::new("us-west", "us-west-1a", ""),
        )
        .node(
            "west-2",
            "west",
            "west-net",
            Locality::new("us-west", "us-west-1b", ""),
        )
        .pod("frontend", "east-1")
        .pod("backend-east", "east-2")
        .pod("client-west", "west-1")
        .pod("backend-west", "west-2")
}

fn boxed(err: Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error {
    anyhow::Error::from_boxed(err)
}

pub fn run() -> Result<()> {
    let bin = cmd::build_release(&["strait-agent", "straitctl"])?;

    section("topology: network namespaces, veth pairs and bridges");
    let topo = Topology::create(spec()).context("creating the demo topology")?;
    print_topology(&topo);

    section("mesh config: namespace `shop` is in the mesh (istio.io/dataplane-mode=ambient)");
    let mesh = Mesh::with_bin_dir(&topo, bin.clone()).map_err(boxed)?;
    let accounts = [
        ("frontend", "frontend"),
        ("backend-east", "backend"),
        ("client-west", "client"),
        ("backend-west", "backend"),
    ];
    let mut yaml = namespace_yaml("shop", true);
    for (pod, sa) in accounts {
        yaml.push_str(&workload_yaml(topo.pod(pod)?, "shop", sa, &[]));
        println!(
            "  WorkloadEntry shop/{pod:<13} serviceAccount {sa:<9} -> spiffe://cluster.local/ns/shop/sa/{sa}"
        );
    }
    mesh.write("demo.yaml", &yaml).map_err(boxed)?;

    section("agents: one per node; each captures only its own node's pods (real eBPF)");
    let mut agents = Vec::new();
    for node in topo.nodes() {
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
    let frontend = topo.pod("frontend")?;
    let capture = topo.node("east-1")?.capture("eth0", &["tcp"])?;
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
        "  frontend    -> backend-west  {west:<15} {}",
        answer(frontend, west)?
    );
    println!(
        "  (east and west are separate networks: crossing them needs east-west gateways, not built yet)"
    );

    section("on the wire between east-1 and east-2 (tcpdump on east-1 eth0)");
    let ports: Vec<String> = pcap
        .tcp_ports()
        .iter()
        .filter(|p| **p < 32768)
        .map(u16::to_string)
        .collect();
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

    section("certificates on east-2 (straitctl certs)");
    for line in mesh.straitctl("east-2", &["certs"]).map_err(boxed)?.lines() {
        println!("  {line}");
    }

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
        "  removed {} namespaces, the cgroups and the pins; nothing left",
        resources.netns.len()
    );
    Ok(())
}

fn print_topology(topo: &Topology) {
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

/// The answer, or why there was none.
fn answer(place: &Place, ip: IpAddr) -> Result<String> {
    let out = curl(place, &marker_url(ip, HTTP_PORT)).map_err(boxed)?;
    Ok(if out.status.success() {
        format!("-> \"{}\"", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        format!(
            "-> failed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
