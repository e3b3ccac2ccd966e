//! The inbound side: terminate mutual TLS, then serve HTTP/2 CONNECT
//! requests, each handed to the caller with the peer's identity. The caller
//! accepts a request (answering 200, getting the tunnel) or refuses it.
use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use h2::{RecvStream, server::SendResponse};
use hyper::{Method, Request, Response, StatusCode, body::Bytes};
use rustls::ServerConfig;
use strait_identity::{Identity, tls::identity_of};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::{Authority, CONNECTION_WINDOW, Error, MAX_FRAME, STREAM_WINDOW, Source, Tunnel};

/// One CONNECT request from an authenticated peer.
pub struct Connect {
    pub peer: Identity,
    /// The TCP peer of the HBONE connection.
    pub peer_addr: SocketAddr,
    /// Where the peer wants to go.
    pub authority: Authority,
    /// Where the client is, when it came through an east-west gateway.
    pub source: Option<Source>,
    /// Whom the peer says it sends this for (a waypoint, for its client):
    /// a claim, for the handler to believe or not.
    pub on_behalf_of: Option<Identity>,
    /// The trace context of the span that opened the stream.
    pub traceparent: Option<String>,
    /// The stream, to accept or refuse.
    pub stream: PendingTunnel,
    /// The stream's place among its identity's (held while it lives), or
    /// [`OverLimit`] when the identity has as many as it may: the caller
    /// refuses it, and counts that.
    pub admitted: Result<StreamSlot, OverLimit>,
}

/// A stream's place among those of its peer identity.
pub struct StreamSlot {
    _slot: Slot<Identity>,
}

/// The peer identity already has `Limits::streams_per_identity` streams
/// open to this listener.
#[derive(Debug, Clone, Copy)]
pub struct OverLimit;

/// A CONNECT not answered yet. Dropping it refuses the stream.
pub struct PendingTunnel {
    respond: SendResponse<Bytes>,
    recv: RecvStream,
    authority: String,
    peer_addr: SocketAddr,
}

impl PendingTunnel {
    /// Answers 200; bytes the peer sent early are already waiting.
    pub fn accept(mut self) -> Result<Tunnel, Error> {
        let send = self
            .respond
            .send_response(status_response(StatusCode::OK), false)
            .map_err(|source| Error::H2 {
                addr: self.peer_addr,
                source,
            })?;
        Ok(Tunnel::accepted(send, self.recv, self.authority))
    }

    pub fn refuse(mut self, status: StatusCode) {
        let _ = self.respond.send_response(status_response(status), true);
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// What one peer may hold of the node proxy. A peer controls how many
/// connections it opens, how slowly it handshakes, how many streams it asks
/// for and how big its headers are: every one is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accepting the TCP connection to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress from one IP address at once; more are
    /// dropped unanswered.
    pub handshakes_per_ip: usize,
    /// Concurrent CONNECT streams on one connection (HTTP/2 SETTINGS); a
    /// peer that wants more opens another connection or waits.
    pub streams_per_connection: u32,
    /// TLS handshakes in progress from an address that is one of the
    /// network's east-west gateways: every client of other networks comes
    /// from there, so the gateway bounds each identity's share.
    pub gateway_handshakes: usize,
    /// HBONE connections one peer identity may hold to one pod. Across
    /// networks every tunnel is a connection of its own.
    pub connections_per_identity: usize,
    /// CONNECT streams one peer identity may have open to one pod, on all
    /// its connections: what a client's tunnels cost the pod's agent.
    pub streams_per_identity: usize,
    /// A request's headers, decoded (a CONNECT's are a few dozen bytes).
    pub max_header_list_size: u32,
    /// A connection with no open stream this long is closed.
    pub idle_timeout: Duration,
    /// Whether a connection's flushes are put off once to gather other
    /// streams' frames ([`crate::coalesce`]): for the waypoint.
    pub coalesce_writes: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            handshakes_per_ip: 64,
            gateway_handshakes: 4096,
            streams_per_connection: crate::STREAMS_PER_CONNECTION,
            // Sized from what legitimate clients open: a database pool of a
            // few hundred connections from another network is that many
            // HBONE connections of one identity.
            connections_per_identity: 1024,
            streams_per_identity: 1024,
            max_header_list_size: 16 << 10,
            idle_timeout: Duration::from_secs(300),
            coalesce_writes: false,
        }
    }
}

type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// Counts what peers hold, to enforce [`Limits`]: handshakes by IP,
/// connections and streams by identity. One per pod.
#[derive(Default)]
pub struct Admission {
    handshakes: Counts<IpAddr>,
    connections: Counts<Identity>,
    streams: Counts<Identity>,
}

/// A slot in one of [`Admission`]'s counts, given back on drop.
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    map: Counts<K>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slot<K> {
    fn take(map: &Counts<K>, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            map: map.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Admission {
    /// Peers currently counted (IPs handshaking, identities connected): for
    /// tests and leak checks.
    pub fn tracked(&self) -> (usize, usize) {
        let h = self
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let c = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        (h, c)
    }
}

/// Serves one accepted HBONE connection within `limits`, calling `handler`
/// for each CONNECT on a task of its own. A failed handshake (no
/// certificate, another CA, too slow) is `Error::Tls`; a peer over one of
/// its limits is `Error::Limit`. `from_gateway`: the TCP peer is one of
/// the network's east-west gateways (its handshakes are counted against
/// `gateway_handshakes`, not the per-address limit).
pub async fn serve<H, F>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    limits: Limits,
    (admission, from_gateway): (&Admission, bool),
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Connect) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let _ = tcp.set_nodelay(true);
    let tls_err = |source| Error::Tls {
        addr: peer_addr,
        source,
    };
    let handshaking = Slot::take(
        &admission.handshakes,
        peer_addr.ip(),
        if from_gateway {
            limits.gateway_handshakes
        } else {
            limits.handshakes_per_ip
        },
    )
    .ok_or(Error::Limit {
        addr: peer_addr,
        what: "TLS handshakes in progress from this address",
    })?;
    let stream = tokio::time::timeout(limits.handshake_timeout, TlsAcceptor::from(tls).accept(tcp))
        .await
        .map_err(|_| {
            tls_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })?
        .map_err(tls_err)?;
    drop(handshaking);
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(identity_of)
        .transpose()?
        .ok_or_else(|| tls_err(std::io::Error::other("the peer presented no certificate")))?;
    let _connected = Slot::take(
        &admission.connections,
        peer.clone(),
        limits.connections_per_identity,
    )
    .ok_or(Error::Limit {
        addr: peer_addr,
        what: "HBONE connections from this identity",
    })?;
    let h2_err = |source| Error::H2 {
        addr: peer_addr,
        source,
    };
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(limits.streams_per_connection)
        // Streams the peer resets before they are accepted wait in the
        // accept queue: as many as may be open (h2's default, 20, ends a
        // waypoint's shared connection, every client's streams on it, when
        // one client's cancelled requests pile up under load).
        .max_pending_accept_reset_streams(limits.streams_per_connection as usize)
        .max_header_list_size(limits.max_header_list_size)
        .handshake::<_, Bytes>(crate::coalesce::Coalesce::new(
            stream,
            limits.coalesce_writes,
        ))
        .await
        .map_err(h2_err)?;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        // Accepting also drives the connection's I/O for every open stream.
        let next = if open.load(Ordering::Acquire) == 0 {
            match tokio::time::timeout(limits.idle_timeout, connection.accept()).await {
                Ok(next) => next,
                Err(_) => {
                    debug!(%peer_addr, "idle HBONE connection closed");
                    connection.graceful_shutdown();
                    // Let the GOAWAY go out.
                    let _ = std::future::poll_fn(|cx| connection.poll_closed(cx)).await;
                    return Ok(());
                }
            }
        } else {
            connection.accept().await
        };
        let Some(next) = next else {
            return Ok(());
        };
        let (request, mut respond) = next.map_err(h2_err)?;
        let Some(authority) = authority(&request) else {
            debug!(%peer_addr, method = %request.method(), uri = %request.uri(), "not a CONNECT to ip:port or host:port");
            let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
            continue;
        };
        let source = match Source::from_headers(request.headers()) {
            Ok(source) => source,
            Err(err) => {
                debug!(%peer_addr, %err, "refused");
                let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
                continue;
            }
        };
        let on_behalf_of = match crate::source::on_behalf_of(request.headers()) {
            Ok(claim) => claim,
            Err(err) => {
                debug!(%peer_addr, %err, "refused");
                let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
                continue;
            }
        };
        let traceparent = crate::source::traceparent(request.headers());
        let recv = request.into_body();
        let active = StreamOpen::count(open.clone());
        let admitted = Slot::take(
            &admission.streams,
            peer.clone(),
            limits.streams_per_identity,
        )
        .map(|slot| StreamSlot { _slot: slot })
        .ok_or(OverLimit);
        let stream = handler(Connect {
            peer: peer.clone(),
            peer_addr,
            stream: PendingTunnel {
                respond,
                recv,
                authority: authority.to_string(),
                peer_addr,
            },
            authority,
            source,
            on_behalf_of,
            traceparent,
            admitted,
        });
        tokio::spawn(async move {
            stream.await;
            drop(active);
        });
    }
}

/// Counts an open stream while its task runs.
struct StreamOpen(Arc<AtomicUsize>);

impl StreamOpen {
    fn count(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(open)
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `ip:port` or `host:port` a CONNECT asks for; anything else is a
/// bad request.
fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if req.method() != Method::CONNECT {
        return None;
    }
    req.uri().authority()?.as_str().parse().ok()
}
