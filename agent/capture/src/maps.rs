//! Typed handles on the pinned maps the agent reads and writes.
//!
//! aya's map API takes `&mut self` for writes, so each map sits behind its own
//! mutex; a critical section is one `bpf()` syscall.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{HashMap, MapData, SockHash};
use strait_ebpf_common::{ListenerKey, NetnsAddr, PodAddr, SockAddr, map};

use crate::{
    Error,
    addr::{from_kernel, ip_words, to_kernel},
};

/// Which of a pod's inbound listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Hbone,
    Plaintext,
}

pub struct Maps {
    enrolled: Mutex<HashMap<MapData, u64, u32>>,
    pod_addrs: Mutex<HashMap<MapData, PodAddr, u64>>,
    orig_by_tuple: Mutex<HashMap<MapData, NetnsAddr, SockAddr>>,
    listeners: Mutex<SockHash<MapData, ListenerKey>>,
    peer_names: Mutex<HashMap<MapData, NetnsAddr, SockAddr>>,
    dns_by_cookie: Mutex<HashMap<MapData, u64, SockAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map {
        path: name.into(),
        source,
    }
}

impl Maps {
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        Self::build(|name| ebpf.take_map(name).ok_or(Error::MissingMap { name }))
    }

    /// Opens the maps an agent pinned under `pin_dir`, without loading
    /// anything: how tests and tools inspect capture state from outside.
    pub fn from_pins(pin_dir: &std::path::Path) -> Result<Self, Error> {
        let layout = crate::PinLayout::new(pin_dir);
        Self::build(|name| {
            let path = layout.map(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::Map { path, source })?;
            Ok(match name {
                map::LISTENERS => aya::maps::Map::SockHash(data),
                map::ORIG_BY_TUPLE | map::PEER_NAMES | map::DNS_BY_COOKIE => {
                    aya::maps::Map::LruHashMap(data)
                }
                _ => aya::maps::Map::HashMap(data),
            })
        })
    }

    /// The typed handles, from a source of maps by name.
    fn build(
        mut get: impl FnMut(&'static str) -> Result<aya::maps::Map, Error>,
    ) -> Result<Self, Error> {
        Ok(Self {
            enrolled: typed(&mut get, map::ENROLLED)?,
            pod_addrs: typed(&mut get, map::POD_ADDRS)?,
            orig_by_tuple: typed(&mut get, map::ORIG_BY_TUPLE)?,
            listeners: typed(&mut get, map::LISTENERS)?,
            peer_names: typed(&mut get, map::PEER_NAMES)?,
            dns_by_cookie: typed(&mut get, map::DNS_BY_COOKIE)?,
        })
    }

    /// Marks a pod's namespace and addresses as captured. Call once its
    /// listeners are registered: from here on its connects are redirected.
    pub fn enroll(&self, netns: u64, addrs: &[IpAddr]) -> Result<(), Error> {
        let mut pod_addrs = lock(&self.pod_addrs);
        for ip in addrs {
            pod_addrs
                .insert(pod_key(*ip), netns, 0)
                .map_err(map_err(map::POD_ADDRS))?;
        }
        lock(&self.enrolled)
            .insert(netns, 1, 0)
            .map_err(map_err(map::ENROLLED))
    }

    /// Network namespaces currently enrolled.
    pub fn enrolled(&self) -> BTreeSet<u64> {
        lock(&self.enrolled).keys().filter_map(Result::ok).collect()
    }

    /// Enrolled pod addresses and their namespaces.
    pub fn pod_addrs(&self) -> Vec<(IpAddr, u64)> {
        lock(&self.pod_addrs)
            .iter()
            .filter_map(Result::ok)
            .map(|(k, netns)| (from_kernel(&k).ip(), netns))
            .collect()
    }

    /// Removes every enrollment not in `keep`: what a previous run left for
    /// pods that are gone or no longer in the mesh.
    pub fn retain_enrolled(
        &self,
        keep: &BTreeSet<u64>,
        keep_addrs: &BTreeSet<IpAddr>,
    ) -> Result<usize, Error> {
        let mut removed = 0;
        let mut enrolled = lock(&self.enrolled);
        let stale: Vec<u64> = enrolled
            .keys()
            .filter_map(Result::ok)
            .filter(|n| !keep.contains(n))
            .collect();
        for netns in stale {
            enrolled.remove(&netns).map_err(map_err(map::ENROLLED))?;
            removed += 1;
        }
        let mut pod_addrs = lock(&self.pod_addrs);
        let stale: Vec<PodAddr> = pod_addrs
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, netns)| {
                !keep.contains(netns) || !keep_addrs.contains(&from_kernel(k).ip())
            })
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            pod_addrs.remove(&key).map_err(map_err(map::POD_ADDRS))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The original destination of a redirected connection whose client is
    /// `peer` in namespace `netns`; the record is consumed.
    pub fn take_original_dst(&self, netns: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let key = netns_key(netns, peer);
        let mut map = lock(&self.orig_by_tuple);
        let original = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(from_kernel(&original))
    }

    /// Registers an inbound listener for `sk_lookup` to steer to.
    pub fn add_listener(
        &self,
        ip: IpAddr,
        kind: ListenerKind,
        socket: &impl AsRawFd,
    ) -> Result<(), Error> {
        let (ip, family) = ip_words(ip);
        let key = ListenerKey {
            ip,
            family,
            kind: match kind {
                ListenerKind::Hbone => strait_ebpf_common::listener::HBONE,
                ListenerKind::Plaintext => strait_ebpf_common::listener::PLAINTEXT,
            },
        };
        lock(&self.listeners)
            .insert(key, socket.as_raw_fd(), 0)
            .map_err(map_err(map::LISTENERS))
    }

    /// Makes the app see `client` as the peer of the agent's connection from
    /// `local` (in `netns`). Set it before connecting: the app may accept at
    /// once.
    pub fn set_peer_name(
        &self,
        netns: u64,
        local: SocketAddr,
        client: SocketAddr,
    ) -> Result<(), Error> {
        lock(&self.peer_names)
            .insert(netns_key(netns, local), to_kernel(client), 0)
            .map_err(map_err(map::PEER_NAMES))
    }

    pub fn clear_peer_name(&self, netns: u64, local: SocketAddr) {
        let _ = lock(&self.peer_names).remove(&netns_key(netns, local));
    }

    /// The nameserver the socket with `cookie` sent its DNS query to: where
    /// a name the mesh does not know is forwarded.
    pub fn dns_nameserver(&self, cookie: u64) -> Option<SocketAddr> {
        lock(&self.dns_by_cookie)
            .get(&cookie, 0)
            .ok()
            .map(|a| from_kernel(&a))
    }
}

/// One map, as the typed handle `T`.
fn typed<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    get: &mut impl FnMut(&'static str) -> Result<aya::maps::Map, Error>,
    name: &'static str,
) -> Result<Mutex<T>, Error> {
    Ok(Mutex::new(T::try_from(get(name)?).map_err(map_err(name))?))
}

fn pod_key(ip: IpAddr) -> PodAddr {
    let (ip, family) = ip_words(ip);
    PodAddr {
        ip,
        port: 0,
        family,
    }
}

fn netns_key(netns: u64, addr: SocketAddr) -> NetnsAddr {
    NetnsAddr {
        netns,
        addr: to_kernel(addr),
        _pad: 0,
    }
}
