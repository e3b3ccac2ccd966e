//! The CA service's Prometheus metrics: every signing request by outcome,
//! and config reloads.
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// What became of a signing request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are Prometheus' snake case
pub enum Outcome {
    signed,
    /// The node may not hold the identity it asked for.
    refused,
    /// Not a request the CA can read.
    invalid,
    /// The TLS handshake failed (no node credential, or a foreign one),
    /// or the ServiceAccount token was refused.
    unauthenticated,
    /// The API server could not check the token.
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "strait_ca_requests",
            "Certificate signing requests, by result",
            requests.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "strait_ca_config_reloads",
            "Config directory reloads, by result",
            reloads.clone(),
        );
        Self {
            registry,
            requests,
            reloads,
        }
    }

    pub fn request(&self, result: Outcome) {
        self.requests.get_or_create(&RequestLabels { result }).inc();
    }

    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
