//! Kubernetes core `v1` objects the model uses.
use serde::{Deserialize, Serialize};

use crate::Labels;

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<Labels>,
    pub traffic_distribution: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub external_traffic_policy: Option<String>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Vec<String>,
    pub external_name: Option<String>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<serde_json::Value>,
    pub ip_families: Vec<String>,
    pub ip_family_policy: Option<String>,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    pub load_balancer_class: Option<String>,
    pub load_balancer_source_ranges: Vec<String>,
    pub allocate_load_balancer_node_ports: Option<bool>,
    pub health_check_node_port: Option<u32>,
    pub publish_not_ready_addresses: Option<bool>,
    /// Kubernetes 1.17-1.21 (alpha, removed since).
    pub topology_keys: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u32,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
    pub node_port: Option<u32>,
}

/// A port by number or by name (`targetPort: 8080` or `targetPort: http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    Str(String),
}

/// The parts of a Pod the model uses: who it is, where it runs, and what
/// its kubelet reported. A Pod has hundreds of other fields that mean
/// nothing to a mesh, so unknown fields are allowed here.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    pub host_network: Option<bool>,
    pub containers: Vec<Container>,
    /// Read for their names: Istio's native sidecar is an init container.
    pub init_containers: Vec<Container>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Container {
    pub name: Option<String>,
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u32,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}
