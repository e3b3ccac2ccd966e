//! Transparent mutual TLS: unmodified programs in enrolled pods talk across
//! nodes, and every byte between the nodes is TLS under the pods' SPIFFE
//! identities.
use std::{net::IpAddr, time::Duration};

use strait_e2e::{
    Mesh, Result, curl, http_server, marker_url, namespace_yaml, require_root, workload_yaml,
};
use strait_topology::{Locality, Spec, Topology};

fn two_nodes() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("a", "n1")
        .pod("b", "n2")
        .pod("plain", "n1")
}

const MARKER: &str = "secret-payload-7f3a";

#[test]
fn curl_to_http_server_across_nodes_is_mutual_tls() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let mesh = Mesh::new(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            workload_yaml(a, "frontend", "web", &[]),
            workload_yaml(b, "backend", "db", &[]),
        ]
        .concat(),
    )?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let _agent2 = mesh.start_agent("n2", &[])?;
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
    let mesh = Mesh::new(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            workload_yaml(a, "frontend", "web", &[]),
            workload_yaml(b, "backend", "db", &[]),
        ]
        .concat(),
    )?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    let mut server = b.spawn(&["iperf3", "-s", "-1", "-J", "-p", "5201"])?;
    server.wait_listening(5201, Duration::from_secs(10))?;
    // Reverse mode: the receiving end is the client, which ends the test only
    // once it has everything. Forward, iperf3's server stops counting when
    // the client's end-of-test message arrives on the control connection,
    // which overtakes data still buffered in any proxy on the way.
    let client = a.run_ok(
        &[
            "iperf3",
            "-c",
            &b.ipv4.to_string(),
            "-p",
            "5201",
            "-n",
            "1G",
            "-R",
            "-J",
        ],
        Duration::from_secs(120),
    )?;
    let client: serde_json::Value = serde_json::from_slice(&client.stdout)?;
    server.wait_timeout(Duration::from_secs(10))?;
    let server: serde_json::Value = serde_json::from_str(&server.log())?;
    let sent = server["end"]["sum_sent"]["bytes"]
        .as_u64()
        .ok_or("no sent bytes")?;
    let received = client["end"]["sum_received"]["bytes"]
        .as_u64()
        .ok_or("no received bytes")?;
    assert!(
        sent >= 1 << 30,
        "b sent {sent} bytes, wanted at least 1 GiB"
    );
    assert_eq!(sent, received, "the ends disagree on the byte count");
    Ok(())
}
