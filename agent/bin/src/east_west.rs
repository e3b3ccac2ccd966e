//! The east-west gateway role (`--role east-west-gateway`): one per gateway
//! node of a network, HBONE on the Gateway's addresses. It terminates the
//! outer tunnel of a client on another network (mutual TLS: the client
//! must hold a mesh identity), checks what the CONNECT asks for (a service
//! exported to other networks, or a workload of this network), picks an
//! endpoint in this network by the same locality rules as the node proxy,
//! and splices the tunnel to that endpoint's HBONE port: the inner session
//! passes through still encrypted, from the client to the destination.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hyper::StatusCode;
use strait_balance::{Client, Simple, outlier::Health};
use strait_config::{EastWestGateway, Workload, service::ServiceAt};
use strait_ebpf_common::port;
use strait_hbone::{Admission, Authority, Connect};
use strait_health::Board;
use strait_identity::{CertManager, Identity};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use strait_route::{Plan, plan};
use strait_state::{NodeState, Snapshot};
use strait_telemetry::{
    Direction, Peer, Reason, Reporter, TcpLabels,
    placement::{Role, WorkloadInfo},
    relay,
};
use strait_upstream::reset;

use crate::metrics::Metrics;

/// Endpoints tried for one CONNECT.
const ATTEMPTS: usize = 4;

/// A pod's HBONE limits, widened for a gateway's peers: whole networks,
/// behind their NAT, so every client of a network may share one source
/// address, and every replica of a workload (on every node, each with its
/// own pooled connections) its identity. Still bounded: what one address
/// or one identity may hold.
pub fn limits() -> strait_hbone::Limits {
    strait_hbone::Limits {
        handshakes_per_ip: 512,
        ..strait_hbone::Limits::default()
    }
}

pub struct Gateway {
    pub state: NodeState,
    pub namespace: String,
    pub name: String,
    pub identity: Identity,
    pub certs: Arc<CertManager>,
    /// Presents the gateway's current certificate, whichever it is now.
    pub tls: Arc<rustls::ServerConfig>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    pub board: Arc<Board>,
    pub limits: strait_hbone::Limits,
    pub admission: Admission,
    pub connect_timeout: Duration,
}

impl Gateway {
    /// This gateway as the config has it now.
    fn object<'a>(&self, state: &'a Snapshot) -> Option<&'a EastWestGateway> {
        state
            .config
            .east_west_gateways
            .iter()
            .find(|g| g.namespace == self.namespace && g.name == self.name)
    }

    fn peer(&self, state: &Snapshot, me: &EastWestGateway) -> Peer {
        named(state, me).0
    }
}

/// A gateway as Istio's metrics name it: as its instances' workload, else
/// (no instance in the config) by the Gateway's name; with that instance.
fn named<'a>(state: &'a Snapshot, me: &EastWestGateway) -> (Peer, Option<&'a Workload>) {
    let config = &state.config;
    match config
        .workloads
        .iter()
        .find(|w| config.gateway_of(w).is_some_and(|g| std::ptr::eq(g, me)))
    {
        Some(w) => (Peer::of(state, w), Some(w)),
        None => (
            Peer {
                workload: me.name.clone(),
                namespace: me.namespace.clone(),
                app: me.name.clone(),
                canonical_service: me.name.clone(),
                ..Peer::unknown()
            },
            None,
        ),
    }
}

/// Keeps `strait_workload_info` naming this gateway as the config has it.
pub struct Placed {
    pub state: NodeState,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub name: String,
}

impl Placed {
    pub fn update(&self) {
        let state = self.state.snapshot();
        let Some(me) = state
            .config
            .east_west_gateways
            .iter()
            .find(|g| g.namespace == self.namespace && g.name == self.name)
        else {
            self.metrics.placement.set([]);
            return;
        };
        let (peer, instance) = named(&state, me);
        let locality = instance.map(|w| w.locality.clone()).unwrap_or_default();
        self.metrics.placement.set([WorkloadInfo::new(
            peer,
            &me.network,
            &locality,
            Role::Gateway,
        )]);
    }
}

impl strait_state::reload::Applied for Placed {
    async fn applied(&self) -> usize {
        self.update();
        0
    }
}

/// Binds the gateway's addresses that are on this host, at its HBONE port;
/// at least one must be.
pub async fn bind(gateway: &EastWestGateway) -> Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for ip in &gateway.addresses {
        let addr = SocketAddr::new(*ip, gateway.port);
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(err) if err.kind() == std::io::ErrorKind::AddrNotAvailable => {
                debug!(%addr, "not an address of this host")
            }
            Err(err) => return Err(err).with_context(|| format!("binding {addr}")),
        }
    }
    anyhow::ensure!(
        !listeners.is_empty(),
        "Gateway {}/{}: none of its addresses ({:?}) is on this host",
        gateway.namespace,
        gateway.name,
        gateway.addresses
    );
    Ok(listeners)
}

/// Accepts on `listener` until aborted.
pub fn serve(gateway: Arc<Gateway>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    tokio::spawn(handle(gateway.clone(), tcp, peer));
                }
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn handle(gateway: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let span = info_span!("gateway", src = %peer, gateway = %gateway.identity);
    async move {
        let tls = gateway.tls.clone();
        let handler = {
            let gateway = gateway.clone();
            move |connect: Connect| on_connect(gateway.clone(), connect)
        };
        let admission = (&gateway.admission, false);
        match strait_hbone::serve(tcp, peer, tls, gateway.limits, admission, handler).await {
            Ok(()) => {}
            Err(err) if err.is_tls() => {
                gateway.metrics.fail(Direction::Gateway, Reason::Tls);
                warn!(%err, "refused: no mesh certificate");
            }
            Err(err @ strait_hbone::Error::Limit { .. }) => {
                gateway.metrics.fail(Direction::Gateway, Reason::Limit);
                warn!(%err, "refused");
            }
            Err(err) => debug!(%err, "HBONE connection ended"),
        }
    }
    .instrument(span)
    .await
}

/// One outer CONNECT: where it may go, then the splice.
async fn on_connect(gateway: Arc<Gateway>, connect: Connect) {
    let span = info_span!("gateway_connect", src = %connect.peer_addr, src_identity = %connect.peer, authority = %connect.authority);
    async move {
        // One identity's splices are bounded: each pins a connection to
        // an endpoint and, until the inner handshake ends, one of its
        // agent's handshake places for this gateway.
        let Ok(_stream) = &connect.admitted else {
            gateway.metrics.fail(Direction::Gateway, Reason::Limit);
            debug!("over the identity's splices: refused");
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let state = gateway.state.snapshot();
        let Some(me) = gateway.object(&state) else {
            warn!("this gateway is no longer in the config");
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let targets = match targets(&gateway, &state, me, &connect.authority) {
            Ok(targets) => targets,
            Err((reason, why)) => {
                gateway.metrics.fail(Direction::Gateway, reason);
                warn!(why, "refused");
                connect.stream.refuse(StatusCode::FORBIDDEN);
                return;
            }
        };
        let mut upstream = None;
        for (addr, workload) in targets {
            let hbone = SocketAddr::new(addr.ip(), port::HBONE);
            let dial = tokio::time::timeout(gateway.connect_timeout, TcpStream::connect(hbone));
            match dial.await {
                Ok(Ok(tcp)) => {
                    gateway.health.success(addr);
                    upstream = Some((tcp, hbone, workload));
                    break;
                }
                Ok(Err(err)) => debug!(%err, endpoint = %hbone, "endpoint refused"),
                Err(_) => debug!(endpoint = %hbone, "endpoint did not answer"),
            }
            let settings = strait_balance::outlier::Settings::from_rule(None);
            if gateway
                .health
                .failure(addr, &[addr], settings, Instant::now())
            {
                warn!(endpoint = %addr, "endpoint set aside");
            }
        }
        let Some((mut tcp, hbone, workload)) = upstream else {
            gateway.metrics.fail(Direction::Gateway, Reason::Upstream);
            warn!("no endpoint answered");
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let _ = tcp.set_nodelay(true);
        let mut tunnel = match connect.stream.accept() {
            Ok(t) => t,
            Err(err) => {
                debug!(%err, "the tunnel did not open");
                return;
            }
        };
        // As Istio's gateways report: the leg it opens, from the gateway
        // (`reporter="source"`) to the destination; the client's own agent
        // and the destination's report the whole connection.
        let service = match &connect.authority {
            Authority::Host { host, .. } => state
                .config
                .services_for_host(host)
                .find(|s| state.config.global(s)),
            Authority::Addr(addr) => state.config.service_for(&workload, addr.port()),
        };
        let labels = TcpLabels::new(Reporter::Source, true)
            .source(gateway.peer(&state, me))
            .source_principal(&gateway.identity)
            .destination(Peer::of(&state, &workload))
            .destination_principal(&state.identity(&workload))
            .service(service);
        // The client is no label of the gateway's leg: its log names it.
        let src = format!("{} ({})", connect.peer_addr, connect.peer);
        let dst = format!("{} -> {hbone}", connect.authority);
        if relay(
            &gateway.metrics.tcp,
            labels,
            &mut tunnel,
            &mut tcp,
            &src,
            &dst,
        )
        .await
        .is_err()
        {
            tunnel.reset();
            reset(tcp);
        }
    }
    .instrument(span)
    .await
}

type Refusal = (Reason, String);

/// The endpoints of this network a CONNECT may go to, in the order to try
/// them, or why it may go nowhere.
fn targets(
    gateway: &Gateway,
    state: &Snapshot,
    me: &EastWestGateway,
    authority: &Authority,
) -> Result<Vec<(SocketAddr, Workload)>, Refusal> {
    let config = &state.config;
    match authority {
        Authority::Addr(addr) if port::is_pod_listener(addr.port()) => Err((
            Reason::Loop,
            format!("{addr}: one of the agents' own ports"),
        )),
        Authority::Addr(addr) => {
            let Some(w) = state
                .mesh_workload(addr.ip())
                .filter(|w| w.network == me.network)
            else {
                return Err((
                    Reason::OutsideNetwork,
                    format!("{} is not a workload of network {}", addr.ip(), me.network),
                ));
            };
            // A workload is reached from other networks at the ports of
            // the services it exports, nothing else.
            if !config.exported_port(w, addr.port()) {
                return Err((
                    Reason::NotExported,
                    format!("{addr}: no service exported to other networks has this port of it"),
                ));
            }
            Ok(vec![(*addr, w.clone())])
        }
        Authority::Host { host, port } => {
            let service = config
                .services_for_host(host)
                .find(|s| config.global(s))
                .ok_or_else(|| {
                    (
                        Reason::NotExported,
                        format!("{host}: no service of that name is exported to other networks"),
                    )
                })?;
            let at = ServiceAt { service, host };
            // The gateway as the client: its node's topology.
            let node = config.nodes.get(&*state.node);
            let locality = node.map(|n| n.locality.clone()).unwrap_or_default();
            let labels = node.map(|n| n.labels.clone()).unwrap_or_default();
            let cluster_name = labels
                .get(strait_balance::CLUSTER)
                .cloned()
                .unwrap_or_default();
            let who = Client {
                locality: &locality,
                network: &me.network,
                cluster: &cluster_name,
                node: &state.node,
                labels: &labels,
            };
            let none = || {
                (
                    Reason::NoEndpoints,
                    format!("{host}:{port}: no endpoint in network {}", me.network),
                )
            };
            let planned = plan(
                state,
                &gateway.health,
                &gateway.board,
                &who,
                &me.namespace,
                at,
                *port,
            )
            .map_err(|err| (Reason::NoEndpoints, err.to_string()))?;
            let Plan::Endpoints {
                ranked,
                ejected,
                not_ready,
                simple,
                ..
            } = planned
            else {
                return Err(none());
            };
            let ranked: Vec<_> = ranked
                .into_iter()
                .filter(|r| r.endpoint.workload.network == me.network)
                .filter(|r| !not_ready.contains_key(&r.endpoint.addr))
                .collect();
            let healthy: Vec<_> = ranked
                .iter()
                .filter(|r| !ejected.contains(&r.endpoint.addr))
                .copied()
                .collect();
            let ranked = if healthy.is_empty() { ranked } else { healthy };
            let simple = match simple {
                Simple::RoundRobin | Simple::LeastRequest => Simple::Random,
                other => other,
            };
            let mut out: Vec<(SocketAddr, Workload)> =
                strait_balance::order(ranked, simple, 0, &|_| 0, || 1.0 - fastrand::f64())
                    .into_iter()
                    .map(|e| (e.addr, e.workload.clone()))
                    .collect();
            out.truncate(ATTEMPTS);
            if out.is_empty() {
                return Err(none());
            }
            Ok(out)
        }
    }
}

/// Runs the role until SIGTERM or SIGINT.
/// Serves until a signal: on `listen` when given, else on the Gateway's
/// addresses that are on this host.
pub async fn run(
    gateway: Arc<Gateway>,
    listen: &[SocketAddr],
    admin_addrs: &[SocketAddr],
) -> Result<()> {
    let state = gateway.state.snapshot();
    let me = gateway.object(&state).cloned().with_context(|| {
        format!(
            "Gateway {}/{} of class {} is not in the config",
            gateway.namespace,
            gateway.name,
            strait_config::EAST_WEST_CLASS
        )
    })?;
    gateway
        .certs
        .ensure(&gateway.identity, Duration::from_secs(30))
        .await
        .with_context(|| format!("getting a certificate for {}", gateway.identity))?;
    let listeners = if listen.is_empty() {
        bind(&me).await?
    } else {
        let mut listeners = Vec::new();
        for addr in listen {
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--listen {addr}"))?,
            );
        }
        listeners
    };
    let ready = Arc::new(AtomicBool::new(false));
    let admin = {
        let metrics = gateway.metrics.clone();
        strait_http::bind_stats(
            admin_addrs,
            "gateway admin",
            Arc::new(move || metrics.encode()),
            ready.clone(),
        )
        .await
        .context("the gateway's admin listeners")?
    };
    let bound: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| serve(gateway.clone(), l))
        .collect();
    ready.store(true, Ordering::Release);
    info!(gateway = %format!("{}/{}", me.namespace, me.name), network = %me.network, identity = %gateway.identity, ?bound, "east-west gateway ready");
    strait_drain::signalled()
        .await
        .context("installing the signal handlers")?;
    ready.store(false, Ordering::Release);
    for task in tasks {
        task.abort();
    }
    for task in admin {
        task.abort();
    }
    Ok(())
}
