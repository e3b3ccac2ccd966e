//! Inbound: a connection for a pod of this node, steered to the agent by
//! `sk_lookup`. HBONE (15008): check the peer, then deliver each CONNECT to
//! the app. Plaintext (15006): refuse it if the workload's PeerAuthentication
//! is STRICT, else deliver it. Either way the workload's
//! AuthorizationPolicies decide first, about the client: the peer, or the
//! client a waypoint bound to the workload says it sends for (its own
//! mTLS session with the waypoint proved that identity). Delivery connects from the pod's own
//! address, and the peer-name program makes the app see the real client.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hyper::StatusCode;
use strait_config::{MtlsMode, authz, service::Backends};
use strait_hbone::{Authority, Connect};
use strait_identity::Identity;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, info_span, warn};

use strait_state::Snapshot;
use strait_telemetry::{Direction, Peer, Reason, Reporter, ResponseFlags, relay};

use strait_upstream::reset;

use super::{Proxy, ServiceHint};
use crate::{pod::Pod, share::Way};

/// How long a claim from a waypoint this agent's config does not bind yet
/// waits for the config to catch up before it is refused.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn handle_hbone(proxy: Arc<Proxy>, pod: Arc<Pod>, stream: TcpStream, peer: SocketAddr) {
    let span = info_span!("inbound_hbone", src = %peer, dst_identity = %pod.identity);
    async move {
        let tls = pod.server_tls.clone();
        let handler = {
            let (proxy, pod) = (proxy.clone(), pod.clone());
            move |connect: Connect| on_connect(proxy.clone(), pod.clone(), connect)
        };
        let limits = proxy.hbone_limits;
        // Every client of other networks arrives from its gateway's
        // address: the gateway bounds each identity's share of it.
        let state = proxy.state.snapshot();
        let from_gateway = state
            .config
            .workload_by_address(peer.ip())
            .and_then(|w| state.config.gateway_of(w))
            .is_some_and(|g| g.network == pod.workload.network);
        drop(state);
        let admission = (&pod.admission, from_gateway);
        match strait_hbone::serve(stream, peer, tls, limits, admission, handler).await {
            Ok(()) => {}
            Err(err) if err.is_tls() => {
                proxy.metrics.fail(Direction::Inbound, Reason::Tls);
                warn!(%err, "HBONE handshake refused");
            }
            Err(err @ strait_hbone::Error::Limit { .. }) => {
                proxy.metrics.fail(Direction::Inbound, Reason::Limit);
                warn!(%err, "HBONE connection refused");
            }
            Err(err) => debug!(%err, "HBONE connection ended"),
        }
    }
    .instrument(span)
    .await
}

/// One CONNECT, on a task of its own: deliver to the app, then carry the
/// bytes (the peer's early bytes are already waiting in the stream).
async fn on_connect(proxy: Arc<Proxy>, pod: Arc<Pod>, connect: Connect) {
    let span = info_span!("inbound", src = %connect.peer_addr, dst = %connect.authority, src_identity = %connect.peer, dst_identity = %pod.identity);
    async move {
        let Ok(_stream) = &connect.admitted else {
            proxy.metrics.fail(Direction::Inbound, Reason::Limit);
            debug!("over the identity's streams to this pod: refused");
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let to = match destination(&proxy.state.snapshot(), &pod, &connect) {
            Ok(to) => to,
            Err(Reason::Loop) => {
                proxy.metrics.fail(Direction::Inbound, Reason::Loop);
                warn!("CONNECT for one of the agent's own ports: refused");
                connect.stream.refuse(StatusCode::FORBIDDEN);
                return;
            }
            Err(Reason::NotExported) => {
                proxy.metrics.fail(Direction::Inbound, Reason::NotExported);
                warn!("from another network, for what this pod does not export to other networks: refused");
                connect.stream.refuse(StatusCode::FORBIDDEN);
                return;
            }
            Err(reason) => {
                proxy.metrics.fail(Direction::Inbound, reason);
                warn!("CONNECT for an address or service that is not this pod's");
                connect.stream.refuse(StatusCode::BAD_REQUEST);
                return;
            }
        };
        if let Some(source) = &connect.source {
            debug!(network = %source.network, "from another network, through its gateway");
        }
        // Through a waypoint: the client it sends for, when it is a
        // waypoint this workload is bound to; anyone else naming a client
        // is refused.
        let client = match &connect.on_behalf_of {
            None => connect.peer.clone(),
            Some(claimed) => {
                let peer = &connect.peer;
                let bound = |config: &strait_config::Config| {
                    let workload = config.workload_by_address(to.ip()).unwrap_or(&pod.workload);
                    peer.trust_domain == config.trust_domain
                        && config.waypoint_serves(workload, &peer.namespace, &peer.service_account)
                };
                // A waypoint just unbound may still send what it took while
                // bound; one just bound may be ahead of this agent's config.
                let believed = proxy.state.held_recently(bound)
                    || proxy.state.holds_within(CATCH_UP, bound).await;
                if !believed {
                    proxy.metrics.fail(Direction::Inbound, Reason::Denied);
                    warn!(%claimed, "a peer that is no waypoint of this workload named a client: refused");
                    connect.stream.refuse(StatusCode::FORBIDDEN);
                    return;
                }
                debug!(%claimed, "through its waypoint");
                claimed.clone()
            }
        };
        // A traced CONNECT: this end's span joins the trace.
        let parent = connect
            .traceparent
            .as_deref()
            .and_then(strait_trace::Context::from_traceparent);
        let mut span = parent.and_then(|p| proxy.tracer.span("inbound", strait_trace::Kind::Server, Some(&p)));
        if let Some(span) = &mut span {
            span.set("source.principal", client.to_string());
            span.set("destination.address", to.to_string());
            span.set("destination.principal", pod.identity.to_string());
        }
        let client_ip = connect.peer_addr.ip();
        let mut labels = proxy.labels(
            Reporter::Destination,
            client_ip,
            Some(&client),
            to,
            true,
            ServiceHint::Endpoint,
        );
        let mut src = connect.peer_addr.to_string();
        let in_namespace = |namespace: &str| Peer {
            namespace: namespace.to_string(),
            ..Peer::unknown()
        };
        if client != connect.peer {
            // The TCP peer is the waypoint; the client is known by the
            // identity the waypoint proved it has.
            labels = labels.source(in_namespace(&client.namespace));
            src = format!("{src} (waypoint {}; client {client})", connect.peer);
        }
        if let Some(source) = &connect.source {
            // The TCP peer is the gateway; the client is known by its
            // identity, and by what its agent says of it when the config
            // agrees.
            let state = proxy.state.snapshot();
            let peer = match state.claimed_client(source, &connect.peer) {
                Some(w) => Peer::of(&state, w),
                None => in_namespace(&connect.peer.namespace),
            };
            src = format!(
                "{src} (gateway; client {} on network {})",
                peer.workload, source.network
            );
            labels = labels.source(peer);
        }
        // A refusal counts against the client, not the waypoint or
        // gateway it came through.
        if !authorized(&proxy, &pod, Some(&client), client_ip, to) {
            proxy.metrics.tcp.refused(labels, ResponseFlags::Deny);
            connect.stream.refuse(StatusCode::FORBIDDEN);
            return;
        }
        let Some(_held) = proxy.admit(&pod, Way::Inbound) else {
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let Some((mut app, local)) = deliver(&proxy, &pod, to, client_ip).await else {
            proxy.metrics.fail(Direction::Inbound, Reason::Upstream);
            proxy.metrics.tcp.refused(labels, ResponseFlags::Connect);
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        match connect.stream.accept() {
            Ok(mut tunnel) => {
                let dst = to.to_string();
                let closed = proxy.track_inbound(&pod, Some(&client), client_ip, to);
                let copy = relay(&proxy.metrics.tcp, labels, &mut tunnel, &mut app, &src, &dst);
                let result = tokio::select! {
                    result = copy => result,
                    () = closed.denied() => Err(std::io::Error::other("denied by a policy change")),
                };
                // A reset on either side is a reset on the other.
                if let Err(err) = result {
                    debug!(%err, "inbound connection ended abnormally");
                    tunnel.reset();
                    reset(app);
                }
            }
            Err(err) => debug!(%err, "the tunnel did not open"),
        }
        proxy.maps.clear_peer_name(pod.netns_cookie(), local);
    }
    .instrument(span)
    .await
}

/// Where a CONNECT leads in this pod: its own `address:port`; or, through
/// an east-west gateway, `service host:port` of a service this pod is an
/// endpoint of, at the pod's address of the connection's family and the
/// port the service port targets. Never one of the agent's own ports
/// ([`Reason::Loop`]); from another network, only a port of a service
/// exported to other networks ([`Reason::NotExported`]).
fn destination(state: &Snapshot, pod: &Pod, connect: &Connect) -> Result<SocketAddr, Reason> {
    // Agents name the client's network only when they come through a
    // gateway.
    let across = connect.source.is_some();
    let Some(to) = leads_to(state, pod, connect, across) else {
        // A service of this pod's that is not exported: refused, not
        // misdirected.
        return Err(
            if across && leads_to(state, pod, connect, false).is_some() {
                Reason::NotExported
            } else {
                Reason::Misdirected
            },
        );
    };
    if super::loops_back(pod, to) {
        return Err(Reason::Loop);
    }
    if across && matches!(connect.authority, Authority::Addr(_)) {
        let workload = state
            .config
            .workload_by_address(to.ip())
            .unwrap_or(&pod.workload);
        if !state.config.exported_port(workload, to.port()) {
            return Err(Reason::NotExported);
        }
    }
    Ok(to)
}

fn leads_to(state: &Snapshot, pod: &Pod, connect: &Connect, across: bool) -> Option<SocketAddr> {
    let mine = |ip: &IpAddr| pod.workload.addresses.contains(ip);
    match &connect.authority {
        Authority::Addr(addr) => mine(&addr.ip()).then_some(*addr),
        Authority::Host { host, port } => {
            let v4 = connect.peer_addr.is_ipv4();
            let ip = pod
                .workload
                .addresses
                .iter()
                .copied()
                .find(|a| a.is_ipv4() == v4)?;
            state
                .config
                .services_for_host(host)
                .filter(|service| !across || state.config.global(service))
                .find_map(|service| {
                    let at = strait_config::service::ServiceAt { service, host };
                    match state.config.backends(at, *port).ok()? {
                        Backends::Endpoints(endpoints) => endpoints
                            .iter()
                            .find(|e| e.workload.addresses.iter().any(mine))
                            .map(|e| SocketAddr::new(ip, e.addr.port())),
                        _ => None,
                    }
                })
        }
    }
}

pub async fn handle_plaintext(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    client: TcpStream,
    peer: SocketAddr,
) {
    // sk_lookup kept the original destination as the local address.
    let Ok(original) = client.local_addr() else {
        return;
    };
    let span =
        info_span!("inbound_plaintext", src = %peer, dst = %original, dst_identity = %pod.identity);
    async move {
        // sk_lookup steers only connections for the pod's addresses here;
        // one for loopback (the pod's own app dialling 127.0.0.1:15006) or
        // for an agent port, or our own delivery coming back, would be
        // delivered into the agent again, and again.
        if super::loops_back(&pod, original) || pod.workload.addresses.contains(&peer.ip()) {
            proxy.metrics.fail(Direction::Inbound, Reason::Loop);
            warn!("refusing a connection that would loop into the agent");
            reset(client);
            return;
        }
        let Some(_held) = proxy.admit(&pod, Way::Inbound) else {
            reset(client);
            return;
        };
        let state = proxy.state.snapshot();
        let workload = state
            .config
            .workload_by_address(original.ip())
            .unwrap_or(&pod.workload);
        if state.config.mtls_mode(workload, original.port()) == MtlsMode::Strict {
            proxy.metrics.fail(Direction::Inbound, Reason::StrictMtls);
            warn!("plaintext refused: PeerAuthentication is STRICT");
            reset(client);
            return;
        }
        let labels = proxy.labels(
            Reporter::Destination,
            peer.ip(),
            None,
            original,
            false,
            ServiceHint::Endpoint,
        );
        if !authorized(&proxy, &pod, None, peer.ip(), original) {
            proxy.metrics.tcp.refused(labels, ResponseFlags::Deny);
            reset(client);
            return;
        }
        let _ = client.set_nodelay(true);
        let Some((app, local)) = deliver(&proxy, &pod, original, peer.ip()).await else {
            proxy.metrics.fail(Direction::Inbound, Reason::Upstream);
            proxy.metrics.tcp.refused(labels, ResponseFlags::Connect);
            reset(client);
            return;
        };
        let (src, dst) = (peer.to_string(), original.to_string());
        let (mut client, mut app) = (client, app);
        let closed = proxy.track_inbound(&pod, None, peer.ip(), original);
        let copy = relay(
            &proxy.metrics.tcp,
            labels,
            &mut client,
            &mut app,
            &src,
            &dst,
        );
        let result = tokio::select! {
            result = copy => result,
            () = closed.denied() => Err(std::io::Error::other("denied by a policy change")),
        };
        proxy.maps.clear_peer_name(pod.netns_cookie(), local);
        if let Err(err) = result {
            debug!(%err, "inbound connection ended abnormally");
            reset(client);
            reset(app);
        }
    }
    .instrument(span)
    .await
}

/// Whether the AuthorizationPolicies in force let `peer` (none over
/// plaintext) at `client_ip` reach `to`. A new connection refused is
/// counted by the caller, which knows who the client is; an open one
/// re-judged was counted when it opened. The workload is looked up in the
/// current config, so relabelling it changes which policies select it.
fn authorized(
    proxy: &Proxy,
    pod: &Pod,
    peer: Option<&Identity>,
    client_ip: IpAddr,
    to: SocketAddr,
) -> bool {
    let state = proxy.state.snapshot();
    let workload = state
        .config
        .workload_by_address(to.ip())
        .unwrap_or(&pod.workload);
    let principal = peer.map(Identity::principal);
    let decision = state.config.authorize(
        workload,
        &authz::Connection {
            principal: principal.as_deref(),
            namespace: peer.map(|p| p.namespace.as_str()),
            source_ip: client_ip,
            destination_ip: to.ip(),
            destination_port: to.port(),
            http: None,
        },
    );
    for policy in &decision.audited {
        info!(%policy, allowed = decision.allowed, "AUDIT policy matched");
    }
    if !decision.allowed {
        proxy.metrics.fail(Direction::Inbound, Reason::Denied);
        match &decision.policy {
            Some(policy) => warn!(%policy, "denied by DENY policy"),
            None => warn!("denied: no ALLOW policy matches"),
        }
    }
    decision.allowed
}

/// Connects to the app at `to` from the pod's own address, having first told
/// the peer-name program that this connection's client is `client_ip`.
/// Returns the connection and its local address (the peer-name key).
async fn deliver(
    proxy: &Proxy,
    pod: &Pod,
    to: SocketAddr,
    client_ip: IpAddr,
) -> Option<(TcpStream, SocketAddr)> {
    let mut local = None;
    let result = pod
        .connect(to, Some(to.ip()), |bound| {
            local = Some(bound);
            // The app may accept() before connect() returns here.
            let client = SocketAddr::new(client_ip, bound.port());
            if let Err(err) = proxy.maps.set_peer_name(pod.netns_cookie(), bound, client) {
                warn!(%err, "recording the client address");
            }
        })
        .await;
    match (result, local) {
        (Ok(app), Some(local)) => Some((app, local)),
        (Err(err), local) => {
            if let Some(local) = local {
                proxy.maps.clear_peer_name(pod.netns_cookie(), local);
            }
            debug!(%err, "the app did not accept");
            None
        }
        (Ok(_), None) => None,
    }
}

/// Inbound connections while they are open, so a policy change can close
/// those it now denies (as ztunnel does): a DENY written for an attacker
/// must not spare the connection the attacker already has.
#[derive(Default)]
pub struct OpenConnections {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, OpenConnection>>,
}

#[derive(Clone)]
struct OpenConnection {
    pod: Arc<Pod>,
    peer: Option<Identity>,
    client_ip: IpAddr,
    to: SocketAddr,
    close: Arc<tokio::sync::Notify>,
}

/// One connection's entry; leaves the registry when dropped.
pub struct Tracked<'a> {
    registry: &'a OpenConnections,
    id: u64,
    close: Arc<tokio::sync::Notify>,
}

impl Tracked<'_> {
    /// Completes when a policy change denies the connection.
    pub async fn denied(&self) {
        self.close.notified().await
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, OpenConnection>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Proxy {
    /// Registers an inbound connection that was just authorized.
    pub fn track_inbound(
        &self,
        pod: &Arc<Pod>,
        peer: Option<&Identity>,
        client_ip: IpAddr,
        to: SocketAddr,
    ) -> Tracked<'_> {
        let registry = &self.open_inbound;
        let id = registry
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = Arc::new(tokio::sync::Notify::new());
        registry.lock().insert(
            id,
            OpenConnection {
                pod: pod.clone(),
                peer: peer.cloned(),
                client_ip,
                to,
                close: close.clone(),
            },
        );
        Tracked {
            registry,
            id,
            close,
        }
    }

    /// Judges every open inbound connection by the policies now in force
    /// and closes (resets) those they deny; returns how many.
    pub fn enforce_policies(&self) -> usize {
        let open: Vec<OpenConnection> = self.open_inbound.lock().values().cloned().collect();
        let mut closed = 0;
        for c in open {
            if !authorized(self, &c.pod, c.peer.as_ref(), c.client_ip, c.to) {
                // notify_one keeps the permit if the task is not waiting yet.
                c.close.notify_one();
                closed += 1;
            }
        }
        closed
    }
}
