//! The agents and the CA fed by a real API server instead of a directory:
//! pods created and made ready through it (as a kubelet would) in a
//! labelled namespace are enrolled on their nodes and talk over mTLS; a
//! deleted pod is released, and so are the pods of a namespace that loses
//! its label. The agents run with no config directory at all.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, curl, echo_client, echo_server, http_server,
    kube::{AUDIENCE, ApiServer, pod_yaml},
    marker_url, metric_sum, namespace_yaml, node_yaml,
    portforward::{self, PortForward},
    require_root, two_nodes, wait_for, wait_for_line,
};
use strait_topology::{Process, Topology};

/// How long a state change may take before the test gives up.
const WAIT: Duration = Duration::from_secs(30);

/// Namespace `shop` (in the mesh) with pods a (n1) and b (n2) ready and
/// enrolled, agents and a CA reading the API server on n1; c (n2) is left
/// for the test.
struct Cluster<'t> {
    api: ApiServer,
    mesh: Mesh<'t>,
    _agents: [Process; 2],
}

fn cluster(topo: &Topology) -> Result<Cluster<'_>> {
    let (n1, a, b) = (topo.node("n1")?, topo.pod("a")?, topo.pod("b")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    // The agents and the CA read with a ServiceAccount's token, allowed to
    // read only what strait watches.
    let mesh = Mesh::with_cluster(topo, api.strait_kubeconfig()?)?;
    api.apply(&format!(
        "{}{}{}",
        namespace_yaml("shop", true),
        pod_yaml(a, "shop", "a", &[("app", &a.name)]),
        pod_yaml(b, "shop", "b", &[("app", &b.name)])
    ))?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    // Nothing is enrolled before the kubelet says where the pod is.
    mesh.wait_state("n1", "a", WAIT, str::is_empty)?;
    api.make_ready("shop", a)?;
    let made_ready = Instant::now();
    api.make_ready("shop", b)?;
    mesh.wait_state("n1", "a", WAIT, |s| s == "captured")?;
    mesh.wait_state("n2", "b", WAIT, |s| s == "captured")?;
    println!(
        "a and b enrolled {:.2} s after their status was written",
        made_ready.elapsed().as_secs_f64()
    );
    Ok(Cluster {
        api,
        mesh,
        _agents: agents,
    })
}

fn spec() -> strait_topology::Spec {
    two_nodes(&[("a", "n1"), ("b", "n2"), ("c", "n2")])
}

#[test]
fn pods_from_the_api_server_are_enrolled_and_released() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let Cluster { api, mesh, .. } = &cluster(&topo)?;
    let (n1, a, b) = (topo.node("n1")?, topo.pod("a")?, topo.pod("b")?);
    let _server = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);
    let capture = n1.capture("eth0", &["tcp"])?;
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b");
    let pcap = capture.finish()?;
    assert!(pcap.tcp_ports().contains(&15008), "{:?}", pcap.tcp_ports());
    assert!(
        !pcap.tcp_ports().contains(&8080) && !pcap.contains(b"from-b"),
        "plaintext on the wire: {:?}",
        pcap.tcp_ports()
    );

    // An object the API server takes but the checks refuse is left out,
    // named, and counted; the rest of the cluster still applies.
    api.apply(
        "apiVersion: v1
kind: Service
metadata:
  name: odd
  namespace: shop
  annotations: {istio.io/dry-run: 'true'}
spec:
  selector: {app: b}
  ports: [{port: 80}]
",
    )?;
    let deadline = Instant::now() + WAIT;
    let left_out = loop {
        let dump = mesh.admin("n1", "/config_dump")?;
        if let Some(line) = dump["reload"]["left_out"]
            .as_array()
            .and_then(|l| l.first())
            .and_then(|l| l.as_str())
        {
            break line.to_owned();
        }
        if Instant::now() > deadline {
            return Err(format!("the bad Service was not left out: {}", dump["reload"]).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("left out: {left_out}");
    assert!(
        left_out.starts_with("Service shop/odd: field metadata.annotations.istio.io/dry-run:"),
        "{left_out}"
    );
    assert_eq!(
        metric_sum(&mesh.metrics("n1")?, "strait_config_objects_left_out", &[]),
        1
    );
    assert!(
        curl(a, &url)?.status.success(),
        "the rest of the cluster still applies"
    );

    // A change the checks refuse to an object that passed before: its last
    // good version stays in force, as a webhook would have kept it.
    api.apply(
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: b}
  ports: [{name: http, port: 80, targetPort: 8080}]
",
    )?;
    let cluster_ip = api.cluster_ip("shop", "web")?;
    let service_url = format!("http://{cluster_ip}:80/marker");
    let deadline = Instant::now() + WAIT;
    while !curl(a, &service_url)?.status.success() {
        if Instant::now() > deadline {
            return Err(format!("the Service {cluster_ip} never answered").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    api.kubectl_ok(&[
        "-n",
        "shop",
        "annotate",
        "service",
        "web",
        "istio.io/dry-run=true",
    ])?;
    let deadline = Instant::now() + WAIT;
    loop {
        let reload = mesh.admin("n1", "/config_dump")?["reload"].clone();
        if reload["kept_previous"]
            .as_array()
            .is_some_and(|k| k.iter().any(|o| o == "Service shop/web"))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(
                format!("the failed change to Service shop/web was not noticed: {reload}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = curl(a, &service_url)?;
    assert!(
        out.status.success(),
        "the last good Service is not in force: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-b");

    // A deleted pod is released; a namespace that leaves the mesh takes its
    // pods with it.
    // No kubelet confirms a graceful deletion here: delete at once.
    api.kubectl_ok(&[
        "-n",
        "shop",
        "delete",
        "pod",
        "b",
        "--grace-period=0",
        "--force",
    ])?;
    let (_, took) = mesh.wait_state("n2", "b", WAIT, |s| s != "captured")?;
    println!("b released {:.2} s after its deletion", took.as_secs_f64());
    api.kubectl_ok(&["label", "namespace", "shop", "istio.io/dataplane-mode-"])?;
    let (_, took) = mesh.wait_state("n1", "a", WAIT, |s| s != "captured")?;
    println!(
        "a released {:.2} s after its namespace lost the label",
        took.as_secs_f64()
    );
    Ok(())
}

/// `straitctl --node` and `--pod` reach a node's agent as `istioctl
/// ztunnel-config` does: the agent pod found through the API server, its
/// admin endpoint (on the node's loopback only) through the API server's
/// port-forward to the node's kubelet. What they print is what the
/// agent's own node sees; a node or pod with no agent is a clear error.
#[test]
fn straitctl_reaches_a_nodes_agent_through_the_api_server() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let Cluster { api, mesh, .. } = &cluster(&topo)?;
    let mut kubelets = Vec::new();
    for name in ["n1", "n2"] {
        let node = topo.node(name)?;
        api.apply(&node_yaml(name, "r1", "z1"))?;
        api.node_status(name, node.addrs.ipv4.into(), portforward::KUBELET_PORT)?;
        kubelets.push(PortForward::start(
            node.place.netns_path(),
            node.addrs.ipv4.into(),
        )?);
        // The chart's agent pod on that node.
        api.apply(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: strait-agent-{name}
  namespace: kube-system
  labels: {{app.kubernetes.io/name: strait, app.kubernetes.io/component: agent}}
spec:
  nodeName: {name}
  hostNetwork: true
  automountServiceAccountToken: false
  containers: [{{name: agent, image: none}}]
---
"
        ))?;
        api.request(
            "PATCH",
            &format!("/api/v1/namespaces/kube-system/pods/strait-agent-{name}/status"),
            &serde_json::json!({"status": {"phase": "Running"}}),
        )?;
    }
    let kubeconfig = api.admin_kubeconfig()?;
    // A user's straitctl, beside the API server, away from n2's agent.
    let ctl = |args: &[&str]| -> Result<(i32, String, String)> {
        let mut cmd = topo
            .node("n1")?
            .place
            .command(strait_e2e::strait_bin("straitctl"))?;
        cmd.env("KUBECONFIG", &kubeconfig).args(args);
        let out = strait_topology::process::run(cmd, Duration::from_secs(60))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let workloads = |json: &str| -> Result<Vec<String>> {
        let list: serde_json::Value = serde_json::from_str(json)?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| format!("{}/{} {}", w["namespace"], w["name"], w["state"]))
            .collect())
    };
    let started = Instant::now();
    let (code, by_node, err) = ctl(&["--node", "n2", "workloads", "-o", "json"])?;
    assert_eq!(code, 0, "straitctl --node n2: {err}");
    println!(
        "straitctl --node n2 workloads: through the API server in {:.2} s: {:?}",
        started.elapsed().as_secs_f64(),
        workloads(&by_node)?
    );
    let on_n2 = mesh.straitctl("n2", &["workloads", "-o", "json"])?;
    assert_eq!(workloads(&by_node)?, workloads(&on_n2)?);
    assert!(
        workloads(&by_node)?
            .iter()
            .any(|w| w.contains("\"b\"") && w.ends_with("\"captured\"")),
        "{by_node}"
    );
    let (code, by_pod, err) = ctl(&["--pod", "shop/b", "describe", "pod", "shop/b", "-o", "json"])?;
    assert_eq!(code, 0, "straitctl --pod shop/b: {err}");
    let described: serde_json::Value = serde_json::from_str(&by_pod)?;
    println!(
        "straitctl --pod shop/b describe pod shop/b: {}",
        described["reason"]
    );
    assert_eq!(
        by_pod,
        mesh.straitctl("n2", &["describe", "pod", "shop/b", "-o", "json"])?
    );
    let (code, level, err) = ctl(&["--node", "n1", "log"])?;
    assert_eq!((code, level.trim()), (0, "info"), "{err}");

    for (args, says) in [
        (
            &["--node", "n9", "workloads"][..],
            "no running strait agent pod on node n9",
        ),
        (&["--pod", "shop/nope", "workloads"][..], "no pod shop/nope"),
        (&["--pod", "nope", "workloads"][..], "not namespace/name"),
        (&["--node", "n1,spec.x=y", "workloads"][..], "--node"),
    ] {
        let (code, out, err) = ctl(args)?;
        println!("straitctl {}: exit {code}: {}", args.join(" "), err.trim());
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    drop(kubelets);
    Ok(())
}

/// The API server restarts under running agents: no connection drops, the
/// agents say the server is away meanwhile, and a change made after it is
/// back applies as soon as they reconnect.
#[test]
fn an_api_server_restart_drops_nothing_and_later_changes_apply() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let Cluster {
        mut api,
        mesh,
        _agents,
    } = cluster(&topo)?;
    let (a, b, c) = (topo.pod("a")?, topo.pod("b")?, topo.pod("c")?);
    let mut echo = echo_server(&b.place, 9000)?;
    echo.wait_listening(9000, WAIT)?;
    let mut long = echo_client(&a.place, IpAddr::V4(b.ipv4), 9000, 8)?;
    wait_for_line(&mut long, "connected", WAIT)?;

    api.stop()?;
    let away = mesh.wait_metric("n2", "strait_cluster_connected", &[], 0, WAIT)?;
    println!(
        "n2's agent reported the API server away after {:.2} s",
        away.as_secs_f64()
    );
    assert_eq!(
        mesh.wait_state("n2", "b", WAIT, |s| s == "captured")?.0,
        "captured"
    );
    let ready = mesh.readiness("n2")?;
    assert!(
        ready.contains("cluster Kubernetes: API server away; what it last listed is in force"),
        "readiness: {ready}"
    );

    let up = api.restart()?;
    let back = Instant::now();
    println!(
        "the API server was ready again {:.1} s after its start",
        up.as_secs_f64()
    );
    api.apply(&pod_yaml(c, "shop", "c", &[("app", &c.name)]))?;
    api.make_ready("shop", c)?;
    mesh.wait_state("n2", "c", WAIT, |s| s == "captured")?;
    println!(
        "c, created after the restart, enrolled {:.2} s after the API server was back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        metric_sum(&mesh.metrics("n2")?, "strait_cluster_connected", &[]),
        1
    );

    let status = long
        .wait_timeout(WAIT)?
        .ok_or("the long-lived connection did not finish")?;
    assert!(
        status.success(),
        "the connection broke across the restart:\n{}",
        long.log()
    );
    println!("{}", long.log().trim());
    Ok(())
}

/// The agents' kubeconfig names a token file, as a pod's projected token
/// is mounted: the file is rotated, the old token stops being valid (its
/// pod is gone), and the API server restarts so every watch must
/// authenticate again. The agents take up the new token and later changes
/// apply.
#[test]
fn a_rotated_token_is_taken_up() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let n1 = topo.node("n1")?;
    let (a, b, c) = (topo.pod("a")?, topo.pod("b")?, topo.pod("c")?);
    let mut api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    api.strait_token()?;
    let holder = |name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: kube-system}}
spec:
  nodeName: n2
  hostNetwork: true
  serviceAccountName: strait
  automountServiceAccountToken: false
  containers: [{{name: agent, image: none}}]
---
"
        )
    };
    api.apply(&format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
{}{}{}{}",
        holder("agent-old"),
        holder("agent-new"),
        pod_yaml(a, "shop", "a", &[("app", &a.name)]),
        pod_yaml(b, "shop", "b", &[("app", &b.name)]),
    ))?;
    let bound = |pod: &str| api.token("kube-system", "strait", Some(pod), AUDIENCE, 3600);
    let old = bound("agent-old")?;
    let file = topo.scratch_dir().join("strait.token");
    std::fs::write(&file, &old)?;
    let mesh = Mesh::with_cluster(&topo, api.kubeconfig_with_token_file("rotating", &file)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    api.make_ready("shop", a)?;
    api.make_ready("shop", b)?;
    mesh.wait_state("n2", "b", WAIT, |s| s == "captured")?;

    // Rotate: the new token in the file, the old one void, every watch
    // cut.
    std::fs::write(&file, bound("agent-new")?)?;
    api.kubectl_ok(&[
        "-n",
        "kube-system",
        "delete",
        "pod",
        "agent-old",
        "--grace-period=0",
        "--force",
    ])?;
    api.restart()?;
    let back = Instant::now();
    // (The API server caches a token's review for 10 s; restarted, it has
    // none.)
    let refused = api.kubectl_as(&old, &["get", "namespaces"])?;
    assert!(!refused.status.success(), "the old token still works");
    api.apply(&pod_yaml(c, "shop", "c", &[("app", &c.name)]))?;
    api.make_ready("shop", c)?;
    // kube-rs reads a token file again at least once a minute.
    mesh.wait_state("n2", "c", Duration::from_secs(120), |s| s == "captured")?;
    println!(
        "c enrolled {:.1} s after the API server came back with the old token void",
        back.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Istio's pod-level rules: a pod's own `istio.io/dataplane-mode=ambient`
/// enrolls it in a namespace that is not in the mesh; a pod with an Istio
/// sidecar (the injector's annotation, or an `istio-proxy` container) is
/// never captured in one that is. The wire between the nodes shows which
/// pods are captured; `straitctl describe pod` names the rule that decided.
#[test]
fn pod_level_enrollment_and_sidecars_decide_capture() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[
        ("a", "n1"),
        ("own", "n2"),
        ("injected", "n2"),
        ("proxied", "n2"),
    ]))?;
    let (n1, a) = (topo.node("n1")?, topo.pod("a")?);
    let (own, injected, proxied) = (
        topo.pod("own")?,
        topo.pod("injected")?,
        topo.pod("proxied")?,
    );
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let mesh = Mesh::with_cluster(&topo, api.strait_kubeconfig()?)?;
    let sidecar_pod = |pod: &strait_topology::Pod, annotations: &str, containers: &str| {
        format!(
            "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}, annotations: {{{annotations}}}}}
spec:
  nodeName: {node}
  serviceAccountName: {name}
  automountServiceAccountToken: false
  containers: [{containers}{{name: app, image: none}}]
---
",
            name = pod.name,
            node = pod.node,
        )
    };
    // strait's CRDs, for the AuthorizationPolicy.
    strait_e2e::kube::apply_crds(&api)?;
    let described_objects = "apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec:
  selector: {app: a}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-only-shop, namespace: shop}
spec:
  selector: {matchLabels: {app: a}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
";
    api.apply(&format!(
        "{}{described_objects}{}{}{}{}{}",
        namespace_yaml("shop", true),
        namespace_yaml("plain", false),
        pod_yaml(a, "shop", "a", &[("app", "a")]),
        pod_yaml(
            own,
            "plain",
            "own",
            &[("istio.io/dataplane-mode", "ambient")]
        ),
        sidecar_pod(
            injected,
            "sidecar.istio.io/status: '{\"containers\":[\"istio-proxy\"]}'",
            ""
        ),
        sidecar_pod(proxied, "", "{name: istio-proxy, image: proxyv2}, "),
    ))?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    for pod in [a, own, injected, proxied] {
        let namespace = if pod.name == "own" { "plain" } else { "shop" };
        api.make_ready(namespace, pod)?;
    }
    mesh.wait_state("n1", "a", WAIT, |s| s == "captured")?;
    mesh.wait_state("n2", "own", WAIT, |s| s == "captured")?;

    // What each rule decided, as straitctl says it.
    for (pod, rule) in [
        ("plain/own", "workload-label"),
        ("shop/a", "namespace-label"),
        ("shop/injected", "sidecar"),
        ("shop/proxied", "sidecar"),
    ] {
        let node = if pod == "shop/a" { "n1" } else { "n2" };
        let described = wait_for(&format!("{pod} described"), WAIT, || {
            let json = mesh
                .straitctl(node, &["describe", "pod", pod, "--json"])
                .ok()?;
            let json: serde_json::Value = serde_json::from_str(&json).ok()?;
            (json["rule"] == rule).then_some(json)
        })?;
        assert_eq!(
            described["enrolled"],
            rule.ends_with("-label"),
            "{described}"
        );
        let text = mesh.straitctl(node, &["describe", "pod", pod])?;
        println!("{text}");
        assert!(
            text.contains(described["reason"].as_str().unwrap_or("?")),
            "{text}"
        );
    }
    let a_json: serde_json::Value =
        serde_json::from_str(&mesh.straitctl("n1", &["describe", "pod", "shop/a", "--json"])?)?;
    assert_eq!(a_json["identity"], "spiffe://cluster.local/ns/shop/sa/a");
    assert_eq!(a_json["capture"], "captured");
    assert_eq!(a_json["mtls_mode"], "PERMISSIVE");
    assert_eq!(
        a_json["policies"],
        serde_json::json!([{"policy": "shop/front-only-shop", "action": "ALLOW", "scope": "its selector matches: app=a"}])
    );
    assert_eq!(a_json["services"][0]["service"], "shop/front");
    let front: serde_json::Value = serde_json::from_str(
        &mesh.straitctl("n1", &["describe", "service", "front.shop", "--json"])?,
    )?;
    assert_eq!(
        front["service"]["workloads"],
        serde_json::json!(["shop/a"]),
        "{front}"
    );
    assert_eq!(
        front["endpoints"]["endpoints"][0]["address"],
        format!("{}:8080", a.ipv4),
        "{front}"
    );
    println!(
        "{}",
        mesh.straitctl("n1", &["describe", "service", "front.shop"])?
    );

    // Day two: every service, every workload's policies, the log filter;
    // table, JSON and YAML.
    let services: serde_json::Value =
        serde_json::from_str(&mesh.straitctl("n1", &["services", "-o", "json"])?)?;
    let front = services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == "shop/front"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        front["workloads"],
        serde_json::json!(["shop/a"]),
        "{services}"
    );
    let table = mesh.straitctl("n1", &["services"])?;
    println!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop/front ") && l.ends_with(" 1")),
        "{table}"
    );
    let policies = mesh.straitctl("n1", &["policies", "-o", "yaml"])?;
    println!("{policies}");
    assert!(
        policies.contains("policy: shop/front-only-shop"),
        "{policies}"
    );
    assert!(policies.contains("pod: shop/a"), "{policies}");
    println!("{}", mesh.straitctl("n1", &["policies"])?);
    assert_eq!(mesh.straitctl("n1", &["log"])?.trim(), "info");
    let debug_lines = |agent: &Process| {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("\"level\":\"DEBUG\""))
            .count()
    };
    assert_eq!(debug_lines(&agents[0]), 0, "debug lines at info");
    let set = mesh.straitctl("n1", &["log", "--level", "strait_agent=debug,info"])?;
    assert_eq!(set.trim(), "strait_agent=debug,info");
    assert_eq!(
        mesh.straitctl("n1", &["log"])?.trim(),
        "strait_agent=debug,info"
    );
    // Debug lines now appear: a connection's outbound decisions.
    let _front_server = http_server(a, 8080, "from-a")?;
    let front_url = format!("http://{}:80/marker", api.cluster_ip("shop", "front")?);
    assert!(curl(a, &front_url)?.status.success());
    wait_for("a debug line in the agent's log", WAIT, || {
        (debug_lines(&agents[0]) > 0).then_some(())
    })?;
    mesh.straitctl("n1", &["log", "--level", "info"])?;

    // The wire: the pod enrolled by its own label is reached over HBONE;
    // the sidecar pods in plaintext (their sidecars' business, not ours).
    for (pod, marker) in [
        (own, "from-own"),
        (injected, "from-injected"),
        (proxied, "from-proxied"),
    ] {
        let _server = http_server(pod, 8080, marker)?;
        let capture = n1.capture("eth0", &["tcp"])?;
        let out = curl(a, &marker_url(IpAddr::V4(pod.ipv4), 8080))?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), marker);
        let pcap = capture.finish()?;
        let ports = pcap.tcp_ports();
        println!("a -> {}: ports on the wire {ports:?}", pod.name);
        if pod.name == "own" {
            assert!(
                ports.contains(&15008) && !ports.contains(&8080),
                "{ports:?}"
            );
            assert!(
                !pcap.contains(marker.as_bytes()),
                "plaintext to {}",
                pod.name
            );
        } else {
            assert!(
                ports.contains(&8080) && !ports.contains(&15008),
                "{ports:?}"
            );
            assert!(
                pcap.contains(marker.as_bytes()),
                "{} was captured",
                pod.name
            );
        }
    }

    // Bad targets: a clear error and exit code 1.
    let ctl = strait_e2e::strait_bin("straitctl").display().to_string();
    for (args, says) in [
        (
            vec!["describe", "pod", "shop/nope"],
            "no pod or workload shop/nope",
        ),
        (
            vec!["describe", "pod", "nope"],
            "name a pod as namespace/name",
        ),
        (
            vec!["describe", "service", "nope.shop"],
            "no service nope.shop",
        ),
        (
            vec!["--admin", "127.0.0.1:1", "describe", "pod", "shop/a"],
            "is strait-agent running on this node?",
        ),
        (
            vec!["log", "--level", "strait=bogus"],
            "400 Bad Request: \"strait=bogus\"",
        ),
    ] {
        let argv: Vec<&str> = std::iter::once(ctl.as_str())
            .chain(args.iter().copied())
            .collect();
        let out = n1.run(&argv, Duration::from_secs(10))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "straitctl {}: exit {:?}: {}",
            args.join(" "),
            out.status.code(),
            stderr.trim()
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    Ok(())
}
