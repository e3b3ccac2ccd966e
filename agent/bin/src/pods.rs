//! Enrolling this node's pods: for each one in the mesh, find its network
//! namespace and switch capture on, open the agent's listeners inside it and
//! register them with the capture programs, and get its certificate;
//! retrying what fails, and releasing those that left.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use strait_capture::{Capture, ListenerKind};
use strait_config::Workload;
use strait_ebpf_common::port;
use strait_identity::{CertManager, Identity};
use strait_netns::{Netns, SocketMaker};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use strait_state::{NodeState, Snapshot};
use strait_telemetry::placement::{Role, WorkloadInfo};

use crate::{
    metrics::Metrics,
    pod::{Listeners, Pod},
    probes::Probes,
    share::Caps,
};

/// What serves an enrolled pod's listeners (the proxy, the DNS proxy), and
/// forgets what belonged to pods and services that are gone.
pub trait Serve: Send + Sync {
    /// Starts serving; aborting the tasks closes the listeners
    /// (connections already accepted go on).
    fn serve(&self, pod: Arc<Pod>, listeners: Listeners) -> Vec<JoinHandle<()>>;
    fn prune(&self, state: &Snapshot, local: &BTreeSet<Identity>);
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

/// This node's pods in the mesh, kept in step with the config and with
/// their network namespaces: at start, after every reload and on a retry
/// beat, workloads that appeared on this node are enrolled, those that left
/// (or left the mesh) are released, and those whose namespace was deleted or
/// recreated start over. Connections already open are never touched.
///
/// Enrollment fails closed: as soon as a pod's namespace is known, capture
/// is switched on for it (its connects go to the agent's listener, inbound
/// to its addresses is steered to the agent or dropped). Whatever fails
/// after that (listeners, the certificate) leaves the pod's traffic
/// failing, never running outside the mesh, and is retried with backoff.
pub struct Pods {
    capture: Arc<Mutex<Capture>>,
    certs: Arc<CertManager>,
    netns_dir: PathBuf,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
    serve: Arc<dyn Serve>,
    exec_probes_on_host: bool,
    caps: Arc<Caps>,
    /// The agent's own namespace and the host's: never a pod's.
    home: Netns,
    host_cookie: Option<u64>,
    /// Serializes syncs; held across their awaits.
    members: tokio::sync::Mutex<BTreeMap<Key, Member>>,
    /// Set when the agent stops: no pod is served anew.
    stopping: std::sync::atomic::AtomicBool,
    statuses: Mutex<Vec<WorkloadStatus>>,
    /// The config generation and local identities of the last prune.
    pruned_for: Mutex<(u64, BTreeSet<Identity>)>,
}

/// What makes an enrollment: a change to any of it enrolls the pod anew.
type Key = (String, String, Vec<IpAddr>, Identity);

/// A workload of this node in the mesh, and how far its enrollment got.
struct Member {
    workload: Workload,
    identity: Identity,
    stage: Stage,
    /// Why it is not enrolled yet.
    problem: Option<String>,
    /// Its claim to a network namespace or address was refused.
    refused: bool,
    failures: u32,
    next_try: Instant,
}

enum Stage {
    /// Its network namespace is not found yet: it has no traffic to capture.
    Unplaced,
    /// Capture is on, nothing listens yet: its traffic fails closed.
    Captured(Netns),
    /// Listening and proxying.
    Serving {
        pod: Arc<Pod>,
        /// The pod's accept loops and DNS socket.
        tasks: Vec<JoinHandle<()>>,
    },
}

/// Retries of a step that failed: soon at first, then every 30 s at most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a first enrollment waits for its certificate before the pod is
/// left captured without one (its mTLS fails until the CA answers).
const FIRST_CERT_WAIT: Duration = Duration::from_secs(3);
/// How often enrolled pods' namespaces are checked when nothing is pending.
const RECHECK: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Member {
    fn netns(&self) -> Option<&Netns> {
        match &self.stage {
            Stage::Unplaced => None,
            Stage::Captured(netns) => Some(netns),
            Stage::Serving { pod, .. } => Some(&pod.netns),
        }
    }

    fn enrolled(&self, certs: &CertManager) -> bool {
        matches!(self.stage, Stage::Serving { .. }) && certs.current(&self.identity).is_some()
    }

    /// Stops serving; the caller removes its capture state.
    async fn release(&mut self) {
        if let Stage::Serving { tasks, .. } = std::mem::replace(&mut self.stage, Stage::Unplaced) {
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
        }
    }

    fn failed(&mut self, problem: String, metrics: &Metrics) {
        metrics.enrollment_failed();
        let retry = RETRY_FIRST
            .saturating_mul(1 << self.failures.min(10))
            .min(RETRY_MAX);
        warn!(workload = %self.workload.name, namespace = %self.workload.namespace, ?retry, "enrolling: {problem}");
        self.failures += 1;
        self.next_try = Instant::now() + retry;
        self.problem = Some(problem);
    }
}

/// How pods are enrolled: where their namespaces are named, what exec
/// probes may do, and each pod's share of the agent.
pub struct Settings {
    pub netns_dir: PathBuf,
    pub exec_probes_on_host: bool,
    pub caps: Arc<Caps>,
}

impl Pods {
    pub fn new(
        capture: Arc<Mutex<Capture>>,
        certs: Arc<CertManager>,
        probes: Arc<Probes>,
        metrics: Arc<Metrics>,
        serve: Arc<dyn Serve>,
        settings: Settings,
    ) -> Result<Self> {
        let Settings {
            netns_dir,
            exec_probes_on_host,
            caps,
        } = settings;
        let home = Netns::open("/proc/self/ns/net")
            .context("opening the agent's own network namespace")?;
        let host_cookie = Netns::open("/proc/1/ns/net").ok().map(|n| n.cookie());
        Ok(Self {
            capture,
            certs,
            netns_dir,
            probes,
            metrics,
            serve,
            exec_probes_on_host,
            caps,
            home,
            host_cookie,
            members: tokio::sync::Mutex::new(BTreeMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            statuses: Mutex::new(Vec::new()),
            pruned_for: Mutex::new((0, BTreeSet::new())),
        })
    }

    /// What `/workloads` shows.
    pub fn statuses(&self) -> Vec<WorkloadStatus> {
        lock(&self.statuses).clone()
    }

    /// Syncs again whenever an enrollment step is due to be retried, and
    /// every second to notice pods whose namespace went away.
    pub fn spawn_retries(self: &Arc<Self>, state: NodeState) -> JoinHandle<()> {
        let pods = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = pods.next_due().await;
                tokio::time::sleep(wait).await;
                pods.sync(&state.snapshot()).await;
            }
        })
    }

    async fn next_due(&self) -> Duration {
        let members = self.members.lock().await;
        let now = Instant::now();
        members
            .values()
            .filter(|m| !m.enrolled(&self.certs))
            .map(|m| m.next_try.saturating_duration_since(now))
            .min()
            .unwrap_or(RECHECK)
            .clamp(Duration::from_millis(50), RECHECK)
    }

    /// Closes every pod's listeners, leaving capture as it is: new
    /// connections go to the agent that replaces this one (its listeners
    /// share the ports), accepted ones go on. Later syncs do nothing.
    pub async fn stop_accepting(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let mut members = self.members.lock().await;
        for member in members.values_mut() {
            member.release().await;
        }
    }

    /// Brings this node's pods in line with `state`; returns how many are
    /// enrolled.
    pub async fn sync(&self, state: &Snapshot) -> usize {
        let mut members = self.members.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
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
        let stale: Vec<Key> = members
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(mut gone) = members.remove(&key) {
                gone.release().await;
                info!(workload = %key.1, namespace = %key.0, "pod released");
            }
        }
        for member in members.values_mut() {
            if member.netns().is_some_and(|n| !n.is_current()) {
                warn!(workload = %member.workload.name, namespace = %member.workload.namespace, "the pod's network namespace is gone or was recreated; enrolling it anew");
                member.release().await;
                member.stage = Stage::Unplaced;
                member.next_try = Instant::now();
                member.failures = 0;
            }
        }
        for (key, workload) in wanted {
            let identity = key.3.clone();
            members.entry(key).or_insert_with(|| Member {
                workload,
                identity,
                stage: Stage::Unplaced,
                problem: None,
                refused: false,
                failures: 0,
                next_try: Instant::now(),
            });
        }

        let now = Instant::now();
        let due: Vec<Key> = members
            .iter()
            .filter(|(_, m)| !m.enrolled(&self.certs) && m.next_try <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let scan = if due.iter().any(|k| {
            members
                .get(k)
                .is_some_and(|m| matches!(m.stage, Stage::Unplaced) && m.workload.netns.is_none())
        }) {
            let dir = self.netns_dir.clone();
            match tokio::task::spawn_blocking(move || Netns::scan(&dir)).await {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    warn!(%err, "listing network namespaces");
                    Vec::new()
                }
                Err(err) => {
                    warn!(%err, "listing network namespaces");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for key in due {
            // What the other placed members hold: first come keeps it.
            let taken: Vec<Taken> = members
                .iter()
                .filter(|(k, _)| **k != key)
                .filter_map(|(_, m)| {
                    Some(Taken {
                        cookie: m.netns()?.cookie(),
                        addresses: m.workload.addresses.clone(),
                        owner: format!("{}/{}", m.workload.namespace, m.workload.name),
                    })
                })
                .collect();
            if let Some(member) = members.get_mut(&key) {
                self.advance(member, &scan, &taken).await;
            }
        }

        let placed: Vec<(u64, &[IpAddr])> = members
            .values()
            .filter_map(|m| Some((m.netns()?.cookie(), m.workload.addresses.as_slice())))
            .collect();
        reconcile(&lock(&self.capture), &placed);
        let local: BTreeSet<Identity> = members.values().map(|m| m.identity.clone()).collect();
        // Pruning walks the whole config: only when it or the pods changed.
        let pruned_for = (state.generation, local.clone());
        if *lock(&self.pruned_for) != pruned_for {
            self.certs.retain(&local);
            self.serve.prune(state, &local);
            *lock(&self.pruned_for) = pruned_for;
        }
        self.probes.sync(
            members
                .values()
                .filter_map(|m| {
                    let Stage::Serving { pod, .. } = &m.stage else {
                        return None;
                    };
                    let w = &pod.workload;
                    let probe = probes.remove(&(w.namespace.clone(), w.name.clone()))?;
                    Some((pod.clone(), *probe))
                })
                .collect(),
        );
        // Left out of the model: another workload has its address.
        let mut refused = 0;
        for r in state
            .config
            .refused_workloads
            .iter()
            .filter(|r| r.workload.node.as_deref() == Some(&*state.node))
        {
            refused += 1;
            statuses.push(WorkloadStatus {
                name: r.workload.name.clone(),
                namespace: r.workload.namespace.clone(),
                addresses: r.workload.addresses.clone(),
                identity: state.identity(&r.workload).to_string(),
                state: format!("refused: {}", r.reason),
                netns: None,
            });
        }
        let mut enrolled = 0;
        for m in members.values() {
            let w = &m.workload;
            let Some(status) = statuses
                .iter_mut()
                .find(|s| s.name == w.name && s.namespace == w.namespace)
            else {
                continue;
            };
            status.netns = m.netns().map(|n| n.path().display().to_string());
            status.state = if m.enrolled(&self.certs) {
                enrolled += 1;
                "captured".into()
            } else if m.refused {
                refused += 1;
                format!(
                    "refused: {} (attempt {}, retried)",
                    m.problem.as_deref().unwrap_or("its claim"),
                    m.failures
                )
            } else {
                // Never "captured": that is an enrolled pod's state alone.
                let step = match m.stage {
                    Stage::Unplaced => "pending",
                    Stage::Captured(_) => "fail-closed: not listening yet",
                    Stage::Serving { .. } => "fail-closed: no certificate",
                };
                format!(
                    "{step}: {} (attempt {}, retried)",
                    m.problem.as_deref().unwrap_or("starting"),
                    m.failures
                )
            };
        }
        let members_refused = members.values().filter(|m| m.refused).count();
        // Waypoint instances are never members, but are the mesh's too.
        let waypoints = state
            .config
            .workloads_on(&state.node)
            .filter(|w| state.config.enrollment(w) == strait_config::Enrollment::Waypoint)
            .map(|w| WorkloadInfo::of(state, w, Role::Waypoint));
        self.metrics.placement.set(
            members
                .values()
                .map(|m| WorkloadInfo::of(state, &m.workload, Role::Workload))
                .chain(waypoints),
        );
        self.metrics.workloads(
            enrolled,
            members.len() - enrolled - members_refused,
            refused,
        );
        *lock(&self.statuses) = statuses;
        enrolled
    }

    /// Takes `member` as far as it goes now; a failed step is retried later.
    async fn advance(&self, member: &mut Member, scan: &[(PathBuf, Vec<IpAddr>)], taken: &[Taken]) {
        // The certificate is asked for first: the CA's round trip overlaps
        // the rest.
        self.certs.want(&member.identity);
        if matches!(member.stage, Stage::Unplaced) {
            // Namespaces and netlink: blocking work, kept off the runtime's
            // other tasks.
            match tokio::task::block_in_place(|| self.place(&member.workload, scan, taken)) {
                Ok(netns) => {
                    member.refused = false;
                    member.stage = Stage::Captured(netns);
                }
                Err(Place::Refused(why)) => {
                    member.refused = true;
                    return member.failed(why, &self.metrics);
                }
                Err(Place::Failed(err)) => return member.failed(format!("{err:#}"), &self.metrics),
            }
        }
        if let Stage::Captured(netns) = &member.stage {
            match tokio::task::block_in_place(|| self.open(&member.workload, netns)) {
                Ok(listeners) => {
                    let Stage::Captured(netns) =
                        std::mem::replace(&mut member.stage, Stage::Unplaced)
                    else {
                        return;
                    };
                    match self.pod(member, netns) {
                        Ok(pod) => {
                            let tasks = self.serve.serve(pod.clone(), listeners);
                            member.stage = Stage::Serving { pod, tasks };
                        }
                        Err((netns, err)) => {
                            member.stage = Stage::Captured(netns);
                            return member.failed(format!("{err:#}"), &self.metrics);
                        }
                    }
                }
                Err(err) => return member.failed(format!("{err:#}"), &self.metrics),
            }
        }
        let first = member.failures == 0 && member.problem.is_none();
        if first {
            self.certs.wait_for(&member.identity, FIRST_CERT_WAIT).await;
        }
        if self.certs.current(&member.identity).is_some() {
            if member.problem.take().is_some() || first {
                info!(workload = %member.workload.name, namespace = %member.workload.namespace, identity = %member.identity, "pod enrolled");
            }
            member.failures = 0;
            return;
        }
        let why = self
            .certs
            .last_error(&member.identity)
            .unwrap_or_else(|| "no answer from the CA yet".into());
        member.failed(
            format!("no certificate for {}: {why}", member.identity),
            &self.metrics,
        );
    }

    /// Finds the pod's network namespace and switches capture on for it,
    /// once it is sure the namespace is the workload's: it holds every one
    /// of the workload's addresses, and no other workload of this node has
    /// it or one of those addresses (first come keeps it). Otherwise a
    /// workload (a pod's annotation, a WorkloadEntry) could name another
    /// pod's namespace or address and be handed its traffic.
    fn place(
        &self,
        workload: &Workload,
        scan: &[(PathBuf, Vec<IpAddr>)],
        taken: &[Taken],
    ) -> std::result::Result<Netns, Place> {
        let netns = match &workload.netns {
            Some(named) => Netns::open(netns_path(&self.netns_dir, named)?)?,
            None => {
                let first = *workload
                    .addresses
                    .first()
                    .context("the workload has no address")?;
                let Some((path, _)) = scan.iter().find(|(_, addrs)| addrs.contains(&first)) else {
                    return Err(Place::Failed(anyhow::anyhow!(
                        "no network namespace under {} has address {first}",
                        self.netns_dir.display()
                    )));
                };
                Netns::open(path)?
            }
        };
        if netns.cookie() == self.home.cookie() || Some(netns.cookie()) == self.host_cookie {
            return Err(Place::Refused(format!(
                "{} is the node's own network namespace, not a pod's",
                netns.path().display()
            )));
        }
        if let Some(other) = taken.iter().find(|t| t.cookie == netns.cookie()) {
            return Err(Place::Refused(format!(
                "network namespace {} is {}'s (first come keeps it)",
                netns.path().display(),
                other.owner
            )));
        }
        if let Some((ip, other)) = workload
            .addresses
            .iter()
            .find_map(|ip| Some((ip, taken.iter().find(|t| t.addresses.contains(ip))?)))
        {
            return Err(Place::Refused(format!(
                "address {ip} is {}'s (first come keeps it)",
                other.owner
            )));
        }
        let held = netns.addresses().map_err(anyhow::Error::from)?;
        if let Some(ip) = workload.addresses.iter().find(|ip| !held.contains(ip)) {
            return Err(Place::Refused(format!(
                "network namespace {} does not have address {ip}",
                netns.path().display()
            )));
        }
        let mut capture = lock(&self.capture);
        capture.attach_netns(&netns, netns.cookie())?;
        // From here on the pod's connects go to the agent's listener and
        // inbound is steered to it (or dropped while nothing listens).
        capture.maps().enroll(netns.cookie(), &workload.addresses)?;
        Ok(netns)
    }

    /// Opens the agent's listeners in the pod and registers them.
    fn open(&self, workload: &Workload, netns: &Netns) -> Result<Listeners> {
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
        Ok(listeners)
    }

    /// The pod as the proxy sees it; the namespace back on failure.
    #[allow(clippy::result_large_err)]
    fn pod(
        &self,
        member: &Member,
        netns: Netns,
    ) -> std::result::Result<Arc<Pod>, (Netns, anyhow::Error)> {
        let server_tls = match strait_identity::tls::server_config(&self.certs, &member.identity) {
            Ok(tls) => tls,
            Err(err) => return Err((netns, err.into())),
        };
        let sockets = match SocketMaker::new(&netns, &self.home) {
            Ok(sockets) => sockets,
            Err(err) => return Err((netns, err.into())),
        };
        Ok(Arc::new(Pod {
            workload: member.workload.clone(),
            identity: member.identity.clone(),
            netns,
            server_tls,
            admission: Default::default(),
            share: self.caps.share(),
            dns_forwards: Arc::new(tokio::sync::Semaphore::new(crate::dns::MAX_FORWARDS)),
            dns_tcp: Arc::new(tokio::sync::Semaphore::new(crate::dns::MAX_TCP)),
            exec_probes_on_host: self.exec_probes_on_host,
            sockets,
        }))
    }
}

/// What another placed workload of this node holds.
struct Taken {
    cookie: u64,
    addresses: Vec<IpAddr>,
    owner: String,
}

/// Why a workload was not placed in a network namespace.
enum Place {
    /// It claims what is not its own: not retried soon, and shown as
    /// refused.
    Refused(String),
    /// Not found yet, or the kernel said no: retried.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Place {
    fn from(err: E) -> Self {
        Place::Failed(err.into())
    }
}

/// Where the `strait.dev/netns` annotation points: a namespace directly
/// under the netns directory, by name or by path. Anything else (the host's
/// `/proc/1/ns/net`, `..`) is refused.
fn netns_path(dir: &Path, named: &Path) -> Result<PathBuf> {
    let name = if named.is_absolute() {
        if named.parent() != Some(dir) {
            bail!(
                "the {} annotation {} is not a namespace directly under {}",
                strait_config::NETNS_ANNOTATION,
                named.display(),
                dir.display()
            );
        }
        named.file_name()
    } else {
        Some(named.as_os_str())
    };
    match name.and_then(|n| n.to_str()) {
        Some(n) if !n.is_empty() && n != "." && n != ".." && !n.contains('/') => Ok(dir.join(n)),
        _ => bail!(
            "the {} annotation {:?} is not a namespace name",
            strait_config::NETNS_ANNOTATION,
            named
        ),
    }
}

/// Removes capture state of pods that are not placed now: released ones,
/// or what a previous run left.
fn reconcile(capture: &Capture, placed: &[(u64, &[IpAddr])]) {
    let keep: BTreeSet<u64> = placed.iter().map(|(cookie, _)| *cookie).collect();
    let addrs: BTreeSet<IpAddr> = placed
        .iter()
        .flat_map(|(_, addrs)| addrs.iter().copied())
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

/// Listeners share their port (SO_REUSEPORT) with the agent that replaces
/// this one during a rolling update: both serve until this one drains.
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
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
    socket.set_reuse_port(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netns_annotation_names_a_namespace_under_the_netns_dir() {
        let dir = Path::new("/run/netns");
        assert_eq!(
            netns_path(dir, Path::new("pod-a")).unwrap(),
            Path::new("/run/netns/pod-a")
        );
        assert_eq!(
            netns_path(dir, Path::new("/run/netns/pod-a")).unwrap(),
            Path::new("/run/netns/pod-a")
        );
        for bad in ["/proc/1/ns/net", "/run/netns/../x", "../x", "a/b", "..", ""] {
            assert!(netns_path(dir, Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
