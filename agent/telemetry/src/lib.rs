//! Connection telemetry as Istio users read it: the `istio_tcp_*` metrics
//! with Istio's label set, failures by reason, and [`relay`], which
//! carries an established connection's bytes, counts them and writes one
//! access-log line when it closes. The agent, the east-west gateway and
//! the waypoint all count connections through this crate.
pub mod peer;
pub mod relay;

use std::net::IpAddr;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use strait_state::Snapshot;

pub use peer::Peer;
pub use relay::relay;

/// `reporter`: which end of the connection counted it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
    /// An east-west gateway, between the two.
    Gateway,
    /// A waypoint, between the two (Istio's value).
    Waypoint,
}

/// The label set of Istio's `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_cluster: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
    pub request_protocol: String,
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
    Reporter { Source => "source", Destination => "destination", Gateway => "gateway", Waypoint => "waypoint" }
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
            "Bytes sent to the destination",
            tcp.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
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
}

/// Istio's labels for a connection between two addresses, as `state`
/// describes them.
pub fn labels(
    state: &Snapshot,
    reporter: Reporter,
    src: IpAddr,
    source_principal: String,
    dst: IpAddr,
    mtls: bool,
) -> TcpLabels {
    let describe = |ip: IpAddr| {
        state
            .workload(ip)
            .map(|w| (w.name.clone(), w.namespace.clone()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()))
    };
    let (source_workload, source_workload_namespace) = describe(src);
    let (destination_workload, destination_workload_namespace) = describe(dst);
    let cluster_of = |ip: IpAddr| {
        state
            .workload(ip)
            .map(|w| state.cluster(w))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let destination_principal = if mtls {
        state
            .mesh_workload(dst)
            .map(|w| state.identity(w).to_string())
            .unwrap_or_else(|| "unknown".into())
    } else {
        "unknown".into()
    };
    TcpLabels {
        reporter,
        source_workload,
        source_workload_namespace,
        source_principal,
        source_cluster: cluster_of(src),
        destination_workload,
        destination_workload_namespace,
        destination_principal,
        destination_cluster: cluster_of(dst),
        connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
        request_protocol: "tcp".into(),
    }
}
