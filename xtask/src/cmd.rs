//! Running the tools xtask drives, with the command line shown first.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cmd` with inherited output; a failure names the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with its output kept in a log file (`NAME.log` under the
/// target directory's `setup-logs/`), shown only when it fails: a step
/// that worked has nothing to tell, and apt's, make's and cargo install's
/// progress would bury what does.
pub fn run_logged(cmd: &mut Command, name: &str) -> Result<()> {
    const SHOWN: usize = 40;
    let dir = target_dir().join("setup-logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!(
        "$ {}\n{}",
        display(cmd),
        lines[lines.len().saturating_sub(SHOWN)..].join("\n")
    );
    bail!(
        "{} failed ({status}); its whole output is in {}",
        display(cmd),
        log.display()
    )
}

/// Whether `cmd` succeeds, quietly.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cmd`'s stdout, quietly; empty when it fails.
pub fn stdout(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `cargo` as invoked by the user, run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub fn section(title: &str) {
    eprintln!("\n==> {title}");
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where cargo puts what it builds (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds the binaries of `packages` in release mode; returns where they are.
pub fn build_release(packages: &[&str]) -> Result<PathBuf> {
    section("build (release)");
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for package in packages {
        build.args(["-p", package]);
    }
    run(&mut build)?;
    Ok(target_dir().join("release"))
}

/// One line saying how long a setup step took.
pub fn took(what: &str, elapsed: std::time::Duration) {
    eprintln!("{what}: done in {:.1}s", elapsed.as_secs_f64());
}
