//! `cargo xtask` is what installs the eBPF toolchain, so it has to build on a
//! machine where setup has never run: nothing it builds may compile eBPF.
//! This reads cargo's resolved dependency graph and fails when a crate that
//! needs the eBPF toolchain (nightly, rust-src, bpf-linker) is among
//! xtask's build-time dependencies.
use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::cmd::cargo;

/// Why `package` cannot build before setup, if it cannot.
fn needs_ebpf_toolchain(package: &Value) -> Option<&'static str> {
    let deps = package["dependencies"].as_array()?;
    deps.iter()
        .find_map(|dep| match (dep["name"].as_str(), dep["kind"].as_str()) {
            (Some("aya-ebpf"), None) => Some("it is kernel-side eBPF code (aya-ebpf)"),
            _ => None,
        })
}

/// The crates `root` needs to build (normal and build dependencies,
/// transitively; dev-dependencies only matter for its tests, which run
/// after setup) that need the eBPF toolchain, each as the chain that brings
/// it in and the reason.
fn offenders(metadata: &Value, root: &str) -> Vec<String> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let name = |id: &str| {
        packages
            .get(id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or(id)
            .to_owned()
    };
    let Some(root_id) = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|id| name(id) == root)
    else {
        return vec![format!("{root} is not a workspace member")];
    };

    // Breadth first, so each chain reported is a shortest one.
    let mut chain: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    chain.insert(root_id, vec![root.to_owned()]);
    let mut queue = VecDeque::from([root_id]);
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        let path = chain[id].clone();
        if let Some(why) = packages.get(id).and_then(|p| needs_ebpf_toolchain(p)) {
            found.push(format!("{}: {why}", path.join(" -> ")));
        }
        let deps = nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten();
        for dep in deps {
            let built = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if built && !chain.contains_key(dep_id) {
                let mut next = path.clone();
                next.push(name(dep_id));
                chain.insert(dep_id, next);
                queue.push_back(dep_id);
            }
        }
    }
    found
}

#[test]
fn xtask_builds_before_setup() {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let found = offenders(&metadata, "xtask");
    assert!(
        found.is_empty(),
        "`cargo xtask` would need the eBPF toolchain, which only its setup installs:\n  {}",
        found.join("\n  ")
    );
}

/// A graph shaped like the one issue 11 reported: the guard must see the
/// build script's eBPF crate (a build-dependency) two levels down, and
/// must not count dev-dependencies.
#[test]
fn the_guard_finds_an_ebpf_build_script_behind_a_library() {
    let dep = |name: &str, kind: Value| serde_json::json!({"name": name, "kind": kind});
    let edge = |pkg: &str, kind: Value| serde_json::json!({"pkg": pkg, "dep_kinds": [{"kind": kind, "target": null}]});
    let metadata = serde_json::json!({
        "workspace_members": ["x", "e2e", "cap", "topo"],
        "packages": [
            {"id": "x", "name": "xtask", "dependencies": [dep("strait-e2e", Value::Null)]},
            {"id": "e2e", "name": "strait-e2e", "dependencies": [dep("strait-capture", Value::Null)]},
            {"id": "cap", "name": "strait-capture", "dependencies": [dep("strait-ebpf", "build".into())]},
            {"id": "topo", "name": "strait-topology", "dependencies": [dep("strait-capture", "dev".into())]},
            {"id": "ebpf", "name": "strait-ebpf", "dependencies": [dep("aya-ebpf", Value::Null)]},
        ],
        "resolve": {"nodes": [
            {"id": "x", "deps": [edge("e2e", Value::Null), edge("topo", Value::Null)]},
            {"id": "e2e", "deps": [edge("cap", Value::Null)]},
            {"id": "cap", "deps": [edge("ebpf", "build".into())]},
            {"id": "topo", "deps": [edge("cap", "dev".into())]},
            {"id": "ebpf", "deps": []},
        ]},
    });
    assert_eq!(
        offenders(&metadata, "xtask"),
        vec![
            "xtask -> strait-e2e -> strait-capture -> strait-ebpf: it is kernel-side eBPF code (aya-ebpf)"
        ]
    );
    // Reached only as a dev-dependency, the same crate is fine.
    assert!(offenders(&metadata, "strait-topology").is_empty());
}
