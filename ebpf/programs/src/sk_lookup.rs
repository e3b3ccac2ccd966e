//! Inbound capture: attached to each enrolled pod's network namespace, it
//! steers TCP connections to the pod's addresses to the agent's listeners
//! there: 15008 to the HBONE listener, any other port to the plaintext one.
use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use strait_ebpf_common::{AF_INET6, ListenerKey, PodAddr, Stat, listener, port};

use crate::{
    maps::{LISTENERS, POD_ADDRS},
    stats::bump,
};

const IPPROTO_TCP: u32 = 6;

#[sk_lookup]
pub fn strait_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands the program a valid `bpf_sk_lookup`.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let family = lookup.family as u16;
    // All are read, volatile, before choosing: LLVM otherwise sinks a read
    // into the branch as pointer arithmetic on the context, which the
    // verifier refuses.
    // SAFETY: these fields are always readable in sk_lookup.
    let (ip4, ip6, remote4, remote6) = unsafe {
        (
            core::ptr::read_volatile(&raw const lookup.local_ip4),
            core::ptr::read_volatile(&raw const lookup.local_ip6),
            core::ptr::read_volatile(&raw const lookup.remote_ip4),
            core::ptr::read_volatile(&raw const lookup.remote_ip6),
        )
    };
    let (ip, remote) = if family == AF_INET6 {
        (ip6, remote6)
    } else {
        ([ip4, 0, 0, 0], [remote4, 0, 0, 0])
    };
    // From the pod's own address: the pod talking to itself, or the agent
    // delivering to the app. Never captured (the agent would loop).
    if ip == remote {
        return SK_PASS;
    }
    let pod = PodAddr {
        ip,
        port: 0,
        family,
    };
    // SAFETY: a plain value lookup.
    if unsafe { POD_ADDRS.get(pod) }.is_none() {
        return SK_PASS;
    }
    let kind = if lookup.local_port == u32::from(port::HBONE) {
        listener::HBONE
    } else {
        listener::PLAINTEXT
    };
    let key = ListenerKey { ip, family, kind };
    match LISTENERS.redirect_sk_lookup(&ctx, key, 0) {
        Ok(()) => {
            bump(Stat::InboundSteered);
            SK_PASS
        }
        Err(_) => {
            // Enrolled, but the agent is not listening (restarting): drop the
            // SYN rather than let it reach the app unchecked; the client
            // retransmits and the next agent picks it up.
            bump(Stat::InboundNoListener);
            SK_DROP
        }
    }
}
