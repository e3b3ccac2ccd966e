//! strait's eBPF programs, loaded and attached by the agent (`agent/capture`).
//!
//! Each node's agent loads its own copy and attaches it to the cgroup subtree
//! that holds that node's pods (and `sk_lookup` to each enrolled pod's network
//! namespace), so agents sharing a kernel never see each other's pods.
//!
//! - `connect.rs`: outbound capture, the rewrite to the agent's listener;
//! - `sock_ops.rs`: hands the original destination over to the agent;
//! - `sk_lookup.rs`: inbound capture, steering to the agent's listeners;
//! - `peer_name.rs`: the server app sees the real client address;
//! - `dns.rs`: DNS queries go to the agent's DNS proxy.
#![no_std]
#![no_main]

mod addr;
mod connect;
mod dns;
mod maps;
mod peer_name;
mod sk_lookup;
mod sock_ops;
mod stats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
