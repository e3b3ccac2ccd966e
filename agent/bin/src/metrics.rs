//! Prometheus metrics on :15020 with Istio's names and labels, so existing
//! dashboards work.
use std::sync::{Arc, Mutex, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// `reporter`: which end of the connection counted it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
    /// An east-west gateway, between the two.
    Gateway,
}

/// The label set of Istio's `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_cluster: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
    pub request_protocol: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    /// Through the east-west gateway role.
    Gateway,
}

/// Why a connection was refused or failed before carrying data.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reason {
    /// mTLS handshake failed: certificate from another CA, none, or not the
    /// expected identity.
    Tls,
    /// Plaintext to a workload whose PeerAuthentication is STRICT.
    StrictMtls,
    /// A CONNECT for an address that is not this pod's.
    Misdirected,
    /// The destination (app, or upstream peer) did not accept.
    Upstream,
    /// A redirected connection whose original destination was not found.
    NoOriginalDestination,
    /// An AuthorizationPolicy refused it.
    Denied,
    /// A service address with no endpoint for the port.
    NoEndpoints,
    /// The pod has no certificate yet (the CA has not answered).
    NoCertificate,
    /// A peer over one of the HBONE server's limits.
    Limit,
    /// A service's `connectionPool.tcp.maxConnections` was reached.
    Overflow,
    /// At a gateway: the authority names a service not exported to other
    /// networks (or none).
    NotExported,
    /// At a gateway: the authority is an address outside its network.
    OutsideNetwork,
    /// Delivery would come back into the agent (loopback, another
    /// address, one of its own listener ports).
    Loop,
    /// The pod is at its cap of open connections that way.
    PodLimit,
    /// The node is at its budget of open connections.
    NodeLimit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: Direction,
    pub reason: Reason,
}

/// Label values as Istio spells them.
macro_rules! label_values {
    ($($ty:ty { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    )+};
}

label_values! {
    Reporter { Source => "source", Destination => "destination", Gateway => "gateway" }
    Direction { Inbound => "inbound", Outbound => "outbound", Gateway => "gateway" }
    Reason {
        Tls => "tls",
        StrictMtls => "strict_mtls",
        Misdirected => "misdirected",
        Upstream => "upstream",
        NoOriginalDestination => "no_original_destination",
        Denied => "denied",
        NoEndpoints => "no_endpoints",
        NoCertificate => "no_certificate",
        Limit => "limit",
        Loop => "loop",
        PodLimit => "pod_limit",
        NodeLimit => "node_limit",
        Overflow => "overflow",
        NotExported => "not_exported",
        OutsideNetwork => "outside_network",
    }
    ReloadResult { Success => "success", Failure => "failure" }
    ProbeResult { Passed => "passed", Failed => "failed" }
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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

pub struct Metrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    probes: Family<ProbeLabels, Counter>,
    /// DNS queries the proxy received, and those it forwarded upstream.
    pub dns_requests: Counter,
    pub dns_forwarded: Counter,
    /// Queries dropped because a pod was over its share of the proxy.
    pub dns_dropped: Counter,
    /// 1 while the directory's current contents are in force, 0 after a
    /// refused change.
    last_reload_ok: Gauge,
    /// How long the latest load of the config directory took.
    load_seconds: Gauge<f64, AtomicU64>,
    /// From a cluster: objects left out of the config in force.
    left_out: Gauge,
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
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent_bytes = Family::<TcpLabels, Counter>::default();
        let received_bytes = Family::<TcpLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the destination",
            sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            received_bytes.clone(),
        );
        registry.register(
            "strait_connection_failures",
            "Connections refused or failed before carrying data",
            failures.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "strait_config_reloads",
            "Config directory changes applied (success) or refused (failure)",
            reloads.clone(),
        );
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
        let load_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "strait_config_load_seconds",
            "How long the latest load of the config directory took",
            load_seconds.clone(),
        );
        let left_out = Gauge::default();
        registry.register(
            "strait_config_objects_left_out",
            "Objects of the cluster left out of the config in force for failing the checks",
            left_out.clone(),
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
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "strait_config_last_reload_success",
            "Whether the latest config change was applied (1) or refused (0)",
            last_reload_ok.clone(),
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
            opened,
            closed,
            sent_bytes,
            received_bytes,
            failures,
            reloads,
            ejections,
            probes,
            dns_requests,
            dns_forwarded,
            dns_dropped,
            last_reload_ok,
            load_seconds,
            left_out,
            cluster_connected,
            clusters: Mutex::new(None),
            certs_failing,
            certs: Mutex::new(None),
            registry,
        }
    }

    pub fn fail(&self, direction: Direction, reason: Reason) {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
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

    pub fn config_left_out(&self, objects: usize) {
        self.left_out
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    pub fn config_loaded_in(&self, took: std::time::Duration) {
        self.load_seconds.set(took.as_secs_f64());
    }

    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_ok.set(i64::from(ok));
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
