//! Mutual TLS 1.3 configurations for HBONE: a workload presents its own
//! certificate and checks that the peer holds the SPIFFE identity it expects.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use crate::{CertManager, Error, Identity};

/// HBONE speaks HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The SPIFFE identity in a certificate's URI subject alternative name.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, Error> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| Error::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| Error::Parse(e.to_string()))?
        .ok_or_else(|| Error::Parse("no subject alternative name".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Parse("no SPIFFE URI in the subject alternative name".into()))
}

/// Server side of a workload: requires a client certificate from the mesh
/// CA and presents the workload's current certificate.
pub fn server_config(
    certs: &Arc<CertManager>,
    identity: &Identity,
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        certs.roots().clone(),
        certs.provider().clone(),
    )
    .build()
    .map_err(|e| Error::Parse(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(certs.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert {
            certs: certs.clone(),
            identity: identity.clone(),
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A source identity and the destination identities it accepts (sorted).
type Pair = (Identity, Vec<Identity>);

/// Client configurations by (source, expected destination identities).
pub struct ClientConfigs {
    certs: Arc<CertManager>,
    cache: RwLock<HashMap<Pair, Arc<ClientConfig>>>,
}

impl ClientConfigs {
    pub fn new(certs: Arc<CertManager>) -> Self {
        Self {
            certs,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Forgets the configurations of (source, destination) pairs `keep`
    /// does not want: sources that left this node, destinations that left
    /// the mesh.
    pub fn retain(&self, keep: impl Fn(&Identity, &Identity) -> bool) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(source, destinations), _| destinations.iter().all(|d| keep(source, d)));
    }

    /// Cached configurations.
    pub fn len(&self) -> usize {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Presents `source`'s certificate and accepts only a server holding
    /// `destination`.
    pub fn get(
        &self,
        source: &Identity,
        destination: &Identity,
    ) -> Result<Arc<ClientConfig>, Error> {
        self.get_any(source, std::slice::from_ref(destination))
    }

    /// Presents `source`'s certificate and accepts a server holding any one
    /// of `destinations` (the identities of a service's endpoints, when a
    /// gateway picks the endpoint).
    pub fn get_any(
        &self,
        source: &Identity,
        destinations: &[Identity],
    ) -> Result<Arc<ClientConfig>, Error> {
        let mut expected = destinations.to_vec();
        expected.sort();
        expected.dedup();
        let key = (source.clone(), expected);
        if let Some(config) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(config.clone());
        }
        let verifier = SpiffeServerVerifier {
            roots: self.certs.roots().clone(),
            provider: self.certs.provider().clone(),
            expected: key.1.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(self.certs.provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CurrentCert {
                certs: self.certs.clone(),
                identity: source.clone(),
            }));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let config = Arc::new(config);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, config.clone());
        Ok(config)
    }
}

/// Resolves to the identity's certificate at handshake time, so rotation
/// takes effect on the next handshake.
#[derive(Debug)]
struct CurrentCert {
    certs: Arc<CertManager>,
    identity: Identity,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertManager")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.current(&self.identity)
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.certs.current(&self.identity)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to the mesh root, and a SPIFFE identity we dialled for: SPIFFE
/// certificates carry no DNS names, so the usual name check does not apply.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Sorted.
    expected: Vec<Identity>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match identity_of(end_entity) {
            Ok(id) if self.expected.binary_search(&id).is_ok() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::Signer;

    fn manager(dir: &std::path::Path) -> Arc<CertManager> {
        let ca = Signer::open_or_create(dir, "cluster.local").unwrap();
        CertManager::new(Arc::new(ca), Duration::from_secs(3600)).unwrap()
    }

    /// Runs a handshake in memory; the error of whichever side failed.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<Option<Identity>, rustls::Error> {
        let name = ServerName::try_from("10.0.0.1").unwrap();
        let mut c = ClientConnection::new(client, name)?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        Ok(s.peer_certificates()
            .and_then(|certs| identity_of(&certs[0]).ok()))
    }

    #[tokio::test]
    async fn mutual_tls_checks_both_identities() {
        let dir = tempfile::tempdir().unwrap();
        let certs = manager(dir.path());
        let (web, db) = (
            Identity::new("cluster.local", "shop", "web"),
            Identity::new("cluster.local", "shop", "db"),
        );
        certs.ensure(&web, Duration::from_secs(5)).await.unwrap();
        certs.ensure(&db, Duration::from_secs(5)).await.unwrap();
        let clients = ClientConfigs::new(certs.clone());
        let server = server_config(&certs, &db).unwrap();

        let peer = handshake(clients.get(&web, &db).unwrap(), server.clone()).unwrap();
        assert_eq!(
            peer,
            Some(web.clone()),
            "the server learns the client's identity"
        );

        let err = handshake(
            clients
                .get(&web, &Identity::new("cluster.local", "shop", "admin"))
                .unwrap(),
            server,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn another_ca_is_refused_both_ways() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mesh, rogue) = (manager(dir_a.path()), manager(dir_b.path()));
        let (web, db) = (
            Identity::new("cluster.local", "shop", "web"),
            Identity::new("cluster.local", "shop", "db"),
        );
        mesh.ensure(&db, Duration::from_secs(5)).await.unwrap();
        mesh.ensure(&web, Duration::from_secs(5)).await.unwrap();
        rogue.ensure(&web, Duration::from_secs(5)).await.unwrap();
        rogue.ensure(&db, Duration::from_secs(5)).await.unwrap();

        // A client with a certificate from another CA.
        let err = handshake(
            ClientConfigs::new(rogue.clone()).get(&web, &db).unwrap(),
            server_config(&mesh, &db).unwrap(),
        );
        assert!(err.is_err(), "a foreign client certificate was accepted");
        // A server with a certificate from another CA.
        let err = handshake(
            ClientConfigs::new(mesh.clone()).get(&web, &db).unwrap(),
            server_config(&rogue, &db).unwrap(),
        );
        assert!(err.is_err(), "a foreign server certificate was accepted");
    }

    #[tokio::test]
    async fn certificates_carry_the_identity_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(4)).unwrap();
        let id = Identity::new("cluster.local", "shop", "db");
        let asked = std::time::Instant::now();
        certs.ensure(&id, Duration::from_secs(5)).await.unwrap();
        let first = certs.infos()[0].clone();
        let key = certs.current(&id).unwrap();
        assert_eq!(identity_of(&key.cert[0]).unwrap(), id);
        // Exactly one new certificate, at half life (2 s of 4 s; the
        // certificate's end is truncated to the second, so 1.5 s at least).
        let deadline = asked + Duration::from_secs(30);
        while certs.infos()[0].generation == 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rotated_after = asked.elapsed();
        let second = certs.infos()[0].clone();
        println!("rotated after {rotated_after:?}");
        assert_eq!(second.generation, 2, "{first:?} {second:?}");
        assert_ne!(second.serial, first.serial);
        assert!(
            rotated_after >= Duration::from_millis(1500),
            "rotated before half life: {rotated_after:?}"
        );
    }

    #[tokio::test]
    async fn departed_identities_stop_rotating() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600)).unwrap();
        let (web, db) = (
            Identity::new("cluster.local", "shop", "web"),
            Identity::new("cluster.local", "shop", "db"),
        );
        certs.ensure(&web, Duration::from_secs(5)).await.unwrap();
        certs.ensure(&db, Duration::from_secs(5)).await.unwrap();
        assert_eq!(certs.wanted(), 2);
        certs.retain(&[web.clone()].into());
        assert_eq!(certs.wanted(), 1);
        assert!(certs.current(&db).is_none());
        assert!(certs.current(&web).is_some());
    }
}
