//! Connections from the waypoint to endpoints, kept open between requests:
//! one HTTP/2 connection per endpoint and client identity, multiplexed;
//! for HTTP/1.1, idle connections reused one request at a time. Each is an
//! HBONE tunnel to the endpoint (its CONNECT names the client the waypoint
//! sends for, so a connection never carries two clients' requests), or
//! through its network's gateway, or a plain connection to a destination
//! outside the mesh (in TLS when its DestinationRule says so,
//! [`crate::origination`]).
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_hbone::{Claims, Tunnel};
use strait_identity::Identity;
use strait_route::Target;
use strait_state::Snapshot;
use strait_telemetry::Reason;
use strait_upstream::{Dialer, Origin, Upstream, remote::Failure};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use crate::{
    breaker::{Counters, Kind, Reuse},
    origination::Tls,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies as the waypoint passes them on.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const IDLE_PER_ENDPOINT: usize = 32;
/// How often a request waiting for an HTTP/1.1 connection looks again.
const PENDING_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

pub enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    pub async fn send(
        &mut self,
        request: hyper::Request<Body>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        match self {
            Self::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Self::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }

    fn usable(&self) -> bool {
        match self {
            Self::Http1(s) => s.is_ready(),
            Self::Http2(s) => !s.is_closed(),
        }
    }
}

/// The endpoint, the version spoken, whom for, and the server name TLS is
/// originated for.
type Key = (SocketAddr, Version, Identity, Option<String>);

/// A connection kept for reuse.
struct Pooled {
    sender: Sender,
    /// Requests it has carried.
    uses: u32,
    /// Since when it has been idle (HTTP/1.1) or last taken (HTTP/2).
    since: std::time::Instant,
    reuse: Reuse,
}

impl Pooled {
    fn fresh(&self) -> bool {
        let open = match &self.sender {
            Sender::Http1(s) => !s.is_closed(),
            Sender::Http2(s) => !s.is_closed(),
        };
        open && self.since.elapsed() < self.reuse.idle_timeout
            && self.reuse.max_requests.is_none_or(|max| self.uses < max)
    }
}

/// A connection taken for one request, with the requests it carried
/// before.
pub struct Lease {
    pub sender: Sender,
    uses: u32,
}

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<Key, Vec<Pooled>>>,
    /// HTTP/2: one connection opens at a time per key, and the requests
    /// that arrive meanwhile share it (not one connection each); when it
    /// fails, they fail at once rather than each waiting its own timeout.
    /// The time of the last failure.
    opening: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<std::time::Instant>>>>>,
}

impl Upstreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Pooled>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connections idle past their timeout or used up.
    pub fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.values_mut() {
            list.retain(Pooled::fresh);
        }
        idle.retain(|_, list| !list.is_empty());
        drop(idle);
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, gate| Arc::strong_count(gate) > 1);
    }

    /// A connection to `target` speaking `version`: an open one, or a new
    /// one, whose CONNECT names `client` and the request's trace.
    pub async fn take(
        &self,
        from: Dialing<'_, impl Origin>,
        state: &Snapshot,
        target: &Target,
        (version, client, traceparent): (Version, Option<&Identity>, Option<&str>),
        (counters, max_connections, max_pending, reuse): (&Arc<Counters>, usize, usize, Reuse),
    ) -> Result<Lease, Reason> {
        // Connections sent for no client are the waypoint's own.
        let key = (
            address(target),
            version,
            client.unwrap_or(from.origin.identity()).clone(),
            from.tls.map(|t| t.name().to_string()),
        );
        if let Some(lease) = self.idle(&key) {
            return Ok(lease);
        }
        let mut opening = None;
        if version == Version::Http2 {
            let asked = std::time::Instant::now();
            let gate = self
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.clone())
                .or_default()
                .clone();
            let turn = gate.lock_owned().await;
            if turn.is_some_and(|failed| failed >= asked) {
                return Err(Reason::Upstream);
            }
            if let Some(lease) = self.idle(&key) {
                return Ok(lease);
            }
            opening = Some(turn);
        }
        let failed =
            |opening: &mut Option<tokio::sync::OwnedMutexGuard<Option<std::time::Instant>>>| {
                if let Some(turn) = opening.as_mut() {
                    **turn = Some(std::time::Instant::now());
                }
            };
        // HTTP/1.1: a new connection takes one of the destination's
        // `max_connections` (reserved before it is opened); with all of
        // them busy, the request waits for one, as one of at most
        // `max_pending`.
        let reserve = || {
            counters
                .connections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max_connections).then_some(n + 1)
                })
                .is_ok()
        };
        let reserved = version == Version::Http1;
        if reserved && !reserve() {
            let _pending = counters
                .take(Kind::Pending, max_pending)
                .ok_or(Reason::Overflow)?;
            loop {
                let freed = counters.freed.notified();
                if let Some(lease) = self.idle(&key) {
                    return Ok(lease);
                }
                if reserve() {
                    break;
                }
                // An idle connection kept for another client holds a place
                // this request could use: close it.
                self.evict_idle_http1(&key);
                // A connection also frees when its answer's body ends,
                // which nothing announces: look again now and then.
                let _ = tokio::time::timeout(PENDING_RECHECK, freed).await;
            }
        }
        // Given back if the connection does not open.
        let release = |counters: &Counters| {
            counters.connections.fetch_sub(1, Ordering::AcqRel);
            counters.freed.notify_waiters();
        };
        let claims = Claims {
            on_behalf_of: client,
            traceparent,
            ..Claims::default()
        };
        let io = match open(&from, state, target, claims, version).await {
            Ok(io) => io,
            Err(reason) => {
                if reserved {
                    release(counters);
                }
                failed(&mut opening);
                return Err(reason);
            }
        };
        let io = TokioIo::new(io);
        let sender = match version {
            Version::Http1 => {
                let (sender, conn) = match http1::handshake(io).await {
                    Ok(handshake) => handshake,
                    Err(err) => {
                        debug!(%err, "HTTP/1.1 handshake");
                        release(counters);
                        return Err(Reason::Upstream);
                    }
                };
                let counters = counters.clone();
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(%err, "upstream HTTP/1.1 connection ended");
                    }
                    release(&counters);
                });
                Sender::Http1(sender)
            }
            Version::Http2 => {
                let (sender, conn) = match http2::handshake(TokioExecutor::new(), io).await {
                    Ok(handshake) => handshake,
                    Err(err) => {
                        debug!(%err, "HTTP/2 handshake");
                        failed(&mut opening);
                        return Err(Reason::Upstream);
                    }
                };
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(%err, "upstream HTTP/2 connection ended");
                    }
                });
                self.lock().entry(key).or_default().insert(
                    0,
                    Pooled {
                        sender: Sender::Http2(sender.clone()),
                        uses: 1,
                        since: std::time::Instant::now(),
                        reuse,
                    },
                );
                Sender::Http2(sender)
            }
        };
        Ok(Lease { sender, uses: 0 })
    }

    /// An open connection for `key` that can take a request now.
    fn idle(&self, key: &Key) -> Option<Lease> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        list.retain(Pooled::fresh);
        match key.1 {
            Version::Http2 => {
                let pooled = list.first_mut()?;
                let Sender::Http2(s) = &pooled.sender else {
                    return None;
                };
                let lease = Lease {
                    sender: Sender::Http2(s.clone()),
                    uses: pooled.uses,
                };
                pooled.uses += 1;
                pooled.since = std::time::Instant::now();
                Some(lease)
            }
            Version::Http1 => {
                let at = list.iter().position(|p| p.sender.usable())?;
                let pooled = list.swap_remove(at);
                Some(Lease {
                    sender: pooled.sender,
                    uses: pooled.uses,
                })
            }
        }
    }

    /// Closes one idle HTTP/1.1 connection to `key`'s endpoint kept for
    /// another client; its place frees when it has closed.
    fn evict_idle_http1(&self, key: &Key) {
        let mut idle = self.lock();
        let other = idle
            .iter_mut()
            .filter(|(k, _)| {
                k.0 == key.0 && k.1 == Version::Http1 && (k.2 != key.2 || k.3 != key.3)
            })
            .find_map(|(_, list)| {
                let at = list.iter().position(|p| p.sender.usable())?;
                Some(list.swap_remove(at))
            });
        drop(idle);
        drop(other);
    }

    /// Gives back an HTTP/1.1 connection once its exchange is under way:
    /// it is taken again only once ready for the next request.
    pub fn give_back(
        &self,
        target: &Target,
        (client, tls): (&Identity, Option<&str>),
        lease: Lease,
        reuse: Reuse,
    ) {
        // `client`: whom the connection was opened for (the waypoint's own
        // identity when it names no client).
        let pooled = Pooled {
            sender: lease.sender,
            uses: lease.uses + 1,
            since: std::time::Instant::now(),
            reuse,
        };
        if matches!(pooled.sender, Sender::Http1(_)) && pooled.fresh() {
            let mut idle = self.lock();
            let key = (
                address(target),
                Version::Http1,
                client.clone(),
                tls.map(str::to_string),
            );
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_PER_ENDPOINT {
                list.push(pooled);
            }
        }
    }

    /// Closes every connection to addresses `keep` refuses.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.lock().retain(|(addr, _, _, _), _| keep(*addr));
    }
}

fn address(target: &Target) -> SocketAddr {
    match target {
        Target::Direct(addr) => *addr,
        Target::Remote(via) => via.gateway,
        Target::Waypoint(hop) => hop.addr,
    }
}

/// Where connections to endpoints leave from: the dialer, as whom, and how
/// long opening one may take.
pub struct Dialing<'a, O> {
    pub dialer: &'a Dialer,
    pub origin: &'a O,
    pub timeout: std::time::Duration,
    /// TLS to originate, should the endpoint be outside the mesh.
    pub tls: Option<Tls<'a>>,
}

/// The bytes' way to `target`, with what its CONNECT claims.
async fn open(
    from: &Dialing<'_, impl Origin>,
    state: &Snapshot,
    target: &Target,
    claims: Claims<'_>,
    version: Version,
) -> Result<Io, Reason> {
    let (timeout, origin) = (from.timeout, from.origin);
    match target {
        Target::Direct(addr) => match from
            .dialer
            .open(origin, state, *addr, timeout, claims)
            .await?
        {
            Upstream::Hbone { tunnel, .. } | Upstream::Remote { tunnel, .. } => {
                Ok(Io::Tunnel(Box::new(tunnel)))
            }
            Upstream::Plain(tcp) => match from.tls {
                None => Ok(Io::Tcp(tcp)),
                Some(tls) => originate(tls, tcp, version, timeout).await,
            },
        },
        Target::Remote(via) => from
            .dialer
            .open_remote(origin, state, via, timeout, claims)
            .await
            .map(|(tunnel, _)| Io::Tunnel(Box::new(tunnel)))
            .map_err(|failure| match failure {
                Failure::Gateway(r) | Failure::Behind(r) => r,
            }),
        // A waypoint never sends to a waypoint.
        Target::Waypoint(_) => Err(Reason::Loop),
    }
}

/// TLS to an endpoint outside the mesh, as its DestinationRule says; a
/// rule that cannot be followed sends nothing rather than plain text.
async fn originate(
    tls: Tls<'_>,
    tcp: TcpStream,
    version: Version,
    timeout: std::time::Duration,
) -> Result<Io, Reason> {
    let origination = tls
        .origins
        .of(tls.settings, tls.host, version == Version::Http2)
        .ok_or(Reason::Upstream)?;
    let connector = tokio_rustls::TlsConnector::from(origination.config);
    match tokio::time::timeout(timeout, connector.connect(origination.server_name, tcp)).await {
        Ok(Ok(stream)) => Ok(Io::Tls(Box::new(stream))),
        Ok(Err(err)) => {
            debug!(%err, name = tls.name(), "TLS origination: the handshake failed");
            Err(Reason::Upstream)
        }
        Err(_) => Err(Reason::Upstream),
    }
}

/// An HBONE tunnel, a plain connection, or TLS originated over one.
pub enum Io {
    Tunnel(Box<Tunnel>),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tunnel(t) => t.is_write_vectored(),
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
