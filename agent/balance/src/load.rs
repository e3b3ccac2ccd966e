//! What `loadBalancer.simple` needs to know besides the endpoints: how many
//! connections each endpoint carries now (LEAST_REQUEST) and whose turn it
//! is (ROUND_ROBIN).
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

/// `loadBalancer.simple`, within one priority level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simple {
    /// Weighted random.
    Random,
    /// Evenly spread by weight, turn by turn.
    RoundRobin,
    /// The less busy of two weighted random picks (Istio's default).
    LeastRequest,
    /// `consistentHash.useSourceIp`: the same client address goes to the
    /// same endpoint (weighted rendezvous hashing, so endpoints coming and
    /// going move only their own share); the key is the address's hash.
    SourceHash(u64),
    /// `consistentHash` on a request's header, cookie or query parameter:
    /// hashed like [`Simple::SourceHash`] where a waypoint knows the
    /// request's key ([`Simple::for_request`]); least request without one
    /// (Envoy's fallback), and at L4.
    RequestHash,
    /// `PASSTHROUGH`: no balancing, the address the client dialled.
    Passthrough,
}

impl Simple {
    /// From a `loadBalancer`'s `simple` and its `consistentHash`:
    /// `useSourceIp`, or a request's key (`request_key`). `LEAST_CONN` is
    /// Istio's deprecated name for `LEAST_REQUEST`.
    pub fn parse(simple: Option<&str>, source_ip: bool, request_key: bool) -> Self {
        match simple {
            _ if source_ip => Simple::SourceHash(0),
            _ if request_key => Simple::RequestHash,
            Some("RANDOM") => Simple::Random,
            Some("ROUND_ROBIN") => Simple::RoundRobin,
            Some("PASSTHROUGH") => Simple::Passthrough,
            _ => Simple::LeastRequest,
        }
    }

    /// This policy for a connection from `source`: the hash key, for
    /// [`Simple::SourceHash`].
    pub fn for_source(self, source: std::net::IpAddr) -> Self {
        match self {
            Simple::SourceHash(_) => Simple::SourceHash(hash_of(&source.to_string(), 0)),
            other => other,
        }
    }

    /// This policy for one request whose hash key is `key` (a waypoint's):
    /// a request-keyed hash, or least request without a key.
    pub fn for_request(self, key: Option<&str>) -> Self {
        match (self, key) {
            (Simple::RequestHash, Some(key)) => Simple::SourceHash(hash_of(key, 0)),
            (Simple::RequestHash, None) => Simple::LeastRequest,
            (other, _) => other,
        }
    }
}

/// A stable 64-bit hash of `text` and `salt` (FNV-1a, then a finalizer so
/// nearby inputs land far apart).
pub(crate) fn hash_of(text: &str, salt: u64) -> u64 {
    let mut h = text
        .bytes()
        .chain(salt.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// A hash as a number in (0, 1], for weighted rendezvous.
pub(crate) fn unit(hash: u64) -> f64 {
    ((hash >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

#[derive(Debug, Default)]
pub struct Load {
    active: Mutex<HashMap<SocketAddr, usize>>,
    turns: Mutex<HashMap<String, usize>>,
    /// Open connections per service, for `connectionPool.tcp.maxConnections`.
    services: Mutex<HashMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Load {
    /// Connections open to `addr` now.
    pub fn active(&self, addr: SocketAddr) -> usize {
        lock(&self.active).get(&addr).copied().unwrap_or(0)
    }

    /// Counts a connection to `addr` until the guard is dropped.
    pub fn open(self: &Arc<Self>, addr: SocketAddr) -> Active {
        *lock(&self.active).entry(addr).or_default() += 1;
        Active {
            load: self.clone(),
            addr,
        }
    }

    /// Counts a connection to `service` while the slot lives, if fewer than
    /// `max` are open.
    pub fn open_service(self: &Arc<Self>, service: &str, max: u32) -> Option<ServiceSlot> {
        let mut open = lock(&self.services);
        let n = open.entry(service.to_owned()).or_default();
        if *n >= max as usize {
            return None;
        }
        *n += 1;
        Some(ServiceSlot {
            load: self.clone(),
            service: service.to_owned(),
        })
    }

    /// Forgets the round-robin turns of services `keep` does not want.
    pub fn retain_services(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.turns).retain(|service, _| keep(service));
    }

    /// The next turn of `service` (ROUND_ROBIN).
    pub fn turn(&self, service: &str) -> usize {
        let mut turns = lock(&self.turns);
        let turn = turns.entry(service.to_string()).or_default();
        *turn = turn.wrapping_add(1);
        *turn
    }
}

/// One open connection, counted while it lives.
#[derive(Debug)]
pub struct Active {
    load: Arc<Load>,
    addr: SocketAddr,
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut active = lock(&self.load.active);
        if let Some(n) = active.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.addr);
            }
        }
    }
}

/// One connection counted against its service's `maxConnections`.
#[derive(Debug)]
pub struct ServiceSlot {
    load: Arc<Load>,
    service: String,
}

impl Drop for ServiceSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.load.services);
        if let Some(n) = open.get_mut(&self.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.service);
            }
        }
    }
}
