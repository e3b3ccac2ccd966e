//! Loading the embedded programs and attaching them to a node's cgroup
//! subtree.
//!
//! Attachments are pinned links: they outlive the agent process, so pods keep
//! being captured while the agent restarts. A restarted agent of the same
//! version finds its links pinned and keeps them instead of attaching again.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink, links::PinnedLink},
};
use strait_ebpf_common::{map, program};
use tracing::{debug, info, warn};

use crate::{
    Error, OBJECT, io_err,
    pins::{PinLayout, cgroup_id, link_name},
    stats::StatsSnapshot,
};

#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The cgroup v2 directory that holds the node's pods.
    pub cgroup: PathBuf,
    /// This agent's directory on bpffs.
    pub pin_dir: PathBuf,
}

/// How each program came to be attached when the agent started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Attached by this process.
    New,
    /// Found pinned by a previous run of the same version, and kept.
    Kept,
}

/// The loaded programs and their maps, attached to one cgroup subtree.
pub struct Capture {
    ebpf: Ebpf,
    layout: PinLayout,
    cgroup: PathBuf,
    attachments: Vec<(&'static str, Attachment)>,
}

impl Capture {
    /// Loads the embedded object and makes sure every capture program is
    /// attached to `config.cgroup`, reconciling what the pin directory holds.
    pub fn attach(config: &CaptureConfig) -> Result<Self, Error> {
        let layout = PinLayout::new(&config.pin_dir);
        layout.prepare()?;
        for old in layout.remove_other_versions()? {
            info!(version = %old, "removed pins of another version");
        }
        let cgroup_id = cgroup_id(&config.cgroup)?;
        remove_stale_links(&layout, cgroup_id)?;

        let maps_dir = layout.maps_dir();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;

        let cgroup =
            fs::File::open(&config.cgroup).map_err(io_err("opening cgroup", &config.cgroup))?;
        let mut attachments = Vec::new();
        for name in program::CGROUP_PROGRAMS {
            let pin = layout.link(name, cgroup_id);
            if PinnedLink::from_pin(&pin).is_ok() {
                debug!(program = name, pin = %pin.display(), "keeping pinned link");
                attachments.push((name, Attachment::Kept));
                continue;
            }
            remove_if_present(&pin)?;
            attach_one(&mut ebpf, name, &cgroup, &pin)?;
            attachments.push((name, Attachment::New));
        }
        info!(
            cgroup = %config.cgroup.display(),
            version = layout.version(),
            ?attachments,
            "capture attached"
        );
        Ok(Self {
            ebpf,
            layout,
            cgroup: config.cgroup.clone(),
            attachments,
        })
    }

    pub fn attachments(&self) -> &[(&'static str, Attachment)] {
        &self.attachments
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn stats(&self) -> Result<StatsSnapshot, Error> {
        let stats = self
            .ebpf
            .map(map::STATS)
            .ok_or(Error::MissingMap { name: map::STATS })?;
        StatsSnapshot::read(stats, &self.layout.map(map::STATS))
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<(), Error> {
    let program_err = |source| Error::Program { name, source };
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(program_err)?;
    program.load().map_err(program_err)?;
    let link_id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_err)?;
    let link = program.take_link(link_id).map_err(program_err)?;
    let link: FdLink = link
        .try_into()
        .map_err(|source| Error::Link { name, source })?;
    link.pin(pin).map_err(|source| Error::Pin {
        name,
        path: pin.into(),
        source,
    })?;
    debug!(program = name, pin = %pin.display(), "attached and pinned");
    Ok(())
}

/// Unpins links for programs this build does not have, or for another cgroup
/// (the agent was moved to a different subtree).
fn remove_stale_links(layout: &PinLayout, cgroup_id: u64) -> Result<(), Error> {
    let wanted: BTreeSet<String> = program::CGROUP_PROGRAMS
        .iter()
        .map(|p| link_name(p, cgroup_id))
        .collect();
    let dir = layout.links_dir();
    for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
        let entry = entry.map_err(io_err("reading", &dir))?;
        if !wanted.contains(entry.file_name().to_string_lossy().as_ref()) {
            warn!(pin = %entry.path().display(), "removing stale link");
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}
