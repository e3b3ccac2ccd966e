//! Per-CPU counters the agent reads for metrics and tests.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use strait_ebpf_common::Stat;

#[map(name = "STRAIT_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Stat::COUNT, 0);

#[inline(always)]
pub fn bump(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the slot belongs to this CPU and programs do not migrate
        // between CPUs while they run.
        unsafe { *slot += 1 };
    }
}
