//! HBONE: each proxied TCP connection is one HTTP/2 CONNECT stream whose
//! authority is the destination `address:port`, inside a mutual-TLS
//! connection to the destination's port 15008. Connections are pooled by
//! (source identity, destination identity, destination address).
mod authority;
pub mod client;
mod coalesce;
pub mod server;
mod source;
mod tunnel;

pub use authority::{Authority, BadAuthority};
pub use client::{Pool, PoolKey, connect_over};
pub use server::{Admission, Connect, Limits, OverLimit, PendingTunnel, StreamSlot, serve};
pub use source::{
    BAGGAGE_HEADER, Claims, ON_BEHALF_OF_HEADER, SOURCE_NETWORK_HEADER, Source, TRACEPARENT_HEADER,
};
pub use tunnel::{Refused, Tunnel};

/// HTTP/2 windows large enough that flow control does not cap throughput on
/// fast links (hyper's defaults are 64 KiB).
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;
pub(crate) const MAX_FRAME: u32 = 1 << 20;
/// Concurrent streams a server takes on one connection by default (the
/// HTTP/2 SETTINGS it sends). A client assumes as many until the peer's
/// SETTINGS arrive: a burst opened on a new connection before then would
/// otherwise exceed them and be refused (`REFUSED_STREAM`).
pub(crate) const STREAMS_PER_CONNECTION: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {source}")]
    Dial {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    H2 {
        addr: std::net::SocketAddr,
        #[source]
        source: h2::Error,
    },
    /// The far end refused the CONNECT, or its answer never came.
    #[error("CONNECT: {source}")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    /// A peer over one of the server's limits.
    #[error("{addr}: too many {what}")]
    Limit {
        addr: std::net::SocketAddr,
        what: &'static str,
    },
    #[error("identity: {0}")]
    Identity(#[from] strait_identity::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

impl Error {
    /// Whether the failure is the peer's mTLS check (wrong identity, other
    /// CA) rather than reachability.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use hyper::StatusCode;
    use strait_identity::{CertManager, Identity, Signer, tls};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[tokio::test]
    async fn connect_tunnels_bytes_and_pools_connections() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600)).unwrap();
        let (web, db) = (
            Identity::new("cluster.local", "shop", "web"),
            Identity::new("cluster.local", "shop", "db"),
        );
        certs.ensure(&web, Duration::from_secs(5)).await.unwrap();
        certs.ensure(&db, Duration::from_secs(5)).await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_tls = tls::server_config(&certs, &db).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted_in = accepted.clone();
        let seen_peer = Arc::new(std::sync::Mutex::new(None));
        let seen = seen_peer.clone();
        let admission = Arc::new(Admission::default());
        tokio::spawn(async move {
            loop {
                let (tcp, peer_addr) = listener.accept().await.unwrap();
                accepted_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                let tls = server_tls.clone();
                let admission = admission.clone();
                tokio::spawn(async move {
                    serve(
                        tcp,
                        peer_addr,
                        tls,
                        Limits::default(),
                        (&admission, false),
                        move |connect: Connect| {
                            let seen = seen.clone();
                            async move {
                                if connect.authority.port() == 9 {
                                    connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
                                    return;
                                }
                                *seen.lock().unwrap() =
                                    Some((connect.peer.clone(), connect.authority));
                                let mut tunnel = connect.stream.accept().unwrap();
                                let mut buf = [0u8; 5];
                                tunnel.read_exact(&mut buf).await.unwrap();
                                tunnel.write_all(&buf.to_ascii_uppercase()).await.unwrap();
                                // End the stream; dropping it unfinished resets it.
                                tunnel.shutdown().await.unwrap();
                            }
                        },
                    )
                    .await
                });
            }
        });

        let clients = tls::ClientConfigs::new(certs.clone());
        let pool = Pool::new();
        let key = PoolKey {
            source: web.clone(),
            destination: db.clone(),
            addr,
        };
        let authority: Authority = "10.9.9.9:8080".parse().unwrap();
        for _ in 0..3 {
            let mut tunnel = pool
                .connect(
                    &key,
                    &authority,
                    Claims::default(),
                    clients.get(&web, &db).unwrap(),
                    || TcpStream::connect(addr),
                )
                .await
                .unwrap();
            tunnel.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 5];
            tunnel.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"HELLO");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "three tunnels, one connection"
        );
        assert_eq!(
            *seen_peer.lock().unwrap(),
            Some((web.clone(), authority.clone()))
        );

        // A refused CONNECT shows on the first read, after the client's
        // early bytes went out.
        let mut refused = pool
            .connect(
                &key,
                &"10.9.9.9:9".parse().unwrap(),
                Claims::default(),
                clients.get(&web, &db).unwrap(),
                || TcpStream::connect(addr),
            )
            .await
            .unwrap();
        refused.write_all(b"early").await.unwrap();
        let mut buf = [0u8; 1];
        let err = refused.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains("503"), "{err}");

        // Expecting another identity at that address fails in TLS.
        let wrong = PoolKey {
            destination: Identity::new("cluster.local", "shop", "admin"),
            ..key
        };
        let err = pool
            .connect(
                &wrong,
                &authority,
                Claims::default(),
                clients.get(&web, &wrong.destination).unwrap(),
                || TcpStream::connect(addr),
            )
            .await
            .err()
            .unwrap();
        assert!(err.is_tls(), "{err}");
    }

    /// A burst of streams to a peer not yet connected dials no more
    /// connections than the pool keeps per key: the rest wait for those
    /// dials and share them (else each would start a handshake, and the
    /// peer's per-address handshake bound would refuse the surplus).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_streams_shares_the_dials_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600)).unwrap();
        let (web, db) = (
            Identity::new("cluster.local", "shop", "web"),
            Identity::new("cluster.local", "shop", "db"),
        );
        certs.ensure(&web, Duration::from_secs(5)).await.unwrap();
        certs.ensure(&db, Duration::from_secs(5)).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_tls = tls::server_config(&certs, &db).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted_in = accepted.clone();
        let admission = Arc::new(Admission::default());
        tokio::spawn(async move {
            loop {
                let (tcp, peer_addr) = listener.accept().await.unwrap();
                accepted_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (tls, admission) = (server_tls.clone(), admission.clone());
                tokio::spawn(async move {
                    serve(
                        tcp,
                        peer_addr,
                        tls,
                        Limits::default(),
                        (&admission, false),
                        |connect: Connect| async move {
                            let mut tunnel = connect.stream.accept().unwrap();
                            let mut buf = [0u8; 1];
                            tunnel.read_exact(&mut buf).await.unwrap();
                            tunnel.write_all(&buf).await.unwrap();
                            tunnel.shutdown().await.unwrap();
                        },
                    )
                    .await
                });
            }
        });
        let clients = tls::ClientConfigs::new(certs.clone());
        let pool = Pool::new();
        let key = PoolKey {
            source: web.clone(),
            destination: db.clone(),
            addr,
        };
        const BURST: usize = 200;
        let streams: Vec<_> = (0..BURST)
            .map(|i| {
                let (pool, key, tls) = (pool.clone(), key.clone(), clients.get(&web, &db).unwrap());
                tokio::spawn(async move {
                    let authority: Authority = "10.9.9.9:8080".parse().unwrap();
                    let mut tunnel = pool
                        .connect(&key, &authority, Claims::default(), tls, || {
                            TcpStream::connect(addr)
                        })
                        .await?;
                    tunnel.write_all(&[i as u8]).await?;
                    let mut buf = [0u8; 1];
                    tunnel.read_exact(&mut buf).await?;
                    assert_eq!(buf[0], i as u8);
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .collect();
        for stream in streams {
            stream.await.unwrap().unwrap();
        }
        let dialed = accepted.load(std::sync::atomic::Ordering::SeqCst);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        println!("{BURST} streams at once: {dialed} connections (at most {cores})");
        assert!(dialed >= 1 && dialed <= cores, "{dialed} connections");
    }

    /// One identity's open streams to a listener are bounded on all its
    /// connections together; once one ends, there is room again. Another
    /// identity has room of its own.
    #[tokio::test]
    async fn one_identitys_streams_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600)).unwrap();
        let ids = ["web", "api", "db"].map(|sa| Identity::new("cluster.local", "shop", sa));
        for id in &ids {
            certs.ensure(id, Duration::from_secs(5)).await.unwrap();
        }
        let [web, api, db] = ids;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_tls = tls::server_config(&certs, &db).unwrap();
        let limits = Limits {
            streams_per_identity: 2,
            ..Limits::default()
        };
        let admission = Arc::new(Admission::default());
        tokio::spawn(async move {
            loop {
                let (tcp, peer_addr) = listener.accept().await.unwrap();
                let (tls, admission) = (server_tls.clone(), admission.clone());
                tokio::spawn(async move {
                    serve(
                        tcp,
                        peer_addr,
                        tls,
                        limits,
                        (&admission, false),
                        |connect: Connect| async move {
                            if connect.admitted.is_err() {
                                connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
                                return;
                            }
                            // Holds the stream (and its slot) until the client
                            // ends it.
                            let mut tunnel = connect.stream.accept().unwrap();
                            let mut rest = Vec::new();
                            let _ = tunnel.read_to_end(&mut rest).await;
                        },
                    )
                    .await
                });
            }
        });
        let clients = tls::ClientConfigs::new(certs.clone());
        let authority: Authority = "10.9.9.9:8080".parse().unwrap();
        let open = |source: &Identity, pool: &Arc<Pool>| {
            let key = PoolKey {
                source: source.clone(),
                destination: db.clone(),
                addr,
            };
            let tls = clients.get(source, &db).unwrap();
            let (pool, authority) = (pool.clone(), authority.clone());
            async move {
                let mut tunnel = pool
                    .connect(&key, &authority, Claims::default(), tls, || {
                        TcpStream::connect(addr)
                    })
                    .await
                    .unwrap();
                tunnel.established().await.map(|()| tunnel)
            }
        };
        // Two pools: two connections of one identity share its bound.
        let (pool_a, pool_b) = (Pool::new(), Pool::new());
        let first = open(&web, &pool_a).await.unwrap();
        let _second = open(&web, &pool_b).await.unwrap();
        let err = open(&web, &pool_a).await.err().unwrap();
        assert!(err.to_string().contains("503"), "{err}");
        assert!(open(&api, &pool_b).await.is_ok(), "another identity");
        drop(first);
        // The server sees the stream end, then frees its slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match open(&web, &pool_a).await {
                Ok(_) => break,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(err) => panic!("no room after a stream ended: {err}"),
            }
        }
    }
}
