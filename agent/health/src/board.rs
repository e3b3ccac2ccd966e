//! The readiness board: each agent publishes the readiness of the workloads
//! it probes as one file, `<dir>/<node>.json`, and reads everyone's. It is
//! the local stand-in for what Istio keeps in WorkloadEntry status through
//! the API server. Files are replaced whole (write, then rename), so a
//! reader never sees half of one.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readiness report: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: a report for node {node} in another node's file")]
    WrongNode { path: PathBuf, node: String },
}

/// One workload's readiness as its node's agent last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
    /// The last probe's outcome (`passed`, or why it failed).
    pub reason: String,
    /// When readiness last changed, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// What one node's agent publishes: its probed workloads by
/// `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub workloads: BTreeMap<String, Status>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `report` as `dir/<node>.json`, replacing the last one whole.
pub fn publish(dir: &Path, report: &NodeReport) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{}.json", report.node));
    let tmp = dir.join(format!(".{}.json.tmp", report.node));
    let text = serde_json::to_vec_pretty(report).map_err(|source| Error::Format {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Every node's published readiness, as last read.
pub struct Board {
    dir: PathBuf,
    /// Per file: its modification time and size when read, and what it held.
    files: Mutex<BTreeMap<PathBuf, (SystemTime, u64, NodeReport)>>,
    /// By (publishing node, `namespace/name`).
    view: ArcSwap<HashMap<(String, String), Status>>,
}

impl Board {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: Mutex::new(BTreeMap::new()),
            view: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A workload's status (`namespace/name`) as `node` published it. Only
    /// the workload's own node counts: another node's word about it is
    /// never asked for.
    pub fn status(&self, node: &str, key: &str) -> Option<Status> {
        self.view
            .load()
            .get(&(node.to_owned(), key.to_owned()))
            .cloned()
    }

    /// Every published status, by (node, `namespace/name`).
    pub fn all(&self) -> Arc<HashMap<(String, String), Status>> {
        self.view.load_full()
    }

    /// Reads the files that changed since the last call. A file that cannot
    /// be read keeps what it said before; its error is returned, with the
    /// others. Returns whether anything changed.
    pub fn refresh(&self) -> (bool, Vec<Error>) {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // Nobody has published yet.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (false, errors),
            Err(source) => {
                errors.push(Error::Io {
                    path: self.dir.clone(),
                    source,
                });
                return (false, errors);
            }
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = Vec::new();
        let mut changed = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            seen.push(path.clone());
            let Ok(meta) = entry.metadata() else { continue };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if files.get(&path).is_some_and(|(m, l, _)| (*m, *l) == stamp) {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| {
                    serde_json::from_slice::<NodeReport>(&bytes).map_err(|source| Error::Format {
                        path: path.clone(),
                        source,
                    })
                });
            // The file's name is the publishing node's; a report that claims
            // another node is refused.
            let read = read.and_then(|report| {
                if Some(report.node.as_str()) == name.strip_suffix(".json") {
                    Ok(report)
                } else {
                    Err(Error::WrongNode {
                        path: path.clone(),
                        node: report.node,
                    })
                }
            });
            match read {
                Ok(report) => {
                    changed |= files.get(&path).is_none_or(|(_, _, r)| *r != report);
                    files.insert(path, (stamp.0, stamp.1, report));
                }
                Err(err) => errors.push(err),
            }
        }
        let before = files.len();
        files.retain(|path, _| seen.contains(path));
        changed |= files.len() != before;
        if changed {
            let view = files
                .values()
                .flat_map(|(_, _, r)| {
                    r.workloads
                        .iter()
                        .map(|(k, s)| ((r.node.clone(), k.clone()), s.clone()))
                })
                .collect();
            self.view.store(Arc::new(view));
        }
        (changed, errors)
    }
}

/// Reads the board every `every`, logging each file's error once.
pub fn watch(board: Arc<Board>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_errors = Vec::new();
        loop {
            let (changed, errors) = board.refresh();
            let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
            for text in &texts {
                if !last_errors.contains(text) {
                    tracing::warn!(error = %text, "readiness board");
                }
            }
            last_errors = texts;
            if changed {
                tracing::info!(dir = %board.dir().display(), "readiness board changed");
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, workloads: &[(&str, bool)]) -> NodeReport {
        NodeReport {
            node: node.into(),
            workloads: workloads
                .iter()
                .map(|(k, ready)| {
                    (
                        k.to_string(),
                        Status {
                            ready: *ready,
                            reason: if *ready { "passed" } else { "HTTP status 503" }.into(),
                            since_ms: 1,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn agents_see_each_others_reports() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new(dir.path().join("status"));
        assert!(!board.refresh().0, "nothing published yet");
        publish(board.dir(), &report("n1", &[("shop/a", true)])).unwrap();
        publish(board.dir(), &report("n2", &[("shop/b", false)])).unwrap();
        let (changed, errors) = board.refresh();
        assert!(changed && errors.is_empty(), "{errors:?}");
        assert!(board.status("n1", "shop/a").unwrap().ready);
        assert!(!board.status("n2", "shop/b").unwrap().ready);
        assert!(board.status("n1", "shop/c").is_none());

        publish(board.dir(), &report("n2", &[("shop/b", true)])).unwrap();
        assert!(board.refresh().0);
        assert!(board.status("n2", "shop/b").unwrap().ready);

        std::fs::remove_file(board.dir().join("n1.json")).unwrap();
        assert!(board.refresh().0);
        assert!(
            board.status("n1", "shop/a").is_none(),
            "a removed report is gone"
        );
    }

    /// A node that publishes about another node's workload, or writes
    /// another node's file, changes nothing anyone reads.
    #[test]
    fn a_node_speaks_only_for_its_own_workloads() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new(dir.path());
        publish(dir.path(), &report("n2", &[("shop/b", true)])).unwrap();
        publish(dir.path(), &report("n1", &[("shop/b", false)])).unwrap();
        board.refresh();
        assert!(
            board.status("n2", "shop/b").unwrap().ready,
            "n1's word is not n2's"
        );
        // n1 writes n2's file, claiming to be n1 in it.
        let forged = serde_json::to_vec(&report("n1", &[("shop/b", false)])).unwrap();
        std::fs::write(dir.path().join("n2.json"), forged).unwrap();
        let (_, errors) = board.refresh();
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("another node's file")),
            "{errors:?}"
        );
        assert!(board.status("n2", "shop/b").unwrap().ready, "kept");
    }

    #[test]
    fn a_garbled_report_is_named_and_the_last_good_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new(dir.path());
        publish(dir.path(), &report("n1", &[("shop/a", false)])).unwrap();
        board.refresh();
        std::fs::write(dir.path().join("n1.json"), "{ not json").unwrap();
        let (_, errors) = board.refresh();
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(
            text.contains("n1.json") && text.contains("not a readiness report"),
            "{text}"
        );
        assert!(!board.status("n1", "shop/a").unwrap().ready, "kept");
    }
}
