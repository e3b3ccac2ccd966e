//! The node proxy: what happens to a connection once capture handed it to
//! the agent.
//!
//! - [`outbound`]: from a pod of this node (port 15001) to its original
//!   destination, over HBONE when that is a mesh workload;
//! - [`inbound`]: to a pod of this node, over HBONE (15008) or plaintext
//!   (15006, subject to PeerAuthentication), delivered with the client's
//!   address;
//!
//! Where a connection goes is [`strait_route`]'s choice, opening the way
//! there [`strait_upstream`]'s, and carrying and counting its bytes
//! [`strait_telemetry`]'s.
pub mod inbound;
pub mod outbound;

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use strait_capture::Maps;
use strait_config::Endpoints;
use strait_drain::InFlight;
use strait_ebpf_common::port;
use strait_identity::Identity;
use strait_state::{NodeState, Snapshot};
use strait_telemetry::{Direction, Reason, Reporter, TcpLabels};
use strait_upstream::Dialer;
use tracing::debug;

use crate::{
    metrics::Metrics,
    pod::Pod,
    share::{Held, Over, Way},
};

/// Everything a proxied connection needs, shared by all of them.
pub struct Proxy {
    pub state: NodeState,
    pub maps: Arc<Maps>,
    /// Pooled HBONE connections, TLS configurations and certificates.
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    /// Per endpoint attempt, outbound.
    pub connect_timeout: std::time::Duration,
    /// Outlier detection's view of the endpoints.
    pub health: Arc<strait_balance::outlier::Health>,
    /// Open connections per endpoint and round-robin turns.
    pub load: Arc<strait_balance::load::Load>,
    /// Readiness of probed workloads, as their agents published it.
    pub board: Arc<strait_health::Board>,
    /// Inbound connections while open, re-judged on policy changes.
    pub open_inbound: inbound::OpenConnections,
    /// What one peer may hold of a pod's HBONE listener.
    pub hbone_limits: strait_hbone::Limits,
    /// Accepted connections not finished yet: what a draining agent waits
    /// for.
    pub in_flight: Arc<InFlight>,
    /// Connection spans: an outbound connection may start a trace, an
    /// inbound one joins the trace its CONNECT names.
    pub tracer: strait_trace::Tracer,
}

/// Whether delivering to `to` for `pod` would come back into the agent:
/// anything but one of the pod's own addresses, or a port the agent
/// listens on in the pod. Such a connection is refused, never delivered:
/// a loop is a chain of connections that ends only when the agent has no
/// descriptor left.
pub fn loops_back(pod: &Pod, to: SocketAddr) -> bool {
    !pod.workload.addresses.contains(&to.ip()) || port::is_pod_listener(to.port())
}

impl Proxy {
    /// A place for one more connection of `pod` going `way`: refused, and
    /// counted, past the pod's cap or the node's.
    pub fn admit(&self, pod: &Pod, way: Way) -> Option<Held> {
        let over = match pod.share.take(way) {
            Ok(held) => return Some(held),
            Err(over) => over,
        };
        let direction = match way {
            Way::Outbound => Direction::Outbound,
            Way::Inbound => Direction::Inbound,
        };
        let reason = match over {
            Over::Pod => Reason::PodLimit,
            Over::Node => Reason::NodeLimit,
        };
        self.metrics.fail(direction, reason);
        // Counted rather than logged each time: a flood would fill the log.
        debug!(?way, ?over, "connection refused: over its cap");
        None
    }

    /// Forgets what belonged to pods, workloads and services that are gone:
    /// pooled connections and TLS configurations of identities no longer on
    /// this node or in the mesh, endpoint health of addresses no longer in
    /// the config, round-robin turns of services that left. What the proxy
    /// keeps is then bounded by what exists, however much churns.
    pub fn prune(&self, state: &Snapshot, local: &BTreeSet<Identity>) {
        let config = &state.config;
        let remote: HashSet<Identity> = config
            .workloads
            .iter()
            .filter(|w| config.enrolled(w))
            .map(|w| state.identity(w))
            .collect();
        self.dialer
            .pool
            .retain(|k| local.contains(&k.source) && remote.contains(&k.destination));
        self.dialer
            .clients
            .retain(|source, destination| local.contains(source) && remote.contains(destination));
        let listed: HashSet<IpAddr> = config
            .services
            .iter()
            .filter_map(|s| match &s.endpoints {
                Endpoints::Static(entries) => Some(entries),
                _ => None,
            })
            .flatten()
            .flat_map(|w| w.addresses.iter().copied())
            .collect();
        self.health.retain(|addr| {
            config.workload_by_address(addr.ip()).is_some() || listed.contains(&addr.ip())
        });
        let services: HashSet<String> = config
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        self.load.retain_services(|s| services.contains(s));
    }

    /// Istio's labels for a connection between two addresses, as the
    /// current config describes them.
    fn labels(
        &self,
        reporter: Reporter,
        src: IpAddr,
        source_principal: Option<&Identity>,
        dst: SocketAddr,
        mtls: bool,
        service: ServiceHint,
    ) -> TcpLabels {
        let state = self.state.snapshot();
        let labels =
            strait_telemetry::labels(&state, reporter, src, source_principal, dst.ip(), mtls);
        let config = &state.config;
        let service = match service {
            ServiceHint::Dialled(ip) => config.service_at(ip).map(|at| at.service),
            ServiceHint::Endpoint => config
                .workload_by_address(dst.ip())
                .and_then(|w| config.service_for(w, dst.port())),
        };
        labels.service(service)
    }
}

/// Where a connection's `destination_service` comes from.
#[derive(Clone, Copy)]
enum ServiceHint {
    /// The address the client dialled: the service there, if any.
    Dialled(IpAddr),
    /// The destination's services at its port (the server's end knows
    /// only the endpoint).
    Endpoint,
}
