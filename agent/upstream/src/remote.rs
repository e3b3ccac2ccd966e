//! Endpoints on another network, reached through that network's east-west
//! gateways as double HBONE: an outer tunnel to a gateway (as the client's
//! identity, checking the gateway's), asking for the service's
//! `host:port`; inside it a TLS session of its own with the endpoint the
//! gateway picks (verified against the service's identities), and a
//! CONNECT with the same authority. The gateway forwards the inner session
//! without decrypting it, so the destination sees the client's identity.
use strait_hbone::{PoolKey, Tunnel};
use strait_identity::Identity;
use strait_route::Via;
use strait_state::Snapshot;
use strait_telemetry::Reason;
use tracing::{debug, warn};

use crate::{Dialer, Origin};

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

impl Dialer {
    /// Opens the double tunnel within `timeout`; the inner tunnel and the
    /// identity that answered inside it. What `sent` claims (the client a
    /// waypoint sends for, the trace) goes in the inner CONNECT, which only
    /// the destination reads.
    pub async fn open_remote(
        &self,
        origin: &impl Origin,
        state: &Snapshot,
        via: &Via,
        timeout: std::time::Duration,
        sent: strait_hbone::Claims<'_>,
    ) -> Result<(Tunnel, Identity), Failure> {
        let identity = origin.identity();
        let workload = origin.workload();
        if self.certs.current(identity).is_none() {
            return Err(Failure::Behind(Reason::NoCertificate));
        }
        let key = PoolKey {
            source: identity.clone(),
            destination: via.gateway_identity.clone(),
            addr: via.gateway,
        };
        let outer_tls = self
            .clients
            .get(identity, &via.gateway_identity)
            .map_err(|err| {
                warn!(%err, "no TLS configuration");
                Failure::Gateway(Reason::Tls)
            })?;
        let inner_tls = self
            .clients
            .get_any(identity, &via.identities)
            .map_err(|err| {
                warn!(%err, "no TLS configuration");
                Failure::Behind(Reason::Tls)
            })?;
        // Through the gateway the destination sees the gateway's address: the
        // client tells where it is.
        let source = (!workload.network.is_empty()).then(|| {
            let cluster = state.cluster(workload);
            strait_hbone::Source {
                network: workload.network.clone(),
                cluster: (!cluster.is_empty()).then_some(cluster),
                workload: Some(workload.name.clone()),
            }
        });
        let claims = strait_hbone::Claims {
            source: source.as_ref(),
            ..Default::default()
        };
        let work = async {
            let outer = self
                .pool
                .connect(&key, &via.authority, claims, outer_tls, || {
                    origin.dial(via.gateway)
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
            strait_hbone::Claims {
                on_behalf_of: sent.on_behalf_of,
                traceparent: sent.traceparent,
                ..claims
            },
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
                self.pool.forget(&key);
                Err(Failure::Gateway(Reason::Upstream))
            }
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
