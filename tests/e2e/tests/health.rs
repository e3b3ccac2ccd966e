//! Endpoint health at L4: an endpoint that accepts TCP but resets every
//! HBONE connection is ejected after the configured consecutive errors,
//! returns after the ejection time, and `maxEjectionPercent` caps how many
//! are out; WorkloadGroup probes (HTTP, TCP, exec), run by the agent of
//! the workload's node, take endpoints out of and back into service for
//! every agent.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, connections, http_server, metric_sum, namespace_yaml, node_yaml, require_root,
    workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

static TURN: Mutex<()> = Mutex::new(());

/// A listener on the HBONE port that accepts and resets at once (SO_LINGER
/// 0), printing how many it has taken.
fn resetter(place: &Place) -> Result<Process> {
    const SCRIPT: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15008))
s.listen(128)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("accepted", n, flush=True)
"#;
    let mut p = place.spawn(&["python3", "-u", "-c", SCRIPT])?;
    p.wait_listening(15008, Duration::from_secs(10))?;
    Ok(p)
}

/// How many connections a [`resetter`] has taken.
fn accepted(p: &Process) -> u64 {
    p.log()
        .lines()
        .filter_map(|l| l.strip_prefix("accepted ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The endpoints `/config_dump` lists as ejected now, by address.
fn ejected(mesh: &Mesh<'_>) -> Result<Vec<String>> {
    let dump = mesh.admin("n1", "/config_dump")?;
    Ok(dump["ejected"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|e| e["endpoint"].as_str())
                .filter_map(|a| a.split(':').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn resetting_endpoints_are_ejected_capped_and_return() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    // n3 runs no agent: its pods are the resetters, in the mesh by config.
    let spec = Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n3", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("good", "n2")
        .pod("bad1", "n3")
        .pod("bad2", "n3")
        .pod("bad3", "n3");
    let topo = Topology::create(spec)?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = namespace_yaml("shop", true);
    for n in ["n1", "n2", "n3"] {
        yaml.push_str(&node_yaml(n, "r1", "z1"));
    }
    yaml.push_str(&workload_yaml(topo.pod("client")?, "shop", "client", &[]));
    for pod in ["good", "bad1", "bad2", "bad3"] {
        yaml.push_str(&workload_yaml(
            topo.pod(pod)?,
            "shop",
            "web",
            &[("service", "web")],
        ));
    }
    yaml.push_str(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.50
  selector:
    service: web
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: shop
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy:
    # The port's settings win over these.
    outlierDetection:
      consecutive5xxErrors: 100
    portLevelSettings:
    - port:
        number: 80
      outlierDetection:
        consecutive5xxErrors: 3
        interval: 1s
        # Far longer than the round below takes, so no ejection ends
        # during it and the counts are exact.
        baseEjectionTime: 10s
        maxEjectionPercent: 50
",
    );
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _server = http_server(&topo.pod("good")?.place, 8080, "good")?;
    let bad: Vec<(String, Process)> = ["bad1", "bad2", "bad3"]
        .iter()
        .map(|p| Ok((p.to_string(), resetter(&topo.pod(p)?.place)?)))
        .collect::<Result<_>>()?;
    let ip_of = |pod: &str| -> Result<String> { Ok(topo.pod(pod)?.ipv4.to_string()) };
    let client = &topo.pod("client")?.place;
    let vip: IpAddr = "10.96.0.50".parse()?;

    // One at a time, so the error runs are exactly what each endpoint saw.
    let started = Instant::now();
    let got = connections(client, vip, 80, 60, 1, 0.0)?;
    println!("first round: {:?}, failed {}", got.answers, got.failures);
    assert_eq!(got.failures, 0, "{:?}", got.errors);
    assert_eq!(got.count(&["good"]), 60);
    let out = ejected(&mesh)?;
    let counts: Vec<(String, u64)> = bad.iter().map(|(n, p)| (n.clone(), accepted(p))).collect();
    println!(
        "ejected {out:?}; HBONE connections each resetter took: {counts:?}; the round took {:?}",
        started.elapsed()
    );
    // 50% of 4 endpoints: two out at most, both resetters, each after
    // exactly three errors; the third keeps being tried (and failing over).
    assert_eq!(out.len(), 2, "ejected: {out:?}");
    let mut out_names = Vec::new();
    for (name, count) in &counts {
        if out.contains(&ip_of(name)?) {
            assert_eq!(*count, 3, "{name} was ejected after {count} errors");
            out_names.push(name.clone());
        } else {
            assert!(*count > 3, "{name}, capped, took only {count}");
        }
    }
    assert!(!out.contains(&ip_of("good")?));
    let ejections = metric_sum(&mesh.metrics("n1")?, "strait_outlier_ejections_total", &[]);
    assert_eq!(ejections, 2);

    // Back after baseEjectionTime (10 s, on the 1 s interval beat).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ejected(&mesh)?.is_empty() {
        if Instant::now() > deadline {
            return Err("ejected endpoints did not return".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_after = started.elapsed();
    println!("ejected endpoints back after {back_after:?}");
    assert!(back_after >= Duration::from_secs(10), "{back_after:?}");
    let before: Vec<u64> = bad.iter().map(|(_, p)| accepted(p)).collect();
    let got = connections(client, vip, 80, 60, 1, 0.0)?;
    assert_eq!(got.failures, 0, "{:?}", got.errors);
    for ((name, p), before) in bad.iter().zip(before) {
        if out_names.contains(name) {
            assert!(
                accepted(p) > before,
                "{name} was not tried again after its ejection ended"
            );
        }
    }
    Ok(())
}

/// A WorkloadGroup with `probe`, whose members carry `probe: <kind>`.
fn group_yaml(kind: &str, probe: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata:\n  name: {kind}\n  namespace: shop\nspec:\n  metadata:\n    labels:\n      probe: {kind}\n  template:\n    serviceAccount: {kind}\n  probe:\n    periodSeconds: 1\n    failureThreshold: 1\n{probe}---\n"
    )
}

fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  clusterIP: {ip}\n  selector:\n    probe: {name}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\n"
    )
}

/// The health column `straitctl endpoints` shows on n1 for `pod`.
fn health_of(mesh: &Mesh<'_>, service: &str, pod: &str) -> Result<String> {
    let table = mesh.straitctl("n1", &["endpoints", &format!("{service}.shop")])?;
    let line = table
        .lines()
        .find(|l| l.contains(&format!("shop/{pod} ")))
        .ok_or_else(|| format!("{pod} missing:\n{table}"))?;
    Ok(line.to_string())
}

fn wait_health(mesh: &Mesh<'_>, service: &str, pod: &str, want: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let line = health_of(mesh, service, pod)?;
        if line.contains(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(15) {
            return Err(format!("{service}: {pod} never showed {want:?}: {line}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn probes_take_endpoints_out_and_back_for_every_agent() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    // Near endpoints on n2 (the client's zone), far ones on n3.
    let mut spec = Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n3", "c1", "net1", Locality::new("r2", "z1", ""))
        .pod("client", "n1")
        .pod("down", "n2");
    for kind in ["http", "tcp", "exec"] {
        spec = spec
            .pod(&format!("near-{kind}"), "n2")
            .pod(&format!("far-{kind}"), "n3");
    }
    let topo = Topology::create(spec)?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = namespace_yaml("shop", true);
    for (n, r) in [("n1", "r1"), ("n2", "r1"), ("n3", "r2")] {
        yaml.push_str(&node_yaml(n, r, "z1"));
    }
    yaml.push_str(&workload_yaml(topo.pod("client")?, "shop", "client", &[]));
    yaml.push_str(&group_yaml(
        "http",
        "    httpGet:\n      path: /ready\n      port: 8080\n",
    ));
    yaml.push_str(&group_yaml("tcp", "    tcpSocket:\n      port: 8081\n"));
    yaml.push_str(&group_yaml(
        "exec",
        "    exec:\n      command: [ip, link, show, ready0]\n",
    ));
    for (kind, ip) in [
        ("http", "10.96.0.51"),
        ("tcp", "10.96.0.52"),
        ("exec", "10.96.0.53"),
    ] {
        yaml.push_str(&service_yaml(kind, ip));
        for side in ["near", "far"] {
            let pod = format!("{side}-{kind}");
            yaml.push_str(&workload_yaml(
                topo.pod(&pod)?,
                "shop",
                kind,
                &[("probe", kind)],
            ));
        }
    }
    // In the http group and passing its probe, but its entry says it is
    // not healthy: it never takes a connection.
    yaml.push_str(
        &workload_yaml(topo.pod("down")?, "shop", "http", &[("probe", "http")]).replace(
            "\n---\n",
            "\nstatus:\n  conditions:\n  - type: Healthy\n    status: \"False\"\n---\n",
        ),
    );
    mesh.write("mesh.yaml", &yaml)?;
    // The pods here are bare network namespaces: their exec probes run on
    // the node, which the agent does only when told to.
    let on_host = [("--exec-probes-on-host", "")];
    let mut agents = ["n1", "n2", "n3"]
        .iter()
        .map(|n| mesh.start_agent(n, &on_host))
        .collect::<Result<Vec<_>>>()?;

    let place = |pod: &str| -> Result<&Place> { Ok(&topo.pod(pod)?.place) };
    let ready_file =
        |pod: &str| -> Result<PathBuf> { Ok(place(pod)?.scratch_dir()?.join("www-8080/ready")) };
    let mut servers = Vec::new();
    for kind in ["http", "tcp", "exec"] {
        for side in ["near", "far"] {
            let pod = format!("{side}-{kind}");
            servers.push(http_server(place(&pod)?, 8080, &pod)?);
        }
    }
    servers.push(http_server(place("down")?, 8080, "down")?);
    std::fs::write(ready_file("down")?, "ok")?;
    // What makes each probe pass, per pod.
    let mut tcp_listeners = Vec::new();
    for side in ["near", "far"] {
        std::fs::write(ready_file(&format!("{side}-http"))?, "ok")?;
        tcp_listeners.push(Some(http_server(
            place(&format!("{side}-tcp"))?,
            8081,
            "tcp",
        )?));
        place(&format!("{side}-exec"))?.run_ok(
            &[
                "ip", "link", "add", "ready0", "type", "veth", "peer", "name", "ready1",
            ],
            Duration::from_secs(5),
        )?;
    }
    for kind in ["http", "tcp", "exec"] {
        for side in ["near", "far"] {
            let took = wait_health(&mesh, kind, &format!("{side}-{kind}"), "healthy")?;
            println!("{side}-{kind} ready (seen from n1) after {took:?}");
        }
    }
    let down = health_of(&mesh, "http", "down")?;
    assert!(
        down.contains("not ready (Healthy condition is False)"),
        "{down}"
    );

    let client = place("client")?;
    let run = |ip: &str, expect: &str| -> Result<()> {
        let got = connections(client, ip.parse()?, 80, 200, 4, 0.0)?;
        assert_eq!(got.failures, 0, "{ip}: {:?}", got.errors);
        assert_eq!(got.count(&[expect]), 200, "{ip}: {:?}", got.answers);
        Ok(())
    };
    run("10.96.0.51", "near-http")?;
    run("10.96.0.52", "near-tcp")?;
    run("10.96.0.53", "near-exec")?;

    // Each near endpoint fails its probe: the far ones take over.
    std::fs::remove_file(ready_file("near-http")?)?;
    if let Some(mut l) = tcp_listeners[0].take() {
        l.kill()?;
    }
    place("near-exec")?.run_ok(&["ip", "link", "del", "ready0"], Duration::from_secs(5))?;
    for (kind, why) in [
        ("http", "HTTP status 404"),
        ("tcp", "connecting to"),
        ("exec", "exited with"),
    ] {
        let took = wait_health(&mesh, kind, &format!("near-{kind}"), "not ready")?;
        let line = health_of(&mesh, kind, &format!("near-{kind}"))?;
        println!("near-{kind} out after {took:?}: {line}");
        assert!(line.contains(why), "{line}");
    }
    run("10.96.0.51", "far-http")?;
    run("10.96.0.52", "far-tcp")?;
    run("10.96.0.53", "far-exec")?;

    // And back.
    std::fs::write(ready_file("near-http")?, "ok")?;
    tcp_listeners[0] = Some(http_server(place("near-tcp")?, 8081, "tcp")?);
    place("near-exec")?.run_ok(
        &[
            "ip", "link", "add", "ready0", "type", "veth", "peer", "name", "ready1",
        ],
        Duration::from_secs(5),
    )?;
    for kind in ["http", "tcp", "exec"] {
        let took = wait_health(&mesh, kind, &format!("near-{kind}"), "healthy")?;
        println!("near-{kind} back after {took:?}");
    }
    run("10.96.0.51", "near-http")?;
    run("10.96.0.52", "near-tcp")?;
    run("10.96.0.53", "near-exec")?;

    let dump = mesh.admin("n1", "/config_dump")?;
    assert_eq!(
        dump["readiness"]["n2"]["shop/near-http"]["ready"], true,
        "{}",
        dump["readiness"]
    );
    let metrics = mesh.metrics("n2")?;
    assert!(
        metric_sum(
            &metrics,
            "strait_readiness_probes_total",
            &["result=\"failed\""]
        ) > 0
    );
    assert!(
        metric_sum(
            &metrics,
            "strait_readiness_probes_total",
            &["result=\"passed\""]
        ) > 0
    );
    // n2's agent restarts: its workloads keep the readiness it published
    // (not reset to "not passed yet"), so they never drop out meanwhile.
    let published = |what: &str| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(topo.scratch_dir().join("status/n2.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v["workloads"]["shop/near-http"][what].clone())
    };
    let since = published("since_ms")?;
    agents[1].stop(Duration::from_secs(5))?;
    agents[1] = mesh.start_agent("n2", &on_host)?;
    // Wait until the restarted agent has probed and published again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_sum(
        &mesh.metrics("n2")?,
        "strait_readiness_probes_total",
        &["result=\"passed\""],
    ) < 6
    {
        if Instant::now() > deadline {
            return Err("n2's restarted agent ran no probes".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(published("ready")?, true);
    assert_eq!(
        published("since_ms")?,
        since,
        "readiness was reset by the restart"
    );
    run("10.96.0.51", "near-http")?;

    Ok(())
}

/// Exec probes run as the workload would run them: inside its own mount
/// and PID namespaces when it has them (here a file exists only in the
/// pod's private mount, so the probe passes only there), and never on the
/// node for a workload without them, unless the agent is told it may.
#[test]
fn exec_probes_run_inside_the_workload_or_only_where_allowed() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
            .pod("bare", "n2")
            .pod("boxed", "n2"),
    )?;
    let mesh = Mesh::new(&topo)?;
    // Empty on the node; the boxed pod mounts its own tmpfs over it.
    let dir = topo.scratch_dir().join("probe-mnt");
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready").display().to_string();
    let mut yaml = namespace_yaml("shop", true);
    yaml.push_str(&group_yaml(
        "exec",
        &format!("    exec:\n      command: [test, -f, {ready}]\n"),
    ));
    yaml.push_str(&service_yaml("exec", "10.96.0.60"));
    for pod in ["bare", "boxed"] {
        yaml.push_str(&workload_yaml(
            topo.pod(pod)?,
            "shop",
            "exec",
            &[("probe", "exec")],
        ));
    }
    mesh.write("mesh.yaml", &yaml)?;
    let boxed = topo.pod("boxed")?;
    let mount = format!(
        "mount -t tmpfs tmpfs {} && touch {ready} && echo mounted && exec sleep 600",
        dir.display()
    );
    let mut pod_process = boxed.spawn(&[
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        &mount,
    ])?;
    strait_e2e::wait_for_line(&mut pod_process, "mounted", Duration::from_secs(10))?;
    assert!(
        !dir.join("ready").exists(),
        "the pod's mount leaked to the node"
    );

    let _agent1 = mesh.start_agent("n1", &[])?;
    let mut agent2 = mesh.start_agent("n2", &[])?;
    let took = wait_health(&mesh, "exec", "boxed", "healthy")?;
    println!("boxed (own mount and PID namespaces) healthy after {took:?}");
    let refused = wait_health(&mesh, "exec", "bare", "--exec-probes-on-host")?;
    println!(
        "bare refused after {refused:?}: {}",
        health_of(&mesh, "exec", "bare")?
    );
    assert!(health_of(&mesh, "exec", "bare")?.contains("not ready"));

    // Allowed on the node, the bare pod's probe runs there, where the file
    // is not: it fails for that reason, not for being refused.
    agent2.stop(Duration::from_secs(5))?;
    let _agent2 = mesh.start_agent("n2", &[("--exec-probes-on-host", "")])?;
    wait_health(&mesh, "exec", "bare", "exited with")?;
    wait_health(&mesh, "exec", "boxed", "healthy")?;
    println!(
        "with --exec-probes-on-host: {}",
        health_of(&mesh, "exec", "bare")?
    );
    Ok(())
}
