//! What one pod may hold of the agent. Every pod of the node shares one
//! agent, so each pod has a cap on the connections it has open through it,
//! each way (outbound from it, inbound to it), and all of them share the
//! node's budget, sized to the agent's descriptor limit: a pod that opens
//! connections as fast as it can is refused beyond its cap while the
//! others keep being served.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for what is not a proxied connection: each pod's
/// listeners, pooled HBONE connections, DNS sockets, the CA and the API
/// server.
pub const RESERVED_FDS: u64 = 8192;
/// Descriptors one proxied connection holds at most: the client's and the
/// upstream's.
pub const FDS_PER_CONNECTION: u64 = 2;

/// The caps, for the agent.
pub struct Caps {
    per_pod: usize,
    node: Arc<Semaphore>,
    node_total: usize,
}

/// One way through a pod's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From the pod.
    Outbound,
    /// To the pod.
    Inbound,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Pod,
    Node,
}

impl Caps {
    /// `per_pod` connections each way for every pod, `node` for all of
    /// them together.
    pub fn new(per_pod: usize, node: usize) -> Self {
        Self {
            per_pod,
            node: Arc::new(Semaphore::new(node)),
            node_total: node,
        }
    }

    /// A new pod's share.
    pub fn share(&self) -> Share {
        Share {
            outbound: Arc::new(Semaphore::new(self.per_pod)),
            inbound: Arc::new(Semaphore::new(self.per_pod)),
            node: self.node.clone(),
        }
    }

    pub fn per_pod(&self) -> usize {
        self.per_pod
    }

    pub fn node_total(&self) -> usize {
        self.node_total
    }
}

/// One pod's share of the agent.
pub struct Share {
    outbound: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
    node: Arc<Semaphore>,
}

/// A connection's place in its pod's cap and the node's; given back when
/// dropped.
pub struct Held {
    _pod: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl Share {
    /// A place for one more connection `way`, unless the pod or the node
    /// is at its cap. Never waits: past its cap a connection is refused.
    pub fn take(&self, way: Way) -> Result<Held, Over> {
        let pod = match way {
            Way::Outbound => &self.outbound,
            Way::Inbound => &self.inbound,
        };
        let pod = pod.clone().try_acquire_owned().map_err(|_| Over::Pod)?;
        let node = self
            .node
            .clone()
            .try_acquire_owned()
            .map_err(|_| Over::Node)?;
        Ok(Held {
            _pod: pod,
            _node: node,
        })
    }
}

/// Raises the soft descriptor limit towards what `connections` proxied
/// connections and the reserve need, as far as the hard limit allows;
/// returns how many connections the limit in force leaves room for.
pub fn fit_descriptor_limit(connections: usize) -> std::io::Result<usize> {
    let wanted = RESERVED_FDS + FDS_PER_CONNECTION * connections as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = wanted.min(limit.rlim_max);
    if limit.rlim_cur < target {
        limit.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we own; a soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let room = limit.rlim_cur.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    Ok(connections.min(room as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_past_its_cap_is_refused_and_others_are_not() {
        let caps = Caps::new(2, 3);
        let (a, b) = (caps.share(), caps.share());
        let held: Vec<Held> = (0..2).map(|_| a.take(Way::Outbound).unwrap()).collect();
        assert_eq!(a.take(Way::Outbound).err(), Some(Over::Pod));
        // Inbound to the same pod has a cap of its own.
        let inbound = a.take(Way::Inbound).unwrap();
        // The node's budget (3) is now spent: b is refused by the node.
        assert_eq!(b.take(Way::Outbound).err(), Some(Over::Node));
        drop(held);
        drop(inbound);
        // Given back: b takes the node's whole budget.
        let again = [Way::Outbound, Way::Outbound, Way::Inbound].map(|w| b.take(w));
        assert!(again.iter().all(Result::is_ok));
        assert_eq!(a.take(Way::Inbound).err(), Some(Over::Node));
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_fit() {
        let read = || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we own.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            limit
        };
        let hard = read().rlim_max;
        let room = fit_descriptor_limit(1000).unwrap();
        let expected = (hard.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION).min(1000);
        assert_eq!(room as u64, expected);
        assert!(read().rlim_cur >= (RESERVED_FDS + 2000).min(hard));
    }
}
