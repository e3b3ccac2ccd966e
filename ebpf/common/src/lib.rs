//! The contract between strait's kernel-side programs (`ebpf/programs`) and
//! the agent that loads them: program and map names, the layout of keys and
//! values they share, and the ports capture redirects to. Kept `no_std` so
//! both sides compile the same definitions.
#![cfg_attr(not(test), no_std)]

/// Names of the programs in the object, as the agent looks them up.
pub mod program {
    pub const CONNECT4: &str = "strait_connect4";
    pub const CONNECT6: &str = "strait_connect6";
    pub const GETPEERNAME4: &str = "strait_getpeername4";
    pub const GETPEERNAME6: &str = "strait_getpeername6";
    pub const SENDMSG4: &str = "strait_sendmsg4";
    pub const SENDMSG6: &str = "strait_sendmsg6";
    pub const RECVMSG4: &str = "strait_recvmsg4";
    pub const RECVMSG6: &str = "strait_recvmsg6";
    pub const SOCK_OPS: &str = "strait_sock_ops";
    pub const SK_LOOKUP: &str = "strait_sk_lookup";
    /// `cgroup/sock_addr` programs the agent attaches to a node's cgroup
    /// subtree.
    pub const SOCK_ADDR_PROGRAMS: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        GETPEERNAME4,
        GETPEERNAME6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
    ];
}

/// Names of the maps in the object; they are pinned by these names.
pub mod map {
    pub const STATS: &str = "STRAIT_STATS";
    pub const ENROLLED: &str = "STRAIT_ENROLLED";
    pub const ORIG_BY_COOKIE: &str = "STRAIT_ORIG_BY_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "STRAIT_ORIG_BY_TUPLE";
    pub const POD_ADDRS: &str = "STRAIT_POD_ADDRS";
    pub const LISTENERS: &str = "STRAIT_LISTENERS";
    pub const PEER_NAMES: &str = "STRAIT_PEER_NAMES";
    pub const DNS_BY_COOKIE: &str = "STRAIT_DNS_BY_COOKIE";
}

/// Ports of the agent's listeners inside each enrolled pod's network
/// namespace (the ambient conventions).
pub mod port {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    pub const HBONE: u16 = 15008;
    /// The DNS proxy (UDP and TCP), on the pod's loopback.
    pub const DNS: u16 = 15053;
    /// What the DNS proxy answers in place of.
    pub const NAMESERVER: u16 = 53;

    /// Whether the agent listens on `port` inside an enrolled pod: a
    /// connection delivered there would come back into the agent.
    pub const fn is_pod_listener(port: u16) -> bool {
        matches!(port, OUTBOUND | INBOUND_PLAINTEXT | HBONE | DNS)
    }
}

/// `SO_MARK` on the agent's own sockets: capture leaves them alone even when
/// the agent runs inside the captured cgroup subtree (as a pod does).
pub const AGENT_MARK: u32 = 0x539;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An IPv4 or IPv6 socket address as the kernel hands it to programs:
/// address words in network byte order (IPv4 in `ip[0]`, the rest zero),
/// port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAddr {
    pub ip: [u32; 4],
    pub port: u16,
    pub family: u16,
}

/// A socket address within one network namespace (by netns cookie):
/// addresses such as 127.0.0.1 repeat across pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetnsAddr {
    pub netns: u64,
    pub addr: SockAddr,
    /// Keeps the layout free of implicit padding, which would be hashed.
    pub _pad: u32,
}

/// An enrolled pod's address (`SockAddr` with port 0).
pub type PodAddr = SockAddr;

/// Which of a pod's inbound listeners a connection goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub ip: [u32; 4],
    pub family: u16,
    pub kind: u16,
}

pub mod listener {
    /// Port 15008: HBONE.
    pub const HBONE: u16 = 1;
    /// Any other port: plaintext, checked against PeerAuthentication.
    pub const PLAINTEXT: u16 = 2;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `repr(C)` data without implicit padding.
    unsafe impl aya::Pod for super::SockAddr {}
    // SAFETY: as above; `_pad` makes the padding explicit.
    unsafe impl aya::Pod for super::NetnsAddr {}
    // SAFETY: plain `repr(C)` data without implicit padding.
    unsafe impl aya::Pod for super::ListenerKey {}
}

/// Counters in the per-CPU `STATS` array, by index.
///
/// The agent sums the per-CPU slots; the programs bump only their own CPU's
/// slot, so no atomics are needed on the data path.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// `connect()` calls on IPv4 sockets seen by `cgroup/connect4`.
    Connect4 = 0,
    /// Of those, TCP.
    Connect4Tcp = 1,
    /// `connect()` calls on IPv6 sockets seen by `cgroup/connect6`.
    Connect6 = 2,
    /// Of those, TCP.
    Connect6Tcp = 3,
    /// TCP connects redirected to the agent's outbound listener.
    Redirected = 4,
    /// Redirected connects whose original destination was handed over to the
    /// agent (re-keyed by the client's address once established).
    OrigDstRekeyed = 5,
    /// Inbound connections steered to an agent listener by `sk_lookup`.
    InboundSteered = 6,
    /// Inbound connections to an enrolled pod dropped because the agent's
    /// listener is not there (agent restarting): the client retransmits.
    InboundNoListener = 7,
    /// `getpeername()`/`accept()` answers rewritten to the real client.
    PeerNameRewritten = 8,
    /// DNS queries (UDP `connect`/`sendmsg` to port 53) sent to the agent's
    /// DNS proxy instead.
    DnsRedirected = 9,
    /// DNS answers whose source was set back to the nameserver asked.
    DnsAnswerRestored = 10,
}

impl Stat {
    pub const ALL: [Stat; 11] = [
        Stat::Connect4,
        Stat::Connect4Tcp,
        Stat::Connect6,
        Stat::Connect6Tcp,
        Stat::Redirected,
        Stat::OrigDstRekeyed,
        Stat::InboundSteered,
        Stat::InboundNoListener,
        Stat::PeerNameRewritten,
        Stat::DnsRedirected,
        Stat::DnsAnswerRestored,
    ];
    /// Slots in the map; grows when a counter is added.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The name metrics and the admin endpoint use for this counter.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Connect4 => "connect4",
            Stat::Connect4Tcp => "connect4_tcp",
            Stat::Connect6 => "connect6",
            Stat::Connect6Tcp => "connect6_tcp",
            Stat::Redirected => "redirected",
            Stat::OrigDstRekeyed => "orig_dst_rekeyed",
            Stat::InboundSteered => "inbound_steered",
            Stat::InboundNoListener => "inbound_no_listener",
            Stat::PeerNameRewritten => "peer_name_rewritten",
            Stat::DnsRedirected => "dns_redirected",
            Stat::DnsAnswerRestored => "dns_answer_restored",
        }
    }
}

/// The Rust toolchain that compiles the programs (`cargo xtask setup`
/// installs it). Dated, not rolling: bpf-linker links with this toolchain's
/// own LLVM (22) and is built for that version, and aya-ebpf must build on it.
pub const BPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// Version of the pinned-object layout. Bump it when a map's key or value
/// layout changes so that an upgraded agent does not reuse maps it cannot read.
pub const PIN_LAYOUT_VERSION: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_indices_are_dense_and_in_order() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as u32, i as u32, "{stat:?} is out of place");
        }
    }

    #[test]
    fn stat_names_are_unique() {
        for (i, a) in Stat::ALL.iter().enumerate() {
            for b in &Stat::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn shared_types_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SockAddr>(), 20);
        assert_eq!(core::mem::size_of::<NetnsAddr>(), 32);
        assert_eq!(core::mem::size_of::<ListenerKey>(), 20);
    }
}
