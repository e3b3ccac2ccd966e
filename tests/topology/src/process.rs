//! Running unmodified programs inside a pod or on a node.
//!
//! A child is moved into the place's cgroup and network namespace between
//! `fork` and `exec`, so the program itself is untouched and its sockets are
//! subject to exactly what a pod's would be (cgroup eBPF programs included).
use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::Error;

const POLL: Duration = Duration::from_millis(10);

/// A network namespace and a cgroup: where a pod's or node's processes run.
#[derive(Clone, Debug)]
pub struct Place {
    pub(crate) label: String,
    pub(crate) netns: String,
    pub(crate) cgroup: PathBuf,
    pub(crate) scratch: PathBuf,
    /// Seen by the place's processes as `/etc/resolv.conf`.
    pub(crate) resolv_conf: Option<PathBuf>,
}

impl Place {
    /// The same network namespace with processes placed in `cgroup` (which
    /// must exist), e.g. a node's agent inside the captured subtree, as a
    /// Kubernetes pod would be.
    pub fn in_cgroup(&self, cgroup: PathBuf) -> Place {
        Place {
            cgroup,
            ..self.clone()
        }
    }

    /// The same place with its processes seeing `path` as
    /// `/etc/resolv.conf`, as `ip netns exec` does with
    /// `/etc/netns/<name>/resolv.conf`: each process gets a private mount
    /// namespace with that file bound over the node's.
    pub fn with_resolv_conf(&self, path: PathBuf) -> Place {
        Place {
            resolv_conf: Some(path),
            ..self.clone()
        }
    }

    /// `/run/netns/<name>`: what `setns` and `ip netns exec` use.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(crate::NETNS_DIR).join(&self.netns)
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A directory for this place's files (served content, logs, captures);
    /// removed with the topology.
    pub fn scratch_dir(&self) -> Result<PathBuf, Error> {
        let dir = self.scratch.join(&self.netns);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// A command that will run here. Spawn it yourself, or hand it to
    /// [`Process::spawn`] or [`run`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command, Error> {
        let netns_path = self.netns_path();
        let netns = File::open(&netns_path)
            .map_err(|e| Error::io(format!("opening {}", netns_path.display()), e))?;
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| Error::io(format!("opening {}", procs_path.display()), e))?;
        let resolv_conf = match &self.resolv_conf {
            Some(path) => Some(
                std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|_| Error::Spec(format!("{} has a NUL byte", path.display())))?,
            ),
            None => None,
        };
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes syscalls on descriptors and strings prepared above (no
        // allocation).
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(source) = &resolv_conf {
                    bind_resolv_conf(source)?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts `argv` here in the background, its output going to a log file
    /// in the topology's scratch directory.
    pub fn spawn(&self, argv: &[&str]) -> Result<Process, Error> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Spec("spawn needs a program".into()))?;
        let mut cmd = self.command(program)?;
        cmd.args(args);
        Process::spawn_logged(
            cmd,
            &format!("{}: {}", self.label, argv.join(" ")),
            &self.scratch,
        )
    }

    /// Runs `argv` here to completion (killing it after `timeout`).
    pub fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, Error> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Spec("run needs a program".into()))?;
        let mut cmd = self.command(program)?;
        cmd.args(args);
        run(cmd, timeout)
    }

    /// Like [`Place::run`], but a non-zero exit is an error carrying stderr.
    pub fn run_ok(&self, argv: &[&str], timeout: Duration) -> Result<Output, Error> {
        let out = self.run(argv, timeout)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::Command {
                command: format!("{}: {}", self.label, argv.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// A background process this library started. Dropping it kills it (by PID).
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    log: Option<PathBuf>,
}

impl Process {
    /// Spawns `cmd` with its stdout and stderr appended to a log file under
    /// `dir`.
    pub fn spawn_logged(mut cmd: Command, label: &str, dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let log = unique_log_path(dir, label);
        let out =
            File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log file", e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {label}"), e))?;
        Ok(Self {
            child,
            label: label.into(),
            log: Some(log),
        })
    }

    /// Wraps a child started elsewhere so that it is killed on drop.
    pub fn from_child(child: Child, label: &str) -> Self {
        Self {
            child,
            label: label.into(),
            log: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        let pid = libc::pid_t::try_from(self.pid())
            .map_err(|_| Error::Spec("pid out of range".into()))?;
        // SAFETY: plain syscall on a pid we own (the child is not reaped yet).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(Error::io(
                format!("signalling {}", self.label),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("waiting for {}", self.label), e))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus, Error> {
        if let Some(status) = self.child.try_wait().map_err(|e| Error::io("waiting", e))? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill(),
        }
    }

    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.child.try_wait().map_err(|e| Error::io("waiting", e))? {
            return Ok(status);
        }
        self.child
            .kill()
            .map_err(|e| Error::io(format!("killing {}", self.label), e))?;
        self.child
            .wait()
            .map_err(|e| Error::io(format!("reaping {}", self.label), e))
    }

    /// Waits until a TCP socket in this process's network namespace listens
    /// on `port` (read from `/proc/<pid>/net/tcp{,6}`: no probe connection
    /// that a server or capture would see).
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if listening(self.pid(), port) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().map_err(|e| Error::io("waiting", e))? {
                return Err(Error::Command {
                    command: self.label.clone(),
                    status: format!("{status} before listening on port {port}"),
                    stderr: self.log(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to listen on port {port}", self.label),
                    after: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Runs `cmd` to completion, capturing its output; kills it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Output, Error> {
    let label = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {label}"), e))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut process = Process::from_child(child, &label);
    let status = match process.wait_timeout(timeout)? {
        Some(status) => status,
        None => {
            process.kill()?;
            return Err(Error::Timeout {
                what: label,
                after: timeout,
            });
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn unique_log_path(dir: &Path, label: &str) -> PathBuf {
    let stem: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    (0..)
        .map(|i| dir.join(format!("{stem}.{i}.log")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{stem}.log")))
}

fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|table| {
        fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .map(|text| listens_on(&text, port))
            .unwrap_or(false)
    })
}

/// Whether a `/proc/net/tcp`-format table has a socket in LISTEN (`0A`) on
/// `port`.
fn listens_on(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        state == Some("0A")
            && local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

/// In a forked child: a private mount namespace in which `source` is bound
/// over `/etc/resolv.conf`. Nothing outside the child sees it.
fn bind_resolv_conf(source: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            source.as_ptr(),
            c"/etc/resolv.conf".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:0050 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";

    #[test]
    fn reads_listening_ports() {
        assert!(listens_on(TABLE, 8080));
        // Port 80 is in the table, but as an established connection.
        assert!(!listens_on(TABLE, 80));
        assert!(!listens_on("", 8080));
    }

    #[test]
    fn run_times_out_and_kills() {
        let dir = std::env::temp_dir().join(format!("strait-topology-kill-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > {}; exec sleep 30", pid_file.display()));
        let err = run(cmd, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // Killed and reaped by the time run returns, not left to sleep.
        let pid = fs::read_to_string(&pid_file).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the timed-out process still runs"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_paths_do_not_collide() {
        let dir = std::env::temp_dir().join(format!("strait-topology-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = unique_log_path(&dir, "pod a: echo hi");
        fs::write(&a, "").unwrap();
        let b = unique_log_path(&dir, "pod a: echo hi");
        assert_ne!(a, b);
        fs::remove_dir_all(&dir).unwrap();
    }
}
