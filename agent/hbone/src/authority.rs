//! What a CONNECT asks for: a workload's `address:port`, or a service's
//! `host:port` (through an east-west gateway, which picks the endpoint).
use std::{fmt, net::SocketAddr, str::FromStr};

/// Longest host name a CONNECT may carry (DNS's limit).
const MAX_HOST: usize = 253;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Authority {
    Addr(SocketAddr),
    /// A lower-case DNS name and a port.
    Host {
        host: String,
        port: u16,
    },
}

impl Authority {
    pub fn port(&self) -> u16 {
        match self {
            Authority::Addr(a) => a.port(),
            Authority::Host { port, .. } => *port,
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Authority::Addr(a) => Some(*a),
            Authority::Host { .. } => None,
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authority::Addr(a) => write!(f, "{a}"),
            Authority::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        Authority::Addr(addr)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not address:port or host:port")]
pub struct BadAuthority(pub String);

impl FromStr for Authority {
    type Err = BadAuthority;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Authority::Addr(addr));
        }
        let bad = || BadAuthority(text.chars().take(80).collect());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        let valid = !host.is_empty()
            && host.len() <= MAX_HOST
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
            // An IP address in another form (`[::1]` without a port) is not a host.
            && host.parse::<std::net::IpAddr>().is_err()
            && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !valid {
            return Err(bad());
        }
        Ok(Authority::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_hosts_parse_and_garbage_does_not() {
        assert_eq!(
            "10.0.0.1:80".parse::<Authority>(),
            Ok(Authority::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            "[fd00::1]:80".parse::<Authority>(),
            Ok(Authority::Addr("[fd00::1]:80".parse().unwrap()))
        );
        assert_eq!(
            "Web.Shop.svc.cluster.local:8080".parse::<Authority>(),
            Ok(Authority::Host {
                host: "web.shop.svc.cluster.local".into(),
                port: 8080
            })
        );
        for bad in [
            "web",
            "web:0",
            "web:99999",
            ":80",
            "a..b:80",
            "-a.b:80",
            "a_b:80",
            "1.2.3:80",
            "we b:80",
            "fd00::1:80",
        ] {
            assert!(bad.parse::<Authority>().is_err(), "{bad}");
        }
        let long = format!("{}:80", ["a"; 200].join("."));
        assert!(long.parse::<Authority>().is_err());
    }
}
