//! Rate limits at the waypoint, from the EnvoyFilters that select it
//! ([`strait_config::ratelimit`]): a request's route (or virtual host)
//! `rate_limits` make its descriptors; the local rate limit
//! ([`crate::buckets`]) takes a token for them in this replica, the global one
//! ([`global`]) asks the rate-limit service all replicas share. A limited
//! request is answered 429 (or the local filter's `status`) with the
//! filter's headers and `x-ratelimit-limit`, `-remaining` and `-reset`; a
//! local filter enforcing only part of its limit lets the rest through.
mod global;

use crate::buckets::Quota;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use strait_config::{
    Config,
    authz::WaypointScope,
    ratelimit::{Action, LocalRateLimit, RouteLimits},
};

use crate::proxy::{Client, Waypoint};

/// What the request needs for its descriptors.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub remote: std::net::IpAddr,
    /// `host:port` of the service, for virtual-host matches.
    pub vhost: Option<String>,
    /// The route's name (a VirtualService http route's `name`).
    pub route: Option<&'a str>,
    /// This waypoint (`source_cluster`) and the destination
    /// (`destination_cluster`), as the request's metrics name them.
    pub source_cluster: &'a str,
    pub destination_cluster: &'a str,
}

/// A limited request's answer.
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The filter, `namespace/name`.
    pub filter: String,
}

/// What the rate limits say of `request`: the local ones first (this
/// replica's buckets), then the rate-limit service of a global one. `Err`
/// to refuse it.
pub async fn check(
    (waypoint, client): (&Waypoint, &Client),
    config: &Config,
    scope: WaypointScope<'_>,
    request: &Request<'_>,
) -> Result<(), Refusal> {
    for filter in config.waypoint_rate_limits(scope, &waypoint.instance.labels) {
        let id = format!("{}/{}", filter.namespace, filter.name);
        let routes: Vec<&RouteLimits> = filter
            .spec
            .routes
            .iter()
            .filter(|r| applies(r, request))
            .collect();
        let descriptors: Vec<Vec<(String, String)>> = routes
            .iter()
            .flat_map(|r| &r.rate_limits)
            .filter_map(|actions| descriptor(actions, request))
            .collect();
        // A route's own local settings replace the filter's.
        let local = match routes.iter().find_map(|r| r.local.as_ref()) {
            Some(own) => Some((own, format!("{id}@{}", request.route.unwrap_or("-")))),
            None => filter.spec.local.as_ref().map(|limit| (limit, id.clone())),
        };
        if let Some((limit, bucket_scope)) = local
            && fastrand::f64() < limit.enabled
            && let Err(quota) = waypoint
                .rate_buckets
                .take(&bucket_scope, limit, &descriptors)
            && fastrand::f64() < limit.enforced
        {
            return Err(refusal(limit, quota, id));
        }
        // The service is asked only for a request with descriptors.
        if let Some(limit) = &filter.spec.global
            && !descriptors.is_empty()
            && let global::Verdict::Refuse { status, headers } =
                global::check(waypoint, client, limit, &descriptors).await
        {
            return Err(Refusal {
                status: status.as_u16(),
                headers,
                filter: id,
            });
        }
    }
    Ok(())
}

/// Whether `limits` (of a virtual host or a route) apply to the request.
fn applies(limits: &RouteLimits, request: &Request<'_>) -> bool {
    let vhost = match (&limits.vhost, &request.vhost) {
        (None, _) => true,
        (Some(want), Some(have)) => {
            want == have
                || have
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| want.ends_with(&format!("|{port}")))
        }
        (Some(_), None) => false,
    };
    let route = match (&limits.route, request.route) {
        (None, _) => true,
        (Some(want), Some(have)) => have.rsplit('/').next() == Some(want.as_str()),
        (Some(_), None) => false,
    };
    vhost && route
}

/// The descriptor a `rate_limits` entry makes of the request, as Envoy
/// makes it: every action gives an entry, or there is no descriptor.
fn descriptor(actions: &[Action], request: &Request<'_>) -> Option<Vec<(String, String)>> {
    let header = |name: &str| -> Option<String> {
        match name {
            ":path" => Some(request.path.to_string()),
            ":method" => Some(request.method.to_string()),
            ":authority" | "host" => Some(request.authority.to_string()),
            other => request
                .headers
                .get(other)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    };
    let mut entries = Vec::new();
    for action in actions {
        match action {
            Action::RemoteAddress => {
                entries.push(("remote_address".into(), request.remote.to_string()))
            }
            Action::SourceCluster => {
                entries.push(("source_cluster".into(), request.source_cluster.to_string()))
            }
            Action::DestinationCluster => entries.push((
                "destination_cluster".into(),
                request.destination_cluster.to_string(),
            )),
            Action::GenericKey { key, value } => entries.push((key.clone(), value.clone())),
            Action::RequestHeaders {
                header: name,
                key,
                skip_if_absent,
            } => match header(name) {
                Some(value) => entries.push((key.clone(), value)),
                None if *skip_if_absent => {}
                None => return None,
            },
            Action::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let matched = headers.iter().all(|h| {
                    let v = header(&h.name);
                    h.kind.matches(v.as_deref()) != h.invert
                });
                if matched != *expect_match {
                    return None;
                }
                entries.push((key.clone(), value.clone()));
            }
        }
    }
    (!entries.is_empty()).then_some(entries)
}

fn refusal(limit: &LocalRateLimit, quota: Quota, filter: String) -> Refusal {
    let mut headers = Vec::new();
    for (name, value) in &limit.response_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.push((name, value));
        }
    }
    // The IETF draft's headers (Envoy's DRAFT_VERSION_03).
    let window = quota.window.as_secs().max(1);
    let reset = quota.reset.as_secs_f64().ceil() as u64;
    for (name, value) in [
        (
            "x-ratelimit-limit",
            format!("{}, {};w={window}", quota.limit, quota.limit),
        ),
        ("x-ratelimit-remaining", quota.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.push((HeaderName::from_static(name), value));
        }
    }
    Refusal {
        status: limit.status,
        headers,
        filter,
    }
}
