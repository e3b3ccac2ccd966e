//! `straitctl validate` as users run it: exit status and one line per
//! object or problem.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn validate(path: &Path, stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_straitctl"))
        .args(["validate", "-f"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running straitctl");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("straitctl output")
}

#[test]
fn istio_examples_pass_with_exit_status_zero() {
    let out = validate(&repo("tests/examples/istio"), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("accepted ")).count(),
        6,
        "{text}"
    );
    assert!(
        text.contains("6 object(s): 6 accepted, 0 ignored, 0 rejected"),
        "{text}"
    );
}

#[test]
fn broken_manifests_fail_with_file_object_field_and_reason() {
    let out = validate(&repo("agent/config/tests/broken"), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rejected "))
        .collect();
    // The subset no DestinationRule defines is a warning, as in Istio.
    assert_eq!(rejected.len(), 8, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning ") && l.contains("subset \"v3\"")),
        "{text}"
    );
    for line in rejected.iter().filter(|l| !l.contains("not-yaml.yaml")) {
        // rejected FILE:LINE Kind ns/name: field PATH: REASON
        let (location, rest) = line["rejected ".len()..]
            .split_once(' ')
            .unwrap_or_else(|| panic!("{line}"));
        assert!(location.contains(".yaml:"), "no file:line in {line}");
        let (object, rest) = rest
            .split_once(": field ")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(object.contains('/'), "no object in {line}");
        let (field, reason) = rest.split_once(": ").unwrap_or_else(|| panic!("{line}"));
        assert!(!field.is_empty() && !reason.is_empty(), "{line}");
    }
}

#[test]
fn stdin_is_read_with_a_dash() {
    let good = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    let out = validate(Path::new("-"), Some(good));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted <stdin>:1 Namespace shop"));

    let bad = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\nspec:\n  mtls:\n    mode: STRICTER\n";
    let out = validate(Path::new("-"), Some(bad));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("rejected <stdin>:7 PeerAuthentication default/p: field spec.mtls.mode: \"STRICTER\" is not one of"),
        "{text}"
    );
}

#[test]
fn a_missing_path_is_an_error_not_a_verdict() {
    let out = validate(Path::new("/nonexistent/strait"), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/strait"));
}

/// An EnvoyFilter whose patches strait applies (a local rate limit) is
/// accepted; one with a patch it does not apply is refused, naming the
/// patch and the field, and the exit status says so.
#[test]
fn envoy_filter_patches_strait_does_not_apply_are_refused_by_name() {
    let filter = |patch: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: limits, namespace: shop}}
spec:
  targetRefs:
  - {{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: local
          token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}}
{patch}"
        )
    };
    let out = validate(Path::new("-"), Some(&filter("")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("accepted <stdin>:1 EnvoyFilter shop/limits"),
        "{text}"
    );

    let lua = "  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}
";
    let out = validate(Path::new("-"), Some(&filter(lua)));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("EnvoyFilter shop/limits: field spec.configPatches[1].patch.value.name: \"envoy.filters.http.lua\" is not a filter strait applies"),
        "{text}"
    );
    let cluster = "  - applyTo: CLUSTER
    patch: {operation: MERGE, value: {connect_timeout: 1s}}
";
    let out = validate(Path::new("-"), Some(&filter(cluster)));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("field spec.configPatches[1].applyTo: CLUSTER is not applied"),
        "{text}"
    );
}
