//! The control root: a second root beside the mesh's, for the CA service's
//! own TLS. It signs each node's credential (client authentication only)
//! and the service's certificate. Nothing the mesh trusts chains to it, so
//! a node credential can never pass for a workload identity.
use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strait_identity::{
    ca::{CLOCK_SKEW, ROOT_CERT, ROOT_KEY, new_serial, open_or_create_root, write_private},
    remote::credential,
};

const CONTROL_ROOT_KEY: &str = "control-root-key.pem";
/// Every file of a CA directory: what replicas share.
pub const KEY_FILES: [&str; 4] = [
    ROOT_CERT,
    ROOT_KEY,
    credential::CONTROL_ROOT,
    CONTROL_ROOT_KEY,
];
/// A node's credential is made once by setup, like a kubelet's.
const NODE_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The service's own certificate is made anew at each start.
const SERVER_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct ControlRoot {
    root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl ControlRoot {
    pub fn open_or_create(dir: &Path, trust_domain: &str) -> Result<Self> {
        let (root, key) = open_or_create_root(
            dir,
            (credential::CONTROL_ROOT, CONTROL_ROOT_KEY),
            "strait control root",
            trust_domain,
        )
        .with_context(|| format!("opening the control root in {}", dir.display()))?;
        let issuer = Issuer::from_ca_cert_der(&root, key)?;
        Ok(Self { root, issuer })
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Writes `node`'s credential directory: its key and certificate, the
    /// control root (to check the service) and the mesh root (to check
    /// workloads). The key is readable by its owner only.
    pub fn write_node_credential(
        &self,
        node: &str,
        mesh_root: &CertificateDer<'_>,
        out: &Path,
    ) -> Result<()> {
        strait_config::names::check_subdomain(node)
            .map_err(|reason| anyhow::anyhow!("node name {reason}"))?;
        let mut params = leaf_params(NODE_CREDENTIAL_LIFETIME);
        params.distinguished_name.push(DnType::CommonName, node);
        params.subject_alt_names = vec![SanType::URI(credential::node_uri(node).try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let write = |name: &str, text: String| {
            let path = out.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write_private(
            &out.join(credential::NODE_KEY),
            key.serialize_pem().as_bytes(),
        )?;
        write(credential::NODE_CERT, cert.pem())?;
        self.write_roots(mesh_root, out)
    }

    /// Writes the roots alone: what an agent that authenticates with its
    /// ServiceAccount token needs (a ConfigMap in Kubernetes).
    pub fn write_roots(&self, mesh_root: &CertificateDer<'_>, out: &Path) -> Result<()> {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        for (name, text) in self.roots_text(mesh_root) {
            let path = out.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The roots' files: name to PEM.
    pub fn roots_text(
        &self,
        mesh_root: &CertificateDer<'_>,
    ) -> std::collections::BTreeMap<String, String> {
        [
            (credential::CONTROL_ROOT, &self.root),
            (credential::MESH_ROOT, mesh_root),
        ]
        .into_iter()
        .map(|(name, cert)| (name.to_string(), pem_cert(cert)))
        .collect()
    }

    /// The service's certificate (named [`credential::CA_SERVER_NAME`]) and
    /// key, kept in memory only.
    pub fn server_credential(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut params = leaf_params(SERVER_LIFETIME);
        params
            .distinguished_name
            .push(DnType::CommonName, credential::CA_SERVER_NAME);
        params.subject_alt_names = vec![SanType::DnsName(credential::CA_SERVER_NAME.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }
}

fn leaf_params(lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = std::time::SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(new_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

pub fn pem_cert(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[cfg(test)]
mod tests {
    use strait_identity::Signer;

    use super::*;

    #[test]
    fn node_credentials_are_client_certificates_of_the_control_root() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("n1");
        let control = ControlRoot::open_or_create(dir.path(), "cluster.local").unwrap();
        let mesh = Signer::open_or_create(dir.path(), "cluster.local").unwrap();
        control
            .write_node_credential("n1", mesh.root(), &out)
            .unwrap();
        let cert = fs::read(out.join(credential::NODE_CERT)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&cert).unwrap();
        let cert = pem.parse_x509().unwrap();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(uris, vec!["URI(strait-node://n1)"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_ne!(control.root(), mesh.root(), "two roots, not one");
        let mode = fs::metadata(out.join(credential::NODE_KEY)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(out.join(credential::MESH_ROOT)).unwrap(),
            pem_cert(mesh.root())
        );
        let err = control
            .write_node_credential("../n1", mesh.root(), &out)
            .unwrap_err();
        assert!(err.to_string().contains("DNS-1123"), "{err}");
    }
}
