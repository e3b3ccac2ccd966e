//! Who the client is beyond its identity, when its connection came through
//! an east-west gateway (so its TCP address is the gateway's): its network
//! in `strait-source-network`, and its cluster and workload in a W3C
//! `baggage` header with the keys Istio's ztunnel uses. What the client's
//! agent claims here is telemetry only; the destination believes a
//! workload name only when the mesh config has it under the identity the
//! TLS session proved.
use hyper::HeaderMap;

/// Request header of an inner CONNECT through an east-west gateway: the
/// client's network.
pub const SOURCE_NETWORK_HEADER: &str = "strait-source-network";
/// W3C baggage (`key=value,key=value`).
pub const BAGGAGE_HEADER: &str = "baggage";
const CLUSTER_KEY: &str = "k8s.cluster.name";
const WORKLOAD_KEY: &str = "k8s.pod.name";
/// Longer baggage is not read: a peer does not make us parse much.
const MAX_BAGGAGE: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub network: String,
    pub cluster: Option<String>,
    pub workload: Option<String>,
}

/// The source network or on-behalf-of header held something that is no
/// network name or identity.
#[derive(Debug, thiserror::Error)]
#[error("bad {SOURCE_NETWORK_HEADER} or {ON_BEHALF_OF_HEADER} header")]
pub struct BadSource;

impl Source {
    pub(crate) fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(SOURCE_NETWORK_HEADER, self.network.clone())];
        let baggage: Vec<String> = [(CLUSTER_KEY, &self.cluster), (WORKLOAD_KEY, &self.workload)]
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_deref().filter(|v| name(v))?)))
            .collect();
        if !baggage.is_empty() {
            headers.push((BAGGAGE_HEADER, baggage.join(",")));
        }
        headers
    }

    /// From a CONNECT's headers: `None` without a source network; an error
    /// when that header is malformed. Baggage entries that are not names
    /// are left out, not refused: they are only telemetry.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, BadSource> {
        let Some(network) = headers.get(SOURCE_NETWORK_HEADER) else {
            return Ok(None);
        };
        let network = network.to_str().ok().filter(|v| name(v)).ok_or(BadSource)?;
        let mut source = Source {
            network: network.to_string(),
            ..Source::default()
        };
        for value in headers.get_all(BAGGAGE_HEADER) {
            let Some(text) = value.to_str().ok().filter(|t| t.len() <= MAX_BAGGAGE) else {
                continue;
            };
            for member in text.split(',') {
                // A member's properties (after ';') say nothing we use.
                let member = member.split(';').next().unwrap_or_default();
                let Some((key, value)) = member.split_once('=') else {
                    continue;
                };
                let value = value.trim();
                if !name(value) {
                    continue;
                }
                match key.trim() {
                    CLUSTER_KEY => source.cluster = Some(value.to_string()),
                    WORKLOAD_KEY => source.workload = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        Ok(Some(source))
    }
}

/// A network, cluster or workload name: what a Kubernetes name or label
/// value may hold.
fn name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn round_trip() {
        let source = Source {
            network: "net1".into(),
            cluster: Some("c1".into()),
            workload: Some("client-7d9f".into()),
        };
        let pairs = source.to_headers();
        let map = headers(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(Source::from_headers(&map).unwrap(), Some(source));
    }

    #[test]
    fn no_network_no_source() {
        let map = headers(&[(BAGGAGE_HEADER, "k8s.cluster.name=c1")]);
        assert_eq!(Source::from_headers(&map).unwrap(), None);
    }

    #[test]
    fn a_bad_network_is_refused() {
        for bad in ["", "net 1", "net/1", &"n".repeat(254)] {
            let map = headers(&[(SOURCE_NETWORK_HEADER, bad)]);
            assert!(Source::from_headers(&map).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn odd_baggage_is_left_out() {
        let map = headers(&[
            (SOURCE_NETWORK_HEADER, "net1"),
            (
                BAGGAGE_HEADER,
                "other=1, k8s.cluster.name = c2 ;prop=x,k8s.pod.name=a b,junk",
            ),
            (
                BAGGAGE_HEADER,
                &format!("k8s.pod.name={}", "x".repeat(2000)),
            ),
        ]);
        let source = Source::from_headers(&map).unwrap().unwrap();
        assert_eq!(source.cluster.as_deref(), Some("c2"));
        assert_eq!(source.workload, None);
    }
}

/// Request header of a CONNECT a waypoint sends for a client: the
/// client's identity, as the waypoint's own TLS session proved it.
pub const ON_BEHALF_OF_HEADER: &str = "strait-on-behalf-of";
/// W3C trace context on a CONNECT.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// A `traceparent` is 55 characters; later versions may add fields.
const MAX_TRACEPARENT: usize = 128;
/// A SPIFFE id longer than this is no mesh identity.
const MAX_IDENTITY: usize = 512;

/// What a CONNECT says of its client beyond the identity its TLS session
/// proves: where it is (through an east-west gateway), and whom a
/// waypoint sends it for. Claims only: the destination decides whether
/// to believe them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Claims<'a> {
    pub source: Option<&'a Source>,
    pub on_behalf_of: Option<&'a strait_identity::Identity>,
    /// The W3C `traceparent` of the span that opens the tunnel, so the far
    /// end's span joins the trace.
    pub traceparent: Option<&'a str>,
}

impl Claims<'_> {
    pub(crate) fn to_headers(self) -> Vec<(&'static str, String)> {
        let mut headers = self.source.map(Source::to_headers).unwrap_or_default();
        if let Some(client) = self.on_behalf_of {
            headers.push((ON_BEHALF_OF_HEADER, client.to_string()));
        }
        if let Some(traceparent) = self.traceparent {
            headers.push((TRACEPARENT_HEADER, traceparent.to_string()));
        }
        headers
    }
}

/// The identity a CONNECT claims to be sent for: `None` without the
/// header; an error when it is no identity.
pub(crate) fn on_behalf_of(
    headers: &HeaderMap,
) -> Result<Option<strait_identity::Identity>, BadSource> {
    let Some(value) = headers.get(ON_BEHALF_OF_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| v.len() <= MAX_IDENTITY)
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or(BadSource)
}

/// The trace context a CONNECT carries, unparsed (the tracer reads it, and
/// ignores what it cannot); over-long values are dropped.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_TRACEPARENT)
        .map(str::to_string)
}

#[cfg(test)]
mod claims_tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn the_client_a_waypoint_sends_for_goes_in_one_header() {
        let client: strait_identity::Identity =
            "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap();
        let claims = Claims {
            source: None,
            on_behalf_of: Some(&client),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in claims.to_headers() {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        assert_eq!(on_behalf_of(&headers).unwrap(), Some(client));
        assert_eq!(
            traceparent(&headers).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        headers.insert(
            TRACEPARENT_HEADER,
            HeaderValue::from_str(&"0".repeat(200)).unwrap(),
        );
        assert_eq!(traceparent(&headers), None);
        assert_eq!(on_behalf_of(&HeaderMap::new()).unwrap(), None);
        // Anything but an identity is refused, not ignored.
        headers.insert(ON_BEHALF_OF_HEADER, HeaderValue::from_static("admin"));
        assert!(on_behalf_of(&headers).is_err());
        let long = format!("spiffe://cluster.local/ns/shop/sa/{}", "a".repeat(600));
        headers.insert(ON_BEHALF_OF_HEADER, HeaderValue::from_str(&long).unwrap());
        assert!(on_behalf_of(&headers).is_err());
    }
}
