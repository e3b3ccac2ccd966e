//! Prerequisites, each checked before it is installed, so a second run that
//! has nothing to do takes about a second. What cannot be installed (the
//! kernel, root) is checked first, before anything is installed or built.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use strait_ebpf_common::BPF_TOOLCHAIN;

use crate::{
    apt::{self, Package, Provides::Program, package},
    cmd::{self, cargo, section, stdout, succeeds},
    host, kube, tools, vagrant,
};

/// Debian packages every job uses (topologies, tests, demo, benchmarks),
/// each with what is run from it.
const BASE_PACKAGES: &[Package] = &[
    // Topologies and tests.
    package("iproute2", &[Program("ip")]),
    package("curl", &[Program("curl")]),
    package("python3", &[Program("python3")]),
    package("tcpdump", &[Program("tcpdump")]),
    package("tshark", &[Program("tshark")]),
    package("socat", &[Program("socat")]),
    // The NAT at a network's edge in multi-network topologies.
    package("iptables", &[Program("iptables"), Program("ip6tables")]),
    // The upstream nameserver of the DNS tests.
    package("dnsmasq-base", &[Program("dnsmasq")]),
    package("openssl", &[Program("openssl")]),
    // Where the rate-limit service keeps its counts (tests and demo).
    package("redis-server", &[Program("redis-server")]),
    // Scrapes the mesh's metrics (tests and demo), as users' Prometheus does.
    package("prometheus", &[Program("prometheus")]),
    // What the install test checks is gone after uninstalling.
    package("bpftool", &[Program("bpftool")]),
    // The shell scripts of deploy/ and vagrant/ are checked.
    package("shellcheck", &[Program("shellcheck")]),
    // Benchmarks.
    package("iperf3", &[Program("iperf3")]),
    package("sockperf", &[Program("sockperf")]),
    package("wrk", &[Program("wrk")]),
    package("nghttp2-client", &[Program("h2load")]),
];

/// Building the image (`cargo xtask image`) and running it (the tests).
const IMAGE_PACKAGES: &[Package] = &[
    package("musl-tools", &[Program("musl-gcc")]),
    package("binutils", &[Program("strip")]),
    package("buildah", &[Program("buildah")]),
    package("podman", &[Program("podman")]),
    package("runc", &[Program("runc")]),
];
/// The topology view's test loads the page in a headless browser.
const BROWSER_PACKAGES: &[Package] = &[package("chromium", &[Program("chromium")])];
/// The static binaries' target.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// bpf-linker 0.10's default build loads the LLVM 22 that ships inside the
/// Rust toolchain running it (`BPF_TOOLCHAIN`), so no system LLVM is needed.
const BPF_LINKER_VERSION: &str = "0.10.4";
const BPFFS: &str = "/sys/fs/bpf";

/// What a command needs installed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The embedded demo: topologies and the eBPF toolchain.
    Demo,
    /// The tests, the benchmarks and `demo --kube`: also a Kubernetes
    /// control plane, the image's tools and the chart's.
    Kube,
    /// The container image.
    Image,
    /// kind: the image and the chart's tools.
    Kind,
    /// Two VMs: the image and QEMU's tools.
    Vagrant,
}

impl Job {
    fn packages(self) -> Vec<&'static Package> {
        let mut lists = vec![BASE_PACKAGES];
        match self {
            Job::Demo => {}
            Job::Kube => lists.extend([
                kube::BUILD_PACKAGES,
                IMAGE_PACKAGES,
                tools::PACKAGES,
                BROWSER_PACKAGES,
            ]),
            Job::Image => lists.push(IMAGE_PACKAGES),
            Job::Kind => lists.extend([IMAGE_PACKAGES, tools::PACKAGES]),
            Job::Vagrant => lists.extend([IMAGE_PACKAGES, vagrant::PACKAGES]),
        }
        lists.into_iter().flatten().collect()
    }

    fn builds_image(self) -> bool {
        self != Job::Demo
    }
}

pub fn run(job: Job) -> Result<()> {
    let started = Instant::now();
    section("setup");
    host::check()?;
    // Everything from apt in one transaction: apt decides a set of
    // packages together, and one it would remove for another is refused.
    apt::ensure(&job.packages())?;
    stable_components()?;
    if job.builds_image() {
        musl_target()?;
    }
    bpf_toolchain()?;
    bpf_linker()?;
    bpffs()?;
    if job == Job::Kube {
        kube::ensure()?;
    }
    if matches!(job, Job::Kube | Job::Kind) {
        tools::ensure()?;
    }
    eprintln!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The stable toolchain's musl target, for the image's static binaries.
fn musl_target() -> Result<()> {
    let toolchain = stable_toolchain();
    let has = || {
        sysroot(&toolchain).is_some_and(|root| {
            root.join("lib/rustlib")
                .join(MUSL_TARGET)
                .join("lib/self-contained/crt1.o")
                .is_file()
        })
    };
    if has() {
        eprintln!("rustup: {toolchain} has the {MUSL_TARGET} target");
        return Ok(());
    }
    eprintln!("rustup: adding the {MUSL_TARGET} target to {toolchain} (a download of about 40 MB)");
    let recorded = stdout(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        &toolchain,
    ]));
    if recorded.lines().any(|l| l.trim() == MUSL_TARGET) {
        // Recorded but broken: rustup would call it up to date.
        cmd::run_logged(
            Command::new("rustup").args([
                "target",
                "remove",
                "--toolchain",
                &toolchain,
                MUSL_TARGET,
            ]),
            "rustup",
        )?;
    }
    cmd::run_logged(
        Command::new("rustup").args(["target", "add", "--toolchain", &toolchain, MUSL_TARGET]),
        "rustup",
    )?;
    if !has() {
        bail!(
            "rustup added the {MUSL_TARGET} target to {toolchain}, but its libraries are still missing"
        );
    }
    Ok(())
}

/// A rustup component, judged by what is run from it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Component {
    Rustfmt,
    Clippy,
    /// The standard library's source (`-Z build-std=core`).
    RustSrc,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Rustfmt => "rustfmt",
            Component::Clippy => "clippy",
            Component::RustSrc => "rust-src",
        }
    }

    fn works(self, toolchain: &str) -> bool {
        let runs = |program: &str| {
            succeeds(Command::new("rustup").args(["run", toolchain, program, "--version"]))
        };
        match self {
            Component::Rustfmt => runs("rustfmt"),
            Component::Clippy => runs("cargo-clippy"),
            Component::RustSrc => sysroot(toolchain).is_some_and(|root| {
                root.join("lib/rustlib/src/rust/library/core/src/lib.rs")
                    .is_file()
            }),
        }
    }
}

/// The toolchain running xtask: `cargo xtask test` runs its rustfmt and
/// clippy, which a minimal rustup profile lacks.
fn stable_toolchain() -> String {
    std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into())
}

fn stable_components() -> Result<()> {
    ensure_toolchain(
        &stable_toolchain(),
        &[Component::Rustfmt, Component::Clippy],
        "",
    )
}

/// The dated nightly that compiles the eBPF programs, with the standard
/// library's source and clippy (the BPF lint run).
fn bpf_toolchain() -> Result<()> {
    ensure_toolchain(
        BPF_TOOLCHAIN,
        &[Component::RustSrc, Component::Clippy],
        " (a download of about 100 MB, usually under a minute)",
    )
}

/// Makes `toolchain` run with each of `wanted`, installing the toolchain
/// (minimal profile) when it is missing.
fn ensure_toolchain(toolchain: &str, wanted: &[Component], size: &str) -> Result<()> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!(
            "rustup is not installed: strait's eBPF programs need a nightly toolchain that setup installs with rustup (https://rustup.rs)"
        );
    }
    let names = |list: &[Component]| {
        list.iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let missing: Vec<Component> = wanted
        .iter()
        .copied()
        .filter(|c| !c.works(toolchain))
        .collect();
    if missing.is_empty() {
        eprintln!("rustup: {toolchain} with {} present", names(wanted));
        return Ok(());
    }
    let started = Instant::now();
    if sysroot(toolchain).is_none() {
        eprintln!(
            "rustup: installing {toolchain} (minimal profile, {}){size}",
            names(wanted)
        );
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
        for c in wanted {
            install.args(["--component", c.name()]);
        }
        cmd::run_logged(&mut install, "rustup")?;
    } else {
        eprintln!("rustup: adding {} to {toolchain}", names(&missing));
        let recorded = stdout(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]));
        let broken: Vec<&str> = missing
            .iter()
            .map(|c| c.name())
            .filter(|name| recorded.lines().any(|l| l.starts_with(name)))
            .collect();
        if !broken.is_empty() {
            // Recorded but not working: rustup would call it up to date.
            cmd::run_logged(
                Command::new("rustup")
                    .args(["component", "remove", "--toolchain", toolchain])
                    .args(&broken),
                "rustup",
            )?;
        }
        cmd::run_logged(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", toolchain])
                .args(missing.iter().map(|c| c.name())),
            "rustup",
        )?;
    }
    let still: Vec<Component> = wanted
        .iter()
        .copied()
        .filter(|c| !c.works(toolchain))
        .collect();
    if !still.is_empty() {
        bail!(
            "rustup finished, but {toolchain} still lacks a working {}",
            names(&still)
        );
    }
    crate::cmd::took("rustup", started.elapsed());
    Ok(())
}

/// The toolchain's sysroot; `None` when it is not installed.
fn sysroot(toolchain: &str) -> Option<PathBuf> {
    let out =
        stdout(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]));
    let path = out.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
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
    cmd::run_logged(
        cargo().args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]),
        "bpf-linker",
    )?;
    crate::cmd::took("bpf-linker", started.elapsed());
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
