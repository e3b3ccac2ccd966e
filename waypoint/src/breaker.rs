//! Circuit breaking, as a DestinationRule's `connectionPool` sets it for a
//! destination service port (Envoy's cluster): requests in flight
//! (`http.http2MaxRequests`), requests waiting for an HTTP/1.1 connection
//! while `tcp.maxConnections` are all busy (`http.http1MaxPendingRequests`),
//! and retries in flight (`http.maxRetries`). Past a limit the request is
//! answered 503 with response flag `UO` (a retry past `maxRetries` is not
//! made). Unset, as in Istio: no limit.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use strait_config::manifest::networking::{ConnectionPool, TrafficPolicy};
use tokio::sync::Notify;

/// The limits of one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: usize,
    pub max_pending: usize,
    pub max_retries: usize,
    /// HTTP/1.1 connections to the destination's endpoints, together.
    pub max_connections: usize,
    /// How long a connection to it is reused.
    pub reuse: Reuse,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_requests: usize::MAX,
            max_pending: usize::MAX,
            max_retries: usize::MAX,
            max_connections: usize::MAX,
            reuse: Reuse {
                max_requests: None,
                idle_timeout: IDLE_TIMEOUT,
            },
        }
    }
}

/// Istio's default `connectionPool.http.idleTimeout`.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl Limits {
    /// The limits `traffic` sets for `port`: its `portLevelSettings` for
    /// the port over its own.
    pub fn from_policy(traffic: Option<&TrafficPolicy>, port: u16) -> Self {
        let port_level = traffic.and_then(|t| {
            t.port_level_settings
                .iter()
                .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        });
        let pool: Option<&ConnectionPool> = port_level
            .and_then(|p| p.connection_pool.as_ref())
            .or_else(|| traffic.and_then(|t| t.connection_pool.as_ref()));
        let http = pool.and_then(|p| p.http.as_ref());
        // 0, like unset, is no limit (Istio's reading of the proto).
        let limit = |v: Option<u32>| v.filter(|v| *v > 0).map_or(usize::MAX, |v| v as usize);
        Self {
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_pending: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
            max_connections: limit(
                pool.and_then(|p| p.tcp.as_ref())
                    .and_then(|t| t.max_connections),
            ),
            reuse: Reuse {
                max_requests: http
                    .and_then(|h| h.max_requests_per_connection)
                    .filter(|m| *m > 0),
                idle_timeout: http
                    .and_then(|h| h.idle_timeout.as_deref())
                    .and_then(|t| strait_config::duration::parse(t).ok())
                    .filter(|t| !t.is_zero())
                    .unwrap_or(IDLE_TIMEOUT),
            },
        }
    }
}

/// How long a connection is kept for reuse: the DestinationRule's
/// `connectionPool.http` `maxRequestsPerConnection` and `idleTimeout`
/// (Istio's default: an hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    pub max_requests: Option<u32>,
    pub idle_timeout: std::time::Duration,
}

/// What one destination holds now.
#[derive(Default)]
pub struct Counters {
    requests: AtomicUsize,
    pending: AtomicUsize,
    retries: AtomicUsize,
    pub connections: AtomicUsize,
    /// Told when an HTTP/1.1 connection may have become free.
    pub freed: Notify,
}

#[derive(Clone, Copy)]
pub enum Kind {
    Request,
    Pending,
    Retry,
}

/// One place taken, given back on drop.
pub struct Slot {
    counters: Arc<Counters>,
    kind: Kind,
}

impl Counters {
    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Request => &self.requests,
            Kind::Pending => &self.pending,
            Kind::Retry => &self.retries,
        }
    }

    /// A place of `kind`, unless `max` are taken.
    pub fn take(self: &Arc<Self>, kind: Kind, max: usize) -> Option<Slot> {
        let counter = self.counter(kind);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            counters: self.clone(),
            kind,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters
            .counter(self.kind)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters by destination (`namespace/service:port`).
#[derive(Default)]
pub struct Breakers {
    by: Mutex<HashMap<String, Arc<Counters>>>,
}

impl Breakers {
    pub fn of(&self, destination: &str) -> Arc<Counters> {
        self.by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(destination.to_string())
            .or_default()
            .clone()
    }

    /// Forgets destinations that are gone and hold nothing.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, c| keep(k) || Arc::strong_count(c) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_refuses_past_it_and_frees_on_drop() {
        let counters = Arc::new(Counters::default());
        let a = counters.take(Kind::Request, 2).unwrap();
        let _b = counters.take(Kind::Request, 2).unwrap();
        assert!(counters.take(Kind::Request, 2).is_none());
        // Other kinds count apart.
        assert!(counters.take(Kind::Pending, 1).is_some());
        drop(a);
        assert!(counters.take(Kind::Request, 2).is_some());
    }

    #[test]
    fn limits_come_from_the_port_or_the_rule() {
        let traffic: TrafficPolicy = serde_json::from_str(
            r#"{"connectionPool": {"tcp": {"maxConnections": 1},
                                   "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 2}},
                "portLevelSettings": [{"port": {"number": 81},
                                       "connectionPool": {"http": {"maxRetries": 1}}}]}"#,
        )
        .unwrap();
        let at_80 = Limits::from_policy(Some(&traffic), 80);
        assert_eq!(
            (at_80.max_connections, at_80.max_pending, at_80.max_requests),
            (1, 1, 2)
        );
        assert_eq!(at_80.max_retries, usize::MAX);
        // The port's own pool replaces the rule's.
        let at_81 = Limits::from_policy(Some(&traffic), 81);
        assert_eq!(at_81.max_retries, 1);
        assert_eq!(at_81.max_requests, usize::MAX);
        assert_eq!(Limits::from_policy(None, 80), Limits::default());
        // Reuse: maxRequestsPerConnection and idleTimeout.
        let traffic: TrafficPolicy = serde_json::from_str(
            r#"{"connectionPool": {"http": {"maxRequestsPerConnection": 1, "idleTimeout": "5s"}}}"#,
        )
        .unwrap();
        let reuse = Limits::from_policy(Some(&traffic), 80).reuse;
        assert_eq!(reuse.max_requests, Some(1));
        assert_eq!(reuse.idle_timeout, std::time::Duration::from_secs(5));
        assert_eq!(
            Limits::default().reuse.idle_timeout,
            std::time::Duration::from_secs(3600)
        );
    }
}
