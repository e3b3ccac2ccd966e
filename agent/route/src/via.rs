//! Another network's endpoints are reached through its east-west
//! gateways: which instances, in which order, and what to ask them for.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use strait_balance::outlier::Health;
use strait_config::{Config, EastWestGateway};
use strait_hbone::Authority;
use strait_health::{Board, Readiness, readiness};
use strait_identity::Identity;
use strait_state::Snapshot;

/// One way to another network: a gateway instance, and what to ask it for.
#[derive(Clone, Debug)]
pub struct Via {
    pub network: String,
    /// The gateway instance's HBONE address.
    pub gateway: SocketAddr,
    pub gateway_identity: Identity,
    /// `service host:port`, or a workload's `address:port`.
    pub authority: Authority,
    /// Who may answer inside: the identities of the endpoints behind it.
    pub identities: Arc<[Identity]>,
}

/// Whether `network` can be reached at all: some gateway into it has an
/// address.
pub fn reachable(config: &Config, network: &str) -> bool {
    config
        .gateways_into(network)
        .any(|g| !g.addresses.is_empty())
}

/// The gateway instances into `network`, in the order to try them: those
/// ready and not set aside first, in a random order (each takes an equal
/// share), those of `family` (IPv4 or IPv6, the client's) before the
/// others; when every one is set aside, all of them.
pub fn gateways<'a>(
    state: &'a Snapshot,
    health: &Health,
    board: &Board,
    network: &'a str,
    v4: bool,
) -> Vec<(SocketAddr, &'a EastWestGateway)> {
    let now = Instant::now();
    let config = &state.config;
    let mut all: Vec<(SocketAddr, &EastWestGateway)> = config
        .gateways_into(network)
        .flat_map(|g| {
            g.addresses
                .iter()
                .map(move |a| (SocketAddr::new(*a, g.port), g))
        })
        .filter(|(addr, _)| {
            // An instance the config knows (its pod, its WorkloadEntry)
            // must be ready.
            config
                .workload_by_address(addr.ip())
                .is_none_or(|w| matches!(readiness(board, w), Readiness::Ready))
        })
        .collect();
    fastrand::shuffle(&mut all);
    all.sort_by_key(|(addr, _)| addr.is_ipv4() != v4);
    let live: Vec<_> = all
        .iter()
        .filter(|(addr, _)| !health.is_ejected(*addr, now))
        .copied()
        .collect();
    if live.is_empty() { all } else { live }
}

/// The ways to `network` for one connection.
pub fn vias(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    network: &str,
    authority: &Authority,
    identities: Arc<[Identity]>,
    v4: bool,
) -> Vec<Via> {
    gateways(state, health, board, network, v4)
        .into_iter()
        .map(|(gateway, g)| Via {
            network: network.to_string(),
            gateway,
            gateway_identity: Identity::new(
                &state.config.trust_domain,
                &g.namespace,
                &g.service_account,
            ),
            authority: authority.clone(),
            identities: identities.clone(),
        })
        .collect()
}
