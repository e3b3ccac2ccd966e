//! What is captured and what is not, and what PeerAuthentication does with
//! plaintext: pods outside the mesh talk in the clear; the agent never
//! captures its own connections, even when it runs inside the captured
//! cgroup subtree (as a Kubernetes pod does); STRICT refuses plaintext,
//! PERMISSIVE accepts it.
use std::net::IpAddr;

use strait_capture::StatsSnapshot;
use strait_e2e::{
    Mesh, Result, curl, http_server, marker_url, metric_sum, namespace_yaml, require_root,
    workload_yaml,
};
use strait_ebpf_common::Stat;
use strait_topology::{Locality, Process, Spec, Topology};

const STRICT_POLICY: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-db
  namespace: backend
spec:
  selector:
    matchLabels:
      app: strict
  mtls:
    mode: STRICT
";

/// n1: `a` (in the mesh), `plain` (namespace not in the mesh), `optout`
/// (labelled out); n2: `b` (PERMISSIVE by default) and `strict`.
fn setup(topo: &Topology) -> Result<Mesh<'_>> {
    let mesh = Mesh::new(topo)?;
    let pod = |name| topo.pod(name);
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("legacy", false),
            namespace_yaml("backend", true),
            workload_yaml(pod("a")?, "frontend", "web", &[]),
            workload_yaml(pod("plain")?, "legacy", "default", &[]),
            workload_yaml(
                pod("optout")?,
                "frontend",
                "batch",
                &[("istio.io/dataplane-mode", "none")],
            ),
            workload_yaml(pod("b")?, "backend", "db", &[]),
            workload_yaml(pod("strict")?, "backend", "vault", &[]),
            STRICT_POLICY.to_string(),
        ]
        .concat(),
    )?;
    Ok(mesh)
}

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("a", "n1")
        .pod("plain", "n1")
        .pod("optout", "n1")
        .pod("b", "n2")
        .pod("strict", "n2")
}

fn servers(topo: &Topology) -> Result<(Process, Process)> {
    Ok((
        http_server(topo.pod("b")?, 8080, "from-b")?,
        http_server(topo.pod("strict")?, 8080, "from-strict")?,
    ))
}

#[test]
fn only_enrolled_pods_are_captured_and_never_the_agent() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = setup(&topo)?;
    // Both agents run inside the captured subtree: only their socket mark
    // keeps their own connections from pod namespaces (passthrough to
    // destinations outside the mesh, delivery to the app) from being
    // redirected to themselves.
    let n1 = topo.node("n1")?;
    let mut agents = Vec::new();
    for node in [n1, topo.node("n2")?] {
        let cgroup = node.pods_cgroup.join("strait-agent");
        std::fs::create_dir_all(&cgroup)?;
        agents.push(mesh.start_agent_at(node, &node.place.in_cgroup(cgroup), &[])?);
    }
    let _servers = servers(&topo)?;
    let _outside = http_server(topo.pod("plain")?, 8080, "from-plain")?;
    let b = topo.pod("b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);

    let before = StatsSnapshot::from_pins(&n1.pin_dir)?;
    let capture = n1.capture("eth0", &["tcp"])?;
    for from in ["plain", "optout"] {
        let out = curl(topo.pod(from)?, &url)?;
        assert!(
            out.status.success(),
            "{from} -> b: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pcap = capture.finish()?;
    assert!(
        pcap.contains(b"GET /marker"),
        "pods outside the mesh should talk in the clear"
    );
    assert!(pcap.contains(b"from-b"));
    assert!(!pcap.tcp_ports().contains(&15008), "{:?}", pcap.tcp_ports());
    let after_plain = StatsSnapshot::from_pins(&n1.pin_dir)?;
    assert_eq!(
        after_plain.get(Stat::Redirected),
        before.get(Stat::Redirected),
        "a pod outside the mesh was redirected"
    );

    // The enrolled pod is captured exactly once per connect: the agent's own
    // HBONE connection from the same pod namespace is not.
    let capture = n1.capture("eth0", &["tcp"])?;
    let out = curl(topo.pod("a")?, &url)?;
    assert!(
        out.status.success(),
        "a -> b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcap = capture.finish()?;
    assert!(
        !pcap.contains(b"GET /marker"),
        "the mesh pod's request crossed in the clear"
    );
    assert!(pcap.tcp_ports().contains(&15008));
    let after_mesh = StatsSnapshot::from_pins(&n1.pin_dir)?;
    assert_eq!(
        after_mesh.get(Stat::Redirected),
        after_plain.get(Stat::Redirected) + 1
    );

    // To a destination outside the mesh the agent passes the connection
    // through from the pod's namespace, unchanged.
    let out = curl(
        topo.pod("a")?,
        &marker_url(IpAddr::V4(topo.pod("plain")?.ipv4), 8080),
    )?;
    assert!(
        out.status.success(),
        "a -> plain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-plain");
    let after_passthrough = StatsSnapshot::from_pins(&n1.pin_dir)?;
    assert_eq!(
        after_passthrough.get(Stat::Redirected),
        after_mesh.get(Stat::Redirected) + 1
    );

    let workloads = mesh.straitctl("n1", &["workloads"])?;
    for (name, state) in [
        ("a", "captured"),
        ("plain", "not in the mesh"),
        ("optout", "not in the mesh"),
    ] {
        let line = workloads
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .ok_or(format!("{name} missing:\n{workloads}"))?;
        assert!(line.ends_with(state), "{line}");
    }
    Ok(())
}

#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = setup(&topo)?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    let _servers = servers(&topo)?;
    let strict = marker_url(IpAddr::V4(topo.pod("strict")?.ipv4), 8080);
    let permissive = marker_url(IpAddr::V4(topo.pod("b")?.ipv4), 8080);
    let plain = topo.pod("plain")?;

    let out = curl(plain, &strict)?;
    assert!(
        !out.status.success(),
        "plaintext reached a STRICT workload: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = curl(plain, &permissive)?;
    assert!(
        out.status.success(),
        "plaintext to PERMISSIVE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b");
    // Over mTLS the STRICT workload answers.
    let out = curl(topo.pod("a")?, &strict)?;
    assert!(
        out.status.success(),
        "mTLS to STRICT: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics = mesh.metrics("n2")?;
    let refused = metric_sum(
        &metrics,
        "strait_connection_failures_total",
        &["direction=\"inbound\"", "reason=\"strict_mtls\""],
    );
    assert_eq!(refused, 1, "{metrics}");
    let opened = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "destination_workload=\"strict\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/frontend/sa/web\"",
        ],
    );
    assert_eq!(opened, 1, "{metrics}");
    Ok(())
}
