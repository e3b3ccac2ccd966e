//! Enrolling this node's pods: for each one in the mesh, find its network
//! namespace, open the agent's listeners inside it, register them with the
//! capture programs, fetch its certificate, then switch capture on; and
//! releasing those that left, whenever the config changes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use strait_capture::{Capture, ListenerKind};
use strait_config::Workload;
use strait_ebpf_common::{AGENT_MARK, port};
use strait_identity::{CertManager, Identity};
use strait_netns::{Netns, SocketMaker};
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{probes::Probes, proxy::Proxy, state::Snapshot};

/// An enrolled pod and what the agent holds for it.
pub struct Pod {
    pub workload: Workload,
    pub identity: Identity,
    pub netns: Netns,
    /// Presents the pod's current certificate, requires a mesh client.
    pub server_tls: Arc<rustls::ServerConfig>,
    sockets: SocketMaker,
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
    fn into_tokio(self) -> std::io::Result<Listeners> {
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

/// What `/workloads` shows of a local workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub identity: String,
    pub state: String,
    pub netns: Option<String>,
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

/// This node's enrolled pods, kept in step with the config: at start and
/// after every reload, workloads that appeared on this node are enrolled and
/// those that left (or left the mesh) are released. Connections already
/// open are never touched.
pub struct Pods {
    capture: Arc<Mutex<Capture>>,
    certs: Arc<CertManager>,
    netns_dir: PathBuf,
    probes: Arc<Probes>,
    /// Serializes syncs; held across their awaits.
    enrolled: tokio::sync::Mutex<BTreeMap<Key, Enrolled>>,
    statuses: Mutex<Vec<WorkloadStatus>>,
}

/// What makes an enrollment: a change to any of it enrolls the pod anew.
type Key = (String, String, Vec<IpAddr>, Identity);

struct Enrolled {
    pod: Arc<Pod>,
    /// The pod's accept loops and DNS socket.
    tasks: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pods {
    pub fn new(
        capture: Arc<Mutex<Capture>>,
        certs: Arc<CertManager>,
        netns_dir: PathBuf,
        probes: Arc<Probes>,
    ) -> Self {
        Self {
            capture,
            certs,
            netns_dir,
            probes,
            enrolled: tokio::sync::Mutex::new(BTreeMap::new()),
            statuses: Mutex::new(Vec::new()),
        }
    }

    /// What `/workloads` shows.
    pub fn statuses(&self) -> Vec<WorkloadStatus> {
        lock(&self.statuses).clone()
    }

    /// Brings the enrolled pods in line with `state`; returns how many are
    /// enrolled.
    pub async fn sync(&self, state: &Snapshot, proxy: &Arc<Proxy>) -> usize {
        let mut enrolled = self.enrolled.lock().await;
        let home = match Netns::open("/proc/self/ns/net") {
            Ok(home) => home,
            Err(err) => {
                warn!(%err, "opening the agent's own network namespace; no pod can be enrolled");
                return enrolled.len();
            }
        };
        let mut statuses = Vec::new();
        let mut wanted: BTreeMap<Key, Workload> = BTreeMap::new();
        let mut probes = BTreeMap::new();
        for workload in state.config.workloads_on(&state.node) {
            if let Some(probe) = &workload.probe {
                probes.insert(
                    (workload.namespace.clone(), workload.name.clone()),
                    probe.clone(),
                );
            }
            let identity = state.identity(workload);
            statuses.push(WorkloadStatus {
                name: workload.name.clone(),
                namespace: workload.namespace.clone(),
                addresses: workload.addresses.clone(),
                identity: identity.to_string(),
                state: "not in the mesh".into(),
                netns: None,
            });
            if state.config.enrolled(workload) {
                let key = (
                    workload.namespace.clone(),
                    workload.name.clone(),
                    workload.addresses.clone(),
                    identity,
                );
                wanted.insert(key, workload.clone());
            }
        }

        // Release first: a pod enrolled anew needs its listeners' ports.
        let stale: Vec<Key> = enrolled
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(gone) = enrolled.remove(&key) {
                for task in gone.tasks {
                    task.abort();
                    let _ = task.await;
                }
                info!(workload = %key.1, namespace = %key.0, "pod released");
            }
        }
        for (key, workload) in wanted {
            if enrolled.contains_key(&key) {
                continue;
            }
            match self.enroll(&workload, key.3.clone(), &home).await {
                Ok((pod, listeners)) => {
                    info!(workload = %workload.name, namespace = %workload.namespace, identity = %pod.identity, netns = %pod.netns.path().display(), "pod enrolled");
                    let tasks = proxy.serve(pod.clone(), listeners);
                    enrolled.insert(key, Enrolled { pod, tasks });
                }
                Err(err) => {
                    warn!(workload = %workload.name, namespace = %workload.namespace, "enrolling: {err:#}");
                    if let Some(s) = statuses
                        .iter_mut()
                        .find(|s| s.name == workload.name && s.namespace == workload.namespace)
                    {
                        s.state = format!("error: {err:#}");
                    }
                }
            }
        }
        for e in enrolled.values() {
            let w = &e.pod.workload;
            if let Some(s) = statuses
                .iter_mut()
                .find(|s| s.name == w.name && s.namespace == w.namespace)
            {
                s.state = "captured".into();
                s.netns = Some(e.pod.netns.path().display().to_string());
            }
        }
        let pods: Vec<&Arc<Pod>> = enrolled.values().map(|e| &e.pod).collect();
        reconcile(&lock(&self.capture), &pods);
        self.probes.sync(
            pods.iter()
                .filter_map(|pod| {
                    let w = &pod.workload;
                    let probe = probes.remove(&(w.namespace.clone(), w.name.clone()))?;
                    Some(((*pod).clone(), *probe))
                })
                .collect(),
        );
        *lock(&self.statuses) = statuses;
        enrolled.len()
    }

    async fn enroll(
        &self,
        workload: &Workload,
        identity: Identity,
        home: &Netns,
    ) -> Result<(Arc<Pod>, Listeners)> {
        let netns = match &workload.netns {
            Some(path) => Netns::open(path)?,
            None => {
                let first = *workload
                    .addresses
                    .first()
                    .context("the workload has no address")?;
                match Netns::find_by_address(&self.netns_dir, first)? {
                    Some(netns) => netns,
                    None => bail!(
                        "no network namespace under {} has address {first}",
                        self.netns_dir.display()
                    ),
                }
            }
        };
        self.certs
            .ensure(&identity)
            .await
            .with_context(|| format!("getting a certificate for {identity}"))?;
        let server_tls = strait_identity::tls::server_config(&self.certs, &identity)?;

        let families: BTreeSet<bool> = workload.addresses.iter().map(IpAddr::is_ipv4).collect();
        let listeners = netns.run(|| open_listeners(&families))??.into_tokio()?;
        let maps = lock(&self.capture).maps();
        for ip in &workload.addresses {
            let hbone = same_family(&listeners.hbone, *ip)
                .context("no HBONE listener for the address family")?;
            let plaintext = same_family(&listeners.plaintext, *ip)
                .context("no plaintext listener for the address family")?;
            maps.add_listener(*ip, ListenerKind::Hbone, hbone)?;
            maps.add_listener(*ip, ListenerKind::Plaintext, plaintext)?;
        }
        lock(&self.capture).attach_netns(&netns, netns.cookie())?;
        let sockets = SocketMaker::new(&netns, home)?;
        // Last: from here on the pod's connects are redirected to the listeners.
        maps.enroll(netns.cookie(), &workload.addresses)?;
        let pod = Pod {
            workload: workload.clone(),
            identity,
            netns,
            server_tls,
            sockets,
        };
        Ok((Arc::new(pod), listeners))
    }
}

/// Removes capture state of pods that are not enrolled now: released ones,
/// or what a previous run left.
fn reconcile(capture: &Capture, pods: &[&Arc<Pod>]) {
    let keep: BTreeSet<u64> = pods.iter().map(|p| p.netns_cookie()).collect();
    let addrs: BTreeSet<IpAddr> = pods
        .iter()
        .flat_map(|p| p.workload.addresses.clone())
        .collect();
    match capture.retain_netns(&keep) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed stale sk_lookup links"),
        Err(err) => warn!(%err, "removing stale sk_lookup links"),
    }
    match capture.maps().retain_enrolled(&keep, &addrs) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed stale enrollments"),
        Err(err) => warn!(%err, "removing stale enrollments"),
    }
}

/// Runs inside the pod's namespace.
fn open_listeners(
    families: &BTreeSet<bool>,
) -> Result<Listeners<std::net::TcpListener, std::net::UdpSocket>> {
    let mut listeners = Listeners {
        outbound: Vec::new(),
        hbone: Vec::new(),
        plaintext: Vec::new(),
        dns_tcp: Vec::new(),
        dns_udp: Vec::new(),
    };
    for &v4 in families {
        let (loopback, any): (IpAddr, IpAddr) = if v4 {
            (Ipv4Addr::LOCALHOST.into(), Ipv4Addr::UNSPECIFIED.into())
        } else {
            (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into())
        };
        listeners
            .outbound
            .push(listen(SocketAddr::new(loopback, port::OUTBOUND))?);
        listeners
            .hbone
            .push(listen(SocketAddr::new(any, port::HBONE))?);
        listeners
            .plaintext
            .push(listen(SocketAddr::new(any, port::INBOUND_PLAINTEXT))?);
        let dns = SocketAddr::new(loopback, port::DNS);
        listeners.dns_tcp.push(listen(dns)?);
        listeners.dns_udp.push(bind_udp(dns)?);
    }
    Ok(listeners)
}

fn listen(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr} (UDP)"))?;
    Ok(socket.into())
}

fn same_family(listeners: &[TcpListener], ip: IpAddr) -> Option<&TcpListener> {
    listeners
        .iter()
        .find(|l| l.local_addr().is_ok_and(|a| a.is_ipv4() == ip.is_ipv4()))
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}
