//! Hot reload. From a directory: the agent polls it
//! ([`strait_config::watch::DirWatch`]); once a change has stayed put for
//! one poll, it checks the whole directory again, and a config with any
//! rejected object, or none at all, is refused as a whole and the last good
//! one stays in force. From a cluster: each snapshot of its objects
//! applies, the objects that fail the checks left out and listed.
use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use strait_config::{
    LoadError,
    watch::{DirWatch, reload_dir},
};
use tracing::{info, warn};

use crate::{NodeState, release_freed_memory};

/// How often the directory is looked at: a change applies within two polls
/// plus the time to load it.
pub const POLL: Duration = Duration::from_millis(200);

/// What `/config_dump` shows about reloads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Configs applied since start (the first load is 1).
    pub generation: u64,
    /// When the current config was applied (seconds since the epoch).
    pub applied_at: f64,
    /// Changes refused since start.
    pub failures: u64,
    /// Why the latest change was refused; cleared by the next good one.
    pub last_error: Option<LoadError>,
    /// From a cluster: the objects whose latest version failed the
    /// checks, and why; those never seen good are left out, the others
    /// are in force at their last good version (`kept_previous`).
    pub left_out: Vec<String>,
    pub kept_previous: Vec<String>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

pub fn initial_status() -> SharedStatus {
    Arc::new(Mutex::new(Status {
        generation: 1,
        applied_at: now(),
        failures: 0,
        last_error: None,
        left_out: Vec::new(),
        kept_previous: Vec::new(),
    }))
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ReloadResult {
    Success,
    Failure,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Success => "success",
            Self::Failure => "failure",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// How reloads went, as metrics.
#[derive(Default)]
pub struct Metrics {
    reloads: Family<ReloadLabels, Counter>,
    /// 1 while the directory's current contents are in force, 0 after a
    /// refused change.
    last_reload_ok: Gauge,
    /// How long the latest load of the config directory took.
    load_seconds: Gauge<f64, AtomicU64>,
    /// From a cluster: objects left out of the config in force.
    left_out: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        metrics.last_reload_ok.set(1);
        // prometheus-client appends `_total` to counters.
        registry.register(
            "strait_config_reloads",
            "Config directory changes applied (success) or refused (failure)",
            metrics.reloads.clone(),
        );
        registry.register(
            "strait_config_load_seconds",
            "How long the latest load of the config directory took",
            metrics.load_seconds.clone(),
        );
        registry.register(
            "strait_config_objects_left_out",
            "Objects of the cluster left out of the config in force for failing the checks",
            metrics.left_out.clone(),
        );
        registry.register(
            "strait_config_last_reload_success",
            "Whether the latest config change was applied (1) or refused (0)",
            metrics.last_reload_ok.clone(),
        );
        metrics
    }

    pub fn loaded_in(&self, took: Duration) {
        self.load_seconds.set(took.as_secs_f64());
    }

    fn reloaded(&self, ok: bool) {
        let result = if ok {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    fn left_out(&self, objects: usize) {
        self.left_out
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }
}

/// What follows the config once a new one is in force: re-judging open
/// connections, enrolling and releasing pods. Returns how many workloads
/// it now serves, for the log.
pub trait Applied: Send + Sync + 'static {
    fn applied(&self) -> impl Future<Output = usize> + Send;
}

/// Nothing follows the config but the snapshots connections take.
impl Applied for () {
    async fn applied(&self) -> usize {
        0
    }
}

/// What a reload updates.
pub struct Follow<A> {
    pub state: NodeState,
    pub status: SharedStatus,
    pub metrics: Arc<Metrics>,
    pub then: A,
}

impl<A: Applied> Follow<A> {
    async fn applied(&self, source: &str) {
        let enrolled = self.then.applied().await;
        let generation = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation;
        info!(generation, enrolled, source, "config reloaded");
    }
}

/// Watches `dir` for as long as the process runs.
pub fn spawn<A: Applied>(dir: PathBuf, follow: Follow<A>) {
    tokio::spawn(async move {
        let mut watch = DirWatch::new(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            if !tokio::task::block_in_place(|| watch.poll()) {
                continue;
            }
            if reload(&dir, &follow.state, &follow.status, &follow.metrics).await {
                follow.applied(&dir.display().to_string()).await;
            }
        }
    });
}

/// Follows a cluster's snapshots for as long as the process runs.
pub fn spawn_cluster<A: Applied>(
    mut updates: tokio::sync::watch::Receiver<Option<strait_kube::Snapshot>>,
    follow: Follow<A>,
) {
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let Some(snapshot) = updates.borrow_and_update().clone() else {
                continue;
            };
            let left_out = snapshot.report.rejections();
            for line in &left_out {
                warn!(object = %line, "left out of the config");
            }
            follow.state.replace(snapshot.config);
            release_freed_memory();
            {
                let mut status = follow.status.lock().unwrap_or_else(|p| p.into_inner());
                status.generation += 1;
                status.applied_at = self::now();
                status.left_out = left_out;
                status.kept_previous = snapshot.kept.to_vec();
            }
            follow.metrics.reloaded(true);
            follow.metrics.left_out(snapshot.report.rejected());
            follow.applied("cluster").await;
        }
    });
}

/// Loads `dir` again (off the runtime's threads) and makes it the config
/// in force, or refuses it and says why in `status` and the metrics,
/// keeping the last good one. Returns whether it was applied.
async fn reload(dir: &Path, state: &NodeState, status: &SharedStatus, metrics: &Metrics) -> bool {
    let load_dir = dir.to_path_buf();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || reload_dir(&load_dir))
        .await
        .unwrap_or_else(|join| {
            Err(LoadError {
                file: dir.to_path_buf(),
                line: None,
                object: None,
                field: None,
                reason: format!("the loader failed: {join}"),
                more: 0,
            })
        });
    let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(config) => {
            metrics.loaded_in(started.elapsed());
            state.replace(config);
            release_freed_memory();
            status.generation += 1;
            status.applied_at = self::now();
            status.last_error = None;
            metrics.reloaded(true);
            true
        }
        Err(err) => {
            status.failures += 1;
            metrics.reloaded(false);
            warn!(
                file = %err.file.display(),
                line = err.line,
                object = err.object.as_deref().unwrap_or(""),
                field = err.field.as_deref().unwrap_or(""),
                reason = %err.reason,
                more = err.more,
                "config change refused; keeping the last good config"
            );
            status.last_error = Some(err);
            false
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principal: [x]
";

    #[tokio::test(flavor = "multi_thread")]
    async fn a_good_change_applies_and_a_bad_one_keeps_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let state = NodeState::new("n1", strait_config::load_dir(dir.path()).unwrap());
        let mut registry = Registry::default();
        let (status, metrics) = (initial_status(), Metrics::register(&mut registry));
        let encode = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };

        std::fs::write(dir.path().join("b.yaml"), GOOD.replace("shop", "more")).unwrap();
        assert!(reload(dir.path(), &state, &status, &metrics).await);
        assert_eq!(state.snapshot().generation, 2);
        assert!(state.snapshot().config.namespaces.contains_key("more"));

        // A typo: refused as a whole, named, and the config stays.
        std::fs::write(dir.path().join("c.yaml"), POLICY).unwrap();
        assert!(!reload(dir.path(), &state, &status, &metrics).await);
        let s = status.lock().unwrap().clone();
        assert_eq!((s.generation, s.failures), (2, 1));
        let err = s.last_error.unwrap();
        assert!(err.file.ends_with("c.yaml"), "{err}");
        assert_eq!(
            err.field.as_deref(),
            Some("spec.rules[0].from[0].source.principal")
        );
        assert_eq!(state.snapshot().generation, 2);
        assert!(encode().contains("strait_config_last_reload_success 0"));

        // Emptied: refused too, rather than releasing every pod.
        for f in ["a.yaml", "b.yaml", "c.yaml"] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        assert!(!reload(dir.path(), &state, &status, &metrics).await);
        assert!(state.snapshot().config.namespaces.contains_key("more"));
        assert_eq!(status.lock().unwrap().failures, 2);
    }
}
