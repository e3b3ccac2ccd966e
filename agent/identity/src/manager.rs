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

/// An identity this node wants a certificate for, and its rotation task.
struct Wanted {
    task: tokio::task::JoinHandle<()>,
    /// Why the last request failed, until one succeeds.
    last_error: Option<String>,
    /// Counts finished requests, for waiters.
    attempts: tokio::sync::watch::Sender<u64>,
}

/// Retries after a failed request: quickly at first (the CA may just be
/// starting), then no more often than every 30 s.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct CertManager {
    ca: Arc<dyn CaClient>,
    lifetime: Duration,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    issued: RwLock<BTreeMap<Identity, Issued>>,
    wanted: std::sync::Mutex<BTreeMap<Identity, Wanted>>,
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
            wanted: std::sync::Mutex::new(BTreeMap::new()),
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

    /// Why `identity` has no certificate, if its last request failed.
    pub fn last_error(&self, identity: &Identity) -> Option<String> {
        self.lock_wanted()
            .get(identity)
            .and_then(|w| w.last_error.clone())
    }

    /// The identities whose last request failed, with why: the CA is
    /// away or refuses. Their current certificates, if any, stay in use.
    pub fn failing(&self) -> Vec<(Identity, String)> {
        self.lock_wanted()
            .iter()
            .filter_map(|(id, w)| Some((id.clone(), w.last_error.clone()?)))
            .collect()
    }

    /// Identities with a rotation task: what this node holds certificates
    /// for (or is trying to).
    pub fn wanted(&self) -> usize {
        self.lock_wanted().len()
    }

    /// Makes sure `identity` gets a certificate and keeps it rotated: a task
    /// asks the CA now, again after each failure (backing off), and at half
    /// life from then on. Returns at once.
    pub fn want(self: &Arc<Self>, identity: &Identity) {
        let mut wanted = self.lock_wanted();
        if wanted.contains_key(identity) {
            return;
        }
        let (attempts, _) = tokio::sync::watch::channel(0);
        let this = self.clone();
        let id = identity.clone();
        let task = tokio::spawn(async move { this.rotate(id).await });
        wanted.insert(
            identity.clone(),
            Wanted {
                task,
                last_error: None,
                attempts,
            },
        );
    }

    /// Waits up to `timeout` for `identity` (wanted) to have a certificate,
    /// or for a request for it to fail; whether it has one.
    pub async fn wait_for(&self, identity: &Identity, timeout: Duration) -> bool {
        let Some(mut attempts) = self
            .lock_wanted()
            .get(identity)
            .map(|w| w.attempts.subscribe())
        else {
            return false;
        };
        let arrived = async {
            while self.current(identity).is_none() && self.last_error(identity).is_none() {
                if attempts.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, arrived).await;
        self.current(identity).is_some()
    }

    /// [`CertManager::want`], then waits up to `timeout` for the first
    /// certificate; the CA's refusal, or its silence, as an error.
    pub async fn ensure(
        self: &Arc<Self>,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.want(identity);
        if self.wait_for(identity, timeout).await {
            return Ok(());
        }
        Err(Error::NoCertificate(format!(
            "{identity}: {}",
            self.last_error(identity)
                .unwrap_or_else(|| format!("no answer from the CA within {timeout:?}"))
        )))
    }

    /// Stops rotating and forgets every identity not in `keep`: the
    /// workloads that had them left this node.
    pub fn retain(&self, keep: &std::collections::BTreeSet<Identity>) {
        let mut wanted = self.lock_wanted();
        wanted.retain(|id, w| {
            let stay = keep.contains(id);
            if !stay {
                w.task.abort();
            }
            stay
        });
        drop(wanted);
        self.issued
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep.contains(id));
    }

    async fn rotate(self: Arc<Self>, identity: Identity) {
        let mut failures = 0u32;
        loop {
            let refresh_at = self.read().get(&identity).map(|i| i.refresh_at);
            let wait = refresh_at
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match self.issue(&identity).await {
                Ok(()) => {
                    failures = 0;
                    if let Some(w) = self.lock_wanted().get_mut(&identity) {
                        w.last_error = None;
                        w.attempts.send_modify(|n| *n += 1);
                    }
                }
                Err(err) => {
                    // The old certificate, if any, stays in use meanwhile.
                    // Drawn between half and all of the backoff: every
                    // identity of every node failed at the same moment
                    // (the CA went away), and must not come back in step.
                    let retry = RETRY_FIRST
                        .saturating_mul(1 << failures.min(10))
                        .min(RETRY_MAX)
                        .mul_f64(0.5 + fastrand::f64() / 2.0);
                    failures += 1;
                    warn!(%identity, %err, ?retry, "certificate request failed");
                    if let Some(w) = self.lock_wanted().get_mut(&identity) {
                        w.last_error = Some(err.to_string());
                        w.attempts.send_modify(|n| *n += 1);
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    fn lock_wanted(&self) -> std::sync::MutexGuard<'_, BTreeMap<Identity, Wanted>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
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
