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
}

impl Simple {
    pub fn parse(simple: Option<&str>) -> Self {
        match simple {
            Some("RANDOM") => Simple::Random,
            Some("ROUND_ROBIN") => Simple::RoundRobin,
            _ => Simple::LeastRequest,
        }
    }
}

#[derive(Debug, Default)]
pub struct Load {
    active: Mutex<HashMap<SocketAddr, usize>>,
    turns: Mutex<HashMap<String, usize>>,
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
