//! One agent serves every pod of its node, so no peer may exhaust it: a
//! thousand TLS handshakes that never finish and a flood of HTTP/2 streams
//! from one identity, while another client's requests keep being served.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, client_cert, closed_by_the_server, connections, footprint, http_server,
    metric_sum, monotonic_now, namespace_yaml, require_root, slow_handshakes, two_nodes,
    wait_for_line_prefix, workload_yaml,
};
use strait_topology::Topology;

#[test]
fn slow_handshakes_and_a_stream_flood_do_not_starve_other_clients() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[
        ("web", "n1"),
        ("attacker", "n1"),
        ("api", "n2"),
    ]))?;
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            // The attacker is outside the mesh: its connections to 15008
            // go straight to api's agent.
            namespace_yaml("outside", false),
            workload_yaml(topo.pod("web")?, "frontend", "web", &[]),
            workload_yaml(topo.pod("attacker")?, "outside", "attacker", &[]),
            workload_yaml(topo.pod("api")?, "backend", "api", &[]),
        ]
        .concat(),
    )?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let agent2 = mesh.start_agent("n2", &[])?;
    let (web, attacker, api) = (topo.pod("web")?, topo.pod("attacker")?, topo.pod("api")?);
    let _server = http_server(api, 8080, "from-api")?;
    let before = footprint(agent2.pid())?;

    // A thousand handshakes that never start.
    let mut slow = slow_handshakes(attacker, api.ipv4.into(), 15008, 1000, 30)?;

    // A flood of streams from one identity, which holds a certificate the
    // mesh trusts (minted here as an operator would), on 30 connections.
    let dir = attacker.scratch_dir()?;
    let (cert, key) = client_cert(
        attacker,
        &dir,
        "flooder",
        "spiffe://cluster.local/ns/frontend/sa/flooder",
        &mesh.ca_dir.join("root-cert.pem"),
        &mesh.ca_dir.join("root-key.pem"),
    )?;
    let url = format!("https://{}:15008/", api.ipv4);
    let mut floods = Vec::new();
    for _ in 0..30 {
        floods.push(attacker.spawn(&[
            "nghttp", "-n", "-y", "--cert", &cert, "--key", &key, "-m", "2000", "-t", "60", &url,
        ])?);
    }

    // Meanwhile, web's requests over the mesh keep being served.
    let started = Instant::now();
    let load = connections(web, IpAddr::V4(api.ipv4), 8080, 300, 4, monotonic_now())?;
    let during = footprint(agent2.pid())?;
    println!(
        "web during the floods: {} answered, {} failed in {:.1}s ({:?})",
        load.total(),
        load.failures,
        started.elapsed().as_secs_f64(),
        load.errors
    );
    assert_eq!(load.failures, 0, "web was starved: {:?}", load.errors);
    assert_eq!(load.total(), 300);

    for mut flood in floods {
        let _ = flood.wait_timeout(Duration::from_secs(60))?;
    }
    let metrics = mesh.metrics("n2")?;
    let limited = metric_sum(
        &metrics,
        "strait_connection_failures_total",
        &["reason=\"limit\""],
    );
    let tls = metric_sum(
        &metrics,
        "strait_connection_failures_total",
        &["reason=\"tls\""],
    );
    wait_for_line_prefix(&mut slow, "closed by the server", Duration::from_secs(60))?;
    println!(
        "api's agent: RSS {} -> {} KiB, fds {} -> {}; refused over a limit {limited}, handshakes failed {tls}; attacker: {}",
        before.0,
        during.0,
        before.1,
        during.1,
        slow.log().replace('\n', ", ")
    );
    assert!(limited > 0, "no peer was held to a limit:\n{metrics}");
    // 64 pending handshakes per address and 16 connections per identity,
    // not a thousand of each.
    assert!(
        during.1 < before.1 + 400,
        "the agent holds {} descriptors (from {})",
        during.1,
        before.1
    );
    let closed = closed_by_the_server(&slow);
    assert!(
        closed >= 900,
        "only {closed} silent connections were closed"
    );
    Ok(())
}
