//! "Modules do not import each other in circles": in every crate of the
//! workspace, this reads what each top-level module names of the others
//! (`crate::x` paths, `use crate::{x, y::z}` groups) and fails on a cycle,
//! printing it. Submodules count as their top-level module; `super::`
//! stays inside one, except from a top-level module, where it is the
//! crate root.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules that `text` names through `crate::`.
fn named(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if rest.starts_with('{') {
                // Only the group's first line is read: rustfmt puts one
                // item per line, so each following line is read on its own
                // below.
                for item in rest.trim_start_matches('{').split(',') {
                    let name = ident(item.trim_start());
                    if !name.is_empty() && name != "self" {
                        found.insert(name);
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The items of `use crate::{...}` groups that rustfmt spread over lines.
fn grouped(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut depth = 0usize;
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !inside && trimmed.starts_with("use crate::{") && !trimmed.ends_with("};") {
            inside = true;
            depth = 1;
            continue;
        }
        if inside {
            if depth == 1 {
                let name = ident(trimmed);
                if !name.is_empty() && name != "self" {
                    found.insert(name);
                }
            }
            depth += trimmed.matches('{').count();
            depth = depth.saturating_sub(trimmed.matches('}').count());
            if depth == 0 {
                inside = false;
            }
        }
    }
    found
}

/// The module graph of the crate whose sources are under `src`.
fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).unwrap_or(&file);
        let top = relative
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if matches!(top.as_str(), "main" | "lib") {
            continue;
        }
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        // In a top-level module, `super` is the crate root.
        let depth = relative.components().count();
        if depth == 1 || relative.ends_with("mod.rs") && depth == 2 {
            text = text.replace("super::", "crate::");
        }
        let mut uses = named(&text);
        uses.extend(grouped(&text));
        uses.remove(&top);
        graph.entry(top).or_default().extend(uses);
    }
    graph
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// One cycle of `graph`, as the path around it, if there is one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if graph.contains_key(next)
                && let Some(found) = visit(next, graph, path, done)
            {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_modules_importing_each_other_in_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = Vec::new();
    for top in ["agent", "ebpf", "waypoint", "tests", "xtask"] {
        let dir = root.join(top);
        if dir.join("src").is_dir() {
            sources.push(dir.join("src"));
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().join("src").is_dir() {
                sources.push(entry.path().join("src"));
            }
        }
    }
    assert!(sources.len() > 10, "found only {sources:?}");
    let cycles: Vec<String> = sources
        .iter()
        .filter_map(|src| {
            let found = cycle(&graph(src))?;
            Some(format!("{}: {}", src.display(), found.join(" -> ")))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules importing each other in a circle:\n  {}",
        cycles.join("\n  ")
    );
}

/// The agent's shape before issue 26 split it: pods, the proxy and the DNS
/// proxy named each other, one `use crate::{...}` group spread over lines.
#[test]
fn the_guard_sees_a_circle_through_a_spread_group() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("proxy")).unwrap();
    std::fs::write(src.join("main.rs"), "mod pods;\nmod proxy;\nmod dns;\n").unwrap();
    std::fs::write(
        src.join("pods.rs"),
        "use crate::{\n    metrics::Metrics,\n    proxy::{\n        Proxy,\n        share::Share,\n    },\n};\n",
    )
    .unwrap();
    std::fs::write(
        src.join("proxy/mod.rs"),
        "// crate::pods is named in a comment only\n",
    )
    .unwrap();
    std::fs::write(
        src.join("proxy/inbound.rs"),
        "fn f() { crate::dns::handle(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("dns.rs"),
        "use crate::{pods::Pod, proxy::Proxy};\n",
    )
    .unwrap();
    std::fs::write(src.join("metrics.rs"), "use super::proxy::share;\n").unwrap();
    let graph = graph(src);
    assert_eq!(
        graph["pods"],
        BTreeSet::from(["metrics".to_string(), "proxy".to_string()])
    );
    assert_eq!(graph["metrics"], BTreeSet::from(["proxy".to_string()]));
    assert_eq!(
        cycle(&graph),
        Some(vec![
            "dns".into(),
            "pods".into(),
            "metrics".into(),
            "proxy".into(),
            "dns".into()
        ])
    );
    // Without the call from the proxy into the DNS proxy: no circle.
    std::fs::write(src.join("proxy/inbound.rs"), "fn f() {}\n").unwrap();
    assert_eq!(cycle(&self::graph(src)), None);
}
