//! A request the waypoint makes itself (a mirrored copy, a check with an
//! external authorizer) to a service, over the mesh as its clients'
//! requests go: an endpoint chosen as for them, a pooled connection, the
//! waypoint's own identity. The answer's body is read up to a bound.
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::HeaderMap;

use crate::{
    plan,
    pool::{Body, Dialing, Version},
    proxy::{Client, Waypoint},
};

/// Where a call goes: a service by host, a subset of it, a port.
pub struct To<'a> {
    pub host: &'a str,
    pub subset: Option<&'a str>,
    pub port: u16,
    /// The HTTP version to speak, when the call needs one (gRPC); else the
    /// service port's, or the client's.
    pub version: Option<Version>,
}

/// Sends `head` and `body` to `to`; returns the answer's head, up to
/// `limit` bytes of its body, and its trailers.
pub async fn exchange(
    waypoint: &Waypoint,
    client: &Client,
    to: To<'_>,
    head: &hyper::http::request::Parts,
    body: Body,
    limit: usize,
) -> Result<(hyper::http::response::Parts, Bytes, Option<HeaderMap>), &'static str> {
    let state = waypoint.state.snapshot();
    let at = state
        .config
        .find_service(to.host)
        .ok_or("no such service")?;
    let subset = match to.subset {
        None => None,
        Some(name) => {
            Some(plan::subset_labels(waypoint, &state.config, at, name).ok_or("no such subset")?)
        }
    };
    let plan = plan::Plan::to(at, to.port, subset);
    let version = to.version.unwrap_or_else(|| plan.version(client.version));
    let endpoints = plan::targets(waypoint, client, &state, &plan)
        .await
        .map_err(|_| "no endpoint")?;
    let target = endpoints.targets.first().ok_or("no endpoint")?;
    let addr = plan::endpoint_of(target);
    let counters = waypoint.breakers.of(&format!("call {}", to.host));
    let limits = crate::breaker::Limits::default();
    let mut lease = waypoint
        .upstreams
        .take(
            Dialing {
                dialer: &waypoint.dialer,
                origin: waypoint,
                timeout: waypoint.connect_timeout,
                tls: None,
            },
            &state,
            target,
            (version, None, None),
            (
                &counters,
                limits.max_connections,
                limits.max_pending,
                limits.reuse,
            ),
        )
        .await
        .map_err(|_| "no connection")?;
    let request = plan::upstream_request(head, body, addr, version);
    let answer = lease.sender.send(request).await.map_err(|_| "no answer")?;
    let (parts, body) = answer.into_parts();
    let collected = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| "an answer too long, or cut short")?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    // Read to its end: the connection can carry the next call.
    waypoint
        .upstreams
        .give_back(target, (&waypoint.identity, None), lease, limits.reuse);
    Ok((parts, body, trailers))
}
