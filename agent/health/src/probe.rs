//! A WorkloadGroup `probe`, as the kubelet runs a readiness probe:
//! `httpGet` (a status from 200 to 399 passes; HTTPS does not check the
//! certificate, as the kubelet does not), `tcpSocket` (the connection
//! opens), `exec` (the command exits 0, run in the workload's network
//! namespace) and `grpc` (the standard health service answers SERVING).
//! [`Tracker`] applies the thresholds.
use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_config::manifest::networking::Probe;
use tokio::net::TcpStream;

/// Where a probe runs: the agent opens connections and runs commands as if
/// from inside the workload.
pub trait Target: Send + Sync {
    /// The address a probe without `host` connects to.
    fn address(&self) -> IpAddr;
    /// A TCP connection from inside the workload's network namespace.
    fn connect(&self, to: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
    /// `argv` ready to run inside the workload's network namespace.
    fn command(&self, argv: &[String]) -> io::Result<tokio::process::Command>;
}

/// `argv` as a command, before [`Target::command`] places it.
pub fn command(argv: &[String]) -> io::Result<tokio::process::Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// The probe's timing, with the kubelet's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub initial_delay: Duration,
    pub timeout: Duration,
    pub period: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What one probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Http {
        tls: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("cannot resolve {host:?}")]
    Resolve { host: String },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("running {command:?}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command:?} exited with {status}")]
    Exit { command: String, status: String },
    #[error("gRPC status {0}")]
    GrpcStatus(String),
    #[error("gRPC health status {0} (not SERVING)")]
    NotServing(u64),
}

/// Reads a WorkloadGroup `probe`; `None` when it names no handler (the
/// config check refuses such a probe).
pub fn from_manifest(p: &Probe) -> Option<(Settings, Check)> {
    let secs = |v: Option<u32>, default: u32| Duration::from_secs(u64::from(v.unwrap_or(default)));
    let settings = Settings {
        initial_delay: secs(p.initial_delay_seconds, 0),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1),
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1),
    };
    let port = |p: u32| u16::try_from(p).ok();
    let check = if let Some(h) = &p.http_get {
        Check::Http {
            tls: h.scheme.as_deref() == Some("HTTPS"),
            host: h.host.clone().filter(|h| !h.is_empty()),
            port: port(h.port)?,
            path: match h.path.as_deref() {
                Some(p) if p.starts_with('/') => p.to_string(),
                Some(p) => format!("/{p}"),
                None => "/".into(),
            },
            headers: h
                .http_headers
                .iter()
                .map(|nv| (nv.name.clone(), nv.value.clone()))
                .collect(),
        }
    } else if let Some(t) = &p.tcp_socket {
        Check::Tcp {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: port(t.port)?,
        }
    } else if let Some(e) = &p.exec {
        Check::Exec {
            command: e.command.clone(),
        }
    } else {
        let g = p.grpc.as_ref()?;
        Check::Grpc {
            port: port(g.port)?,
            service: g.service.clone().unwrap_or_default(),
        }
    };
    Some((settings, check))
}

/// Runs `check` once against `target`, within `timeout`.
pub async fn run<T: Target>(check: &Check, target: &T, timeout: Duration) -> Result<(), Failure> {
    tokio::time::timeout(timeout, run_unbounded(check, target))
        .await
        .map_err(|_| Failure::Timeout(timeout))?
}

async fn run_unbounded<T: Target>(check: &Check, target: &T) -> Result<(), Failure> {
    match check {
        Check::Tcp { host, port } => {
            let addr = resolve(target, host.as_deref(), *port).await?;
            connect(target, addr).await.map(drop)
        }
        Check::Http {
            tls,
            host,
            port,
            path,
            headers,
        } => {
            let addr = resolve(target, host.as_deref(), *port).await?;
            let stream = connect(target, addr).await?;
            let authority = match host {
                Some(h) => format!("{h}:{port}"),
                None => addr.to_string(),
            };
            if *tls {
                let name = host
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string())
                    .try_into()
                    .map_err(|_| Failure::Resolve {
                        host: host.clone().unwrap_or_default(),
                    })?;
                let tls = insecure_tls().map_err(|e| Failure::Tls(io::Error::other(e)))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, stream)
                    .await
                    .map_err(Failure::Tls)?;
                http_get(stream, &authority, path, headers).await
            } else {
                http_get(stream, &authority, path, headers).await
            }
        }
        Check::Exec { command } => exec(target, command).await,
        Check::Grpc { port, service } => {
            let addr = SocketAddr::new(target.address(), *port);
            grpc_health(connect(target, addr).await?, addr, service).await
        }
    }
}

async fn resolve<T: Target>(
    target: &T,
    host: Option<&str>,
    port: u16,
) -> Result<SocketAddr, Failure> {
    let ip = match host {
        None => target.address(),
        Some("localhost") => {
            if target.address().is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            }
        }
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => tokio::net::lookup_host((h, port))
                .await
                .ok()
                .and_then(|mut found| found.next())
                .map(|a| a.ip())
                .ok_or_else(|| Failure::Resolve { host: h.into() })?,
        },
    };
    Ok(SocketAddr::new(ip, port))
}

async fn connect<T: Target>(target: &T, addr: SocketAddr) -> Result<TcpStream, Failure> {
    target
        .connect(addr)
        .await
        .map_err(|source| Failure::Connect { addr, source })
}

async fn http_get<S>(
    stream: S,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "strait-probe")
        .header(header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = send
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await;
    driver.abort();
    let status = response?.status().as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(Failure::Status(status))
    }
}

/// `grpc.health.v1.Health/Check` for `service`; passes on SERVING.
async fn grpc_health(stream: TcpStream, addr: SocketAddr, service: &str) -> Result<(), Failure> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; } in a gRPC frame.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let request = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from(frame)))?;
    let result = async {
        let response = send.send_request(request).await?;
        let head_status = response.headers().get("grpc-status").cloned();
        let body = response.into_body().collect().await?;
        let status = body
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(head_status);
        let status = status
            .as_ref()
            .and_then(|s| s.to_str().ok())
            .unwrap_or("missing")
            .to_string();
        if status != "0" {
            return Err(Failure::GrpcStatus(status));
        }
        // HealthCheckResponse { ServingStatus status = 1; }, SERVING = 1.
        let mut bytes = body.to_bytes();
        if bytes.len() >= 5 {
            bytes.advance(5);
        }
        let serving = serving_status(&bytes);
        if serving == 1 {
            Ok(())
        } else {
            Err(Failure::NotServing(serving))
        }
    }
    .await;
    driver.abort();
    result
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field 1 (varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent.
fn serving_status(message: &[u8]) -> u64 {
    let mut i = 0;
    while i < message.len() {
        let tag = message[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        // Only varint fields are expected; stop at anything else.
        if tag & 0x07 != 0 {
            return 0;
        }
        while let Some(b) = message.get(i) {
            i += 1;
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        if tag >> 3 == 1 {
            return value;
        }
    }
    0
}

async fn exec<T: Target>(target: &T, command: &[String]) -> Result<(), Failure> {
    let text = command.join(" ");
    let mut cmd = target.command(command).map_err(|source| Failure::Spawn {
        command: text.clone(),
        source,
    })?;
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| Failure::Spawn {
            command: text.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Exit {
            command: text,
            status: status.to_string(),
        })
    }
}

/// TLS that takes any server certificate, as the kubelet's HTTPS probes do:
/// the probe asks whether the workload answers, not who it is.
fn insecure_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Readiness from probe results: not ready until `success_threshold`
/// passes in a row; ready until `failure_threshold` failures in a row.
#[derive(Clone, Debug)]
pub struct Tracker {
    settings: Settings,
    ready: bool,
    passes: u32,
    failures: u32,
}

impl Tracker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ready: false,
            passes: 0,
            failures: 0,
        }
    }

    /// Picks up where an earlier tracker left off (an agent restarting
    /// keeps its workloads' last published readiness).
    pub fn resume(settings: Settings, ready: bool) -> Self {
        Self {
            ready,
            ..Self::new(settings)
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Records one result; returns the new readiness when it changed.
    pub fn observe(&mut self, passed: bool) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.passes = 0;
        }
        let now = if self.ready {
            self.failures < self.settings.failure_threshold
        } else {
            self.passes >= self.settings.success_threshold
        };
        (now != self.ready).then(|| {
            self.ready = now;
            now
        })
    }
}

#[cfg(test)]
mod tests {
    use strait_config::manifest::networking::{Exec, HttpGet, TcpSocket};

    use super::*;

    struct Loopback;

    impl Target for Loopback {
        fn address(&self) -> IpAddr {
            IpAddr::from([127, 0, 0, 1])
        }
        fn connect(&self, to: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
            TcpStream::connect(to)
        }
        fn command(&self, argv: &[String]) -> io::Result<tokio::process::Command> {
            command(argv)
        }
    }

    fn settings(success: u32, failure: u32) -> Settings {
        Settings {
            initial_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            period: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_decide_transitions() {
        let mut t = Tracker::new(settings(2, 3));
        assert!(!t.ready(), "not ready before the first pass");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a pass resets the failure run");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));

        let mut resumed = Tracker::resume(settings(2, 3), true);
        assert!(resumed.ready());
        assert_eq!(resumed.observe(true), None);
    }

    #[test]
    fn manifest_defaults_are_the_kubelets() {
        let probe = Probe {
            tcp_socket: Some(TcpSocket {
                host: None,
                port: 8080,
            }),
            ..Default::default()
        };
        let (s, check) = from_manifest(&probe).expect("a handler");
        assert_eq!(
            s,
            Settings {
                initial_delay: Duration::ZERO,
                timeout: Duration::from_secs(1),
                period: Duration::from_secs(10),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        assert_eq!(
            check,
            Check::Tcp {
                host: None,
                port: 8080
            }
        );
        assert!(from_manifest(&Probe::default()).is_none());
    }

    /// A one-shot HTTP/1.1 server answering `status` to every request.
    async fn http_answering(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_tcp_and_exec_probes_pass_and_fail() {
        let ok = http_answering(204).await;
        let bad = http_answering(503).await;
        let http = |port| {
            from_manifest(&Probe {
                http_get: Some(HttpGet {
                    path: Some("ready".into()),
                    port: u32::from(port),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap()
            .1
        };
        let t = Duration::from_secs(2);
        assert!(run(&http(ok), &Loopback, t).await.is_ok());
        let err = run(&http(bad), &Loopback, t).await.unwrap_err();
        assert_eq!(err.to_string(), "HTTP status 503");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let tcp = |port| Check::Tcp { host: None, port };
        assert!(run(&tcp(ok), &Loopback, t).await.is_ok());
        assert!(matches!(
            run(&tcp(closed), &Loopback, t).await,
            Err(Failure::Connect { .. })
        ));

        let exec = |argv: &[&str]| {
            from_manifest(&Probe {
                exec: Some(Exec {
                    command: argv.iter().map(|s| s.to_string()).collect(),
                }),
                ..Default::default()
            })
            .unwrap()
            .1
        };
        assert!(run(&exec(&["true"]), &Loopback, t).await.is_ok());
        assert!(matches!(
            run(&exec(&["false"]), &Loopback, t).await,
            Err(Failure::Exit { .. })
        ));
        assert!(matches!(
            run(
                &exec(&["sleep", "5"]),
                &Loopback,
                Duration::from_millis(200)
            )
            .await,
            Err(Failure::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn https_probes_take_any_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["workload.invalid".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let https = Check::Http {
            tls: true,
            host: None,
            port,
            path: "/".into(),
            headers: Vec::new(),
        };
        let t = Duration::from_secs(2);
        run(&https, &Loopback, t).await.unwrap();
        // The same server spoken to in plain HTTP fails.
        let http = Check::Http {
            tls: false,
            host: None,
            port,
            path: "/".into(),
            headers: Vec::new(),
        };
        assert!(run(&http, &Loopback, t).await.is_err());
    }

    /// A gRPC response body: one message, then trailers.
    struct GrpcBody {
        data: Option<Bytes>,
        trailers: Option<hyper::HeaderMap>,
    }

    impl hyper::body::Body for GrpcBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            let frame = match (self.data.take(), self.trailers.take()) {
                (Some(d), t) => {
                    self.trailers = t;
                    Some(Ok(hyper::body::Frame::data(d)))
                }
                (None, Some(t)) => Some(Ok(hyper::body::Frame::trailers(t))),
                (None, None) => None,
            };
            std::task::Poll::Ready(frame)
        }
    }

    /// A gRPC health server over HTTP/2 answering `serving` with
    /// `grpc_status`, for the service `want` only (others: NOT_FOUND, 5).
    async fn grpc_server(serving: u8, grpc_status: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let path_ok = req.uri().path() == "/grpc.health.v1.Health/Check";
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        // 5-byte frame header, then field 1 = "shop".
                        let asked_shop =
                            body.get(5..) == Some(&[0x0a, 4, b's', b'h', b'o', b'p'][..]);
                        let mut trailers = hyper::HeaderMap::new();
                        let status = if path_ok && asked_shop {
                            grpc_status
                        } else {
                            "5"
                        };
                        trailers.insert("grpc-status", status.parse().unwrap());
                        let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, serving]);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(GrpcBody {
                                    data: Some(message),
                                    trailers: Some(trailers),
                                })
                                .unwrap(),
                        )
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        let t = Duration::from_secs(2);
        let grpc = |port, service: &str| Check::Grpc {
            port,
            service: service.into(),
        };
        let serving = grpc_server(1, "0").await;
        assert!(run(&grpc(serving, "shop"), &Loopback, t).await.is_ok());
        let err = run(&grpc(serving, "other"), &Loopback, t)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "gRPC status 5");
        let not_serving = grpc_server(2, "0").await;
        let err = run(&grpc(not_serving, "shop"), &Loopback, t)
            .await
            .unwrap_err();
        assert!(matches!(err, Failure::NotServing(2)), "{err}");
    }

    #[test]
    fn grpc_messages() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        assert_eq!(serving_status(&[0x08, 0x01]), 1);
        assert_eq!(serving_status(&[0x08, 0x02]), 2);
        assert_eq!(serving_status(&[]), 0);
    }
}
