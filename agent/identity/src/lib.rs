//! Workload identity for mutual TLS between agents.
//!
//! - [`spiffe`]: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` identities;
//! - [`ca`]: the signing interface ([`ca::CaClient`]: a certificate signing
//!   request in, a chain out) and the [`Signer`] that the CA service signs
//!   with;
//! - [`remote`]: the agent's client of the CA service, authenticated as its
//!   node;
//! - [`manager`]: keys made and kept on this node, certificates fetched and
//!   rotated at half life;
//! - [`tls`]: rustls configurations that present a workload's certificate
//!   and verify the peer's SPIFFE identity.
pub mod ca;
pub mod manager;
pub mod remote;
pub mod spiffe;
pub mod tls;

pub use ca::{CaClient, SignRequest, Signer};
pub use manager::{CertInfo, CertManager};
pub use remote::RemoteCa;
pub use spiffe::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a SPIFFE identity of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    BadIdentity(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the CA refused to sign for {identity}: {reason}")]
    Refused { identity: String, reason: String },
    #[error("bad certificate signing request: {0}")]
    BadRequest(String),
    #[error("the CA at {addr} is unavailable: {reason}")]
    Unavailable {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("no CA replica is ready")]
    NoReplica,
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no certificate for {0} yet")]
    NoCertificate(String),
    #[error("parsing a certificate: {0}")]
    Parse(String),
}
