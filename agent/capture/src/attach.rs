//! Loading the embedded programs and attaching them: the `cgroup/*` and
//! `sock_ops` programs to a node's cgroup subtree, `sk_lookup` to each
//! enrolled pod's network namespace.
//!
//! Attachments are pinned links: they outlive the agent process, so pods keep
//! being captured while the agent restarts. A restarted agent of the same
//! version finds its links pinned and keeps them instead of attaching again.
use std::{
    collections::BTreeSet,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps, links::FdLink, links::PinnedLink,
    },
};
use strait_ebpf_common::{map, program};
use tracing::{debug, info, warn};

use crate::{
    Error, OBJECT, io_err,
    maps::Maps,
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

/// How a program came to be attached.
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
    maps: std::sync::Arc<Maps>,
    layout: PinLayout,
    cgroup: PathBuf,
    attachments: Vec<(&'static str, Attachment)>,
}

/// Programs attached to the node's cgroup subtree.
const CGROUP_PROGRAMS: [&str; 9] = [
    program::CONNECT4,
    program::CONNECT6,
    program::GETPEERNAME4,
    program::GETPEERNAME6,
    program::SENDMSG4,
    program::SENDMSG6,
    program::RECVMSG4,
    program::RECVMSG6,
    program::SOCK_OPS,
];

impl Capture {
    /// Loads the embedded object and makes sure every cgroup program is
    /// attached to `config.cgroup`, reconciling what the pin directory holds.
    pub fn attach(config: &CaptureConfig) -> Result<Self, Error> {
        let layout = PinLayout::new(&config.pin_dir);
        layout.prepare()?;
        for old in layout.remove_other_versions()? {
            info!(version = %old, "removed pins of another version");
        }
        let cgroup_id = cgroup_id(&config.cgroup)?;
        let wanted: BTreeSet<String> = CGROUP_PROGRAMS
            .iter()
            .map(|p| link_name(p, cgroup_id))
            .collect();
        remove_links(&layout, |name| {
            !name.starts_with(program::SK_LOOKUP) && !wanted.contains(name)
        })?;

        let maps_dir = layout.maps_dir();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;
        let maps = std::sync::Arc::new(Maps::take(&mut ebpf)?);

        let cgroup =
            fs::File::open(&config.cgroup).map_err(io_err("opening cgroup", &config.cgroup))?;
        let mut attachments = Vec::new();
        for name in CGROUP_PROGRAMS {
            let pin = layout.link(name, cgroup_id);
            let how = if PinnedLink::from_pin(&pin).is_ok() {
                Attachment::Kept
            } else {
                remove_if_present(&pin)?;
                let link = attach_to_cgroup(&mut ebpf, name, &cgroup)?;
                pin_link(name, link, &pin)?;
                Attachment::New
            };
            debug!(program = name, pin = %pin.display(), ?how, "cgroup program");
            attachments.push((name, how));
        }
        info!(
            cgroup = %config.cgroup.display(),
            version = layout.version(),
            ?attachments,
            "capture attached"
        );
        Ok(Self {
            ebpf,
            maps,
            layout,
            cgroup: config.cgroup.clone(),
            attachments,
        })
    }

    /// Attaches inbound capture (`sk_lookup`) to a pod's network namespace,
    /// or keeps the link a previous run pinned for it.
    pub fn attach_netns(&mut self, netns: &impl AsFd, cookie: u64) -> Result<Attachment, Error> {
        let pin = self.netns_link(cookie);
        if PinnedLink::from_pin(&pin).is_ok() {
            return Ok(Attachment::Kept);
        }
        remove_if_present(&pin)?;
        let name = program::SK_LOOKUP;
        let program_err = |source| Error::Program { name, source };
        let program: &mut SkLookup = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(program_err)?;
        if program.fd().is_err() {
            program.load().map_err(program_err)?;
        }
        let id = program.attach(netns).map_err(program_err)?;
        let link: FdLink = program.take_link(id).map_err(program_err)?.into();
        pin_link(name, link, &pin)?;
        Ok(Attachment::New)
    }

    /// Removes `sk_lookup` links of namespaces not in `keep`.
    pub fn retain_netns(&self, keep: &BTreeSet<u64>) -> Result<usize, Error> {
        let wanted: BTreeSet<String> = keep.iter().map(|c| netns_link_name(*c)).collect();
        remove_links(&self.layout, |name| {
            name.starts_with(program::SK_LOOKUP) && !wanted.contains(name)
        })
    }

    /// Namespaces with a pinned `sk_lookup` link.
    pub fn attached_netns(&self) -> Result<BTreeSet<u64>, Error> {
        let dir = self.layout.links_dir();
        let prefix = format!("{}@netns-", program::SK_LOOKUP);
        Ok(fs::read_dir(&dir)
            .map_err(io_err("reading", &dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
            .collect())
    }

    /// The maps, shared with the proxy's hot path.
    pub fn maps(&self) -> std::sync::Arc<Maps> {
        self.maps.clone()
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

    fn netns_link(&self, cookie: u64) -> PathBuf {
        self.layout.links_dir().join(netns_link_name(cookie))
    }
}

fn netns_link_name(cookie: u64) -> String {
    format!("{}@netns-{cookie}", program::SK_LOOKUP)
}

fn attach_to_cgroup(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
) -> Result<FdLink, Error> {
    let program_err = |source| Error::Program { name, source };
    let link_err = |source| Error::Link { name, source };
    let program = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram { name })?;
    // The same steps for two program types that share no trait in aya.
    macro_rules! attach_as {
        ($ty:ty) => {{
            let program: &mut $ty = program.try_into().map_err(program_err)?;
            program.load().map_err(program_err)?;
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(program_err)?;
            program
                .take_link(id)
                .map_err(program_err)?
                .try_into()
                .map_err(link_err)
        }};
    }
    if name == program::SOCK_OPS {
        attach_as!(SockOps)
    } else {
        attach_as!(CgroupSockAddr)
    }
}

fn pin_link(name: &'static str, link: FdLink, pin: &Path) -> Result<(), Error> {
    link.pin(pin).map_err(|source| Error::Pin {
        name,
        path: pin.into(),
        source,
    })?;
    Ok(())
}

/// Unpins the links whose names `stale` picks; returns how many.
fn remove_links(layout: &PinLayout, stale: impl Fn(&str) -> bool) -> Result<usize, Error> {
    let dir = layout.links_dir();
    let mut removed = 0;
    for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
        let entry = entry.map_err(io_err("reading", &dir))?;
        if stale(entry.file_name().to_string_lossy().as_ref()) {
            warn!(pin = %entry.path().display(), "removing stale link");
            remove_if_present(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}
