//! One cluster's watches: a watch per kind, listed then followed, relisted
//! after a 410 Gone or a lost connection (with backoff), the objects kept
//! in a [`Store`]. The tasks end when the [`ClusterWatch`] is dropped.
use std::{
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
    runtime::{WatchStreamExt, utils::Backoff, watcher},
};
use tokio::{sync::Notify, task::AbortHandle};
use tracing::{info, warn};

use crate::{kinds::Kind, store::Store};

/// How often a kind the cluster does not serve yet (Istio's CRDs not
/// installed) is looked for again.
const RETRY: Duration = Duration::from_secs(2);

/// Retries while the API server is away: from 100 ms, doubling, at most
/// 1 s apart, so that a server back from a restart is seen within a second
/// (client-go's backoff reaches 30 s, and changes would wait that long).
/// Each wait is drawn between half and all of that, so the watches of
/// every agent do not come back to a restarted server in one instant.
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
        Some(now.mul_f64(0.5 + fastrand::f64() / 2.0))
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

pub struct ClusterWatch {
    pub name: String,
    pub store: Arc<Store>,
    /// Whether the API server answers now; while it does not, what was
    /// last listed stays in force.
    pub connected: Arc<AtomicBool>,
    tasks: Vec<AbortHandle>,
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ClusterWatch {
    /// Starts watching `kinds` on `client`'s cluster (the `local` one or a
    /// remote one); `changed` is notified whenever the store changes.
    pub fn start(
        client: Client,
        name: &str,
        local: bool,
        kinds: &'static [Kind],
        changed: Arc<Notify>,
    ) -> Self {
        let store = Arc::new(Store::new(kinds.len(), name, local));
        let connected = Arc::new(AtomicBool::new(true));
        let tasks = kinds
            .iter()
            .enumerate()
            .map(|(index, kind)| {
                let on = Watching {
                    cluster: name.to_string(),
                    kind,
                    index,
                    store: store.clone(),
                    changed: changed.clone(),
                    connected: connected.clone(),
                };
                tokio::spawn(on.run(client.clone())).abort_handle()
            })
            .collect();
        Self {
            name: name.to_string(),
            store,
            connected,
            tasks,
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

struct Watching {
    cluster: String,
    kind: &'static Kind,
    index: usize,
    store: Arc<Store>,
    changed: Arc<Notify>,
    connected: Arc<AtomicBool>,
}

impl Watching {
    /// One kind's watch, for as long as the cluster is followed; a kind
    /// the cluster does not serve yet is looked for again.
    async fn run(self, client: Client) {
        let (cluster, kind) = (self.cluster.as_str(), self.kind.kind);
        let resource = loop {
            match self.kind.resource(&client).await {
                Some(resource) => break resource,
                None => {
                    // Not served: nothing of this kind exists (yet).
                    if self.store.mark_listed(self.index) {
                        self.changed.notify_one();
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        info!(cluster, kind, version = %resource.version, "watching");
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let mut events = watcher(api, watcher::Config::default())
            .backoff(Retry { next: RETRY_FIRST })
            .boxed();
        let (store, index) = (&self.store, self.index);
        while let Some(event) = events.next().await {
            if event.is_ok() && !self.connected.swap(true, Ordering::Relaxed) {
                info!(cluster, kind, "the API server answers again");
            }
            match event {
                Ok(watcher::Event::Init) => store.begin_relist(index),
                Ok(watcher::Event::InitApply(object)) => {
                    store.put(index, self.kind, &resource, object)
                }
                Ok(watcher::Event::InitDone) => {
                    store.end_relist(index);
                    self.changed.notify_one();
                }
                Ok(watcher::Event::Apply(object)) => {
                    store.put(index, self.kind, &resource, object);
                    self.changed.notify_one();
                }
                Ok(watcher::Event::Delete(object)) => {
                    store.delete(index, &object);
                    self.changed.notify_one();
                }
                Err(err) => {
                    if self.connected.swap(false, Ordering::Relaxed) {
                        warn!(cluster, kind, %err, "the API server is away; what it last listed stays in force");
                    }
                }
            }
        }
    }
}
