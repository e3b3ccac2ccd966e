//! The small HTTP/1.1 servers around the mesh (the agent's admin, metrics
//! and readiness endpoints, the CA service), each bounded against clients
//! that open too many connections, send their headers slowly or never, or
//! hold a connection forever: one agent serves the whole node, so none of
//! them may be able to starve it.
use std::{
    convert::Infallible, error::Error as StdError, future::Future, net::SocketAddr, sync::Arc,
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
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
            let accept = accept.clone();
            tokio::spawn(async move {
                let _slot = slot;
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
}
