//! Enrollment fails closed: a pod that should be in the mesh never runs
//! outside it. Without a certificate (the CA is away) its traffic fails
//! instead of going out in the clear, and it is enrolled once the CA
//! answers; a pod whose network namespace is recreated with the same
//! address is captured again.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, curl, http_server, marker_url, metric_sum, namespace_yaml, require_root,
    two_nodes, workload_yaml,
};
use strait_topology::{Spec, Topology};

fn spec() -> Spec {
    two_nodes(&[("a", "n1"), ("b", "n2"), ("outsider", "n2")])
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("frontend", true),
        namespace_yaml("backend", true),
        namespace_yaml("outside", false),
        workload_yaml(topo.pod("a")?, "frontend", "web", &[]),
        workload_yaml(topo.pod("b")?, "backend", "db", &[]),
        workload_yaml(topo.pod("outsider")?, "outside", "outsider", &[]),
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: frontend
spec:
  mtls:
    mode: STRICT
---
"
        .to_string(),
    ]
    .concat())
}

#[test]
fn without_a_certificate_a_pod_fails_closed_and_is_enrolled_once_the_ca_answers() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let _server = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);

    // n1's agent is pointed at a CA replica that is not running yet.
    let n1 = topo.node("n1")?;
    let absent = format!("{}:15099", n1.addrs.ipv4);
    let _agent1 = mesh.start_agent("n1", &[("--ca-addr", &absent)])?;
    let (state, _) = mesh.wait_state("n1", "a", Duration::from_secs(20), |s| {
        s.starts_with("fail-closed: no certificate")
    })?;
    println!("a while the CA is away: {state}");
    // a is STRICT: plaintext from outside the mesh never reaches its app,
    // enrolled or not.
    let _a_server = http_server(a, 8081, "a-in-the-clear")?;
    let outsider = topo.pod("outsider")?;
    let out = curl(outsider, &marker_url(IpAddr::V4(a.ipv4), 8081))?;
    assert!(
        !out.status.success(),
        "plaintext reached the STRICT workload while it was not enrolled"
    );
    assert!(state.contains("unavailable"), "{state}");
    let metrics = mesh.metrics("n1")?;
    assert_eq!(
        metric_sum(&metrics, "strait_workloads", &["state=\"pending\""]),
        1
    );
    assert!(metric_sum(&metrics, "strait_enrollment_failures_total", &[]) >= 1);

    // Its connections fail; none goes out in the clear.
    let capture = n1.capture("eth0", &["tcp"])?;
    for _ in 0..3 {
        assert!(
            !curl(a, &url)?.status.success(),
            "a reached b without a certificate"
        );
    }
    let pcap = capture.finish()?;
    assert!(
        !pcap.tcp_ports().contains(&8080) && !pcap.contains(b"GET /marker"),
        "a's traffic left uncaptured: {:?}",
        pcap.tcp_ports()
    );
    assert!(
        metric_sum(
            &mesh.metrics("n1")?,
            "strait_connection_failures_total",
            &["reason=\"no_certificate\""]
        ) >= 3
    );

    // The CA comes up where the agent looks for it: a is enrolled on the
    // next retry, and works over mTLS.
    let _ca = mesh.start_ca("n1", &mesh.ca_dir, 15099, &[])?;
    let (state, took) = mesh.wait_state("n1", "a", Duration::from_secs(60), |s| s == "captured")?;
    println!("a {state} {took:?} after the CA came up");
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_pod_whose_namespace_is_recreated_is_captured_again() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let agent2 = mesh.start_agent("n2", &[])?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let first = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);
    assert!(curl(a, &url)?.status.success());

    // The pod restarts in place: same name, same address, a new namespace.
    drop(first);
    let recreated = Instant::now();
    topo.recreate_pod("b")?;
    let _second = http_server(b, 8080, "from-b-again")?;
    let (_, took) = mesh.wait_state("n2", "b", Duration::from_secs(30), |s| s == "captured")?;
    // The state reads "captured" before the namespace change is noticed
    // too: wait for a connection that works (the new namespace captured).
    let deadline = Instant::now() + Duration::from_secs(30);
    let capture = topo.node("n1")?.capture("eth0", &["tcp"])?;
    loop {
        let out = curl(a, &url)?;
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b-again");
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "a cannot reach the recreated b over the mesh: {}\nn2's workloads: {}\nn2's agent:\n{}",
                String::from_utf8_lossy(&out.stderr),
                mesh.admin("n2", "/workloads")?,
                agent2.log()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "b captured again {:?} after its namespace was recreated (state captured after {took:?})",
        recreated.elapsed()
    );
    let pcap = capture.finish()?;
    assert!(!pcap.tcp_ports().contains(&8080), "{:?}", pcap.tcp_ports());
    assert!(pcap.tcp_ports().contains(&15008));
    // b's own connections are captured too: it talks to a over mTLS.
    let _a_server = http_server(a, 8081, "from-a")?;
    let out = curl(b, &marker_url(IpAddr::V4(a.ipv4), 8081))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opened = metric_sum(
        &mesh.metrics("n2")?,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"source\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert!(opened >= 1, "b's connection to a was not over mTLS");
    Ok(())
}
