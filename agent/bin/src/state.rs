//! The model as this node's agent sees it: the current config, this node's
//! name, and the questions the proxy asks of it.
use std::{net::IpAddr, sync::Arc};

use strait_config::{Config, Workload};
use strait_identity::Identity;

#[derive(Clone)]
pub struct NodeState {
    pub node: String,
    pub config: Arc<Config>,
}

impl NodeState {
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
