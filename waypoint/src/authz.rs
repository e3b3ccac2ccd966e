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

/// What the policies say of a request: the CUSTOM policies whose rules
/// match it (`namespace/name` and the authorizer each names), which it
/// must pass first, and the DENY and ALLOW policies' decision.
pub struct Verdict {
    pub custom: Vec<(String, String)>,
    pub decision: Decision,
}

/// Decides a request (its path already normalized) in `scope`.
pub fn request(
    waypoint: &Waypoint,
    config: &Config,
    asker: Asker<'_>,
    scope: WaypointScope<'_>,
    parts: &Parts,
    auth: Option<&RequestAuth>,
) -> Verdict {
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
    let principal = asker.identity.principal();
    let conn = connection_of(&asker, &principal, Some(&http));
    let custom = config
        .custom_policies(scope, &conn)
        .into_iter()
        .map(|p| {
            let provider = p.spec.provider.as_ref().map(|p| p.name.clone());
            (
                format!("{}/{}", p.namespace, p.name),
                provider.unwrap_or_default(),
            )
        })
        .collect();
    Verdict {
        custom,
        decision: decide(waypoint, config, &conn, scope),
    }
}

/// Decides a TCP connection for `service`: no request attributes.
pub fn connection(
    waypoint: &Waypoint,
    config: &Config,
    asker: Asker<'_>,
    service: Option<&Service>,
) -> Decision {
    let principal = asker.identity.principal();
    let conn = connection_of(&asker, &principal, None);
    let scope = WaypointScope {
        namespace: &waypoint.namespace,
        name: &waypoint.name,
        service,
    };
    decide(waypoint, config, &conn, scope)
}

fn connection_of<'a>(
    asker: &'a Asker<'a>,
    principal: &'a str,
    http: Option<&'a Http<'a>>,
) -> Connection<'a> {
    Connection {
        principal: Some(principal),
        namespace: Some(&asker.identity.namespace),
        source_ip: asker.addr.ip(),
        destination_ip: asker.authority.ip(),
        destination_port: asker.authority.port(),
        http,
    }
}

fn decide(
    waypoint: &Waypoint,
    config: &Config,
    conn: &Connection<'_>,
    scope: WaypointScope<'_>,
) -> Decision {
    let decision = config.authorize_request(scope, conn);
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
