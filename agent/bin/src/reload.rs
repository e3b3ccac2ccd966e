//! Hot reload of the config directory. The agent polls the directory
//! ([`strait_config::watch::DirWatch`]); once a change has stayed put for
//! one poll, it checks the whole directory again. A config with any
//! rejected object, or none at all, is refused as a whole and the last good
//! one stays in force.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use strait_config::{
    LoadError,
    watch::{DirWatch, reload_dir},
};
use tracing::{info, warn};

use crate::{metrics::Metrics, pods::Pods, proxy::Proxy, state::NodeState};

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
}

pub type SharedStatus = Arc<Mutex<Status>>;

pub fn initial_status() -> SharedStatus {
    Arc::new(Mutex::new(Status {
        generation: 1,
        applied_at: now(),
        failures: 0,
        last_error: None,
    }))
}

/// Watches `dir` for as long as the agent runs; after each applied change,
/// enrolls and releases this node's pods to match.
pub fn spawn(
    dir: PathBuf,
    state: NodeState,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    pods: Arc<Pods>,
    proxy: Arc<Proxy>,
) {
    tokio::spawn(async move {
        let mut watch = DirWatch::new(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            if !tokio::task::block_in_place(|| watch.poll()) {
                continue;
            }
            let load_dir = dir.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || reload_dir(&load_dir))
                .await
                .unwrap_or_else(|join| {
                    Err(LoadError {
                        file: dir.clone(),
                        line: None,
                        object: None,
                        field: None,
                        reason: format!("the loader failed: {join}"),
                        more: 0,
                    })
                });
            let applied = match result {
                Ok(config) => {
                    metrics.config_loaded_in(started.elapsed());
                    state.replace(config);
                    let closed = proxy.enforce_policies();
                    if closed > 0 {
                        info!(closed, "open connections the new policies deny were closed");
                    }
                    crate::release_freed_memory();
                    true
                }
                Err(err) => {
                    let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
                    status.failures += 1;
                    metrics.config_reloaded(false);
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
            };
            if applied {
                let enrolled = pods.sync(&state.snapshot(), &proxy).await;
                let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
                status.generation += 1;
                status.applied_at = self::now();
                status.last_error = None;
                metrics.config_reloaded(true);
                info!(generation = status.generation, enrolled, dir = %dir.display(), "config reloaded");
            }
        }
    });
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
