//! strait's config model: what the proxies know about workloads and
//! policies. Sources translate into it ([`local`]: a directory of Kubernetes
//! and Istio YAML manifests); the proxies only ever see the model.
pub mod authz;
mod check;
pub mod describe;
pub mod duration;
pub mod gateway_routes;
pub mod local;
pub mod manifest;
pub mod mesh_config;
pub mod names;
pub mod ratelimit;
pub mod report;
pub mod service;
pub mod watch;
pub mod waypoint;
mod yaml;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Serialize;

pub use check::{CLUSTER_DOMAIN, MAX_LABELS, qualify};
pub use local::{LoadError, check_objects, check_path, check_text, load_dir};
pub use report::{Finding, ObjectReport, Report, Verdict};

use crate::manifest::{networking, security};

/// Namespace labels that put a namespace in the mesh.
pub const ENROLL_LABELS: [(&str, &str); 2] = [
    ("istio.io/dataplane-mode", "ambient"),
    ("strait.dev/mesh", "enabled"),
];
/// Workload label that keeps one workload out of the mesh.
pub const OPT_OUT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "none");
/// Workload label that puts one workload in the mesh, whatever its
/// namespace says.
pub const POD_ENROLL_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
/// The label naming a workload's (or node's) cluster.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// Annotation Istio's injector writes on a pod it gave a sidecar.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The name of Istio's sidecar container.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";
/// Annotation naming the node a WorkloadEntry runs on.
pub const NODE_ANNOTATION: &str = "strait.dev/node";
/// Annotation naming a workload's network namespace (path), when it cannot
/// be found by address.
pub const NETNS_ANNOTATION: &str = "strait.dev/netns";
/// Annotation with a workload's further addresses (comma separated), for
/// dual-stack workloads: a WorkloadEntry has one `address`.
pub const ADDRESSES_ANNOTATION: &str = "strait.dev/addresses";
/// Annotation of a Kubernetes Service with the namespaces it is exported to
/// (comma separated), as Istio reads it.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Whether an object of namespace `owner` with `exportTo: export_to` is
/// visible from namespace `client`: `*` (or nothing) is everywhere, `.`
/// the owner's namespace, `~` nowhere, anything else a namespace by name.
pub fn exported_to(export_to: &[String], owner: &str, client: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|to| match to.as_str() {
            "*" => true,
            "." => owner == client,
            "~" => false,
            ns => ns == client,
        })
}

/// gRPC's status names, by code (a fault's `grpcStatus`).
pub const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Label naming a workload's, namespace's or node's network (Istio's).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Label (`"true"`/`"false"`) on a Service, ServiceEntry or namespace that
/// makes services reachable from other networks, through their network's
/// east-west gateways; on the root namespace it is the mesh-wide default.
/// Unset everywhere: a service is reached only from its own network.
pub const GLOBAL_LABEL: &str = "istio.io/global";
/// The Gateway API class of east-west gateways (Istio's).
pub const EAST_WEST_CLASS: &str = "istio-east-west";
/// The mesh's root namespace (Istio's default): its policies apply
/// mesh-wide, and it may declare east-west gateways, which carry every
/// other network's traffic into theirs.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Namespaces besides the root one whose east-west gateways count (the
/// operator's `--east-west-gateway-namespaces`: where the chart deploys
/// its gateway). Set once, at start, by the binaries that build the model
/// (every agent, gateway and CA of a mesh is given the same list).
static EAST_WEST_NAMESPACES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Lets the Gateways of class `istio-east-west` in `namespaces` (besides
/// the root namespace) be east-west gateways. Once per process: a second
/// call is refused, with the list in force.
pub fn allow_east_west_gateways_in(namespaces: Vec<String>) -> Result<(), String> {
    for ns in &namespaces {
        names::check_label(ns).map_err(|why| format!("namespace {ns:?}: {why}"))?;
    }
    EAST_WEST_NAMESPACES
        .set(namespaces)
        .map_err(|_| "the east-west gateway namespaces are set already".to_string())
}

/// Whether a Gateway of class `istio-east-west` in `namespace` counts.
pub fn east_west_gateways_allowed_in(namespace: &str) -> bool {
    namespace == ROOT_NAMESPACE
        || EAST_WEST_NAMESPACES
            .get()
            .is_some_and(|allowed| allowed.iter().any(|ns| ns == namespace))
}
/// Label of a gateway's own pods (or WorkloadEntries) and of the Service in
/// front of it, naming the Gateway (set by Istio's gateway controller).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Annotation of a Gateway naming the service account its instances run
/// as; without it, `<gateway name>-<class>` as Istio's controller names it.
pub const GATEWAY_SERVICE_ACCOUNT_ANNOTATION: &str = "gateway.istio.io/service-account";

/// Annotation naming the WorkloadGroup a WorkloadEntry was made from.
pub const GROUP_ANNOTATION: &str = "istio.io/autoRegistrationGroup";

pub type Labels = BTreeMap<String, String>;

/// The whole model.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub trust_domain: String,
    /// Policies here apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub nodes: BTreeMap<String, Node>,
    pub workload_groups: Vec<Named<networking::WorkloadGroupSpec>>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<Named<security::AuthorizationPolicySpec>>,
    /// Stored for the waypoint.
    pub request_authentications: Vec<Named<security::RequestAuthenticationSpec>>,
    /// EnvoyFilters' rate limits, for waypoints.
    pub rate_limit_filters: Vec<Named<ratelimit::RateLimitFilter>>,
    pub destination_rules: Vec<Named<networking::DestinationRuleSpec>>,
    /// Stored for the waypoint: the L7 routes.
    pub virtual_services: Vec<Named<networking::VirtualServiceSpec>>,
    /// Gateway API routes, applied by waypoints ([`gateway_routes`]).
    pub http_routes: Vec<Named<manifest::gateway_api::HttpRouteSpec>>,
    pub grpc_routes: Vec<Named<manifest::gateway_api::GrpcRouteSpec>>,
    /// Stored for the gateways.
    pub gateways: Vec<Named<networking::GatewaySpec>>,
    /// Gateway API Gateways of class `istio-east-west`: how other networks
    /// are reached.
    pub east_west_gateways: Vec<EastWestGateway>,
    /// Gateway API Gateways of class `istio-waypoint`: L7 proxies that
    /// services and workloads opt into ([`waypoint`]).
    pub waypoints: Vec<waypoint::Waypoint>,
    /// Workloads left out because another already has one of their
    /// addresses in their network (first come keeps it): a Pod before a
    /// WorkloadEntry, then the older object. Their nodes' agents name them.
    pub refused_workloads: Vec<RefusedWorkload>,
    /// Objects of kinds the model does not use, as `kind namespace/name`.
    pub ignored: Vec<String>,
    /// What the checks warned about, one line each as `straitctl validate`
    /// prints it (`file:line Kind namespace/name: field F: reason`): the
    /// config applies, and these say what in it does not act.
    pub warnings: Vec<String>,
    /// Addresses allocated to ServiceEntry hosts that declare none.
    pub allocated: BTreeMap<String, IpAddr>,
    /// Workloads by address (index into `workloads`); see [`Config::reindex`].
    #[serde(skip)]
    by_address: std::collections::HashMap<IpAddr, usize>,
    #[serde(skip)]
    services_index: service::ServiceIndex,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: ROOT_NAMESPACE.into(),
            namespaces: BTreeMap::new(),
            workloads: Vec::new(),
            services: Vec::new(),
            nodes: BTreeMap::new(),
            workload_groups: Vec::new(),
            peer_authentications: Vec::new(),
            authorization_policies: Vec::new(),
            request_authentications: Vec::new(),
            rate_limit_filters: Vec::new(),
            destination_rules: Vec::new(),
            virtual_services: Vec::new(),
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
            gateways: Vec::new(),
            east_west_gateways: Vec::new(),
            waypoints: Vec::new(),
            refused_workloads: Vec::new(),
            ignored: Vec::new(),
            warnings: Vec::new(),
            allocated: BTreeMap::new(),
            by_address: std::collections::HashMap::new(),
            services_index: service::ServiceIndex::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// `region/zone/subzone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, '/').map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

/// A workload: one pod or VM, with its addresses and identity.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    pub service_account: String,
    pub locality: Locality,
    pub network: String,
    /// Named ports (`spec.ports`), for services that target them by name.
    pub ports: BTreeMap<String, u16>,
    /// Relative weight among a service's endpoints.
    pub weight: u32,
    /// The node it runs on; only that node's agent serves it.
    pub node: Option<String>,
    /// Its network namespace, when given explicitly.
    pub netns: Option<PathBuf>,
    /// False when its object says it is not ready (a WorkloadEntry's
    /// `Healthy` condition is `False`); endpoints that are not ready get no
    /// connections.
    pub ready: bool,
    /// The WorkloadGroup it belongs to (Istio's
    /// `istio.io/autoRegistrationGroup` annotation, or the group's
    /// `metadata.labels`).
    pub group: Option<String>,
    /// The group's readiness probe, run by the agent of the workload's node.
    pub probe: Option<Box<networking::Probe>>,
    /// The controller that owns it, by Istio's rules (a Deployment for a
    /// pod of its ReplicaSet, a CronJob for a pod of its Job): what
    /// Istio's metrics call the workload.
    pub owner: Option<String>,
    /// It runs an Istio sidecar (the injector's status annotation, or an
    /// `istio-proxy` container): the sidecar handles its traffic, so the
    /// node's agent never captures it.
    pub sidecar: bool,
}

impl Workload {
    /// Istio's workload name: the owning controller's, else the
    /// WorkloadGroup's, else its own (a bare pod, a WorkloadEntry).
    pub fn workload_name(&self) -> &str {
        self.owner
            .as_deref()
            .or(self.group.as_deref())
            .unwrap_or(&self.name)
    }
}

/// Why a workload is in the mesh or not: the rule that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrollment {
    /// `istio.io/dataplane-mode=ambient` on the workload itself.
    WorkloadLabel,
    /// Its namespace is labelled in.
    NamespaceLabel,
    /// `istio.io/dataplane-mode=none` on the workload.
    OptedOut,
    /// It runs an Istio sidecar, which handles its traffic.
    Sidecar,
    /// An instance of a waypoint: it speaks HBONE itself.
    Waypoint,
    /// Neither it nor its namespace is labelled in.
    NotLabelled,
}

impl Enrollment {
    pub fn enrolled(self) -> bool {
        matches!(self, Self::WorkloadLabel | Self::NamespaceLabel)
    }

    /// The rule, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Self::WorkloadLabel => "in the mesh: its own label istio.io/dataplane-mode=ambient",
            Self::NamespaceLabel => "in the mesh: its namespace's label",
            Self::OptedOut => "not in the mesh: its own label istio.io/dataplane-mode=none",
            Self::Sidecar => "not captured: it runs an Istio sidecar, which handles its traffic",
            Self::Waypoint => "not captured: a waypoint instance, speaking HBONE itself",
            Self::NotLabelled => {
                "not in the mesh: neither it nor its namespace has istio.io/dataplane-mode=ambient"
            }
        }
    }
}

/// A workload left out of the model, and why.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedWorkload {
    pub workload: Workload,
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

/// An object the model keeps as written (its meaning is applied elsewhere).
#[derive(Clone, Debug, Serialize)]
pub struct Named<S> {
    pub name: String,
    pub namespace: String,
    pub spec: S,
}

impl<S> Named<S> {
    pub fn new(name: &str, namespace: &str, spec: S) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            spec,
        }
    }
}

/// A Kubernetes node: where its workloads are.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub locality: Locality,
    pub network: String,
}

/// An east-west gateway: where connections from other networks to this
/// network's services arrive, as HBONE (its instances terminate the outer
/// tunnel and forward the inner one, still encrypted, to an endpoint).
#[derive(Clone, Debug, Serialize)]
pub struct EastWestGateway {
    pub name: String,
    pub namespace: String,
    /// The network it leads into.
    pub network: String,
    /// Where other networks reach it, each an instance to balance over:
    /// `spec.addresses`, else `status.addresses`, else the addresses of the
    /// Service in front of it.
    pub addresses: Vec<IpAddr>,
    /// Its HBONE listener's port.
    pub port: u16,
    /// The service account its instances run as: clients check that the
    /// gateway holds this identity.
    pub service_account: String,
}

/// A service: names, virtual addresses, ports and how to find its
/// endpoints. Kubernetes Services and ServiceEntries both become one.
#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// The names clients use: `name.ns.svc.<domain>`, or a ServiceEntry's
    /// hosts (which may start with `*.`).
    pub hosts: Vec<String>,
    /// Virtual IPs; none for a headless service or an entry without
    /// addresses.
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Endpoints,
    pub origin: ServiceOrigin,
    /// `trafficDistribution` (PreferClose, PreferSameZone, PreferSameNode).
    pub traffic_distribution: Option<String>,
    /// `internalTrafficPolicy: Local`: only endpoints on the client's node.
    pub node_local: bool,
    /// Namespaces that see it (`exportTo` of a ServiceEntry, the
    /// `networking.istio.io/exportTo` annotation of a Service): empty is
    /// every namespace.
    pub export_to: Vec<String>,
    /// The object's own labels.
    pub labels: Labels,
    /// Where clients outside the cluster reach it (a Kubernetes Service's
    /// `status.loadBalancer.ingress`, `externalIPs`, `loadBalancerIP`): how
    /// a gateway's Service gives the gateway its addresses.
    pub ingress: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target: TargetPort,
    pub protocol: String,
}

/// Where a service port leads on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    /// A port name, looked up in each endpoint's named ports.
    Name(String),
}

#[derive(Clone, Debug, Serialize)]
pub enum Endpoints {
    /// Workloads whose labels match, in the service's namespace.
    Selector(Labels),
    /// Listed in the object (ServiceEntry `endpoints`).
    Static(Vec<Workload>),
    /// Resolved by DNS when used (ServiceEntry resolution DNS): these
    /// endpoint host names, or the service's own host when there are none.
    Dns(Vec<String>),
    /// None known (a selector-less Service, resolution NONE).
    Unset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceOrigin {
    Kubernetes,
    MeshInternal,
    MeshExternal,
}

/// `mtls.mode` of a PeerAuthentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MtlsMode {
    /// Inherit from the enclosing scope.
    Unset,
    Permissive,
    Strict,
    Disable,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// `selector.matchLabels`; none selects the whole namespace.
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
}

impl Config {
    /// A workload's cluster: its own `topology.istio.io/cluster` label,
    /// else its node's; empty when neither says.
    pub fn cluster_of(&self, w: &Workload) -> String {
        w.labels
            .get(CLUSTER_LABEL)
            .or_else(|| {
                w.node
                    .as_ref()
                    .and_then(|n| self.nodes.get(n))
                    .and_then(|n| n.labels.get(CLUSTER_LABEL))
            })
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `workload` is in the mesh ([`Self::enrollment`]).
    pub fn enrolled(&self, workload: &Workload) -> bool {
        self.enrollment(workload).enrolled()
    }

    /// Whether `workload` is in the mesh, and the rule that decided, in
    /// Istio's order: its own opt-out, a sidecar (which wins, so a
    /// workload moving from sidecars to ambient is never proxied twice),
    /// its own `istio.io/dataplane-mode=ambient`, its namespace's label.
    pub fn enrollment(&self, workload: &Workload) -> Enrollment {
        let label = workload.labels.get(OPT_OUT_LABEL.0).map(String::as_str);
        let ns_in = self.namespaces.get(&workload.namespace).is_some_and(|ns| {
            ENROLL_LABELS
                .iter()
                .any(|(k, v)| ns.labels.get(*k).map(String::as_str) == Some(*v))
        });
        // A waypoint speaks HBONE itself, on its own address: capturing it
        // would hand its listener to the node's agent.
        if self.waypoint_of(workload).is_some() {
            Enrollment::Waypoint
        } else if label == Some(OPT_OUT_LABEL.1) {
            Enrollment::OptedOut
        } else if workload.sidecar {
            Enrollment::Sidecar
        } else if label == Some(POD_ENROLL_LABEL.1) {
            Enrollment::WorkloadLabel
        } else if ns_in {
            Enrollment::NamespaceLabel
        } else {
            Enrollment::NotLabelled
        }
    }

    /// Whether `service` may be reached from other networks (through its
    /// network's east-west gateways): its own `istio.io/global` label, else
    /// its namespace's, else the root namespace's; false when none says.
    pub fn global(&self, service: &Service) -> bool {
        let label = |labels: &Labels| labels.get(GLOBAL_LABEL).map(|v| v == "true");
        label(&service.labels)
            .or_else(|| {
                self.namespaces
                    .get(&service.namespace)
                    .and_then(|ns| label(&ns.labels))
            })
            .or_else(|| {
                self.namespaces
                    .get(&self.root_namespace)
                    .and_then(|ns| label(&ns.labels))
            })
            .unwrap_or(false)
    }

    /// The east-west gateway `w` is an instance of: labelled with the
    /// Gateway's name, in its namespace, running as its service account.
    pub fn gateway_of(&self, w: &Workload) -> Option<&EastWestGateway> {
        let name = w.labels.get(GATEWAY_NAME_LABEL)?;
        self.east_west_gateways.iter().find(|g| {
            &g.name == name && g.namespace == w.namespace && g.service_account == w.service_account
        })
    }

    /// The east-west gateways into `network`.
    pub fn gateways_into<'a>(
        &'a self,
        network: &'a str,
    ) -> impl Iterator<Item = &'a EastWestGateway> + 'a {
        self.east_west_gateways
            .iter()
            .filter(move |g| g.network == network)
    }

    /// Rebuilds the lookups after `workloads` or `services` changed
    /// (sources call it once they are done). The first workload with an
    /// address wins.
    pub fn reindex(&mut self) {
        self.by_address.clear();
        for (i, w) in self.workloads.iter().enumerate() {
            for ip in &w.addresses {
                self.by_address.entry(*ip).or_insert(i);
            }
        }
        self.index_services();
    }

    /// The workload that has `ip`, if any: on every proxied connection, so
    /// a hash lookup rather than a scan.
    pub fn workload_by_address(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_address
            .get(&ip)
            .and_then(|i| self.workloads.get(*i))
    }

    /// Services answering to `host` (exact, or by a `*.` wildcard).
    pub fn services_for_host<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .iter()
            .filter(move |s| s.hosts.iter().any(|h| host_matches(h, host)))
    }

    /// Workloads scheduled on `node`.
    pub fn workloads_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads
            .iter()
            .filter(move |w| w.node.as_deref() == Some(node))
    }

    /// The effective mTLS mode for connections to `workload` on `port`, by
    /// Istio's precedence: workload-selector policy over namespace policy over
    /// mesh policy, port-level settings over the policy's own; UNSET
    /// inherits; PERMISSIVE when nothing says otherwise.
    pub fn mtls_mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        let mesh = self.scoped_policy(&self.root_namespace, None);
        let namespace = self.scoped_policy(&workload.namespace, None);
        let selected = self.scoped_policy(&workload.namespace, Some(workload));
        let mut mode = MtlsMode::Permissive;
        for policy in [mesh, namespace, selected].into_iter().flatten() {
            let m = policy
                .port_level
                .get(&port)
                .copied()
                .filter(|_| policy.selector.is_some())
                .unwrap_or(policy.mode);
            if m != MtlsMode::Unset {
                mode = m;
            }
        }
        mode
    }

    /// The policy of one scope: in `namespace`, without a selector (`None`),
    /// or selecting `workload`. Istio picks the oldest when several match; the
    /// local source has no creation times, so the first by name.
    fn scoped_policy(
        &self,
        namespace: &str,
        workload: Option<&Workload>,
    ) -> Option<&PeerAuthentication> {
        let mut matching: Vec<&PeerAuthentication> = self
            .peer_authentications
            .iter()
            .filter(|p| p.namespace == namespace)
            .filter(|p| match (workload, &p.selector) {
                (None, None) => true,
                (Some(w), Some(sel)) => sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)),
                _ => false,
            })
            .collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        matching.first().copied()
    }
}

/// Whether a service host (`reviews.default.svc.cluster.local`,
/// `*.example.com`) covers `name`.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => pattern == "*" || pattern.eq_ignore_ascii_case(name),
    }
}

/// The candidate closest to `word`, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_wildcard() {
        assert!(host_matches("*.global", "user-service.production.global"));
        assert!(!host_matches("*.global", "global"));
        assert!(host_matches(
            "Reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
        assert!(!host_matches(
            "reviews.default.svc.cluster.local",
            "ratings.default.svc.cluster.local"
        ));
    }

    #[test]
    fn suggestions_are_close_words_only() {
        assert_eq!(
            suggest("serviceAcount", ["address", "serviceAccount"]),
            Some("serviceAccount")
        );
        assert_eq!(suggest("zzz", ["address", "serviceAccount"]), None);
    }

    fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: "w".into(),
            namespace: ns.into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            locality: Locality::default(),
            network: String::new(),
            ports: BTreeMap::new(),
            weight: 1,
            node: None,
            netns: None,
            ready: true,
            group: None,
            probe: None,
            owner: None,
            sidecar: false,
        }
    }

    fn ns(name: &str, labels: &[(&str, &str)]) -> (String, Namespace) {
        (
            name.into(),
            Namespace {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        )
    }

    fn pa(
        ns: &str,
        selector: Option<&[(&str, &str)]>,
        mode: MtlsMode,
        ports: &[(u16, MtlsMode)],
    ) -> PeerAuthentication {
        PeerAuthentication {
            name: format!("pa-{ns}"),
            namespace: ns.into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            mode,
            port_level: ports.iter().copied().collect(),
        }
    }

    #[test]
    fn enrollment_follows_namespace_labels_and_opt_out() {
        let cfg = Config {
            namespaces: [
                ns("ambient", &[("istio.io/dataplane-mode", "ambient")]),
                ns("strait", &[("strait.dev/mesh", "enabled")]),
                ns("plain", &[]),
            ]
            .into(),
            ..Config::default()
        };
        assert!(cfg.enrolled(&workload("ambient", &[])));
        assert!(cfg.enrolled(&workload("strait", &[])));
        assert!(!cfg.enrolled(&workload("plain", &[])));
        assert!(!cfg.enrolled(&workload("missing", &[])));
        assert!(!cfg.enrolled(&workload("ambient", &[("istio.io/dataplane-mode", "none")])));
        // Istio's pod-level rules, and which one decided.
        let rule = |ns: &str, labels: &[(&str, &str)], sidecar: bool| {
            cfg.enrollment(&Workload {
                sidecar,
                ..workload(ns, labels)
            })
        };
        let ambient = [("istio.io/dataplane-mode", "ambient")];
        assert_eq!(rule("plain", &ambient, false), Enrollment::WorkloadLabel);
        assert_eq!(rule("missing", &ambient, false), Enrollment::WorkloadLabel);
        assert_eq!(rule("ambient", &[], false), Enrollment::NamespaceLabel);
        assert_eq!(rule("ambient", &[], true), Enrollment::Sidecar);
        assert_eq!(rule("plain", &ambient, true), Enrollment::Sidecar);
        assert_eq!(
            rule("ambient", &[("istio.io/dataplane-mode", "none")], true),
            Enrollment::OptedOut
        );
        assert_eq!(rule("plain", &[], false), Enrollment::NotLabelled);
        assert!(!Enrollment::Sidecar.enrolled());
    }

    #[test]
    fn mtls_mode_precedence() {
        let w = workload("app", &[("app", "db")]);
        let mut cfg = Config::default();
        assert_eq!(cfg.mtls_mode(&w, 80), MtlsMode::Permissive, "default");

        cfg.peer_authentications
            .push(pa("istio-system", None, MtlsMode::Strict, &[]));
        assert_eq!(cfg.mtls_mode(&w, 80), MtlsMode::Strict, "mesh-wide");

        cfg.peer_authentications
            .push(pa("app", None, MtlsMode::Permissive, &[]));
        assert_eq!(
            cfg.mtls_mode(&w, 80),
            MtlsMode::Permissive,
            "namespace over mesh"
        );

        cfg.peer_authentications.push(pa(
            "app",
            Some(&[("app", "db")]),
            MtlsMode::Unset,
            &[(5432, MtlsMode::Strict)],
        ));
        assert_eq!(
            cfg.mtls_mode(&w, 80),
            MtlsMode::Permissive,
            "UNSET inherits"
        );
        assert_eq!(cfg.mtls_mode(&w, 5432), MtlsMode::Strict, "port level");

        let other = workload("app", &[("app", "web")]);
        assert_eq!(
            cfg.mtls_mode(&other, 5432),
            MtlsMode::Permissive,
            "selector does not match"
        );
    }

    #[test]
    fn locality_parses_partial_forms() {
        assert_eq!(
            Locality::parse("r/z/s"),
            Locality {
                region: "r".into(),
                zone: "z".into(),
                subzone: "s".into()
            }
        );
        assert_eq!(Locality::parse("r").zone, "");
        assert_eq!(Locality::parse("").region, "");
    }
}
