//! Installing strait the way users do: the Helm chart checked (lint,
//! schema, Kubernetes' own schemas for the newest version and 1.20),
//! installed into a real API server, and its pods run from the image with
//! exactly the chart's settings by a test kubelet (podman): the CA
//! replicas make and share their keys, the agents enroll the pods of
//! their nodes, and curl between nodes is mTLS on the wire. Uninstalling
//! leaves no pin, program or listener behind.
use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use serde_json::Value as Json;
use strait_e2e::{
    Result, connections, curl, echo_client, echo_server, http_server,
    install::{
        IMAGE_NAME, VALIDATE_NEWEST, VALIDATE_OLDEST, chart_dir, find, helm, helm_at,
        image_archive, render, validate_command,
    },
    kube::{ApiServer, GATEWAY_CRD, pod_yaml},
    kubelet::{Kubelet, Network, RunningPod, load_image},
    marker_url, metric_sum, namespace_yaml, require_root, topology_node_yaml, two_nodes,
    wait_state_at,
};
use strait_topology::{Locality, Spec, Topology};

const NAMESPACE: &str = "strait-system";
const WAIT: Duration = Duration::from_secs(60);

fn stdout(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The chart's values examples.
fn examples() -> Result<Vec<String>> {
    let mut all: Vec<String> = std::fs::read_dir(chart_dir().join("examples"))?
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    all.sort();
    Ok(all)
}

#[test]
fn the_chart_lints_and_renders_objects_kubernetes_accepts() -> Result<()> {
    let chart = chart_dir().display().to_string();
    let out = helm(&["lint", "--strict", &chart])?;
    assert!(out.status.success(), "{}", stdout(&out));
    let mut cases: Vec<Vec<String>> = vec![vec![]];
    for example in examples()? {
        let out = helm(&["lint", "--strict", &chart, "--values", &example])?;
        assert!(out.status.success(), "{example}: {}", stdout(&out));
        cases.push(vec!["--values".into(), example]);
    }
    assert!(cases.len() >= 4, "the chart has values examples");
    let dir = tempfile_dir()?;
    for case in &cases {
        for (kube, via) in [
            (VALIDATE_NEWEST.1, VALIDATE_NEWEST.0),
            (VALIDATE_OLDEST.1, VALIDATE_OLDEST.0),
        ] {
            let mut args: Vec<&str> = case.iter().map(String::as_str).collect();
            args.extend(["--include-crds", "--kube-version", kube]);
            let objects = render(NAMESPACE, &args)?;
            let file = dir.join("rendered.json");
            // One JSON document per line is YAML too.
            let text: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
            std::fs::write(&file, text)?;
            let out = validate_command(kube).arg(&file).output()?;
            let said = stdout(&out);
            assert!(
                out.status.success(),
                "{case:?} for Kubernetes {kube}: {said}"
            );
            // Only the Prometheus Operator's kinds and the Gateway API's
            // Gateway have no schema there.
            for line in said.lines().filter(|l| l.contains("WARN")) {
                assert!(
                    line.contains("kind PodMonitor")
                        || line.contains("kind ServiceMonitor")
                        || line.contains("kind Gateway"),
                    "{case:?} for Kubernetes {kube}: {line}"
                );
            }
            println!(
                "{case:?}: {} objects valid for Kubernetes {kube} (kubernetes-validate {via})",
                objects.len()
            );
        }
    }
    // The CRDs in the chart are the ones strait's types give.
    let crds = std::process::Command::new(strait_e2e::strait_bin("straitctl"))
        .arg("crds")
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&crds.stdout),
        std::fs::read_to_string(chart_dir().join("crds/istio-crds.yaml"))?,
        "deploy/helm/strait/crds/istio-crds.yaml is not `straitctl crds`: run `straitctl crds > deploy/helm/strait/crds/istio-crds.yaml`"
    );
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("strait-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `helm` against the test API server.
fn helm_on(api: &ApiServer, kubeconfig: &str, args: &[&str]) -> Result<std::process::Output> {
    let chart = chart_dir().display().to_string();
    let mut all: Vec<&str> = args
        .iter()
        .map(|a| if *a == "CHART" { chart.as_str() } else { a })
        .collect();
    all.extend(["--kubeconfig", kubeconfig]);
    helm_at(api.place(), &all)
}

/// `helm install` of the chart as release `strait`, with `args` besides.
fn install(api: &ApiServer, kubeconfig: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut all = vec![
        "install",
        "strait",
        "CHART",
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    all.extend_from_slice(args);
    helm_on(api, kubeconfig, &all)
}

/// The object's `spec.template`, as the API server holds it.
fn template(api: &ApiServer, kind: &str, name: &str) -> Result<Json> {
    let object: Json = serde_json::from_str(&api.kubectl_ok(&[
        "get",
        kind,
        name,
        "--namespace",
        NAMESPACE,
        "--output",
        "json",
    ])?)?;
    Ok(object["spec"]["template"].clone())
}

#[test]
fn the_chart_installs_and_its_pods_run_from_the_image_as_it_says() -> Result<()> {
    require_root();
    load_image(&image_archive())?;
    let topo = Topology::create(two_nodes(&[
        ("a", "n1"),
        ("b", "n2"),
        ("ca1", "n1"),
        ("ca2", "n2"),
        ("agent1", "n1"),
        ("agent2", "n2"),
        ("agent1b", "n1"),
    ]))?;
    let (n1, n2) = (topo.node("n1")?, topo.node("n2")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let admin = api.kubeconfig("admin", &api.admin_token)?;
    let admin = admin.display().to_string();
    // This host's cgroup v2 mount, as its README tells users of hybrid
    // layouts to set it.
    let cgroup = format!("hostPaths.cgroup={}", topo.host().cgroup_root.display());

    // Bad values fail the install with the schema's message; nothing is
    // created.
    let bad = install(&api, &admin, &["--set", "ca.replicaCount=two"])?;
    let said = stdout(&bad);
    println!("wrong type: {said}");
    assert!(
        !bad.status.success() && said.contains("at '/ca/replicaCount'"),
        "{said}"
    );
    let unknown = api.scratch_file("unknown.yaml", "ca:\n  replicas: 2\n")?;
    let bad = install(&api, &admin, &["--values", &unknown])?;
    let said = stdout(&bad);
    println!("unknown key: {said}");
    assert!(
        !bad.status.success() && said.contains("additional properties 'replicas' not allowed"),
        "{said}"
    );
    let releases = helm_on(&api, &admin, &["list", "--all-namespaces", "--short"])?;
    assert_eq!(
        stdout(&releases).trim(),
        "",
        "no release after refused values"
    );

    let started = Instant::now();
    let out = install(&api, &admin, &["--set", &cgroup])?;
    assert!(out.status.success(), "{}", stdout(&out));
    println!(
        "helm install: {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        stdout(&out)
    );
    // Every object the chart renders (with the API server's version) is
    // there.
    let objects = render(
        NAMESPACE,
        &[
            "--set",
            &cgroup,
            "--include-crds",
            "--kube-version",
            "1.20.2",
        ],
    )?;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let mut args = vec!["get", kind, name];
        if object["metadata"]["namespace"].is_string() {
            args.extend(["--namespace", NAMESPACE]);
        }
        api.kubectl_ok(&args)
            .map_err(|e| format!("{kind} {name} was not created: {e}"))?;
    }
    println!("all {} objects created", objects.len());
    let agent_ds = find(&objects, "DaemonSet", "strait-agent")?;
    assert_eq!(
        agent_ds["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE_NAME
    );

    // The CA Deployment's two replicas, one per node: the first to start
    // makes the keys, the other takes them.
    let ca = template(&api, "deployment", "strait-ca")?;
    let kubelets = [
        Kubelet {
            api: &api,
            topo: &topo,
            node: n1,
        },
        Kubelet {
            api: &api,
            topo: &topo,
            node: n2,
        },
    ];
    let started = Instant::now();
    let cas: Vec<RunningPod> = vec![
        kubelets[0].run(
            NAMESPACE,
            "strait-ca-1",
            &ca,
            Network::Pod(topo.pod("ca1")?),
        )?,
        kubelets[1].run(
            NAMESPACE,
            "strait-ca-2",
            &ca,
            Network::Pod(topo.pod("ca2")?),
        )?,
    ];
    println!(
        "CA replicas ready {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let logs: Vec<String> = cas.iter().map(|p| p.containers[0].log()).collect();
    let made = logs
        .iter()
        .filter(|l| l.contains("\"origin\":\"Made\"") || l.contains("origin=Made"))
        .count();
    assert_eq!(made, 1, "one replica makes the keys:\n{}", logs.join("\n"));
    let roots = api.kubectl_ok(&[
        "get",
        "configmap",
        "strait-ca-roots",
        "--namespace",
        NAMESPACE,
        "-o",
        "json",
    ])?;
    assert!(
        roots.contains("mesh-root.pem") && roots.contains("control-root.pem"),
        "{roots}"
    );

    // The workloads, then the agents, each in its own pod as the chart
    // says (no host network).
    api.apply(&format!(
        "{}{}{}",
        namespace_yaml("shop", true),
        pod_yaml(topo.pod("a")?, "shop", "a", &[("app", "a")]),
        pod_yaml(topo.pod("b")?, "shop", "b", &[("app", "b")]),
    ))?;
    api.make_ready("shop", topo.pod("a")?)?;
    api.make_ready("shop", topo.pod("b")?)?;
    let agent = template(&api, "daemonset", "strait-agent")?;
    let started = Instant::now();
    let mut agents = vec![
        kubelets[0].run(
            NAMESPACE,
            "strait-agent-n1",
            &agent,
            Network::Pod(topo.pod("agent1")?),
        )?,
        kubelets[1].run(
            NAMESPACE,
            "strait-agent-n2",
            &agent,
            Network::Pod(topo.pod("agent2")?),
        )?,
    ];
    println!(
        "agents ready {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let log = |pod: &RunningPod| pod.containers[0].log();
    wait_state_at(topo.pod("agent1")?, "a", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", log(&agents[0])))?;
    wait_state_at(topo.pod("agent2")?, "b", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", log(&agents[1])))?;

    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let _server = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);
    let capture = n1.capture("eth0", &["tcp"])?;
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout(&out),
        log(&agents[0])
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b");
    let pcap = capture.finish()?;
    println!(
        "on the wire between the nodes: ports {:?}",
        pcap.tcp_ports()
    );
    assert!(pcap.tcp_ports().contains(&15008), "{:?}", pcap.tcp_ports());
    assert!(
        !pcap.tcp_ports().contains(&8080) && !pcap.contains(b"from-b"),
        "plaintext on the wire"
    );
    let certs = ctl(topo.pod("agent1")?, &["certs"])?;
    println!("{certs}");
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/a"),
        "{certs}"
    );

    // A rolling update with maxSurge 1: n1's new agent starts beside the
    // old one and becomes ready; the old one gets SIGTERM and drains. A
    // connection it carries goes on; new ones go to the new agent.
    let _echo = echo_server(b, 7000)?;
    let mut long = echo_client(a, IpAddr::V4(b.ipv4), 7000, 8)?;
    strait_e2e::wait_for_line(&mut long, "connected", WAIT)?;
    let surge = kubelets[0].run(
        NAMESPACE,
        "strait-agent-n1-new",
        &agent,
        Network::Pod(topo.pod("agent1b")?),
    )?;
    println!("the new agent of n1 is ready beside the old one");
    let mut old = agents.remove(0);
    let stopping = std::thread::spawn(move || {
        let took = old.containers[0].stop();
        (took, old)
    });
    let during = connections(a, IpAddr::V4(b.ipv4), 8080, 200, 4, 0.0)?;
    let echoed = long.wait_timeout(WAIT)?;
    let (took, old) = stopping
        .join()
        .map_err(|_| "stopping the old agent panicked")?;
    let took = took?;
    let old_log = log(&old);
    println!(
        "old agent stopped in {:.1} s; {} connections during its drain, {} failed; the long connection: {}",
        took.as_secs_f64(),
        during.total(),
        during.failures,
        long.log().trim()
    );
    assert_eq!(during.failures, 0, "{:?}\n{old_log}", during.errors);
    assert!(
        echoed.is_some_and(|s| s.success()),
        "the long connection broke: {}\n{old_log}",
        long.log()
    );
    assert!(old_log.contains("\"draining\""), "{old_log}");
    assert!(old_log.contains("\"drained\""), "{old_log}");
    assert!(old_log.contains("capture stays attached"), "{old_log}");
    drop(old);
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "after the update: {}\n{}",
        stdout(&out),
        log(&surge)
    );
    agents.insert(0, surge);

    // What uninstalling must remove is there now: programs attached to
    // the nodes' pods cgroups and to the pods' namespaces.
    let attached = |links: &[Json]| -> Result<(usize, usize)> {
        let mut counts = (0, 0);
        for node in [n1, n2] {
            let cgroup = std::fs::metadata(&node.pods_cgroup)?.ino();
            counts.0 += links.iter().filter(|l| l["cgroup_id"] == cgroup).count();
        }
        for pod in [a, b] {
            let netns = std::fs::metadata(pod.netns_path())?.ino();
            counts.1 += links.iter().filter(|l| l["netns_ino"] == netns).count();
        }
        Ok(counts)
    };
    let before = attached(&bpf_links()?)?;
    println!(
        "before uninstall: {} links on the nodes' cgroups, {} on the pods' namespaces",
        before.0, before.1
    );
    assert!(before.0 > 0 && before.1 > 0, "{before:?}");

    // Uninstall: the DaemonSet goes, its pods are stopped (a kubelet's
    // part, once the garbage collector deletes them), and each agent,
    // finding its DaemonSet gone, detaches capture.
    let out = helm_on(
        &api,
        &admin,
        &["uninstall", "strait", "--namespace", NAMESPACE],
    )?;
    assert!(out.status.success(), "{}", stdout(&out));
    for pod in &mut agents {
        pod.containers[0].stop()?;
        let said = log(pod);
        assert!(said.contains("capture detached"), "{said}");
    }
    drop(cas);
    for node in [n1, n2] {
        let left: Vec<_> = walk(&node.pin_dir)?;
        assert!(left.is_empty(), "pins left on {}: {left:?}", node.name());
    }
    let links = bpf_links()?;
    assert_eq!(
        attached(&links)?,
        (0, 0),
        "programs still attached: {links:?}"
    );
    for pod in [a, b] {
        let listening = pod.run_ok(&["ss", "-Hltn"], Duration::from_secs(10))?;
        let listening = String::from_utf8_lossy(&listening.stdout);
        for port in [15001, 15006, 15008, 15053] {
            assert!(
                !listening.contains(&format!(":{port} ")),
                "pod {} still has a listener on {port}: {listening}",
                pod.name
            );
        }
    }
    // Traffic goes straight to the pods again.
    let capture = n1.capture("eth0", &["tcp"])?;
    let out = curl(a, &url)?;
    assert!(out.status.success(), "{}", stdout(&out));
    let pcap = capture.finish()?;
    assert!(pcap.tcp_ports().contains(&8080) && !pcap.tcp_ports().contains(&15008));
    println!(
        "after uninstall: no pins, no programs, no listeners; curl goes direct (ports {:?})",
        pcap.tcp_ports()
    );
    Ok(())
}

/// `straitctl` in the agent's pod (its admin listens on the pod's
/// loopback).
fn ctl(agent: &strait_topology::Pod, args: &[&str]) -> Result<String> {
    let bin = strait_e2e::strait_bin("straitctl");
    let bin = bin.display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    let out = agent.run_ok(&argv, Duration::from_secs(10))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every file left under `dir`.
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path)?);
            } else {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// The kernel's BPF links (`bpftool link`).
fn bpf_links() -> Result<Vec<Json>> {
    let out = std::process::Command::new("bpftool")
        .args(["--json", "link", "show"])
        .output()?;
    if !out.status.success() {
        return Err(format!("bpftool: {}", stdout(&out)).into());
    }
    Ok(serde_json::from_slice::<Json>(&out.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[test]
fn the_install_scripts_are_shellcheck_clean() -> Result<()> {
    let root = chart_dir().join("../../..");
    let mut scripts = Vec::new();
    for dir in ["deploy/kind", "vagrant"] {
        for entry in std::fs::read_dir(root.join(dir))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sh") {
                scripts.push(entry.path());
            }
        }
    }
    assert!(!scripts.is_empty());
    let out = std::process::Command::new("shellcheck")
        .args(&scripts)
        .output()?;
    assert!(out.status.success(), "{}", stdout(&out));
    println!("shellcheck: {} scripts clean", scripts.len());
    Ok(())
}

/// The chart's east-west gateway across two networks of one cluster: the
/// gateway pod runs from the image as the chart says (unprivileged, its
/// own CA token), behind a load balancer (DNAT on net2's edge node, as a
/// cloud's would be), and a client pod of net1 reaches a global service
/// whose only endpoint is on net2 through it, as itself.
#[test]
fn the_charts_east_west_gateway_carries_a_call_across_networks() -> Result<()> {
    require_root();
    load_image(&image_archive())?;
    let edge = Locality::new("r1", "z1", "");
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", edge.clone())
            .gateway_node("g1", "c1", "net1", edge.clone())
            .node("n2", "c1", "net2", edge.clone())
            .gateway_node("g2", "c1", "net2", edge)
            .pod("client", "n1")
            .pod("ca1", "n1")
            .pod("agent1", "n1")
            .pod("server", "n2")
            .pod("agent2", "n2")
            .pod("gw", "n2"),
    )?;
    let (n1, n2, g1, g2) = (
        topo.node("n1")?,
        topo.node("n2")?,
        topo.node("g1")?,
        topo.node("g2")?,
    );
    let internet = |node: &strait_topology::Node| {
        node.addrs
            .internet
            .map(|(v4, _)| v4)
            .ok_or("not a gateway node")
    };
    let (g1_v4, g2_v4) = (internet(g1)?, internet(g2)?);
    // The control plane where both networks reach it: on the segment
    // between them.
    let api = ApiServer::start(&g1.place, g1_v4.into(), "c1")?;
    let admin = api.kubeconfig("admin", &api.admin_token)?;
    let admin = admin.display().to_string();
    api.apply(GATEWAY_CRD)?;
    api.apply(
        &topo
            .nodes()
            .iter()
            .map(topology_node_yaml)
            .collect::<String>(),
    )?;

    // Loads balanced the way a cloud's would be, on each network's edge:
    // the CA (for net2's agents and the gateway) and the gateway.
    let (ca1, gw) = (topo.pod("ca1")?, topo.pod("gw")?);
    for (node, from, to) in [
        (g1, format!("{g1_v4}"), format!("{}:15012", ca1.ipv4)),
        (g2, format!("{g2_v4}"), format!("{}:15008", gw.ipv4)),
    ] {
        let port = to.rsplit(':').next().unwrap_or_default().to_string();
        node.place.run_ok(
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &from,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
            Duration::from_secs(10),
        )?;
    }

    let cgroup = format!("hostPaths.cgroup={}", topo.host().cgroup_root.display());
    // net1's pods reach the CA pod directly, net2's through net1's edge.
    let ca_address = format!("caAddress={}:15012\\,{g1_v4}:15012", ca1.ipv4);
    let gateway_address = format!("eastWestGateway.addresses[0]={g2_v4}");
    let out = install(
        &api,
        &admin,
        &[
            "--set",
            &cgroup,
            "--set",
            &ca_address,
            "--set",
            "multiCluster.clusterName=c1",
            "--set",
            "eastWestGateway.enabled=true",
            "--set",
            "eastWestGateway.network=net2",
            "--set",
            &gateway_address,
        ],
    )?;
    assert!(out.status.success(), "{}", stdout(&out));

    let kubelet = |node| Kubelet {
        api: &api,
        topo: &topo,
        node,
    };
    let ca = template(&api, "deployment", "strait-ca")?;
    let _ca = kubelet(n1).run(NAMESPACE, "strait-ca-1", &ca, Network::Pod(ca1))?;

    let (client, server) = (topo.pod("client")?, topo.pod("server")?);
    let agents = shop_and_agents(&api, &topo, (n1, n2), "labels: {istio.io/global: \"true\"}")?;
    let log = |pod: &RunningPod| pod.containers[0].log();

    let gateway = template(&api, "deployment", "eastwest")?;
    let started = Instant::now();
    let gateway_pod = kubelet(n2).run(NAMESPACE, "eastwest-1", &gateway, Network::Pod(gw))?;
    println!(
        "the gateway pod (as {}, user {}) ready {:.1} s after start",
        gateway["spec"]["serviceAccountName"],
        gateway["spec"]["securityContext"]["runAsUser"],
        started.elapsed().as_secs_f64()
    );

    let _server = http_server(server, 8080, "from net2")?;
    let vip = api.cluster_ip("shop", "web")?;
    let segment = g2.capture("eth1", &["tcp"])?;
    let out = curl(client, &format!("http://{vip}/marker"))?;
    assert!(
        out.status.success(),
        "{}\nagent n1:\n{}\ngateway:\n{}",
        stdout(&out),
        log(&agents[0]),
        gateway_pod.containers[0].log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from net2");
    let pcap = segment.finish()?;
    println!(
        "client (net1) -> web.shop (endpoint on net2) through the chart's gateway: \"from net2\"; \
         between the networks: ports {:?}, {} TLS handshakes",
        pcap.tcp_ports(),
        pcap.tls_handshakes()
    );
    assert!(pcap.tcp_ports().contains(&15008) && !pcap.tcp_ports().contains(&8080));
    assert!(
        !pcap.contains(b"from net2"),
        "plaintext between the networks"
    );

    let metrics = |pod: &strait_topology::Pod| -> Result<String> {
        let out = pod.run_ok(
            &["curl", "-s", "http://127.0.0.1:15020/metrics"],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let client_id = "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"";
    let carried = metric_sum(
        &metrics(gw)?,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"source\"",
            "destination_workload_namespace=\"shop\"",
        ],
    );
    let seen = metric_sum(
        &metrics(topo.pod("agent2")?)?,
        "istio_tcp_connections_opened_total",
        &["reporter=\"destination\"", client_id],
    );
    println!("the gateway carried {carried}; the destination saw {seen} from the client");
    assert!(
        carried >= 1 && seen >= 1,
        "gateway {carried}, destination {seen}"
    );
    Ok(())
}

/// Namespace `shop` (enrolled) with pods `client` and `web` (topology
/// pods `client` and `server`) and Service `web` (port 80 to 8080, with
/// `metadata` lines added), and the chart's agents on `nodes` in pods
/// `agent1` and `agent2`, once both workloads are captured.
fn shop_and_agents(
    api: &ApiServer,
    topo: &Topology,
    nodes: (&strait_topology::Node, &strait_topology::Node),
    metadata: &str,
) -> Result<[RunningPod; 2]> {
    let (client, server) = (topo.pod("client")?, topo.pod("server")?);
    api.apply(&format!(
        "{}{}{}apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  {metadata}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
",
        namespace_yaml("shop", true),
        pod_yaml(client, "shop", "client", &[("app", "client")]),
        pod_yaml(server, "shop", "web", &[("app", "web")]),
    ))?;
    api.make_ready("shop", client)?;
    api.make_ready("shop", server)?;
    let agent = template(api, "daemonset", "strait-agent")?;
    let kubelet = |node| Kubelet { api, topo, node };
    let agents = [
        kubelet(nodes.0).run(
            NAMESPACE,
            "strait-agent-n1",
            &agent,
            Network::Pod(topo.pod("agent1")?),
        )?,
        kubelet(nodes.1).run(
            NAMESPACE,
            "strait-agent-n2",
            &agent,
            Network::Pod(topo.pod("agent2")?),
        )?,
    ];
    let log = |pod: &RunningPod| pod.containers[0].log();
    wait_state_at(topo.pod("agent1")?, "client", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", log(&agents[0])))?;
    wait_state_at(topo.pod("agent2")?, "server", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", log(&agents[1])))?;
    Ok(agents)
}

/// `straitctl` against the test API server, run where it is reachable.
fn straitctl(api: &ApiServer, kubeconfig: &str, args: &[&str]) -> Result<String> {
    let mut cmd = api.place().command(strait_e2e::strait_bin("straitctl"))?;
    cmd.args(args).args(["--kubeconfig", kubeconfig]);
    let out = strait_topology::process::run(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("straitctl {}: {}", args.join(" "), stdout(&out)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn object(api: &ApiServer, namespace: Option<&str>, kind: &str, name: &str) -> Option<Json> {
    let mut args = vec!["get", kind, name, "--output", "json"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    let out = api.kubectl(&args).ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// As with Istio, applying a Gateway of class istio-waypoint is enough: the
/// chart's controller creates its ServiceAccount, Deployment and Service,
/// owned by the Gateway, and writes its status; the test kubelet runs the
/// Deployment's pod from the image exactly as it says, and a Service
/// labelled to use it has its requests go through it, the destination
/// still seeing the client's identity. A Gateway that cannot be deployed
/// says why in its status; a deleted one leaves nothing behind.
#[test]
fn a_waypoint_gateway_is_deployed_by_the_controller_and_carries_traffic() -> Result<()> {
    require_root();
    load_image(&image_archive())?;
    let topo = Topology::create(two_nodes(&[
        ("client", "n1"),
        ("server", "n2"),
        ("ca1", "n1"),
        ("controller", "n1"),
        ("agent1", "n1"),
        ("agent2", "n2"),
        ("wp", "n2"),
    ]))?;
    let (n1, n2) = (topo.node("n1")?, topo.node("n2")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let admin = api.kubeconfig("admin", &api.admin_token)?;
    let admin = admin.display().to_string();
    api.apply(GATEWAY_CRD)?;
    let cgroup = format!("hostPaths.cgroup={}", topo.host().cgroup_root.display());
    let out = install(&api, &admin, &["--set", &cgroup])?;
    assert!(out.status.success(), "{}", stdout(&out));
    let kubelet = |node| Kubelet {
        api: &api,
        topo: &topo,
        node,
    };
    let ca = template(&api, "deployment", "strait-ca")?;
    let _ca = kubelet(n1).run(
        NAMESPACE,
        "strait-ca-1",
        &ca,
        Network::Pod(topo.pod("ca1")?),
    )?;
    let (client, server) = (topo.pod("client")?, topo.pod("server")?);
    let agents = shop_and_agents(&api, &topo, (n1, n2), "")?;
    let log = |pod: &RunningPod| pod.containers[0].log();

    let controller_template = template(&api, "deployment", "strait-waypoint-controller")?;
    let controller = kubelet(n1).run(
        NAMESPACE,
        "strait-waypoint-controller-1",
        &controller_template,
        Network::Pod(topo.pod("controller")?),
    )?;
    let controller_log = || log(&controller);

    // A Gateway that cannot be deployed (no HBONE listener): its status
    // says why, and nothing is made for it.
    api.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: broken, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: http, port: 80, protocol: HTTP}]
",
    )?;
    let refused = strait_e2e::wait_for("the broken Gateway's status", WAIT, || {
        let g = object(&api, Some("shop"), "gateway", "broken")?;
        g["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted" && c["status"] == "False")
            .cloned()
    })
    .map_err(|e| format!("{e}\n{}", controller_log()))?;
    println!(
        "Gateway shop/broken: Accepted False, {}: {}",
        refused["reason"], refused["message"]
    );
    assert_eq!(refused["reason"], "Invalid");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no HBONE listener"),
        "{refused}"
    );
    assert!(object(&api, Some("shop"), "deployment", "broken").is_none());

    // straitctl writes the Gateway as istioctl does and waits for the
    // controller to program it.
    let started = Instant::now();
    let said = straitctl(
        &api,
        &admin,
        &["waypoint", "apply", "--namespace", "shop", "--wait"],
    )
    .map_err(|e| format!("{e}\n{}", controller_log()))?;
    println!("{} ({:.1} s)", said.trim(), started.elapsed().as_secs_f64());
    let gateway = object(&api, Some("shop"), "gateway", "waypoint").ok_or("no Gateway")?;
    let uid = gateway["metadata"]["uid"].clone();
    let service_ip = api.cluster_ip("shop", "waypoint")?;
    assert_eq!(
        gateway["status"]["addresses"][0]["value"],
        service_ip.to_string(),
        "{}",
        gateway["status"]
    );
    assert!(said.contains(&service_ip.to_string()), "{said}");
    for (kind, name) in [
        ("serviceaccount", "waypoint"),
        ("deployment", "waypoint"),
        ("service", "waypoint"),
    ] {
        let made = object(&api, Some("shop"), kind, name).ok_or(format!("no {kind} {name}"))?;
        let owner = &made["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway", "{kind}: {owner}");
        assert_eq!(owner["uid"], uid, "{kind}: {owner}");
    }
    let binding = object(
        &api,
        None,
        "clusterrolebinding",
        "strait-waypoint:shop:waypoint",
    )
    .ok_or("no ClusterRoleBinding for the waypoint")?;
    assert_eq!(binding["roleRef"]["name"], "strait-waypoint");
    println!(
        "made for it: ServiceAccount, Deployment and Service shop/waypoint (owned by Gateway {uid}), ClusterRoleBinding {}, Service address {service_ip}",
        binding["metadata"]["name"]
    );

    // The Deployment's pod, run as it says.
    let waypoint_template = template_in(&api, "shop", "deployment", "waypoint")?;
    let started = Instant::now();
    let wp = topo.pod("wp")?;
    let waypoint = kubelet(n2).run("shop", "waypoint-1", &waypoint_template, Network::Pod(wp))?;
    println!(
        "the waypoint pod (as {}) ready {:.1} s after start",
        waypoint_template["spec"]["serviceAccountName"],
        started.elapsed().as_secs_f64()
    );

    // The Service opts in; its requests now go through the waypoint.
    api.kubectl_ok(&[
        "label",
        "service",
        "web",
        "--namespace",
        "shop",
        "istio.io/use-waypoint=waypoint",
    ])?;
    let _server = http_server(server, 8080, "from-web")?;
    let vip = api.cluster_ip("shop", "web")?;
    let metrics = |pod: &strait_topology::Pod| -> Result<String> {
        let out = pod.run_ok(
            &["curl", "-s", "http://127.0.0.1:15020/metrics"],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let client_id = "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"";
    let mut sent = 0;
    strait_e2e::wait_for("a request through the waypoint", WAIT, || {
        let out = curl(client, &format!("http://{vip}/marker")).ok()?;
        sent += 1;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-web");
        let seen = metric_sum(
            &metrics(wp).ok()?,
            "istio_requests_total",
            &["reporter=\"waypoint\"", client_id],
        );
        (seen > 0).then_some(())
    })
    .map_err(|e| format!("{e}\nwaypoint:\n{}", log(&waypoint)))?;
    let seen = metric_sum(
        &metrics(topo.pod("agent2")?)?,
        "istio_tcp_connections_opened_total",
        &["reporter=\"destination\"", client_id],
    );
    println!(
        "curl client -> web.shop: \"from-web\" ({sent} requests until one went through the waypoint); the destination saw {seen} connections as the client"
    );
    assert!(seen >= 1, "{}", log(&agents[1]));
    let listed = straitctl(&api, &admin, &["waypoint", "list", "--namespace", "shop"])?;
    println!("{listed}");
    assert!(
        listed.contains("waypoint-1(") && listed.contains("shop/web"),
        "{listed}"
    );

    // Deleting the Gateway removes what was made for it (here, with no
    // garbage collector running, by the controller's sweep).
    let said = straitctl(
        &api,
        &admin,
        &["waypoint", "delete", "waypoint", "--namespace", "shop"],
    )?;
    println!("{}", said.trim());
    drop(waypoint);
    strait_e2e::wait_for("the waypoint's objects removed", WAIT, || {
        (object(
            &api,
            None,
            "clusterrolebinding",
            "strait-waypoint:shop:waypoint",
        )
        .is_none()
            && object(&api, Some("shop"), "deployment", "waypoint").is_none()
            && object(&api, Some("shop"), "service", "waypoint").is_none()
            && object(&api, Some("shop"), "serviceaccount", "waypoint").is_none())
        .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", controller_log()))?;
    let swept = metric_sum(
        &metrics(topo.pod("controller")?)?,
        "strait_controller_swept_total",
        &[],
    );
    println!("the controller removed {swept} objects");
    assert!(swept >= 4, "{swept}");
    Ok(())
}

/// A namespaced object's `spec.template`.
fn template_in(api: &ApiServer, namespace: &str, kind: &str, name: &str) -> Result<Json> {
    object(api, Some(namespace), kind, name)
        .map(|o| o["spec"]["template"].clone())
        .ok_or_else(|| format!("no {kind} {namespace}/{name}").into())
}
