//! Where an outbound connection goes. A connection to a service address (a
//! Service's ClusterIP, a ServiceEntry's declared or allocated address)
//! goes to one of the service's endpoints, chosen by locality and the
//! service's DestinationRule ([`strait_balance`]), skipping endpoints
//! outlier detection set aside; any other goes where the client asked.
//! Another network's endpoints are reached through its gateways
//! ([`via`]); [`report`] is what `straitctl endpoints` shows of a plan.
pub mod report;
pub mod via;
pub mod waypoint;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
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

use strait_state::Snapshot;

pub use via::Via;

/// Endpoints tried for one connection before giving up (refusals cost a
/// round trip each; the outbound also bounds the time spent).
const ATTEMPTS: usize = 8;

/// One attempt's destination.
#[derive(Clone, Debug)]
pub enum Target {
    /// An address this node reaches: an endpoint on the client's network,
    /// or somewhere outside the mesh.
    Direct(SocketAddr),
    /// Another network's endpoints, through one of its gateways.
    Remote(Via),
    /// A waypoint instance, which routes on.
    Waypoint(waypoint::Hop),
}

#[derive(Debug)]
pub enum Route {
    /// Straight to this address: a workload, or somewhere outside the mesh.
    Direct(SocketAddr),
    /// A service's endpoints, in the order to try them.
    Endpoints {
        service: String,
        targets: Vec<Target>,
        /// Every endpoint of the service, for `maxEjectionPercent`.
        all: Vec<SocketAddr>,
        outlier: Settings,
        pool: Pool,
    },
    /// Through a waypoint bound to the destination: its instances, in
    /// the order to try them.
    Waypoint {
        waypoint: String,
        targets: Vec<Target>,
    },
    /// A service resolved by DNS when used: look these names up (through
    /// the node's resolver), then connect straight to what they give.
    Dns {
        service: String,
        hosts: Vec<String>,
        port: u16,
    },
}

/// The DestinationRule's `connectionPool.tcp` settings that act at L4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    /// Connections this agent keeps open to the service at once; more are
    /// refused (Envoy's overflow).
    pub max_connections: Option<u32>,
    /// Replaces `--connect-timeout` for each endpoint attempt.
    pub connect_timeout: Option<Duration>,
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
        pool: Pool,
    },
}

/// The route for a connection from `client` (at `src`) to `dst`.
pub fn route(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    load: &Load,
    client: &Workload,
    src: IpAddr,
    dst: SocketAddr,
) -> Result<Route, NoBackends> {
    let Some(at) = state.config.service_at(dst.ip()) else {
        return through_waypoint(state, health, board, client, dst)
            .unwrap_or(Ok(Route::Direct(dst)));
    };
    // A service not exported to the client's namespace is not there for
    // it: the address stands for itself.
    let service = at.service;
    if !strait_config::exported_to(&service.export_to, &service.namespace, &client.namespace) {
        return Ok(Route::Direct(dst));
    }
    if let Some(route) = through_waypoint(state, health, board, client, dst) {
        return route;
    }
    service_route(
        state,
        health,
        board,
        load,
        (client, src),
        at,
        dst,
        Pick::default(),
    )
}

/// What one request adds to the choice of endpoint, at a waypoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pick<'a> {
    /// Only endpoints with these labels (a DestinationRule subset).
    pub subset: Option<&'a strait_config::Labels>,
    /// The request's `consistentHash` key (a header's, a cookie's or a
    /// query parameter's value).
    pub hash_key: Option<&'a str>,
}

/// The route to the service `at`, dialled at `dst` (one of its addresses,
/// or where a waypoint was asked for it), for `client` at `src`: its
/// endpoints, only those of `pick`'s subset when given, ordered by its
/// hash key when the policy hashes on one.
#[allow(clippy::too_many_arguments)]
pub fn service_route(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    load: &Load,
    (client, src): (&Workload, IpAddr),
    at: ServiceAt<'_>,
    dst: SocketAddr,
    pick: Pick<'_>,
) -> Result<Route, NoBackends> {
    let subset = pick.subset;
    let service = format!("{}/{}", at.service.namespace, at.service.name);
    let cluster = state.cluster(client);
    let who = Client {
        locality: &client.locality,
        network: &client.network,
        cluster: &cluster,
        node: &state.node,
        labels: &client.labels,
    };
    let (ranked, ejected, not_ready, outlier, simple, pool) = match plan(
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
            pool,
        } => (
            ranked,
            ejected,
            not_ready,
            outlier,
            simple.for_source(src).for_request(pick.hash_key),
            pool,
        ),
    };
    let ranked: Vec<Ranked<'_>> = ranked
        .into_iter()
        .filter(|r| !not_ready.contains_key(&r.endpoint.addr))
        .filter(|r| {
            subset.is_none_or(|labels| {
                labels
                    .iter()
                    .all(|(k, v)| r.endpoint.workload.labels.get(k) == Some(v))
            })
        })
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
    // Who may answer behind each other network's gateways: its endpoints
    // that take connections.
    let mut behind: HashMap<&str, Vec<strait_identity::Identity>> = HashMap::new();
    for r in &ranked {
        let w = r.endpoint.workload;
        if w.network != client.network {
            behind
                .entry(&w.network)
                .or_default()
                .push(state.identity(w));
        }
    }
    // fastrand's f64 is in [0, 1); the weighting wants (0, 1].
    let ordered = strait_balance::order(ranked, simple, turn, &|a| load.active(a), || {
        1.0 - fastrand::f64()
    });
    // An endpoint on another network stands for its network: the first one
    // in the order brings in that network's gateways, and the gateway
    // picks the endpoint.
    let authority = strait_hbone::Authority::Host {
        host: at.host.to_string(),
        port: dst.port(),
    };
    let mut targets = Vec::new();
    let mut networks = HashSet::new();
    for e in ordered {
        let network = e.workload.network.as_str();
        if network == client.network {
            targets.push(Target::Direct(e.addr));
        } else if networks.insert(network) {
            let identities: std::sync::Arc<[_]> = behind.remove(network).unwrap_or_default().into();
            targets.extend(
                via::vias(
                    state,
                    health,
                    board,
                    network,
                    &authority,
                    identities,
                    dst.is_ipv4(),
                )
                .into_iter()
                .map(Target::Remote),
            );
        }
    }
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
        pool,
    })
}

/// The route through the waypoint bound to `dst`, when one is: refused
/// when it has no instance to send to (the waypoint's policies would be
/// skipped otherwise).
fn through_waypoint(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    client: &Workload,
    dst: SocketAddr,
) -> Option<Result<Route, NoBackends>> {
    let bound = waypoint::bound(state, client, dst)?;
    let name = format!("{}/{}", bound.namespace, bound.name);
    let mut hops = waypoint::hops(state, health, board, bound, &client.network, dst);
    hops.truncate(ATTEMPTS);
    if hops.is_empty() {
        return Some(Err(NoBackends::NoWaypoint {
            waypoint: name,
            dst,
        }));
    }
    Some(Ok(Route::Waypoint {
        waypoint: name,
        targets: hops.into_iter().map(Target::Waypoint).collect(),
    }))
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
    // internalTrafficPolicy: Local keeps to this node. Another network's
    // endpoints count only when the service is exported to other networks
    // and a gateway leads there.
    let global = state.config.global(at.service);
    let endpoints: Vec<_> = endpoints
        .into_iter()
        .filter(|e| !at.service.node_local || e.workload.node.as_deref() == Some(&*state.node))
        .filter(|e| {
            e.workload.network == who.network
                || (global && via::reachable(&state.config, &e.workload.network))
        })
        .collect();
    let rule = state
        .config
        .destination_rule(at, client_namespace, who.labels);
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
    let hash = balancer.and_then(|lb| lb.consistent_hash.as_ref());
    let simple = Simple::parse(
        balancer.and_then(|lb| lb.simple.as_deref()),
        hash.and_then(|h| h.use_source_ip) == Some(true),
        hash.is_some_and(|h| {
            h.http_header_name.is_some()
                || h.http_cookie.is_some()
                || h.http_query_parameter_name.is_some()
        }),
    );
    if simple == Simple::Passthrough {
        return Ok(Plan::Original);
    }
    let tcp = port_level
        .and_then(|p| p.connection_pool.as_ref())
        .or_else(|| traffic.and_then(|t| t.connection_pool.as_ref()))
        .and_then(|c| c.tcp.as_ref());
    let pool = Pool {
        max_connections: tcp.and_then(|t| t.max_connections),
        connect_timeout: tcp
            .and_then(|t| t.connect_timeout.as_deref())
            .and_then(|t| strait_config::duration::parse(t).ok()),
    };
    let policy = Policy {
        locality: balancer.and_then(|lb| lb.locality_lb_setting.as_ref()),
        traffic_distribution: at.service.traffic_distribution.as_deref(),
    };
    let cluster_of = |w: &Workload| state.cluster(w);
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
        simple,
        pool,
    })
}

/// The targets for a connection that goes where the client dialled: that
/// address, or, for a mesh workload on another network, through that
/// network's gateways, when the port is one of a service exported to other
/// networks; `None` when it is not (nothing else crosses networks).
pub fn direct(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    client: &Workload,
    dst: SocketAddr,
) -> Option<Vec<Target>> {
    match state.mesh_workload(dst.ip()) {
        Some(w) if w.network != client.network && !state.config.exported_port(w, dst.port()) => {
            None
        }
        Some(w) if w.network != client.network => Some(
            via::vias(
                state,
                health,
                board,
                &w.network,
                &strait_hbone::Authority::Addr(dst),
                vec![state.identity(w)].into(),
                dst.is_ipv4(),
            )
            .into_iter()
            .map(Target::Remote)
            .collect(),
        ),
        _ => Some(vec![Target::Direct(dst)]),
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use strait_balance::{load::Load, outlier::Health};
    use strait_config::{Config, check_text};
    use strait_health::Board;

    use super::*;

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: shop}
spec:
  hosts: [private.shop.internal]
  addresses: [10.96.0.20]
  exportTo: [.]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, targetPort: 8080}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop, annotations: {strait.dev/node: n1}}
spec: {address: 10.1.0.5, labels: {app: client, tier: front}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: stranger, namespace: other, annotations: {strait.dev/node: n1}}
spec: {address: 10.1.0.6, labels: {app: stranger}}
";

    fn endpoints(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web-{i}, namespace: shop}}\nspec: {{address: 10.2.0.{}, labels: {{app: web}}}}\n",
                    10 + i
                )
            })
            .collect()
    }

    fn snapshot(extra: &str) -> Snapshot {
        let text = format!("{MESH}{}{extra}", endpoints(4));
        let (report, config) = check_text(Path::new("mesh.yaml"), &text);
        let config: Config = config.unwrap_or_else(|| panic!("{report}"));
        Snapshot {
            node: "n1".into(),
            generation: 1,
            config: Arc::new(config),
        }
    }

    /// A DestinationRule `shop/web` for the web service with `policy` as
    /// its trafficPolicy.
    fn web_rule(policy: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: shop}}\nspec:\n  host: web.shop.svc.cluster.local\n  trafficPolicy: {policy}\n"
        )
    }

    struct World {
        health: Health,
        board: Board,
        load: Arc<Load>,
        _dir: tempfile::TempDir,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        World {
            health: Health::default(),
            board: Board::new(dir.path()),
            load: Arc::new(Load::default()),
            _dir: dir,
        }
    }

    fn route_from(s: &Snapshot, w: &World, client: &str, dst: &str) -> Route {
        let client = s
            .config
            .workloads
            .iter()
            .find(|x| x.name == client)
            .unwrap();
        route(
            s,
            &w.health,
            &w.board,
            &w.load,
            client,
            client.addresses[0],
            dst.parse().unwrap(),
        )
        .unwrap()
    }

    fn first(route: &Route) -> SocketAddr {
        match route {
            Route::Endpoints { targets, .. } => match &targets[0] {
                Target::Direct(addr) => *addr,
                other => panic!("not direct: {other:?}"),
            },
            other => panic!("not endpoints: {other:?}"),
        }
    }

    fn pool(route: &Route) -> Pool {
        match route {
            Route::Endpoints { pool, .. } => *pool,
            other => panic!("not endpoints: {other:?}"),
        }
    }

    #[test]
    fn a_service_address_leads_to_an_endpoint_and_others_stand_for_themselves() {
        let (s, w) = (snapshot(""), world());
        let to = first(&route_from(&s, &w, "client", "10.96.0.10:80"));
        assert!(
            to.ip().to_string().starts_with("10.2.0.") && to.port() == 8080,
            "{to}"
        );
        assert!(matches!(
            route_from(&s, &w, "client", "10.9.9.9:80"),
            Route::Direct(d) if d == "10.9.9.9:80".parse().unwrap()
        ));
    }

    #[test]
    fn consistent_hash_by_source_ip_keeps_each_client_on_one_endpoint() {
        let (s, w) = (
            snapshot(&web_rule(
                "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
            )),
            world(),
        );
        let picks: std::collections::BTreeSet<SocketAddr> = (0..50)
            .map(|_| first(&route_from(&s, &w, "client", "10.96.0.10:80")))
            .collect();
        assert_eq!(picks.len(), 1, "one client, one endpoint: {picks:?}");
        // Without the rule, 50 connections spread.
        let (s, w) = (snapshot(""), world());
        let picks: std::collections::BTreeSet<SocketAddr> = (0..50)
            .map(|_| first(&route_from(&s, &w, "client", "10.96.0.10:80")))
            .collect();
        assert!(picks.len() > 1, "{picks:?}");
    }

    #[test]
    fn passthrough_goes_where_the_client_dialled() {
        let (s, w) = (
            snapshot(&web_rule("{loadBalancer: {simple: PASSTHROUGH}}")),
            world(),
        );
        assert!(matches!(
            route_from(&s, &w, "client", "10.96.0.10:80"),
            Route::Direct(_)
        ));
    }

    #[test]
    fn connection_pool_settings_reach_the_route_per_port() {
        let (s, w) = (
            snapshot(&web_rule(
                "{connectionPool: {tcp: {maxConnections: 7, connectTimeout: 250ms}}, \
                 portLevelSettings: [{port: {number: 80}, connectionPool: {tcp: {maxConnections: 3}}}]}",
            )),
            world(),
        );
        assert_eq!(
            pool(&route_from(&s, &w, "client", "10.96.0.10:80")),
            Pool {
                max_connections: Some(3),
                connect_timeout: None,
            },
            "the port's settings replace the rule's"
        );
    }

    #[test]
    fn export_to_and_workload_selector_limit_who_sees_what() {
        // The ServiceEntry is exported to its own namespace only.
        let (s, w) = (snapshot(""), world());
        assert!(matches!(
            route_from(&s, &w, "client", "10.96.0.20:80"),
            Route::Endpoints { .. }
        ));
        assert!(matches!(
            route_from(&s, &w, "stranger", "10.96.0.20:80"),
            Route::Direct(_)
        ));
        // A rule exported to `.` applies to its own namespace's clients;
        // one with a workloadSelector only to the clients it selects.
        let rules = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mine, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  exportTo: [.]
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: fronts, namespace: other}
spec:
  host: web.shop.svc.cluster.local
  workloadSelector: {matchLabels: {tier: front}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}
";
        let (s, w) = (snapshot(rules), world());
        assert_eq!(
            pool(&route_from(&s, &w, "client", "10.96.0.10:80")).max_connections,
            Some(1)
        );
        assert_eq!(
            pool(&route_from(&s, &w, "stranger", "10.96.0.10:80")).max_connections,
            None,
            "neither rule is for the stranger"
        );
    }
}
