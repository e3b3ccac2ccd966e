//! Waypoints: Gateway API Gateways of class `istio-waypoint`, and which
//! services and workloads send their traffic through one, by Istio's
//! labels. `istio.io/use-waypoint` on a Service or ServiceEntry, a Pod or
//! WorkloadEntry, or their Namespace names the waypoint (the most specific
//! label wins; `none` opts out), `istio.io/use-waypoint-namespace` beside
//! it names the waypoint's namespace (else the labelled object's own). The
//! waypoint's `istio.io/waypoint-for` label says which traffic it takes
//! (`service`, the default; `workload`; `all`; `none`), and its `mesh`
//! listener's `allowedRoutes` which namespaces may bind to it.
use std::net::IpAddr;

use serde::Serialize;

use crate::{Config, GATEWAY_NAME_LABEL, Labels, Service, Workload};

/// The Gateway API class of waypoints (Istio's).
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// On a Service, ServiceEntry, Pod, WorkloadEntry or Namespace: the
/// waypoint its traffic goes through, or `none`.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Beside [`USE_WAYPOINT_LABEL`]: the waypoint's namespace.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// On the waypoint's Gateway: which traffic it takes.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// Which traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficType {
    /// To a service's addresses (the default).
    #[default]
    Service,
    /// To a workload's own addresses.
    Workload,
    All,
    None,
}

impl TrafficType {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "service" => Self::Service,
            "workload" => Self::Workload,
            "all" => Self::All,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    pub fn workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }
}

/// Which namespaces' services and workloads may use a waypoint: its `mesh`
/// listener's `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Admits {
    /// Its own namespace only (Gateway API's default).
    #[default]
    Same,
    All,
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// A Kubernetes label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Expression>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    /// Its HBONE listener's port.
    pub port: u16,
    pub traffic: TrafficType,
    pub admits: Admits,
    /// The service account its instances run as: agents check that the
    /// waypoint holds this identity, and the CA signs it only for them.
    pub service_account: String,
    /// `spec.addresses`, else `status.addresses`: where it is reached when
    /// no instance is known (its instances' own addresses come first).
    pub addresses: Vec<IpAddr>,
}

/// What an object's labels say about waypoints.
enum Wants<'a> {
    /// Nothing: ask the next, less specific, object.
    Unsaid,
    /// `none`: no waypoint, whatever the namespace says.
    OptedOut,
    Named {
        namespace: &'a str,
        name: &'a str,
    },
}

fn wants<'a>(labels: &'a Labels, own_namespace: &'a str) -> Wants<'a> {
    match labels.get(USE_WAYPOINT_LABEL).map(String::as_str) {
        None | Some("") => Wants::Unsaid,
        Some("none") => Wants::OptedOut,
        Some(name) => Wants::Named {
            namespace: labels
                .get(USE_WAYPOINT_NAMESPACE_LABEL)
                .map_or(own_namespace, String::as_str),
            name,
        },
    }
}

/// Why a label naming a waypoint does not bind: for the checks' warnings
/// and `straitctl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unbound {
    NoSuchWaypoint {
        namespace: String,
        name: String,
    },
    NotForThisTraffic {
        waypoint: String,
        traffic: TrafficType,
    },
    NotAdmitted {
        waypoint: String,
        namespace: String,
    },
}

impl std::fmt::Display for Unbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSuchWaypoint { namespace, name } => write!(
                f,
                "names waypoint {namespace}/{name}, and there is no Gateway of class {WAYPOINT_CLASS} by that name"
            ),
            Self::NotForThisTraffic { waypoint, traffic } => write!(
                f,
                "names waypoint {waypoint}, which takes {} traffic ({WAYPOINT_FOR_LABEL}), not this kind",
                serde_json::to_value(traffic)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            Self::NotAdmitted {
                waypoint,
                namespace,
            } => write!(
                f,
                "names waypoint {waypoint}, whose mesh listener's allowedRoutes does not admit namespace {namespace}"
            ),
        }
    }
}

impl Config {
    pub fn waypoint(&self, namespace: &str, name: &str) -> Option<&Waypoint> {
        self.waypoints
            .iter()
            .find(|w| w.name == name && w.namespace == namespace)
    }

    /// The waypoint traffic to `service`'s addresses goes through.
    pub fn service_waypoint(&self, service: &Service) -> Option<&Waypoint> {
        self.service_binding(service).ok().flatten()
    }

    /// As [`Config::service_waypoint`], or why a label naming one does not
    /// bind.
    pub fn service_binding(&self, service: &Service) -> Result<Option<&Waypoint>, Unbound> {
        self.binding(&service.labels, &service.namespace, TrafficType::services)
    }

    /// The waypoint traffic to `workload`'s own addresses goes through.
    /// Never for a waypoint's own instances.
    pub fn workload_waypoint(&self, workload: &Workload) -> Option<&Waypoint> {
        self.workload_binding(workload).ok().flatten()
    }

    pub fn workload_binding(&self, workload: &Workload) -> Result<Option<&Waypoint>, Unbound> {
        if self.waypoint_of(workload).is_some() {
            return Ok(None);
        }
        self.binding(
            &workload.labels,
            &workload.namespace,
            TrafficType::workloads,
        )
    }

    fn binding(
        &self,
        labels: &Labels,
        namespace: &str,
        takes: fn(TrafficType) -> bool,
    ) -> Result<Option<&Waypoint>, Unbound> {
        let ns_labels = self.namespaces.get(namespace).map(|ns| &ns.labels);
        let (wp_namespace, name) = match wants(labels, namespace) {
            Wants::OptedOut => return Ok(None),
            Wants::Named { namespace, name } => (namespace, name),
            Wants::Unsaid => match ns_labels.map(|l| wants(l, namespace)) {
                Some(Wants::Named { namespace, name }) => (namespace, name),
                _ => return Ok(None),
            },
        };
        let Some(waypoint) = self.waypoint(wp_namespace, name) else {
            return Err(Unbound::NoSuchWaypoint {
                namespace: wp_namespace.into(),
                name: name.into(),
            });
        };
        let id = format!("{}/{}", waypoint.namespace, waypoint.name);
        if !takes(waypoint.traffic) {
            return Err(Unbound::NotForThisTraffic {
                waypoint: id,
                traffic: waypoint.traffic,
            });
        }
        let admitted = match &waypoint.admits {
            Admits::Same => waypoint.namespace == namespace,
            Admits::All => true,
            Admits::Selector(selector) => ns_labels.is_some_and(|l| selector.matches(l)),
        };
        if !admitted {
            return Err(Unbound::NotAdmitted {
                waypoint: id,
                namespace: namespace.into(),
            });
        }
        Ok(Some(waypoint))
    }

    /// Whether the waypoint running as `namespace/service_account` is bound
    /// to `w`: for `w`'s own addresses, or for a service `w` is an endpoint
    /// of. Only such a waypoint is believed when it names the client it
    /// sends a connection for.
    pub fn waypoint_serves(&self, w: &Workload, namespace: &str, service_account: &str) -> bool {
        let is = |wp: &Waypoint| wp.namespace == namespace && wp.service_account == service_account;
        self.workload_waypoint(w).is_some_and(is)
            || self
                .services_of(w)
                .any(|s| self.service_waypoint(s).is_some_and(is))
    }

    /// The waypoint `w` is an instance of: labelled with its name, in its
    /// namespace, running as its service account.
    pub fn waypoint_of(&self, w: &Workload) -> Option<&Waypoint> {
        let name = w.labels.get(GATEWAY_NAME_LABEL)?;
        self.waypoints.iter().find(|wp| {
            &wp.name == name
                && wp.namespace == w.namespace
                && wp.service_account == w.service_account
        })
    }

    /// The workloads that are instances of `waypoint`.
    pub fn waypoint_instances<'a>(
        &'a self,
        waypoint: &'a Waypoint,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| {
            w.namespace == waypoint.namespace
                && w.service_account == waypoint.service_account
                && w.labels.get(GATEWAY_NAME_LABEL) == Some(&waypoint.name)
        })
    }
}
