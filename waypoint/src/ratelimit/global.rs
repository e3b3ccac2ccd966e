//! Envoy's global rate limit: the request's descriptors put to a
//! rate-limit service (`ShouldRateLimit`, over the mesh like any call),
//! which counts for every replica of every proxy. OVER_LIMIT is answered
//! 429 with `x-envoy-ratelimited`; when the service cannot answer in time,
//! `failure_mode_deny` refuses the request (500) or lets it through.
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use strait_config::ratelimit::GlobalRateLimit;
use strait_ratelimit::proto::{
    Entry, OVER_LIMIT, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, SHOULD_RATE_LIMIT,
};

use crate::{
    call,
    pool::{Body, Version},
    proxy::{Client, Waypoint},
};

/// The most of the service's answer read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// What the service decided, or how its failure was taken.
pub enum Verdict {
    Allow,
    Refuse {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

pub async fn check(
    waypoint: &Waypoint,
    client: &Client,
    limit: &GlobalRateLimit,
    descriptors: &[Vec<(String, String)>],
) -> Verdict {
    let asked = RateLimitRequest {
        domain: limit.domain.clone(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            })
            .collect(),
        hits_addend: 1,
    };
    match tokio::time::timeout(limit.timeout, ask(waypoint, client, limit, &asked)).await {
        Ok(Ok(answer)) if answer.overall_code == OVER_LIMIT => Verdict::Refuse {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: refusal_headers(limit, &answer),
        },
        Ok(Ok(_)) => Verdict::Allow,
        Ok(Err(_)) | Err(_) if limit.failure_mode_deny => Verdict::Refuse {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: Vec::new(),
        },
        Ok(Err(_)) | Err(_) => Verdict::Allow,
    }
}

async fn ask(
    waypoint: &Waypoint,
    client: &Client,
    limit: &GlobalRateLimit,
    asked: &RateLimitRequest,
) -> Result<RateLimitResponse, &'static str> {
    let mut request = hyper::Request::builder()
        .method(Method::POST)
        .uri(SHOULD_RATE_LIMIT)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(())
        .map_err(|_| "the request cannot be made")?;
    if let Ok(authority) = HeaderValue::from_str(&format!("{}:{}", limit.service, limit.port)) {
        request.headers_mut().insert(header::HOST, authority);
    }
    let (head, ()) = request.into_parts();
    let body: Body = Full::new(strait_http::grpc::frame(asked))
        .map_err(|never| match never {})
        .boxed();
    let to = call::To {
        host: &limit.service,
        subset: None,
        port: limit.port,
        version: Some(Version::Http2),
    };
    let (answer, body, trailers) =
        call::exchange(waypoint, client, to, &head, body, ANSWER_LIMIT).await?;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| answer.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    if answer.status != StatusCode::OK || grpc_status != Some("0") {
        return Err("the rate-limit service failed");
    }
    strait_http::grpc::unframe(&body)
}

/// `x-envoy-ratelimited`, the service's own headers, and (when the filter
/// asks) the draft's `x-ratelimit-*` from the tightest descriptor.
fn refusal_headers(
    limit: &GlobalRateLimit,
    answer: &RateLimitResponse,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(
        HeaderName::from_static("x-envoy-ratelimited"),
        HeaderValue::from_static("true"),
    )];
    for h in &answer.response_headers_to_add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.key.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.push((name, value));
        }
    }
    let tightest = answer
        .statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .min_by_key(|s| s.limit_remaining);
    if let (true, Some(status)) = (limit.x_ratelimit_headers, tightest) {
        let per_unit = status
            .current_limit
            .as_ref()
            .map_or(0, |l| l.requests_per_unit);
        let window = match status.current_limit.as_ref().map_or(1, |l| l.unit) {
            2 => 60,
            3 => 3600,
            4 => 86_400,
            _ => 1,
        };
        let reset = status
            .duration_until_reset
            .as_ref()
            .map_or(0, |d| d.seconds + i64::from(d.nanos > 0));
        for (name, value) in [
            (
                "x-ratelimit-limit",
                format!("{per_unit}, {per_unit};w={window}"),
            ),
            ("x-ratelimit-remaining", status.limit_remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((HeaderName::from_static(name), value));
            }
        }
    }
    headers
}
