//! Waypoints as Istio binds them: a Gateway of class `istio-waypoint`,
//! `istio.io/use-waypoint` on the namespace, the service or the workload
//! (the most specific wins, `none` opts out), `istio.io/waypoint-for` on
//! the waypoint, and its listener's `allowedRoutes` deciding which
//! namespaces may bind at all.
use std::path::Path;

use strait_config::{
    Config, check_text,
    waypoint::{Admits, TrafficType, Unbound},
};

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata:
  name: tenant
  labels: {istio.io/dataplane-mode: ambient, team: blue}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shared
  namespace: shop
  labels: {istio.io/waypoint-for: all}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-1
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: n1, serviceAccountName: waypoint}
status: {phase: Running, podIP: 10.1.0.50}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web}
status: {phase: Running, podIP: 10.1.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: direct
  namespace: shop
  labels: {istio.io/use-waypoint: none}
spec:
  clusterIP: 10.96.0.11
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: blue
  namespace: tenant
  labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: blue}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: sneaky
  namespace: tenant
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: blue}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: blue-1
  namespace: tenant
  labels: {app: blue, istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: shop}
spec: {nodeName: n2, serviceAccountName: blue}
status: {phase: Running, podIP: 10.2.0.10}
";

fn config(text: &str) -> Config {
    let (report, config) = check_text(Path::new("mesh.yaml"), text);
    config.unwrap_or_else(|| panic!("{report:?}"))
}

fn service<'a>(config: &'a Config, name: &str) -> &'a strait_config::Service {
    config.services.iter().find(|s| s.name == name).unwrap()
}

fn workload<'a>(config: &'a Config, name: &str) -> &'a strait_config::Workload {
    config.workloads.iter().find(|w| w.name == name).unwrap()
}

#[test]
fn a_waypoint_gateway_is_read_with_istios_defaults() {
    let config = config(MESH);
    let wp = config.waypoint("shop", "waypoint").unwrap();
    assert_eq!(wp.port, 15008);
    assert_eq!(wp.traffic, TrafficType::Service);
    assert_eq!(wp.admits, Admits::Same);
    // Istio's controller runs it as a service account of its own name.
    assert_eq!(wp.service_account, "waypoint");
    let shared = config.waypoint("shop", "shared").unwrap();
    assert_eq!(shared.traffic, TrafficType::All);
    assert!(matches!(shared.admits, Admits::Selector(_)));
}

#[test]
fn the_most_specific_label_binds() {
    let config = config(MESH);
    // The namespace's label.
    let web = config.service_waypoint(service(&config, "web")).unwrap();
    assert_eq!(web.name, "waypoint");
    // The service opts out of its namespace's waypoint.
    assert!(
        config
            .service_waypoint(service(&config, "direct"))
            .is_none()
    );
    // Another namespace's waypoint whose listener admits it.
    let blue = config.service_waypoint(service(&config, "blue")).unwrap();
    assert_eq!(
        (blue.namespace.as_str(), blue.name.as_str()),
        ("shop", "shared")
    );
    // Workload traffic: only waypoints for workloads take it.
    assert!(
        config
            .workload_waypoint(workload(&config, "web-1"))
            .is_none(),
        "waypoint is for services only"
    );
    let pod = config
        .workload_waypoint(workload(&config, "blue-1"))
        .unwrap();
    assert_eq!(pod.name, "shared");
}

#[test]
fn a_tenant_cannot_bind_to_a_waypoint_that_does_not_admit_it() {
    let config = config(MESH);
    // tenant/sneaky names shop's waypoint, whose listener admits shop only.
    assert_eq!(
        config.service_binding(service(&config, "sneaky")),
        Err(Unbound::NotAdmitted {
            waypoint: "shop/waypoint".into(),
            namespace: "tenant".into()
        })
    );
    assert!(
        config
            .service_waypoint(service(&config, "sneaky"))
            .is_none()
    );
}

#[test]
fn a_waypoints_instances_are_not_captured_and_never_sent_to_themselves() {
    let config = config(MESH);
    let instance = workload(&config, "waypoint-1");
    let wp = config.waypoint_of(instance).unwrap();
    assert_eq!(wp.name, "waypoint");
    assert_eq!(
        config
            .waypoint_instances(wp)
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["waypoint-1"]
    );
    // It speaks HBONE itself: its node's agent leaves it alone.
    assert!(!config.enrolled(instance));
    // Its namespace uses it, but its own traffic is never bound to it.
    assert!(config.workload_binding(instance).unwrap().is_none());
    // A pod of another service account with the label is no instance.
    let text = MESH.replace(
        "spec: {nodeName: n1, serviceAccountName: waypoint}",
        "spec: {nodeName: n1, serviceAccountName: web}",
    );
    let config = self::config(&text);
    assert!(
        config
            .waypoint_of(workload(&config, "waypoint-1"))
            .is_none()
    );
}

#[test]
fn a_label_naming_nothing_binds_nothing_and_says_so() {
    let text = MESH.replace(
        "istio.io/use-waypoint: waypoint}",
        "istio.io/use-waypoint: missing}",
    );
    let config = config(&text);
    assert_eq!(
        config.service_binding(service(&config, "web")),
        Err(Unbound::NoSuchWaypoint {
            namespace: "shop".into(),
            name: "missing".into()
        })
    );
}

#[test]
fn bad_waypoint_fields_are_named() {
    let text = MESH
        .replace(
            "labels: {istio.io/waypoint-for: all}",
            "labels: {istio.io/waypoint-for: everything}",
        )
        .replace("from: Selector", "from: Elsewhere");
    let (report, config) = check_text(Path::new("mesh.yaml"), &text);
    assert!(config.is_none());
    let text = format!("{report:?}");
    assert!(text.contains("istio.io/waypoint-for"), "{text}");
    assert!(text.contains("everything"), "{text}");
    assert!(
        text.contains("must be service, workload, all or none"),
        "{text}"
    );
    assert!(
        text.contains("spec.listeners[0].allowedRoutes.namespaces.from"),
        "{text}"
    );
}

#[test]
fn only_a_waypoint_bound_to_a_workload_may_send_for_its_clients() {
    let config = config(MESH);
    let web = workload(&config, "web-1");
    // web-1 is an endpoint of web, which uses shop/waypoint.
    assert!(config.waypoint_serves(web, "shop", "waypoint"));
    assert!(!config.waypoint_serves(web, "shop", "shared"));
    assert!(!config.waypoint_serves(web, "shop", "web"));
    // blue-1 uses shop/shared for its own address.
    let blue = workload(&config, "blue-1");
    assert!(config.waypoint_serves(blue, "shop", "shared"));
    assert!(!config.waypoint_serves(blue, "shop", "waypoint"));
}

#[test]
fn validate_says_where_routes_and_labels_take_no_effect() {
    let text = format!(
        "{MESH}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web]
  http:
  - match: [{{scheme: {{exact: https}}}}]
    route:
    - destination: {{host: web}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct, namespace: shop}}
spec:
  hosts: [direct]
  http:
  - route:
    - destination: {{host: direct}}
"
    )
    .replace(
        "labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: shop}\nspec:\n  clusterIP: 10.96.0.20",
        "labels: {istio.io/use-waypoint: gone}\nspec:\n  clusterIP: 10.96.0.20",
    );
    let (report, config) = check_text(Path::new("mesh.yaml"), &text);
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let warnings = config.warnings.join("\n");
    // A field the waypoint does not apply yet is named.
    assert!(
        warnings.contains(
            "VirtualService shop/web: field spec.http[0].match[0].scheme: has no effect yet"
        ),
        "{warnings}"
    );
    // Routes for a service that uses no waypoint act nowhere.
    assert!(
        warnings.contains("VirtualService shop/direct: field spec.hosts[0]: direct.shop.svc.cluster.local: no service of it uses a waypoint"),
        "{warnings}"
    );
    assert!(
        !warnings.contains("VirtualService shop/web: field spec.hosts[0]"),
        "{warnings}"
    );
    // A label naming a waypoint that does not exist.
    assert!(
        warnings.contains("Service tenant/blue: label istio.io/use-waypoint (its own or its namespace's): names waypoint tenant/gone, and there is no Gateway of class istio-waypoint by that name"),
        "{warnings}"
    );
}
