//! The controller's Prometheus metrics: reconciles by result, and objects
//! removed with their waypoints.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    swept: Family<KindLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "strait_controller_reconciles",
            "Waypoint Gateways reconciled, by result (applied, waiting, invalid, error)",
            reconciles.clone(),
        );
        let swept = Family::<KindLabels, Counter>::default();
        registry.register(
            "strait_controller_swept",
            "Objects removed because their waypoint Gateway is gone, by kind",
            swept.clone(),
        );
        Self {
            registry,
            reconciles,
            swept,
        }
    }

    pub fn reconciled(&self, result: &'static str) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn swept(&self, kind: &str) {
        self.swept
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
