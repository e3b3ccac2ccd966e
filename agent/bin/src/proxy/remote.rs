//! Endpoints on another network, reached through that network's east-west
//! gateways as double HBONE: an outer tunnel to a gateway (as the client's
//! identity, checking the gateway's), asking for the service's
//! `host:port`; inside it a TLS session of its own with the endpoint the
//! gateway picks (verified against the service's identities), and a
//! CONNECT with the same authority. The gateway forwards the inner session
//! without decrypting it, so the destination sees the client's identity.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use strait_balance::outlier::Health;
use strait_config::{Config, EastWestGateway};
use strait_hbone::{Authority, PoolKey, Tunnel};
use strait_health::{Board, Readiness, readiness};
use strait_identity::Identity;
use tracing::{debug, warn};

use super::Proxy;
use crate::{metrics::Reason, pods::Pod, state::Snapshot};

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

/// Where a connection through a gateway failed: the gateway itself (set it
/// aside, try another), or what is behind it (another gateway of the same
/// network would find the same).
pub enum Failure {
    Gateway(Reason),
    Behind(Reason),
}

/// Whose failure an inner handshake's error is. The gateway found no
/// endpoint that answered (503), or the endpoint's TLS did not pass: what
/// is behind the gateway. The gateway refused what this config says it
/// serves (403: a gateway that disagrees with the mesh, or one that is not
/// what it claims), or the tunnel broke before any answer (the gateway
/// died, with the pooled connection the pool had not yet seen close): the
/// gateway, set aside like one that fails.
fn inner_failure(err: &strait_hbone::Error) -> Failure {
    use std::io::ErrorKind;
    match err {
        strait_hbone::Error::Tls { source, .. } => match source.kind() {
            ErrorKind::ConnectionRefused => match strait_hbone::Refused::of(source) {
                Some(r) if r.status == hyper::StatusCode::FORBIDDEN => {
                    Failure::Gateway(Reason::Denied)
                }
                _ => Failure::Behind(Reason::Upstream),
            },
            ErrorKind::InvalidData => Failure::Behind(Reason::Tls),
            _ => Failure::Gateway(Reason::Upstream),
        },
        _ => Failure::Behind(Reason::Upstream),
    }
}

/// Opens the double tunnel within `timeout`; the inner tunnel and the
/// identity that answered inside it.
pub async fn open(
    proxy: &Proxy,
    pod: &Pod,
    via: &Via,
    timeout: std::time::Duration,
) -> Result<(Tunnel, Identity), Failure> {
    if proxy.certs.current(&pod.identity).is_none() {
        return Err(Failure::Behind(Reason::NoCertificate));
    }
    let key = PoolKey {
        source: pod.identity.clone(),
        destination: via.gateway_identity.clone(),
        addr: via.gateway,
    };
    let outer_tls = proxy
        .clients
        .get(&pod.identity, &via.gateway_identity)
        .map_err(|err| {
            warn!(%err, "no TLS configuration");
            Failure::Gateway(Reason::Tls)
        })?;
    let inner_tls = proxy
        .clients
        .get_any(&pod.identity, &via.identities)
        .map_err(|err| {
            warn!(%err, "no TLS configuration");
            Failure::Behind(Reason::Tls)
        })?;
    // Through the gateway the destination sees the gateway's address: the
    // client tells where it is.
    let source = (!pod.workload.network.is_empty()).then(|| {
        let cluster = super::route::cluster(&proxy.state.snapshot(), &pod.workload);
        strait_hbone::Source {
            network: pod.workload.network.clone(),
            cluster: (!cluster.is_empty()).then_some(cluster),
            workload: Some(pod.workload.name.clone()),
        }
    });
    let work = async {
        let outer = proxy
            .pool
            .connect(&key, &via.authority, source.as_ref(), outer_tls, || {
                pod.connect(via.gateway, None, |_| ())
            })
            .await
            .map_err(|err| {
                warn!(%err, gateway = %via.gateway, "gateway connect failed");
                Failure::Gateway(if err.is_tls() {
                    Reason::Tls
                } else {
                    Reason::Upstream
                })
            })?;
        // The inner handshake goes out right behind the outer CONNECT, not
        // after its answer: one round trip through the gateway less. The
        // answer comes first on the way back, so a refusal by the gateway
        // shows as the handshake's first read.
        let (mut inner, answered) = strait_hbone::connect_over(
            outer,
            via.gateway,
            &via.authority,
            source.as_ref(),
            inner_tls,
        )
        .await
        .map_err(|err| {
            warn!(%err, gateway = %via.gateway, authority = %via.authority, "through the gateway: failed");
            inner_failure(&err)
        })?;
        inner.established().await.map_err(|err| {
            debug!(%err, authority = %via.authority, "inner CONNECT refused");
            Failure::Behind(Reason::Upstream)
        })?;
        Ok((inner, answered))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            warn!(gateway = %via.gateway, ?timeout, "through the gateway: timed out");
            proxy.pool.forget(&key);
            Err(Failure::Gateway(Reason::Upstream))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use hyper::StatusCode;

    use super::*;

    /// What the inner handshake's first read says when the gateway
    /// answered the outer CONNECT with `status`.
    fn answered(status: StatusCode) -> strait_hbone::Error {
        strait_hbone::Error::Tls {
            addr: "100.64.0.3:15008".parse().unwrap(),
            source: io::Error::new(
                io::ErrorKind::ConnectionRefused,
                strait_hbone::Refused {
                    authority: "web.shop.svc.cluster.local:80".into(),
                    status,
                },
            ),
        }
    }

    #[test]
    fn a_gateway_that_refuses_is_set_aside_and_one_that_finds_nothing_is_not() {
        assert!(matches!(
            inner_failure(&answered(StatusCode::FORBIDDEN)),
            Failure::Gateway(Reason::Denied)
        ));
        assert!(matches!(
            inner_failure(&answered(StatusCode::SERVICE_UNAVAILABLE)),
            Failure::Behind(Reason::Upstream)
        ));
        // The tunnel broke before any answer: the gateway.
        let broke = strait_hbone::Error::Tls {
            addr: "100.64.0.3:15008".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        };
        assert!(matches!(
            inner_failure(&broke),
            Failure::Gateway(Reason::Upstream)
        ));
    }
}
