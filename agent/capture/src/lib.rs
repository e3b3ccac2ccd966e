//! The user side of capture: the agent's view of the eBPF programs in
//! `ebpf/programs`.
//!
//! - [`pins`]: where pinned maps and links live on bpffs and how a restarted
//!   agent tells its own from a previous version's.
//! - [`attach`]: loading the embedded object and attaching it to a node's
//!   cgroup subtree, reusing what a previous run of the same version pinned.
//! - [`maps`]: enrollment, original destinations, listeners, peer names;
//! - [`stats`]: the programs' counters.
pub mod addr;
pub mod attach;
pub mod maps;
pub mod pins;
pub mod stats;
mod sys;

pub use attach::{Attachment, Capture, CaptureConfig};
pub use maps::{ListenerKind, Maps};
pub use pins::PinLayout;
pub use stats::StatsSnapshot;

use std::path::PathBuf;

/// The compiled programs, built by `build.rs` and embedded so the agent is
/// one self-contained binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strait"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "pin directory {path} is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning the link of {name} at {path}: {source}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
