//! Two clusters on one network, each with its own API server, etcd and CA
//! (sharing one root): a Service named alike in both is one service whose
//! endpoints carry their cluster. A client in cluster 1 keeps to its own
//! zone's endpoint, fails over to cluster 2's when that one is gone, with
//! no failed connection, and goes on reaching cluster 2's known endpoints
//! while cluster 2's API server is stopped (marked stale meanwhile).
use std::time::{Duration, Instant};

use serde_json::json;
use strait_e2e::{
    Load, Mesh, Result, connections, http_server,
    kube::{ApiServer, pod_yaml},
    metric_sum, monotonic_now, node_yaml, require_root,
};
use strait_topology::{Locality, Pod, Spec, Topology};

const WAIT: Duration = Duration::from_secs(30);
const CONNECTIONS: u32 = 2_000;

/// n1 (client) and n2 (near) in cluster c1, zone r1/z1; n3 (far) in c2,
/// zone r1/z2.
fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n3", "c2", "net1", Locality::new("r1", "z2", ""))
        .pod("client", "n1")
        .pod("near", "n2")
        .pod("far", "n3")
}

/// The namespace, a Service `web`, and `pods` (name, node, labels) with
/// their ServiceAccounts.
fn objects(nodes: &[(&str, &str)], pods: &[(&Pod, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
",
    );
    for (node, zone) in nodes {
        yaml.push_str(&node_yaml(node, "r1", zone));
    }
    for (pod, app) in pods {
        yaml.push_str(&pod_yaml(pod, "shop", &pod.name, &[("app", app)]));
    }
    yaml
}

fn check(load: &Load, to: &str, step: &str) {
    println!("{step}: {}", load.summary());
    assert_eq!(load.failures, 0, "{step}: failures {:?}", load.errors);
    assert_eq!(
        load.count(&[to]),
        load.total(),
        "{step}: {:?}",
        load.answers
    );
    assert_eq!(load.total(), u64::from(CONNECTIONS), "{step}");
}

#[test]
fn a_service_spans_two_clusters_and_fails_over_between_them() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let (n1, n3) = (topo.node("n1")?, topo.node("n3")?);
    let (client, near, far) = (topo.pod("client")?, topo.pod("near")?, topo.pod("far")?);
    let api1 = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let mut api2 = ApiServer::start(&n3.place, n3.addrs.ipv4.into(), "c2")?;
    api1.apply(&objects(
        &[("n1", "z1"), ("n2", "z1")],
        &[(client, "client"), (near, "web")],
    ))?;
    api2.apply(&objects(&[("n3", "z2")], &[(far, "web")]))?;

    // Each cluster's agents and CA read their own API server; the agents
    // read the other cluster's too. The CAs share one root.
    let (kube1, kube2) = (api1.strait_kubeconfig()?, api2.strait_kubeconfig()?);
    let mesh1 = Mesh::with_cluster(&topo, kube1.clone())?;
    let mesh2 = Mesh::with_cluster(&topo, kube2.clone())?.with_ca_on("n3");
    let scratch = topo.scratch_dir();
    let to_c2 = strait_e2e::kube::remote_dir(&scratch.join("remotes-c1"), "c2", &kube2)?;
    let to_c1 = strait_e2e::kube::remote_dir(&scratch.join("remotes-c2"), "c1", &kube1)?;
    let in_c1 = [
        ("--cluster", "c1"),
        ("--remote-kubeconfigs", to_c2.as_str()),
    ];
    let in_c2 = [
        ("--cluster", "c2"),
        ("--remote-kubeconfigs", to_c1.as_str()),
    ];
    let _agents = [
        mesh1.start_agent("n1", &in_c1)?,
        mesh1.start_agent("n2", &in_c1)?,
        mesh2.start_agent("n3", &in_c2)?,
    ];
    let written = Instant::now();
    for pod in [client, near] {
        api1.make_ready("shop", pod)?;
    }
    api2.make_ready("shop", far)?;
    mesh1.wait_state("n1", "client", WAIT, |s| s == "captured")?;
    mesh1.wait_state("n2", "near", WAIT, |s| s == "captured")?;
    mesh2.wait_state("n3", "far", WAIT, |s| s == "captured")?;
    println!(
        "client, near and far enrolled {:.2} s after their status was written",
        written.elapsed().as_secs_f64()
    );

    // Cluster 1's address of the service; cluster 2 gave it another.
    let vip = api1.cluster_ip("shop", "web")?;
    let deadline = Instant::now() + WAIT;
    let endpoints = loop {
        let text = mesh1.straitctl("n1", &["endpoints", "web.shop", "--port", "80"])?;
        if text.contains(&far.ipv4.to_string()) && text.contains(&near.ipv4.to_string()) {
            break text;
        }
        if Instant::now() > deadline {
            return Err(format!("n1 does not see both clusters' endpoints:\n{text}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("{endpoints}");
    let row = |text: &str, pod: &Pod| {
        text.lines()
            .find(|l| l.starts_with(&pod.ipv4.to_string()))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(row(&endpoints, near).contains(" c1 "), "{endpoints}");
    assert!(row(&endpoints, far).contains(" c2 "), "{endpoints}");
    // A remote node is named after its cluster too: no remote pod is ever
    // taken for one of this node's.
    let report = mesh1.admin("n1", "/endpoints?service=web.shop&port=80")?;
    let far_node = report["endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["workload"] == "shop/far"))
        .map(|e| e["node"].clone());
    assert_eq!(far_node, Some(json!("n3.c2")), "{report}");

    let mut near_server = http_server(&near.place, 8080, "near")?;
    let _far_server = http_server(&far.place, 8080, "far")?;
    let got = connections(&client.place, vip, 80, CONNECTIONS, 8, 0.0)?;
    check(&got, "near", "both clusters up");

    // Cluster 1's endpoint is gone: cluster 2's takes every connection.
    near_server.kill()?;
    let killed = monotonic_now();
    let got = connections(&client.place, vip, 80, CONNECTIONS, 8, killed)?;
    check(&got, "far", "cluster 1's endpoint killed");
    println!(
        "first connection served by cluster 2 {:.0} ms after the kill",
        got.first_of(&["far"]).unwrap_or(f64::NAN)
    );

    // Cluster 2's API server stops: what it last listed stays in force,
    // marked stale, and its endpoint goes on serving.
    api2.stop()?;
    let away = mesh1.wait_metric(
        "n1",
        "strait_cluster_connected",
        &["cluster=\"c2\""],
        0,
        WAIT,
    )?;
    println!(
        "n1 reported cluster 2's API server away after {:.2} s",
        away.as_secs_f64()
    );
    assert_eq!(
        metric_sum(
            &mesh1.metrics("n1")?,
            "strait_cluster_connected",
            &["cluster=\"c1\""]
        ),
        1
    );
    let ready = mesh1.readiness("n1")?;
    assert!(
        ready.contains("cluster c2: API server away"),
        "readiness: {ready}"
    );
    let endpoints = mesh1.straitctl("n1", &["endpoints", "web.shop", "--port", "80"])?;
    println!("{endpoints}");
    assert!(row(&endpoints, far).ends_with("(stale)"), "{endpoints}");
    assert!(!row(&endpoints, near).ends_with("(stale)"), "{endpoints}");
    let got = connections(&client.place, vip, 80, CONNECTIONS, 8, 0.0)?;
    check(&got, "far", "cluster 2's API server stopped");
    Ok(())
}

/// Istio's remote secrets: a Secret labelled `istio/multiCluster=true` in
/// the agents' namespace of cluster 1, holding cluster 2's kubeconfig under
/// the key `c2`, adds cluster 2 while the agent runs; a key that is not a
/// cluster name is refused with the reason; deleting the Secret drops
/// cluster 2 again.
#[test]
fn remote_secrets_add_and_drop_a_cluster_while_the_agent_runs() -> Result<()> {
    require_root();
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n3", "c2", "net1", Locality::new("r1", "z2", ""))
            .pod("client", "n1")
            .pod("far", "n3"),
    )?;
    let (n1, n3) = (topo.node("n1")?, topo.node("n3")?);
    let (client, far) = (topo.pod("client")?, topo.pod("far")?);
    let api1 = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let api2 = ApiServer::start(&n3.place, n3.addrs.ipv4.into(), "c2")?;
    api1.apply(&objects(&[("n1", "z1")], &[(client, "client")]))?;
    api2.apply(&objects(&[("n3", "z2")], &[(far, "web")]))?;
    api2.make_ready("shop", far)?;
    // The agents may read remote secrets in istio-system, and nothing else
    // of Secrets.
    api1.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: strait-remote-secrets, namespace: istio-system}
rules:
- apiGroups: ['']
  resources: [secrets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: strait-remote-secrets, namespace: istio-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: strait-remote-secrets}
subjects: [{kind: ServiceAccount, name: strait, namespace: kube-system}]
",
    )?;
    let mesh = Mesh::with_cluster(&topo, api1.strait_kubeconfig()?)?;
    let _agent = mesh.start_agent(
        "n1",
        &[
            ("--cluster", "c1"),
            ("--remote-secrets-namespace", "istio-system"),
        ],
    )?;
    let clusters = |dump: &serde_json::Value| -> Vec<String> {
        dump["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let far_known = |dump: &serde_json::Value| {
        dump["config"]["workloads"]
            .as_array()
            .is_some_and(|all| all.iter().any(|w| w["name"] == "far"))
    };
    let wait =
        |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| -> Result<serde_json::Value> {
            let started = Instant::now();
            loop {
                let dump = mesh.admin("n1", "/config_dump")?;
                if done(&dump) {
                    println!("{what} after {:.2} s", started.elapsed().as_secs_f64());
                    return Ok(dump);
                }
                if started.elapsed() > WAIT {
                    return Err(format!("{what}: not within {WAIT:?}: {}", dump["clusters"]).into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
    let dump = mesh.admin("n1", "/config_dump")?;
    assert_eq!(clusters(&dump), ["c1"]);
    assert!(!far_known(&dump));

    let kubeconfig = std::fs::read_to_string(api2.strait_kubeconfig()?)?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "istio-remote-secret-c2", "namespace": "istio-system",
            "labels": {"istio/multiCluster": "true"}},
        "stringData": {"c2": kubeconfig, "Not_A_Cluster": "x"},
    });
    api1.request("POST", "/api/v1/namespaces/istio-system/secrets", &secret)?;
    let dump = wait("cluster c2 followed and its pod known", &|d| {
        clusters(d).contains(&"c2".to_string()) && far_known(d)
    })?;
    let problems = dump["cluster_problems"].to_string();
    assert!(
        problems.contains("Secret istio-remote-secret-c2: data.Not_A_Cluster:"),
        "{problems}"
    );
    let far_labels = dump["config"]["workloads"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["name"] == "far"))
        .map(|w| w["labels"]["topology.istio.io/cluster"].clone());
    assert_eq!(far_labels, Some(json!("c2")));

    api1.request(
        "DELETE",
        "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-c2",
        &serde_json::Value::Null,
    )?;
    wait("cluster c2 dropped with its Secret", &|d| {
        clusters(d) == ["c1"] && !far_known(d)
    })?;
    Ok(())
}
