//! State that replicas share through the API server: the CA's keys in a
//! Secret (the first replica to start makes them; create is atomic, so
//! replicas starting together end with the same keys) and the public
//! roots in a ConfigMap the agents mount.
use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Secret},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Client,
    api::{Api, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tracing::{debug, info};

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{kind} {namespace}/{name}: the API server: {source}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name}: field data.{key}: missing")]
    Missing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{0}")]
    Local(String),
}

/// Where the files in the directory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This replica made them and created the Secret.
    Made,
    /// They were in the Secret.
    Taken,
}

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "strait-ca");

/// Fills `dir` with `files` from the Secret `namespace/name`; when there
/// is no such Secret, `make` writes them to `dir` and the Secret is
/// created from them (or, if another replica created it first, theirs are
/// taken instead).
pub async fn files_in_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &Path,
    files: &[&str],
    make: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Origin, SharedError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let failed = |source| SharedError::Api {
        kind: "Secret",
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    if let Some(secret) = api.get_opt(name).await.map_err(failed)? {
        write_files(&secret, namespace, name, dir, files)?;
        return Ok(Origin::Taken);
    }
    make(dir).map_err(SharedError::Local)?;
    let mut data = BTreeMap::new();
    for file in files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| SharedError::Local(format!("reading {}: {e}", path.display())))?;
        data.insert(file.to_string(), ByteString(bytes));
    }
    let secret = Secret {
        metadata: meta(namespace, name),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Origin::Made),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(failed)?;
            write_files(&secret, namespace, name, dir, files)?;
            Ok(Origin::Taken)
        }
        Err(err) => Err(failed(err)),
    }
}

/// Makes the ConfigMap `namespace/name` hold exactly `data` (created, or
/// replaced when it differs).
pub async fn publish_config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), SharedError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let failed = |source| SharedError::Api {
        kind: "ConfigMap",
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    let wanted = ConfigMap {
        metadata: meta(namespace, name),
        data: Some(data),
        ..Default::default()
    };
    match api.get_opt(name).await.map_err(failed)? {
        None => match api.create(&PostParams::default(), &wanted).await {
            Ok(_) => Ok(()),
            // Another replica published the same roots first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => Err(failed(err)),
        },
        Some(found) if found.data == wanted.data => Ok(()),
        Some(found) => {
            let mut replacement = wanted;
            replacement.metadata.resource_version = found.metadata.resource_version;
            api.replace(name, &PostParams::default(), &replacement)
                .await
                .map(|_| ())
                .map_err(failed)
        }
    }
}

/// Follows the DaemonSet `namespace/name`: whether it is gone or being
/// deleted, as last seen. An agent stopping then is being uninstalled,
/// not replaced. Uninstalling removes the agents' RBAC and ServiceAccount
/// soon after the DaemonSet, so the answer must come from watching before
/// the agent is stopped, not from asking then.
pub fn follow_daemonset(client: Client, namespace: &str, name: &str) -> Arc<AtomicBool> {
    let removed = Arc::new(AtomicBool::new(false));
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (flag, name) = (removed.clone(), name.to_string());
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut listed = false;
        while let Some(event) = events.next().await {
            let gone = match event {
                Ok(watcher::Event::Init) => {
                    listed = false;
                    continue;
                }
                Ok(watcher::Event::InitApply(set) | watcher::Event::Apply(set)) => {
                    listed = true;
                    set.metadata.deletion_timestamp.is_some()
                }
                Ok(watcher::Event::InitDone) => !listed,
                Ok(watcher::Event::Delete(_)) => true,
                Err(err) => {
                    debug!(daemonset = %name, %err, "watching the agents' DaemonSet");
                    continue;
                }
            };
            if gone != flag.swap(gone, Ordering::Relaxed) {
                info!(daemonset = %name, removed = gone, "the agents' DaemonSet");
            }
        }
    });
    removed
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY.0.to_string(),
            MANAGED_BY.1.to_string(),
        )])),
        ..Default::default()
    }
}

/// Writes each of `files` from the Secret, readable by the owner only.
fn write_files(
    secret: &Secret,
    namespace: &str,
    name: &str,
    dir: &Path,
    files: &[&str],
) -> Result<(), SharedError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| SharedError::Local(format!("creating {}: {e}", dir.display())))?;
    for file in files {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(*file))
            .ok_or_else(|| SharedError::Missing {
                namespace: namespace.into(),
                name: name.into(),
                key: file.to_string(),
            })?;
        let path = dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes.0))
            .map_err(|e| SharedError::Local(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}
