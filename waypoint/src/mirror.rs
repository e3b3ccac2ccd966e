//! Mirroring (`mirror`, `mirrors`): a copy of a request goes to another
//! destination, its authority suffixed `-shadow` as Envoy's is, and its
//! answer is dropped. The copy goes once the request's own attempts are
//! done, with the body kept for replay (a body too long to keep is not
//! mirrored); copies in flight are bounded, and each is given a deadline.
use std::{sync::Arc, time::Duration};

use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use tracing::debug;

use crate::{
    plan,
    pool::{Body, Dialing},
    proxy::{Client, Waypoint},
    routes::Mirrored,
};

/// Copies in flight at most, per waypoint.
pub const IN_FLIGHT: usize = 256;
/// How long one copy may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// Sends a copy of the request (`head`, `body`) to `to`, in the
/// background.
pub fn send(
    waypoint: Arc<Waypoint>,
    client: Arc<Client>,
    to: Mirrored,
    head: hyper::http::request::Parts,
    body: Option<Body>,
) {
    let count = |result| waypoint.metrics.mirrored(result);
    let Some(body) = body else {
        count("dropped");
        return;
    };
    let Ok(slot) = waypoint.mirror_slots.clone().try_acquire_owned() else {
        count("dropped");
        return;
    };
    waypoint.metrics.mirrors_in_flight.inc();
    tokio::spawn(async move {
        let sent = tokio::time::timeout(DEADLINE, copy(&waypoint, &client, &to, head, body)).await;
        let result = match sent {
            Ok(Ok(())) => "sent",
            Ok(Err(why)) => {
                debug!(host = %to.host, why, "mirror failed");
                "failed"
            }
            Err(_) => "failed",
        };
        waypoint.metrics.mirrored(result);
        waypoint.metrics.mirrors_in_flight.dec();
        drop(slot);
    });
}

async fn copy(
    waypoint: &Waypoint,
    client: &Client,
    to: &Mirrored,
    mut head: hyper::http::request::Parts,
    body: Body,
) -> Result<(), &'static str> {
    let state = waypoint.state.snapshot();
    let at = state
        .config
        .find_service(&to.host)
        .ok_or("no such service")?;
    let subset = match &to.subset {
        None => None,
        Some(name) => {
            Some(plan::subset_labels(waypoint, &state.config, at, name).ok_or("no such subset")?)
        }
    };
    let port = to
        .port
        .unwrap_or_else(|| plan::port_of(at, None, client.authority.port()));
    let plan = plan::Plan::to(at, port, subset);
    let endpoints = plan::targets(waypoint, client, &state, &plan)
        .await
        .map_err(|_| "no endpoint")?;
    let target = endpoints.targets.first().ok_or("no endpoint")?;
    let addr = plan::endpoint_of(target);
    let counters = waypoint.breakers.of(&format!("mirror {}", to.host));
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
            (plan.version(client.version), None, None),
            (
                &counters,
                limits.max_connections,
                limits.max_pending,
                limits.reuse,
            ),
        )
        .await
        .map_err(|_| "no connection")?;
    // Envoy's shadow authority: `host-shadow`.
    let authority = plan::request_authority(&head).unwrap_or_else(|| addr.to_string());
    if let Ok(shadow) = HeaderValue::from_str(&shadow_of(&authority)) {
        head.headers.insert(header::HOST, shadow);
    }
    let request = plan::upstream_request(&head, body, addr, plan.version(client.version));
    let answer = lease.sender.send(request).await.map_err(|_| "no answer")?;
    // Read to the end, so the connection can be used again.
    let _ = answer.into_body().collect().await;
    waypoint
        .upstreams
        .give_back(target, (&waypoint.identity, None), lease, limits.reuse);
    Ok(())
}

/// `host-shadow`, the port kept.
fn shadow_of(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_authority_keeps_the_port() {
        assert_eq!(shadow_of("shop.default:9080"), "shop.default-shadow:9080");
        assert_eq!(shadow_of("shop"), "shop-shadow");
    }
}
