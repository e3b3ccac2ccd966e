//! The last hop keeps the client's address: the agent connects to the app
//! from the pod's own address, and these programs make `accept()` and
//! `getpeername()` report the real client instead, as without the mesh.
use aya_ebpf::{
    helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use strait_ebpf_common::{AF_INET, AF_INET6, NetnsAddr, Stat};

use crate::{addr, maps::PEER_NAMES, stats::bump};

const ALLOW: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn strait_getpeername4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
pub fn strait_getpeername6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, AF_INET6)
}

#[inline(always)]
fn rewrite(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = addr::read(sa, family);
    // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    let (lookup, mapped) = match addr::unmap_v4(&peer) {
        Some(v4) => (v4, true),
        None => (peer, false),
    };
    let key = NetnsAddr {
        // SAFETY: helper valid for sock_addr programs.
        netns: unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) },
        addr: lookup,
        _pad: 0,
    };
    // SAFETY: a plain value lookup.
    let Some(client) = (unsafe { PEER_NAMES.get(key) }).copied() else {
        return ALLOW;
    };
    let answer = if mapped && client.family == AF_INET {
        addr::map_v4(&client)
    } else {
        client
    };
    if answer.family == family {
        addr::write(sa, &answer);
        bump(Stat::PeerNameRewritten);
    }
    ALLOW
}
