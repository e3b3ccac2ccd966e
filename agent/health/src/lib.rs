//! Workload readiness. An endpoint gets connections only while its
//! workload is ready:
//!
//! - its object may say it is not (a WorkloadEntry whose `Healthy`
//!   condition is `False`);
//! - a workload in a WorkloadGroup with a `probe` is ready once the probe
//!   passes, as a pod with a readiness probe is. The agent of the
//!   workload's node runs the probe ([`probe`]) and publishes the result on
//!   the [`board`], which every agent reads.
pub mod board;
pub mod probe;

pub use board::{Board, NodeReport, Status};
pub use probe::{Check, Settings, Target, Tracker};

use strait_config::Workload;

/// Whether `w` may take connections, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// The board's key for a workload.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `w`'s readiness: its object's word, then its probe's result. A workload
/// with a probe that has not reported yet is not ready.
pub fn readiness(board: &Board, w: &Workload) -> Readiness {
    if !w.ready {
        return Readiness::NotReady("Healthy condition is False".into());
    }
    if w.probe.is_none() {
        return Readiness::Ready;
    }
    let Some(node) = &w.node else {
        return Readiness::NotReady("no node runs its probe".into());
    };
    match board.status(node, &key(&w.namespace, &w.name)) {
        Some(s) if s.ready => Readiness::Ready,
        Some(s) => Readiness::NotReady(s.reason),
        None => Readiness::NotReady("probe has not passed yet".into()),
    }
}
