//! The outbound side: a pool of mutual-TLS HTTP/2 connections, one CONNECT
//! stream per proxied TCP connection.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Empty;
use hyper::{Method, Request, StatusCode, body::Bytes, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, pki_types::ServerName};
use strait_identity::Identity;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::{CONNECTION_WINDOW, Error, MAX_FRAME, STREAM_WINDOW, Tunnel};

/// Connections are shared only between the same two identities towards the
/// same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    /// The destination's HBONE address (`ip:15008`).
    pub addr: SocketAddr,
}

#[derive(Default)]
pub struct Pool {
    connections: Mutex<HashMap<PoolKey, SendRequest<Empty<Bytes>>>>,
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
        if let Some(sender) = self.pooled(key) {
            match open_stream(sender, key.addr, authority).await {
                // The pooled connection died (the peer restarted, the link
                // broke): forget it and try once on a new one.
                Err(Error::Http { .. }) => {
                    debug!(addr = %key.addr, "pooled HBONE connection is gone; reconnecting");
                    self.lock().remove(key);
                }
                other => return other,
            }
        }
        let sender = handshake(key.addr, tls, dial).await?;
        self.lock().insert(key.clone(), sender.clone());
        open_stream(sender, key.addr, authority).await
    }

    /// Connections currently pooled.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pooled(&self, key: &PoolKey) -> Option<SendRequest<Empty<Bytes>>> {
        let mut pool = self.lock();
        match pool.get(key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                pool.remove(key);
                None
            }
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, SendRequest<Empty<Bytes>>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One CONNECT stream on an established connection.
async fn open_stream(
    mut sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    authority: SocketAddr,
) -> Result<Tunnel, Error> {
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
    Ok(TokioIo::new(upgraded))
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
