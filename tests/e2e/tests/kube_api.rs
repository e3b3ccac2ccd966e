//! The Kubernetes control plane the Kubernetes tests run against is a real
//! one: the kube-apiserver setup builds (with the reflect2 fix, so maps
//! decode), on etcd, in a node's namespace. What strait will rely on works
//! there: labels, `spec.nodeName` field selectors, Pod status written as a
//! kubelet would, tokens bound to a Pod and reviewed with their audience,
//! and state kept across an API server restart.
use std::time::Instant;

use serde_json::json;
use strait_e2e::{
    Result,
    kube::{AUDIENCE, ApiServer},
    require_root,
};
use strait_topology::{Locality, Spec, Topology};

#[test]
fn the_control_plane_serves_what_strait_needs() -> Result<()> {
    require_root();
    let topo =
        Topology::create(Spec::new().node("n1", "c1", "net1", Locality::new("r1", "z1", "")))?;
    let n1 = topo.node("n1")?;
    let started = Instant::now();
    let mut api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    println!(
        "etcd and kube-apiserver ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    api.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web, version: v1}}
spec:
  nodeName: n1
  serviceAccountName: web
  automountServiceAccountToken: false
  containers: [{name: web, image: none}]
",
    )?;
    let labels = api.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.metadata.labels.version}",
    ])?;
    assert_eq!(labels, "v1", "labels (a map) survive the round trip");
    let on_n1 = api.kubectl_ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=n1",
        "-o",
        "name",
    ])?;
    let on_n2 = api.kubectl_ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=n2",
        "-o",
        "name",
    ])?;
    assert_eq!(on_n1.trim(), "pod/web");
    assert_eq!(on_n2.trim(), "", "the field selector filters by node");

    // What a kubelet would write once the pod's network is up.
    let status = api.request(
        "PATCH",
        "/api/v1/namespaces/shop/pods/web/status",
        &json!({"status": {
            "phase": "Running",
            "podIP": "10.1.0.2",
            "podIPs": [{"ip": "10.1.0.2"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }}),
    )?;
    assert_eq!(status["status"]["podIP"], "10.1.0.2", "{status}");

    // A token bound to the pod, for the audience agents use, reviewed.
    let uid = api.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.metadata.uid}",
    ])?;
    let token = |audience: &str| -> Result<String> {
        let issued = api.request(
            "POST",
            "/api/v1/namespaces/shop/serviceaccounts/web/token",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": [audience],
                "expirationSeconds": 600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": uid},
            }}),
        )?;
        Ok(issued["status"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let review = |token: &str| {
        api.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [AUDIENCE]}}),
        )
    };
    let good = review(&token(AUDIENCE)?)?;
    assert_eq!(good["status"]["authenticated"], true, "{good}");
    assert_eq!(
        good["status"]["user"]["username"],
        "system:serviceaccount:shop:web"
    );
    assert_eq!(
        good["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "web",
        "{good}"
    );
    let other = review(&token("someone-else")?)?;
    assert_ne!(
        other["status"]["authenticated"], true,
        "another audience passed: {other}"
    );

    // strait's own account reads what it watches and nothing else.
    let strait = api.strait_token()?;
    assert!(
        api.kubectl_as(&strait, &["get", "pods", "-A"])?
            .status
            .success()
    );
    let secrets = api.kubectl_as(&strait, &["get", "secrets", "-A"])?;
    assert!(
        !secrets.status.success(),
        "strait's account may read secrets"
    );
    assert!(
        String::from_utf8_lossy(&secrets.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&secrets.stderr)
    );

    // The state is etcd's: an API server restart keeps it.
    api.stop()?;
    let back = api.restart()?;
    println!(
        "kube-apiserver restarted and ready in {:.1} s",
        back.as_secs_f64()
    );
    let ip = api.kubectl_ok(&[
        "-n",
        "shop",
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    assert_eq!(ip, "10.1.0.2", "state lost across the restart");
    Ok(())
}
