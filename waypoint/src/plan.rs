//! Where a request goes once routed ([`Plan`]): the destination service,
//! port and subset, what the route changes ([`Edits`]), its limits,
//! retries, faults, mirrors and hash key; the endpoints to try for it, in
//! order ([`targets`]); and the request as an endpoint gets it.
use std::{net::SocketAddr, time::Duration};

use hyper::{
    Request, Uri,
    header::{self, HeaderMap, HeaderValue},
};
use strait_balance::outlier::Settings;
use strait_config::{
    manifest::networking::{ClientTls, ConsistentHash},
    service::ServiceAt,
};
use strait_route::{Pick, Route as L4Route, Target, service_route};
use strait_state::Snapshot;
use strait_telemetry::Reason;
use tracing::debug;

use crate::{
    actions::Ops,
    breaker::Limits,
    pool::{Body, Version},
    proxy::{Client, Waypoint},
    routes::{Fault, Mirrored, Retries},
};

/// Where a request goes, once routed.
pub struct Plan<'a> {
    /// `virtual service/route`, when a route decided.
    pub route: Option<String>,
    /// What the route changes in the request and its answer.
    pub edits: Edits,
    /// The destination service; none for a workload dialled directly.
    pub at: Option<ServiceAt<'a>>,
    pub port: u16,
    pub subset: Option<strait_config::Labels>,
    pub timeout: Option<Duration>,
    pub retries: Retries,
    pub fault: Fault,
    /// The destination's circuit breakers: `namespace/service:port`, and
    /// its DestinationRule's limits.
    pub destination: String,
    pub limits: Limits,
    /// Where copies of the request go.
    pub mirrors: Vec<Mirrored>,
    /// The destination's `consistentHash`, and this request's key for it.
    pub hash: Option<&'a ConsistentHash>,
    pub hash_key: Option<String>,
    /// The destination's TLS origination (outside the mesh).
    pub tls: Option<&'a ClientTls>,
}

impl<'a> Plan<'a> {
    /// The HTTP version spoken to the endpoints, as Istio decides it: the
    /// service port's `appProtocol`, else its name's prefix (`http` is
    /// HTTP/1.1; `http2`, `grpc`, `grpc-web`, `h2c` are HTTP/2); for any
    /// other port, the client's own.
    pub fn version(&self, client: Version) -> Version {
        let Some(at) = self.at else {
            return client;
        };
        let Some(port) = at.service.ports.iter().find(|p| p.port == self.port) else {
            return client;
        };
        let named = |text: &str| {
            let text = text.to_ascii_lowercase();
            let prefix = text.split('-').next().unwrap_or_default().to_string();
            match (text.as_str(), prefix.as_str()) {
                ("grpc-web" | "kubernetes.io/h2c" | "h2c", _) | (_, "http2" | "grpc") => {
                    Some(Version::Http2)
                }
                (_, "http") => Some(Version::Http1),
                _ => None,
            }
        };
        named(&port.protocol)
            .or_else(|| named(&port.name))
            .unwrap_or(client)
    }

    /// Straight to a service's `port` (a `subset` of it), with Istio's
    /// default retries and nothing else.
    pub fn to(at: ServiceAt<'a>, port: u16, subset: Option<strait_config::Labels>) -> Self {
        Self::to_service(Some(at), port, subset)
    }

    pub fn to_service(
        at: Option<ServiceAt<'a>>,
        port: u16,
        subset: Option<strait_config::Labels>,
    ) -> Self {
        Self {
            route: None,
            edits: Edits::default(),
            at,
            port,
            subset,
            timeout: None,
            retries: Retries::istio_default(),
            fault: Fault::default(),
            destination: String::new(),
            limits: Limits::default(),
            mirrors: Vec::new(),
            hash: None,
            hash_key: None,
            tls: None,
        }
    }

    /// The destination's circuit-breaker key and limits, for `waypoint`.
    pub fn with_limits(mut self, waypoint: &Waypoint, state: &'a Snapshot) -> Self {
        if let Some(at) = self.at {
            let traffic = state
                .config
                .destination_rule(at, &waypoint.namespace, &waypoint.instance.labels)
                .and_then(|r| r.traffic_policy.as_ref());
            self.limits = Limits::from_policy(traffic, self.port);
            // `portLevelSettings` for the port override the rule's own.
            let port_level = traffic.and_then(|t| {
                t.port_level_settings.iter().find(|p| {
                    p.port
                        .as_ref()
                        .is_some_and(|s| s.number == u32::from(self.port))
                })
            });
            self.hash = port_level
                .and_then(|p| p.load_balancer.as_ref())
                .or_else(|| traffic.and_then(|t| t.load_balancer.as_ref()))
                .and_then(|lb| lb.consistent_hash.as_ref());
            self.tls = crate::origination::settings(traffic, self.port);
            self.destination =
                format!("{}/{}:{}", at.service.namespace, at.service.name, self.port);
        }
        self
    }
}

/// A route's rewrites and header operations.
#[derive(Default)]
pub struct Edits {
    pub path: Option<String>,
    pub authority: Option<String>,
    /// The route's, then the destination's.
    pub request: Vec<Ops>,
    pub response: Vec<Ops>,
}

impl Edits {
    pub fn request(&self, parts: &mut hyper::http::request::Parts) {
        for ops in &self.request {
            ops.apply(&mut parts.headers);
        }
        if self.path.is_none() && self.authority.is_none() {
            return;
        }
        let query = parts.uri.query().map(str::to_string);
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| parts.uri.path().to_string());
        let path_and_query = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut uri = hyper::http::uri::Builder::new();
        if let Some(scheme) = parts.uri.scheme() {
            uri = uri.scheme(scheme.clone());
        }
        let authority = self
            .authority
            .clone()
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        if let (Some(authority), true) = (&authority, parts.uri.scheme().is_some()) {
            uri = uri.authority(authority.as_str());
        }
        if let Ok(rewritten) = uri.path_and_query(path_and_query).build() {
            parts.uri = rewritten;
        }
        if let Some(authority) = &self.authority
            && let Ok(host) = HeaderValue::from_str(authority)
        {
            parts.headers.insert(header::HOST, host);
        }
    }

    pub fn response(&self, headers: &mut HeaderMap) {
        for ops in &self.response {
            ops.apply(headers);
        }
    }
}

/// The port a destination without one is sent to: another service's only
/// port, else the port the client dialled.
pub fn port_of(dest: ServiceAt<'_>, dialled: Option<ServiceAt<'_>>, port: u16) -> u16 {
    match dest.service.ports.as_slice() {
        [only] if !dialled.is_some_and(|d| std::ptr::eq(dest.service, d.service)) => only.port,
        _ => port,
    }
}

/// The labels of the subset `name` of `at`, from the DestinationRule that
/// applies at this waypoint.
pub fn subset_labels(
    waypoint: &Waypoint,
    config: &strait_config::Config,
    at: ServiceAt<'_>,
    name: &str,
) -> Option<strait_config::Labels> {
    config
        .destination_rule(at, &waypoint.namespace, &waypoint.instance.labels)?
        .subsets
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.labels.clone())
}

/// The endpoints to try for a plan, in order, and what outlier detection
/// needs of them.
pub struct Endpoints {
    pub targets: Vec<Target>,
    pub all: Vec<SocketAddr>,
    pub outlier: Settings,
    /// Whether a 5xx answer, a reset or a timed-out try counts against its
    /// endpoint: only when the destination's DestinationRule has
    /// `outlierDetection` (Envoy's consecutive 5xx). A failure to connect
    /// always counts, as at L4: no client can cause one.
    pub five_xx_counts: bool,
}

pub async fn targets(
    waypoint: &Waypoint,
    client: &Client,
    state: &Snapshot,
    plan: &Plan<'_>,
) -> Result<Endpoints, Reason> {
    let direct = |targets: Vec<Target>| Endpoints {
        all: targets.iter().map(endpoint_of).collect(),
        targets,
        outlier: Settings::from_rule(None),
        five_xx_counts: false,
    };
    let Some(at) = plan.at else {
        return Ok(direct(vec![Target::Direct(client.authority)]));
    };
    let instance = &waypoint.instance;
    // The client's address, for `consistentHash.useSourceIp`: not the
    // waypoint's, which every request shares.
    let src = client.addr.ip();
    let dst = SocketAddr::new(client.authority.ip(), plan.port);
    let route = service_route(
        state,
        &waypoint.health,
        &waypoint.board,
        &waypoint.load,
        (instance, src),
        at,
        dst,
        Pick {
            subset: plan.subset.as_ref(),
            hash_key: plan.hash_key.as_deref(),
        },
    );
    match route {
        Ok(L4Route::Endpoints {
            targets,
            all,
            outlier,
            ..
        }) => {
            let traffic = state
                .config
                .destination_rule(at, &waypoint.namespace, &instance.labels)
                .and_then(|r| r.traffic_policy.as_ref());
            let five_xx_counts = traffic.is_some_and(|t| {
                t.outlier_detection.is_some()
                    || t.port_level_settings
                        .iter()
                        .any(|p| p.outlier_detection.is_some())
            });
            Ok(Endpoints {
                targets,
                all,
                outlier,
                five_xx_counts,
            })
        }
        Ok(L4Route::Direct(addr)) => Ok(direct(vec![Target::Direct(addr)])),
        Ok(L4Route::Waypoint { .. }) => Err(Reason::Loop),
        Ok(L4Route::Dns { hosts, port, .. }) => {
            let mut found = Vec::new();
            for host in hosts {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => found.extend(addrs),
                    Err(err) => debug!(%err, %host, "lookup failed"),
                }
            }
            Ok(direct(found.into_iter().map(Target::Direct).collect()))
        }
        Err(_) => Err(Reason::NoEndpoints),
    }
}

pub fn endpoint_of(target: &Target) -> SocketAddr {
    match target {
        Target::Direct(addr) => *addr,
        Target::Remote(via) => via.gateway,
        Target::Waypoint(hop) => hop.addr,
    }
}

/// The request as the endpoint gets it: origin-form for HTTP/1.1 (the
/// Host header stays), absolute for HTTP/2 (`:authority`).
pub fn upstream_request(
    parts: &hyper::http::request::Parts,
    body: Body,
    addr: SocketAddr,
    version: Version,
) -> Request<Body> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = match version {
        Version::Http1 => path.parse::<Uri>(),
        Version::Http2 => {
            let authority = request_authority(parts).unwrap_or_else(|| addr.to_string());
            format!("http://{authority}{path}").parse::<Uri>()
        }
    }
    .unwrap_or_else(|_| Uri::from_static("/"));
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
    if version == Version::Http2 {
        request.headers_mut().remove(header::HOST);
    }
    request
}

/// A request's head without its extensions (which do not clone).
pub fn head_of(parts: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// The authority a request names: its URI's (HTTP/2), else its Host.
pub fn request_authority(parts: &hyper::http::request::Parts) -> Option<String> {
    parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}
