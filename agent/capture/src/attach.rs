//! Loading the embedded programs and attaching them: the `cgroup/*` and
//! `sock_ops` programs to a node's cgroup subtree, `sk_lookup` to each
//! enrolled pod's network namespace.
//!
//! Attachments are pinned links: they outlive the agent process, so pods keep
//! being captured while the agent restarts. A restarted agent of the same
//! version finds its links pinned and keeps them instead of attaching again.
//!
//! An agent of another version (an upgrade, or a rollback) never leaves a
//! hook without a program: it switches each link an older version pinned to
//! its own program in place (`BPF_LINK_UPDATE`, atomic) and moves the pin
//! into its own directory. When the older version's maps have the same
//! layout it takes them over too, so enrolled pods stay enrolled through the
//! switch; when they do not, the cgroup links are switched only once the
//! agent has enrolled the pods in its new maps ([`Capture::finish_upgrade`]).
use std::{
    collections::BTreeSet,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, SkLookup, SockOps, links::FdLink,
        links::PinnedLink,
    },
};
use strait_ebpf_common::{map, program};
use tracing::{debug, info, warn};

use crate::{
    Error, OBJECT, io_err,
    maps::Maps,
    pins::{OtherVersion, PinLayout, cgroup_id, link_name},
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
    /// An older version's link, switched to this version's program in place.
    Replaced,
    /// An older version's link whose maps this version cannot read: it keeps
    /// running the older program until [`Capture::finish_upgrade`].
    Pending,
}

/// The loaded programs and their maps, attached to one cgroup subtree.
pub struct Capture {
    ebpf: Ebpf,
    maps: std::sync::Arc<Maps>,
    layout: PinLayout,
    cgroup: PathBuf,
    cgroup_id: u64,
    attachments: Vec<(&'static str, Attachment)>,
    /// Older versions whose pins are still in use (their maps could not be
    /// taken over): removed by [`Capture::finish_upgrade`].
    older: Vec<OtherVersion>,
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
        let older = layout.other_versions()?;
        // Same map layout: take the older version's maps over, so what it
        // enrolled stays enrolled (the programs find it by pin).
        for old in older.iter().filter(|o| o.same_maps) {
            adopt_pins(&old.maps_dir(), &layout.maps_dir())?;
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
            let old = older
                .iter()
                .map(|o| (o, o.links_dir().join(link_name(name, cgroup_id))))
                .find(|(_, p)| p.exists());
            let how = if PinnedLink::from_pin(&pin).is_ok() {
                Attachment::Kept
            } else if let Some((old, old_pin)) = old {
                if old.same_maps {
                    replace(&mut ebpf, name, &old_pin, &pin)?;
                    Attachment::Replaced
                } else {
                    Attachment::Pending
                }
            } else {
                remove_if_present(&pin)?;
                let link = attach_to_cgroup(&mut ebpf, name, &cgroup)?;
                pin_link(name, link, &pin)?;
                Attachment::New
            };
            debug!(program = name, pin = %pin.display(), ?how, "cgroup program");
            attachments.push((name, how));
        }
        // Inbound capture of the pods the older version enrolled moves over
        // with its maps.
        for old in older.iter().filter(|o| o.same_maps) {
            for (old_pin, file) in sk_lookup_links(&old.links_dir())? {
                let pin = layout.links_dir().join(file);
                if !pin.exists() {
                    replace(&mut ebpf, program::SK_LOOKUP, &old_pin, &pin)?;
                }
            }
            old.remove()?;
            info!(version = %old.name, "took over the pins of another version");
        }
        let older: Vec<OtherVersion> = older.into_iter().filter(|o| !o.same_maps).collect();
        info!(
            cgroup = %config.cgroup.display(),
            version = layout.version(),
            ?attachments,
            pending_versions = older.len(),
            "capture attached"
        );
        Ok(Self {
            ebpf,
            maps,
            layout,
            cgroup: config.cgroup.clone(),
            cgroup_id,
            attachments,
            older,
        })
    }

    /// Completes an upgrade from a version whose maps this one cannot read:
    /// call once this version's maps hold the pods (enrolled anew). Each
    /// cgroup link the older version pinned switches to this version's
    /// program in place, then its remaining pins (its `sk_lookup` links,
    /// which this version replaced per pod) are removed. Returns how many
    /// links were switched.
    pub fn finish_upgrade(&mut self) -> Result<usize, Error> {
        let mut switched = 0;
        for (name, how) in &mut self.attachments {
            if *how != Attachment::Pending {
                continue;
            }
            let pin = self.layout.link(name, self.cgroup_id);
            let old_pin = self
                .older
                .iter()
                .map(|o| o.links_dir().join(link_name(name, self.cgroup_id)))
                .find(|p| p.exists());
            match old_pin {
                Some(old_pin) => replace(&mut self.ebpf, name, &old_pin, &pin)?,
                None => {
                    let cgroup = fs::File::open(&self.cgroup)
                        .map_err(io_err("opening cgroup", &self.cgroup))?;
                    let link = attach_to_cgroup(&mut self.ebpf, name, &cgroup)?;
                    pin_link(name, link, &pin)?;
                }
            }
            *how = Attachment::Replaced;
            switched += 1;
        }
        for old in self.older.drain(..) {
            old.remove()?;
            info!(version = %old.name, "removed the pins of another version");
        }
        Ok(switched)
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

/// Switches the link pinned at `old_pin` to this object's program `name`,
/// atomically, and moves the pin to `pin`.
fn replace(ebpf: &mut Ebpf, name: &'static str, old_pin: &Path, pin: &Path) -> Result<(), Error> {
    let program_err = |source| Error::Program { name, source };
    let program = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram { name })?;
    // The same steps for the program types strait has, which share no
    // trait in aya.
    macro_rules! loaded_fd {
        ($p:expr) => {{
            if $p.fd().is_err() {
                $p.load().map_err(program_err)?;
            }
            $p.fd().map_err(program_err)?.as_fd()
        }};
    }
    let program_fd = match program {
        Program::CgroupSockAddr(p) => loaded_fd!(p),
        Program::SockOps(p) => loaded_fd!(p),
        Program::SkLookup(p) => loaded_fd!(p),
        _ => return Err(Error::MissingProgram { name }),
    };
    let link = crate::sys::obj_get(old_pin).map_err(io_err("opening the link", old_pin))?;
    crate::sys::link_update(link.as_fd(), program_fd).map_err(io_err(
        "switching the link to this version's program",
        old_pin,
    ))?;
    fs::rename(old_pin, pin).map_err(io_err("moving the link's pin", pin))
}

/// Moves the map pins in `from` into `to`, keeping any `to` already has.
fn adopt_pins(from: &Path, to: &Path) -> Result<(), Error> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let target = to.join(entry.file_name());
        if !target.exists() {
            fs::rename(entry.path(), &target).map_err(io_err("moving a map's pin", &target))?;
        }
    }
    Ok(())
}

/// The `sk_lookup` link pins in `dir`: (path, file name).
fn sk_lookup_links(dir: &Path) -> Result<Vec<(PathBuf, std::ffi::OsString)>, Error> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(program::SK_LOOKUP)
        })
        .map(|e| (e.path(), e.file_name()))
        .collect())
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
