//! Where an outbound connection goes. A connection to a service address (a
//! Service's ClusterIP, a ServiceEntry's declared or allocated address)
//! goes to one of the service's endpoints, chosen by locality and the
//! service's DestinationRule ([`strait_balance`]), skipping endpoints
//! outlier detection set aside; any other goes where the client asked.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use strait_balance::{
    Client, Policy, Ranked, Simple,
    load::Load,
    outlier::{Health, Settings},
};
use strait_config::{
    Workload,
    service::{Backends, NoBackends, ServiceAt},
};
use strait_health::{Board, Readiness, readiness};

use crate::state::Snapshot;

/// Endpoints tried for one connection before giving up (refusals cost a
/// round trip each; the outbound also bounds the time spent).
const ATTEMPTS: usize = 8;

#[derive(Debug)]
pub enum Route {
    /// Straight to this address: a workload, or somewhere outside the mesh.
    Direct(SocketAddr),
    /// A service's endpoints, in the order to try them.
    Endpoints {
        service: String,
        targets: Vec<SocketAddr>,
        /// Every endpoint of the service, for `maxEjectionPercent`.
        all: Vec<SocketAddr>,
        outlier: Settings,
    },
    /// A service resolved by DNS when used: look these names up (through
    /// the node's resolver), then connect straight to what they give.
    Dns {
        service: String,
        hosts: Vec<String>,
        port: u16,
    },
}

/// How one service port's endpoints rank for one client.
pub enum Plan<'a> {
    /// The address stands for itself.
    Original,
    Dns {
        hosts: Vec<String>,
        port: u16,
    },
    Endpoints {
        /// Every eligible endpoint with its level and weight.
        ranked: Vec<Ranked<'a>>,
        /// Those outlier detection has set aside now.
        ejected: HashSet<SocketAddr>,
        /// Those whose workload is not ready, with why; they get nothing.
        not_ready: HashMap<SocketAddr, String>,
        outlier: Settings,
        simple: Simple,
    },
}

/// The route for a connection from `client` to `dst`.
pub fn route(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    load: &Load,
    client: &Workload,
    dst: SocketAddr,
) -> Result<Route, NoBackends> {
    let Some(at) = state.config.service_at(dst.ip()) else {
        return Ok(Route::Direct(dst));
    };
    let service = format!("{}/{}", at.service.namespace, at.service.name);
    let cluster = cluster(state, client);
    let who = Client {
        locality: &client.locality,
        network: &client.network,
        cluster: &cluster,
        node: &state.node,
        labels: &client.labels,
    };
    let (ranked, ejected, not_ready, outlier, simple) = match plan(
        state,
        health,
        board,
        &who,
        &client.namespace,
        at,
        dst.port(),
    )? {
        Plan::Original => return Ok(Route::Direct(dst)),
        Plan::Dns { hosts, port } => {
            return Ok(Route::Dns {
                service,
                hosts,
                port,
            });
        }
        Plan::Endpoints {
            ranked,
            ejected,
            not_ready,
            outlier,
            simple,
        } => (ranked, ejected, not_ready, outlier, simple),
    };
    let ranked: Vec<Ranked<'_>> = ranked
        .into_iter()
        .filter(|r| !not_ready.contains_key(&r.endpoint.addr))
        .collect();
    let all: Vec<SocketAddr> = ranked.iter().map(|r| r.endpoint.addr).collect();
    // Ejected endpoints sit out, unless none would be left or fewer than
    // minHealthPercent would.
    let healthy: Vec<Ranked<'_>> = ranked
        .iter()
        .filter(|r| !ejected.contains(&r.endpoint.addr))
        .copied()
        .collect();
    let panic = healthy.is_empty() || Health::below_min_health(outlier, healthy.len(), all.len());
    let ranked = if panic { ranked } else { healthy };
    let turn = match simple {
        Simple::RoundRobin => load.turn(&service),
        _ => 0,
    };
    // fastrand's f64 is in [0, 1); the weighting wants (0, 1].
    let mut targets: Vec<SocketAddr> =
        strait_balance::order(ranked, simple, turn, &|a| load.active(a), || {
            1.0 - fastrand::f64()
        })
        .iter()
        .map(|e| e.addr)
        .collect();
    targets.truncate(ATTEMPTS);
    if targets.is_empty() {
        return Err(NoBackends::NoEndpoints {
            service,
            port: dst.port(),
        });
    }
    Ok(Route::Endpoints {
        service,
        targets,
        all,
        outlier,
    })
}

/// Ranks the endpoints of `port` of the service `at` for `who` (a client
/// in `client_namespace`): what [`route`] chooses from, and what
/// `straitctl endpoints` shows.
pub fn plan<'a>(
    state: &'a Snapshot,
    health: &Health,
    board: &Board,
    who: &Client<'_>,
    client_namespace: &str,
    at: ServiceAt<'a>,
    port: u16,
) -> Result<Plan<'a>, NoBackends> {
    let endpoints = match state.config.backends(at, port)? {
        Backends::Original => return Ok(Plan::Original),
        Backends::Dns { hosts, port } => return Ok(Plan::Dns { hosts, port }),
        Backends::Endpoints(endpoints) => endpoints,
    };
    // internalTrafficPolicy: Local keeps to this node.
    let endpoints: Vec<_> = endpoints
        .into_iter()
        .filter(|e| !at.service.node_local || e.workload.node.as_deref() == Some(&*state.node))
        .collect();
    let rule = state.config.destination_rule(at, client_namespace);
    let traffic = rule.and_then(|r| r.traffic_policy.as_ref());
    // `portLevelSettings` for this service port override the rule's own.
    let port_level = traffic.and_then(|t| {
        t.port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
    });
    let balancer = port_level
        .and_then(|p| p.load_balancer.as_ref())
        .or_else(|| traffic.and_then(|t| t.load_balancer.as_ref()));
    let outlier = port_level
        .and_then(|p| p.outlier_detection.as_ref())
        .or_else(|| traffic.and_then(|t| t.outlier_detection.as_ref()));
    let policy = Policy {
        locality: balancer.and_then(|lb| lb.locality_lb_setting.as_ref()),
        traffic_distribution: at.service.traffic_distribution.as_deref(),
    };
    let cluster_of = |w: &Workload| cluster(state, w);
    let ranked = strait_balance::rank(who, &endpoints, policy, &cluster_of);
    let now = Instant::now();
    let ejected = ranked
        .iter()
        .map(|r| r.endpoint.addr)
        .filter(|a| health.is_ejected(*a, now))
        .collect();
    let not_ready = ranked
        .iter()
        .filter_map(|r| match readiness(board, r.endpoint.workload) {
            Readiness::Ready => None,
            Readiness::NotReady(why) => Some((r.endpoint.addr, why)),
        })
        .collect();
    Ok(Plan::Endpoints {
        ranked,
        ejected,
        not_ready,
        outlier: Settings::from_rule(outlier),
        simple: Simple::parse(balancer.and_then(|lb| lb.simple.as_deref())),
    })
}

/// A workload's cluster: its own `topology.istio.io/cluster` label, else
/// its node's.
pub fn cluster(state: &Snapshot, w: &Workload) -> String {
    w.labels
        .get(strait_balance::CLUSTER)
        .or_else(|| {
            w.node
                .as_ref()
                .and_then(|n| state.config.nodes.get(n))
                .and_then(|n| n.labels.get(strait_balance::CLUSTER))
        })
        .cloned()
        .unwrap_or_default()
}
