//! A pod's network namespace, as the agent uses it: identified by the
//! kernel's netns cookie (what the eBPF programs see), entered by a thread to
//! make sockets that belong to the pod (listeners, upstream connections), and
//! found from the pod's address when nothing names it.
use std::{
    fs::File,
    io,
    net::IpAddr,
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

    /// Finds the namespace under `dir` (such as `/run/netns`) that holds
    /// `address`.
    pub fn find_by_address(dir: &Path, address: IpAddr) -> Result<Option<Self>, Error> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Open {
            path: dir.into(),
            source,
        })?;
        for entry in entries.flatten() {
            let Ok(netns) = Self::open(entry.path()) else {
                continue;
            };
            if netns.addresses().is_ok_and(|a| a.contains(&address)) {
                return Ok(Some(netns));
            }
        }
        Ok(None)
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

    fn socket(&self, domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: setns on descriptors we own; it changes only this thread.
        if unsafe { libc::setns(self.target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = socket(domain, kind | libc::SOCK_NONBLOCK);
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
    // SAFETY: plain syscall; the fd is owned right away.
    let fd: RawFd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    fn missing_namespace_is_a_clear_error() {
        let err = Netns::open("/run/netns/strait-no-such-netns").unwrap_err();
        assert!(err.to_string().contains("strait-no-such-netns"), "{err}");
    }
}
