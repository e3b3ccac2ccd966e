//! What every request and connection through the waypoint shares, and
//! what one client connection's requests share ([`Client`]).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use strait_balance::{load::Load, outlier::Health};
use strait_config::{Config, Workload};
use strait_drain::InFlight;
use strait_hbone::Admission;
use strait_health::Board;
use strait_identity::Identity;
use strait_state::NodeState;
use strait_upstream::{Dialer, Origin};
use tokio::net::TcpStream;

use strait_trace::Context as TraceContext;

use crate::{
    breaker::Breakers,
    metrics::Metrics,
    pool::{Upstreams, Version},
    routes::Tables,
};

pub struct Waypoint {
    pub state: NodeState,
    pub namespace: String,
    pub name: String,
    /// The identity it proves to clients and to endpoints.
    pub identity: Identity,
    /// This instance, as the config has it: where its connections leave
    /// from.
    pub instance: Workload,
    /// Presents the current certificate, requires a mesh client.
    pub tls: Arc<rustls::ServerConfig>,
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    /// Endpoints outlier detection set aside.
    pub health: Health,
    /// Open connections per endpoint and round-robin turns.
    pub load: Load,
    pub board: Arc<Board>,
    /// What one client holds of the HBONE listener.
    pub admission: Admission,
    pub connect_timeout: Duration,
    /// Open HTTP connections to endpoints.
    pub upstreams: Upstreams,
    /// Services' routes, compiled once per config.
    pub tables: Tables,
    /// What each destination holds, for its circuit breakers.
    pub breakers: Breakers,
    /// What each client may have in flight.
    pub shares: crate::share::Shares,
    /// How request paths are normalized.
    pub normalization: crate::normalize::Normalization,
    /// RequestAuthentications' key sets.
    pub jwt_keys: crate::jwt::Keys,
    /// The local rate limits' token buckets.
    pub rate_buckets: crate::buckets::Buckets,
    /// External authorizers by name (meshConfig `extensionProviders`).
    pub authorizers: std::collections::BTreeMap<String, strait_config::mesh_config::Authorizer>,
    /// Connections being served: what a draining waypoint waits for.
    pub in_flight: Arc<InFlight>,
    /// Places for mirrored copies in flight.
    pub mirror_slots: Arc<tokio::sync::Semaphore>,
    /// Request spans, under the trace a request or its connection carries.
    pub tracer: strait_trace::Tracer,
    /// TLS client configurations for destinations outside the mesh.
    pub origins: crate::origination::Origins,
    /// One line per request.
    pub access: crate::access::AccessLog,
}

impl Waypoint {
    /// Whether `config` binds `authority` (what the client dialled) to
    /// this waypoint: a service address whose service uses it, or a
    /// workload address whose workload does.
    pub fn serves(&self, config: &Config, authority: SocketAddr) -> bool {
        let ours = |w: &strait_config::waypoint::Waypoint| {
            w.name == self.name && w.namespace == self.namespace
        };
        match config.service_at(authority.ip()) {
            Some(at) => config.service_waypoint(at.service).is_some_and(ours),
            None => config
                .workload_by_address(authority.ip())
                .filter(|w| config.enrolled(w))
                .and_then(|w| config.workload_waypoint(w))
                .is_some_and(ours),
        }
    }
}

impl Origin for Waypoint {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn workload(&self) -> &Workload {
        &self.instance
    }

    /// The waypoint runs in its own pod, which no agent captures: a plain
    /// connection leaves from the pod's address.
    async fn dial(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Who sent the requests of one connection, and what it dialled.
pub struct Client {
    pub identity: Identity,
    /// The client workload's address (its agent dials from the pod).
    pub addr: SocketAddr,
    /// What the client dialled: a service address, or a workload's.
    pub authority: SocketAddr,
    pub version: Version,
    /// Told once a request finds `authority` no longer bound to this
    /// waypoint: the connection closes after what is in flight.
    pub unbound: tokio::sync::Notify,
    /// The trace the client's CONNECT named: requests that carry none of
    /// their own join it.
    pub trace: Option<TraceContext>,
}
