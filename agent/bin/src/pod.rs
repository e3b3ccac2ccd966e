//! An enrolled pod as the proxy sees it: its workload and identity, its
//! network namespace (where the agent's connections for it start), its TLS
//! server configuration, and its share of the agent. [`crate::pods`] keeps
//! the table of them.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use socket2::Socket;
use strait_config::Workload;
use strait_ebpf_common::AGENT_MARK;
use strait_identity::Identity;
use strait_netns::{Netns, SocketMaker};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::share::Share;

/// An enrolled pod and what the agent holds for it.
pub struct Pod {
    pub workload: Workload,
    pub identity: Identity,
    pub netns: Netns,
    /// Presents the pod's current certificate, requires a mesh client.
    pub server_tls: Arc<rustls::ServerConfig>,
    /// What HBONE peers hold of this pod's listener.
    pub admission: strait_hbone::Admission,
    /// What the pod may hold of the agent's connections.
    pub share: Share,
    /// The pod's share of the DNS proxy.
    pub dns_forwards: Arc<tokio::sync::Semaphore>,
    pub dns_tcp: Arc<tokio::sync::Semaphore>,
    /// Whether exec probes may run on the node when the workload has no
    /// mount and PID namespaces of its own (`--exec-probes-on-host`).
    pub exec_probes_on_host: bool,
    pub(crate) sockets: SocketMaker,
}

/// The listeners opened in one pod, handed to the proxy.
pub struct Listeners<L = TcpListener, U = UdpSocket> {
    pub outbound: Vec<L>,
    pub hbone: Vec<L>,
    pub plaintext: Vec<L>,
    pub dns_tcp: Vec<L>,
    pub dns_udp: Vec<U>,
}

impl Listeners<std::net::TcpListener, std::net::UdpSocket> {
    /// Registers the sockets with tokio (needs the runtime, not the
    /// namespace: a socket keeps the namespace it was made in).
    pub(crate) fn into_tokio(self) -> std::io::Result<Listeners> {
        let convert = |all: Vec<std::net::TcpListener>| {
            all.into_iter()
                .map(TcpListener::from_std)
                .collect::<std::io::Result<Vec<_>>>()
        };
        Ok(Listeners {
            outbound: convert(self.outbound)?,
            hbone: convert(self.hbone)?,
            plaintext: convert(self.plaintext)?,
            dns_tcp: convert(self.dns_tcp)?,
            dns_udp: self
                .dns_udp
                .into_iter()
                .map(UdpSocket::from_std)
                .collect::<std::io::Result<Vec<_>>>()?,
        })
    }
}

impl Pod {
    pub fn netns_cookie(&self) -> u64 {
        self.netns.cookie()
    }

    /// A TCP connection from inside the pod (so it leaves with the pod's own
    /// address), marked so capture leaves it alone. With `bind_ip`, bound to
    /// that address first; `before_connect` sees the local address before
    /// the connection is attempted.
    pub async fn connect(
        &self,
        to: SocketAddr,
        bind_ip: Option<IpAddr>,
        before_connect: impl FnOnce(SocketAddr),
    ) -> std::io::Result<TcpStream> {
        let domain = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let socket = Socket::from(self.sockets.tcp_socket(domain)?);
        socket.set_mark(AGENT_MARK)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = bind_ip {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        let local = socket
            .local_addr()?
            .as_socket()
            .unwrap_or_else(|| SocketAddr::new(unspecified(to.ip()), 0));
        before_connect(local);
        let std_stream: std::net::TcpStream = socket.into();
        tokio::net::TcpSocket::from_std_stream(std_stream)
            .connect(to)
            .await
    }

    /// The cookie of the pod's UDP socket that a datagram from `from` to
    /// `to` would reach: the client of a DNS query the proxy received.
    pub fn udp_socket_cookie(
        &self,
        from: SocketAddr,
        to: SocketAddr,
    ) -> std::io::Result<Option<u64>> {
        self.sockets.udp_socket_cookie(from, to)
    }

    /// A UDP socket inside the pod, marked so capture leaves it alone.
    pub fn udp_socket(&self, v4: bool) -> std::io::Result<UdpSocket> {
        let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
        let socket = Socket::from(self.sockets.udp_socket(domain)?);
        socket.set_mark(AGENT_MARK)?;
        let any = if v4 {
            IpAddr::from(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        };
        socket.bind(&SocketAddr::new(any, 0).into())?;
        UdpSocket::from_std(socket.into())
    }
}

impl strait_upstream::Origin for Pod {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn workload(&self) -> &Workload {
        &self.workload
    }

    async fn dial(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        self.connect(to, None, |_| ()).await
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}
