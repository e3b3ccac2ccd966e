//! Killing a node's agent and starting it again: capture stays attached
//! while it is down, new connections work right after readiness, and the
//! pinned maps hold exactly the pods enrolled now (a pod that left the mesh
//! while the agent was down is cleaned out, nothing is duplicated).
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_capture::{Maps, PinLayout};
use strait_e2e::{
    Mesh, Result, curl, http_server, marker_url, namespace_yaml, require_root, workload_yaml,
};
use strait_netns::Netns;
use strait_topology::{Locality, Spec, Topology};

fn config(topo: &Topology, c_labels: &[(&str, &str)]) -> Result<String> {
    Ok([
        namespace_yaml("frontend", true),
        namespace_yaml("backend", true),
        workload_yaml(topo.pod("a")?, "frontend", "web", &[]),
        workload_yaml(topo.pod("b")?, "backend", "db", &[]),
        workload_yaml(topo.pod("c")?, "backend", "cache", c_labels),
    ]
    .concat())
}

/// Netns cookies with a pinned sk_lookup link under `pin_dir`.
fn sk_lookup_links(pin_dir: &std::path::Path) -> Result<BTreeSet<u64>> {
    let prefix = "strait_sk_lookup@netns-";
    Ok(std::fs::read_dir(PinLayout::new(pin_dir).links_dir())?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
        .collect())
}

#[test]
fn agent_restart_keeps_capture_and_reconciles_pinned_state() -> Result<()> {
    require_root();
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
            .pod("a", "n1")
            .pod("b", "n2")
            .pod("c", "n2"),
    )?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, &[])?)?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let mut agent2 = mesh.start_agent("n2", &[])?;
    let (a, b, c) = (topo.pod("a")?, topo.pod("b")?, topo.pod("c")?);
    let cookie =
        |pod: &strait_topology::Pod| -> Result<u64> { Ok(Netns::open(pod.netns_path())?.cookie()) };
    let (b_cookie, c_cookie) = (cookie(b)?, cookie(c)?);
    let _server = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);
    assert!(curl(a, &url)?.status.success());

    let pins = &topo.node("n2")?.pin_dir;
    let maps = Maps::from_pins(pins)?;
    assert_eq!(maps.enrolled(), BTreeSet::from([b_cookie, c_cookie]));
    assert_eq!(sk_lookup_links(pins)?, BTreeSet::from([b_cookie, c_cookie]));
    let links_before: BTreeSet<_> = std::fs::read_dir(PinLayout::new(pins).links_dir())?
        .flatten()
        .map(|e| e.file_name())
        .collect();

    // The agent dies without any chance to clean up.
    agent2.kill()?;
    let links_down: BTreeSet<_> = std::fs::read_dir(PinLayout::new(pins).links_dir())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        links_down, links_before,
        "capture links went away with the agent"
    );
    assert_eq!(
        Maps::from_pins(pins)?.enrolled(),
        BTreeSet::from([b_cookie, c_cookie])
    );

    // While it is down, c leaves the mesh.
    mesh.write(
        "mesh.yaml",
        &config(&topo, &[("istio.io/dataplane-mode", "none")])?,
    )?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    let ready = Instant::now();
    let out = curl(a, &url)?;
    let first = ready.elapsed();
    assert!(
        out.status.success(),
        "first connection after restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        first < Duration::from_secs(2),
        "first connection took {first:?} after readiness"
    );
    eprintln!("first connection served {first:?} after readiness");

    let maps = Maps::from_pins(pins)?;
    assert_eq!(
        maps.enrolled(),
        BTreeSet::from([b_cookie]),
        "stale or duplicate enrollments"
    );
    let mut addrs: Vec<(IpAddr, u64)> = maps.pod_addrs();
    addrs.sort();
    let mut want = vec![
        (IpAddr::V4(b.ipv4), b_cookie),
        (IpAddr::V6(b.ipv6), b_cookie),
    ];
    want.sort();
    assert_eq!(addrs, want, "stale or duplicate pod addresses");
    assert_eq!(
        sk_lookup_links(pins)?,
        BTreeSet::from([b_cookie]),
        "stale sk_lookup links"
    );
    let capture = mesh.straitctl("n2", &["capture"])?;
    assert!(capture.contains("strait_connect4        kept"), "{capture}");
    Ok(())
}
