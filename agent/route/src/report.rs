//! `/endpoints?service=NAME[&port=N]` (what `straitctl endpoints` shows):
//! a service's endpoints as this node sees them, with locality, priority
//! level, weight and health; for those on another network, the gateways
//! it would go through.
use std::time::Instant;

use serde::Serialize;
use strait_balance::{Client, outlier::Health};
use strait_health::Board;

use strait_state::Snapshot;

use crate::{Plan, plan, via};

#[derive(Serialize)]
pub struct Report {
    pub service: String,
    pub host: String,
    pub port: u16,
    /// The locality the priorities are from (this node's).
    pub from: String,
    /// `endpoints`, `dns` or `original`.
    pub kind: &'static str,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Serialize)]
pub struct EndpointReport {
    pub address: String,
    pub workload: String,
    pub locality: String,
    pub network: String,
    pub cluster: String,
    /// Its cluster's API server does not answer: this is what it last
    /// listed, and may be out of date.
    pub stale: bool,
    pub node: String,
    pub priority: u32,
    pub weight: f64,
    /// `healthy`, `not ready` with why, or `ejected` with the seconds left.
    pub health: String,
    pub consecutive_errors: u32,
    pub times_ejected: u32,
    /// On another network: its gateways' instances, in the order a
    /// connection would try them now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<ViaReport>,
}

#[derive(Serialize)]
pub struct ViaReport {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    pub address: String,
    /// `healthy`, or `ejected` with the seconds left.
    pub health: String,
}

fn health_text(health: &Health, addr: std::net::SocketAddr, now: Instant) -> String {
    match health.report(addr, now).and_then(|h| h.ejected_for_seconds) {
        Some(left) => format!("ejected ({left:.0}s left)"),
        None => "healthy".into(),
    }
}

pub fn report(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    clusters: Option<&strait_kube::Clusters>,
    query: &str,
) -> Result<Report, String> {
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    let name = param("service").ok_or("say which service: ?service=NAME")?;
    let at = state
        .config
        .find_service(name)
        .ok_or_else(|| format!("no service {name:?}"))?;
    let port = match param("port") {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        None => at
            .service
            .ports
            .first()
            .map(|p| p.port)
            .ok_or_else(|| format!("service {name:?} has no ports"))?,
    };
    // This node as the client: its own topology, else its first workload's.
    let node = state.config.nodes.get(&*state.node);
    let local = state.config.workloads_on(&state.node).next();
    let locality = node
        .map(|n| n.locality.clone())
        .filter(|l| !l.region.is_empty())
        .or_else(|| local.map(|w| w.locality.clone()))
        .unwrap_or_default();
    let network = node
        .map(|n| n.network.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| local.map(|w| w.network.clone()))
        .unwrap_or_default();
    let labels = node.map(|n| n.labels.clone()).unwrap_or_default();
    let cluster_name = local.map(|w| state.cluster(w)).unwrap_or_else(|| {
        labels
            .get(strait_balance::CLUSTER)
            .cloned()
            .unwrap_or_default()
    });
    let who = Client {
        locality: &locality,
        network: &network,
        cluster: &cluster_name,
        node: &state.node,
        labels: &labels,
    };
    let namespace = local.map_or("", |w| w.namespace.as_str());
    let (kind, mut endpoints) =
        match plan(state, health, board, &who, namespace, at, port).map_err(|e| e.to_string())? {
            Plan::Original => ("original", Vec::new()),
            Plan::Dns { .. } => ("dns", Vec::new()),
            Plan::Endpoints {
                ranked, not_ready, ..
            } => {
                let now = Instant::now();
                let endpoints = ranked
                    .iter()
                    .map(|r| {
                        let w = r.endpoint.workload;
                        let h = health.report(r.endpoint.addr, now);
                        let in_cluster = state.cluster(w);
                        EndpointReport {
                            stale: clusters.is_some_and(|c| c.stale(&in_cluster)),
                            cluster: in_cluster,
                            address: r.endpoint.addr.to_string(),
                            workload: format!("{}/{}", w.namespace, w.name),
                            locality: locality_text(&w.locality),
                            network: w.network.clone(),
                            node: w.node.clone().unwrap_or_default(),
                            priority: r.priority,
                            weight: r.weight,
                            health: match (
                                not_ready.get(&r.endpoint.addr),
                                h.as_ref().and_then(|h| h.ejected_for_seconds),
                            ) {
                                (Some(why), _) => format!("not ready ({why})"),
                                (None, Some(left)) => format!("ejected ({left:.0}s left)"),
                                (None, None) => "healthy".into(),
                            },
                            consecutive_errors: h.as_ref().map_or(0, |h| h.consecutive_errors),
                            times_ejected: h.as_ref().map_or(0, |h| h.times_ejected),
                            via: if w.network.is_empty() || w.network == network {
                                Vec::new()
                            } else {
                                via::gateways(
                                    state,
                                    health,
                                    board,
                                    &w.network,
                                    r.endpoint.addr.is_ipv4(),
                                )
                                .into_iter()
                                .map(|(addr, g)| ViaReport {
                                    gateway: format!("{}/{}", g.namespace, g.name),
                                    address: addr.to_string(),
                                    health: health_text(health, addr, now),
                                })
                                .collect()
                            },
                        }
                    })
                    .collect();
                ("endpoints", endpoints)
            }
        };
    endpoints.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.address.cmp(&b.address)));
    Ok(Report {
        service: format!("{}/{}", at.service.namespace, at.service.name),
        host: at.host.to_string(),
        port,
        from: locality_text(&locality),
        kind,
        endpoints,
    })
}

fn locality_text(l: &strait_config::Locality) -> String {
    [&l.region, &l.zone, &l.subzone]
        .iter()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}
