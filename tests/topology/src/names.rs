//! Every object a topology makes carries a name the library owns:
//! `strait-t-<pid>-<start time>-<seq>`, the run id naming the process that
//! made it. A later run recognises leftovers of a run whose process is gone
//! and removes them; objects of live runs, and anything without the prefix,
//! are never touched.
use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
};

/// The prefix of every netns, cgroup and pin directory a topology makes.
pub const PREFIX: &str = "strait-t";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Identifies one topology: which process made it, and which of its
/// topologies it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId {
    pub pid: u32,
    pub start_time: u64,
    pub seq: u32,
}

impl RunId {
    /// A new id for a topology of this process.
    pub fn new() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// `strait-t-<pid>-<start>-<seq>`.
    pub fn name(&self) -> String {
        format!("{PREFIX}-{}-{}-{}", self.pid, self.start_time, self.seq)
    }

    /// Reads the run id back from a name made by [`RunId::name`], possibly
    /// followed by `-<suffix>`.
    pub fn parse(name: &str) -> Option<(Self, &str)> {
        let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
        let mut parts = rest.splitn(4, '-');
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let suffix = parts.next().unwrap_or("");
        Some((
            Self {
                pid,
                start_time,
                seq,
            },
            suffix,
        ))
    }

    /// Whether the process that made this run still runs (the same process,
    /// not a later one that reused its pid).
    pub fn owner_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot. With the pid it names a process uniquely.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = RunId::new();
        let name = format!("{}-node-a1", id.name());
        let (parsed, suffix) = RunId::parse(&name).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(suffix, "node-a1");
        assert_eq!(RunId::parse(&id.name()).unwrap().1, "");
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "strait",
            "strait-t",
            "strait-t-x-1-2",
            "cni-1234",
            "strait-t-1-2",
        ] {
            assert!(RunId::parse(name).is_none(), "{name}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let id = RunId::new();
        assert!(id.owner_alive());
        let stale = RunId {
            start_time: id.start_time + 1,
            ..id.clone()
        };
        assert!(!stale.owner_alive());
        let gone = RunId {
            pid: u32::MAX - 1,
            ..id
        };
        assert!(!gone.owner_alive());
    }
}
