//! The waypoint's metrics: Istio's request metrics with
//! `reporter="waypoint"`, the connection metrics of what it carries as TCP,
//! and how config reloads went.
use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use strait_telemetry::Tcp;

/// The label set of Istio's request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// Envoy's flags: `-` when none; `NR` no route, `UH` no healthy
    /// endpoint, `UF` connection failure, `URX` retries exhausted, `UT`
    /// timeout, `UC` the upstream connection broke.
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Attempts beyond each request's first (Envoy's upstream_rq_retry).
    pub retries: Counter,
    pub duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tcp: Tcp,
    pub config: Arc<strait_state::reload::Metrics>,
    registry: Registry,
}

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register("istio_requests", "Requests", requests.clone());
        let duration = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "strait_waypoint_retries",
            "Attempts made beyond each request's first",
            retries.clone(),
        );
        let tcp = Tcp::register(&mut registry);
        let config = Arc::new(strait_state::reload::Metrics::register(&mut registry));
        Self {
            requests,
            retries,
            duration,
            tcp,
            config,
            registry,
        }
    }

    pub fn request(&self, labels: &RequestLabels, millis: f64, attempts: u32) {
        self.requests.get_or_create(labels).inc();
        self.retries.inc_by(u64::from(attempts.saturating_sub(1)));
        self.duration.get_or_create(labels).observe(millis);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
