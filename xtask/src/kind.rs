//! `cargo xtask kind`: the demo's scenario on kind clusters
//! (`deploy/kind/scenario.sh`): the image built here and loaded into the
//! clusters, strait installed with its chart. kind itself, a container
//! engine it supports and its node image are the user's: this machine has
//! no kind node image, so the scenario is not run in CI.
use std::process::Command;

use anyhow::{Result, bail};
use strait_e2e::install::TOOLS_DIR;

use crate::{cmd, image};

/// kind is the user's to install: checked before setup installs anything.
pub fn check() -> Result<()> {
    if !cmd::succeeds(Command::new("kind").arg("version")) {
        bail!(
            "kind is not installed: install it (https://kind.sigs.k8s.io) with docker or podman, then run `cargo xtask kind` again"
        );
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let archive = image::build()?;
    // `helm` from setup, first on PATH.
    let path = format!("{TOOLS_DIR}:{}", std::env::var("PATH").unwrap_or_default());
    cmd::run(
        Command::new("bash")
            .arg(cmd::root().join("deploy/kind/scenario.sh"))
            .arg(&archive)
            .env("PATH", path),
    )
}
