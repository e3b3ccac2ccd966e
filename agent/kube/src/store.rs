//! The objects the watches have seen, per kind, trimmed to what the model
//! reads: every node runs an agent, so a Pod's containers, volumes and
//! managed fields are not kept.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value as Json, json};

use crate::kinds::Kind;

/// (namespace, name) within a kind.
type Key = (String, String);

pub struct Store {
    inner: Mutex<Inner>,
    /// The cluster the objects come from, and whether it is the local one.
    cluster: String,
    local: bool,
}

struct Inner {
    kinds: Vec<KindObjects>,
}

#[derive(Default)]
struct KindObjects {
    objects: BTreeMap<Key, Arc<Json>>,
    /// Keys seen since a relist began; the others are gone at its end.
    relisting: Option<BTreeSet<Key>>,
    listed: bool,
}

impl Store {
    pub fn new(kinds: usize, cluster: &str, local: bool) -> Self {
        Self {
            inner: Mutex::new(Inner {
                kinds: (0..kinds).map(|_| KindObjects::default()).collect(),
            }),
            cluster: cluster.to_string(),
            local,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn begin_relist(&self, kind: usize) {
        self.with(|s| s.kinds[kind].relisting = Some(BTreeSet::new()));
    }

    pub fn end_relist(&self, kind: usize) {
        self.with(|s| {
            let k = &mut s.kinds[kind];
            if let Some(seen) = k.relisting.take() {
                k.objects.retain(|key, _| seen.contains(key));
            }
            k.listed = true;
        });
    }

    /// A kind the cluster does not serve counts as listed (and empty).
    /// Returns whether that changed anything.
    pub fn mark_listed(&self, kind: usize) -> bool {
        self.with(|s| !std::mem::replace(&mut s.kinds[kind].listed, true))
    }

    pub fn all_listed(&self) -> bool {
        self.with(|s| s.kinds.iter().all(|k| k.listed))
    }

    pub fn put(&self, kind: usize, meta: &Kind, resource: &ApiResource, object: DynamicObject) {
        let key = key(&object);
        let json = Arc::new(place(
            trim(meta, resource, object),
            &self.cluster,
            self.local,
        ));
        self.with(|s| {
            let k = &mut s.kinds[kind];
            if let Some(seen) = &mut k.relisting {
                seen.insert(key.clone());
            }
            k.objects.insert(key, json);
        });
    }

    pub fn delete(&self, kind: usize, object: &DynamicObject) {
        let key = key(object);
        self.with(|s| {
            s.kinds[kind].objects.remove(&key);
        });
    }

    /// Every object, for a rebuild (shared, not copied).
    pub fn objects(&self) -> Vec<Arc<Json>> {
        self.with(|s| {
            s.kinds
                .iter()
                .flat_map(|k| k.objects.values().cloned())
                .collect()
        })
    }
}

fn key(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// An object as the model takes it from `cluster`: nodes carry their
/// cluster's label; a remote cluster's nodes are renamed
/// `<node>.<cluster>` (and its pods' `nodeName` with them), and its pods
/// carry the label too.
pub(crate) fn place(mut object: Json, cluster: &str, local: bool) -> Json {
    match object["kind"].as_str() {
        Some("Node") => {
            if !local && let Some(name) = object["metadata"]["name"].as_str() {
                object["metadata"]["name"] = json!(format!("{name}.{cluster}"));
            }
            label(&mut object, cluster);
        }
        Some("Pod") if !local => {
            if let Some(node) = object["spec"]["nodeName"].as_str() {
                object["spec"]["nodeName"] = json!(format!("{node}.{cluster}"));
            }
            label(&mut object, cluster);
        }
        _ => {}
    }
    object
}

/// Adds the cluster label unless the object has one.
fn label(object: &mut Json, cluster: &str) {
    let metadata = &mut object["metadata"];
    if !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    if let Some(labels) = metadata["labels"].as_object_mut() {
        labels
            .entry(crate::CLUSTER_LABEL)
            .or_insert_with(|| json!(cluster));
    }
}

/// The object as the checks read it: `apiVersion`, `kind`, the metadata
/// they use, and `spec`/`status` (for a Pod, only the parts that make it a
/// workload).
fn trim(meta: &Kind, resource: &ApiResource, object: DynamicObject) -> Json {
    let m = &object.metadata;
    let mut metadata = json!({
        "name": m.name,
        "namespace": m.namespace,
    });
    if let Some(labels) = &m.labels {
        metadata["labels"] = json!(labels);
    }
    if let Some(annotations) = &m.annotations {
        // The last applied configuration is a copy of the whole object.
        let kept: BTreeMap<&String, &String> = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
            .collect();
        metadata["annotations"] = json!(kept);
    }
    if meta.kind == "Pod"
        && let Some(owner) = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
    {
        // Istio's metrics name a pod's workload after its controller.
        metadata["ownerReferences"] =
            json!([{"kind": owner.kind, "name": owner.name, "controller": true}]);
    }
    let mut out = json!({
        "apiVersion": resource.api_version,
        "kind": meta.kind,
        "metadata": metadata,
    });
    let data = object.data;
    if meta.kind == "Pod" {
        out["spec"] = pod_spec(data.get("spec"));
        out["status"] = pod_status(data.get("status"));
    } else if meta.kind == "WorkloadEntry" || meta.group.is_empty() {
        // A WorkloadEntry's status says whether it is healthy; the core
        // kinds' status is not read.
        for part in ["spec", "status"] {
            if let Some(value) = data.get(part)
                && (part == "spec" || meta.kind == "WorkloadEntry")
            {
                out[part] = value.clone();
            }
        }
    } else if let Some(spec) = data.get("spec") {
        out["spec"] = spec.clone();
    }
    strait_config::manifest::strip_nulls(&mut out);
    out
}

fn pod_spec(spec: Option<&Json>) -> Json {
    let Some(spec) = spec else {
        return json!({});
    };
    let containers: Vec<Json> = spec
        .get("containers")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.get("name"),
                "ports": c.get("ports").cloned().unwrap_or_else(|| json!([])),
            })
        })
        .collect();
    // Only their names: an Istio sidecar may be one of them.
    let init_containers: Vec<Json> = spec
        .get("initContainers")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c.get("name")}))
        .collect();
    json!({
        "nodeName": spec.get("nodeName"),
        "serviceAccountName": spec.get("serviceAccountName"),
        "hostNetwork": spec.get("hostNetwork"),
        "containers": containers,
        "initContainers": init_containers,
    })
}

fn pod_status(status: Option<&Json>) -> Json {
    let Some(status) = status else {
        return json!({});
    };
    let conditions: Vec<Json> = status
        .get("conditions")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|c| json!({"type": c.get("type"), "status": c.get("status")}))
        .collect();
    json!({
        "phase": status.get("phase"),
        "podIP": status.get("podIP"),
        "podIPs": status.get("podIPs"),
        "conditions": conditions,
    })
}

#[cfg(test)]
mod tests {
    use kube::api::GroupVersionKind;

    use super::*;
    use crate::kinds::KINDS;

    fn pod(name: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"app": "web"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
                    "strait.dev/netns": "/run/netns/web"
                },
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u0"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d8f", "uid": "u2", "controller": true}
                ],
                "uid": "u1"
            },
            "spec": {
                "nodeName": "n1",
                "serviceAccountName": "web",
                "volumes": [{"name": "data"}],
                "initContainers": [{"name": "istio-proxy", "image": "proxyv2", "args": ["x"]}],
                "containers": [{"name": "web", "image": "nginx", "env": [{"name": "SECRET", "value": "x"}],
                    "ports": [{"name": "http", "containerPort": 8080}]}]
            },
            "status": {"phase": "Running", "podIP": "10.1.0.2", "hostIP": "172.16.1.1",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "now"}]}
        }))
        .unwrap()
    }

    fn pods() -> (usize, &'static Kind, ApiResource) {
        let index = KINDS.iter().position(|k| k.kind == "Pod").unwrap();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Pod"));
        (index, &KINDS[index], resource)
    }

    #[test]
    fn a_pod_keeps_only_what_makes_it_a_workload() {
        let (_, kind, resource) = pods();
        let kept = trim(kind, &resource, pod("web"));
        assert_eq!(
            kept["spec"]["containers"],
            json!([{"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}])
        );
        // Names only: Istio's sidecar may be one of them.
        assert_eq!(
            kept["spec"]["initContainers"],
            json!([{"name": "istio-proxy"}])
        );
        // The controller only: Istio's metrics name the pod's workload by it.
        assert_eq!(
            kept["metadata"]["ownerReferences"],
            json!([{"kind": "ReplicaSet", "name": "web-6d8f", "controller": true}])
        );
        assert_eq!(
            kept["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        assert!(kept["metadata"].get("managedFields").is_none());
        assert!(kept["spec"].get("volumes").is_none());
        let annotations = &kept["metadata"]["annotations"];
        assert!(
            annotations
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        assert_eq!(annotations["strait.dev/netns"], "/run/netns/web");
        assert!(!kept.to_string().contains("SECRET"), "{kept}");
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_lists() {
        let (index, kind, resource) = pods();
        let store = Store::new(KINDS.len(), "c1", true);
        store.put(index, kind, &resource, pod("a"));
        store.put(index, kind, &resource, pod("b"));
        assert!(!store.all_listed());
        store.begin_relist(index);
        store.put(index, kind, &resource, pod("b"));
        store.end_relist(index);
        let names: Vec<String> = store
            .objects()
            .iter()
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["b"]);
        for other in (0..KINDS.len()).filter(|i| *i != index) {
            store.mark_listed(other);
        }
        assert!(store.all_listed());
    }
}
