//! Where the CA service is: fixed addresses, or a Service the config
//! knows. A DaemonSet's agent runs on the host network, where cluster DNS
//! and Service addresses may not work (no kube-proxy, or DNS not yet up);
//! the agent already watches the CA's Service and pods, so it asks its own
//! model for the ready replicas at each request.
use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use strait_identity::remote::CaAddrs;
#[cfg(feature = "cli")]
use strait_identity::{CertManager, RemoteCa};

use crate::NodeState;

/// One `--ca-addr` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaAddr {
    Fixed(SocketAddr),
    /// A service host (or `name.namespace`) and its port.
    Service {
        host: String,
        port: u16,
    },
}

impl FromStr for CaAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Fixed(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: not ip:port or host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: port {port:?} is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(format!("{text:?}: port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!(
                "{text:?}: an IPv6 address needs brackets: [ip]:port"
            ));
        }
        strait_config::names::check_subdomain(host.trim_end_matches('.'))
            .map_err(|reason| format!("{text:?}: host {reason}"))?;
        Ok(Self::Service {
            host: host.to_owned(),
            port,
        })
    }
}

/// How a binary reaches the CA service and what it proves there, as the
/// agent, the east-west gateway and the waypoint take it on their command
/// lines.
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// The CA service (`strait-ca serve`): `ip:port`, or `host:port` with
    /// the host of a Service the config knows (`strait-ca.strait.svc`),
    /// whose ready endpoints are asked, so no cluster DNS or kube-proxy is
    /// needed. Several (comma separated, or the flag repeated) are tried
    /// in turn.
    #[arg(long, env = "STRAIT_CA_ADDR", value_delimiter = ',', required = true)]
    pub ca_addr: Vec<CaAddr>,
    /// A node's credential for the CA service and the mesh's roots
    /// (`strait-ca node-credential` makes it).
    #[arg(
        long,
        env = "STRAIT_CREDENTIAL_DIR",
        default_value = "/var/lib/strait/node"
    )]
    pub credential_dir: std::path::PathBuf,
    /// The pod's projected ServiceAccount token (Kubernetes): sent to the
    /// CA instead of a node certificate, read again for every request;
    /// `--credential-dir` then needs only the roots (`strait-ca roots`).
    #[arg(long, env = "STRAIT_CA_TOKEN")]
    pub ca_token: Option<std::path::PathBuf>,
    /// Lifetime of workload certificates (rotated at half life).
    #[arg(long, default_value = "24h", value_parser = strait_config::duration::parse)]
    pub cert_lifetime: std::time::Duration,
}

#[cfg(feature = "cli")]
impl CaArgs {
    /// Certificates from the CA, asked for over connections marked `mark`
    /// (a node's agent: capture leaves them alone), each within `timeout`.
    pub fn cert_manager(
        &self,
        state: &NodeState,
        mark: Option<u32>,
        timeout: std::time::Duration,
    ) -> Result<Arc<CertManager>, strait_identity::Error> {
        let ca = RemoteCa::new(
            &self.credential_dir,
            resolver(self.ca_addr.clone(), state.clone()),
            mark,
            timeout,
            self.ca_token.clone(),
        )?;
        CertManager::new(Arc::new(ca), self.cert_lifetime)
    }
}

/// The addresses to try, in the order given: a Service entry gives the
/// addresses of its ready endpoints for that port (their target ports).
pub fn resolver(entries: Vec<CaAddr>, state: NodeState) -> CaAddrs {
    Arc::new(move || {
        let snapshot = state.snapshot();
        let config = &snapshot.config;
        let mut addrs = Vec::new();
        for entry in &entries {
            match entry {
                CaAddr::Fixed(addr) => addrs.push(*addr),
                CaAddr::Service { host, port } => {
                    let Some(at) = config.find_service(host) else {
                        continue;
                    };
                    if let Ok(strait_config::service::Backends::Endpoints(endpoints)) =
                        config.backends(at, *port)
                    {
                        addrs.extend(
                            endpoints
                                .iter()
                                .filter(|e| e.workload.ready)
                                .map(|e| e.addr),
                        );
                    }
                }
            }
        }
        addrs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_addresses_or_service_hosts() {
        assert_eq!(
            "10.0.0.1:15012".parse(),
            Ok(CaAddr::Fixed("10.0.0.1:15012".parse().unwrap()))
        );
        assert_eq!(
            "[fd00::1]:15012".parse(),
            Ok(CaAddr::Fixed("[fd00::1]:15012".parse().unwrap()))
        );
        assert_eq!(
            "strait-ca.strait.svc:15012".parse(),
            Ok(CaAddr::Service {
                host: "strait-ca.strait.svc".into(),
                port: 15012
            })
        );
        for bad in [
            "strait-ca",
            "strait-ca:0",
            "strait-ca:http",
            "fd00::1:15012",
            "Bad_Name.svc:15012",
            ":15012",
        ] {
            let err = bad.parse::<CaAddr>().unwrap_err();
            assert!(err.starts_with(&format!("{bad:?}")), "{err}");
        }
    }
}
