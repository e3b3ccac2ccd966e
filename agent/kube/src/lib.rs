//! The Kubernetes source: one watch per kind on a cluster's API server,
//! the objects kept (trimmed to what the model reads), and the model
//! rebuilt from them with the checks `straitctl validate` runs. A bad
//! object is left out and reported; the rest of the cluster applies. The
//! proxies see a [`strait_config::Config`] either way.
mod judge;
mod kinds;
mod store;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Client,
    api::{Api, DynamicObject},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, utils::Backoff, watcher},
};
use strait_config::{Config, Report};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub use kinds::{KINDS, Kind};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("a client for {path}: {source}")]
    Client { path: String, source: kube::Error },
    #[error("the watches of {path} ended before the first listing")]
    Ended { path: String },
}

/// Connects to the cluster `kubeconfig` names, watches it, and waits for
/// the first complete listing: that snapshot, and the channel of the next.
pub async fn follow(
    kubeconfig: &Path,
    cluster: &str,
) -> Result<(Snapshot, watch::Receiver<Option<Snapshot>>), Error> {
    let mut updates = spawn(client(kubeconfig).await?, cluster.to_string());
    info!(kubeconfig = %kubeconfig.display(), "listing the cluster");
    match first(&mut updates).await {
        Some(snapshot) => Ok((snapshot, updates)),
        None => Err(Error::Ended {
            path: kubeconfig.display().to_string(),
        }),
    }
}

/// What a cluster's objects amount to now.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Objects left out, and warnings, as `straitctl validate` prints them.
    pub report: Arc<Report>,
    /// Objects whose latest version failed the checks and whose previous
    /// one is in force (`Kind namespace/name`).
    pub kept: Arc<Vec<String>>,
    /// Live: whether the API server answers now. While it does not, the
    /// last snapshot stays in force.
    pub connected: Arc<AtomicBool>,
}

impl Snapshot {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Retries while the API server is away: from 100 ms, doubling, at most
/// 1 s apart, so that a server back from a restart is seen within a second
/// (client-go's backoff reaches 30 s, and changes would wait that long).
struct Retry {
    next: Duration,
}

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(1);

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(RETRY_MOST);
        Some(now)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

/// Waits for the first complete snapshot (every kind listed once).
pub async fn first(rx: &mut watch::Receiver<Option<Snapshot>>) -> Option<Snapshot> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|s| s.clone())
}

/// A client for the cluster a kubeconfig file names.
pub async fn client(kubeconfig: &Path) -> Result<Client, Error> {
    let path = kubeconfig.display().to_string();
    let file = Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.clone(),
            source,
        })?;
    Client::try_from(config).map_err(|source| Error::Client { path, source })
}

/// How long a burst of changes may settle before the model is rebuilt.
const SETTLE: Duration = Duration::from_millis(50);
/// How often a kind the cluster does not serve yet (Istio's CRDs not
/// installed) is looked for again.
const RETRY: Duration = Duration::from_secs(2);

/// Watches every kind on `client`'s cluster and keeps the latest snapshot
/// in the returned channel (`None` until every kind has been listed).
pub fn spawn(client: Client, cluster: String) -> watch::Receiver<Option<Snapshot>> {
    let (tx, rx) = watch::channel(None);
    let store = Arc::new(Store::new(KINDS.len()));
    let changed = Arc::new(Notify::new());
    let connected = Arc::new(AtomicBool::new(true));
    for (index, kind) in KINDS.iter().enumerate() {
        tokio::spawn(watch_kind(
            client.clone(),
            kind,
            index,
            store.clone(),
            changed.clone(),
            connected.clone(),
        ));
    }
    tokio::spawn(async move {
        let judge = Arc::new(std::sync::Mutex::new(judge::Judge::new(
            format!("kube:{cluster}").into(),
        )));
        loop {
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
            if !store.all_listed() {
                continue;
            }
            let objects = store.objects();
            let judging = judge.clone();
            let built = tokio::task::spawn_blocking(move || {
                judging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .judge(objects)
            })
            .await;
            let Ok(verdicts) = built else {
                warn!("building the model from the cluster failed; keeping the last one");
                continue;
            };
            let report = verdicts.report;
            if report.rejected() > 0 {
                warn!(rejected = report.rejected(), kept = ?verdicts.kept, "objects left out (or kept at their last good version):\n{report}");
            }
            let snapshot = Snapshot {
                config: Arc::new(verdicts.config),
                report: Arc::new(report),
                kept: Arc::new(verdicts.kept),
                connected: connected.clone(),
            };
            if tx.send(Some(snapshot)).is_err() {
                return;
            }
        }
    });
    rx
}

/// One kind's watch, for as long as the agent runs: listed, then watched,
/// relisted after a 410 Gone or a lost connection (with backoff); a kind
/// the cluster does not serve yet is looked for again.
async fn watch_kind(
    client: Client,
    kind: &'static Kind,
    index: usize,
    store: Arc<Store>,
    changed: Arc<Notify>,
    connected: Arc<AtomicBool>,
) {
    let resource = loop {
        match kind.resource(&client).await {
            Some(resource) => break resource,
            None => {
                // Not served: nothing of this kind exists (yet).
                if store.mark_listed(index) {
                    changed.notify_one();
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    info!(kind = kind.kind, version = %resource.version, "watching");
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher(api, watcher::Config::default())
        .backoff(Retry { next: RETRY_FIRST })
        .boxed();
    while let Some(event) = events.next().await {
        if event.is_ok() && !connected.swap(true, Ordering::Relaxed) {
            info!(kind = kind.kind, "the API server answers again");
        }
        match event {
            Ok(watcher::Event::Init) => store.begin_relist(index),
            Ok(watcher::Event::InitApply(object)) => store.put(index, kind, &resource, object),
            Ok(watcher::Event::InitDone) => {
                store.end_relist(index);
                changed.notify_one();
            }
            Ok(watcher::Event::Apply(object)) => {
                store.put(index, kind, &resource, object);
                changed.notify_one();
            }
            Ok(watcher::Event::Delete(object)) => {
                store.delete(index, &object);
                changed.notify_one();
            }
            Err(err) => {
                if connected.swap(false, Ordering::Relaxed) {
                    warn!(kind = kind.kind, %err, "the API server is away; the last config stays in force");
                }
            }
        }
    }
}
