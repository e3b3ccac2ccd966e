//! The Kubernetes source: one watch per kind on each cluster's API server,
//! the objects kept (trimmed to what the model reads), and the model
//! rebuilt from them with the checks `straitctl validate` runs. A bad
//! object is left out and reported; the rest applies. The proxies see a
//! [`strait_config::Config`] either way.
//!
//! The local cluster gives every kind; remote clusters (a directory of
//! kubeconfigs, or Istio's remote secrets) give their namespaces, nodes,
//! pods and services, so that a service is one service across clusters
//! and its endpoints carry their cluster. A remote cluster's nodes are
//! named `<node>.<cluster>` in the model, so that no remote pod is ever
//! taken for one of this node's.
mod judge;
mod kinds;
mod remotes;
mod shared;
mod store;
mod tokens;
mod watch;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Serialize;
use serde_json::Value as Json;
use strait_config::{Config, Report};
use tokio::sync::{Notify, watch as channel};
use tracing::{info, warn};

pub use kinds::{DISCOVERY, GATEWAY_READS, KINDS, Kind};
pub use remotes::{REMOTE_SECRET_LABEL, check_cluster_name};
pub use shared::{Origin, SharedError, files_in_secret, follow_daemonset, publish_config_map};
pub use tokens::{Asker, TokenError, TokenReviewer};
use watch::ClusterWatch;

/// The label that says which cluster a node (and so its pods) is in.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("the pod's own access to its cluster (in-cluster config): {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("a client for {path}: {source}")]
    Client { path: String, source: kube::Error },
    #[error("the watches of {path} ended before the first listing")]
    Ended { path: String },
}

/// How to reach the local cluster's API server.
#[derive(Clone, Debug)]
pub enum Access {
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
    /// As a pod does: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// ServiceAccount token and CA mounted at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` (the token is read
    /// again as the kubelet rotates it).
    InCluster,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubeconfig(path) => write!(f, "kubeconfig {}", path.display()),
            Self::InCluster => f.write_str("in-cluster config"),
        }
    }
}

/// Where the config comes from, as `strait-agent` and `strait-ca` take it
/// on their command lines.
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// A directory of Kubernetes/Istio YAML manifests (the local config
    /// source).
    #[arg(long, env = "STRAIT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Kubeconfig of this cluster's API server: namespaces, pods, services,
    /// nodes and the Istio kinds are watched there.
    #[arg(long, env = "STRAIT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The same, as a pod reaches its own cluster (the ServiceAccount
    /// token the kubelet mounts, `KUBERNETES_SERVICE_HOST`).
    #[arg(long)]
    pub in_cluster: bool,
}

/// Who may declare east-west gateways, on the command lines of every
/// agent, gateway and CA of a mesh alike.
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug)]
pub struct MeshArgs {
    /// Namespaces besides the mesh's root one (istio-system) whose Gateways
    /// of class istio-east-west are east-west gateways (comma-separated):
    /// where the operator deploys them. Anywhere else one would be a
    /// tenant's, handed other networks' traffic.
    #[arg(
        long,
        env = "STRAIT_EAST_WEST_GATEWAY_NAMESPACES",
        value_delimiter = ','
    )]
    pub east_west_gateway_namespaces: Vec<String>,
}

#[cfg(feature = "cli")]
impl MeshArgs {
    /// Puts the list in force for the model this process builds.
    pub fn apply(&self) -> Result<(), String> {
        strait_config::allow_east_west_gateways_in(self.east_west_gateway_namespaces.clone())
            .map_err(|why| format!("--east-west-gateway-namespaces: {why}"))
    }
}

#[cfg(feature = "cli")]
impl SourceArgs {
    /// The cluster to follow, unless the config is a directory.
    pub fn access(&self) -> Option<Access> {
        match (&self.kubeconfig, self.in_cluster) {
            (Some(kubeconfig), _) => Some(Access::Kubeconfig(kubeconfig.clone())),
            (None, true) => Some(Access::InCluster),
            (None, false) => None,
        }
    }
}

/// What to follow.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The local cluster.
    pub access: Access,
    /// The local cluster's name.
    pub cluster: String,
    /// A directory with one kubeconfig per remote cluster, named after it.
    pub remote_dir: Option<PathBuf>,
    /// The local cluster's namespace holding remote secrets.
    pub remote_secrets: Option<String>,
    /// How many of [`KINDS`] (the first ones) the local cluster is watched
    /// for: all of them, or an east-west gateway's [`GATEWAY_READS`].
    pub kinds: usize,
}

impl Sources {
    pub fn local(access: Access, cluster: &str) -> Self {
        Self {
            access,
            cluster: cluster.to_string(),
            remote_dir: None,
            remote_secrets: None,
            kinds: KINDS.len(),
        }
    }
}

/// What the clusters' objects amount to now.
#[derive(Clone)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Objects left out, and warnings, as `straitctl validate` prints them.
    pub report: Arc<Report>,
    /// Objects whose latest version failed the checks and whose previous
    /// one is in force (`Kind namespace/name`, prefixed `cluster: ` for a
    /// remote cluster's).
    pub kept: Arc<Vec<String>>,
    /// Live: the clusters followed and whether their API servers answer.
    pub clusters: Arc<Clusters>,
}

impl Snapshot {
    /// Whether the local cluster's API server answers now.
    pub fn connected(&self) -> bool {
        self.clusters.local.connected()
    }
}

/// The clusters followed, live.
pub struct Clusters {
    local: ClusterWatch,
    remotes: Mutex<Remotes>,
}

#[derive(Default)]
struct Remotes {
    watches: BTreeMap<String, Remote>,
    /// Entries of the directory or the secrets that were refused.
    problems: Vec<String>,
}

struct Remote {
    kubeconfig: String,
    watch: Result<ClusterWatch, String>,
}

/// One cluster, as readiness details and `/config_dump` show it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub local: bool,
    /// Its API server answers now.
    pub connected: bool,
    /// Every kind was listed once: its objects are in the config (and,
    /// while it is not connected, they are stale).
    pub listed: bool,
    /// Why it is not followed (its kubeconfig was refused).
    pub problem: Option<String>,
}

impl Clusters {
    pub fn local_name(&self) -> &str {
        &self.local.name
    }

    pub fn status(&self) -> Vec<ClusterStatus> {
        let of = |w: &ClusterWatch, local| ClusterStatus {
            name: w.name.clone(),
            local,
            connected: w.connected(),
            listed: w.store.all_listed(),
            problem: None,
        };
        let mut all = vec![of(&self.local, true)];
        let remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        for (name, remote) in &remotes.watches {
            all.push(match &remote.watch {
                Ok(w) => of(w, false),
                Err(why) => ClusterStatus {
                    name: name.clone(),
                    local: false,
                    connected: false,
                    listed: false,
                    problem: Some(why.clone()),
                },
            });
        }
        all
    }

    /// Entries of the remote clusters' directory or secrets refused.
    pub fn problems(&self) -> Vec<String> {
        let remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        remotes.problems.clone()
    }

    /// Whether what the model holds of `cluster` may be out of date: its
    /// API server does not answer.
    pub fn stale(&self, cluster: &str) -> bool {
        if cluster == self.local.name {
            return !self.local.connected();
        }
        let remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        remotes
            .watches
            .get(cluster)
            .and_then(|r| r.watch.as_ref().ok())
            .is_some_and(|w| !w.connected())
    }
}

/// Connects to the local cluster, watches it (and the remote clusters),
/// and waits for the local cluster's first complete listing: that
/// snapshot, and the channel of the next. Remote clusters join the config
/// as they are listed; none of them holds the local one up.
pub async fn follow(
    sources: &Sources,
) -> Result<(Snapshot, channel::Receiver<Option<Snapshot>>), Error> {
    let client = client(&sources.access).await?;
    let changed = Arc::new(Notify::new());
    let clusters = Arc::new(Clusters {
        local: ClusterWatch::start(
            client.clone(),
            &sources.cluster,
            true,
            &KINDS[..sources.kinds.min(KINDS.len())],
            changed.clone(),
        ),
        remotes: Mutex::default(),
    });
    follow_remotes(sources, client, clusters.clone(), changed.clone());
    let mut updates = spawn_builder(clusters, changed);
    let path = sources.access.to_string();
    info!(access = %path, cluster = %sources.cluster, "listing the cluster");
    match updates
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|s| s.clone())
    {
        Some(snapshot) => Ok((snapshot, updates)),
        None => Err(Error::Ended { path }),
    }
}

/// A client for the local cluster.
pub async fn client(access: &Access) -> Result<Client, Error> {
    let kubeconfig = match access {
        Access::Kubeconfig(path) => path,
        Access::InCluster => {
            let config = kube::Config::incluster()?;
            return Client::try_from(config).map_err(|source| Error::Client {
                path: access.to_string(),
                source,
            });
        }
    };
    let path = kubeconfig.display().to_string();
    let file = Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    client_of(file, &path).await
}

async fn client_of(file: Kubeconfig, path: &str) -> Result<Client, Error> {
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_string(),
            source,
        })?;
    Client::try_from(config).map_err(|source| Error::Client {
        path: path.to_string(),
        source,
    })
}

/// Keeps the remote clusters' watches matching the directory and the
/// secrets.
fn follow_remotes(sources: &Sources, local: Client, clusters: Arc<Clusters>, changed: Arc<Notify>) {
    let mut from_dir = sources.remote_dir.clone().map(remotes::follow_dir);
    let mut from_secrets = sources
        .remote_secrets
        .as_deref()
        .map(|ns| remotes::follow_secrets(local, ns));
    if from_dir.is_none() && from_secrets.is_none() {
        return;
    }
    let local_name = sources.cluster.clone();
    tokio::spawn(async move {
        loop {
            let mut wanted = remotes::Wanted::default();
            for rx in [&mut from_dir, &mut from_secrets].into_iter().flatten() {
                let w = rx.borrow_and_update().clone();
                for (name, text) in w.kubeconfigs {
                    if name == local_name {
                        wanted
                            .problems
                            .push(format!("cluster {name} is the local cluster"));
                    } else if wanted.kubeconfigs.insert(name.clone(), text).is_some() {
                        wanted
                            .problems
                            .push(format!("cluster {name} is named twice"));
                    }
                }
                wanted.problems.extend(w.problems);
            }
            reconcile(&clusters, wanted, &changed).await;
            let dir = async {
                match &mut from_dir {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            };
            let secrets = async {
                match &mut from_secrets {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            };
            let ended = tokio::select! {
                r = dir => r.is_err(),
                r = secrets => r.is_err(),
            };
            if ended {
                return;
            }
        }
    });
}

/// Starts, restarts and stops remote watches to match `wanted`.
async fn reconcile(clusters: &Clusters, wanted: remotes::Wanted, changed: &Arc<Notify>) {
    let current: BTreeMap<String, String> = {
        let remotes = clusters.remotes.lock().unwrap_or_else(|p| p.into_inner());
        remotes
            .watches
            .iter()
            .map(|(k, r)| (k.clone(), r.kubeconfig.clone()))
            .collect()
    };
    let mut started = Vec::new();
    for (name, text) in &wanted.kubeconfigs {
        if current.get(name) == Some(text) {
            continue;
        }
        let origin = format!("remote cluster {name}");
        let watch = match Kubeconfig::from_yaml(text) {
            Ok(file) => client_of(file, &origin)
                .await
                .map(|client| {
                    ClusterWatch::start(client, name, false, &KINDS[..DISCOVERY], changed.clone())
                })
                .map_err(|e| e.to_string()),
            Err(source) => Err(Error::Kubeconfig {
                path: origin,
                source,
            }
            .to_string()),
        };
        match &watch {
            Ok(_) => info!(cluster = %name, "following a remote cluster"),
            Err(why) => warn!(cluster = %name, %why, "a remote cluster's kubeconfig is refused"),
        }
        started.push((
            name.clone(),
            Remote {
                kubeconfig: text.clone(),
                watch,
            },
        ));
    }
    for problem in &wanted.problems {
        warn!(%problem, "a remote cluster's kubeconfig is refused");
    }
    let mut remotes = clusters.remotes.lock().unwrap_or_else(|p| p.into_inner());
    let before = remotes.watches.len();
    remotes
        .watches
        .retain(|name, _| wanted.kubeconfigs.contains_key(name));
    if remotes.watches.len() != before {
        info!(
            clusters = before - remotes.watches.len(),
            "remote clusters dropped"
        );
    }
    remotes.watches.extend(started);
    remotes.problems = wanted.problems;
    drop(remotes);
    changed.notify_one();
}

/// How long a burst of changes may settle before the model is rebuilt.
const SETTLE: Duration = Duration::from_millis(50);

/// Rebuilds the model whenever a cluster's objects change, once the local
/// cluster has been listed, and sends it (`None` until then).
fn spawn_builder(
    clusters: Arc<Clusters>,
    changed: Arc<Notify>,
) -> channel::Receiver<Option<Snapshot>> {
    let (tx, rx) = channel::channel(None);
    tokio::spawn(async move {
        let judges = Arc::new(Mutex::new(HashMap::<String, judge::Judge>::new()));
        let mut last_build = Duration::ZERO;
        loop {
            changed.notified().await;
            // A large cluster takes a while to rebuild: under a stream of
            // changes, rebuild at most half the time.
            tokio::time::sleep(SETTLE.max(last_build)).await;
            if !clusters.local.store.all_listed() {
                continue;
            }
            let mut sets = vec![(
                clusters.local.name.clone(),
                true,
                clusters.local.store.objects(),
            )];
            {
                let remotes = clusters.remotes.lock().unwrap_or_else(|p| p.into_inner());
                for (name, remote) in &remotes.watches {
                    if let Ok(w) = &remote.watch
                        && w.store.all_listed()
                    {
                        sets.push((name.clone(), false, w.store.objects()));
                    }
                }
            }
            let judging = judges.clone();
            let began = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || {
                build(&mut judging.lock().unwrap_or_else(|p| p.into_inner()), sets)
            })
            .await;
            last_build = began.elapsed();
            let Ok((config, report, kept)) = built else {
                warn!("building the model from the clusters failed; keeping the last one");
                continue;
            };
            if report.rejected() > 0 {
                warn!(
                    rejected = report.rejected(),
                    ?kept,
                    "objects left out (or kept at their last good version):\n{report}"
                );
            }
            let snapshot = Snapshot {
                config: Arc::new(config),
                report: Arc::new(report),
                kept: Arc::new(kept),
                clusters: clusters.clone(),
            };
            if tx.send(Some(snapshot)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Judges each cluster's objects on their own (so that one cluster's bad
/// object is reported as its), then builds one model from what each has
/// in force. `sets` are (cluster, local, objects), the local one first; a
/// remote cluster's copy of a namespace the local one has is not taken
/// (the local labels decide who is in the mesh).
fn build(
    judges: &mut HashMap<String, judge::Judge>,
    sets: Vec<(String, bool, Vec<Arc<Json>>)>,
) -> (Config, Report, Vec<String>) {
    judges.retain(|name, _| sets.iter().any(|(n, _, _)| n == name));
    let mut report = Report::default();
    let mut kept = Vec::new();
    let mut union = Vec::new();
    let mut local_namespaces = BTreeSet::new();
    let mut only = None;
    let count = sets.len();
    for (name, local, mut objects) in sets {
        if local {
            local_namespaces.extend(
                objects
                    .iter()
                    .map(|o| namespace_name(o))
                    .filter(|n| !n.is_empty()),
            );
        } else {
            objects.retain(|o| !local_namespaces.contains(&namespace_name(o)));
        }
        let judge = judges
            .entry(name.clone())
            .or_insert_with(|| judge::Judge::new(format!("kube:{name}").into()));
        let verdicts = judge.judge(objects);
        // Only what was left out is reported on; the accepted are the
        // config itself (and their warnings are in it).
        report.objects.extend(
            verdicts
                .report
                .objects
                .into_iter()
                .filter(|o| o.verdict != strait_config::Verdict::Accepted),
        );
        report.files.extend(verdicts.report.files);
        kept.extend(verdicts.kept.into_iter().map(|k| match local {
            true => k,
            false => format!("{name}: {k}"),
        }));
        if count == 1 {
            only = Some(verdicts.config);
        } else {
            union.extend(verdicts.in_force);
        }
    }
    let config = match only {
        Some(config) => config,
        None => strait_config::check_objects(Path::new("kube:all"), &union).1,
    };
    (config, report, kept)
}

/// The name of a Namespace object, empty for other kinds.
fn namespace_name(object: &Json) -> String {
    match object["kind"].as_str() {
        Some("Namespace") => object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> Json {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    }

    fn pod(name: &str, node: &str, ip: &str) -> Json {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    fn namespace(labels: Json) -> Json {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": labels}})
    }

    #[test]
    fn a_remote_clusters_pods_are_its_own_and_never_this_nodes() {
        let mesh = json!({"istio.io/dataplane-mode": "ambient"});
        let sets = vec![
            (
                "c1".to_string(),
                true,
                vec![
                    namespace(mesh.clone()),
                    node("n1"),
                    pod("a", "n1", "10.1.0.2"),
                ],
            ),
            (
                "c2".to_string(),
                false,
                // The same node name as the local one; the remote copy of
                // the namespace does not override the local one.
                vec![namespace(json!({})), node("n1"), pod("b", "n1", "10.2.0.2")],
            ),
        ];
        let sets = sets
            .into_iter()
            .map(|(name, local, objects)| {
                let placed = objects
                    .into_iter()
                    .map(|o| Arc::new(store::place(o, &name, local)))
                    .collect();
                (name, local, placed)
            })
            .collect();
        let (config, report, kept) = build(&mut HashMap::new(), sets);
        assert_eq!(report.rejected(), 0, "{report}");
        assert!(kept.is_empty());
        let on_n1: Vec<&str> = config.workloads_on("n1").map(|w| w.name.as_str()).collect();
        assert_eq!(on_n1, ["a"]);
        let b = config.workloads.iter().find(|w| w.name == "b").unwrap();
        assert_eq!(b.node.as_deref(), Some("n1.c2"));
        assert_eq!(b.labels.get(CLUSTER_LABEL).map(String::as_str), Some("c2"));
        assert!(config.enrolled(b), "the local namespace's label applies");
        assert_eq!(
            config.nodes["n1"]
                .labels
                .get(CLUSTER_LABEL)
                .map(String::as_str),
            Some("c1")
        );
        assert_eq!(
            config.nodes["n1.c2"]
                .labels
                .get(CLUSTER_LABEL)
                .map(String::as_str),
            Some("c2")
        );
    }

    #[test]
    fn a_remote_cluster_gives_only_its_workloads_services_and_gateways() {
        let kinds: Vec<&str> = KINDS[..DISCOVERY].iter().map(|k| k.kind).collect();
        assert_eq!(kinds, ["Namespace", "Node", "Pod", "Service", "Gateway"]);
    }

    /// What the chart's ClusterRole for east-west gateways grants.
    #[test]
    fn a_gateway_reads_no_routes_or_policies() {
        let kinds: Vec<(&str, &str)> = KINDS[..GATEWAY_READS]
            .iter()
            .map(|k| (k.group, k.plural))
            .collect();
        assert_eq!(
            kinds,
            [
                ("", "namespaces"),
                ("", "nodes"),
                ("", "pods"),
                ("", "services"),
                ("gateway.networking.k8s.io", "gateways"),
                ("networking.istio.io", "serviceentries"),
                ("networking.istio.io", "workloadentries"),
                ("networking.istio.io", "workloadgroups"),
                ("networking.istio.io", "destinationrules"),
            ]
        );
    }
}
