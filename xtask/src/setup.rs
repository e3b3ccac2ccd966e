//! Prerequisites, each checked before it is installed, so a second run that
//! has nothing to do takes about a second. What cannot be installed (the
//! kernel, root) is checked first, before anything is installed or built.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use strait_ebpf_common::BPF_TOOLCHAIN;

use crate::{
    cmd::{self, cargo, section, stdout, succeeds},
    host, kube, tools,
};

/// Debian packages the tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    // Topologies and tests.
    "iproute2",
    "curl",
    "python3",
    "tcpdump",
    "tshark",
    "socat",
    // The NAT at a network's edge in multi-network topologies.
    "iptables",
    // The upstream nameserver of the DNS tests.
    "dnsmasq-base",
    "openssl",
    // What the install test checks is gone after uninstalling.
    "bpftool",
    // The shell scripts of deploy/ and vagrant/ are checked.
    "shellcheck",
    // Benchmarks.
    "iperf3",
    "sockperf",
    "wrk",
    "nghttp2-client",
];

/// Building the image (`cargo xtask image`) and running it (the tests).
const IMAGE_PACKAGES: &[&str] = &["musl-tools", "binutils", "buildah", "podman", "runc"];
/// The static binaries' target.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// bpf-linker 0.10's default build loads the LLVM 22 that ships inside the
/// Rust toolchain running it (`BPF_TOOLCHAIN`), so no system LLVM is needed.
const BPF_LINKER_VERSION: &str = "0.10.4";
const BPFFS: &str = "/sys/fs/bpf";

/// Whether this job needs the Kubernetes control plane (tests and bench
/// do; the demo's embedded default does not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kube {
    Build,
    Skip,
}

pub fn run(kube: Kube) -> Result<()> {
    let started = Instant::now();
    section("setup");
    host::check()?;
    apt(kube)?;
    stable_components()?;
    bpf_toolchain()?;
    bpf_linker()?;
    bpffs()?;
    if kube == Kube::Build {
        kube::ensure()?;
        image()?;
        tools::ensure()?;
    }
    eprintln!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn apt(kube: Kube) -> Result<()> {
    let wanted: Vec<&str> = match kube {
        Kube::Build => APT_PACKAGES
            .iter()
            .chain(kube::BUILD_PACKAGES)
            .chain(IMAGE_PACKAGES)
            .chain(tools::PACKAGES)
            .copied()
            .collect(),
        Kube::Skip => APT_PACKAGES.to_vec(),
    };
    apt_install(&wanted)
}

/// What building and running the image needs: its packages and the musl
/// target of the stable toolchain.
pub fn image() -> Result<()> {
    apt_install(IMAGE_PACKAGES)?;
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let installed = stdout(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        &toolchain,
    ]));
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        eprintln!("rustup: {toolchain} has the {MUSL_TARGET} target");
        return Ok(());
    }
    eprintln!("rustup: adding the {MUSL_TARGET} target to {toolchain} (a download of about 40 MB)");
    cmd::run(Command::new("rustup").args(["target", "add", "--toolchain", &toolchain, MUSL_TARGET]))
}

pub fn apt_install(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        eprintln!("apt: all {} packages present", wanted.len());
        return Ok(());
    }
    eprintln!(
        "apt: installing {} package(s) and their dependencies (about a minute): {}",
        missing.len(),
        missing.join(" ")
    );
    let started = Instant::now();
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    took("apt", started.elapsed());
    Ok(())
}

/// `cargo xtask test` runs rustfmt and clippy with the toolchain running
/// xtask; a minimal rustup profile has neither.
fn stable_components() -> Result<()> {
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let installed = installed_components(&toolchain)?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.iter().any(|i| i.starts_with(c)))
        .collect();
    if missing.is_empty() {
        eprintln!("rustup: {toolchain} has rustfmt and clippy");
        return Ok(());
    }
    eprintln!("rustup: adding {} to {toolchain}", missing.join(" and "));
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", &toolchain])
            .args(&missing),
    )
}

/// The dated nightly that compiles the eBPF programs, with the standard
/// library's source (`-Z build-std=core`) and clippy (the BPF lint run).
fn bpf_toolchain() -> Result<()> {
    let installed = installed_components(BPF_TOOLCHAIN)?;
    let has = |c: &str| installed.iter().any(|i| i.starts_with(c));
    if has("rust-src") && has("clippy") {
        eprintln!("rustup: {BPF_TOOLCHAIN} with rust-src and clippy present");
        return Ok(());
    }
    eprintln!(
        "rustup: installing {BPF_TOOLCHAIN} (minimal profile, rust-src, clippy; a download of about 100 MB, usually under a minute)"
    );
    let started = Instant::now();
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        BPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))?;
    took("rustup", started.elapsed());
    Ok(())
}

/// Components installed in `toolchain`; empty when it is not installed.
/// Fails only when rustup itself is missing.
fn installed_components(toolchain: &str) -> Result<Vec<String>> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!(
            "rustup is not installed: strait's eBPF programs need a nightly toolchain that setup installs with rustup (https://rustup.rs)"
        );
    }
    Ok(stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .lines()
    .map(str::to_owned)
    .collect())
}

fn bpf_linker() -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = stdout(Command::new("bpf-linker").arg("--version"));
    if found.trim() == wanted {
        eprintln!("bpf-linker: {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    if !found.is_empty() {
        eprintln!("bpf-linker: found {}, replacing it", found.trim());
    }
    eprintln!(
        "bpf-linker: building {BPF_LINKER_VERSION} with cargo install (about 2 minutes on 2 cores, once)"
    );
    let started = Instant::now();
    cmd::run(cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))?;
    took("bpf-linker", started.elapsed());
    let now = stdout(Command::new("bpf-linker").arg("--version"));
    if now.trim() != wanted {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed in cargo's bin directory, but `bpf-linker` on PATH is {}: put ~/.cargo/bin first in PATH",
            if now.is_empty() {
                "missing".to_owned()
            } else {
                now.trim().to_owned()
            }
        );
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    if is_mounted(BPFFS, "bpf")? {
        eprintln!("bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting the BPF filesystem at {BPFFS}"))
}

fn is_mounted(path: &str, fstype: &str) -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next().is_some_and(|p| Path::new(p) == Path::new(path)) && f.next() == Some(fstype)
    }))
}

pub fn took(what: &str, elapsed: Duration) {
    eprintln!("{what}: done in {:.1}s", elapsed.as_secs_f64());
}
