//! Judging a cluster's objects. One that fails the checks is left out; if
//! an earlier version of it passed, that version stays in force instead,
//! as it would have in a cluster whose admission webhook refused the
//! change. The rest of the cluster applies either way.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use serde_json::Value as Json;
use strait_config::{Config, Report, Verdict, check_objects};

/// (kind, namespace, name), as the report names objects (`default` for
/// objects without a namespace).
type Key = (String, String, String);

pub struct Judge {
    origin: PathBuf,
    /// The latest version of each object that passed (shared with the
    /// store while it is also the current one).
    last_good: HashMap<Key, Arc<Json>>,
}

/// What a round of judging made of the objects.
pub struct Verdicts {
    pub config: Config,
    pub report: Report,
    /// Objects whose latest version failed and whose previous one is in
    /// force, as `Kind namespace/name`.
    pub kept: Vec<String>,
    /// The objects `config` was built from.
    pub in_force: Vec<Arc<Json>>,
}

impl Judge {
    pub fn new(origin: PathBuf) -> Self {
        Self {
            origin,
            last_good: HashMap::new(),
        }
    }

    pub fn judge(&mut self, objects: Vec<Arc<Json>>) -> Verdicts {
        let keys: Vec<Key> = objects.iter().map(|o| key(o)).collect();
        let (report, config) = check_objects(&self.origin, &objects);
        let rejected: HashSet<Key> = report
            .objects
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Rejected(_)))
            .map(|o| (o.kind.clone(), o.namespace.clone(), o.name.clone()))
            .collect();
        let present: HashSet<&Key> = keys.iter().collect();
        self.last_good.retain(|k, _| present.contains(k));
        for (k, object) in keys.iter().zip(&objects) {
            if !rejected.contains(k) {
                self.last_good.insert(k.clone(), object.clone());
            }
        }
        let kept: Vec<&Key> = rejected
            .iter()
            .filter(|k| self.last_good.contains_key(*k))
            .collect();
        if kept.is_empty() {
            let in_force = keys
                .iter()
                .zip(objects)
                .filter(|(k, _)| !rejected.contains(*k))
                .map(|(_, object)| object)
                .collect();
            return Verdicts {
                config,
                report,
                kept: Vec::new(),
                in_force,
            };
        }
        let substituted: Vec<Arc<Json>> = keys
            .iter()
            .zip(objects)
            .filter_map(|(k, object)| match rejected.contains(k) {
                true => self.last_good.get(k).cloned(),
                false => Some(object),
            })
            .collect();
        let (_, config) = check_objects(&self.origin, &substituted);
        let mut kept: Vec<String> = kept
            .into_iter()
            .map(|(kind, namespace, name)| format!("{kind} {namespace}/{name}"))
            .collect();
        kept.sort();
        Verdicts {
            config,
            report,
            kept,
            in_force: substituted,
        }
    }
}

fn key(object: &Json) -> Key {
    let text = |v: &Json| v.as_str().unwrap_or_default().to_string();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    (
        text(&object["kind"]),
        namespace,
        text(&object["metadata"]["name"]),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(annotations: Json) -> Arc<Json> {
        Arc::new(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
    }

    #[test]
    fn a_failed_change_keeps_the_last_good_version_and_a_new_bad_object_is_left_out() {
        let mut judge = Judge::new("kube:test".into());
        let good = judge.judge(vec![service(json!({}))]);
        assert_eq!(good.config.services.len(), 1);
        assert!(good.kept.is_empty());
        assert_eq!(good.in_force.len(), 1);

        // The same object changed into one the checks refuse.
        let bad = judge.judge(vec![service(json!({"istio.io/dry-run": "true"}))]);
        assert_eq!(bad.report.rejected(), 1, "the change is reported");
        assert_eq!(bad.kept, ["Service shop/web"]);
        assert_eq!(
            bad.config.services.len(),
            1,
            "the last good version is in force"
        );
        assert_eq!(bad.in_force, [service(json!({}))]);

        // A bad object never seen good is left out.
        let mut fresh = Judge::new("kube:test".into());
        let left_out = fresh.judge(vec![service(json!({"istio.io/dry-run": "true"}))]);
        assert!(left_out.kept.is_empty());
        assert!(left_out.config.services.is_empty());

        // Deleted, then back bad: nothing is kept from before the deletion.
        judge.judge(Vec::new());
        let back = judge.judge(vec![service(json!({"istio.io/dry-run": "true"}))]);
        assert!(back.kept.is_empty() && back.config.services.is_empty());
    }
}
