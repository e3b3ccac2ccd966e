//! Connection telemetry as Istio users read it: the `istio_tcp_*` metrics
//! with Istio's label set, failures by reason, and [`relay`], which
//! carries an established connection's bytes, counts them and writes one
//! access-log line when it closes. The agent, the east-west gateway and
//! the waypoint all count connections through this crate.
pub mod open;
pub mod peer;
pub mod placement;
pub mod relay;

use std::{net::IpAddr, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use strait_config::Service;
use strait_identity::Identity;
use strait_state::Snapshot;

pub use peer::{Peer, UNKNOWN};
pub use relay::relay;

/// `reporter`: which proxy counted it, as Istio spells it: `source` is
/// the client's (and a gateway's, for the leg it opens), `destination`
/// the server's, `waypoint` a waypoint's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
    Waypoint,
}

/// `response_flags`, as ztunnel writes them.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    #[default]
    None,
    /// An AuthorizationPolicy refused it.
    Deny,
    /// No connection to the destination (it refused, or none answered).
    Connect,
}

/// The label set of Istio's `istio_tcp_*` metrics, as ztunnel reports
/// them; `unknown` where nothing says.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    /// The service's host (`name.namespace.svc.cluster.local`).
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: ResponseFlags,
    /// `mutual_tls`, or `unknown` (plaintext).
    pub connection_security_policy: String,
}

impl TcpLabels {
    /// Every label `unknown` but the reporter's, the protocol's and the
    /// security policy's.
    pub fn new(reporter: Reporter, mtls: bool) -> Self {
        let unknown = || UNKNOWN.to_string();
        Self {
            reporter,
            source_workload: unknown(),
            source_canonical_service: unknown(),
            source_canonical_revision: unknown(),
            source_workload_namespace: unknown(),
            source_principal: unknown(),
            source_app: unknown(),
            source_version: unknown(),
            source_cluster: unknown(),
            destination_service: unknown(),
            destination_service_namespace: unknown(),
            destination_service_name: unknown(),
            destination_workload: unknown(),
            destination_canonical_service: unknown(),
            destination_canonical_revision: unknown(),
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_app: unknown(),
            destination_version: unknown(),
            destination_cluster: unknown(),
            request_protocol: "tcp".into(),
            response_flags: ResponseFlags::None,
            connection_security_policy: if mtls { "mutual_tls" } else { UNKNOWN }.into(),
        }
    }

    /// The client's workload labels (not its principal: that is what it
    /// proved, set by [`Self::source_principal`]). App and version are
    /// the canonical service and revision, as ztunnel reports them.
    pub fn source(mut self, peer: Peer) -> Self {
        self.source_workload = peer.workload;
        self.source_app = peer.canonical_service.clone();
        self.source_version = peer.canonical_revision.clone();
        self.source_canonical_service = peer.canonical_service;
        self.source_canonical_revision = peer.canonical_revision;
        self.source_workload_namespace = peer.namespace;
        self.source_cluster = peer.cluster;
        self
    }

    pub fn source_principal(mut self, principal: &Identity) -> Self {
        self.source_principal = principal.to_string();
        self
    }

    pub fn destination(mut self, peer: Peer) -> Self {
        self.destination_workload = peer.workload;
        self.destination_app = peer.canonical_service.clone();
        self.destination_version = peer.canonical_revision.clone();
        self.destination_canonical_service = peer.canonical_service;
        self.destination_canonical_revision = peer.canonical_revision;
        self.destination_workload_namespace = peer.namespace;
        self.destination_cluster = peer.cluster;
        self
    }

    pub fn destination_principal(mut self, principal: &Identity) -> Self {
        self.destination_principal = principal.to_string();
        self
    }

    /// The service the client addressed: its first host, name and
    /// namespace.
    pub fn service(mut self, service: Option<&Service>) -> Self {
        if let Some(service) = service {
            if let Some(host) = service.hosts.first() {
                self.destination_service = host.clone();
            }
            self.destination_service_name = service.name.clone();
            self.destination_service_namespace = service.namespace.clone();
        }
        self
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    /// Through the east-west gateway role.
    Gateway,
}

/// Why a connection was refused or failed before carrying data.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reason {
    /// mTLS handshake failed: certificate from another CA, none, or not the
    /// expected identity.
    Tls,
    /// Plaintext to a workload whose PeerAuthentication is STRICT.
    StrictMtls,
    /// A CONNECT for an address that is not this pod's.
    Misdirected,
    /// The destination (app, or upstream peer) did not accept.
    Upstream,
    /// A redirected connection whose original destination was not found.
    NoOriginalDestination,
    /// An AuthorizationPolicy refused it.
    Denied,
    /// A service address with no endpoint for the port.
    NoEndpoints,
    /// The pod has no certificate yet (the CA has not answered).
    NoCertificate,
    /// A peer over one of the HBONE server's limits.
    Limit,
    /// A service's `connectionPool.tcp.maxConnections` was reached.
    Overflow,
    /// At a gateway: the authority names a service not exported to other
    /// networks (or none).
    NotExported,
    /// At a gateway: the authority is an address outside its network.
    OutsideNetwork,
    /// Delivery would come back into the agent (loopback, another
    /// address, one of its own listener ports).
    Loop,
    /// The pod is at its cap of open connections that way.
    PodLimit,
    /// The node is at its budget of open connections.
    NodeLimit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: Direction,
    pub reason: Reason,
}

/// `reporter`'s value, as the label spells it.
pub(crate) fn reporter_name(reporter: Reporter) -> &'static str {
    match reporter {
        Reporter::Source => "source",
        Reporter::Destination => "destination",
        Reporter::Waypoint => "waypoint",
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(reporter_name(*self))
    }
}

/// Label values as Istio spells them.
macro_rules! label_values {
    ($($ty:ty { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    )+};
}

label_values! {
    ResponseFlags { None => "-", Deny => "DENY", Connect => "CONNECT" }
    Direction { Inbound => "inbound", Outbound => "outbound", Gateway => "gateway" }
    Reason {
        Tls => "tls",
        StrictMtls => "strict_mtls",
        Misdirected => "misdirected",
        Upstream => "upstream",
        NoOriginalDestination => "no_original_destination",
        Denied => "denied",
        NoEndpoints => "no_endpoints",
        NoCertificate => "no_certificate",
        Limit => "limit",
        Loop => "loop",
        PodLimit => "pod_limit",
        NodeLimit => "node_limit",
        Overflow => "overflow",
        NotExported => "not_exported",
        OutsideNetwork => "outside_network",
    }
}

/// The connection metrics, registered once per process.
#[derive(Clone, Default)]
pub struct Tcp {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    /// The connections open now (`straitctl connections`).
    pub open: Arc<open::OpenConnections>,
}

impl Tcp {
    pub fn register(registry: &mut Registry) -> Self {
        let tcp = Self::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes the destination sent back (the response direction), counted as they pass",
            tcp.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes the client sent (the request direction), counted as they pass",
            tcp.received_bytes.clone(),
        );
        registry.register(
            "strait_connection_failures",
            "Connections refused or failed before carrying data",
            tcp.failures.clone(),
        );
        tcp
    }

    pub fn fail(&self, direction: Direction, reason: Reason) {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }

    /// A connection that never carried a byte, counted as ztunnel does:
    /// opened, and closed with `flags` saying why.
    pub fn refused(&self, mut labels: TcpLabels, flags: ResponseFlags) {
        self.opened.get_or_create(&labels).inc();
        labels.response_flags = flags;
        self.closed.get_or_create(&labels).inc();
    }
}

/// Istio's labels for a connection between two addresses, as `state`
/// describes them; the destination's principal is the identity of the
/// mesh workload there (over mutual TLS, what the peer must prove).
pub fn labels(
    state: &Snapshot,
    reporter: Reporter,
    src: IpAddr,
    source_principal: Option<&Identity>,
    dst: IpAddr,
    mtls: bool,
) -> TcpLabels {
    let mut labels = TcpLabels::new(reporter, mtls)
        .source(Peer::at(state, src))
        .destination(Peer::at(state, dst));
    if let Some(principal) = source_principal {
        labels = labels.source_principal(principal);
    }
    if mtls && let Some(w) = state.mesh_workload(dst) {
        labels = labels.destination_principal(&state.identity(w));
    }
    labels
}
