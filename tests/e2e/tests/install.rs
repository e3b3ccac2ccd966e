//! Installing strait the way users do: the Helm chart checked (lint,
//! schema, Kubernetes' own schemas for the newest version and 1.20),
//! installed into a real API server, and its pods run from the image with
//! exactly the chart's settings by a test kubelet (podman): the CA
//! replicas make and share their keys, the agents enroll the pods of
//! their nodes, and curl between nodes is mTLS on the wire. Uninstalling
//! leaves no pin, program or listener behind.
use std::{net::IpAddr, time::Instant};

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, curl, http_server,
    install::{
        IMAGE_NAME, VALIDATE_NEWEST, VALIDATE_OLDEST, chart_dir, find, helm, helm_at,
        image_archive, render, validate_command,
    },
    kube::{ApiServer, pod_yaml},
    kubelet::{Kubelet, Network, RunningPod, load_image},
    marker_url, namespace_yaml, require_root, two_nodes,
};
use strait_topology::Topology;

const NAMESPACE: &str = "strait-system";
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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
            // Only the Prometheus Operator's kinds have no schema there.
            for line in said.lines().filter(|l| l.contains("WARN")) {
                assert!(
                    line.contains("kind PodMonitor") || line.contains("kind ServiceMonitor"),
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
    let bad = helm_on(
        &api,
        &admin,
        &[
            "install",
            "strait",
            "CHART",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "ca.replicaCount=two",
        ],
    )?;
    let said = stdout(&bad);
    println!("wrong type: {said}");
    assert!(
        !bad.status.success() && said.contains("at '/ca/replicaCount'"),
        "{said}"
    );
    let unknown = api.scratch_file("unknown.yaml", "ca:\n  replicas: 2\n")?;
    let bad = helm_on(
        &api,
        &admin,
        &[
            "install",
            "strait",
            "CHART",
            "--namespace",
            NAMESPACE,
            "--values",
            &unknown,
        ],
    )?;
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
    let out = helm_on(
        &api,
        &admin,
        &[
            "install",
            "strait",
            "CHART",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &cgroup,
        ],
    )?;
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

    // The workloads, then the agents.
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
    let agents = [
        kubelets[0].run(NAMESPACE, "strait-agent-n1", &agent, Network::Host)?,
        kubelets[1].run(NAMESPACE, "strait-agent-n2", &agent, Network::Host)?,
    ];
    println!(
        "agents ready {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let mesh = Mesh::with_cluster(&topo, api.kubeconfig("reader", &api.admin_token)?)?;
    mesh.wait_state("n1", "a", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", agents[0].containers[0].log()))?;
    mesh.wait_state("n2", "b", WAIT, |s| s == "captured")
        .map_err(|e| format!("{e}\n{}", agents[1].containers[0].log()))?;

    let b = topo.pod("b")?;
    let _server = http_server(b, 8080, "from-b")?;
    let capture = n1.capture("eth0", &["tcp"])?;
    let out = curl(topo.pod("a")?, &marker_url(IpAddr::V4(b.ipv4), 8080))?;
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout(&out),
        agents[0].containers[0].log()
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
    let certs = mesh.straitctl("n1", &["certs"])?;
    println!("{certs}");
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/a"),
        "{certs}"
    );
    drop(agents);
    drop(cas);
    Ok(())
}
