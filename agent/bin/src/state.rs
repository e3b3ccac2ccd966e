//! The model as this node's agent sees it: this node's name and the current
//! config, which a reload may replace at any time. A connection takes a
//! [`Snapshot`] when it starts and keeps it, so a reload never changes the
//! rules under a connection in flight.
use std::{net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;
use strait_config::{Config, Workload};
use strait_identity::Identity;

#[derive(Clone)]
pub struct NodeState {
    pub node: Arc<str>,
    current: Arc<ArcSwap<Config>>,
}

impl NodeState {
    pub fn new(node: &str, config: Config) -> Self {
        Self {
            node: node.into(),
            current: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// The config as of now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.node.clone(),
            config: self.current.load_full(),
        }
    }

    /// Makes `config` the current one; connections already open keep theirs.
    pub fn replace(&self, config: Config) {
        self.current.store(Arc::new(config));
    }
}

/// One config, and the questions the proxy asks of it.
#[derive(Clone)]
pub struct Snapshot {
    pub node: Arc<str>,
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

    /// Whether this node's CA client may ask for `identity`: only service
    /// accounts of workloads scheduled here.
    pub fn may_hold(&self, identity: &Identity) -> bool {
        self.config
            .workloads_on(&self.node)
            .any(|w| self.config.enrolled(w) && self.identity(w) == *identity)
    }
}
