//! Outbound capture: `cgroup/connect4` and `cgroup/connect6` run on every
//! `connect()` made by a process in the node's pod cgroups.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use strait_ebpf_common::Stat;

use crate::stats::bump;

const IPPROTO_TCP: u32 = 6;
/// Returned to let the `connect()` proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn strait_connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Stat::Connect4, Stat::Connect4Tcp)
}

#[cgroup_sock_addr(connect6)]
pub fn strait_connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Stat::Connect6, Stat::Connect6Tcp)
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, all: Stat, tcp: Stat) -> i32 {
    bump(all);
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr`.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol == IPPROTO_TCP {
        bump(tcp);
    }
    ALLOW
}
