//! Pods are workloads as their kubelet reports them: addresses, readiness,
//! service account, node and named ports; the rest of a Pod is not
//! strait's business and is allowed.
use std::{net::IpAddr, path::Path};

use strait_config::check_text;

const POD: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f
  namespace: shop
  labels: {app: web}
  uid: 6b1f0c4e-0000-4000-8000-000000000001
  managedFields: [{manager: kubelet, operation: Update}]
spec:
  nodeName: n1
  serviceAccountName: web
  restartPolicy: Always
  containers:
  - name: web
    image: nginx
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
    resources: {limits: {cpu: 100m}}
status:
  phase: Running
  podIP: 10.1.0.2
  podIPs: [{ip: 10.1.0.2}, {ip: 'fd00::2'}]
  conditions: [{type: Ready, status: 'True'}, {type: ContainersReady, status: 'True'}]
";

#[test]
fn a_running_pod_is_a_workload_of_its_node() {
    let (report, config) = check_text(Path::new("pods.yaml"), POD);
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let w = config
        .workload_by_address("10.1.0.2".parse::<IpAddr>().unwrap())
        .expect("the pod's address finds it");
    assert_eq!(w.name, "web-7d9f");
    assert_eq!(w.service_account, "web");
    assert_eq!(w.node.as_deref(), Some("n1"));
    assert_eq!(w.locality.zone, "z1", "the node's locality");
    assert_eq!(w.ports.get("http"), Some(&8080));
    assert_eq!(w.addresses.len(), 2, "both families");
    assert!(w.ready);
    assert!(config.enrolled(w));
}

#[test]
fn pods_without_an_address_finished_or_on_the_host_network_are_not_workloads() {
    for (what, edit) in [
        (
            "pending",
            POD.replace(
                "  podIP: 10.1.0.2\n  podIPs: [{ip: 10.1.0.2}, {ip: 'fd00::2'}]\n",
                "",
            ),
        ),
        (
            "finished",
            POD.replace("phase: Running", "phase: Succeeded"),
        ),
        (
            "host network",
            POD.replace("  restartPolicy: Always", "  hostNetwork: true"),
        ),
    ] {
        let (report, config) = check_text(Path::new("pods.yaml"), &edit);
        let config = config.unwrap_or_else(|| panic!("{what}: {report}"));
        assert!(
            config.workloads.is_empty(),
            "{what}: {:?}",
            config.workloads
        );
    }
    let not_ready = POD.replace(
        "{type: Ready, status: 'True'}",
        "{type: Ready, status: 'False'}",
    );
    let (_, config) = check_text(Path::new("pods.yaml"), &not_ready);
    assert!(
        !config.unwrap().workloads[0].ready,
        "not ready gets no connections"
    );
}

#[test]
fn a_bad_pod_address_is_refused_at_its_field() {
    let (report, config) = check_text(
        Path::new("pods.yaml"),
        &POD.replace("podIP: 10.1.0.2", "podIP: 10.1.0.300"),
    );
    assert!(config.is_none());
    let shown = report.to_string();
    assert!(
        shown
            .contains("Pod shop/web-7d9f: field status.podIP: \"10.1.0.300\" is not an IP address"),
        "{shown}"
    );
}

/// Istio's sidecar, however it shows (the injector's annotation, its
/// container, its native init container), keeps a pod out of capture; a
/// pod's own `ambient` label enrolls it in a namespace that is not.
#[test]
fn a_sidecar_keeps_a_pod_out_and_its_own_label_brings_it_in() {
    let sidecar_cases = [
        (
            "annotation",
            POD.replace(
                "  uid: 6b1f",
                "  annotations: {sidecar.istio.io/status: '{\"containers\":[\"istio-proxy\"]}'}\n  uid: 6b1f",
            ),
        ),
        (
            "container",
            POD.replace("  - name: web\n", "  - {name: istio-proxy, image: proxyv2}\n  - name: web\n"),
        ),
        (
            "init container",
            POD.replace(
                "  containers:\n",
                "  initContainers: [{name: istio-proxy, image: proxyv2, restartPolicy: Always}]\n  containers:\n",
            ),
        ),
    ];
    for (how, text) in sidecar_cases {
        let (report, config) = check_text(Path::new("pods.yaml"), &text);
        let config = config.unwrap_or_else(|| panic!("{how}: {report}"));
        let w = &config.workloads[0];
        assert!(w.sidecar, "{how}");
        assert_eq!(
            config.enrollment(w),
            strait_config::Enrollment::Sidecar,
            "{how}"
        );
    }
    let own_label = POD
        .replace("labels: {istio.io/dataplane-mode: ambient}", "labels: {}")
        .replace(
            "labels: {app: web}",
            "labels: {app: web, istio.io/dataplane-mode: ambient}",
        );
    let (report, config) = check_text(Path::new("pods.yaml"), &own_label);
    let config = config.unwrap_or_else(|| panic!("{report}"));
    assert_eq!(
        config.enrollment(&config.workloads[0]),
        strait_config::Enrollment::WorkloadLabel
    );
}
