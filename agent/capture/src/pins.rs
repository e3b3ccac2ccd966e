//! The layout of an agent's pin directory on bpffs:
//!
//! ```text
//! <pin-dir>/
//!   v<layout>-<object hash>/      one version of the programs
//!     maps/<MAP NAME>             maps, reused by a restarted agent
//!     links/<program>@<cgroup id> attachments; while pinned, capture stays on
//! ```
//!
//! The version names both the map layout and the exact object, so an agent
//! only reuses links and maps that its own programs made; anything else in the
//! directory belongs to an older agent and is removed on start.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use strait_ebpf_common::PIN_LAYOUT_VERSION;

use crate::{Error, OBJECT, io_err};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
    version: String,
}

impl PinLayout {
    /// The layout for this build's object under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            version: version_name(OBJECT),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(&self.version)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link(&self, program: &str, cgroup_id: u64) -> PathBuf {
        self.links_dir().join(link_name(program, cgroup_id))
    }

    /// Creates the version's directories, after checking that `root` is on
    /// bpffs (pins anywhere else fail with a confusing EPERM).
    pub fn prepare(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.root).map_err(io_err("creating pin directory", &self.root))?;
        if fs_magic(&self.root)? != BPF_FS_MAGIC {
            return Err(Error::NotBpffs {
                path: self.root.clone(),
            });
        }
        for dir in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("creating pin directory", &dir))?;
        }
        Ok(())
    }

    /// What other versions (older agents) pinned here.
    pub fn other_versions(&self) -> Result<Vec<OtherVersion>, Error> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("reading", &self.root))? {
            let entry = entry.map_err(io_err("reading", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != self.version && is_version_name(&name) {
                found.push(OtherVersion {
                    same_maps: layout_of(&name) == Some(PIN_LAYOUT_VERSION),
                    dir: entry.path(),
                    name,
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Removes this version's pins: capture stops once no process holds the
    /// links (the agent drops its own on exit).
    pub fn remove(&self) -> Result<(), Error> {
        let dir = self.version_dir();
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Another version's pins.
#[derive(Clone, Debug)]
pub struct OtherVersion {
    pub name: String,
    pub dir: PathBuf,
    /// Its maps have this version's layout, so this version can take them
    /// over (and with them, the pods the older agent enrolled).
    pub same_maps: bool,
}

impl OtherVersion {
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// Removes its pins; links still pinned there detach.
    pub fn remove(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("removing", &self.dir)(e))
            }
            _ => Ok(()),
        }
    }
}

/// The id the kernel gives a cgroup v2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, Error> {
    if fs_magic(path)? != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2 { path: path.into() });
    }
    let meta = fs::metadata(path).map_err(io_err("reading cgroup", path))?;
    Ok(meta.ino())
}

pub(crate) fn link_name(program: &str, cgroup_id: u64) -> String {
    format!("{program}@{cgroup_id}")
}

fn version_name(object: &[u8]) -> String {
    format!("v{PIN_LAYOUT_VERSION}-{:016x}", fnv1a(object))
}

fn layout_of(name: &str) -> Option<u32> {
    name.strip_prefix('v')?.split_once('-')?.0.parse().ok()
}

fn is_version_name(name: &str) -> bool {
    name.strip_prefix('v')
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(layout, hash)| {
            layout.parse::<u32>().is_ok()
                && hash.len() == 16
                && hash.chars().all(|c| c.is_ascii_hexdigit())
        })
}

/// FNV-1a: stable across builds and platforms, which `std`'s hasher is not.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fs_magic(path: &Path) -> Result<i64, Error> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Io {
        what: "path has a NUL byte",
        path: path.into(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: `statfs` only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string, st a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io_err("statfs", path)(std::io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_round_trip() {
        let name = version_name(b"object");
        assert!(is_version_name(&name), "{name}");
        assert!(name.starts_with(&format!("v{PIN_LAYOUT_VERSION}-")));
    }

    #[test]
    fn other_directories_are_not_versions() {
        for name in [
            "maps",
            "v1",
            "v1-xyz",
            "vx-0123456789abcdef",
            "v1-0123456789abcde",
            "1-0123456789abcdef",
        ] {
            assert!(!is_version_name(name), "{name}");
        }
        assert!(is_version_name("v7-0123456789abcdef"));
    }

    #[test]
    fn the_layout_is_read_from_the_name() {
        assert_eq!(layout_of(&version_name(b"x")), Some(PIN_LAYOUT_VERSION));
        assert_eq!(layout_of("v3-0123456789abcdef"), Some(3));
        assert_eq!(layout_of("maps"), None);
    }

    #[test]
    fn version_changes_with_the_object() {
        assert_ne!(version_name(b"a"), version_name(b"b"));
        assert_eq!(version_name(b"a"), version_name(b"a"));
    }

    #[test]
    fn prepare_refuses_a_directory_outside_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PinLayout::new(dir.path().join("pins"));
        let err = layout.prepare().unwrap_err();
        assert!(matches!(err, Error::NotBpffs { .. }), "{err}");
        assert!(err.to_string().contains("mount -t bpf"), "{err}");
    }

    #[test]
    fn cgroup_id_refuses_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = cgroup_id(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NotCgroup2 { .. }), "{err}");
    }
}
