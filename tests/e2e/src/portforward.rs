//! A kubelet's port-forward endpoint for a topology node, whose "pods" are
//! processes in its network namespace: the API server proxies a
//! `pods/portforward` request to `https://<node>:10250/portForward/<ns>/<pod>`
//! and this answers it as a kubelet does (WebSocket, subprotocol
//! `v4.channel.k8s.io`: per port a data and an error channel, each first
//! carrying the port number), connecting to the port inside the node's
//! namespace, which is where a host-network pod's loopback is.
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    thread::JoinHandle,
};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::{HeaderValue, StatusCode},
};

use crate::Result;

pub const KUBELET_PORT: u16 = 10250;
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Serves until dropped.
pub struct PortForward {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl PortForward {
    /// Listens on `ip:10250` inside the namespace at `netns` (a node's).
    pub fn start(netns: std::path::PathBuf, ip: IpAddr) -> Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec![ip.to_string()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (stop, mut stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let thread = std::thread::spawn(move || {
            // This thread, and every socket it makes, lives in the node's
            // namespace.
            let entered = File::open(&netns).map_err(|e| e.to_string()).and_then(|f| {
                // SAFETY: setns on a descriptor we hold; it moves only this
                // thread, which serves nothing else.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error().to_string())
                }
            });
            let runtime = match entered.and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            }) {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::bind(SocketAddr::new(ip, KUBELET_PORT)).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = serve(tls).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(err)) => Err(format!("the port-forward endpoint: {err}").into()),
            Err(_) => Err("the port-forward endpoint's thread ended".into()),
        }
    }
}

/// One `/portForward/<ns>/<pod>?port=N` upgrade: the bytes of the one
/// port asked for, both ways.
// tungstenite's handshake callback fixes its error type (a whole response).
#[allow(clippy::result_large_err)]
async fn serve<S>(stream: S) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut port = None;
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, mut resp: Response| {
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let query = req.uri().query().unwrap_or_default();
        port = query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            matches!(k, "port" | "ports").then(|| v.parse::<u16>().ok())?
        });
        if !req.uri().path().starts_with("/portForward/")
            || port.is_none()
            || !offered.split(',').any(|p| p.trim() == PROTOCOL)
        {
            let mut refused = ErrorResponse::new(Some("not a port-forward".into()));
            *refused.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refused);
        }
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
        Ok(resp)
    })
    .await?;
    let port = port.ok_or("no port")?;
    let (mut sink, mut source) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    sink.send(Message::binary(vec![0, lo, hi])).await?;
    sink.send(Message::binary(vec![1, lo, hi])).await?;
    let upstream = match TcpStream::connect((IpAddr::from([127, 0, 0, 1]), port)).await {
        Ok(upstream) => upstream,
        Err(err) => {
            let mut message = vec![1];
            message.extend(format!("connecting to port {port}: {err}").into_bytes());
            sink.send(Message::binary(message)).await?;
            return Ok(());
        }
    };
    let (mut from_app, mut to_app) = upstream.into_split();
    let to_client = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_app.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let mut frame = Vec::with_capacity(n + 1);
            frame.push(0);
            frame.extend_from_slice(&buf[..n]);
            sink.send(Message::binary(frame)).await?;
        }
        sink.close().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let to_server = async {
        while let Some(message) = source.next().await {
            match message? {
                Message::Binary(data) if data.first() == Some(&0) => {
                    to_app.write_all(&data[1..]).await?;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        to_app.shutdown().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let (a, b) = tokio::join!(to_client, to_server);
    a.and(b)
}
