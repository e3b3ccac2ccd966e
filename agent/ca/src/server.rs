//! The signing service: HTTPS on 15012 (istiod's CA port), each client a
//! node authenticated by its credential (a client certificate), or, in
//! Kubernetes, an agent by its ServiceAccount token (`Authorization:
//! Bearer`, checked by TokenReview; its pod's node is the client's node).
//! `POST /v1/sign` takes a CSR, and signs it if the node runs a workload
//! in the mesh with the identity the CSR names; the lifetime is the
//! request's, capped by the CA.
use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use strait_identity::{
    Identity, Signer,
    ca::csr_identity,
    remote::{Refusal, SignAnswer, SignBody, credential},
};
use strait_kube::Asker;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::{
    control::{ControlRoot, pem_cert},
    metrics::{Metrics, Outcome},
    nodes::Registry,
};

/// A signing request is a CSR of a few hundred bytes.
const MAX_BODY: usize = 64 << 10;

pub struct Service {
    pub signer: Signer,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// In Kubernetes: checks agents' ServiceAccount tokens.
    pub tokens: Option<strait_kube::TokenReviewer>,
}

/// A token is about a kilobyte.
const MAX_TOKEN: usize = 64 << 10;

/// TLS 1.3 presenting the service's certificate, checking a node
/// credential from the control root; with `tokens_too`, a client without
/// one may connect, and must then send a ServiceAccount token.
pub fn tls_config(control: &ControlRoot, tokens_too: bool) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(control.root().clone())?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match tokens_too {
        true => builder.allow_unauthenticated(),
        false => builder,
    };
    let verifier = builder
        .build()
        .context("building the node credential verifier")?;
    let (chain, key) = control.server_credential()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the service's certificate")?;
    Ok(Arc::new(config))
}

pub fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    service: Arc<Service>,
) -> tokio::task::JoinHandle<()> {
    let limits = strait_http::Limits {
        max_connections: 256,
        // An agent asks for a few identities at a time; one address past
        // this is someone taking every place from the nodes.
        max_connections_per_ip: 16,
        header_read_timeout: Duration::from_secs(10),
        connection_lifetime: Duration::from_secs(30),
    };
    let acceptor = TlsAcceptor::from(tls);
    let metrics = service.metrics.clone();
    let refused: strait_http::OnRefused = Arc::new(move |_| metrics.connection_refused());
    strait_http::serve_counted(listener, limits, "CA", refused, move |tcp, peer| {
        let (acceptor, service) = (acceptor.clone(), service.clone());
        async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    service.metrics.request(Outcome::unauthenticated);
                    warn!(%peer, %err, "TLS handshake refused");
                    return None;
                }
            };
            let certs = stream.get_ref().1.peer_certificates();
            let node = certs.and_then(|certs| certs.first()).and_then(node_of);
            if node.is_none() && (certs.is_some() || service.tokens.is_none()) {
                service.metrics.request(Outcome::unauthenticated);
                warn!(%peer, "a control-root certificate that names no node");
                return None;
            }
            let handler = service_fn(move |req| {
                let (service, node) = (service.clone(), node.clone());
                async move { Ok::<_, Infallible>(service.handle(node, req).await) }
            });
            Some((stream, handler))
        }
    })
}

/// The node a credential names, from its URI subject alternative name.
fn node_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            credential::node_of_uri(uri).map(str::to_owned)
        }
        _ => None,
    })
}

/// The bearer token of a request, if it sent one.
fn bearer(req: &Request<Incoming>) -> Result<Option<String>, String> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if value.len() > MAX_TOKEN {
        return Err(format!("the token is over {MAX_TOKEN} bytes"));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Some(t.trim().to_owned()))
        .ok_or_else(|| "Authorization is not `Bearer <token>`".to_owned())
}

impl Service {
    /// Who asks: from its ServiceAccount token when it sent one, else the
    /// node its certificate names.
    async fn asker(
        &self,
        cert_node: Option<String>,
        req: &Request<Incoming>,
    ) -> Result<Asker, (Outcome, StatusCode, String)> {
        let unauthenticated =
            |why: String| (Outcome::unauthenticated, StatusCode::UNAUTHORIZED, why);
        match (bearer(req).map_err(unauthenticated)?, &self.tokens) {
            (Some(token), Some(tokens)) => {
                let (answer, how) = tokens.asker(&token).await;
                self.metrics.token_checked(how.as_str());
                answer.map_err(|e| match e {
                    strait_kube::TokenError::Refused(why) => unauthenticated(why),
                    strait_kube::TokenError::Unavailable(why) => {
                        (Outcome::unavailable, StatusCode::SERVICE_UNAVAILABLE, why)
                    }
                })
            }
            (Some(_), None) => Err(unauthenticated(
                "this CA does not take tokens (it reads no API server)".into(),
            )),
            (None, _) => cert_node.map(|node| Asker::Agent { node }).ok_or_else(|| {
                unauthenticated("neither a node certificate nor a ServiceAccount token".into())
            }),
        }
    }

    async fn handle(
        &self,
        cert_node: Option<String>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if req.uri().path() != "/v1/sign" {
            return refusal(StatusCode::NOT_FOUND, "no such endpoint");
        }
        let asker = match self.asker(cert_node, &req).await {
            Ok(asker) => asker,
            Err((outcome, status, reason)) => {
                self.metrics.request(outcome);
                warn!(%reason, "signing request from an unknown asker");
                return refusal(status, &reason);
            }
        };
        if req.method() != Method::POST {
            return refusal(StatusCode::METHOD_NOT_ALLOWED, "POST a signing request");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => {
                self.metrics.request(Outcome::invalid);
                return refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("reading the request (at most {MAX_BODY} bytes): {err}"),
                );
            }
        };
        let node = asker.node();
        match self.sign(&asker, &body) {
            Ok(chain) => {
                self.metrics.request(Outcome::signed);
                let answer = SignAnswer {
                    chain: chain.iter().map(pem_cert).collect(),
                };
                json(StatusCode::OK, &answer)
            }
            Err((outcome, status, reason)) => {
                self.metrics.request(outcome);
                warn!(node, %reason, "signing request refused");
                refusal(status, &reason)
            }
        }
    }

    fn sign(
        &self,
        asker: &Asker,
        body: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, (Outcome, StatusCode, String)> {
        let invalid = |reason: String| (Outcome::invalid, StatusCode::BAD_REQUEST, reason);
        let request: SignBody =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the request: {e}")))?;
        let csr =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes())
                .map_err(|e| invalid(format!("the CSR's PEM: {e}")))?;
        let identity: Identity = csr_identity(csr.as_ref()).map_err(|e| invalid(e.to_string()))?;
        match asker {
            Asker::Agent { node } => self.registry.may_hold(node, &identity),
            Asker::Pod {
                node,
                namespace,
                name,
                service_account,
            } => self
                .registry
                .pod_may_hold(node, (namespace, name, service_account), &identity),
        }
        .map_err(|reason| (Outcome::refused, StatusCode::FORBIDDEN, reason))?;
        let node = asker.node();
        let lifetime = Duration::from_secs(request.lifetime_seconds);
        let chain = self
            .signer
            .sign(&identity, csr.as_ref(), lifetime)
            .map_err(|e| invalid(e.to_string()))?;
        info!(
            node,
            %identity,
            lifetime_seconds = lifetime.min(self.signer.max_lifetime()).as_secs(),
            "certificate signed"
        );
        Ok(chain.chain)
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &Refusal {
            error: reason.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use strait_identity::{CertManager, RemoteCa};

    use super::*;

    /// A CA service on loopback, with its keys in `dir`.
    async fn start(dir: &Path) -> (std::net::SocketAddr, Arc<Metrics>) {
        let (_, config) =
            strait_config::check_text(Path::new("mesh.yaml"), crate::nodes::TEST_MESH);
        let signer = Signer::open_or_create(dir, "cluster.local")
            .unwrap()
            .with_max_lifetime(Duration::from_secs(3600));
        let control = ControlRoot::open_or_create(dir, "cluster.local").unwrap();
        let metrics = Arc::new(Metrics::new());
        let service = Arc::new(Service {
            signer,
            registry: Arc::new(Registry::new(config.unwrap())),
            metrics: metrics.clone(),
            tokens: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, tls_config(&control, false).unwrap(), service);
        (addr, metrics)
    }

    fn credential(ca_dir: &Path, node: &str, out: &Path) {
        let mesh = Signer::open_or_create(ca_dir, "cluster.local").unwrap();
        ControlRoot::open_or_create(ca_dir, "cluster.local")
            .unwrap()
            .write_node_credential(node, mesh.root(), out)
            .unwrap();
    }

    fn client(dir: &Path, addr: std::net::SocketAddr, lifetime: Duration) -> Arc<CertManager> {
        let ca = RemoteCa::new(
            dir,
            Arc::new(move || vec![addr]),
            None,
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        CertManager::new(Arc::new(ca), lifetime).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn signs_for_the_node_that_runs_the_workload_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let (addr, metrics) = start(&ca_dir).await;
        let (n1, n2) = (dir.path().join("n1"), dir.path().join("n2"));
        credential(&ca_dir, "n1", &n1);
        credential(&ca_dir, "n2", &n2);
        let db = Identity::new("cluster.local", "shop", "db");

        // n2 runs db: signed, with the CA's lifetime cap, not the asked year.
        let on_n2 = client(&n2, addr, Duration::from_secs(365 * 24 * 3600));
        on_n2.ensure(&db, Duration::from_secs(10)).await.unwrap();
        let info = &on_n2.infos()[0];
        let life = info.not_after - info.not_before;
        assert_eq!(
            life,
            3600 + strait_identity::ca::CLOCK_SKEW.as_secs() as i64,
            "{info:?}"
        );

        // n1 does not: refused, with the reason, and counted.
        let on_n1 = client(&n1, addr, Duration::from_secs(3600));
        let err = on_n1
            .ensure(&db, Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("403") && err.contains("on node n1"), "{err}");
        on_n1.retain(&Default::default());

        // A credential from another CA does not get past TLS.
        let rogue_dir = dir.path().join("rogue");
        credential(&rogue_dir, "n2", &dir.path().join("rogue-n2"));
        // Its roots are the rogue's: keep the real control root to reach
        // the service at all, so only the node credential is foreign.
        std::fs::copy(
            n2.join(credential::CONTROL_ROOT),
            dir.path().join("rogue-n2").join(credential::CONTROL_ROOT),
        )
        .unwrap();
        let rogue = client(
            &dir.path().join("rogue-n2"),
            addr,
            Duration::from_secs(3600),
        );
        let err = rogue
            .ensure(&db, Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unavailable") || err.contains("TLS"), "{err}");
        rogue.retain(&Default::default());

        let text = metrics.encode();
        for (result, at_least) in [("signed", 1), ("refused", 1), ("unauthenticated", 1)] {
            let line = text
                .lines()
                .find(|l| {
                    l.starts_with(&format!("strait_ca_requests_total{{result=\"{result}\"}}"))
                })
                .unwrap_or_else(|| panic!("no {result} count in\n{text}"));
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n >= at_least, "{line}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_get_a_reason_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, config) =
            strait_config::check_text(Path::new("mesh.yaml"), crate::nodes::TEST_MESH);
        let service = Service {
            signer: Signer::open_or_create(dir.path(), "cluster.local").unwrap(),
            registry: Arc::new(Registry::new(config.unwrap())),
            metrics: Arc::new(Metrics::new()),
            tokens: None,
        };
        for (body, want) in [
            (&b"not json"[..], "the request"),
            (br#"{"csr": "garbage", "lifetime_seconds": 60}"#, "PEM"),
            (
                br#"{"csr": "x", "lifetime_seconds": 60, "extra": 1}"#,
                "unknown field",
            ),
        ] {
            let asker = Asker::Agent { node: "n2".into() };
            let (outcome, status, reason) = service.sign(&asker, body).unwrap_err();
            assert_eq!(
                (outcome, status),
                (Outcome::invalid, StatusCode::BAD_REQUEST)
            );
            assert!(reason.contains(want), "{reason}");
        }
    }
}
