//! Prerequisites, each checked before it is installed, so a second run that
//! has nothing to do takes seconds.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, cargo, section, stdout, succeeds};

/// Debian packages the build, tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    // Topologies and tests.
    "iproute2",
    "curl",
    "python3",
    "tcpdump",
    "tshark",
    "socat",
    // The upstream nameserver of the DNS tests.
    "dnsmasq-base",
    "openssl",
    // Benchmarks.
    "iperf3",
    "sockperf",
    "wrk",
    "nghttp2-client",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    let started = Instant::now();
    section("setup");
    require_root()?;
    apt()?;
    nightly()?;
    bpf_linker()?;
    bpffs()?;
    cgroup2()?;
    eprintln!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "strait's setup installs packages and its tests create namespaces and load eBPF: run as root"
        );
    }
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        eprintln!("apt: all {} packages present", APT_PACKAGES.len());
        return Ok(());
    }
    eprintln!("apt: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> Result<()> {
    let installed = stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("rustup: nightly with rust-src present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        eprintln!("bpf-linker: present");
        return Ok(());
    }
    eprintln!("bpf-linker: building against LLVM 22 (several minutes, once)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    cmd::run(
        cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path),
    )
}

fn bpffs() -> Result<()> {
    if is_mounted(BPFFS, "bpf")? {
        eprintln!("bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn cgroup2() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    match mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        Some(line) => {
            let at = line.split_whitespace().nth(1).unwrap_or("?");
            eprintln!("cgroup v2: mounted at {at}");
            Ok(())
        }
        None => bail!("no cgroup v2 filesystem is mounted; strait needs one (kernel >= 5.15)"),
    }
}

fn is_mounted(path: &str, fstype: &str) -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next().is_some_and(|p| Path::new(p) == Path::new(path)) && f.next() == Some(fstype)
    }))
}
