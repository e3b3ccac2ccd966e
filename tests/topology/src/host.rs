//! The machine-wide places a topology uses: the cgroup v2 root and bpffs.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::Error;

/// Where cgroups and pins go. Both are settings (env `STRAIT_CGROUP_ROOT`,
/// `STRAIT_BPFFS`) because hosts differ: pure cgroup v2 hosts mount it at
/// `/sys/fs/cgroup`, mixed v1/v2 hosts at `/sys/fs/cgroup/unified`.
#[derive(Clone, Debug)]
pub struct Host {
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
}

impl Host {
    pub fn detect() -> Result<Self, Error> {
        let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| Error::Io {
            what: "reading /proc/self/mounts".into(),
            source: e,
        })?;
        let cgroup_root = match std::env::var_os("STRAIT_CGROUP_ROOT") {
            Some(dir) => PathBuf::from(dir),
            None => first_mount(&mounts, "cgroup2").ok_or_else(|| {
                Error::Host("no cgroup v2 filesystem is mounted (set STRAIT_CGROUP_ROOT)".into())
            })?,
        };
        let bpffs = std::env::var_os("STRAIT_BPFFS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
        if !is_mount_of(&mounts, &bpffs, "bpf") {
            return Err(Error::Host(format!(
                "{} is not a bpf filesystem; run `cargo xtask setup` or `mount -t bpf bpf {}`",
                bpffs.display(),
                bpffs.display()
            )));
        }
        if !is_mount_of(&mounts, &cgroup_root, "cgroup2") {
            return Err(Error::Host(format!(
                "{} is not a cgroup v2 mount",
                cgroup_root.display()
            )));
        }
        Ok(Self { cgroup_root, bpffs })
    }

    /// Parent of every run's cgroups.
    pub fn cgroup_base(&self) -> PathBuf {
        self.cgroup_root.join(crate::names::PREFIX)
    }

    /// Parent of every run's pin directories.
    pub fn pin_base(&self) -> PathBuf {
        self.bpffs.join(crate::names::PREFIX)
    }
}

fn mount_entries(mounts: &str) -> impl Iterator<Item = (&str, &str)> {
    mounts.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let target = fields.next()?;
        let fstype = fields.next()?;
        Some((target, fstype))
    })
}

fn first_mount(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mount_entries(mounts)
        .find(|(_, t)| *t == fstype)
        .map(|(target, _)| PathBuf::from(target))
}

fn is_mount_of(mounts: &str, path: &Path, fstype: &str) -> bool {
    mount_entries(mounts).any(|(target, t)| t == fstype && Path::new(target) == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
        bpf /sys/fs/bpf bpf rw 0 0\n";

    #[test]
    fn finds_the_cgroup2_mount_on_a_mixed_host() {
        assert_eq!(
            first_mount(MIXED, "cgroup2").unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert!(is_mount_of(MIXED, Path::new("/sys/fs/bpf"), "bpf"));
        assert!(!is_mount_of(
            MIXED,
            Path::new("/sys/fs/cgroup/cpu"),
            "cgroup2"
        ));
    }
}
