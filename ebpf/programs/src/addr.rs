//! Reading and writing socket addresses in program contexts.
use aya_ebpf::bindings::bpf_sock_addr;
use strait_ebpf_common::{AF_INET, AF_INET6, SockAddr};

/// The address a `bpf_sock_addr` context carries (the destination for
/// connect, the peer for getpeername).
#[inline(always)]
pub fn read(sa: &bpf_sock_addr, family: u16) -> SockAddr {
    let ip = if family == AF_INET6 {
        sa.user_ip6
    } else {
        [sa.user_ip4, 0, 0, 0]
    };
    SockAddr {
        ip,
        port: u16::from_be(sa.user_port as u16),
        family,
    }
}

#[inline(always)]
pub fn write(sa: &mut bpf_sock_addr, addr: &SockAddr) {
    if addr.family == AF_INET6 {
        sa.user_ip6 = addr.ip;
    } else {
        sa.user_ip4 = addr.ip[0];
    }
    sa.user_port = u32::from(addr.port.to_be());
}

/// `::ffff:a.b.c.d` as the plain IPv4 address, so both spellings of an IPv4
/// peer find the same map entry.
#[inline(always)]
pub fn unmap_v4(addr: &SockAddr) -> Option<SockAddr> {
    let [a, b, c, d] = addr.ip;
    let ffff = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    (addr.family == AF_INET6 && a == 0 && b == 0 && c == ffff).then_some(SockAddr {
        ip: [d, 0, 0, 0],
        port: addr.port,
        family: AF_INET,
    })
}

/// `a.b.c.d` as `::ffff:a.b.c.d`, for answers on an IPv6 socket.
#[inline(always)]
pub fn map_v4(addr: &SockAddr) -> SockAddr {
    SockAddr {
        ip: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr.ip[0]],
        port: addr.port,
        family: AF_INET6,
    }
}

/// The pod's own loopback at `port`, in the form a socket that was going to
/// `original` can reach: 127.0.0.1, ::1, or ::ffff:127.0.0.1 for an IPv4
/// destination on a dual-stack socket.
#[inline(always)]
pub fn pod_loopback(original: &SockAddr, port: u16) -> SockAddr {
    let v4 = SockAddr {
        ip: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
        port,
        family: AF_INET,
    };
    if original.family == AF_INET {
        v4
    } else if unmap_v4(original).is_some() {
        map_v4(&v4)
    } else {
        SockAddr {
            ip: [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
            port,
            family: AF_INET6,
        }
    }
}

/// Loopback (127/8, ::1, ::ffff:127/104): traffic that stays inside the pod.
#[inline(always)]
pub fn is_loopback(addr: &SockAddr) -> bool {
    if addr.family == AF_INET {
        return addr.ip[0].to_ne_bytes()[0] == 127;
    }
    if let Some(v4) = unmap_v4(addr) {
        return v4.ip[0].to_ne_bytes()[0] == 127;
    }
    addr.ip == [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
}
