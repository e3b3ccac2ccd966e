//! Opening where the config comes from: a directory of manifests, or the
//! clusters' API servers, whose later snapshots [`crate::reload`] follows.
use std::{path::Path, sync::Arc, time::Instant};

use strait_config::{Config, LoadError};
use strait_kube::{Clusters, Snapshot, Sources};
use tokio::sync::watch::Receiver;
use tracing::info;

/// The first config, and for clusters what follows it.
pub struct Opened {
    pub config: Arc<Config>,
    /// From clusters: each later snapshot.
    pub updates: Option<Receiver<Option<Snapshot>>>,
    /// From clusters: whether their API servers answer.
    pub clusters: Option<Arc<Clusters>>,
    /// How long the first load took.
    pub took: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("loading the config directory: {0}")]
    Dir(#[from] LoadError),
    #[error("reading the cluster: {0}")]
    Cluster(#[from] strait_kube::Error),
    #[error("--config-dir, --kubeconfig or --in-cluster is required")]
    None,
}

/// Loads `dir` if given, else follows `sources`.
pub async fn open(dir: Option<&Path>, sources: Option<Sources>) -> Result<Opened, SourceError> {
    let started = Instant::now();
    let opened = match (dir, sources) {
        (Some(dir), _) => {
            let dir = dir.to_path_buf();
            // Parsing a large directory is blocking work.
            let config = tokio::task::spawn_blocking(move || strait_config::load_dir(&dir))
                .await
                .map_err(|join| LoadError {
                    file: Default::default(),
                    line: None,
                    object: None,
                    field: None,
                    reason: format!("the loader failed: {join}"),
                    more: 0,
                })??;
            Opened {
                config: Arc::new(config),
                updates: None,
                clusters: None,
                took: started.elapsed(),
            }
        }
        (None, Some(sources)) => {
            let (first, updates) = strait_kube::follow(&sources).await?;
            Opened {
                config: first.config,
                updates: Some(updates),
                clusters: Some(first.clusters),
                took: started.elapsed(),
            }
        }
        (None, None) => return Err(SourceError::None),
    };
    info!(
        services = opened.config.services.len(),
        workloads = opened.config.workloads.len(),
        seconds = opened.took.as_secs_f64(),
        "config loaded"
    );
    crate::release_freed_memory();
    Ok(opened)
}
