//! The agents and the CA fed by a real API server instead of a directory:
//! pods created and made ready through it (as a kubelet would) in a
//! labelled namespace are enrolled on their nodes and talk over mTLS; a
//! deleted pod is released, and so are the pods of a namespace that loses
//! its label. The agents run with no config directory at all.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde_json::json;
use strait_e2e::{
    Mesh, Result, curl, http_server, kube::ApiServer, marker_url, metric_sum, require_root,
    two_nodes,
};
use strait_topology::{Pod, Topology};

/// How long a state change may take before the test gives up.
const WAIT: Duration = Duration::from_secs(30);

/// A Pod object for a topology pod, scheduled on `node`.
fn pod_yaml(pod: &Pod, node: &str, service_account: &str) -> String {
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {service_account}, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  serviceAccountName: {service_account}
  automountServiceAccountToken: false
  containers: [{{name: app, image: none}}]
---
",
        name = pod.name
    )
}

/// Writes the status a kubelet would once the pod's network is up.
fn make_ready(api: &ApiServer, pod: &Pod) -> Result<()> {
    api.request(
        "PATCH",
        &format!("/api/v1/namespaces/shop/pods/{}/status", pod.name),
        &json!({"status": {
            "phase": "Running",
            "podIP": pod.ipv4.to_string(),
            "podIPs": [{"ip": pod.ipv4.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }}),
    )?;
    Ok(())
}

#[test]
fn pods_from_the_api_server_are_enrolled_and_released() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[("a", "n1"), ("b", "n2")]))?;
    let (n1, a, b) = (topo.node("n1")?, topo.pod("a")?, topo.pod("b")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let kubeconfig = api.kubeconfig("strait", &api.admin_token)?;
    let mesh = Mesh::with_cluster(&topo, kubeconfig)?;
    api.apply(&format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
{}{}",
        pod_yaml(a, "n1", "a"),
        pod_yaml(b, "n2", "b")
    ))?;
    let _agent1 = mesh.start_agent("n1", &[])?;
    let _agent2 = mesh.start_agent("n2", &[])?;
    // Nothing is enrolled before the kubelet says where the pod is.
    mesh.wait_state("n1", "a", WAIT, str::is_empty)?;

    make_ready(&api, a)?;
    let made_ready = Instant::now();
    make_ready(&api, b)?;
    mesh.wait_state("n1", "a", WAIT, |s| s == "captured")?;
    mesh.wait_state("n2", "b", WAIT, |s| s == "captured")?;
    println!(
        "a and b enrolled {:.2} s after their status was written",
        made_ready.elapsed().as_secs_f64()
    );

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
