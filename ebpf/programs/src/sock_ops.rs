//! Hands a redirected connection's original destination to the agent. At
//! `connect()` the client's port is not chosen yet, so the record is keyed by
//! socket cookie; once the connection is established this re-keys it by the
//! client's (netns, address, port), which is what the agent sees after
//! `accept()`. It runs before the agent can accept: the handshake's last ACK
//! leaves only after this callback.
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use strait_ebpf_common::{AF_INET6, NetnsAddr, SockAddr, Stat};

use crate::{
    maps::{ORIG_BY_COOKIE, ORIG_BY_TUPLE},
    stats::bump,
};

#[sock_ops]
pub fn strait_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        rekey(&ctx);
    }
    0
}

#[inline(always)]
fn rekey(ctx: &SockOpsContext) {
    // SAFETY: helpers valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: a plain value lookup.
    let Some(original) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
        return;
    };
    let family = ctx.family() as u16;
    // Both are read, volatile, before choosing: LLVM otherwise sinks the read
    // into the branch as pointer arithmetic on the context, which the
    // verifier refuses.
    // SAFETY: `ops` is the valid context; both fields are always readable.
    let (ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ops).local_ip4),
            core::ptr::read_volatile(&raw const (*ctx.ops).local_ip6),
        )
    };
    let ip = if family == AF_INET6 {
        ip6
    } else {
        [ip4, 0, 0, 0]
    };
    let key = NetnsAddr {
        // SAFETY: as above.
        netns: unsafe { bpf_get_netns_cookie(ctx.ops.cast()) },
        addr: SockAddr {
            ip,
            // sock_ops gives the local port in host byte order.
            port: ctx.local_port() as u16,
            family,
        },
        _pad: 0,
    };
    if ORIG_BY_TUPLE.insert(key, original, 0).is_ok() {
        let _ = ORIG_BY_COOKIE.remove(cookie);
        bump(Stat::OrigDstRekeyed);
    }
}
