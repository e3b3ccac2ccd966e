//! `strait_workload_info`: where each workload runs (cluster, network,
//! locality) and what it is, one series per workload a proxy serves. Istio's
//! metrics name a workload's cluster but not its network or locality; a view
//! drawn from Prometheus alone (`straitctl dashboard`) joins on this to
//! group workloads as the mesh places them and to find the gateway a
//! cross-network edge goes through.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use strait_config::{Locality, Workload};
use strait_state::Snapshot;

use crate::Peer;

pub const METRIC: &str = "strait_workload_info";

/// What a served workload is to the mesh.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Role {
    /// An application's pods, captured by the node's agent.
    Workload,
    /// An east-west gateway: other networks reach this one through it.
    Gateway,
    /// A waypoint's instance (not captured: it speaks HBONE itself).
    Waypoint,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Gateway => "gateway",
            Self::Waypoint => "waypoint",
        }
    }
}

/// One series: labels named as Istio's `source_*`/`destination_*` ones
/// without the prefix, so a join is `on (workload, workload_namespace,
/// cluster)`. Bounded by the workloads a proxy serves (pods of one
/// Deployment on a node share a series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadInfo {
    pub workload: String,
    pub workload_namespace: String,
    pub cluster: String,
    pub network: String,
    pub region: String,
    pub zone: String,
    pub role: &'static str,
}

impl WorkloadInfo {
    pub fn of(state: &Snapshot, w: &Workload, role: Role) -> Self {
        Self::new(Peer::of(state, w), &w.network, &w.locality, role)
    }

    /// A proxy's placement under `peer`'s name (a gateway without an
    /// instance in the config is named by its Gateway object).
    pub fn new(peer: Peer, network: &str, locality: &Locality, role: Role) -> Self {
        let known = |s: &str| {
            if s.is_empty() {
                crate::UNKNOWN.to_string()
            } else {
                s.to_string()
            }
        };
        Self {
            workload: peer.workload,
            workload_namespace: peer.namespace,
            cluster: peer.cluster,
            network: known(network),
            region: known(&locality.region),
            zone: known(&locality.zone),
            role: role.as_str(),
        }
    }
}

/// The family, replaced whole each time the served set changes.
#[derive(Clone, Default)]
pub struct Placement {
    family: Family<WorkloadInfo, Gauge>,
}

impl Placement {
    pub fn register(registry: &mut Registry) -> Self {
        let placement = Self::default();
        registry.register(
            METRIC,
            "Workloads this proxy serves: cluster, network, locality and role (1 per workload)",
            placement.family.clone(),
        );
        placement
    }

    pub fn set(&self, served: impl IntoIterator<Item = WorkloadInfo>) {
        self.family.clear();
        for info in served {
            self.family.get_or_create(&info).set(1);
        }
    }
}
