//! TLS origination: a DestinationRule's `trafficPolicy.tls` in mode
//! `SIMPLE` or `MUTUAL` (its `portLevelSettings` first) has the waypoint
//! speak TLS to a destination outside the mesh, as Istio's egress
//! waypoints do: the client sends plain HTTP, the endpoint gets TLS. SNI is
//! the rule's `sni`, else the request's host; the certificate is checked
//! against `caCertificates` (else the system's roots) for the rule's
//! `subjectAltNames`, else for that name; `insecureSkipVerify` checks
//! nothing; `MUTUAL` presents `clientCertificate`/`privateKey`. Inside the
//! mesh HBONE already encrypts, so the rule does nothing there.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use strait_config::manifest::networking::{ClientTls, TrafficPolicy};
use tracing::warn;

/// What a connection to an endpoint outside the mesh is wrapped in.
pub struct Origination {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// A request's TLS origination, should its endpoint be outside the mesh.
#[derive(Clone, Copy)]
pub struct Tls<'a> {
    pub settings: &'a ClientTls,
    /// The request's host, without its port.
    pub host: &'a str,
    pub origins: &'a Origins,
}

impl Tls<'_> {
    /// The server name it opens connections for (the pool keeps them
    /// apart by it).
    pub fn name(&self) -> &str {
        self.settings.sni.as_deref().unwrap_or(self.host)
    }
}

/// The TLS settings for `port` of a rule's traffic policy, when they
/// originate TLS.
pub fn settings(traffic: Option<&TrafficPolicy>, port: u16) -> Option<&ClientTls> {
    let traffic = traffic?;
    let port_level = traffic
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        .and_then(|p| p.tls.as_ref());
    port_level
        .or(traffic.tls.as_ref())
        .filter(|tls| matches!(tls.mode.as_deref(), Some("SIMPLE" | "MUTUAL")))
}

/// An authority's host: without its port, an IPv6 address without its
/// brackets.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A configuration, or `None` for a rule that cannot be followed.
type Made = Option<Arc<ClientConfig>>;

/// Client configurations made from rules, kept until the config changes
/// (reading the files again for each connection would be wasted work); a
/// rule whose files do not load is remembered too, and said once.
#[derive(Default)]
pub struct Origins {
    /// By the rule's settings and whether HTTP/2 is spoken (ALPN).
    made: Mutex<HashMap<(String, bool), Made>>,
}

impl Origins {
    /// How to originate TLS for `tls` to `host` (the request's host, no
    /// port), speaking HTTP/2 or HTTP/1.1; `None` when the rule cannot be
    /// followed (the request is then refused, never sent in plain text).
    pub fn of(&self, tls: &ClientTls, host: &str, http2: bool) -> Option<Origination> {
        let name = tls.sni.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| warn!(sni = name, "TLS origination: not a server name"))
            .ok()?;
        let key = (serde_json::to_string(tls).unwrap_or_default(), http2);
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        let config = made
            .entry(key)
            .or_insert_with(|| match client_config(tls, http2) {
                Ok(config) => Some(Arc::new(config)),
                Err(why) => {
                    warn!(%why, "TLS origination: the DestinationRule's tls cannot be followed; its requests are refused");
                    None
                }
            })
            .clone()?;
        Some(Origination {
            config,
            server_name,
        })
    }

    /// Forgets what was made (after a reload: the files may have changed).
    pub fn clear(&self) {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The system's CA certificates (those it cannot read left out).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

fn client_config(tls: &ClientTls, http2: bool) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify == Some(true) {
        Arc::new(Unchecked(provider.signature_verification_algorithms))
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca_certificates {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("caCertificates {path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("caCertificates {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("caCertificates {path}: {e}"))?;
                }
            }
            None => roots = system_roots(),
        }
        if roots.is_empty() {
            return Err("no CA certificate to check the endpoint's with".into());
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        let names = tls
            .subject_alt_names
            .iter()
            .map(|n| {
                ServerName::try_from(n.clone())
                    .map_err(|_| format!("subjectAltNames: {n:?} is not a name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            webpki
        } else {
            Arc::new(AltNames { webpki, names })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = if tls.mode.as_deref() == Some("MUTUAL") {
        let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) else {
            return Err("MUTUAL needs clientCertificate and privateKey".into());
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("clientCertificate {cert}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("clientCertificate {cert}: {e}"))?;
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("privateKey {key}: {e}"))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

/// The chain checked as usual, the name against `subjectAltNames`.
#[derive(Debug)]
struct AltNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AltNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for name in &self.names {
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(verified) => return Ok(verified),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate; the handshake's signatures are
/// still checked, so the peer holds the key of the one it showed.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authoritys_host_is_without_its_port() {
        assert_eq!(host_of("api.example:443"), "api.example");
        assert_eq!(host_of("api.example"), "api.example");
        assert_eq!(host_of("[fd00::1]:80"), "fd00::1");
        assert_eq!(host_of("10.0.0.1:8080"), "10.0.0.1");
    }

    #[test]
    fn only_simple_and_mutual_originate_and_a_port_overrides_the_rule() {
        let policy: TrafficPolicy = serde_json::from_value(serde_json::json!({
            "tls": {"mode": "SIMPLE"},
            "portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "DISABLE"}}],
        }))
        .unwrap();
        assert!(settings(Some(&policy), 443).is_some());
        assert!(settings(Some(&policy), 80).is_none());
        let mesh: TrafficPolicy =
            serde_json::from_value(serde_json::json!({"tls": {"mode": "ISTIO_MUTUAL"}})).unwrap();
        assert!(settings(Some(&mesh), 443).is_none());
    }

    #[test]
    fn a_rule_that_cannot_be_followed_gives_nothing() {
        let origins = Origins::default();
        let missing: ClientTls = serde_json::from_value(serde_json::json!({
            "mode": "SIMPLE", "caCertificates": "/nonexistent/ca.pem"
        }))
        .unwrap();
        assert!(origins.of(&missing, "api.example", false).is_none());
        let mutual: ClientTls = serde_json::from_value(serde_json::json!({
            "mode": "MUTUAL", "insecureSkipVerify": true
        }))
        .unwrap();
        assert!(origins.of(&mutual, "api.example", false).is_none());
        let skip: ClientTls = serde_json::from_value(serde_json::json!({
            "mode": "SIMPLE", "insecureSkipVerify": true
        }))
        .unwrap();
        assert!(origins.of(&skip, "api.example", false).is_some());
    }
}
