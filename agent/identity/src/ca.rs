//! The certificate authority, behind a signing-request interface: the agent
//! makes a key, sends a certificate signing request (CSR) for an identity,
//! and gets a chain back; the private key never leaves the agent. A CA
//! service can implement [`CaClient`] and authorize each node separately;
//! [`LocalCa`] is the in-process CA of the local mode.
use std::{
    fs,
    future::Future,
    io::Write,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};

use crate::{Error, Identity};

/// What an agent asks the CA for.
pub struct SignRequest {
    pub identity: Identity,
    /// DER of a CSR whose subject alternative name is `identity`.
    pub csr: Vec<u8>,
    pub lifetime: Duration,
}

/// What the CA answers: the leaf first, then any intermediates (not the root).
pub struct SignedChain {
    pub chain: Vec<CertificateDer<'static>>,
}

pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<SignedChain, Error>> + Send + 'a>>;

pub trait CaClient: Send + Sync {
    fn sign(&self, request: SignRequest) -> SignFuture<'_>;
    /// The mesh's trust anchors.
    fn roots(&self) -> Vec<CertificateDer<'static>>;
}

/// Who may have certificates for which identities: an agent only for the
/// service accounts of workloads on its own node.
pub type Authorizer = Box<dyn Fn(&Identity) -> bool + Send + Sync>;

/// A CA whose root key and certificate are files (`root-cert.pem`,
/// `root-key.pem`), made on first use and then shared by every agent that
/// points at the same directory.
pub struct LocalCa {
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    authorize: Authorizer,
}

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerated clock difference between nodes.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

static SERIAL_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalCa {
    /// Loads the root from `dir`, creating it first if no agent has yet.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(io("creating CA directory", dir))?;
        let _lock = DirLock::acquire(dir)?;
        let (cert_path, key_path) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
        if !cert_path.exists() || !key_path.exists() {
            create_root(&cert_path, &key_path, trust_domain)?;
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let root_der = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| Error::Parse(format!("{}: {e}", cert_path.display())))?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(Self {
            root_der,
            issuer,
            authorize: Box::new(|_| true),
        })
    }

    /// Limits which identities this CA signs for.
    pub fn with_authorizer(mut self, authorize: Authorizer) -> Self {
        self.authorize = authorize;
        self
    }

    fn sign_now(&self, request: SignRequest) -> Result<SignedChain, Error> {
        let refused = |reason: String| Error::Refused {
            identity: request.identity.to_string(),
            reason,
        };
        if !(self.authorize)(&request.identity) {
            return Err(refused(
                "no workload with this identity runs on the requesting node".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            request.csr.as_slice(),
        ))
        .map_err(|e| refused(format!("bad certificate signing request: {e}")))?;
        let uri = request.identity.to_string();
        let asked = csr
            .params
            .subject_alt_names
            .iter()
            .any(|san| matches!(san, SanType::URI(u) if u.as_str() == uri));
        if !asked {
            return Err(refused(
                "the request's subject alternative name is not this identity".into(),
            ));
        }
        // Only the public key comes from the request; everything else is the
        // CA's decision.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + request.lifetime).into();
        params.serial_number = Some(new_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(SignedChain {
            chain: vec![signed.der().clone()],
        })
    }
}

impl CaClient for LocalCa {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(async move { self.sign_now(request) })
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root_der.clone()]
    }
}

fn create_root(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<(), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "strait mesh root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(new_serial());
    let cert = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    fs::write(cert_path, cert.pem()).map_err(io("writing", cert_path))
}

/// 16 bytes, positive, unique per CA process: time in nanoseconds and a
/// sequence number.
fn new_serial() -> SerialNumber {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seq = SERIAL_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&nanos.to_be_bytes());
    bytes[8..].copy_from_slice(&(seq ^ u64::from(std::process::id()) << 32).to_be_bytes());
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))?;
    file.write_all(bytes).map_err(io("writing", path))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path: PathBuf = path.into();
    move |source| Error::Io { what, path, source }
}

/// Serializes root creation between agents starting at once.
struct DirLock {
    // Closing the file releases the lock.
    _file: fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(uri: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn request(id: &Identity, uri: &str) -> SignRequest {
        SignRequest {
            identity: id.clone(),
            csr: csr_for(uri),
            lifetime: Duration::from_secs(60),
        }
    }

    #[test]
    fn signs_for_authorized_identities_only() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = Identity::new("cluster.local", "shop", "db");
        let allowed_c = allowed.clone();
        let ca = LocalCa::load_or_create(dir.path(), "cluster.local")
            .unwrap()
            .with_authorizer(Box::new(move |id| *id == allowed_c));
        let chain = ca
            .sign_now(request(&allowed, &allowed.to_string()))
            .unwrap();
        assert_eq!(chain.chain.len(), 1);

        let other = Identity::new("cluster.local", "shop", "web");
        let err = ca
            .sign_now(request(&other, &other.to_string()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("requesting node"), "{err}");
    }

    #[test]
    fn refuses_a_request_for_another_identity_than_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
        let id = Identity::new("cluster.local", "shop", "db");
        let err = ca
            .sign_now(request(&id, "spiffe://cluster.local/ns/shop/sa/admin"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("subject alternative name"),
            "{err}"
        );
        let mut garbage = request(&id, &id.to_string());
        garbage.csr.truncate(10);
        assert!(ca.sign_now(garbage).is_err());
    }

    #[test]
    fn agents_share_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
        let b = LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
        assert_eq!(a.roots(), b.roots());
        let mode = fs::metadata(dir.path().join(ROOT_KEY)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn serials_differ() {
        assert_ne!(new_serial(), new_serial());
    }
}
