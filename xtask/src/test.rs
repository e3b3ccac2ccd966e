//! `cargo xtask test`: the whole gate, in the order that fails fastest.
use std::process::Command;

use anyhow::Result;

use crate::cmd::{self, cargo, root, section, target_dir};

pub fn run(filter: Option<&str>) -> Result<()> {
    section("fmt");
    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;

    section("clippy (host crates)");
    cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;

    section("clippy (eBPF programs, BPF target)");
    cmd::run(&mut bpf_clippy())?;

    section("build binaries (the end-to-end tests run them)");
    cmd::run(cargo().args(["build", "--bins"]))?;

    section("unit and end-to-end tests");
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"]);
    if let Some(filter) = filter {
        test.args(["--", filter]);
    }
    cmd::run(&mut test)
}

/// Clippy on `ebpf/programs` as it is really compiled: nightly, BPF target,
/// `core` built from source. Its own target dir keeps the host cache intact.
fn bpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "strait-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir().join("bpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}
