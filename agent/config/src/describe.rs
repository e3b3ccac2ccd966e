//! `straitctl describe`: what the config says of one pod or service, and
//! why (as `istioctl x describe`): enrolled or not and by which rule, its
//! identity, PeerAuthentication mode, the AuthorizationPolicies that apply
//! and how they select it, its waypoint, its services, the gateways other
//! networks reach it through. The agent adds what only it knows (capture
//! state, endpoints as its node sees them).
use serde::{Deserialize, Serialize};

use crate::{Config, MtlsMode, Service, Workload};

/// A pod (or any workload) as the config describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodDescription {
    pub name: String,
    pub namespace: String,
    /// Istio's workload name (the owning controller).
    pub workload: String,
    pub addresses: Vec<String>,
    pub node: Option<String>,
    pub cluster: String,
    pub network: String,
    pub locality: String,
    pub service_account: String,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: String,
    pub enrolled: bool,
    /// Its capture state on the node whose agent answers (`captured`,
    /// `pending: ...`), when that node runs it.
    #[serde(default)]
    pub capture: Option<String>,
    /// The rule that decided (`namespace-label`, `workload-label`,
    /// `sidecar`, `opted-out`, `waypoint`, `not-labelled`).
    pub rule: crate::Enrollment,
    pub reason: String,
    /// PeerAuthentication mode for connections to it (`STRICT`,
    /// `PERMISSIVE`, `DISABLE`).
    pub mtls_mode: String,
    pub policies: Vec<AppliedPolicy>,
    /// Its own addresses' waypoint (`namespace/name`), or why a label
    /// naming one does not bind.
    pub waypoint: Option<String>,
    pub services: Vec<ServiceRef>,
    /// East-west gateways other networks reach it through
    /// (`namespace/name`), when a service of it is exported.
    pub gateways: Vec<String>,
}

/// An AuthorizationPolicy the node proxy applies to a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// `namespace/name`.
    pub policy: String,
    pub action: String,
    /// Why it applies: mesh-wide, namespace-wide, or its selector.
    pub scope: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceRef {
    /// `namespace/name`.
    pub service: String,
    pub host: String,
    /// The service's waypoint, or why a label naming one does not bind.
    pub waypoint: Option<String>,
}

/// A service as the config describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceDescription {
    /// `namespace/name`.
    pub service: String,
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    /// `name port/protocol -> target`.
    pub ports: Vec<String>,
    pub waypoint: Option<String>,
    /// Reachable from other networks (`istio.io/global`).
    pub exported: bool,
    /// Namespaces that see it; empty is every namespace.
    pub export_to: Vec<String>,
    /// Its endpoints in the config (`namespace/name`).
    pub workloads: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("no pod or workload {0} in the config")]
    NoPod(String),
    #[error("no service {0} in the config")]
    NoService(String),
    #[error("{0:?}: name a pod as namespace/name")]
    BadName(String),
}

impl Config {
    /// `namespace/name` of a workload.
    pub fn describe_pod(&self, id: &str) -> Result<PodDescription, DescribeError> {
        let (namespace, name) = id
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| DescribeError::BadName(id.to_string()))?;
        let w = self
            .workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .ok_or_else(|| DescribeError::NoPod(id.to_string()))?;
        let rule = self.enrollment(w);
        let services: Vec<&Service> = self.services_of(w).collect();
        let exported = services.iter().any(|s| self.global(s));
        Ok(PodDescription {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            workload: w.workload_name().to_string(),
            addresses: w.addresses.iter().map(ToString::to_string).collect(),
            node: w.node.clone(),
            cluster: self.cluster_of(w),
            network: w.network.clone(),
            locality: [&w.locality.region, &w.locality.zone, &w.locality.subzone]
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            service_account: w.service_account.clone(),
            identity: format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.trust_domain, w.namespace, w.service_account
            ),
            enrolled: rule.enrolled(),
            capture: None,
            rule,
            reason: rule.reason().to_string(),
            mtls_mode: match self.mtls_mode(w, 0) {
                MtlsMode::Strict => "STRICT",
                MtlsMode::Disable => "DISABLE",
                MtlsMode::Permissive | MtlsMode::Unset => "PERMISSIVE",
            }
            .to_string(),
            policies: self.applied_policies(w),
            waypoint: binding(self.workload_binding(w)),
            services: services
                .iter()
                .map(|s| ServiceRef {
                    service: format!("{}/{}", s.namespace, s.name),
                    host: s.hosts.first().cloned().unwrap_or_default(),
                    waypoint: binding(self.service_binding(s)),
                })
                .collect(),
            gateways: if exported {
                self.gateways_into(&w.network)
                    .map(|g| format!("{}/{}", g.namespace, g.name))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// A service by what a user types ([`Config::find_service`]).
    pub fn describe_service(&self, name: &str) -> Result<ServiceDescription, DescribeError> {
        let at = self
            .find_service(name)
            .ok_or_else(|| DescribeError::NoService(name.to_string()))?;
        let s = at.service;
        Ok(ServiceDescription {
            service: format!("{}/{}", s.namespace, s.name),
            hosts: s.hosts.clone(),
            addresses: s.addresses.iter().map(ToString::to_string).collect(),
            ports: s
                .ports
                .iter()
                .map(|p| {
                    let target = match &p.target {
                        crate::TargetPort::Number(n) => n.to_string(),
                        crate::TargetPort::Name(n) => n.clone(),
                    };
                    format!("{} {}/{} -> {target}", p.name, p.port, p.protocol)
                })
                .collect(),
            waypoint: binding(self.service_binding(s)),
            exported: self.global(s),
            export_to: s.export_to.clone(),
            workloads: self
                .workloads
                .iter()
                .filter(|w| crate::service::endpoint_of(s, w).is_some())
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect(),
        })
    }

    /// Every service, described.
    pub fn describe_services(&self) -> Vec<ServiceDescription> {
        self.services
            .iter()
            .filter_map(|s| {
                let id = format!("{}/{}", s.namespace, s.name);
                self.describe_service(&id).ok()
            })
            .collect()
    }

    /// The AuthorizationPolicies the node proxy applies to `w`, and why.
    pub fn applied_policies(&self, w: &Workload) -> Vec<AppliedPolicy> {
        self.policies_for(w)
            .map(|p| AppliedPolicy {
                policy: format!("{}/{}", p.namespace, p.name),
                action: p.spec.action.clone().unwrap_or_else(|| "ALLOW".into()),
                scope: match &p.spec.selector {
                    Some(sel) => format!(
                        "its selector matches: {}",
                        sel.match_labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None if p.namespace == self.root_namespace && p.namespace != w.namespace => {
                        "mesh-wide (root namespace, no selector)".into()
                    }
                    None => "namespace-wide (no selector)".into(),
                },
            })
            .collect()
    }
}

/// A waypoint binding in words: its name, or why it does not bind.
fn binding(
    bound: Result<Option<&crate::waypoint::Waypoint>, crate::waypoint::Unbound>,
) -> Option<String> {
    match bound {
        Ok(Some(wp)) => Some(format!("{}/{}", wp.namespace, wp.name)),
        Ok(None) => None,
        Err(why) => Some(format!("none: {why}")),
    }
}
