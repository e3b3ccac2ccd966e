//! Transparent mutual TLS: unmodified programs in enrolled pods talk across
//! nodes, and every byte between the nodes is TLS under the pods' SPIFFE
//! identities.
use std::net::IpAddr;

use strait_e2e::{
    Mesh, Result, curl, http_server, iperf_reverse, marker_url, namespace_yaml, require_root,
    workload_yaml,
};
use strait_topology::{Locality, Process, Spec, Topology};

const MARKER: &str = "secret-payload-7f3a";

/// Pod `a` on n1 and pod `b` on n2, both in the mesh, agents running.
fn mesh_of_two(topo: &Topology) -> Result<(Mesh<'_>, [Process; 2])> {
    let mesh = Mesh::new(topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            workload_yaml(topo.pod("a")?, "frontend", "web", &[]),
            workload_yaml(topo.pod("b")?, "backend", "db", &[]),
        ]
        .concat(),
    )?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    Ok((mesh, agents))
}

fn two_nodes() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("a", "n1")
        .pod("b", "n2")
}

#[test]
fn curl_to_http_server_across_nodes_is_mutual_tls() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let (_mesh, _agents) = mesh_of_two(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let server = http_server(b, 8080, MARKER)?;

    let capture = topo.node("n1")?.capture("eth0", &["tcp"])?;
    for ip in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
        let out = curl(a, &marker_url(ip, 8080))?;
        assert!(
            out.status.success(),
            "a -> b {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), MARKER);
    }
    let pcap = capture.finish()?;
    assert!(!pcap.is_empty(), "nothing captured between the nodes");
    assert!(
        pcap.tls_handshakes() >= 1,
        "no TLS handshake on the wire ({} packets)",
        pcap.len()
    );
    assert!(
        !pcap.contains(b"GET /marker"),
        "the HTTP request crossed the wire in the clear"
    );
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "the response crossed the wire in the clear"
    );
    assert!(
        pcap.tcp_ports().contains(&15008),
        "no traffic to HBONE port 15008: {:?}",
        pcap.tcp_ports()
    );
    assert!(
        !pcap.tcp_ports().contains(&8080),
        "port 8080 seen on the wire: {:?}",
        pcap.tcp_ports()
    );

    // The server saw pod a's own addresses as the client.
    let log = server.log();
    assert!(
        log.contains(&format!("{} - -", a.ipv4)),
        "server log lacks {}:\n{log}",
        a.ipv4
    );
    assert!(
        log.contains(&format!("{} - -", a.ipv6)),
        "server log lacks {}:\n{log}",
        a.ipv6
    );
    Ok(())
}

#[test]
fn iperf3_moves_a_gibibyte_and_both_ends_agree() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let (_mesh, _agents) = mesh_of_two(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let (sent, received) = iperf_reverse(a, b, b.ipv4.into(), &["-n", "1G"])?;
    assert!(
        sent >= 1 << 30,
        "b sent {sent} bytes, wanted at least 1 GiB"
    );
    assert_eq!(sent, received, "the ends disagree on the byte count");
    Ok(())
}
