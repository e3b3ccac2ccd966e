//! Certificates for the identities of this node's workloads: a key made
//! here, a CSR to the CA, the certificate kept and replaced at half life.
//! Replacing a certificate never touches open connections: TLS sessions keep
//! the keys they were established with.
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{CaClient, Error, Identity, SignRequest};

/// What `/certs` and `straitctl certs` show of a certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    pub identity: String,
    /// Hex.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// How many certificates this identity has had on this node.
    pub generation: u64,
}

struct Issued {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    refresh_at: SystemTime,
}

pub struct CertManager {
    ca: Arc<dyn CaClient>,
    lifetime: Duration,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    issued: RwLock<BTreeMap<Identity, Issued>>,
    /// Identities whose rotation task runs.
    rotating: std::sync::Mutex<std::collections::BTreeSet<Identity>>,
}

impl CertManager {
    pub fn new(ca: Arc<dyn CaClient>, lifetime: Duration) -> Result<Arc<Self>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for root in ca.roots() {
            roots.add(root)?;
        }
        Ok(Arc::new(Self {
            ca,
            lifetime,
            provider,
            roots: Arc::new(roots),
            issued: RwLock::new(BTreeMap::new()),
            rotating: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The current certificate of `identity`, if one was issued.
    pub fn current(&self, identity: &Identity) -> Option<Arc<CertifiedKey>> {
        self.read().get(identity).map(|i| i.key.clone())
    }

    pub fn infos(&self) -> Vec<CertInfo> {
        self.read().values().map(|i| i.info.clone()).collect()
    }

    /// Makes sure `identity` has a certificate and is rotated from now on.
    pub async fn ensure(self: &Arc<Self>, identity: &Identity) -> Result<(), Error> {
        if self.current(identity).is_none() {
            self.issue(identity).await?;
        }
        let mut rotating = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        if rotating.insert(identity.clone()) {
            let this = self.clone();
            let id = identity.clone();
            tokio::spawn(async move { this.rotate(id).await });
        }
        Ok(())
    }

    async fn rotate(self: Arc<Self>, identity: Identity) {
        loop {
            let refresh_at = self.read().get(&identity).map(|i| i.refresh_at);
            let wait = refresh_at
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            if let Err(err) = self.issue(&identity).await {
                // Try again soon; the old certificate stays in use meanwhile.
                let retry =
                    (self.lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(30));
                warn!(%identity, %err, ?retry, "certificate rotation failed");
                tokio::time::sleep(retry).await;
            }
        }
    }

    async fn issue(&self, identity: &Identity) -> Result<(), Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.der().to_vec();
        let signed = self
            .ca
            .sign(SignRequest {
                identity: identity.clone(),
                csr,
                lifetime: self.lifetime,
            })
            .await?;
        let leaf = signed
            .chain
            .first()
            .ok_or_else(|| Error::Parse("the CA sent an empty chain".into()))?;
        let (serial, not_before, not_after) = validity(leaf)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = self.provider.key_provider.load_private_key(private)?;
        let certified = Arc::new(CertifiedKey::new(signed.chain.clone(), signing_key));
        // Half of the remaining life, counted from now: the CA backdates
        // not_before for clock skew, which is no part of the life ahead.
        let expiry =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
        let now = SystemTime::now();
        let refresh_at = now + expiry.duration_since(now).unwrap_or(Duration::ZERO) / 2;
        let mut issued = self.issued.write().unwrap_or_else(|p| p.into_inner());
        let generation = issued.get(identity).map_or(1, |i| i.info.generation + 1);
        info!(%identity, %serial, not_after, generation, "certificate issued");
        issued.insert(
            identity.clone(),
            Issued {
                key: certified,
                info: CertInfo {
                    identity: identity.to_string(),
                    serial,
                    not_before,
                    not_after,
                    generation,
                },
                refresh_at,
            },
        );
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Identity, Issued>> {
        self.issued.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serial (hex) and validity (Unix seconds) of a certificate.
fn validity(cert: &CertificateDer<'_>) -> Result<(String, i64, i64), Error> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| Error::Parse(e.to_string()))?;
    let validity = parsed.validity();
    Ok((
        parsed.raw_serial_as_string().replace(':', ""),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}
