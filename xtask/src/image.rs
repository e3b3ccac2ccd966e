//! `cargo xtask image`: the container image, built offline. Static
//! binaries (`x86_64-unknown-linux-musl`, with musl-gcc for the C in
//! `ring`) in an image from `scratch` made with buildah, exported as an OCI
//! archive. Nothing is pulled from a registry.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};
use strait_e2e::install::{IMAGE_NAME, image_archive};

use crate::cmd::{self, cargo, section, stdout, target_dir};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// The binaries in the image, all in /usr/local/bin.
const BINARIES: &[&str] = &[
    "strait-agent",
    "strait-ca",
    "strait-controller",
    "strait-ratelimit",
    "strait-waypoint",
    "straitctl",
];

/// Builds the image and writes the archive; its path.
pub fn build() -> Result<PathBuf> {
    section("image");
    let started = Instant::now();
    let bin = binaries()?;
    let stage = target_dir().join("image").join("rootfs");
    let archive = image_archive();
    let container = stdout(Command::new("buildah").args(["from", "scratch"]))
        .trim()
        .to_owned();
    if container.is_empty() {
        bail!("`buildah from scratch` gave no container");
    }
    let made = commit(&container, &stage, &archive);
    cmd::run(Command::new("buildah").args(["rm", &container]))?;
    made?;
    let size = std::fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    println!(
        "image {IMAGE_NAME}: {} ({:.1} MiB), built in {:.0} s; contents:",
        archive.display(),
        size as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    for name in BINARIES {
        let len = std::fs::metadata(bin.join(name))?.len();
        println!(
            "  /usr/local/bin/{name}  {:.1} MiB",
            len as f64 / (1 << 20) as f64
        );
    }
    Ok(archive)
}

/// The image's binaries, static (musl) and stripped, staged where the
/// image is made from; their directory. The bench runs them too.
pub fn binaries() -> Result<PathBuf> {
    let mut build = cargo();
    build
        .args(["build", "--release", "--target", TARGET, "--bins"])
        .args(BINARIES.iter().flat_map(|b| ["-p", b]))
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    cmd::run(&mut build)?;
    let built = target_dir().join(TARGET).join("release");
    let stage = target_dir().join("image").join("rootfs");
    let bin = staged_bin_dir();
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in BINARIES {
        let out = bin.join(name);
        // Debug symbols stay in the build; the image carries none.
        cmd::run(
            Command::new("strip")
                .arg("-o")
                .arg(&out)
                .arg(built.join(name)),
        )?;
    }
    Ok(bin)
}

/// Where the image's binaries are staged (static, stripped): what the VMs
/// of `cargo xtask vagrant` run too.
pub fn staged_bin_dir() -> PathBuf {
    target_dir().join("image/rootfs/usr/local/bin")
}

fn commit(container: &str, stage: &std::path::Path, archive: &std::path::Path) -> Result<()> {
    cmd::run(
        Command::new("buildah")
            .args(["copy", container])
            .arg(stage.join("usr"))
            .arg("/usr"),
    )?;
    cmd::run(Command::new("buildah").args([
        "config",
        "--entrypoint",
        r#"["/usr/local/bin/strait-agent"]"#,
        "--label",
        "org.opencontainers.image.title=strait",
        "--label",
        &format!(
            "org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
        container,
    ]))?;
    cmd::run(Command::new("buildah").args(["commit", "--quiet", container, IMAGE_NAME]))?;
    if let Some(dir) = archive.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(archive);
    cmd::run(
        Command::new("buildah")
            .args(["push", "--quiet", IMAGE_NAME])
            .arg(format!("oci-archive:{}:{IMAGE_NAME}", archive.display())),
    )
}
