//! The small HTTP/1.1 servers around the mesh (the agent's admin, metrics
//! and readiness endpoints, the CA service), each bounded against clients
//! that open too many connections, send their headers slowly or never, or
//! hold a connection forever: one agent serves the whole node, so none of
//! them may be able to starve it. And gRPC's framing for the unary calls
//! strait makes and answers over hyper.
pub mod grpc;

use std::{
    collections::HashMap,
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    server::conn::http1,
    service::Service,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, warn};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; beyond it the server stops accepting
    /// (clients wait in the listen backlog).
    pub max_connections: usize,
    /// Connections one client address may have open; more are closed at
    /// once, so one client cannot take every place.
    pub max_connections_per_ip: usize,
    /// For the connection's own handshake (TLS), if any, and then for each
    /// request's headers.
    pub header_read_timeout: Duration,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_ip: 16,
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Called with the address of each connection closed for being over
/// [`Limits::max_connections_per_ip`].
pub type OnRefused = Arc<dyn Fn(SocketAddr) + Send + Sync>;

/// Serves `listener` until the returned task is aborted. `accept` turns
/// each TCP connection into the stream to speak HTTP on (TLS, say) and the
/// service for it, or `None` to drop it; it runs within the header
/// timeout.
pub fn serve<A, AF, IO, S, B>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    accept: A,
) -> JoinHandle<()>
where
    A: Fn(TcpStream, SocketAddr) -> AF + Send + Sync + 'static,
    AF: Future<Output = Option<(IO, S)>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_counted(listener, limits, what, Arc::new(|_| {}), accept)
}

/// [`serve`], telling `refused` of each connection over the per-address
/// limit.
pub fn serve_counted<A, AF, IO, S, B>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    refused: OnRefused,
    accept: A,
) -> JoinHandle<()>
where
    A: Fn(TcpStream, SocketAddr) -> AF + Send + Sync + 'static,
    AF: Future<Output = Option<(IO, S)>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let accept = Arc::new(accept);
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(%err, "accepting on the {what} endpoint");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(from_ip) = PerIp::take(&per_ip, peer.ip(), limits.max_connections_per_ip)
            else {
                debug!(%peer, "{what}: over the connections one address may have; closed");
                refused(peer);
                drop(tcp);
                continue;
            };
            let accept = accept.clone();
            tokio::spawn(async move {
                let _slot = (slot, from_ip);
                let ready = tokio::time::timeout(limits.header_read_timeout, accept(tcp, peer));
                let Ok(Some((io, service))) = ready.await else {
                    debug!(%peer, "{what}: connection dropped before HTTP");
                    return;
                };
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(io), service);
                match tokio::time::timeout(limits.connection_lifetime, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => debug!(%peer, %err, "{what}: connection ended with an error"),
                    Err(_) => debug!(%peer, "{what}: connection closed at the end of its lifetime"),
                }
            });
        }
    })
}

/// One connection's place in its address's count; given back on drop.
struct PerIp {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut all = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = all.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut all = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = all.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.ip);
            }
        }
    }
}

/// A stats listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding metrics and readiness on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// [`serve_stats`] on each of `addrs`, bound first (all or none serve).
pub async fn bind_stats(
    addrs: &[SocketAddr],
    name: &'static str,
    encode: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, BindError> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        listeners.push(
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { addr, source })?,
        );
    }
    Ok(listeners
        .into_iter()
        .map(|l| serve_stats(l, name, encode.clone(), ready.clone()))
        .collect())
}

/// Prometheus metrics (`/metrics`, `/stats/prometheus`: what `encode`
/// gives when scraped) and readiness (`/healthz/ready`: 200 while `ready`
/// is set, else 503), as a gateway or waypoint serves them on each of its
/// admin listeners.
pub fn serve_stats(
    listener: TcpListener,
    name: &'static str,
    encode: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<()> {
    use std::sync::atomic::Ordering;

    use http_body_util::Full;
    use hyper::{StatusCode, body::Bytes, service::service_fn};
    serve(listener, Limits::default(), name, move |tcp, _peer| {
        let (encode, ready) = (encode.clone(), ready.clone());
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (encode, ready) = (encode.clone(), ready.clone());
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" | "/stats/prometheus" => (StatusCode::OK, encode()),
                        "/healthz/ready" if ready.load(Ordering::Acquire) => {
                            (StatusCode::OK, "ready\n".into())
                        }
                        "/healthz/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            Some((tcp, service))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::Full;
    use hyper::{StatusCode, body::Bytes, service::service_fn};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn hello_server(limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, limits, "test", |tcp, _peer| async move {
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Full::new(Bytes::from_static(b"hello\n")))
                        .unwrap(),
                )
            });
            Some((tcp, service))
        });
        (addr, task)
    }

    async fn get(addr: SocketAddr) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Clients that open connections and never send a header hold their
    /// slot only until the header timeout; a real client then gets in.
    #[tokio::test]
    async fn silent_clients_are_dropped_and_others_served() {
        let limits = Limits {
            max_connections: 4,
            max_connections_per_ip: 16,
            header_read_timeout: Duration::from_millis(300),
            connection_lifetime: Duration::from_secs(10),
        };
        let (addr, task) = hello_server(limits).await;
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = Instant::now();
        let answer = get(addr).await;
        println!(
            "served after {:?} with 8 silent connections and 4 slots",
            started.elapsed()
        );
        assert!(answer.contains("hello"), "{answer}");
        // The silent ones were closed by the server.
        for mut tcp in silent.drain(..4) {
            let mut buf = [0u8; 16];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            assert_eq!(n, 0, "a silent connection was answered");
        }
        task.abort();
    }

    /// A client that sends half a header and stalls is cut off too.
    #[tokio::test]
    async fn a_stalled_header_is_cut_off() {
        let limits = Limits {
            max_connections: 1,
            max_connections_per_ip: 16,
            header_read_timeout: Duration::from_millis(300),
            connection_lifetime: Duration::from_secs(10),
        };
        let (addr, task) = hello_server(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        let mut buf = Vec::new();
        // The server closes (with a 408 or nothing) instead of waiting.
        let _ = slow.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains("hello"), "{text}");
        assert!(get(addr).await.contains("hello"));
        task.abort();
    }

    /// One address's connections past its cap are closed at once; its
    /// earlier ones and another address's are served.
    #[tokio::test]
    async fn one_address_cannot_take_every_place() {
        let limits = Limits {
            max_connections: 8,
            max_connections_per_ip: 2,
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(10),
        };
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = refused.clone();
        let task = serve_counted(
            listener,
            limits,
            "test",
            Arc::new(move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
            |tcp, _peer| async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
                });
                Some((tcp, service))
            },
        );
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        // The three past the cap are closed without a word.
        let mut closed = 0;
        for tcp in &mut held[2..] {
            let mut buf = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 3);
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Another address (loopback's 127.0.0.2) gets in meanwhile.
        let other: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut tcp = socket.connect(other).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("hello"), "{answer}");
        task.abort();
    }
}
