//! Outbound capture: `cgroup/connect4` and `cgroup/connect6` run on every
//! `connect()` made by a process in the node's pod cgroups. A TCP connect from
//! an enrolled pod is rewritten to the agent's outbound listener inside that
//! pod's network namespace (its DNS proxy for port 53), and its original
//! destination remembered. UDP connects to port 53 are DNS's (`dns.rs`).
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use strait_ebpf_common::{AF_INET, AF_INET6, AGENT_MARK, SockAddr, Stat, port};

use crate::{
    addr, dns,
    maps::{ENROLLED, ORIG_BY_COOKIE},
    stats::bump,
};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// Returned to let the `connect()` proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn strait_connect4(ctx: SockAddrContext) -> i32 {
    capture(&ctx, AF_INET, Stat::Connect4, Stat::Connect4Tcp)
}

#[cgroup_sock_addr(connect6)]
pub fn strait_connect6(ctx: SockAddrContext) -> i32 {
    capture(&ctx, AF_INET6, Stat::Connect6, Stat::Connect6Tcp)
}

#[inline(always)]
fn capture(ctx: &SockAddrContext, family: u16, all: Stat, tcp: Stat) -> i32 {
    bump(all);
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol == IPPROTO_UDP {
        return dns::redirect(ctx, family);
    }
    if sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    bump(tcp);
    // SAFETY: `sk` is always set for connect hooks.
    let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
    if mark == AGENT_MARK {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs; it reads the context only.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: lookups of plain values.
    if unsafe { ENROLLED.get(netns) }.is_none() {
        return ALLOW;
    }
    let original = addr::read(sa, family);
    if addr::is_loopback(&original) || original.port == port::HBONE {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if ORIG_BY_COOKIE.insert(cookie, original, 0).is_err() {
        // Without a record the agent could not forward it: leave it alone.
        return ALLOW;
    }
    let to = if original.port == port::NAMESERVER {
        port::DNS
    } else {
        port::OUTBOUND
    };
    addr::write(sa, &listener(family, to));
    bump(Stat::Redirected);
    ALLOW
}

/// The agent's listener on the pod's loopback (the sock_ops hand-over keys
/// an IPv6 socket's connection by its ::1 address).
#[inline(always)]
fn listener(family: u16, port: u16) -> SockAddr {
    let ip = if family == AF_INET6 {
        [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
    } else {
        [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0]
    };
    SockAddr { ip, port, family }
}
