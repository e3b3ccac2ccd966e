//! `strait-agent` loads its embedded eBPF programs and attaches them to its
//! own node's cgroup subtree only: a connect from one of its pods runs the
//! program, a connect from a pod of another node does not, even with a second
//! agent on the same kernel.
use std::{net::IpAddr, time::Duration};

use strait_capture::StatsSnapshot;
use strait_e2e::{Mesh, Result, curl, http_server, marker_url, require_root, strait_bin};
use strait_ebpf_common::Stat;
use strait_topology::{Locality, Spec, Topology};

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("p1", "n1")
        .pod("p2", "n2")
        .pod("server", "n2")
}

#[test]
fn connect4_runs_for_the_agents_own_node_only() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let (n1, n2) = (topo.node("n1")?, topo.node("n2")?);
    let server_pod = topo.pod("server")?;
    let _server = http_server(server_pod, 8080, "ok")?;
    let url4 = marker_url(IpAddr::V4(server_pod.ipv4), 8080);
    let url6 = marker_url(IpAddr::V6(server_pod.ipv6), 8080);

    // No workload is in the mesh: the programs run, but capture nothing.
    let mesh = Mesh::new(&topo)?;
    let mut agent1 = mesh.start_agent("n1", &[])?;
    let stats1 = || StatsSnapshot::from_pins(&n1.pin_dir);
    let before = stats1()?;

    // A pod of another node connects: agent 1's program must not run.
    let out = curl(topo.pod("p2")?, &url4)?;
    assert!(
        out.status.success(),
        "p2 -> server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stats1()?, before, "n1's program ran for a pod of n2");

    // A pod of n1 connects once over IPv4, once over IPv6.
    let out = curl(topo.pod("p1")?, &url4)?;
    assert!(
        out.status.success(),
        "p1 -> server v4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after4 = stats1()?;
    assert_eq!(
        after4.get(Stat::Connect4Tcp),
        before.get(Stat::Connect4Tcp) + 1,
        "{after4:?}"
    );
    assert_eq!(
        after4.get(Stat::Connect6Tcp),
        before.get(Stat::Connect6Tcp),
        "{after4:?}"
    );
    let out = curl(topo.pod("p1")?, &url6)?;
    assert!(
        out.status.success(),
        "p1 -> server v6: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after6 = stats1()?;
    assert_eq!(
        after6.get(Stat::Connect6Tcp),
        before.get(Stat::Connect6Tcp) + 1,
        "{after6:?}"
    );

    // A second agent on the same kernel, for n2, counts only n2's pods.
    let _agent2 = mesh.start_agent("n2", &[])?;
    let before2 = StatsSnapshot::from_pins(&n2.pin_dir)?;
    let before1 = stats1()?;
    assert!(curl(topo.pod("p2")?, &url4)?.status.success());
    let after2 = StatsSnapshot::from_pins(&n2.pin_dir)?;
    assert_eq!(
        after2.get(Stat::Connect4Tcp),
        before2.get(Stat::Connect4Tcp) + 1
    );
    assert_eq!(stats1()?, before1, "n1's counters moved for n2's pod");

    // straitctl, on the node, reports the same through the admin endpoint.
    let text = mesh.straitctl("n1", &["capture"])?;
    let want = format!("connect4_tcp           {}", after4.get(Stat::Connect4Tcp));
    assert!(
        text.contains(&want),
        "straitctl capture lacks {want:?}:\n{text}"
    );
    assert!(text.contains("strait_connect4        new"), "{text}");

    // A restarted agent keeps the pinned links rather than attaching anew,
    // and capture never stopped: the counters carry on.
    agent1.stop(Duration::from_secs(5))?;
    assert!(curl(topo.pod("p1")?, &url4)?.status.success());
    let while_down = stats1()?;
    assert_eq!(
        while_down.get(Stat::Connect4Tcp),
        after6.get(Stat::Connect4Tcp) + 1,
        "capture stopped with the agent"
    );
    let _agent1 = mesh.start_agent("n1", &[])?;
    let text = mesh.straitctl("n1", &["capture"])?;
    assert!(text.contains("strait_connect4        kept"), "{text}");
    Ok(())
}

#[test]
fn agent_refuses_a_pin_dir_outside_bpffs() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let n1 = topo.node("n1")?;
    let agent = strait_bin("strait-agent");
    let bogus = n1.scratch_dir()?.join("pins");
    let mesh = Mesh::new(&topo)?;
    let out = n1.run(
        &[
            &agent.to_string_lossy(),
            "--node",
            "n1",
            "--config-dir",
            &mesh.config_dir.to_string_lossy(),
            // Capture is attached before the CA is asked for anything.
            "--ca-addr",
            "127.0.0.1:15012",
            "--capture-cgroup",
            &n1.pods_cgroup.to_string_lossy(),
            "--pin-dir",
            &bogus.to_string_lossy(),
        ],
        Duration::from_secs(10),
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not on a bpf filesystem"), "{stderr}");
    assert!(
        stderr.contains(&bogus.to_string_lossy().into_owned()),
        "{stderr}"
    );

    // A node name goes into file names and the CA's decisions: checked.
    let out = n1.run(
        &[
            &agent.to_string_lossy(),
            "--node",
            "../n1",
            "--config-dir",
            &mesh.config_dir.to_string_lossy(),
            "--ca-addr",
            "127.0.0.1:15012",
            "--capture-cgroup",
            &n1.pods_cgroup.to_string_lossy(),
        ],
        Duration::from_secs(10),
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--node") && stderr.contains("DNS-1123"),
        "{stderr}"
    );
    Ok(())
}
