//! How Istio's metrics name one end of a connection or request: workload,
//! namespace, app, version, canonical service and revision, cluster, each
//! `unknown` when nothing says.
use strait_config::Workload;
use strait_state::Snapshot;

pub const UNKNOWN: &str = "unknown";

/// One end, as the current config describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Peer {
    pub fn unknown() -> Self {
        Self {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }

    /// Istio's rules: the workload is the owning controller's name
    /// ([`Workload::workload_name`]); the canonical service is
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
    /// else `app`, else the workload's name; the revision
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`,
    /// else `version`, else `latest`. App and version are the `app` and
    /// `version` labels (their `app.kubernetes.io` forms else), as Envoy
    /// reports them at a waypoint; ztunnel's TCP metrics use the canonical
    /// names instead ([`crate::TcpLabels::source`]).
    pub fn of(state: &Snapshot, w: &Workload) -> Self {
        let label = |names: &[&str]| names.iter().find_map(|n| w.labels.get(*n)).cloned();
        let cluster = state.cluster(w);
        let canonical_service = label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| w.workload_name().to_string());
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".into());
        Self {
            workload: w.workload_name().to_string(),
            namespace: w.namespace.clone(),
            app: label(&["app", "app.kubernetes.io/name"]).unwrap_or_else(|| UNKNOWN.into()),
            version: label(&["version", "app.kubernetes.io/version"])
                .unwrap_or_else(|| UNKNOWN.into()),
            canonical_service,
            canonical_revision,
            cluster: if cluster.is_empty() {
                UNKNOWN.into()
            } else {
                cluster
            },
        }
    }

    /// The workload at `ip`, or unknown.
    pub fn at(state: &Snapshot, ip: std::net::IpAddr) -> Self {
        state
            .config
            .workload_by_address(ip)
            .map_or_else(Self::unknown, |w| Self::of(state, w))
    }
}
