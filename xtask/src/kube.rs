//! A real Kubernetes API server for the tests: no package ships one, so
//! setup builds `kube-apiserver` and `kubectl` from Debian 12's own
//! `kubernetes` source package (1.20.2) with Debian's Go, once, and keeps
//! the binaries in `strait_e2e::kube::BIN_DIR`. etcd comes from apt.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use strait_e2e::kube::{BIN_DIR, VERSION};

use crate::{
    apt::{
        Package,
        Provides::{File, Program},
        package,
    },
    cmd::{self, stdout},
};

/// Debian's source package, and what its build needs.
const SOURCE: &str = "kubernetes";
pub const BUILD_PACKAGES: &[Package] = &[
    package("golang-go", &[Program("go")]),
    package(
        "golang-github-modern-go-reflect2-dev",
        &[File(concat!(reflect2!(), "/reflect2.go"))],
    ),
    package("dpkg-dev", &[Program("dpkg-source")]),
    // Kubernetes' build scripts.
    package("rsync", &[Program("rsync")]),
    package("jq", &[Program("jq")]),
    package("etcd-server", &[Program("etcd")]),
];
/// The vendored reflect2 1.0.1 predates Go 1.18 and panics on every map
/// (labels, annotations) the server decodes; Debian ships 1.0.2.
macro_rules! reflect2 {
    () => {
        "/usr/share/gocode/src/github.com/modern-go/reflect2"
    };
}
use reflect2;
const REFLECT2: &str = reflect2!();
/// A `deb-src` entry for the archive apt already uses, when none exists.
const DEB_SRC: &str = "/etc/apt/sources.list.d/strait-deb-src.sources";
const DEB_SRC_ENTRY: &str = "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Builds the binaries unless the cached ones are of the right version.
pub fn ensure() -> Result<()> {
    let dir = Path::new(BIN_DIR);
    let server = dir.join("kube-apiserver");
    let version = stdout(Command::new(&server).arg("--version"));
    if version.contains(&format!("v{VERSION}")) && dir.join("kubectl").is_file() {
        eprintln!("kube-apiserver: {VERSION} present in {BIN_DIR}");
        return Ok(());
    }
    eprintln!(
        "kube-apiserver: building {VERSION} and kubectl from Debian's source package (about 8 minutes on 2 cores, once)"
    );
    let started = Instant::now();
    let build = dir.join("build");
    if build.exists() {
        std::fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    }
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    fetch_source(&build)?;
    let src = build.join("src");
    let dsc = std::fs::read_dir(&build)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dsc"))
        .context("apt-get source left no .dsc")?;
    cmd::run_logged(
        Command::new("dpkg-source")
            .arg("-x")
            .arg(&dsc)
            .arg(&src)
            .current_dir(&build),
        "kube-source",
    )?;
    replace_reflect2(&src)?;
    // The GOPATH layout Debian's rules make: the tree as k8s.io/kubernetes.
    let gopath = src.join(".go");
    let link = gopath.join("src/k8s.io");
    std::fs::create_dir_all(&link)?;
    std::os::unix::fs::symlink("../../..", link.join("kubernetes"))
        .context("linking the source into GOPATH")?;
    cmd::run_logged(
        Command::new("make")
            .arg("WHAT=cmd/kube-apiserver cmd/kubectl")
            .current_dir(&src)
            .env("GOPATH", &gopath)
            .env("GOCACHE", build.join("gocache"))
            .env("HOME", &build)
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=vendor"),
        "kube-build",
    )?;
    for bin in ["kube-apiserver", "kubectl"] {
        let built = src.join("_output/bin").join(bin);
        std::fs::copy(&built, dir.join(bin))
            .with_context(|| format!("copying {} to {BIN_DIR}", built.display()))?;
    }
    std::fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    let version = stdout(Command::new(&server).arg("--version"));
    if !version.contains(&format!("v{VERSION}")) {
        bail!("the built kube-apiserver says {version:?}, not v{VERSION}");
    }
    crate::cmd::took("kube-apiserver and kubectl", started.elapsed());
    Ok(())
}

/// `apt-get source --download-only`, adding a `deb-src` entry first when
/// apt has none.
fn fetch_source(build: &Path) -> Result<()> {
    let sources =
        stdout(Command::new("apt-get").args(["indextargets", "--format", "$(CREATED_BY)"]));
    if !sources.lines().any(|l| l.starts_with("Sources")) {
        eprintln!("apt: adding a deb-src entry ({DEB_SRC})");
        std::fs::write(DEB_SRC, DEB_SRC_ENTRY).with_context(|| format!("writing {DEB_SRC}"))?;
        cmd::run_logged(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-update",
        )?;
    }
    cmd::run_logged(
        Command::new("apt-get")
            .args(["source", "--download-only", SOURCE])
            .current_dir(build),
        "kube-source",
    )
}

fn replace_reflect2(src: &Path) -> Result<()> {
    let vendored: PathBuf = src.join("vendor/github.com/modern-go/reflect2");
    std::fs::remove_dir_all(&vendored)
        .with_context(|| format!("removing {}", vendored.display()))?;
    cmd::run(Command::new("cp").arg("-r").arg(REFLECT2).arg(&vendored))?;
    // Vendored packages carry no go.mod of their own.
    let module = vendored.join("go.mod");
    if module.exists() {
        std::fs::remove_file(&module)?;
    }
    Ok(())
}
