//! The model as this node's agent sees it: this node's name and the current
//! config, which a reload may replace at any time. A connection takes a
//! [`Snapshot`] when it starts and keeps it, so a reload never changes the
//! rules under a connection in flight. [`source`] opens where it comes
//! from, [`reload`] replaces it from a directory or from clusters, and
//! [`ca_addr`] finds the CA service in it.
pub mod ca_addr;
pub mod reload;
pub mod source;

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use strait_config::{Config, Workload};
use strait_identity::Identity;

/// How long a replaced config still counts for decisions that must not
/// fail while a change spreads (see [`NodeState::held_recently`]).
pub const GRACE: Duration = Duration::from_secs(30);
/// Replaced configs kept for that, at most.
const RECENT: usize = 4;

/// Replaced configs and when they were replaced, newest first.
type Recent = VecDeque<(Instant, Arc<Config>)>;

#[derive(Clone)]
pub struct NodeState {
    pub node: Arc<str>,
    current: Arc<ArcSwap<Versioned>>,
    /// Configs replaced less than [`GRACE`] ago, newest first.
    recent: Arc<Mutex<Recent>>,
    /// The generation in force, for those waiting for a newer one.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
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
            recent: Arc::default(),
            changed: Arc::new(tokio::sync::watch::Sender::new(1)),
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
        let old = self.current.load_full();
        let generation = old.generation + 1;
        self.current.store(Arc::new(Versioned {
            generation,
            config: config.into(),
        }));
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_front((Instant::now(), old.config.clone()));
            recent.truncate(RECENT);
        }
        self.changed.send_replace(generation);
    }

    /// Whether `holds` is true of the config in force, or of one replaced
    /// less than [`GRACE`] ago: for decisions that must not fail while a
    /// change spreads (a request a waypoint took while it was bound, and
    /// sends on just after it was unbound).
    pub fn held_recently(&self, holds: impl Fn(&Config) -> bool) -> bool {
        if holds(&self.current.load().config) {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .take_while(|(at, _)| at.elapsed() < GRACE)
            .any(|(_, config)| holds(config))
    }

    /// Waits up to `limit` for `holds` to be true of a config in force: a
    /// peer that read a change before this process did is not refused
    /// while this one catches up. Returns whether it came to hold.
    pub async fn holds_within(&self, limit: Duration, holds: impl Fn(&Config) -> bool) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if holds(&self.current.load().config) {
                    return;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
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
        self.config.cluster_of(w)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(namespace: &str) -> Config {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
        strait_config::check_text(std::path::Path::new("c.yaml"), &yaml)
            .1
            .unwrap()
    }

    #[test]
    fn a_replaced_config_counts_for_a_grace_period() {
        let state = NodeState::new("n1", config("a"));
        let has = |ns: &'static str| move |c: &Config| c.namespaces.contains_key(ns);
        state.replace(config("b"));
        assert!(state.held_recently(has("b")));
        // Replaced just now: still counts.
        assert!(state.held_recently(has("a")));
        assert!(!state.held_recently(has("c")));
        // Only the last few are kept.
        for ns in ["c", "d", "e", "f", "g"] {
            state.replace(config(ns));
        }
        assert!(!state.held_recently(has("a")));
        assert!(state.held_recently(has("c")));
    }

    #[tokio::test]
    async fn a_decision_waits_for_the_config_to_catch_up() {
        let state = NodeState::new("n1", config("a"));
        let has_b = |c: &Config| c.namespaces.contains_key("b");
        let later = state.clone();
        let replaced = tokio::spawn(async move {
            tokio::task::yield_now().await;
            later.replace(config("b"));
        });
        assert!(state.holds_within(Duration::from_secs(30), has_b).await);
        replaced.await.unwrap();
        // What never comes to hold is refused once the limit passes.
        let has_z = |c: &Config| c.namespaces.contains_key("z");
        assert!(!state.holds_within(Duration::from_millis(50), has_z).await);
    }
}
