//! What a Gateway of class `istio-waypoint` becomes, as Istio's own
//! controller makes it: a ServiceAccount named after it (unless
//! `gateway.istio.io/service-account` names one), a Deployment running
//! `strait-waypoint` as that account, a ClusterIP Service in front of its
//! pods, a copy of the CA's roots for them to mount, and a binding of the
//! account to the waypoints' read-only ClusterRole. The namespaced ones are
//! owned by the Gateway, so deleting it deletes them.
use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use strait_config::{
    GATEWAY_NAME_LABEL, GATEWAY_SERVICE_ACCOUNT_ANNOTATION, OPT_OUT_LABEL, waypoint::WAYPOINT_CLASS,
};

use crate::settings::Settings;

/// On everything the controller makes; the sweep finds them by it.
pub const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "strait-controller");
/// The waypoint an object is made for (its name; the namespace is the
/// object's own, or [`WAYPOINT_NAMESPACE_LABEL`] on cluster-scoped ones).
pub const WAYPOINT_LABEL: &str = "strait.dev/waypoint";
pub const WAYPOINT_NAMESPACE_LABEL: &str = "strait.dev/waypoint-namespace";
/// The CA's roots as copied into a waypoint's namespace.
pub const ROOTS: &str = "strait-waypoint-roots";
/// The meshConfig as copied into a waypoint's namespace.
pub const MESH: &str = "strait-waypoint-mesh";
/// Where a waypoint's pods read the meshConfig.
const MESH_DIR: &str = "/etc/strait/mesh";
/// The status port (readiness), as on Istio's waypoints.
pub const STATUS_PORT: u16 = 15021;
pub const METRICS_PORT: u16 = 15020;
/// The field manager of the controller's server-side applies.
pub const MANAGER: &str = "strait-controller";

/// A Gateway the controller acts on, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The Gateway's `apiVersion`, for owner references.
    pub api_version: String,
    pub service_account: String,
    /// Whether the controller makes the ServiceAccount (not when the
    /// Gateway names an existing one).
    pub own_account: bool,
    /// The HBONE listener's port.
    pub port: u16,
    /// `spec.infrastructure`: labels and annotations for what is made.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Whether `gateway` is a waypoint's.
pub fn is_waypoint(gateway: &Json) -> bool {
    gateway["spec"]["gatewayClassName"] == WAYPOINT_CLASS
}

impl Waypoint {
    /// Reads a waypoint Gateway; why it cannot be deployed otherwise (in
    /// words for its `Accepted` condition).
    pub fn read(gateway: &Json) -> Result<Self, String> {
        let meta = &gateway["metadata"];
        let text = |v: &Json| v.as_str().unwrap_or_default().to_string();
        let name = text(&meta["name"]);
        // It names the Service, which must be a DNS-1035 label.
        if name.len() > 63
            || !name.starts_with(|c: char| c.is_ascii_lowercase())
            || strait_config::names::check_label(&name).is_err()
        {
            return Err(format!(
                "metadata.name {name:?}: a waypoint's name names its Service, so it must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter)"
            ));
        }
        let (service_account, own_account) =
            match meta["annotations"][GATEWAY_SERVICE_ACCOUNT_ANNOTATION].as_str() {
                Some(sa) => {
                    strait_config::names::check_subdomain(sa).map_err(|why| {
                        format!("metadata.annotations.{GATEWAY_SERVICE_ACCOUNT_ANNOTATION}: {why}")
                    })?;
                    (sa.to_string(), false)
                }
                None => (name.clone(), true),
            };
        let listeners = gateway["spec"]["listeners"].as_array();
        let port = listeners
            .into_iter()
            .flatten()
            .find(|l| l["protocol"] == "HBONE")
            .and_then(|l| l["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or("spec.listeners: no HBONE listener with a port (Istio's is `mesh`, 15008)")?;
        if port == STATUS_PORT || port == METRICS_PORT {
            return Err(format!(
                "spec.listeners: port {port} is the waypoint's own metrics or status port"
            ));
        }
        let map = |v: &Json, at: &str| -> Result<BTreeMap<String, String>, String> {
            match v {
                Json::Null => Ok(BTreeMap::new()),
                Json::Object(o) => o
                    .iter()
                    .map(|(k, v)| {
                        v.as_str()
                            .map(|v| (k.clone(), v.to_string()))
                            .ok_or(format!("{at}.{k}: not a string"))
                    })
                    .collect(),
                _ => Err(format!("{at}: not a map")),
            }
        };
        let infrastructure = &gateway["spec"]["infrastructure"];
        let labels = map(&infrastructure["labels"], "spec.infrastructure.labels")?;
        for (key, value) in &labels {
            strait_config::names::check_label_key(key)
                .and_then(|()| strait_config::names::check_label_value(value))
                .map_err(|why| format!("spec.infrastructure.labels.{key}: {why}"))?;
        }
        Ok(Self {
            name,
            namespace: text(&meta["namespace"]),
            uid: text(&meta["uid"]),
            api_version: text(&gateway["apiVersion"]),
            service_account,
            own_account,
            port,
            labels,
            annotations: map(
                &infrastructure["annotations"],
                "spec.infrastructure.annotations",
            )?,
        })
    }

    fn owner(&self) -> Json {
        json!([{
            "apiVersion": self.api_version,
            "kind": "Gateway",
            "name": self.name,
            "uid": self.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    }

    /// Labels of what is made: the Gateway's infrastructure labels, then
    /// the controller's own (which a Gateway cannot override).
    fn labels(&self) -> Json {
        let mut labels: serde_json::Map<String, Json> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        labels.insert(GATEWAY_NAME_LABEL.into(), json!(self.name));
        labels.insert(WAYPOINT_LABEL.into(), json!(self.name));
        labels.insert(MANAGED.0.into(), json!(MANAGED.1));
        Json::Object(labels)
    }

    fn meta(&self, name: &str) -> Json {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(),
            "annotations": self.annotations,
            "ownerReferences": self.owner(),
        })
    }

    pub fn service_account(&self) -> Json {
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": self.meta(&self.service_account),
        })
    }

    pub fn service(&self) -> Json {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta(&self.name),
            "spec": {
                "type": "ClusterIP",
                "selector": {GATEWAY_NAME_LABEL: self.name},
                "ports": [
                    {"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT, "protocol": "TCP"},
                    {"name": "mesh", "port": self.port, "targetPort": self.port, "protocol": "TCP"},
                ],
            },
        })
    }

    /// A copy, named `name`, of a ConfigMap's `data` (the CA's roots, the
    /// meshConfig). Not owned by one Gateway: every waypoint of the
    /// namespace mounts it; the sweep removes it with the last of them.
    pub fn copy(&self, name: &str, data: &Json) -> Json {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {MANAGED.0: MANAGED.1},
            },
            "data": data,
        })
    }

    pub fn binding_name(&self, settings: &Settings) -> String {
        format!("{}:{}:{}", settings.cluster_role, self.namespace, self.name)
    }

    pub fn cluster_role_binding(&self, settings: &Settings) -> Json {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": self.binding_name(settings),
                "labels": {
                    MANAGED.0: MANAGED.1,
                    WAYPOINT_LABEL: self.name,
                    WAYPOINT_NAMESPACE_LABEL: self.namespace,
                },
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": settings.cluster_role,
            },
            "subjects": [{
                "kind": "ServiceAccount",
                "name": self.service_account,
                "namespace": self.namespace,
            }],
        })
    }

    /// The Deployment; `roots` is the ConfigMap its pods mount the CA's
    /// roots from (the copy, or the original in its own namespace), `mesh`
    /// the one they read the meshConfig from, if there is one.
    pub fn deployment(&self, settings: &Settings, roots: &str, mesh: Option<&str>) -> Json {
        let mut pod_labels = self.labels();
        // Its instances are never captured: what they send is already
        // HBONE, and the agents never send a waypoint's traffic back to it.
        pod_labels[OPT_OUT_LABEL.0] = json!(OPT_OUT_LABEL.1);
        let mut pod_annotations: serde_json::Map<String, Json> = self
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        pod_annotations.insert("prometheus.io/scrape".into(), json!("true"));
        pod_annotations.insert("prometheus.io/port".into(), json!(METRICS_PORT.to_string()));
        let mut args = vec![
            format!("--gateway={}/{}", self.namespace, self.name),
            "--node=$(NODE_NAME)".into(),
            "--in-cluster".into(),
            format!("--cluster={}", settings.cluster),
            format!("--listen=0.0.0.0:{}", self.port),
            format!("--ca-addr={}", settings.ca_address),
            "--credential-dir=/var/run/strait/roots".into(),
            "--ca-token=/var/run/secrets/tokens/strait-ca".into(),
            format!("--cert-lifetime={}", settings.cert_lifetime),
            "--status-dir=/var/run/strait/status".into(),
            format!("--drain-timeout={}s", settings.drain_seconds),
        ];
        if !settings.east_west_gateway_namespaces.is_empty() {
            args.push(format!(
                "--east-west-gateway-namespaces={}",
                settings.east_west_gateway_namespaces.join(",")
            ));
        }
        if mesh.is_some() {
            args.push(format!("--mesh-config={MESH_DIR}/mesh"));
        }
        let mut pod = json!({
            "serviceAccountName": self.service_account,
            "automountServiceAccountToken": false,
            // Not root; fsGroup makes the projected tokens readable to it.
            "securityContext": {
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "runAsNonRoot": true,
                "fsGroup": 65532,
            },
            "terminationGracePeriodSeconds": settings.drain_seconds + 5,
            "containers": [{
                "name": "waypoint",
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["/usr/local/bin/strait-waypoint"],
                "args": args,
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "STRAIT_LOG", "value": settings.log_level},
                ],
                "ports": [
                    {"name": "mesh", "containerPort": self.port, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                    {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
                ],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
                    "periodSeconds": 2,
                    "failureThreshold": 3,
                },
                "resources": if settings.resources.is_null() { json!({}) } else { settings.resources.clone() },
                // A waypoint captures nothing and enters no other pod's
                // namespace: no privilege at all.
                "securityContext": {
                    "privileged": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "roots", "mountPath": "/var/run/strait/roots", "readOnly": true},
                    {"name": "ca-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                    {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                    {"name": "status", "mountPath": "/var/run/strait/status"},
                ],
            }],
            "volumes": [
                {"name": "roots", "configMap": {"name": roots}},
                {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
                    "path": "strait-ca", "audience": "strait-ca", "expirationSeconds": 3600,
                }}]}},
                {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
                {"name": "status", "emptyDir": {}},
            ],
        });
        if let Some(mesh) = mesh {
            if let Some(mounts) = pod["containers"][0]["volumeMounts"].as_array_mut() {
                mounts.push(json!({"name": "mesh", "mountPath": MESH_DIR, "readOnly": true}));
            }
            if let Some(volumes) = pod["volumes"].as_array_mut() {
                volumes.push(json!({"name": "mesh", "configMap": {"name": mesh}}));
            }
        }
        if !settings.image_pull_secrets.is_empty() {
            pod["imagePullSecrets"] = json!(settings.image_pull_secrets);
        }
        if !settings.node_selector.is_empty() {
            pod["nodeSelector"] = json!(settings.node_selector);
        }
        if !settings.tolerations.is_empty() {
            pod["tolerations"] = json!(settings.tolerations);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.meta(&self.name),
            "spec": {
                "replicas": settings.replicas,
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: self.name}},
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                    "spec": pod,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::parse(
            r#"{"image": "localhost/strait:1", "caAddress": "ca:15012", "cluster": "c1",
                "certLifetime": "24h", "logLevel": "info",
                "rootsConfigMap": {"namespace": "strait-system", "name": "strait-ca-roots"},
                "clusterRole": "strait-waypoint", "replicas": 2, "drainSeconds": 5,
                "eastWestGatewayNamespaces": ["strait-system"]}"#,
            "test",
        )
        .unwrap()
    }

    fn gateway(name: &str, extra: Json) -> Json {
        let mut g = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "shop", "uid": "u-1"},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        });
        if let (Some(g), Some(extra)) = (g.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                g.insert(k.clone(), v.clone());
            }
        }
        g
    }

    #[test]
    fn a_waypoint_gateway_becomes_objects_it_owns() {
        let g = gateway("waypoint", json!({}));
        assert!(is_waypoint(&g));
        let w = Waypoint::read(&g).unwrap();
        let s = settings();
        let d = w.deployment(&s, ROOTS, Some(MESH));
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            d["metadata"]["ownerReferences"][0]["apiVersion"],
            "gateway.networking.k8s.io/v1"
        );
        assert_eq!(d["spec"]["replicas"], 2);
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
        assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
        let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert!(args.contains(&"--gateway=shop/waypoint"), "{args:?}");
        assert!(args.contains(&"--listen=0.0.0.0:15008"), "{args:?}");
        assert!(
            args.contains(&"--mesh-config=/etc/strait/mesh/mesh"),
            "{args:?}"
        );
        assert!(
            args.contains(&"--east-west-gateway-namespaces=strait-system"),
            "{args:?}"
        );
        let svc = w.service();
        assert_eq!(svc["spec"]["ports"][1]["port"], 15008);
        assert_eq!(svc["spec"]["selector"][GATEWAY_NAME_LABEL], "waypoint");
        let crb = w.cluster_role_binding(&s);
        assert_eq!(crb["metadata"]["name"], "strait-waypoint:shop:waypoint");
        assert_eq!(crb["subjects"][0]["namespace"], "shop");
        assert!(crb["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn the_gateways_labels_cannot_override_the_controllers() {
        let g = gateway(
            "wp",
            json!({"spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                "infrastructure": {
                    "labels": {"team": "a", GATEWAY_NAME_LABEL: "other", "istio.io/dataplane-mode": "ambient"},
                    "annotations": {"note": "x"},
                },
            }}),
        );
        let w = Waypoint::read(&g).unwrap();
        let d = w.deployment(&settings(), ROOTS, None);
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[GATEWAY_NAME_LABEL], "wp");
        assert_eq!(labels["istio.io/dataplane-mode"], "none");
        assert_eq!(
            d["spec"]["template"]["metadata"]["annotations"]["note"],
            "x"
        );
    }

    #[test]
    fn a_named_service_account_is_used_not_made() {
        let g = gateway(
            "wp",
            json!({"metadata": {"name": "wp", "namespace": "shop", "uid": "u",
                "annotations": {GATEWAY_SERVICE_ACCOUNT_ANNOTATION: "reviews"}}}),
        );
        let w = Waypoint::read(&g).unwrap();
        assert_eq!(w.service_account, "reviews");
        assert!(!w.own_account);
    }

    #[test]
    fn gateways_that_cannot_be_deployed_say_why() {
        for (g, said) in [
            (gateway("Wp", json!({})), "metadata.name \"Wp\""),
            (gateway(&"w".repeat(64), json!({})), "DNS-1035 label"),
            (gateway("9wp", json!({})), "starting with a letter"),
            (
                gateway(
                    "wp",
                    json!({"spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
                ),
                "no HBONE listener",
            ),
            (
                gateway(
                    "wp",
                    json!({"spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15021, "protocol": "HBONE"}]}}),
                ),
                "status port",
            ),
            (
                gateway(
                    "wp",
                    json!({"metadata": {"name": "wp", "namespace": "shop",
                    "annotations": {GATEWAY_SERVICE_ACCOUNT_ANNOTATION: "Bad_SA"}}}),
                ),
                "gateway.istio.io/service-account",
            ),
            (
                gateway(
                    "wp",
                    json!({"spec": {"gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                    "infrastructure": {"labels": {"a": "b c"}}}}),
                ),
                "spec.infrastructure.labels.a",
            ),
        ] {
            let err = Waypoint::read(&g).unwrap_err();
            assert!(err.contains(said), "{err}");
        }
    }
}
