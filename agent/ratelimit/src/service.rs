//! `ShouldRateLimit`: each descriptor of the request counted against its
//! limit; the answer is OVER_LIMIT when one is over (a limit in shadow mode
//! only counts), with each descriptor's status.
use crate::{
    counter::{self, Counter},
    limits::Limits,
    proto::{
        DescriptorStatus, OK, OVER_LIMIT, ProtoDuration, RateLimit, RateLimitRequest,
        RateLimitResponse,
    },
};

/// The request's answer, or the counter's failure.
pub async fn should_rate_limit(
    limits: &Limits,
    counter: &Counter,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, counter::Error> {
    let hits = request.hits_addend.max(1);
    let mut response = RateLimitResponse {
        overall_code: OK,
        ..RateLimitResponse::default()
    };
    for descriptor in &request.descriptors {
        let entries: Vec<(String, String)> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let Some(matched) = limits.find(&request.domain, &entries) else {
            response.statuses.push(DescriptorStatus {
                code: OK,
                ..DescriptorStatus::default()
            });
            continue;
        };
        if matched.limit.unlimited {
            response.statuses.push(DescriptorStatus {
                code: OK,
                ..DescriptorStatus::default()
            });
            continue;
        }
        let window = matched.limit.window();
        let count = counter.hit(&matched.key, hits, window).await?;
        let allowed = u64::from(matched.limit.requests_per_unit);
        let over = count > allowed && !matched.shadow;
        let reset = Counter::until_reset(window);
        if over {
            response.overall_code = OVER_LIMIT;
        }
        response.statuses.push(DescriptorStatus {
            code: if over { OVER_LIMIT } else { OK },
            current_limit: Some(RateLimit {
                name: matched.limit.name.clone().unwrap_or_default(),
                requests_per_unit: matched.limit.requests_per_unit,
                unit: matched.limit.unit() as i32,
            }),
            limit_remaining: allowed.saturating_sub(count) as u32,
            duration_until_reset: Some(ProtoDuration {
                seconds: reset.as_secs() as i64,
                nanos: reset.subsec_nanos() as i32,
            }),
        });
    }
    Ok(response)
}
