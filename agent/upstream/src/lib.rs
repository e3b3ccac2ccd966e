//! Opening the way to one endpoint a route chose ([`strait_route`]), as
//! the identity of whoever the connection is for: an HBONE tunnel from the
//! shared pool to a mesh workload (mutual TLS, the destination's identity
//! checked), a double tunnel through another network's gateway
//! ([`remote`]), or a plain connection to anything outside the mesh. The
//! node agent opens these for its pods, the waypoint for itself.
pub mod remote;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use strait_config::{MtlsMode, Workload};
use strait_ebpf_common::port;
use strait_hbone::{Claims, Pool, PoolKey, Tunnel};
use strait_identity::{CertManager, Identity, tls::ClientConfigs};
use strait_route::{Via, waypoint::Hop};
use strait_state::Snapshot;
use strait_telemetry::Reason;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Where connections leave from and as whom.
pub trait Origin: Send + Sync {
    /// The identity the connections prove.
    fn identity(&self) -> &Identity;
    /// The workload they leave from: its network and cluster travel with
    /// connections through gateways.
    fn workload(&self) -> &Workload;
    /// A TCP connection from the origin's network namespace, which
    /// capture leaves alone.
    fn dial(&self, to: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

/// What opening connections shares: pooled HBONE connections, TLS client
/// configurations, and the certificates they present.
pub struct Dialer {
    pub pool: Arc<Pool>,
    pub clients: ClientConfigs,
    pub certs: Arc<CertManager>,
}

/// An open way to an endpoint.
pub enum Upstream {
    Hbone {
        tunnel: Tunnel,
        destination: Identity,
    },
    /// Through another network's gateway: `destination` answered inside.
    Remote {
        tunnel: Tunnel,
        destination: Identity,
        via: Via,
    },
    Plain(TcpStream),
}

impl Dialer {
    /// Opens the way to `target` within `timeout`: an HBONE tunnel when a
    /// mesh workload is there (unless its PeerAuthentication says DISABLE
    /// for the port), a plain connection otherwise. `claims` name the
    /// client a waypoint sends for, and the trace the tunnel belongs to.
    pub async fn open(
        &self,
        origin: &impl Origin,
        state: &Snapshot,
        target: SocketAddr,
        timeout: Duration,
        claims: Claims<'_>,
    ) -> Result<Upstream, Reason> {
        let destination = state
            .mesh_workload(target.ip())
            .filter(|w| state.config.mtls_mode(w, target.port()) != MtlsMode::Disable)
            .map(|w| state.identity(w));
        let Some(destination) = destination else {
            return match tokio::time::timeout(timeout, origin.dial(target)).await {
                Ok(Ok(stream)) => Ok(Upstream::Plain(stream)),
                Ok(Err(err)) => {
                    debug!(%err, %target, "passthrough connect failed");
                    Err(Reason::Upstream)
                }
                Err(_) => {
                    debug!(%target, "passthrough connect timed out");
                    Err(Reason::Upstream)
                }
            };
        };
        let hbone = SocketAddr::new(target.ip(), port::HBONE);
        self.hbone(origin, (hbone, destination), target, timeout, claims)
            .await
    }

    /// Opens a tunnel through the waypoint instance `hop`, asking it for
    /// what the client dialled.
    pub async fn open_waypoint(
        &self,
        origin: &impl Origin,
        hop: &Hop,
        timeout: Duration,
        claims: Claims<'_>,
    ) -> Result<Upstream, Reason> {
        let peer = (hop.addr, hop.identity.clone());
        self.hbone(origin, peer, hop.authority, timeout, claims)
            .await
    }

    /// An HBONE tunnel to `addr`, where `destination` must answer, for
    /// `authority`. Waits for the far end to accept: a refusal or a silent
    /// endpoint is found before the client's first byte, while another can
    /// be tried.
    async fn hbone(
        &self,
        origin: &impl Origin,
        (addr, destination): (SocketAddr, Identity),
        authority: SocketAddr,
        timeout: Duration,
        claims: Claims<'_>,
    ) -> Result<Upstream, Reason> {
        let source = origin.identity();
        if self.certs.current(source).is_none() {
            return Err(Reason::NoCertificate);
        }
        let key = PoolKey {
            source: source.clone(),
            destination: destination.clone(),
            addr,
        };
        let tls = self.clients.get(source, &destination).map_err(|err| {
            warn!(%err, "no TLS configuration");
            Reason::Tls
        })?;
        let connect = tokio::time::timeout(timeout, async {
            let mut tunnel = self
                .pool
                .connect(
                    &key,
                    &authority.into(),
                    Claims {
                        source: None,
                        ..claims
                    },
                    tls,
                    || origin.dial(addr),
                )
                .await?;
            tunnel
                .established()
                .await
                .map_err(|source| strait_hbone::Error::Connect { source })?;
            Ok::<_, strait_hbone::Error>(tunnel)
        });
        match connect.await {
            Ok(Ok(tunnel)) => Ok(Upstream::Hbone {
                tunnel,
                destination,
            }),
            Err(_) => {
                warn!(%destination, %addr, ?timeout, "HBONE connect timed out");
                self.pool.forget(&key);
                Err(Reason::Upstream)
            }
            Ok(Err(err)) => {
                warn!(%err, %destination, %addr, "HBONE connect failed");
                Err(if err.is_tls() {
                    Reason::Tls
                } else {
                    Reason::Upstream
                })
            }
        }
    }
}

/// Closes `stream` with a reset, so the client sees a failure rather than an
/// orderly (and misleading) end of stream.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
