//! The AuthorizationPolicies attached to this waypoint (its Gateway, the
//! request's Service or ServiceEntry, the `istio-waypoint` GatewayClass
//! from the root namespace), decided on each request with its L7
//! attributes ([`strait_config::authz`] has the rules), and on each TCP
//! connection it carries without them (failing closed on L7 rules).
use std::net::SocketAddr;

use hyper::{HeaderMap, http::request::Parts};
use strait_config::{
    Config, Service,
    authz::{Connection, Decision, Headers, Http, RequestAuth, WaypointScope},
};
use strait_identity::Identity;
use tracing::{debug, info};

use crate::proxy::Waypoint;

struct Map<'a>(&'a HeaderMap);

impl Headers for Map<'_> {
    fn values(&self, name: &str) -> Vec<String> {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

/// Who asks, from where, and for what address.
pub struct Asker<'a> {
    pub identity: &'a Identity,
    pub addr: SocketAddr,
    /// What the client dialled.
    pub authority: SocketAddr,
}

/// Decides a request (its path already normalized) in `scope`.
pub fn request(
    waypoint: &Waypoint,
    config: &Config,
    asker: Asker<'_>,
    scope: WaypointScope<'_>,
    parts: &Parts,
    auth: Option<&RequestAuth>,
) -> Decision {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(hyper::header::HOST)?.to_str().ok())
        .unwrap_or("");
    let headers = Map(&parts.headers);
    let http = Http {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        host,
        headers: &headers,
        sni: None,
        auth,
    };
    decide(waypoint, config, asker, scope.service, Some(&http))
}

/// Decides a TCP connection for `service`: no request attributes.
pub fn connection(
    waypoint: &Waypoint,
    config: &Config,
    asker: Asker<'_>,
    service: Option<&Service>,
) -> Decision {
    decide(waypoint, config, asker, service, None)
}

fn decide(
    waypoint: &Waypoint,
    config: &Config,
    asker: Asker<'_>,
    service: Option<&Service>,
    http: Option<&Http<'_>>,
) -> Decision {
    let principal = asker.identity.principal();
    let conn = Connection {
        principal: Some(&principal),
        namespace: Some(&asker.identity.namespace),
        source_ip: asker.addr.ip(),
        destination_ip: asker.authority.ip(),
        destination_port: asker.authority.port(),
        http,
    };
    let scope = WaypointScope {
        namespace: &waypoint.namespace,
        name: &waypoint.name,
        service,
    };
    let decision = config.authorize_request(scope, &conn);
    for policy in &decision.audited {
        info!(%policy, allowed = decision.allowed, "AUDIT policy matched");
    }
    // Counted, and in the access log; not a log line each: a client could
    // flood the log with refused requests.
    if !decision.allowed {
        waypoint.metrics.denied(decision.policy.as_deref());
        match &decision.policy {
            Some(policy) => debug!(%policy, "denied by DENY policy"),
            None => debug!("denied: no ALLOW policy matches"),
        }
    }
    decision
}
