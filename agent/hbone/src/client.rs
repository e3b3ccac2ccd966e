//! The outbound side: a pool of mutual-TLS HTTP/2 connections, one CONNECT
//! stream per proxied TCP connection.
//!
//! Concurrent streams to the same peer are spread over up to one connection
//! per core, so TLS and framing for parallel bulk flows run on all cores;
//! sequential streams keep reusing one connection.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http_body_util::Empty;
use hyper::{
    Method, Request, StatusCode, body::Bytes, client::conn::http2::SendRequest, upgrade::Upgraded,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, pki_types::ServerName};
use strait_identity::Identity;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::{CONNECTION_WINDOW, Error, MAX_FRAME, STREAM_WINDOW};

/// Connections are shared only between the same two identities towards the
/// same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    /// The destination's HBONE address (`ip:15008`).
    pub addr: SocketAddr,
}

struct Pooled {
    sender: SendRequest<Empty<Bytes>>,
    /// Open tunnels on this connection.
    active: Arc<AtomicUsize>,
}

pub struct Pool {
    connections: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
    max_per_key: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            max_per_key: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

impl Pool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Opens a tunnel to `authority` through the HBONE peer of `key`,
    /// reusing a pooled connection or making one with `dial` (which opens the
    /// TCP connection, from whichever namespace and address it must leave).
    pub async fn connect<D, F>(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        tls: Arc<ClientConfig>,
        dial: D,
    ) -> Result<Tunnel, Error>
    where
        D: Fn() -> F,
        F: Future<Output = std::io::Result<TcpStream>>,
    {
        if let Some((sender, active)) = self.pick(key) {
            match open_stream(sender.clone(), key.addr, authority, active).await {
                // The pooled connection died (the peer restarted, the link
                // broke): forget it and try once on a new one.
                Err(Error::Http { .. }) => {
                    debug!(addr = %key.addr, "pooled HBONE connection is gone; reconnecting");
                    self.forget_closed(key);
                }
                other => return other,
            }
        }
        let sender = handshake(key.addr, tls, dial).await?;
        let active = Arc::new(AtomicUsize::new(0));
        self.lock().entry(key.clone()).or_default().push(Pooled {
            sender: sender.clone(),
            active: active.clone(),
        });
        open_stream(sender, key.addr, authority, active).await
    }

    /// Connections currently pooled.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The least busy live connection, unless every one is busy and another
    /// may be opened.
    fn pick(&self, key: &PoolKey) -> Option<(SendRequest<Empty<Bytes>>, Arc<AtomicUsize>)> {
        let mut pool = self.lock();
        let conns = pool.get_mut(key)?;
        conns.retain(|c| !c.sender.is_closed());
        let least = conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Relaxed))?;
        if least.active.load(Ordering::Relaxed) > 0 && conns.len() < self.max_per_key {
            return None;
        }
        Some((least.sender.clone(), least.active.clone()))
    }

    fn forget_closed(&self, key: &PoolKey) {
        if let Some(conns) = self.lock().get_mut(key) {
            conns.retain(|c| !c.sender.is_closed() && c.sender.is_ready());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Pooled>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An established tunnel: a byte stream to the far end. Counts as active on
/// its connection until dropped.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    active: Arc<AtomicUsize>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One CONNECT stream on an established connection.
async fn open_stream(
    mut sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    authority: SocketAddr,
    active: Arc<AtomicUsize>,
) -> Result<Tunnel, Error> {
    // Counted from the start, so concurrent opens spread over connections.
    active.fetch_add(1, Ordering::Relaxed);
    let guard = Counted(active);
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    if response.status() != StatusCode::OK {
        return Err(Error::Refused {
            authority,
            status: response.status(),
        });
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    Ok(guard.into_tunnel(TokioIo::new(upgraded)))
}

/// Undoes the count if the stream never opens.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn into_tunnel(self, io: TokioIo<Upgraded>) -> Tunnel {
        let active = self.0.clone();
        std::mem::forget(self);
        Tunnel { io, active }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handshake<D, F>(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    dial: D,
) -> Result<SendRequest<Empty<Bytes>>, Error>
where
    D: Fn() -> F,
    F: Future<Output = std::io::Result<TcpStream>>,
{
    let tcp = dial()
        .await
        .map_err(|source| Error::Dial { addr, source })?;
    let _ = tcp.set_nodelay(true);
    // The verifier checks the SPIFFE identity, not this name.
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| Error::Tls { addr, source })?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| Error::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(%addr, %err, "HBONE connection ended");
        }
    });
    Ok(sender)
}
