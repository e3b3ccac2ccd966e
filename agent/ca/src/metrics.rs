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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    how: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    over_source_limit: Counter,
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
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "strait_ca_token_checks",
            "ServiceAccount tokens checked: by a TokenReview, by a recent one's answer (cached), or refused before asking (refused_early: not a token of this audience, or expired)",
            tokens.clone(),
        );
        let over_source_limit = Counter::default();
        registry.register(
            "strait_ca_connections_refused",
            "Connections closed at once for being over the connections one address may have",
            over_source_limit.clone(),
        );
        Self {
            registry,
            requests,
            reloads,
            tokens,
            over_source_limit,
        }
    }

    pub fn token_checked(&self, how: &'static str) {
        self.tokens.get_or_create(&TokenLabels { how }).inc();
    }

    pub fn connection_refused(&self) {
        self.over_source_limit.inc();
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
