//! What the config says about readiness: a WorkloadEntry's `Healthy`
//! condition, and which WorkloadGroup (and so which probe) an entry belongs
//! to.
use std::path::Path;

use strait_config::check_text;

const GROUPS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: web
  namespace: shop
spec:
  metadata:
    labels:
      app: web
  template:
    serviceAccount: web
  probe:
    periodSeconds: 2
    httpGet:
      path: /ready
      port: 8080
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: db
  namespace: shop
spec:
  template:
    serviceAccount: db
  probe:
    tcpSocket:
      port: 5432
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: web-1
  namespace: shop
spec:
  address: 10.0.0.1
  labels:
    app: web
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-1
  namespace: shop
  annotations:
    istio.io/autoRegistrationGroup: db
spec:
  address: 10.0.0.2
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: lone
  namespace: shop
spec:
  address: 10.0.0.3
  labels:
    app: other
status:
  conditions:
  - type: Healthy
    status: "False"
"#;

#[test]
fn entries_take_their_groups_probe_and_their_healthy_condition() {
    let (report, config) = check_text(Path::new("groups.yaml"), GROUPS);
    assert_eq!(report.rejected(), 0, "{report}");
    let config = config.expect("accepted");
    let get = |name: &str| {
        config
            .workloads
            .iter()
            .find(|w| w.name == name)
            .expect("workload")
    };
    let web = get("web-1");
    assert_eq!(web.group.as_deref(), Some("web"), "by the group's labels");
    let http = web.probe.as_ref().and_then(|p| p.http_get.as_ref());
    assert_eq!(http.and_then(|h| h.path.as_deref()), Some("/ready"));
    assert!(web.ready);
    let db = get("db-1");
    assert_eq!(db.group.as_deref(), Some("db"), "by the annotation");
    assert!(db.probe.as_ref().is_some_and(|p| p.tcp_socket.is_some()));
    let lone = get("lone");
    assert!(lone.probe.is_none() && lone.group.is_none());
    assert!(!lone.ready, "Healthy: False");
}

#[test]
fn a_missing_group_warns_and_a_bad_condition_is_refused() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: orphan
  namespace: shop
  annotations:
    istio.io/autoRegistrationGroup: nowhere
spec:
  address: 10.0.0.4
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: odd
  namespace: shop
spec:
  address: 10.0.0.5
status:
  conditions:
  - type: Healthy
    status: "Maybe"
"#;
    let (report, _) = check_text(Path::new("entries.yaml"), text);
    let shown = report.to_string();
    assert_eq!(report.rejected(), 1, "{shown}");
    assert!(
        shown.contains("WorkloadEntry shop/odd")
            && shown.contains("status.conditions[0].status")
            && shown.contains("\"Maybe\" is not True, False or Unknown"),
        "{shown}"
    );
    assert!(
        shown.contains("WorkloadEntry shop/orphan")
            && shown.contains("no WorkloadGroup shop/nowhere"),
        "{shown}"
    );
}
