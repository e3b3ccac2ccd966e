//! A pod's network namespace, as the agent uses it: identified by the
//! kernel's netns cookie (what the eBPF programs see), entered by a thread to
//! make sockets that belong to the pod (listeners, upstream connections), and
//! found from the pod's address when nothing names it.
use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("{what} in network namespace {path}: {source}")]
    Inside {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the thread working in {path} panicked")]
    Panicked { path: PathBuf },
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
    cookie: u64,
}

impl Netns {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let file = File::open(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let mut netns = Self {
            path,
            file,
            cookie: 0,
        };
        netns.cookie = netns
            .run(|| {
                let sock = socket(libc::AF_INET, libc::SOCK_DGRAM)?;
                cookie_of(sock.as_fd())
            })?
            .map_err(|source| Error::Inside {
                what: "reading the netns cookie",
                path: netns.path.clone(),
                source,
            })?;
        Ok(netns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's id for this namespace (`bpf_get_netns_cookie`).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on a thread inside this namespace. Sockets `f` creates belong
    /// to the namespace for their whole life, wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on an fd we keep open; it changes only
                    // this thread, which ends with the scope.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(Error::Enter {
                            path: self.path.clone(),
                            source: io::Error::last_os_error(),
                        });
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| Error::Panicked {
                    path: self.path.clone(),
                })?
        })
    }

    /// The IP addresses configured on interfaces in this namespace.
    pub fn addresses(&self) -> Result<Vec<IpAddr>, Error> {
        self.run(interface_addresses)?
            .map_err(|source| Error::Inside {
                what: "listing addresses",
                path: self.path.clone(),
                source,
            })
    }

    /// The namespace file's metadata (its device and inode identify the
    /// namespace, as `/proc/<pid>/ns/net` shows it).
    pub fn as_fd_metadata(&self) -> Result<std::fs::Metadata, io::Error> {
        self.file.metadata()
    }

    /// Whether the path still names this namespace: a pod's namespace
    /// deleted, or recreated under the same name, is another namespace
    /// (another cookie) for the capture programs.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(held), Ok(named)) = (self.file.metadata(), std::fs::metadata(&self.path)) else {
            return false;
        };
        (held.dev(), held.ino()) == (named.dev(), named.ino())
    }

    /// The namespaces under `dir` (such as `/run/netns`) and their
    /// addresses, for finding pods by address. One thread visits them all
    /// in turn (entering a namespace is per thread); run it off the async
    /// runtime. Entries that cannot be opened or entered are skipped.
    pub fn scan(dir: &Path) -> Result<Vec<(PathBuf, Vec<IpAddr>)>, Error> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Open {
                path: dir.into(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    paths
                        .into_iter()
                        .filter_map(|path| {
                            let file = File::open(&path).ok()?;
                            // SAFETY: setns on an fd we hold; this thread
                            // ends with the scope, in whichever namespace.
                            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                                return None;
                            }
                            Some((path, interface_addresses().ok()?))
                        })
                        .collect()
                })
                .join()
                .map_err(|_| Error::Panicked { path: dir.into() })
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Makes sockets in a pod's namespace from any thread: the calling thread
/// enters the namespace for the one `socket()` call and goes back. A socket
/// keeps the namespace it was made in, and nothing else runs on the thread
/// in between, so this costs two `setns` calls instead of a hand-off to a
/// thread living in the namespace.
pub struct SocketMaker {
    target: File,
    home: File,
    path: PathBuf,
}

impl SocketMaker {
    /// `home` is the namespace the calling threads live in (the agent's).
    pub fn new(netns: &Netns, home: &Netns) -> Result<Self, Error> {
        let clone = |n: &Netns| {
            n.file.try_clone().map_err(|source| Error::Open {
                path: n.path.clone(),
                source,
            })
        };
        Ok(Self {
            target: clone(netns)?,
            home: clone(home)?,
            path: netns.path.clone(),
        })
    }

    /// A new non-blocking TCP socket in the namespace (`domain`:
    /// `AF_INET` or `AF_INET6`).
    pub fn tcp_socket(&self, domain: libc::c_int) -> io::Result<OwnedFd> {
        self.socket(domain, libc::SOCK_STREAM)
    }

    /// A new non-blocking UDP socket in the namespace.
    pub fn udp_socket(&self, domain: libc::c_int) -> io::Result<OwnedFd> {
        self.socket(domain, libc::SOCK_DGRAM)
    }

    /// The socket cookie of the UDP socket in the namespace that a datagram
    /// from `from` to `to` would be delivered to (asked of the kernel's
    /// sock_diag): which client socket sent a query the agent received.
    pub fn udp_socket_cookie(&self, from: SocketAddr, to: SocketAddr) -> io::Result<Option<u64>> {
        let diag = self.socket_of(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG)?;
        udp_cookie(&diag, from, to)
    }

    fn socket(&self, domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
        self.socket_of(domain, kind | libc::SOCK_NONBLOCK, 0)
    }

    fn socket_of(
        &self,
        domain: libc::c_int,
        kind: libc::c_int,
        protocol: libc::c_int,
    ) -> io::Result<OwnedFd> {
        // SAFETY: setns on descriptors we own; it changes only this thread.
        if unsafe { libc::setns(self.target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = socket_with(domain, kind, protocol);
        // SAFETY: as above, back to the namespace the thread came from.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // The thread would go on making the agent's own sockets in a
            // pod's namespace: no state to recover from safely.
            eprintln!(
                "strait: cannot leave network namespace {}: {}; aborting",
                self.path.display(),
                io::Error::last_os_error()
            );
            std::process::abort();
        }
        socket
    }
}

/// The netns cookie of the namespace a socket belongs to.
pub fn cookie_of(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A new close-on-exec socket in the calling thread's namespace.
pub fn socket(domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    socket_with(domain, kind, 0)
}

fn socket_with(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd: RawFd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
/// `struct nlmsghdr`, `struct inet_diag_req_v2` and `struct inet_diag_msg`
/// (linux/inet_diag.h): sizes and where the fields sit.
const NLMSG_HDR: usize = 16;
const DIAG_REQ: usize = 56;
const SOCKID_AT: usize = 8; // in the request; 4 in the answer
const COOKIE_IN_SOCKID: usize = 40;

/// One sock_diag exact lookup of a UDP socket. The kernel looks the socket
/// up as for a datagram from the request's "source" to its "destination"
/// (the fields are swapped for historical reasons), and answers with an
/// `inet_diag_msg` that carries the socket's cookie.
fn udp_cookie(diag: &OwnedFd, from: SocketAddr, to: SocketAddr) -> io::Result<Option<u64>> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut req = [0u8; NLMSG_HDR + DIAG_REQ];
    req[0..4].copy_from_slice(&((NLMSG_HDR + DIAG_REQ) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    let body = &mut req[NLMSG_HDR..];
    body[0] = family as u8;
    body[1] = libc::IPPROTO_UDP as u8;
    body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = &mut body[SOCKID_AT..];
    id[0..2].copy_from_slice(&from.port().to_be_bytes());
    id[2..4].copy_from_slice(&to.port().to_be_bytes());
    let octets = |ip: IpAddr| -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&v4.octets());
                o
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    };
    id[4..20].copy_from_slice(&octets(from.ip()));
    id[20..36].copy_from_slice(&octets(to.ip()));
    // INET_DIAG_NOCOOKIE: do not check the cookie, report it.
    id[COOKIE_IN_SOCKID..COOKIE_IN_SOCKID + 8].copy_from_slice(&[0xff; 8]);
    // SAFETY: send from a buffer we own, on a socket we own.
    let sent = unsafe { libc::send(diag.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 512];
    // SAFETY: recv into a buffer we own.
    let len = unsafe {
        libc::recv(
            diag.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let answer = &answer[..len as usize];
    if answer.len() < NLMSG_HDR {
        return Err(io::Error::other("short sock_diag answer"));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind == NLMSG_ERROR {
        // ENOENT: no such socket (it closed).
        return Ok(None);
    }
    let cookie_at = NLMSG_HDR + 4 + COOKIE_IN_SOCKID;
    let Some(cookie) = answer.get(cookie_at..cookie_at + 8) else {
        return Err(io::Error::other("short sock_diag answer"));
    };
    let low = u32::from_ne_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
    let high = u32::from_ne_bytes([cookie[4], cookie[5], cookie[6], cookie[7]]);
    Ok(Some(u64::from(high) << 32 | u64::from(low)))
}

fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: family checked.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    // SAFETY: family checked.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_cookie_and_loopback() {
        let me = Netns::open("/proc/self/ns/net").unwrap();
        assert_ne!(me.cookie(), 0);
        let here = socket(libc::AF_INET, libc::SOCK_STREAM).unwrap();
        assert_eq!(cookie_of(here.as_fd()).unwrap(), me.cookie());
        assert!(
            me.addresses()
                .unwrap()
                .contains(&IpAddr::from([127, 0, 0, 1]))
        );
    }

    #[test]
    fn socket_maker_makes_sockets_there_and_comes_back() {
        let me = Netns::open("/proc/self/ns/net").unwrap();
        let maker = SocketMaker::new(&me, &me).unwrap();
        let fd = maker.tcp_socket(libc::AF_INET6).unwrap();
        assert_eq!(cookie_of(fd.as_fd()).unwrap(), me.cookie());
        let after = socket(libc::AF_INET, libc::SOCK_STREAM).unwrap();
        assert_eq!(cookie_of(after.as_fd()).unwrap(), me.cookie());
    }

    #[test]
    fn a_namespace_is_current_while_its_path_names_it() {
        let me = Netns::open("/proc/self/ns/net").unwrap();
        assert!(me.is_current());
        let dir = std::env::temp_dir().join(format!("strait-netns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-netns");
        std::fs::write(&file, "").unwrap();
        let moved = Netns {
            path: file.clone(),
            file: File::open("/proc/self/ns/net").unwrap(),
            cookie: me.cookie(),
        };
        assert!(!moved.is_current(), "another file at the path");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!moved.is_current(), "nothing at the path");
    }

    #[test]
    fn scan_lists_namespaces_with_their_addresses() {
        let dir = std::env::temp_dir().join(format!("strait-netns-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/proc/self/ns/net", dir.join("self")).unwrap();
        std::fs::write(dir.join("junk"), "").unwrap();
        let found = Netns::scan(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains(&IpAddr::from([127, 0, 0, 1])));
    }

    /// The cookie sock_diag reports is the one the socket has.
    #[test]
    fn finds_a_udp_socket_cookie() {
        let me = Netns::open("/proc/self/ns/net").unwrap();
        let maker = SocketMaker::new(&me, &me).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let want = {
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most len bytes into cookie.
            let rc = unsafe {
                libc::getsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            cookie
        };
        let found = maker
            .udp_socket_cookie(server.local_addr().unwrap(), client.local_addr().unwrap())
            .unwrap();
        assert_eq!(found, Some(want));
        drop(client);
        let gone = maker
            .udp_socket_cookie(server.local_addr().unwrap(), "127.0.0.1:9".parse().unwrap())
            .unwrap();
        assert_eq!(gone, None);
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = Netns::open("/run/netns/strait-no-such-netns").unwrap_err();
        assert!(err.to_string().contains("strait-no-such-netns"), "{err}");
    }
}
