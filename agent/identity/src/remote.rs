//! The agent's side of the CA service (`strait-ca`): certificate signing
//! requests over mutual TLS, the agent authenticated by its node's
//! credential. The agent holds no signing key; it sends a CSR and gets a
//! certificate back, or the CA's reason for refusing.
//!
//! In Kubernetes the agent authenticates with its projected
//! ServiceAccount token instead, which the CA checks by TokenReview.
//!
//! The node credential is a directory that setup makes for each node
//! (`strait-ca node-credential`): the node's key and certificate (from the
//! CA's control root, not the mesh root, so it is never a workload
//! identity), the control root (to check the CA service) and the mesh root
//! (to check workloads).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::{
    CaClient, Error, SignRequest,
    ca::{SignFuture, SignedChain},
};

/// File names in a node credential directory.
pub mod credential {
    pub const NODE_CERT: &str = "node-cert.pem";
    pub const NODE_KEY: &str = "node-key.pem";
    /// Checks the CA service's certificate.
    pub const CONTROL_ROOT: &str = "control-root.pem";
    /// Checks workload certificates: the mesh's trust anchor.
    pub const MESH_ROOT: &str = "mesh-root.pem";
    /// The name the CA service's certificate carries.
    pub const CA_SERVER_NAME: &str = "strait-ca";

    const NODE_URI_PREFIX: &str = "strait-node://";

    /// The URI subject alternative name of `node`'s credential.
    pub fn node_uri(node: &str) -> String {
        format!("{NODE_URI_PREFIX}{node}")
    }

    /// The node a credential's URI names.
    pub fn node_of_uri(uri: &str) -> Option<&str> {
        uri.strip_prefix(NODE_URI_PREFIX).filter(|n| !n.is_empty())
    }
}

/// The signing request on the wire (`POST /v1/sign`, JSON). The identity is
/// the CSR's own subject alternative name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    /// PEM.
    pub csr: String,
    pub lifetime_seconds: u64,
}

/// The CA's answer: the chain, leaf first, in PEM.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignAnswer {
    pub chain: Vec<String>,
}

/// A refusal's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
}

/// Bounds an answer from the CA: a chain is a few kilobytes.
const MAX_ANSWER: usize = 256 << 10;

/// Where the CA replicas are, asked again for every request: fixed
/// addresses, or a Kubernetes Service's ready endpoints as the agent's
/// config knows them (replicas come and go).
pub type CaAddrs = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

pub struct RemoteCa {
    addrs: CaAddrs,
    tls: Arc<ClientConfig>,
    mesh_roots: Vec<CertificateDer<'static>>,
    /// SO_MARK for the connections, so the node's own capture leaves them
    /// alone.
    mark: Option<u32>,
    timeout: Duration,
    /// Where the next request starts, so replicas share the load.
    next: AtomicUsize,
    /// In Kubernetes: the agent's projected ServiceAccount token, read
    /// again for every request (the kubelet rotates it); sent instead of a
    /// node certificate.
    token: Option<PathBuf>,
    /// Requests in flight at once: well within the connections the CA
    /// takes from one address, however many pods start together.
    in_flight: tokio::sync::Semaphore,
}

/// [`RemoteCa`]'s requests at once.
const IN_FLIGHT: usize = 4;

/// A projected token is about a kilobyte.
const MAX_TOKEN: u64 = 64 << 10;

impl RemoteCa {
    /// The CA service at `addrs` (replicas, tried in turn), as the node
    /// whose credential is in `dir`, or, with `token`, as the agent whose
    /// ServiceAccount token that file holds (`dir` then needs only the
    /// roots). Each attempt is bounded by `timeout`.
    pub fn new(
        dir: &Path,
        addrs: CaAddrs,
        mark: Option<u32>,
        timeout: Duration,
        token: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, Error> {
            let path = file(name);
            let all = CertificateDer::pem_file_iter(&path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Parse(format!("{}: {e}", path.display())))?;
            if all.is_empty() {
                return Err(Error::Parse(format!(
                    "{}: no certificate in it",
                    path.display()
                )));
            }
            Ok(all)
        };
        let mut control = RootCertStore::empty();
        for root in certs(credential::CONTROL_ROOT)? {
            control.add(root)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(control);
        let tls = match &token {
            Some(_) => builder.with_no_client_auth(),
            None => {
                let key_path = file(credential::NODE_KEY);
                let key = PrivateKeyDer::from_pem_file(&key_path)
                    .map_err(|e| Error::Parse(format!("{}: {e}", key_path.display())))?;
                builder.with_client_auth_cert(certs(credential::NODE_CERT)?, key)?
            }
        };
        Ok(Self {
            addrs,
            tls: Arc::new(tls),
            mesh_roots: certs(credential::MESH_ROOT)?,
            mark,
            timeout,
            next: AtomicUsize::new(0),
            token,
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
        })
    }

    /// The token file's current content, checked for size.
    fn token(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.token else {
            return Ok(None);
        };
        let bad = |why: String| Error::Parse(format!("the token {}: {why}", path.display()));
        let size = std::fs::metadata(path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > MAX_TOKEN {
            return Err(bad(format!("{size} bytes; at most {MAX_TOKEN}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("not a bearer token".into()));
        }
        Ok(Some(text.to_owned()))
    }

    async fn sign_at(
        &self,
        addr: SocketAddr,
        body: &Bytes,
        token: Option<&str>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let unavailable = |what: &str, err: &dyn std::fmt::Display| Error::Unavailable {
            addr,
            reason: format!("{what}: {err}"),
        };
        let exchange = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| unavailable("socket", &e))?;
            if let Some(mark) = self.mark {
                socket2::SockRef::from(&socket)
                    .set_mark(mark)
                    .map_err(|e| unavailable("SO_MARK", &e))?;
            }
            let tcp = socket
                .connect(addr)
                .await
                .map_err(|e| unavailable("connecting", &e))?;
            let name = ServerName::try_from(credential::CA_SERVER_NAME)
                .map_err(|e| unavailable("server name", &e))?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unavailable("TLS", &e))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unavailable("HTTP", &e))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(%addr, %err, "CA connection ended");
                }
            });
            let mut request = Request::post("/v1/sign")
                .header(header::HOST, credential::CA_SERVER_NAME)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|e| unavailable("request", &e))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unavailable("HTTP", &e))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unavailable("reading the answer", &e))?
                .to_bytes();
            Ok((status, answer))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(
                    "no answer",
                    &format_args!("within {:?}", self.timeout),
                ))
            })
    }

    async fn sign_request(&self, request: SignRequest) -> Result<SignedChain, Error> {
        let _turn = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Error::NoReplica)?;
        let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", request.csr.clone()));
        let body = serde_json::to_vec(&SignBody {
            csr,
            lifetime_seconds: request.lifetime.as_secs(),
        })
        .map_err(|e| Error::Parse(e.to_string()))?;
        let body = Bytes::from(body);
        let token = self.token()?;
        let addrs = (self.addrs)();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..addrs.len() {
            let addr = addrs[(start + i) % addrs.len()];
            match self.sign_at(addr, &body, token.as_deref()).await {
                Ok((status, answer)) => return decode(&request, status, &answer),
                Err(err) => {
                    debug!(%addr, %err, "CA replica unavailable");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(Error::NoReplica))
    }
}

/// A 200 with a chain, or the CA's refusal as an error.
fn decode(request: &SignRequest, status: StatusCode, answer: &[u8]) -> Result<SignedChain, Error> {
    if !status.is_success() {
        let reason = serde_json::from_slice::<Refusal>(answer)
            .map(|r| r.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(answer).into_owned());
        return Err(Error::Refused {
            identity: request.identity.to_string(),
            reason: format!("{status}: {reason}"),
        });
    }
    let answer: SignAnswer = serde_json::from_slice(answer)
        .map_err(|e| Error::Parse(format!("the CA's answer: {e}")))?;
    let chain = answer
        .chain
        .iter()
        .map(|pem| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| Error::Parse(format!("a certificate from the CA: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(Error::Parse("the CA sent an empty chain".into()));
    }
    Ok(SignedChain { chain })
}

impl CaClient for RemoteCa {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(self.sign_request(request))
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.mesh_roots.clone()
    }
}
