//! Envoy's local rate limit ([`crate::ratelimit`]): token buckets in this
//! waypoint replica, one per filter (or per route that sets its own), and
//! one per configured descriptor. A bucket starts full, gains `tokens_per_fill` at each
//! `fill_interval` since it was made (never past `max_tokens`), and a
//! request takes one token from each bucket it falls under, or is limited.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use strait_config::ratelimit::{LocalRateLimit, TokenBucket};

struct Bucket {
    shape: TokenBucket,
    tokens: u64,
    /// When the last whole fill was counted.
    filled: Instant,
}

impl Bucket {
    fn new(shape: TokenBucket, now: Instant) -> Self {
        Self {
            shape,
            tokens: shape.max_tokens,
            filled: now,
        }
    }

    fn fill(&mut self, now: Instant) {
        let interval = self.shape.fill_interval.as_nanos().max(1);
        let fills = now.saturating_duration_since(self.filled).as_nanos() / interval;
        if fills > 0 {
            let added = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(self.shape.tokens_per_fill);
            self.tokens = self.tokens.saturating_add(added).min(self.shape.max_tokens);
            let step = u32::try_from(fills).unwrap_or(u32::MAX);
            self.filled += self.shape.fill_interval.saturating_mul(step);
        }
    }

    /// Time until the next fill.
    fn reset(&self, now: Instant) -> Duration {
        (self.filled + self.shape.fill_interval).saturating_duration_since(now)
    }
}

/// What a bucket said, for the `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug)]
pub struct Quota {
    pub limit: u64,
    pub window: Duration,
    pub remaining: u64,
    pub reset: Duration,
}

/// The buckets of this replica, by filter, route and descriptor.
#[derive(Default)]
pub struct Buckets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    /// Takes a token for a request of `descriptors` under `limit` (whose
    /// buckets are named by `scope`): from each configured descriptor the
    /// request has (an empty value in the configuration matches any), and
    /// from the filter's own bucket. `Err` when one of them is empty;
    /// either way the tightest quota seen.
    pub fn take(
        &self,
        scope: &str,
        limit: &LocalRateLimit,
        descriptors: &[Vec<(String, String)>],
    ) -> Result<Option<Quota>, Quota> {
        let now = Instant::now();
        let mut names: Vec<(String, TokenBucket)> = Vec::new();
        for configured in &limit.descriptors {
            let applies = descriptors.iter().any(|d| {
                d.len() == configured.entries.len()
                    && d.iter()
                        .zip(&configured.entries)
                        .all(|((k, v), (ck, cv))| k == ck && (cv.is_empty() || v == cv))
            });
            if applies {
                let entries: Vec<String> = configured
                    .entries
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                names.push((
                    format!("{scope}|{}|{:?}", entries.join(","), configured.bucket),
                    configured.bucket,
                ));
            }
        }
        if let Some(shape) = limit.bucket {
            names.push((format!("{scope}||{shape:?}"), shape));
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut tightest: Option<Quota> = None;
        // All must have a token before any is taken.
        for (name, shape) in &names {
            let bucket = buckets
                .entry(name.clone())
                .or_insert_with(|| Bucket::new(*shape, now));
            bucket.fill(now);
            let quota = Quota {
                limit: shape.max_tokens,
                window: shape.fill_interval,
                remaining: bucket.tokens,
                reset: bucket.reset(now),
            };
            if bucket.tokens == 0 {
                return Err(quota);
            }
            if tightest.is_none_or(|t| quota.remaining < t.remaining) {
                tightest = Some(quota);
            }
        }
        for (name, _) in &names {
            if let Some(bucket) = buckets.get_mut(name) {
                bucket.tokens = bucket.tokens.saturating_sub(1);
            }
        }
        Ok(tightest.map(|q| Quota {
            remaining: q.remaining.saturating_sub(1),
            ..q
        }))
    }

    /// Forgets the buckets of scopes `keep` refuses (filters gone).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| keep(name.split('|').next().unwrap_or_default()));
    }
}

#[cfg(test)]
mod tests {
    use strait_config::ratelimit::LocalDescriptor;

    use super::*;

    fn shape(max: u64, per_fill: u64, ms: u64) -> TokenBucket {
        TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_bucket_starts_full_and_refills_by_whole_intervals() {
        let now = Instant::now();
        let mut b = Bucket::new(shape(10, 3, 100), now);
        b.tokens = 0;
        b.fill(now + Duration::from_millis(250));
        assert_eq!(b.tokens, 6, "two whole fills");
        b.fill(now + Duration::from_millis(299));
        assert_eq!(b.tokens, 6);
        b.fill(now + Duration::from_secs(60));
        assert_eq!(b.tokens, 10, "never past max_tokens");
    }

    #[test]
    fn descriptors_have_their_own_buckets() {
        let limit = LocalRateLimit {
            bucket: Some(shape(100, 1, 60_000)),
            descriptors: vec![LocalDescriptor {
                entries: vec![("header_match".into(), "admin".into())],
                bucket: shape(2, 1, 60_000),
            }],
            ..LocalRateLimit::default()
        };
        let buckets = Buckets::default();
        let admin = vec![vec![("header_match".to_string(), "admin".to_string())]];
        assert!(buckets.take("f", &limit, &admin).is_ok());
        assert!(buckets.take("f", &limit, &admin).is_ok());
        let refused = buckets.take("f", &limit, &admin).unwrap_err();
        assert_eq!((refused.limit, refused.remaining), (2, 0));
        // Others still draw from the filter's bucket: 98 left of 100.
        let quota = buckets.take("f", &limit, &[]).unwrap().unwrap();
        assert_eq!(quota.remaining, 97);
        buckets.retain(|scope| scope != "f");
        assert!(
            buckets.take("f", &limit, &admin).is_ok(),
            "forgotten: full again"
        );
    }
}
