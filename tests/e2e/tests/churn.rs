//! Pods come and go all day; the agent's footprint must not grow with the
//! history. A thousand enroll/release cycles (20 pods, 50 times each, each
//! with its own identity and certificate, with traffic between them) leave
//! the agent's task count and descriptors where they were and its memory
//! flat.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, curl, footprint, http_server, marker_url, metric_sum, namespace_yaml,
    require_root, two_nodes, workload_yaml,
};
use strait_topology::Topology;

const PODS: usize = 20;
const CYCLES: usize = 50;

/// (tasks, descriptors, RSS in KiB) of n1's agent.
fn agent_footprint(mesh: &Mesh, pid: u32) -> Result<(u64, usize, u64)> {
    let tasks = metric_sum(&mesh.metrics("n1")?, "strait_tasks", &[]);
    let (rss, fds) = footprint(pid)?;
    Ok((tasks, fds, rss))
}

/// Waits until n1's `/workloads` lists `want` pods in state `captured`
/// (and nothing else).
fn wait_captured(mesh: &Mesh, want: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = mesh.admin("n1", "/workloads")?;
        let list = all.as_array().cloned().unwrap_or_default();
        let captured = list.iter().filter(|w| w["state"] == "captured").count();
        if captured == want && list.len() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("wanted {want} captured pods, have: {all}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_thousand_enroll_release_cycles_leave_the_agent_flat() -> Result<()> {
    require_root();
    let mut spec = two_nodes(&[("server", "n2")]);
    for i in 0..PODS {
        spec = spec.pod(&format!("p{i}"), "n1");
    }
    let topo = Topology::create(spec)?;
    let mesh = Mesh::new(&topo)?;
    let base = [
        namespace_yaml("churn", true),
        workload_yaml(topo.pod("server")?, "churn", "server", &[]),
    ]
    .concat();
    // Each pod its own service account, new in every cycle: identities,
    // certificates, rotation tasks and pooled connections come and go.
    let with_pods = |cycle: usize| -> Result<String> {
        let mut yaml = base.clone();
        for i in 0..PODS {
            yaml.push_str(&workload_yaml(
                topo.pod(&format!("p{i}"))?,
                "churn",
                &format!("sa{i}-c{cycle}"),
                &[],
            ));
        }
        Ok(yaml)
    };
    mesh.write("mesh.yaml", &base)?;
    let agent = mesh.start_agent("n1", &[])?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    let server = topo.pod("server")?;
    let _http = http_server(server, 8080, "churn-marker")?;
    let url = marker_url(IpAddr::V4(server.ipv4), 8080);

    let started = Instant::now();
    let mut warm = None;
    for cycle in 0..CYCLES {
        mesh.write("mesh.yaml", &with_pods(cycle)?)?;
        wait_captured(&mesh, PODS)?;
        // Traffic from one pod per cycle (a different one each time), so
        // pooled connections and TLS configurations churn too.
        let client = topo.pod(&format!("p{}", cycle % PODS))?;
        let out = curl(client, &url)?;
        assert!(
            out.status.success(),
            "cycle {cycle}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        mesh.write("mesh.yaml", &base)?;
        wait_captured(&mesh, 0)?;
        if cycle == 4 {
            warm = Some(agent_footprint(&mesh, agent.pid())?);
        }
    }
    let warm = warm.ok_or("no warm measurement")?;
    let end = agent_footprint(&mesh, agent.pid())?;
    let certs = mesh.straitctl("n1", &["certs"])?;
    println!(
        "{} enroll/release cycles in {:.1}s; after 5 cycles: {} tasks, {} fds, {} KiB; after {CYCLES}: {} tasks, {} fds, {} KiB",
        PODS * CYCLES,
        started.elapsed().as_secs_f64(),
        warm.0,
        warm.1,
        warm.2,
        end.0,
        end.1,
        end.2
    );
    assert!(
        end.0 <= warm.0 + 2,
        "tasks grew from {} to {}",
        warm.0,
        end.0
    );
    assert!(
        end.1 <= warm.1 + 2,
        "descriptors grew from {} to {}",
        warm.1,
        end.1
    );
    // The allocator keeps some of what it was given; a leak of even a
    // kilobyte per cycle would show.
    assert!(
        end.2 <= warm.2 + 4096,
        "RSS grew from {} to {} KiB",
        warm.2,
        end.2
    );
    assert!(
        !certs.contains("/sa/sa"),
        "certificates of departed pods are kept:\n{certs}"
    );
    Ok(())
}
