//! A test that fails leaves nothing behind, and a run that crashed without
//! unwinding is removed by the next one.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use strait_e2e::{Result, require_root};
use strait_topology::{Host, Locality, RunId, Spec, SweepLock, Topology, netlink};

struct Report {
    run: String,
    pid: u32,
    fields: BTreeMap<String, String>,
}

/// Runs the crash child in `mode`; it dies once `before_death` has run.
fn run_child(mode: &str, before_death: impl FnOnce()) -> Result<(ExitStatus, Report, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_topology-crash-child"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut fields = BTreeMap::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            break;
        }
        if let Some((k, v)) = line.split_once(' ') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    before_death();
    child.stdin.take().ok_or("no stdin")?.write_all(b"go\n")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let run = fields
        .get("run")
        .cloned()
        .ok_or_else(|| format!("child reported no run: {stderr}"))?;
    let pid = fields.get("pid").ok_or("child reported no pid")?.parse()?;
    Ok((out.status, Report { run, pid, fields }, stderr))
}

/// What of the run is still on the host.
fn remaining(report: &Report) -> Result<Vec<String>> {
    let host = Host::detect()?;
    let mut left: Vec<String> = netlink::netns_list()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{}-", report.run)))
        .map(|ns| format!("netns {ns}"))
        .collect();
    for dir in [
        host.cgroup_base().join(&report.run),
        host.pin_base().join(&report.run),
        std::env::temp_dir().join(&report.run),
        report
            .fields
            .get("pins")
            .map(Into::into)
            .unwrap_or_default(),
    ] {
        if !dir.as_os_str().is_empty() && dir.exists() {
            left.push(dir.display().to_string());
        }
    }
    if process_alive(report.pid) {
        left.push(format!("process {}", report.pid));
    }
    Ok(left)
}

fn process_alive(pid: u32) -> bool {
    // A zombie has no cmdline; we only care whether it still runs.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[test]
fn panic_in_a_test_leaves_nothing_behind() -> Result<()> {
    require_root();
    let (status, report, stderr) = run_child("panic", || ())?;
    assert!(!status.success(), "the child was meant to panic");
    assert!(stderr.contains("deliberate panic"), "{stderr}");
    assert!(RunId::parse(&report.run).is_some(), "{}", report.run);
    let left = remaining(&report)?;
    assert!(left.is_empty(), "left behind by a panicking test: {left:?}");
    Ok(())
}

#[test]
fn a_crashed_run_is_removed_by_the_next() -> Result<()> {
    require_root();
    // Hold off every sweep (this and other processes') from before the child
    // dies until its leftovers have been seen.
    let mut lock = None;
    let (status, report, _) = run_child("abort", || lock = Some(SweepLock::acquire()))?;
    let lock = lock.ok_or("no lock")??;
    assert!(!status.success(), "the child was meant to abort");
    // The abort ran no cleanup: everything is still there, process included.
    let before = remaining(&report)?;
    drop(lock);
    assert!(
        before.iter().any(|l| l.starts_with("netns"))
            && before.iter().any(|l| l.starts_with("process")),
        "expected leftovers after an abort, found {before:?}"
    );
    let (run, _) = RunId::parse(&report.run).ok_or("bad run id")?;
    assert!(!run.owner_alive());

    // The next topology sweeps them, and only them.
    let next = Topology::create(Spec::new().node("m1", "c1", "net1", Locality::default()))?;
    let mine = next.resources();
    let mut left = remaining(&report)?;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = remaining(&report)?;
    }
    assert!(
        left.is_empty(),
        "the crashed run's leftovers survived the sweep: {left:?}"
    );
    assert!(
        mine.remaining().iter().any(|r| r.starts_with("netns")),
        "the sweep removed a live run"
    );
    assert!(
        Path::new(strait_topology::NETNS_DIR)
            .join(&mine.netns[0])
            .exists()
    );
    Ok(())
}
