//! The model as this node's agent sees it: this node's name and the current
//! config, which a reload may replace at any time. A connection takes a
//! [`Snapshot`] when it starts and keeps it, so a reload never changes the
//! rules under a connection in flight. [`source`] opens where it comes
//! from, [`reload`] replaces it from a directory or from clusters, and
//! [`ca_addr`] finds the CA service in it.
pub mod ca_addr;
pub mod reload;
pub mod source;

use std::{net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;
use strait_config::{Config, Workload};
use strait_identity::Identity;

#[derive(Clone)]
pub struct NodeState {
    pub node: Arc<str>,
    current: Arc<ArcSwap<Versioned>>,
}

/// A config and its place in the sequence of configs applied.
struct Versioned {
    generation: u64,
    config: Arc<Config>,
}

impl NodeState {
    /// `config` is shared, not copied: a cluster source keeps the same
    /// one as its latest snapshot.
    pub fn new(node: &str, config: impl Into<Arc<Config>>) -> Self {
        Self {
            node: node.into(),
            current: Arc::new(ArcSwap::from_pointee(Versioned {
                generation: 1,
                config: config.into(),
            })),
        }
    }

    /// The config as of now.
    pub fn snapshot(&self) -> Snapshot {
        let current = self.current.load();
        Snapshot {
            node: self.node.clone(),
            generation: current.generation,
            config: current.config.clone(),
        }
    }

    /// Makes `config` the current one; connections already open keep theirs.
    pub fn replace(&self, config: impl Into<Arc<Config>>) {
        let generation = self.current.load().generation + 1;
        self.current.store(Arc::new(Versioned {
            generation,
            config: config.into(),
        }));
    }
}

/// One config, and the questions the proxy asks of it.
#[derive(Clone)]
pub struct Snapshot {
    pub node: Arc<str>,
    /// 1 for the config loaded at start, then one more per reload applied.
    pub generation: u64,
    pub config: Arc<Config>,
}

impl Snapshot {
    pub fn identity(&self, workload: &Workload) -> Identity {
        Identity::new(
            &self.config.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
    }

    /// The in-mesh workload at `ip`: HBONE destinations.
    pub fn mesh_workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.config
            .workload_by_address(ip)
            .filter(|w| self.config.enrolled(w))
    }

    /// Any known workload at `ip`, for telemetry labels.
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.config.workload_by_address(ip)
    }

    /// A workload's cluster: its own `topology.istio.io/cluster` label,
    /// else its node's; empty when neither says.
    pub fn cluster(&self, w: &Workload) -> String {
        w.labels
            .get(strait_balance::CLUSTER)
            .or_else(|| {
                w.node
                    .as_ref()
                    .and_then(|n| self.config.nodes.get(n))
                    .and_then(|n| n.labels.get(strait_balance::CLUSTER))
            })
            .cloned()
            .unwrap_or_default()
    }

    /// The workload a client that came through an east-west gateway says
    /// it is (its agent's word, in the CONNECT), believed only when the
    /// config has a workload of that name under the identity its TLS
    /// session proved.
    pub fn claimed_client(
        &self,
        source: &strait_hbone::Source,
        peer: &Identity,
    ) -> Option<&Workload> {
        let name = source.workload.as_deref()?;
        self.config
            .workloads
            .iter()
            .find(|w| w.name == name && w.namespace == peer.namespace && self.identity(w) == *peer)
    }
}

/// Loading a large config frees much more than it keeps; hand the freed
/// pages back so the process's resident size is what it holds.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
