//! Every map the programs share with the agent. All are pinned by name, so a
//! restarted agent finds the same state.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, SockHash},
};
use strait_ebpf_common::{ListenerKey, NetnsAddr, PodAddr, SockAddr};

/// Network namespaces (by cookie) of enrolled pods.
#[map(name = "STRAIT_ENROLLED")]
pub static ENROLLED: HashMap<u64, u32> = HashMap::pinned(16_384, 0);

/// Original destination of a redirected connect, by socket cookie, until
/// the connection is established.
#[map(name = "STRAIT_ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(65_536, 0);

/// Original destination by the client's (netns, address, port): what the
/// agent sees as the peer of the connection it accepts.
#[map(name = "STRAIT_ORIG_BY_TUPLE")]
pub static ORIG_BY_TUPLE: LruHashMap<NetnsAddr, SockAddr> = LruHashMap::pinned(65_536, 0);

/// Addresses of enrolled pods on this node.
#[map(name = "STRAIT_POD_ADDRS")]
pub static POD_ADDRS: HashMap<PodAddr, u64> = HashMap::pinned(16_384, 0);

/// The agent's inbound listeners, per pod address and kind.
#[map(name = "STRAIT_LISTENERS")]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(32_768, 0);

/// The nameserver a UDP socket meant to ask, by socket cookie: answers
/// from the DNS proxy are made to come from it.
#[map(name = "STRAIT_DNS_BY_COOKIE")]
pub static DNS_BY_COOKIE: LruHashMap<u64, SockAddr> = LruHashMap::pinned(65_536, 0);

/// Real client of a connection the agent opened to a pod's app, by the
/// agent socket's (netns, address, port): what `getpeername()` should say.
#[map(name = "STRAIT_PEER_NAMES")]
pub static PEER_NAMES: LruHashMap<NetnsAddr, SockAddr> = LruHashMap::pinned(65_536, 0);
