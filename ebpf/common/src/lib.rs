//! The contract between strait's kernel-side programs (`ebpf/programs`) and
//! the agent that loads them: program and map names, and the layout of the
//! values they share. Kept `no_std` so both sides compile the same definitions.
#![cfg_attr(not(test), no_std)]

/// Names of the programs in the object, as the agent looks them up.
pub mod program {
    pub const CONNECT4: &str = "strait_connect4";
    pub const CONNECT6: &str = "strait_connect6";
    /// Every program the agent attaches to a node's cgroup subtree.
    pub const CGROUP_PROGRAMS: [&str; 2] = [CONNECT4, CONNECT6];
}

/// Names of the maps in the object; they are pinned by these names.
pub mod map {
    pub const STATS: &str = "STRAIT_STATS";
}

/// Counters in the per-CPU `STATS` array, by index.
///
/// The agent sums the per-CPU slots; the programs bump only their own CPU's
/// slot, so no atomics are needed on the data path.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// `connect()` calls on IPv4 sockets seen by `cgroup/connect4`.
    Connect4 = 0,
    /// Of those, TCP.
    Connect4Tcp = 1,
    /// `connect()` calls on IPv6 sockets seen by `cgroup/connect6`.
    Connect6 = 2,
    /// Of those, TCP.
    Connect6Tcp = 3,
}

impl Stat {
    pub const ALL: [Stat; 4] = [
        Stat::Connect4,
        Stat::Connect4Tcp,
        Stat::Connect6,
        Stat::Connect6Tcp,
    ];
    /// Slots in the map; grows when a counter is added.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The name metrics and the admin endpoint use for this counter.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Connect4 => "connect4",
            Stat::Connect4Tcp => "connect4_tcp",
            Stat::Connect6 => "connect6",
            Stat::Connect6Tcp => "connect6_tcp",
        }
    }
}

/// Version of the pinned-object layout. Bump it when a map's key or value
/// layout changes so that an upgraded agent does not reuse maps it cannot read.
pub const PIN_LAYOUT_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_indices_are_dense_and_in_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as u32, i as u32, "{stat:?} is out of place");
        }
    }

    #[test]
    fn stat_names_are_unique() {
        for (i, a) in Stat::ALL.iter().enumerate() {
            for b in &Stat::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
