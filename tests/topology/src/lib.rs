//! Topologies of clusters, networks, nodes and pods made of Linux network
//! namespaces, veth pairs and bridges, for strait's end-to-end tests, demo
//! and benchmarks.
//!
//! Each pod and node is a network namespace; each network is a namespace
//! holding the bridge its nodes plug into; gateway nodes also plug into a
//! shared "internet" bridge. Nothing is created in the host's own network
//! namespace. Each node gets a cgroup v2 subtree that holds its pods'
//! processes (the attach point for that node's agent) and a bpffs pin
//! directory, so several agents share one kernel without seeing each other's
//! pods.
//!
//! Everything is removed when the [`Topology`] is dropped, including while a
//! test panics; objects left by a process that died without unwinding are
//! removed by the next [`Topology::create`] (see [`names`]).
pub mod capture;
pub mod forward;
pub mod host;
pub mod names;
pub mod netlink;
pub mod process;
pub mod spec;

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use capture::{PacketCapture, Pcap};
pub use forward::Forward;
pub use host::Host;
pub use names::RunId;
pub use process::{Place, Process};
pub use spec::{Locality, NodeAddrs, NodeSpec, Spec};

use netlink::{
    addr, bridge, down, enslave, ip_in_exec, netns_add, netns_del, route, sysctl_in, up, veth,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("topology spec: {0}")]
    Spec(String),
    #[error("host: {0}")]
    Host(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("capture: {0}")]
    Capture(String),
    #[error("no {what} named {name} in this topology")]
    Unknown { what: &'static str, name: String },
    #[error("tearing down {run}: {}", .errors.join("; "))]
    Teardown { run: String, errors: Vec<String> },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Where named network namespaces live (`ip netns`).
pub const NETNS_DIR: &str = "/run/netns";
const NODE_UPLINK: &str = "eth0";
const NODE_INTERNET: &str = "eth1";
const POD_BRIDGE: &str = "cbr0";
const FABRIC_BRIDGE: &str = "br0";
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A node: a network namespace acting as the host of its pods.
#[derive(Debug)]
pub struct Node {
    pub spec: NodeSpec,
    pub addrs: NodeAddrs,
    /// Where processes run "on the node" (agents, captures).
    pub place: Place,
    /// The cgroup subtree holding this node's pods: capture attaches here.
    pub pods_cgroup: PathBuf,
    /// This node's bpffs pin directory.
    pub pin_dir: PathBuf,
    index: u8,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Starts a packet capture on one of the node's interfaces: `eth0` is
    /// its link to its network, `eth1` (gateways) to the internet segment.
    pub fn capture(&self, iface: &str, filter: &[&str]) -> Result<PacketCapture, Error> {
        PacketCapture::start(&self.place, iface, filter)
    }
}

impl std::ops::Deref for Node {
    type Target = Place;
    fn deref(&self) -> &Place {
        &self.place
    }
}

/// A pod: a network namespace plugged into its node's pod bridge.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub place: Place,
}

impl Pod {
    pub fn capture(&self, iface: &str, filter: &[&str]) -> Result<PacketCapture, Error> {
        PacketCapture::start(&self.place, iface, filter)
    }
}

impl std::ops::Deref for Pod {
    type Target = Place;
    fn deref(&self) -> &Place {
        &self.place
    }
}

/// Everything a run owns on the host, by name: what must be gone after
/// teardown.
#[derive(Clone, Debug)]
pub struct Resources {
    pub netns: Vec<String>,
    pub cgroup_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub scratch_dir: PathBuf,
}

impl Resources {
    fn of(host: &Host, run: &RunId) -> Self {
        let name = run.name();
        Self {
            netns: netlink::netns_list()
                .into_iter()
                .filter(|ns| RunId::parse(ns).is_some_and(|(id, _)| id == *run))
                .collect(),
            cgroup_dir: host.cgroup_base().join(&name),
            pin_dir: host.pin_base().join(&name),
            scratch_dir: std::env::temp_dir().join(&name),
        }
    }

    /// What of this run still exists.
    pub fn remaining(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .netns
            .iter()
            .filter(|ns| Path::new(NETNS_DIR).join(ns).exists())
            .map(|ns| format!("netns {ns}"))
            .collect();
        for (what, dir) in [
            ("cgroup", &self.cgroup_dir),
            ("pin dir", &self.pin_dir),
            ("scratch dir", &self.scratch_dir),
        ] {
            if dir.exists() {
                left.push(format!("{what} {}", dir.display()));
            }
        }
        left
    }
}

/// A built topology. Dropping it tears everything down.
pub struct Topology {
    host: Host,
    run: RunId,
    spec: Spec,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    internet: Option<String>,
    torn_down: bool,
}

impl Topology {
    /// Builds `spec` on this host, after removing leftovers of dead runs.
    pub fn create(spec: Spec) -> Result<Self, Error> {
        spec.validate()?;
        let host = Host::detect()?;
        sweep(&host)?;
        let run = RunId::new();
        let mut topo = Self {
            host,
            run,
            spec,
            nodes: Vec::new(),
            pods: Vec::new(),
            internet: None,
            torn_down: false,
        };
        // On error `topo` drops here, which removes whatever was made so far.
        topo.build()?;
        Ok(topo)
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn node(&self, name: &str) -> Result<&Node, Error> {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .ok_or_else(|| Error::Unknown {
                what: "node",
                name: name.into(),
            })
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, Error> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Unknown {
                what: "pod",
                name: name.into(),
            })
    }

    /// Where logs and captures of this run go; removed on teardown.
    pub fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir().join(self.run.name())
    }

    /// A directory with one entry per pod, linking to its network namespace:
    /// what an agent scans to find pods by address, limited to this run
    /// (runs side by side reuse the same pod addresses).
    pub fn netns_dir(&self) -> PathBuf {
        self.scratch_dir().join("netns")
    }

    /// A directory holding the network namespaces of `node`'s pods (as of
    /// this call) the way a container runtime keeps a node's `/run/netns`:
    /// bind mounts rather than links, so that it can be mounted into a
    /// container. Unmounted with the run.
    pub fn node_netns_dir(&self, node: &str) -> Result<PathBuf, Error> {
        let dir = self.scratch_dir().join("node-netns").join(node);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for pod in self.pods.iter().filter(|p| p.node == node) {
            let target = dir.join(&pod.name);
            if target.exists() {
                continue;
            }
            fs::File::create(&target)
                .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
            bind_mount(&Path::new(NETNS_DIR).join(&pod.place.netns), &target)?;
        }
        Ok(dir)
    }

    /// Everything this run owns on the host.
    pub fn resources(&self) -> Resources {
        Resources::of(&self.host, &self.run)
    }

    /// Takes a node off its network (and the internet segment): its links go
    /// down on the far side, as if the cable were pulled.
    pub fn cut_node(&self, name: &str) -> Result<(), Error> {
        self.set_node_links(name, false)
    }

    pub fn restore_node(&self, name: &str) -> Result<(), Error> {
        self.set_node_links(name, true)
    }

    /// Takes a whole network off the internet segment (its gateways'
    /// uplinks), leaving traffic inside it untouched.
    pub fn cut_network(&self, network: &str) -> Result<(), Error> {
        self.set_network_links(network, false)
    }

    pub fn restore_network(&self, network: &str) -> Result<(), Error> {
        self.set_network_links(network, true)
    }

    /// Tears down now and reports what could not be removed.
    pub fn destroy(mut self) -> Result<(), Error> {
        self.torn_down = true;
        remove_run(&self.host, &self.run)
    }

    fn netns_name(&self, kind: &str, name: &str) -> String {
        format!("{}-{kind}-{name}", self.run.name())
    }

    fn network_netns(&self, network: &str) -> String {
        self.netns_name("net", network)
    }

    fn set_node_links(&self, name: &str, on: bool) -> Result<(), Error> {
        let node = self.node(name)?;
        let set = if on { up } else { down };
        set(
            &self.network_netns(&node.spec.network),
            &format!("n{}", node.index),
        )?;
        if let (Some(inet), true) = (&self.internet, node.spec.gateway) {
            set(inet, &format!("g{}", node.index))?;
        }
        Ok(())
    }

    fn set_network_links(&self, network: &str, on: bool) -> Result<(), Error> {
        if self.spec.network_index(network).is_none() {
            return Err(Error::Unknown {
                what: "network",
                name: network.into(),
            });
        }
        let set = if on { up } else { down };
        if let Some(inet) = &self.internet {
            for node in self
                .nodes
                .iter()
                .filter(|n| n.spec.network == network && n.spec.gateway)
            {
                set(inet, &format!("g{}", node.index))?;
            }
        }
        Ok(())
    }

    fn build(&mut self) -> Result<(), Error> {
        let run_name = self.run.name();
        let scratch = self.scratch_dir();
        fs::create_dir_all(&scratch)
            .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
        let run_cgroup = self.host.cgroup_base().join(&run_name);
        let run_pins = self.host.pin_base().join(&run_name);

        for network in self.spec.networks() {
            let ns = self.network_netns(network);
            netns_add(&ns)?;
            bridge(&ns, FABRIC_BRIDGE)?;
        }
        if self.spec.nodes.iter().any(|n| n.gateway) {
            let ns = self.netns_name("inet", "internet");
            netns_add(&ns)?;
            bridge(&ns, FABRIC_BRIDGE)?;
            self.internet = Some(ns);
        }

        for node_spec in self.spec.nodes.clone() {
            let index = self
                .spec
                .node_index(&node_spec.name)
                .ok_or_else(|| Error::Spec("node index".into()))?;
            let net_index = self
                .spec
                .network_index(&node_spec.network)
                .ok_or_else(|| Error::Spec("network index".into()))?;
            let addrs = spec::node_addrs(index, net_index, node_spec.gateway);
            let ns = self.netns_name("node", &node_spec.name);
            netns_add(&ns)?;
            sysctl_in(
                &ns,
                &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            )?;

            let fabric = self.network_netns(&node_spec.network);
            let fabric_port = format!("n{index}");
            veth(&ns, NODE_UPLINK, &fabric, &fabric_port)?;
            enslave(&fabric, &fabric_port, FABRIC_BRIDGE)?;
            addr(&ns, NODE_UPLINK, &format!("{}/24", addrs.ipv4))?;
            addr(&ns, NODE_UPLINK, &format!("{}/64", addrs.ipv6))?;
            up(&ns, NODE_UPLINK)?;

            if let (Some((v4, v6)), Some(inet)) = (addrs.internet, &self.internet) {
                let port = format!("g{index}");
                veth(&ns, NODE_INTERNET, inet, &port)?;
                enslave(inet, &port, FABRIC_BRIDGE)?;
                addr(&ns, NODE_INTERNET, &format!("{v4}/24"))?;
                addr(&ns, NODE_INTERNET, &format!("{v6}/64"))?;
                up(&ns, NODE_INTERNET)?;
            }

            bridge(&ns, POD_BRIDGE)?;
            addr(&ns, POD_BRIDGE, &format!("{}/24", addrs.pod_gateway_v4))?;
            addr(&ns, POD_BRIDGE, &format!("{}/64", addrs.pod_gateway_v6))?;

            let node_dir = run_cgroup.join(format!("node-{}", node_spec.name));
            let host_dir = run_cgroup.join(format!("host-{}", node_spec.name));
            for dir in [&node_dir, &host_dir] {
                fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating cgroup {}", dir.display()), e))?;
            }
            let pin_dir = run_pins.join(&node_spec.name);
            fs::create_dir_all(&pin_dir)
                .map_err(|e| Error::io(format!("creating {}", pin_dir.display()), e))?;

            self.nodes.push(Node {
                place: Place {
                    label: format!("node {}", node_spec.name),
                    netns: ns,
                    cgroup: host_dir,
                    scratch: scratch.clone(),
                    resolv_conf: None,
                },
                pods_cgroup: node_dir,
                pin_dir,
                addrs,
                index,
                spec: node_spec,
            });
        }

        // Nodes of one network route to each other's pod subnets; nothing
        // routes between networks.
        for node in &self.nodes {
            for peer in self
                .nodes
                .iter()
                .filter(|p| p.spec.network == node.spec.network && p.index != node.index)
            {
                let (v4, v6) = spec::pod_subnets(peer.index);
                route(&node.place.netns, &v4, &peer.addrs.ipv4.to_string())?;
                route(&node.place.netns, &v6, &peer.addrs.ipv6.to_string())?;
            }
        }

        // The internet segment is reached through a gateway node of one's
        // network, which hides the network's addresses behind its own (the
        // NAT of a cloud's edge): replies come back, nothing else gets in.
        for node in &self.nodes {
            if node.spec.gateway {
                for tables in ["iptables", "ip6tables"] {
                    ip_in_exec(
                        &node.place.netns,
                        &[
                            tables,
                            "-t",
                            "nat",
                            "-A",
                            "POSTROUTING",
                            "-o",
                            NODE_INTERNET,
                            "-j",
                            "MASQUERADE",
                        ],
                    )?;
                }
                continue;
            }
            let edge = self
                .nodes
                .iter()
                .find(|g| g.spec.gateway && g.spec.network == node.spec.network);
            if let Some(edge) = edge {
                let (v4, v6) = spec::internet_subnets();
                route(&node.place.netns, v4, &edge.addrs.ipv4.to_string())?;
                route(&node.place.netns, v6, &edge.addrs.ipv6.to_string())?;
            }
        }

        for pod_spec in self.spec.pods.clone() {
            let node = self.node(&pod_spec.node)?;
            let slot = self
                .spec
                .pod_slot(&pod_spec)
                .ok_or_else(|| Error::Spec("pod slot".into()))?;
            let (ipv4, ipv6) = spec::pod_addrs(node.index, slot);
            let ns = self.netns_name("pod", &pod_spec.name);
            let (node_ns, gw4, gw6) = (
                node.place.netns.clone(),
                node.addrs.pod_gateway_v4,
                node.addrs.pod_gateway_v6,
            );
            let cgroup = node.pods_cgroup.join(&pod_spec.name);
            plumb_pod(&ns, slot, &node_ns, (ipv4, ipv6), (gw4, gw6))?;
            fs::create_dir_all(&cgroup)
                .map_err(|e| Error::io(format!("creating cgroup {}", cgroup.display()), e))?;
            let links = self.netns_dir();
            fs::create_dir_all(&links)
                .map_err(|e| Error::io(format!("creating {}", links.display()), e))?;
            std::os::unix::fs::symlink(Path::new(NETNS_DIR).join(&ns), links.join(&pod_spec.name))
                .map_err(|e| Error::io("linking a pod's netns", e))?;
            self.pods.push(Pod {
                place: Place {
                    label: format!("pod {}", pod_spec.name),
                    netns: ns,
                    cgroup,
                    scratch: scratch.clone(),
                    resolv_conf: None,
                },
                name: pod_spec.name,
                node: pod_spec.node,
                ipv4,
                ipv6,
            });
        }
        Ok(())
    }
}

/// A pod's namespace and its link to its node's bridge, addressed.
fn plumb_pod(
    ns: &str,
    slot: u8,
    node_ns: &str,
    (ipv4, ipv6): (Ipv4Addr, Ipv6Addr),
    (gw4, gw6): (Ipv4Addr, Ipv6Addr),
) -> Result<(), Error> {
    netns_add(ns)?;
    let port = format!("p{slot}");
    veth(ns, NODE_UPLINK, node_ns, &port)?;
    enslave(node_ns, &port, POD_BRIDGE)?;
    addr(ns, NODE_UPLINK, &format!("{ipv4}/24"))?;
    addr(ns, NODE_UPLINK, &format!("{ipv6}/64"))?;
    up(ns, NODE_UPLINK)?;
    route(ns, "default", &gw4.to_string())?;
    route(ns, "default", &gw6.to_string())
}

impl Topology {
    /// Deletes `pod`'s network namespace and makes a new one with the same
    /// name, link and addresses, as a pod restarted in place is: the same
    /// IP, another namespace. Processes still in the old one lose their
    /// network.
    pub fn recreate_pod(&self, pod: &str) -> Result<(), Error> {
        let found = self.pod(pod)?;
        let node = self.node(&found.node)?;
        let slot = self
            .spec
            .pods
            .iter()
            .find(|p| p.name == pod)
            .and_then(|p| self.spec.pod_slot(p))
            .ok_or_else(|| Error::Spec(format!("no slot for pod {pod}")))?;
        // The old namespace lives on while something holds it (an agent's
        // sockets): take its link away with it.
        netlink::ip_in(&node.place.netns, &["link", "del", &format!("p{slot}")])?;
        netns_del(&found.place.netns)?;
        plumb_pod(
            &found.place.netns,
            slot,
            &node.place.netns,
            (found.ipv4, found.ipv6),
            (node.addrs.pod_gateway_v4, node.addrs.pod_gateway_v6),
        )?;
        // The node still knows the old link's MAC for these addresses, and
        // would send the pod's traffic there until the entry goes stale.
        for ip in [found.ipv4.to_string(), found.ipv6.to_string()] {
            netlink::ip_in(&node.place.netns, &["neigh", "flush", "to", &ip])?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            if let Err(err) = remove_run(&self.host, &self.run) {
                eprintln!("strait-topology: {err}");
            }
        }
    }
}

/// Held while sweeping; holding it yourself keeps every process's sweep
/// waiting (a test does, to observe leftovers before they are swept).
pub struct SweepLock {
    // Closing the file releases the lock.
    _file: fs::File,
}

impl SweepLock {
    pub fn acquire() -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("{}.sweep.lock", names::PREFIX));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("locking {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { _file: file })
    }
}

/// Removes what runs whose process is gone left behind.
pub fn sweep(host: &Host) -> Result<Vec<RunId>, Error> {
    let _lock = SweepLock::acquire()?;
    let mut dead = std::collections::BTreeSet::new();
    let mut consider = |name: &str| {
        if let Some((run, _)) = RunId::parse(name)
            && !run.owner_alive()
        {
            dead.insert(run);
        }
    };
    netlink::netns_list().iter().for_each(|n| consider(n));
    for dir in [host.cgroup_base(), host.pin_base(), std::env::temp_dir()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                consider(&entry.file_name().to_string_lossy());
            }
        }
    }
    for run in &dead {
        remove_run(host, run)?;
    }
    Ok(dead.into_iter().collect())
}

/// Removes everything of `run`: processes (through the run's cgroups), pins,
/// cgroups, namespaces and scratch files, in that order, going on past
/// errors so one failure does not leave the rest behind.
fn remove_run(host: &Host, run: &RunId) -> Result<(), Error> {
    let res = Resources::of(host, run);
    let mut errors = Vec::new();
    if res.cgroup_dir.exists()
        && let Err(err) = kill_cgroup(&res.cgroup_dir)
    {
        errors.push(err.to_string());
    }
    if let Err(err) = remove_dir_all_if_present(&res.pin_dir) {
        errors.push(err.to_string());
    }
    if let Err(err) = rmdir_tree(&res.cgroup_dir) {
        errors.push(err.to_string());
    }
    if let Err(err) = unmount_under(&res.scratch_dir) {
        errors.push(err.to_string());
    }
    for ns in &res.netns {
        if let Err(err) = netns_del(ns) {
            errors.push(err.to_string());
        }
    }
    if let Err(err) = remove_dir_all_if_present(&res.scratch_dir) {
        errors.push(err.to_string());
    }
    // The shared parents go once the last run is gone; another live run
    // keeps them busy, which is fine.
    let _ = fs::remove_dir(host.cgroup_base());
    let _ = fs::remove_dir(host.pin_base());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Teardown {
            run: run.name(),
            errors,
        })
    }
}

/// Kills every process in the cgroup subtree (all of them started by this
/// library) and waits until it is empty.
fn kill_cgroup(dir: &Path) -> Result<(), Error> {
    let kill = dir.join("cgroup.kill");
    fs::write(&kill, "1").map_err(|e| Error::io(format!("writing {}", kill.display()), e))?;
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let text = fs::read_to_string(&events)
            .map_err(|e| Error::io(format!("reading {}", events.display()), e))?;
        if text.lines().any(|l| l == "populated 0") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("processes in {} to exit", dir.display()),
                after: KILL_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bind_mount(source: &Path, target: &Path) -> Result<(), Error> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Spec(format!("{} has a NUL byte", p.display())))
    };
    let (src, dst) = (c(source)?, c(target)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("bind-mounting {} on {}", source.display(), target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Detaches every mount under `dir` (what [`Topology::node_netns_dir`]
/// made), deepest first.
fn unmount_under(dir: &Path) -> Result<(), Error> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Spec(format!("{} has a NUL byte", point.display())))?;
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(Error::io(
                format!("unmounting {}", point.display()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// cgroup directories are removed with rmdir, children first.
fn rmdir_tree(dir: &Path) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir).map_err(|e| Error::io(format!("removing cgroup {}", dir.display()), e))
}

fn remove_dir_all_if_present(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}
