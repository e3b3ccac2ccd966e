//! Readiness probes of this node's workloads. Each enrolled pod whose
//! WorkloadGroup has a `probe` gets a task that runs it every period from
//! inside the pod; a change of readiness is published on the board
//! ([`strait_health::board`]) for every agent to see. A pod that leaves, or
//! whose probe changes, has its task replaced.
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use strait_config::manifest::networking::Probe;
use strait_health::{
    NodeReport, Status, Target, Tracker,
    board::{self, now_ms},
    probe,
};
use tokio::{net::TcpStream, task::JoinHandle};
use tracing::{Instrument, info, info_span, warn};

use crate::{metrics::Metrics, pod::Pod};

impl Target for Pod {
    fn address(&self) -> IpAddr {
        self.workload
            .addresses
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .or_else(|| self.workload.addresses.first().copied())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    fn connect(&self, to: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        Pod::connect(self, to, None, |_| ())
    }

    /// An exec probe runs as the workload would run it: inside the mount,
    /// PID, IPC, UTS, network and cgroup namespaces (and user namespace, if
    /// it has one) of a process of the workload, as that process's user
    /// (`nsenter`). A workload with no mount and PID namespaces of its own
    /// (a bare network namespace) would have its probe run on the node as
    /// root: refused unless the agent was started with
    /// `--exec-probes-on-host`, whoever wrote the WorkloadGroup.
    fn command(&self, argv: &[String]) -> io::Result<tokio::process::Command> {
        for pid in workload_processes(&self.netns)? {
            if let Some(cmd) = in_workload(pid, argv)? {
                return Ok(cmd);
            }
        }
        if !self.exec_probes_on_host {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the workload has no mount and PID namespaces of its own, so this exec probe would run on the node as root; the agent runs it only when started with --exec-probes-on-host",
            ));
        }
        let mut cmd = probe::command(argv)?;
        let fd = self.netns.as_fd().as_raw_fd();
        // SAFETY: setns is async-signal-safe and only changes the child,
        // which has the namespace's fd (it is closed on exec, not on fork).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// The processes in `netns`, lowest PID (the pod's first) first.
fn workload_processes(netns: &strait_netns::Netns) -> io::Result<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let pod = netns.as_fd_metadata()?;
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == (pod.dev(), pod.ino()))
        })
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// `argv` entered into `pid`'s namespaces as its user, if `pid` has mount
/// and PID namespaces of its own; `None` if it shares the agent's.
fn in_workload(pid: u32, argv: &[String]) -> io::Result<Option<tokio::process::Command>> {
    use std::os::unix::fs::MetadataExt;
    let same = |ns: &str| -> io::Result<bool> {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{ns}"))?;
        Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
    };
    if same("mnt")? || same("pid")? {
        return Ok(None);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let id = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
    };
    let (uid, gid) = (id("Uid:")?, id("Gid:")?);
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg("--target")
        .arg(pid.to_string())
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"]);
    if !same("user")? {
        cmd.arg("--user");
    }
    cmd.args(["--setuid", &uid, "--setgid", &gid, "--"])
        .args(argv);
    Ok(Some(cmd))
}

struct Running {
    probe: Probe,
    task: JoinHandle<()>,
}

/// This node's probes and what they found.
pub struct Probes {
    node: String,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    running: Mutex<BTreeMap<String, Running>>,
    report: Mutex<NodeReport>,
    /// What this node published before (a restarted agent resumes it).
    board: Arc<strait_health::Board>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Probes {
    pub fn new(
        node: &str,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        board: Arc<strait_health::Board>,
    ) -> Self {
        Self {
            node: node.into(),
            dir,
            metrics,
            board,
            running: Mutex::new(BTreeMap::new()),
            report: Mutex::new(NodeReport {
                node: node.into(),
                workloads: BTreeMap::new(),
            }),
        }
    }

    /// Probes exactly `pods` (each with its current probe).
    pub fn sync(self: &Arc<Self>, pods: Vec<(Arc<Pod>, Probe)>) {
        let mut running = lock(&self.running);
        let wanted: BTreeMap<String, (Arc<Pod>, Probe)> = pods
            .into_iter()
            .map(|(pod, probe)| {
                (
                    strait_health::key(&pod.workload.namespace, &pod.workload.name),
                    (pod, probe),
                )
            })
            .collect();
        let mut gone = Vec::new();
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(_, p)| *p == r.probe);
            if !keep {
                r.task.abort();
                gone.push(key.clone());
            }
            keep
        });
        for (key, (pod, probe)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let Some((settings, check)) = probe::from_manifest(&probe) else {
                continue;
            };
            let span = info_span!("probe", workload = %key);
            let task = tokio::spawn(
                self.clone()
                    .run(key.clone(), pod, settings, check)
                    .instrument(span),
            );
            running.insert(key, Running { probe, task });
        }
        drop(running);
        if !gone.is_empty() {
            let mut report = lock(&self.report);
            for key in &gone {
                report.workloads.remove(key);
            }
            self.publish(&report);
        }
    }

    async fn run(
        self: Arc<Self>,
        key: String,
        pod: Arc<Pod>,
        settings: strait_health::Settings,
        check: strait_health::Check,
    ) {
        // A restarted agent keeps what it published until the probe says
        // otherwise, so its workloads do not drop out for a period.
        let mut tracker = match self.board.status(&self.node, &key) {
            Some(last) => {
                let ready = last.ready;
                self.set_keeping(&key, last);
                Tracker::resume(settings, ready)
            }
            None => {
                self.set(&key, false, "probe has not passed yet".into());
                Tracker::new(settings)
            }
        };
        tokio::time::sleep(settings.initial_delay).await;
        let mut tick = tokio::time::interval(settings.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = probe::run(&check, &*pod, settings.timeout).await;
            self.metrics.probed(result.is_ok());
            let reason = match &result {
                Ok(()) => "passed".to_string(),
                Err(err) => err.to_string(),
            };
            if let Some(ready) = tracker.observe(result.is_ok()) {
                info!(ready, %reason, "readiness changed");
                self.set(&key, ready, reason);
            } else if !tracker.ready() {
                // Keep the latest reason visible while not ready.
                self.set_reason(&key, reason);
            }
        }
    }

    fn set(&self, key: &str, ready: bool, reason: String) {
        let mut report = lock(&self.report);
        report.workloads.insert(
            key.into(),
            Status {
                ready,
                reason,
                since_ms: now_ms(),
            },
        );
        self.publish(&report);
    }

    fn set_keeping(&self, key: &str, last: Status) {
        let mut report = lock(&self.report);
        report.workloads.insert(key.into(), last);
        self.publish(&report);
    }

    fn set_reason(&self, key: &str, reason: String) {
        let mut report = lock(&self.report);
        if let Some(s) = report.workloads.get_mut(key)
            && s.reason != reason
        {
            s.reason = reason;
            self.publish(&report);
        }
    }

    fn publish(&self, report: &NodeReport) {
        if let Err(err) = board::publish(&self.dir, report) {
            warn!(%err, node = %self.node, "publishing readiness");
        }
    }
}
