//! DNS capture: a pod's UDP queries to port 53 (`connect()` on a UDP
//! socket, or `sendmsg()` with an address) go to the agent's DNS proxy on
//! the pod's loopback instead; `recvmsg()` then reports the answer as coming
//! from the nameserver the pod asked, so resolvers that check the source
//! accept it. TCP queries are captured by `connect.rs`.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use strait_ebpf_common::{AF_INET, AF_INET6, AGENT_MARK, Stat, port};

use crate::{
    addr,
    maps::{DNS_BY_COOKIE, ENROLLED},
    stats::bump,
};

const IPPROTO_UDP: u32 = 17;
const ALLOW: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub fn strait_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn strait_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, AF_INET6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn strait_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn strait_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, AF_INET6)
}

/// Sends a UDP query for port 53 of an enrolled pod to the DNS proxy,
/// remembering the nameserver by socket: the proxy forwards to it and the
/// answer appears to come from it.
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP {
        return ALLOW;
    }
    let original = addr::read(sa, family);
    if original.port != port::NAMESERVER || addr::is_loopback(&original) {
        return ALLOW;
    }
    // SAFETY: `sk` is always set for these hooks.
    if unsafe { (*sa.__bindgen_anon_1.sk).mark } == AGENT_MARK {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs; it reads the context only.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: a plain value lookup.
    if unsafe { ENROLLED.get(netns) }.is_none() {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // Without the record the proxy could neither forward the query (it
    // finds the nameserver by the client socket's cookie) nor answer as the
    // nameserver: leave the query alone.
    if DNS_BY_COOKIE.insert(cookie, original, 0).is_err() {
        return ALLOW;
    }
    addr::write(sa, &addr::pod_loopback(&original, port::DNS));
    bump(Stat::DnsRedirected);
    ALLOW
}

/// An answer from the DNS proxy, reported as coming from the nameserver
/// this socket asked.
#[inline(always)]
fn restore(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let source = addr::read(sa, family);
    if source.port != port::DNS || !addr::is_loopback(&source) {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: a plain value lookup.
    let Some(original) = (unsafe { DNS_BY_COOKIE.get(cookie) }).copied() else {
        return ALLOW;
    };
    let answer = if family == AF_INET6 && original.family == AF_INET {
        addr::map_v4(&original)
    } else {
        original
    };
    if answer.family == family {
        addr::write(sa, &answer);
        bump(Stat::DnsAnswerRestored);
    }
    ALLOW
}
