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
/// `lo` is always ifindex 1 in a network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn strait_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands the program a valid `bpf_sk_lookup`.
    let lookup = unsafe { &*ctx.lookup };
    // Connections arriving over loopback are the pod talking to itself, or
    // the agent delivering to the app: never captured.
    if lookup.protocol != IPPROTO_TCP || lookup.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let family = lookup.family as u16;
    // Both are read, volatile, before choosing (see sock_ops.rs).
    // SAFETY: both fields are always readable in sk_lookup.
    let (ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&raw const lookup.local_ip4),
            core::ptr::read_volatile(&raw const lookup.local_ip6),
        )
    };
    let ip = if family == AF_INET6 {
        ip6
    } else {
        [ip4, 0, 0, 0]
    };
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
