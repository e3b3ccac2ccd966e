//! Connections from the waypoint to endpoints, kept open between requests:
//! one HTTP/2 connection per endpoint and client identity, multiplexed;
//! for HTTP/1.1, idle connections reused one request at a time. Each is an
//! HBONE tunnel to the endpoint (its CONNECT names the client the waypoint
//! sends for, so a connection never carries two clients' requests), or
//! through its network's gateway, or a plain connection to a destination
//! outside the mesh.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_hbone::Tunnel;
use strait_identity::Identity;
use strait_route::Target;
use strait_state::Snapshot;
use strait_telemetry::Reason;
use strait_upstream::{Upstream, remote::Failure};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tracing::debug;

use crate::proxy::Waypoint;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies as the waypoint passes them on.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const IDLE_PER_ENDPOINT: usize = 32;

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

type Key = (SocketAddr, Version, Identity);

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<Key, Vec<Sender>>>,
}

impl Upstreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Sender>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `target` speaking `version`: an open one, or a new
    /// one.
    pub async fn take(
        &self,
        waypoint: &Waypoint,
        state: &Snapshot,
        target: &Target,
        (version, client): (Version, &Identity),
    ) -> Result<Sender, Reason> {
        let key = (address(target), version, client.clone());
        {
            let mut idle = self.lock();
            if let Some(list) = idle.get_mut(&key) {
                list.retain(|s| match s {
                    Sender::Http1(s) => !s.is_closed(),
                    Sender::Http2(s) => !s.is_closed(),
                });
                match version {
                    Version::Http2 => {
                        if let Some(Sender::Http2(s)) = list.first() {
                            return Ok(Sender::Http2(s.clone()));
                        }
                    }
                    Version::Http1 => {
                        if let Some(at) = list.iter().position(Sender::usable) {
                            return Ok(list.swap_remove(at));
                        }
                    }
                }
            }
        }
        let io = open(waypoint, state, target, client).await?;
        let io = TokioIo::new(io);
        let sender = match version {
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(|err| {
                    debug!(%err, "HTTP/1.1 handshake");
                    Reason::Upstream
                })?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(%err, "upstream HTTP/1.1 connection ended");
                    }
                });
                Sender::Http1(sender)
            }
            Version::Http2 => {
                let (sender, conn) =
                    http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|err| {
                            debug!(%err, "HTTP/2 handshake");
                            Reason::Upstream
                        })?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(%err, "upstream HTTP/2 connection ended");
                    }
                });
                self.lock()
                    .entry(key)
                    .or_default()
                    .insert(0, Sender::Http2(sender.clone()));
                Sender::Http2(sender)
            }
        };
        Ok(sender)
    }

    /// Gives back an HTTP/1.1 connection once its exchange is under way:
    /// it is taken again only once ready for the next request.
    pub fn give_back(&self, target: &Target, client: &Identity, sender: Sender) {
        if let Sender::Http1(s) = &sender
            && !s.is_closed()
        {
            let mut idle = self.lock();
            let key = (address(target), Version::Http1, client.clone());
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_PER_ENDPOINT {
                list.push(sender);
            }
        }
    }

    /// Closes every connection to addresses `keep` refuses.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.lock().retain(|(addr, _, _), _| keep(*addr));
    }
}

fn address(target: &Target) -> SocketAddr {
    match target {
        Target::Direct(addr) => *addr,
        Target::Remote(via) => via.gateway,
        Target::Waypoint(hop) => hop.addr,
    }
}

/// The bytes' way to `target`, for `client`.
async fn open(
    waypoint: &Waypoint,
    state: &Snapshot,
    target: &Target,
    client: &Identity,
) -> Result<Io, Reason> {
    let timeout = waypoint.connect_timeout;
    match target {
        Target::Direct(addr) => match waypoint
            .dialer
            .open(waypoint, state, *addr, timeout, Some(client))
            .await?
        {
            Upstream::Hbone { tunnel, .. } | Upstream::Remote { tunnel, .. } => {
                Ok(Io::Tunnel(Box::new(tunnel)))
            }
            Upstream::Plain(tcp) => Ok(Io::Tcp(tcp)),
        },
        Target::Remote(via) => waypoint
            .dialer
            .open_remote(waypoint, state, via, timeout, Some(client))
            .await
            .map(|(tunnel, _)| Io::Tunnel(Box::new(tunnel)))
            .map_err(|failure| match failure {
                Failure::Gateway(r) | Failure::Behind(r) => r,
            }),
        // A waypoint never sends to a waypoint.
        Target::Waypoint(_) => Err(Reason::Loop),
    }
}

/// An HBONE tunnel or a plain connection.
pub enum Io {
    Tunnel(Box<Tunnel>),
    Tcp(TcpStream),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tunnel(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}
