//! strait's eBPF programs, loaded and attached by the agent (`agent/capture`).
//!
//! Each node's agent loads its own copy and attaches it to the cgroup subtree
//! that holds that node's pods, so agents sharing a kernel never see each
//! other's pods.
#![no_std]
#![no_main]

mod connect;
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
