//! A port on the host's loopback that reaches an address inside a place:
//! how a tool or browser on the host looks at what runs in the topology
//! (the topology adds no links to the host's namespace, so nothing routes).
use std::{
    fs::File,
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{Error, Place};

/// Connections carried at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `127.0.0.1:<free port>` until dropped.
pub struct Forward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Forward {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Place {
    /// Forwards a host loopback port to `target` as seen from this place.
    pub fn forward(&self, target: SocketAddr) -> Result<Forward, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("binding a loopback port to forward", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("the forward's address", e))?;
        let netns_path = self.netns_path();
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let accept = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                        continue;
                    }
                    active.fetch_add(1, Ordering::AcqRel);
                    let active = active.clone();
                    let netns_path = netns_path.clone();
                    std::thread::spawn(move || {
                        let _ = carry(client, &netns_path, target);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            })
        };
        Ok(Forward {
            addr,
            stop,
            accept: Some(accept),
        })
    }
}

/// Connects to `target` from inside the namespace at `netns_path` (this
/// thread moves there; the socket stays there) and copies both ways.
fn carry(client: TcpStream, netns_path: &std::path::Path, target: SocketAddr) -> io::Result<()> {
    let netns = File::open(netns_path)?;
    // SAFETY: setns on a descriptor we hold; it moves only this thread,
    // which ends with this connection.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let server = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    let (mut client_r, mut server_w) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let (mut server_r, mut client_w) = (server, client);
    let _ = io::copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}
