//! Mirroring (`mirror`, `mirrors`): a copy of a request goes to another
//! destination, its authority suffixed `-shadow` as Envoy's is, and its
//! answer is dropped. The copy goes once the request's own attempts are
//! done, with the body kept for replay (a body too long to keep is not
//! mirrored); copies in flight are bounded, and each is given a deadline.
use std::{sync::Arc, time::Duration};

use hyper::header::{self, HeaderValue};
use tracing::debug;

use crate::{
    call, plan,
    pool::Body,
    proxy::{Client, Waypoint},
    routes::Mirrored,
};

/// Copies in flight at most, per waypoint.
pub const IN_FLIGHT: usize = 256;
/// How long one copy may take.
const DEADLINE: Duration = Duration::from_secs(15);
/// How much of a copy's answer is read (and dropped).
const ANSWER_READ: usize = 1 << 20;

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
    let port = match to.port {
        Some(port) => port,
        None => {
            let state = waypoint.state.snapshot();
            let at = state
                .config
                .find_service(&to.host)
                .ok_or("no such service")?;
            plan::port_of(at, None, client.authority.port())
        }
    };
    // Envoy's shadow authority: `host-shadow`.
    let authority = plan::request_authority(&head).unwrap_or_else(|| to.host.clone());
    if let Ok(shadow) = HeaderValue::from_str(&shadow_of(&authority)) {
        head.headers.insert(header::HOST, shadow);
    }
    let to = call::To {
        host: &to.host,
        subset: to.subset.as_deref(),
        port,
        version: None,
    };
    // The answer is dropped: only so much of it is read.
    call::exchange(waypoint, client, to, &head, body, ANSWER_READ).await?;
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
