//! Conversions between std's socket addresses and the kernel-side layout.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use strait_ebpf_common::{AF_INET, AF_INET6, SockAddr};

pub fn to_kernel(addr: SocketAddr) -> SockAddr {
    let (ip, family) = ip_words(addr.ip());
    SockAddr {
        ip,
        port: addr.port(),
        family,
    }
}

/// An IPv4-mapped IPv6 address comes back as plain IPv4.
pub fn from_kernel(addr: &SockAddr) -> SocketAddr {
    let ip = if addr.family == AF_INET6 {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(addr.ip) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(bytes);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::from(addr.ip[0].to_ne_bytes()))
    };
    SocketAddr::new(ip, addr.port)
}

/// Address words in network byte order, as the programs read them.
pub fn ip_words(ip: IpAddr) -> ([u32; 4], u16) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], AF_INET6)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["10.1.0.10:8080", "[fd00:10:2::a]:443"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(from_kernel(&to_kernel(addr)), addr);
        }
    }

    #[test]
    fn ipv4_words_are_in_network_order() {
        let (words, family) = ip_words("127.0.0.1".parse().unwrap());
        assert_eq!(family, AF_INET);
        assert_eq!(words[0].to_ne_bytes(), [127, 0, 0, 1]);
    }

    #[test]
    fn mapped_ipv4_comes_back_plain() {
        let mapped: SocketAddr = "[::ffff:10.2.0.10]:80".parse().unwrap();
        assert_eq!(
            from_kernel(&to_kernel(mapped)),
            "10.2.0.10:80".parse::<SocketAddr>().unwrap()
        );
    }
}
