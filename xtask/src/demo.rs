//! `cargo xtask demo`: a two-cluster, two-network topology with an agent on
//! every node, showing what the mesh does on it today.
use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result, bail};
use strait_e2e::{Mesh, curl, http_server, marker_url};
use strait_topology::{Locality, Place, Process, Spec, Topology};

use crate::cmd::{self, cargo, section, target_dir};

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

pub fn run() -> Result<()> {
    section("build (release)");
    cmd::run(cargo().args([
        "build",
        "--release",
        "--bins",
        "-p",
        "strait-agent",
        "-p",
        "straitctl",
    ]))?;
    let bin = target_dir().join("release");

    section("topology");
    let topo = Topology::create(spec()).context("creating the demo topology")?;
    print_topology(&topo);

    section("agents: one per node, each capturing only its own node's pods");
    let mesh =
        Mesh::with_agent(&topo, bin.join("strait-agent")).map_err(anyhow::Error::from_boxed)?;
    let mut agents = Vec::new();
    for node in topo.nodes() {
        agents.push(
            mesh.start_agent(node.name(), &[])
                .map_err(anyhow::Error::from_boxed)?,
        );
        println!(
            "  {:<8} agent ready (pid {})",
            node.name(),
            agents.last().map(Process::pid).unwrap_or(0)
        );
    }

    section("traffic: unmodified curl and python3 http.server in pods");
    let _east = http_server(
        topo.pod("backend-east")?,
        HTTP_PORT,
        "hello from backend-east",
    )
    .map_err(anyhow::Error::from_boxed)?;
    let _west = http_server(
        topo.pod("backend-west")?,
        HTTP_PORT,
        "hello from backend-west",
    )
    .map_err(anyhow::Error::from_boxed)?;
    let frontend = topo.pod("frontend")?;
    for (target, ip) in [
        ("backend-east", IpAddr::V4(topo.pod("backend-east")?.ipv4)),
        ("backend-east", IpAddr::V6(topo.pod("backend-east")?.ipv6)),
        ("backend-west", IpAddr::V4(topo.pod("backend-west")?.ipv4)),
    ] {
        let answer = answer(frontend, ip)?;
        println!("  frontend -> {target:<13} {ip:<18} {answer}");
    }
    let answer = answer(
        topo.pod("client-west")?,
        IpAddr::V4(topo.pod("backend-west")?.ipv4),
    )?;
    println!(
        "  client-west -> backend-west  {:<18} {answer}",
        topo.pod("backend-west")?.ipv4
    );
    println!("  (east and west are separate networks: pod addresses do not route between them)");

    section("capture: what each node's eBPF programs saw (straitctl capture)");
    let ctl = bin.join("straitctl");
    for node in topo.nodes() {
        let out = node
            .run_ok(
                &[&ctl.to_string_lossy(), "capture"],
                Duration::from_secs(10),
            )
            .with_context(|| format!("straitctl capture on {}", node.name()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let counters: Vec<String> = text
            .lines()
            .skip_while(|l| !l.starts_with("COUNTER"))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join("="))
            .collect();
        let programs: Vec<String> = text
            .lines()
            .skip_while(|l| !l.starts_with("PROGRAM"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        println!(
            "  {:<8} attached: {}  counters: {}",
            node.name(),
            programs.join(", "),
            counters.join(" ")
        );
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
    let out = curl(place, &marker_url(ip, HTTP_PORT)).map_err(anyhow::Error::from_boxed)?;
    Ok(if out.status.success() {
        format!("-> \"{}\"", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        format!(
            "-> no route ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
