//! `cargo xtask test`: the whole gate, in the order that fails fastest.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use strait_ebpf_common::BPF_TOOLCHAIN;

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
    // The install tests run the image as the Helm chart says.
    let image = crate::image::build()?;

    section("unit and end-to-end tests");
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"])
        .env("STRAIT_IMAGE_ARCHIVE", &image);
    if let Some(filter) = filter {
        test.args(["--", filter]);
    }
    let totals = run_counting(&mut test)?;
    // One closing line for the whole run: cargo's own last line is that of
    // the last crate's doc tests, usually empty.
    println!(
        "strait: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || !totals.exit_ok {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    exit_ok: bool,
}

/// Runs `cargo test`, passing its output through, and adds up its
/// `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    eprintln!("$ cargo test ...");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            add_result_line(&mut totals, &line);
        }
    }
    totals.exit_ok = child.wait().context("waiting for cargo test")?.success();
    Ok(totals)
}

/// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; ...`
fn add_result_line(totals: &mut Totals, line: &str) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            "ignored" => totals.ignored += n,
            _ => {}
        }
    }
}

/// Clippy on `ebpf/programs` as it is really compiled: the pinned nightly, BPF target,
/// `core` built from source. Its own target dir keeps the host cache intact.
fn bpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root())
        .args([
            "run",
            BPF_TOOLCHAIN,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_result_lines() {
        let mut t = Totals::default();
        add_result_line(
            &mut t,
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        add_result_line(
            &mut t,
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        add_result_line(&mut t, "running 5 tests");
        add_result_line(&mut t, "test passed ... ok");
        assert_eq!((t.passed, t.failed, t.ignored), (7, 3, 1));
    }
}
