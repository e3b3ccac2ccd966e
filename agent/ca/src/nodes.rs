//! Which identities a node may hold, from the CA's own view of the config:
//! it reads the same manifests as the agents and follows their changes, so
//! an agent's claims about its node count for nothing.
use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use strait_config::{
    Config,
    watch::{DirWatch, reload_dir},
};
use strait_identity::Identity;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How often the config directory is looked at, as the agents do.
const POLL: Duration = Duration::from_millis(200);

pub struct Registry {
    config: ArcSwap<Config>,
}

impl Registry {
    pub fn new(config: Config) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
        }
    }

    pub fn trust_domain(&self) -> String {
        self.config.load().trust_domain.clone()
    }

    /// Whether `node` runs a workload in the mesh as `identity`; if not,
    /// why not.
    pub fn may_hold(&self, node: &str, identity: &Identity) -> Result<(), String> {
        let config = self.config.load();
        ours(&config, identity)?;
        let runs_here = config.workloads_on(node).any(|w| {
            w.namespace == identity.namespace
                && w.service_account == identity.service_account
                && (config.enrolled(w) || gateway_instance(&config, w))
        });
        if runs_here {
            Ok(())
        } else {
            Err(format!(
                "no workload in the mesh (nor gateway or waypoint instance) on node {node} runs as service account {}/{}",
                identity.namespace, identity.service_account
            ))
        }
    }

    /// Whether pod `namespace/name`, on `node` as `service_account`, asking
    /// with its own token, may hold `identity`: only its own, and only when
    /// it is an instance of an east-west gateway or a waypoint (which run in
    /// pods of their own, not in a node's agent).
    pub fn pod_may_hold(
        &self,
        node: &str,
        (namespace, name, service_account): (&str, &str, &str),
        identity: &Identity,
    ) -> Result<(), String> {
        let config = self.config.load();
        ours(&config, identity)?;
        if identity.namespace != namespace || identity.service_account != service_account {
            return Err(format!(
                "pod {namespace}/{name} runs as {namespace}/{service_account}: its token is good for no other identity"
            ));
        }
        let instance = config.workloads_on(node).any(|w| {
            w.namespace == namespace
                && w.name == name
                && w.service_account == service_account
                && gateway_instance(&config, w)
        });
        if instance {
            Ok(())
        } else {
            Err(format!(
                "pod {namespace}/{name} on node {node} is not an instance of an east-west gateway or waypoint: only agents and gateway and waypoint instances may ask"
            ))
        }
    }

    /// Follows `dir` for as long as the service runs; a change that does not
    /// load keeps the last good config, as in the agents.
    pub fn watch(self: &Arc<Self>, dir: PathBuf, metrics: Arc<Metrics>) {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut watch = DirWatch::new(&dir);
            loop {
                tokio::time::sleep(POLL).await;
                if !tokio::task::block_in_place(|| watch.poll()) {
                    continue;
                }
                let load = dir.clone();
                match tokio::task::spawn_blocking(move || reload_dir(&load)).await {
                    Ok(Ok(config)) => {
                        registry.config.store(Arc::new(config));
                        metrics.config_reloaded(true);
                        info!(dir = %dir.display(), "config reloaded");
                    }
                    Ok(Err(err)) => {
                        metrics.config_reloaded(false);
                        warn!(%err, "config change refused; keeping the last good config");
                    }
                    Err(err) => {
                        metrics.config_reloaded(false);
                        warn!(%err, "the config loader failed");
                    }
                }
            }
        });
    }
}

impl Registry {
    /// Follows a cluster's snapshots for as long as the service runs.
    pub fn follow(
        self: &Arc<Self>,
        mut updates: tokio::sync::watch::Receiver<Option<strait_kube::Snapshot>>,
        metrics: Arc<Metrics>,
    ) {
        let registry = self.clone();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let Some(snapshot) = updates.borrow_and_update().clone() else {
                    continue;
                };
                registry.config.store(snapshot.config);
                metrics.config_reloaded(true);
                info!("cluster config applied");
            }
        });
    }
}

/// A mesh for tests: `shop/db` in the mesh on n2, `outside/legacy` out of
/// it on n1.
#[cfg(test)]
pub(crate) const TEST_MESH: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db
  namespace: shop
  annotations:
    strait.dev/node: n2
spec:
  address: 10.2.0.10
  serviceAccount: db
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: legacy
  namespace: outside
  annotations:
    strait.dev/node: n1
spec:
  address: 10.1.0.11
  serviceAccount: legacy
";

fn ours(config: &Config, identity: &Identity) -> Result<(), String> {
    if identity.trust_domain == config.trust_domain {
        Ok(())
    } else {
        Err(format!(
            "trust domain {} is not this mesh's ({})",
            identity.trust_domain, config.trust_domain
        ))
    }
}

/// Whether `w` is an instance of an east-west gateway or a waypoint: what
/// runs it on that node holds the gateway's (or waypoint's) identity, and
/// no other pod of that service account does.
fn gateway_instance(config: &Config, w: &strait_config::Workload) -> bool {
    config.gateway_of(w).is_some() || config.waypoint_of(w).is_some()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// An east-west gateway of net2 with one instance, a pod on n3.
    const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: eastwest
  namespace: istio-system
  labels:
    topology.istio.io/network: net2
spec:
  gatewayClassName: istio-east-west
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
  addresses:
  - {type: IPAddress, value: 100.64.0.9}
---
apiVersion: v1
kind: Pod
metadata:
  name: eastwest-1
  namespace: istio-system
  labels:
    gateway.networking.k8s.io/gateway-name: eastwest
spec:
  nodeName: n3
  serviceAccountName: eastwest-istio-east-west
status:
  phase: Running
  podIP: 10.3.0.20
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
  namespace: istio-system
spec:
  nodeName: n3
  serviceAccountName: eastwest-istio-east-west
status:
  phase: Running
  podIP: 10.3.0.21
";

    #[test]
    fn a_gateway_pod_may_hold_its_own_identity_only() {
        let (_, config) =
            strait_config::check_text(Path::new("mesh.yaml"), &format!("{TEST_MESH}---{GATEWAY}"));
        let registry = Registry::new(config.unwrap());
        let own = Identity::new("cluster.local", "istio-system", "eastwest-istio-east-west");
        let pod = ("istio-system", "eastwest-1", "eastwest-istio-east-west");
        assert_eq!(registry.pod_may_hold("n3", pod, &own), Ok(()));
        // Not another identity, even one that runs on its node.
        let err = registry
            .pod_may_hold("n3", pod, &Identity::new("cluster.local", "shop", "db"))
            .unwrap_err();
        assert!(err.contains("good for no other identity"), "{err}");
        // Not a pod that is no instance (no gateway-name label), nor the
        // instance as seen from another node.
        let plain = ("istio-system", "plain", "eastwest-istio-east-west");
        let err = registry.pod_may_hold("n3", plain, &own).unwrap_err();
        assert!(
            err.contains("not an instance of an east-west gateway"),
            "{err}"
        );
        assert!(registry.pod_may_hold("n2", pod, &own).is_err());
        let foreign = Identity::new("evil.example", "istio-system", "eastwest-istio-east-west");
        assert!(registry.pod_may_hold("n3", pod, &foreign).is_err());
    }

    /// A tenant's own "east-west gateway", outside the root namespace,
    /// with an instance in its namespace, which is not in the mesh.
    const SQUATTER: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: squat
  namespace: outside
  labels:
    topology.istio.io/network: net2
spec:
  gatewayClassName: istio-east-west
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
  addresses:
  - {type: IPAddress, value: 10.1.0.30}
---
apiVersion: v1
kind: Pod
metadata:
  name: squat-1
  namespace: outside
  labels:
    gateway.networking.k8s.io/gateway-name: squat
spec:
  nodeName: n1
  serviceAccountName: squat-istio-east-west
status:
  phase: Running
  podIP: 10.1.0.30
";

    #[test]
    fn only_the_root_namespace_makes_gateway_instances() {
        let (_, config) =
            strait_config::check_text(Path::new("mesh.yaml"), &format!("{TEST_MESH}---{SQUATTER}"));
        let registry = Registry::new(config.unwrap());
        let squat = Identity::new("cluster.local", "outside", "squat-istio-east-west");
        let pod = ("outside", "squat-1", "squat-istio-east-west");
        let err = registry.pod_may_hold("n1", pod, &squat).unwrap_err();
        assert!(
            err.contains("not an instance of an east-west gateway"),
            "{err}"
        );
        let err = registry.may_hold("n1", &squat).unwrap_err();
        assert!(err.contains("no workload in the mesh"), "{err}");
    }

    #[test]
    fn a_node_may_hold_only_its_own_workloads_identities() {
        let (_, config) = strait_config::check_text(Path::new("mesh.yaml"), TEST_MESH);
        let registry = Registry::new(config.unwrap());
        let db = Identity::new("cluster.local", "shop", "db");
        assert_eq!(registry.may_hold("n2", &db), Ok(()));
        let err = registry.may_hold("n1", &db).unwrap_err();
        assert!(err.contains("on node n1"), "{err}");
        // On the node, but not in the mesh: no certificate either.
        let legacy = Identity::new("cluster.local", "outside", "legacy");
        assert!(registry.may_hold("n1", &legacy).is_err());
        let foreign = Identity::new("evil.example", "shop", "db");
        let err = registry.may_hold("n2", &foreign).unwrap_err();
        assert!(err.contains("trust domain"), "{err}");
    }
}
