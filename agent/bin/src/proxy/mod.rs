//! The node proxy: what happens to a connection once capture handed it to
//! the agent.
//!
//! - [`outbound`]: from a pod of this node (port 15001) to its original
//!   destination, over HBONE when that is a mesh workload;
//! - [`inbound`]: to a pod of this node, over HBONE (15008) or plaintext
//!   (15006, subject to PeerAuthentication), delivered with the client's
//!   address;
//! - [`route`]: where an outbound connection goes (service addresses to
//!   endpoints);
//! - [`remote`]: endpoints on other networks, through their east-west
//!   gateways (double HBONE);
//! - [`relay`]: the bytes, metrics and access log;
//! - [`share`]: what one pod may hold of the agent.
pub mod inbound;
pub mod outbound;
pub mod relay;
pub mod remote;
pub mod route;
pub mod share;

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use strait_capture::Maps;
use strait_config::Endpoints;
use strait_ebpf_common::port;
use strait_hbone::Pool;
use strait_identity::Identity;
use strait_identity::tls::ClientConfigs;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tracing::{debug, warn};

use self::share::{Held, Over, Way};
use crate::{
    metrics::{Direction, Metrics, Reason, Reporter, TcpLabels},
    pods::{Listeners, Pod},
    state::{NodeState, Snapshot},
};

/// Everything a proxied connection needs, shared by all of them.
pub struct Proxy {
    pub state: NodeState,
    pub maps: Arc<Maps>,
    pub clients: ClientConfigs,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// Per endpoint attempt, outbound.
    pub connect_timeout: std::time::Duration,
    /// Outlier detection's view of the endpoints.
    pub health: Arc<strait_balance::outlier::Health>,
    /// Open connections per endpoint and round-robin turns.
    pub load: Arc<strait_balance::load::Load>,
    /// Readiness of probed workloads, as their agents published it.
    pub board: Arc<strait_health::Board>,
    /// Certificates of this node's workloads.
    pub certs: Arc<strait_identity::CertManager>,
    /// Inbound connections while open, re-judged on policy changes.
    pub open_inbound: inbound::OpenConnections,
    /// What one peer may hold of a pod's HBONE listener.
    pub hbone_limits: strait_hbone::Limits,
    /// Accepted connections not finished yet: what a draining agent waits
    /// for.
    pub in_flight: Arc<InFlight>,
}

/// Whether delivering to `to` for `pod` would come back into the agent:
/// anything but one of the pod's own addresses, or a port the agent
/// listens on in the pod. Such a connection is refused, never delivered:
/// a loop is a chain of connections that ends only when the agent has no
/// descriptor left.
pub fn loops_back(pod: &Pod, to: SocketAddr) -> bool {
    !pod.workload.addresses.contains(&to.ip()) || port::is_pod_listener(to.port())
}

/// A count of connections being handled, and a way to wait until none is.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one connection while it lives.
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once no connection is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
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

    /// Starts serving a pod's listeners; aborting the tasks closes them
    /// (connections already accepted go on).
    pub fn serve(self: &Arc<Self>, pod: Arc<Pod>, listeners: Listeners) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for listener in listeners.outbound {
            tasks.push(self.accept_loop(listener, pod.clone(), outbound::handle));
        }
        for listener in listeners.hbone {
            tasks.push(self.accept_loop(listener, pod.clone(), inbound::handle_hbone));
        }
        for listener in listeners.plaintext {
            tasks.push(self.accept_loop(listener, pod.clone(), inbound::handle_plaintext));
        }
        for listener in listeners.dns_tcp {
            tasks.push(self.accept_loop(listener, pod.clone(), crate::dns::handle_tcp));
        }
        for socket in listeners.dns_udp {
            tasks.push(crate::dns::serve_udp(self.clone(), pod.clone(), socket));
        }
        tasks
    }

    fn accept_loop<F, Fut>(
        self: &Arc<Self>,
        listener: TcpListener,
        pod: Arc<Pod>,
        handle: F,
    ) -> JoinHandle<()>
    where
        F: Fn(Arc<Proxy>, Arc<Pod>, tokio::net::TcpStream, std::net::SocketAddr) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let proxy = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let guard = proxy.in_flight.enter();
                        let work = handle(proxy.clone(), pod.clone(), stream, peer);
                        tokio::spawn(async move {
                            work.await;
                            drop(guard);
                        });
                    }
                    Err(err) => {
                        warn!(%err, pod = %pod.workload.name, "accept failed");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        })
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
        self.pool
            .retain(|k| local.contains(&k.source) && remote.contains(&k.destination));
        self.clients
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

    /// Istio's labels for a connection between two addresses.
    fn labels(
        &self,
        reporter: Reporter,
        src: IpAddr,
        source_principal: String,
        dst: IpAddr,
        mtls: bool,
    ) -> TcpLabels {
        let state = self.state.snapshot();
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
                .map(|w| route::cluster(&state, w))
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
}

/// The workload a client that came through an east-west gateway says it
/// is (its agent's word, in the CONNECT), believed only when the config
/// has a workload of that name under the identity its TLS session proved.
pub fn claimed_client<'a>(
    state: &'a Snapshot,
    source: &strait_hbone::Source,
    peer: &Identity,
) -> Option<&'a strait_config::Workload> {
    let name = source.workload.as_deref()?;
    state
        .config
        .workloads
        .iter()
        .find(|w| w.name == name && w.namespace == peer.namespace && state.identity(w) == *peer)
}

/// Closes `stream` with a reset, so the client sees a failure rather than an
/// orderly (and misleading) end of stream.
pub fn reset(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
