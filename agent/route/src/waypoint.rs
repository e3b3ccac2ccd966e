//! Traffic bound to a waypoint goes to one of its instances instead of the
//! destination: HBONE to the instance, asking for the address the client
//! dialled, and the waypoint routes it from there. A waypoint's own
//! traffic is never sent back to it.
use std::{net::SocketAddr, time::Instant};

use strait_balance::outlier::Health;
use strait_config::{Workload, waypoint::Waypoint};
use strait_health::{Board, Readiness, readiness};
use strait_identity::Identity;
use strait_state::Snapshot;

/// One waypoint instance to try.
#[derive(Clone, Debug)]
pub struct Hop {
    /// `namespace/name` of the waypoint.
    pub waypoint: String,
    /// The instance's HBONE address.
    pub addr: SocketAddr,
    /// Who must answer there.
    pub identity: Identity,
    /// What the client dialled: the CONNECT's authority.
    pub authority: SocketAddr,
}

/// The waypoint traffic from `client` to `dst` goes through: the service's
/// at a service address, the workload's at a workload's own address; none
/// when the client is that waypoint.
pub fn bound<'a>(state: &'a Snapshot, client: &Workload, dst: SocketAddr) -> Option<&'a Waypoint> {
    let config = &state.config;
    let waypoint = match config.service_at(dst.ip()) {
        Some(at) => config.service_waypoint(at.service),
        None => config
            .workload_by_address(dst.ip())
            .filter(|w| config.enrolled(w))
            .and_then(|w| config.workload_waypoint(w)),
    }?;
    let own = config
        .waypoint_of(client)
        .is_some_and(|w| w.name == waypoint.name && w.namespace == waypoint.namespace);
    (!own).then_some(waypoint)
}

/// The instances of `waypoint` on the client's network to try, ready and
/// not set aside first, in a random order (each takes an equal share);
/// when every one is set aside, all of them. Its declared addresses when
/// no instance is known.
pub fn hops(
    state: &Snapshot,
    health: &Health,
    board: &Board,
    waypoint: &Waypoint,
    network: &str,
    dst: SocketAddr,
) -> Vec<Hop> {
    let config = &state.config;
    let identity = Identity::new(
        &config.trust_domain,
        &waypoint.namespace,
        &waypoint.service_account,
    );
    let mut addrs: Vec<SocketAddr> = config
        .waypoint_instances(waypoint)
        .filter(|w| w.network == network)
        .filter(|w| matches!(readiness(board, w), Readiness::Ready))
        .flat_map(|w| w.addresses.iter())
        .filter(|a| a.is_ipv4() == dst.is_ipv4())
        .map(|a| SocketAddr::new(*a, waypoint.port))
        .collect();
    if addrs.is_empty() {
        addrs = waypoint
            .addresses
            .iter()
            .map(|a| SocketAddr::new(*a, waypoint.port))
            .collect();
    }
    fastrand::shuffle(&mut addrs);
    let now = Instant::now();
    let live: Vec<SocketAddr> = addrs
        .iter()
        .filter(|a| !health.is_ejected(**a, now))
        .copied()
        .collect();
    let chosen = if live.is_empty() { addrs } else { live };
    chosen
        .into_iter()
        .map(|addr| Hop {
            waypoint: format!("{}/{}", waypoint.namespace, waypoint.name),
            addr,
            identity: identity.clone(),
            authority: dst,
        })
        .collect()
}
