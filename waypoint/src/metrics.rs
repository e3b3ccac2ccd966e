//! The waypoint's metrics: Istio's request metrics with
//! `reporter="waypoint"` (count, duration, request and response body
//! sizes), the connection metrics of what it carries as TCP, how config
//! reloads went, and trace export.
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
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status of a gRPC answer (from its trailers, or its
    /// headers when it has no body); empty otherwise.
    pub grpc_response_status: String,
    /// Envoy's flags: `-` when none; `NR` no route, `UH` no healthy
    /// endpoint, `UF` connection failure, `URX` retries exhausted, `UT`
    /// timeout, `UC` the upstream connection broke.
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    /// The DENY policy that matched (`namespace/name`); empty when no
    /// ALLOW policy did.
    pub policy: String,
    /// `deny` or `no_allow`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitedLabels {
    /// The EnvoyFilter whose limit refused (`namespace/name`).
    pub filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// `sent` (answered, whatever the status), `failed` (no endpoint, no
    /// connection, no answer), `dropped` (too many in flight, or a body
    /// too long to copy).
    pub result: &'static str,
}

/// One label set's request series, looked up once per request.
#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

pub struct Metrics {
    /// The series of each label set seen, so a request hashes its labels
    /// once, not once per metric.
    series: std::sync::Mutex<std::collections::HashMap<RequestLabels, Series>>,
    pub requests: Family<RequestLabels, Counter>,
    /// Attempts beyond each request's first (Envoy's upstream_rq_retry).
    pub retries: Counter,
    pub duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tcp: Tcp,
    pub mirrored: Family<MirrorLabels, Counter>,
    /// Requests and connections AuthorizationPolicy refused.
    denied: Family<DeniedLabels, Counter>,
    /// Requests a rate limit refused.
    rate_limited: Family<RateLimitedLabels, Counter>,
    pub mirrors_in_flight: prometheus_client::metrics::gauge::Gauge,
    pub trace: strait_trace::otlp::Metrics,
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

/// Istio's buckets for `istio_request_bytes` and `istio_response_bytes`.
fn size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
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
        let sizes = || {
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                size_histogram,
            )
        };
        let request_bytes = sizes();
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            request_bytes.clone(),
        );
        let response_bytes = sizes();
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            response_bytes.clone(),
        );
        let mirrored = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "strait_waypoint_mirrored_requests",
            "Copies of requests sent to mirror destinations, by result",
            mirrored.clone(),
        );
        let mirrors_in_flight = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "strait_waypoint_mirrors_in_flight",
            "Copies of requests on their way to mirror destinations",
            mirrors_in_flight.clone(),
        );
        let denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "strait_waypoint_authz_denied",
            "Requests and connections refused by AuthorizationPolicy, by the policy that refused",
            denied.clone(),
        );
        let rate_limited = Family::<RateLimitedLabels, Counter>::default();
        registry.register(
            "strait_waypoint_rate_limited",
            "Requests refused by a rate limit, by the EnvoyFilter that set it",
            rate_limited.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "strait_waypoint_retries",
            "Attempts made beyond each request's first",
            retries.clone(),
        );
        let tcp = Tcp::register(&mut registry);
        let config = Arc::new(strait_state::reload::Metrics::register(&mut registry));
        let trace = strait_trace::otlp::Metrics::register(&mut registry);
        Self {
            series: Default::default(),
            requests,
            retries,
            duration,
            request_bytes,
            response_bytes,
            tcp,
            mirrored,
            denied,
            rate_limited,
            mirrors_in_flight,
            trace,
            config,
            registry,
        }
    }

    /// One request's answer ended.
    pub fn request(
        &self,
        labels: &RequestLabels,
        millis: f64,
        attempts: u32,
        (received, sent): (u64, u64),
    ) {
        let series = {
            let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
            match all.get(labels) {
                Some(series) => series.clone(),
                None => {
                    let series = Series {
                        requests: self.requests.get_or_create(labels).clone(),
                        duration: self.duration.get_or_create(labels).clone(),
                        request_bytes: self.request_bytes.get_or_create(labels).clone(),
                        response_bytes: self.response_bytes.get_or_create(labels).clone(),
                    };
                    all.insert(labels.clone(), series.clone());
                    series
                }
            }
        };
        series.requests.inc();
        self.retries.inc_by(u64::from(attempts.saturating_sub(1)));
        series.duration.observe(millis);
        series.request_bytes.observe(received as f64);
        series.response_bytes.observe(sent as f64);
    }

    pub fn mirrored(&self, result: &'static str) {
        self.mirrored.get_or_create(&MirrorLabels { result }).inc();
    }

    pub fn rate_limited(&self, filter: &str) {
        let labels = RateLimitedLabels {
            filter: filter.to_string(),
        };
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// A refusal by the DENY `policy`, or (`None`) for want of an ALLOW.
    pub fn denied(&self, policy: Option<&str>) {
        let labels = DeniedLabels {
            policy: policy.unwrap_or_default().to_string(),
            reason: if policy.is_some() { "deny" } else { "no_allow" },
        };
        self.denied.get_or_create(&labels).inc();
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
