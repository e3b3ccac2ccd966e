//! The certificate authority, behind a signing-request interface: the agent
//! makes a key, sends a certificate signing request (CSR) for an identity,
//! and gets a chain back; the private key never leaves the agent. Agents
//! talk to the CA service through [`crate::RemoteCa`]; the service signs
//! with a [`Signer`], which alone opens the root key.
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

/// The signing half of the CA: the mesh root's key and certificate
/// (`root-key.pem`, `root-cert.pem` in its directory), and the rules every
/// workload certificate follows whoever asks. Only the CA service
/// (`strait-ca`) opens a directory with a root key; agents reach it through
/// [`crate::RemoteCa`]. As a [`CaClient`] it signs for anyone, which suits
/// tests and nothing else.
pub struct Signer {
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    max_lifetime: Duration,
}

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerated clock difference between nodes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// What a certificate may live at most unless the CA is told otherwise.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

static SERIAL_SEQ: AtomicU64 = AtomicU64::new(0);

impl Signer {
    /// Loads the root from `dir`, creating it when the directory holds
    /// neither file. One file without the other is an error: a new root
    /// would silently split the mesh in two.
    pub fn open_or_create(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        let (root_der, key) = open_or_create_root(
            dir,
            (ROOT_CERT, ROOT_KEY),
            "strait mesh root CA",
            trust_domain,
        )?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(Self {
            root_der,
            issuer,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        })
    }

    /// Caps the lifetime of what this CA signs, whatever a request asks.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// The mesh root certificate.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Signs the CSR's public key for `identity`, which must be what the
    /// CSR asks for. Whether the requester may hold `identity` is the
    /// caller's decision, made before.
    pub fn sign(
        &self,
        identity: &Identity,
        csr: &[u8],
        lifetime: Duration,
    ) -> Result<SignedChain, Error> {
        let refused = |reason: String| Error::Refused {
            identity: identity.to_string(),
            reason,
        };
        let asked = csr_identity(csr)?;
        if asked != *identity {
            return Err(refused(
                "the request's subject alternative name is not this identity".into(),
            ));
        }
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(|e| refused(format!("bad certificate signing request: {e}")))?;
        // Only the public key comes from the request; everything else is the
        // CA's decision.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + lifetime.min(self.max_lifetime)).into();
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

/// The one SPIFFE identity a CSR asks for (its URI subject alternative
/// names); a CSR asking for none, several, or something else is refused.
pub fn csr_identity(csr: &[u8]) -> Result<Identity, Error> {
    let bad = |reason: String| Error::BadRequest(reason);
    let parsed =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(|e| bad(format!("not a certificate signing request: {e}")))?;
    let uris: Vec<&str> = parsed
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] if parsed.params.subject_alt_names.len() == 1 => one.parse(),
        _ => Err(bad(
            "a certificate signing request must name exactly one SPIFFE identity and nothing else"
                .into(),
        )),
    }
}

impl CaClient for Signer {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(
            async move { Signer::sign(self, &request.identity, &request.csr, request.lifetime) },
        )
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root_der.clone()]
    }
}

/// A root certificate and its key, as the files `names` (certificate, key)
/// in `dir`: loaded, or made when the directory holds neither. One file
/// without the other is an error: a new root would silently split whatever
/// trusts the old one.
pub fn open_or_create_root(
    dir: &Path,
    names: (&str, &str),
    common_name: &str,
    organization: &str,
) -> Result<(CertificateDer<'static>, KeyPair), Error> {
    fs::create_dir_all(dir).map_err(io("creating CA directory", dir))?;
    let _lock = DirLock::acquire(dir)?;
    let (cert_path, key_path) = (dir.join(names.0), dir.join(names.1));
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => create_root(&cert_path, &key_path, common_name, organization)?,
        (true, true) => {}
        (cert, _) => {
            let (present, missing) = if cert {
                (&cert_path, &key_path)
            } else {
                (&key_path, &cert_path)
            };
            return Err(Error::Parse(format!(
                "{} exists but {} is missing: refusing to make a new root, which would split the mesh; restore the missing file",
                present.display(),
                missing.display()
            )));
        }
    }
    let key_pem = fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
    let key = KeyPair::from_pem(&key_pem)?;
    let root_der = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| Error::Parse(format!("{}: {e}", cert_path.display())))?;
    Ok((root_der, key))
}

fn create_root(
    cert_path: &Path,
    key_path: &Path,
    common_name: &str,
    organization: &str,
) -> Result<(), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
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
pub fn new_serial() -> SerialNumber {
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

/// Writes a private key readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
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

    fn csr_for(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn lifetime_of(chain: &SignedChain) -> Duration {
        let (_, cert) = x509_parser::parse_x509_certificate(&chain.chain[0]).unwrap();
        let v = cert.validity();
        Duration::from_secs((v.not_after.timestamp() - v.not_before.timestamp()) as u64)
    }

    #[test]
    fn signs_what_the_request_names_with_a_capped_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local")
            .unwrap()
            .with_max_lifetime(Duration::from_secs(600));
        let id = Identity::new("cluster.local", "shop", "db");
        let csr = csr_for(&[&id.to_string()]);
        assert_eq!(csr_identity(&csr).unwrap(), id);
        let asked = Duration::from_secs(365 * 24 * 3600);
        let chain = ca.sign(&id, &csr, asked).unwrap();
        assert_eq!(chain.chain.len(), 1);
        assert_eq!(
            lifetime_of(&chain),
            Duration::from_secs(600) + CLOCK_SKEW,
            "the CA's cap, not the request, sets the lifetime"
        );
        let short = ca.sign(&id, &csr, Duration::from_secs(60)).unwrap();
        assert_eq!(lifetime_of(&short), Duration::from_secs(60) + CLOCK_SKEW);
    }

    #[test]
    fn refuses_a_request_for_another_identity_than_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let id = Identity::new("cluster.local", "shop", "db");
        let other = csr_for(&["spiffe://cluster.local/ns/shop/sa/admin"]);
        let err = ca.sign(&id, &other, Duration::from_secs(60)).err().unwrap();
        assert!(
            err.to_string().contains("subject alternative name"),
            "{err}"
        );
        let two = csr_for(&[&id.to_string(), "spiffe://cluster.local/ns/shop/sa/admin"]);
        assert!(matches!(csr_identity(&two), Err(Error::BadRequest(_))));
        assert!(matches!(
            csr_identity(&csr_for(&[])),
            Err(Error::BadRequest(_))
        ));
        let mut garbage = csr_for(&[&id.to_string()]);
        garbage.truncate(10);
        assert!(matches!(csr_identity(&garbage), Err(Error::BadRequest(_))));
        assert!(ca.sign(&id, &garbage, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn one_root_per_directory_and_never_a_silent_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        let b = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        assert_eq!(a.root(), b.root());
        let mode = fs::metadata(dir.path().join(ROOT_KEY)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // The key without its certificate, and the other way round.
        fs::rename(dir.path().join(ROOT_CERT), dir.path().join("saved")).unwrap();
        let err = Signer::open_or_create(dir.path(), "cluster.local")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("root-cert.pem is missing"),
            "{err}"
        );
        assert!(!dir.path().join(ROOT_CERT).exists(), "no new root was made");
        fs::rename(dir.path().join("saved"), dir.path().join(ROOT_CERT)).unwrap();
        fs::remove_file(dir.path().join(ROOT_KEY)).unwrap();
        let err = Signer::open_or_create(dir.path(), "cluster.local")
            .err()
            .unwrap();
        assert!(err.to_string().contains("root-key.pem is missing"), "{err}");
    }

    #[test]
    fn serials_differ() {
        assert_ne!(new_serial(), new_serial());
    }
}
