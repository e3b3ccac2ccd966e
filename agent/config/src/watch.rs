//! Following a config directory as it changes, for the agent and the CA
//! service alike. The directory is polled: once a change has stayed put for
//! one poll (an editor's save is not caught half written) it is due to be
//! loaded again with [`reload_dir`], which refuses what the first load
//! would accept but a running mesh must not: a directory that became empty
//! or unreadable would release every workload.
use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{Config, LoadError, local::check_path};

/// (path, size, modified, inode) of each manifest file: cheap to take, and
/// different whenever a file is added, removed or rewritten.
type Fingerprint = Vec<(PathBuf, u64, SystemTime, u64)>;

pub struct DirWatch {
    dir: PathBuf,
    /// What the config in force was loaded from.
    applied: Fingerprint,
    /// What the previous poll saw.
    seen: Fingerprint,
}

impl DirWatch {
    /// Starts from the directory as it is now (just loaded).
    pub fn new(dir: &Path) -> Self {
        let now = fingerprint(dir);
        Self {
            dir: dir.to_path_buf(),
            applied: now.clone(),
            seen: now,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Called once per poll: whether the directory changed since the config
    /// in force and has held still since the previous poll. A `true` counts
    /// the change as handled, whether its reload is then applied or refused.
    pub fn poll(&mut self) -> bool {
        let now = fingerprint(&self.dir);
        if now != self.seen {
            self.seen = now;
            return false;
        }
        if now == self.applied {
            return false;
        }
        self.applied = now;
        true
    }
}

/// Loads `dir` again for a running agent or CA: as [`crate::load_dir`],
/// and a directory with no object in it (emptied, unmounted, unreadable) is
/// refused, so the last good config stays in force.
pub fn reload_dir(dir: &Path) -> Result<Config, LoadError> {
    let (report, config) = check_path(dir);
    if report.objects.is_empty() && report.files.is_empty() {
        return Err(LoadError {
            file: dir.into(),
            line: None,
            object: None,
            field: None,
            reason: "no object in any *.yaml file: refusing a change that would remove every workload, service and policy (an empty directory is accepted only at start)".into(),
            more: 0,
        });
    }
    crate::local::usable(dir, &report, config)
}

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let manifest = crate::local::is_manifest(&path);
            let meta = std::fs::metadata(&path).ok()?;
            (manifest && meta.is_file()).then(|| {
                let modified = meta.modified().unwrap_or(UNIX_EPOCH);
                (path, meta.len(), modified, meta.ino())
            })
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

    #[test]
    fn a_change_is_due_once_it_held_still() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), NAMESPACE).unwrap();
        let mut watch = DirWatch::new(dir.path());
        assert!(!watch.poll(), "nothing changed");
        std::fs::write(dir.path().join("b.yaml"), NAMESPACE.replace("shop", "x")).unwrap();
        assert!(!watch.poll(), "just changed: wait one poll");
        assert!(watch.poll(), "held still: due");
        assert!(!watch.poll(), "handled once");
    }

    #[test]
    fn an_emptied_or_missing_directory_is_refused_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        // At start an empty directory is a valid (empty) mesh...
        assert!(crate::load_dir(dir.path()).is_ok());
        // ...but a running mesh does not drop everything because of it.
        let err = reload_dir(dir.path()).err().unwrap();
        assert!(err.reason.contains("no object"), "{err}");
        std::fs::write(dir.path().join("comments.yaml"), "# nothing\n").unwrap();
        assert!(reload_dir(dir.path()).is_err());
        let gone = dir.path().join("gone");
        let err = reload_dir(&gone).err().unwrap();
        assert!(err.to_string().contains("gone"), "{err}");
        std::fs::write(dir.path().join("a.yaml"), NAMESPACE).unwrap();
        assert!(reload_dir(dir.path()).is_ok());
    }
}
