//! Prometheus metrics on :15020: Istio's connection metrics
//! ([`strait_telemetry`]) and the agent's own.
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use strait_telemetry::{Direction, Reason, Tcp, placement::Placement};

impl EncodeLabelValue for ProbeResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
        })
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProbeResult {
    Passed,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub result: ProbeResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `namespace/name`.
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

pub struct Metrics {
    /// Connections, Istio's way.
    pub tcp: Tcp,
    /// Where the workloads served are: `strait_workload_info`.
    pub placement: Placement,
    /// How config reloads went.
    pub config: Arc<strait_state::reload::Metrics>,
    ejections: Family<ServiceLabels, Counter>,
    probes: Family<ProbeLabels, Counter>,
    /// DNS queries the proxy received, and those it forwarded upstream.
    pub dns_requests: Counter,
    pub dns_forwarded: Counter,
    /// Queries dropped because a pod was over its share of the proxy.
    pub dns_dropped: Counter,
    /// Per cluster followed: whether its API server answers (read when
    /// scraped; none with a config directory).
    cluster_connected: Family<ClusterLabels, Gauge>,
    clusters: Mutex<Option<Arc<strait_kube::Clusters>>>,
    /// Identities whose last certificate request failed (read when
    /// scraped): the CA is away or refuses, current certificates are kept.
    certs_failing: Gauge,
    certs: Mutex<Option<Arc<strait_identity::CertManager>>>,
    /// This node's workloads in the mesh, fully enrolled or not yet.
    workloads: Family<WorkloadLabels, Gauge>,
    enrollment_failures: Counter,
    /// The agent's live tasks, read when scraped: a leak shows as growth.
    tasks: Gauge,
    /// Spans sent to the collector, and dropped.
    pub trace: strait_trace::otlp::Metrics,
    registry: Registry,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// `enrolled`, or `pending` (not captured yet, not serving, or no
    /// certificate yet).
    pub state: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tcp = Tcp::register(&mut registry);
        let placement = Placement::register(&mut registry);
        let config = Arc::new(strait_state::reload::Metrics::register(&mut registry));
        let trace = strait_trace::otlp::Metrics::register(&mut registry);
        let ejections = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "strait_outlier_ejections",
            "Endpoints set aside by outlier detection",
            ejections.clone(),
        );
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "strait_readiness_probes",
            "Readiness probes this agent ran for its workloads",
            probes.clone(),
        );
        let dns_requests = Counter::default();
        registry.register(
            "istio_dns_requests",
            "DNS queries received by the DNS proxy",
            dns_requests.clone(),
        );
        let dns_forwarded = Counter::default();
        registry.register(
            "istio_dns_upstream_requests",
            "DNS queries forwarded to the pod's nameserver",
            dns_forwarded.clone(),
        );
        let dns_dropped = Counter::default();
        registry.register(
            "strait_dns_dropped",
            "DNS queries dropped because the pod was over its share of the DNS proxy",
            dns_dropped.clone(),
        );
        let cluster_connected = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "strait_cluster_connected",
            "Per cluster followed: whether its API server answers (1), or what it last listed stays in force without it (0)",
            cluster_connected.clone(),
        );
        let certs_failing = Gauge::default();
        registry.register(
            "strait_certificate_requests_failing",
            "Identities whose last certificate request failed (the CA is away or refuses); their current certificates stay in use",
            certs_failing.clone(),
        );
        let workloads = Family::<WorkloadLabels, Gauge>::default();
        registry.register(
            "strait_workloads",
            "This node's workloads in the mesh: enrolled, pending (and retried), or refused (another workload has their address or network namespace)",
            workloads.clone(),
        );
        let enrollment_failures = Counter::default();
        registry.register(
            "strait_enrollment_failures",
            "Enrollment steps that failed and will be retried",
            enrollment_failures.clone(),
        );
        let tasks = Gauge::default();
        registry.register(
            "strait_tasks",
            "Tasks alive in the agent's runtime (connections, listeners, probes, rotations)",
            tasks.clone(),
        );
        Self {
            workloads,
            enrollment_failures,
            tasks,
            trace,
            tcp,
            placement,
            config,
            ejections,
            probes,
            dns_requests,
            dns_forwarded,
            dns_dropped,
            cluster_connected,
            clusters: Mutex::new(None),
            certs_failing,
            certs: Mutex::new(None),
            registry,
        }
    }

    pub fn fail(&self, direction: Direction, reason: Reason) {
        self.tcp.fail(direction, reason);
    }

    pub fn ejected(&self, service: &str) {
        self.ejections
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .inc();
    }

    pub fn probed(&self, passed: bool) {
        let result = if passed {
            ProbeResult::Passed
        } else {
            ProbeResult::Failed
        };
        self.probes.get_or_create(&ProbeLabels { result }).inc();
    }

    pub fn workloads(&self, enrolled: usize, pending: usize, refused: usize) {
        for (state, n) in [
            ("enrolled", enrolled),
            ("pending", pending),
            ("refused", refused),
        ] {
            self.workloads
                .get_or_create(&WorkloadLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn enrollment_failed(&self) {
        self.enrollment_failures.inc();
    }

    /// Reports the clusters' API servers as they are when scraped.
    pub fn follow_clusters(&self, clusters: Arc<strait_kube::Clusters>) {
        *self.clusters.lock().unwrap_or_else(|p| p.into_inner()) = Some(clusters);
    }

    /// Reports failing certificate requests as they are when scraped.
    pub fn follow_certs(&self, certs: Arc<strait_identity::CertManager>) {
        *self.certs.lock().unwrap_or_else(|p| p.into_inner()) = Some(certs);
    }

    /// The clusters followed, when the config comes from clusters.
    pub fn clusters(&self) -> Option<Arc<strait_kube::Clusters>> {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        if let Some(certs) = &*self.certs.lock().unwrap_or_else(|p| p.into_inner()) {
            let failing = certs.failing().len();
            self.certs_failing
                .set(i64::try_from(failing).unwrap_or(i64::MAX));
        }
        if let Some(clusters) = self.clusters() {
            self.cluster_connected.clear();
            for cluster in clusters.status() {
                self.cluster_connected
                    .get_or_create(&ClusterLabels {
                        cluster: cluster.name,
                    })
                    .set(i64::from(cluster.connected));
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
