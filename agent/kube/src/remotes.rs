//! Where the remote clusters' kubeconfigs come from: a directory with one
//! file per cluster (the file's name is the cluster's), and/or Secrets
//! labelled `istio/multiCluster=true` as Istio's remote secrets are (each
//! data key a cluster name, its value that cluster's kubeconfig). Both are
//! followed: a cluster added, changed or removed is watched, rewatched or
//! dropped without a restart.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client,
    api::Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tracing::warn;

/// Istio's label for remote secrets.
pub const REMOTE_SECRET_LABEL: &str = "istio/multiCluster=true";
/// A kubeconfig is a few kilobytes; anything much larger is not one.
pub const MAX_KUBECONFIG: u64 = 256 << 10;
/// How often the directory is read again.
const POLL: Duration = Duration::from_secs(1);

/// Cluster name → kubeconfig text, and why an entry was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub kubeconfigs: BTreeMap<String, String>,
    pub problems: Vec<String>,
}

/// A remote cluster's name becomes part of node names
/// (`<node>.<cluster>`), so it must be a DNS label.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    strait_config::names::check_label(name)
}

/// Reads `dir` now: regular files (or links to them, as Secret volumes
/// mount keys) whose names do not start with a dot.
pub fn read_dir(dir: &Path) -> Wanted {
    let mut wanted = Wanted::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            wanted
                .problems
                .push(format!("{}: cannot be read: {err}", dir.display()));
            return wanted;
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let name = name.to_string();
        match read_one(&path, &name) {
            Ok(text) => {
                wanted.kubeconfigs.insert(name, text);
            }
            Err(why) => wanted.problems.push(format!("{}: {why}", path.display())),
        }
    }
    wanted
}

fn read_one(path: &Path, name: &str) -> Result<String, String> {
    check_cluster_name(name)
        .map_err(|why| format!("the file name is the cluster's name, and it {why}"))?;
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_KUBECONFIG {
        return Err(format!(
            "{size} bytes; a kubeconfig is at most {MAX_KUBECONFIG}"
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Follows `dir`, sending what it holds whenever that changes.
pub fn follow_dir(dir: PathBuf) -> watch::Receiver<Wanted> {
    let (tx, rx) = watch::channel(read_dir(&dir));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let read = dir.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || read_dir(&read)).await else {
                continue;
            };
            if tx.send_if_modified(|old| {
                let changed = *old != now;
                if changed {
                    *old = now;
                }
                changed
            }) {
                for problem in &tx.borrow().problems {
                    warn!(%problem, "a remote cluster's kubeconfig is refused");
                }
            } else if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// The clusters one Secret names.
fn from_secret(secret: &Secret) -> Wanted {
    let mut wanted = Wanted::default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    for (key, value) in secret.data.iter().flatten() {
        let why = if let Err(why) = check_cluster_name(key) {
            format!("the key is the cluster's name, and it {why}")
        } else if value.0.len() as u64 > MAX_KUBECONFIG {
            format!(
                "{} bytes; a kubeconfig is at most {MAX_KUBECONFIG}",
                value.0.len()
            )
        } else {
            match String::from_utf8(value.0.clone()) {
                Ok(text) => {
                    wanted.kubeconfigs.insert(key.clone(), text);
                    continue;
                }
                Err(_) => "not UTF-8 text".to_string(),
            }
        };
        wanted
            .problems
            .push(format!("Secret {name}: data.{key}: {why}"));
    }
    wanted
}

/// Follows the remote secrets in `namespace` of the local cluster.
pub fn follow_secrets(client: Client, namespace: &str) -> watch::Receiver<Wanted> {
    let (tx, rx) = watch::channel(Wanted::default());
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(REMOTE_SECRET_LABEL);
    tokio::spawn(async move {
        let mut secrets: BTreeMap<String, Wanted> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Wanted>> = None;
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let key = |s: &Secret| s.metadata.name.clone().unwrap_or_default();
            match event {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(s)) => {
                    if let Some(l) = &mut listing {
                        l.insert(key(&s), from_secret(&s));
                    }
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        secrets = l;
                    }
                }
                Ok(watcher::Event::Apply(s)) => {
                    secrets.insert(key(&s), from_secret(&s));
                }
                Ok(watcher::Event::Delete(s)) => {
                    secrets.remove(&key(&s));
                }
                Err(err) => {
                    warn!(%err, "watching the remote secrets");
                    continue;
                }
            }
            let mut all = Wanted::default();
            for w in secrets.values() {
                for (cluster, text) in &w.kubeconfigs {
                    if all
                        .kubeconfigs
                        .insert(cluster.clone(), text.clone())
                        .is_some()
                    {
                        all.problems.push(format!(
                            "cluster {cluster} is named by more than one remote secret"
                        ));
                    }
                }
                all.problems.extend(w.problems.iter().cloned());
            }
            if tx.send(all).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_clusters_by_file_and_refuses_bad_entries() {
        let dir = std::env::temp_dir().join(format!("strait-remotes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::write(dir.join("east"), "kind: Config").unwrap();
        std::fs::write(dir.join("Bad_Name"), "kind: Config").unwrap();
        std::fs::write(dir.join(".hidden"), "x").unwrap();
        std::fs::write(dir.join("huge"), vec![b'a'; MAX_KUBECONFIG as usize + 1]).unwrap();
        let wanted = read_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            wanted.kubeconfigs.keys().collect::<Vec<_>>(),
            ["east"],
            "{wanted:?}"
        );
        assert_eq!(wanted.problems.len(), 2, "{:?}", wanted.problems);
        assert!(
            wanted.problems[0].contains("Bad_Name"),
            "{:?}",
            wanted.problems
        );
        assert!(
            wanted.problems[1].contains("at most"),
            "{:?}",
            wanted.problems
        );
    }
}
