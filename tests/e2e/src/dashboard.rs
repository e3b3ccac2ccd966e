//! `straitctl dashboard` started on the host against Prometheus servers in
//! the topology (through loopback forwards), its graph read as JSON, and
//! its page loaded in headless Chromium (Debian's) as a user's browser
//! would: the DOM after the page's script ran, or a screenshot.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value as Json;
use strait_topology::{Forward, Process};

use crate::{Result, wait_for_line_prefix};

pub struct Dashboard {
    addr: SocketAddr,
    _process: Process,
    _forwards: Vec<Forward>,
}

impl Dashboard {
    /// Starts `straitctl dashboard` from `bin_dir` on a free loopback
    /// port, reading the Prometheus servers behind `forwards`; its log in
    /// `dir`.
    pub fn start(
        bin_dir: &Path,
        forwards: Vec<Forward>,
        refresh_s: u32,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(bin_dir.join("straitctl"));
        cmd.args(["dashboard", "--listen", "127.0.0.1:0", "--window", "1m"])
            .args(["--refresh", &refresh_s.to_string()]);
        for forward in &forwards {
            cmd.args(["--prometheus", &format!("http://{}", forward.addr())]);
        }
        let mut process = Process::spawn_logged(cmd, "straitctl dashboard", dir)?;
        wait_for_line_prefix(&mut process, "dashboard: http://", Duration::from_secs(30))?;
        let addr = process
            .log()
            .lines()
            .find_map(|l| l.strip_prefix("dashboard: http://"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no address in the dashboard's log:\n{}", process.log()))?;
        Ok(Self {
            addr,
            _process: process,
            _forwards: forwards,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `/api/graph`, as the page reads it.
    pub fn graph(&self) -> Result<Json> {
        let out = strait_topology::process::run(
            {
                let mut cmd = Command::new("curl");
                cmd.args([
                    "-sS",
                    "--max-time",
                    "30",
                    &format!("{}api/graph", self.url()),
                ]);
                cmd
            },
            Duration::from_secs(40),
        )?;
        if !out.status.success() {
            return Err(format!("GET /api/graph: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// Headless Chromium, nothing fetched but the page: no sync, no updates,
/// no first-run, a profile of its own under `dir`.
fn chromium(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile)?;
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    let out = strait_topology::process::run(cmd, Duration::from_secs(180))?;
    if !out.status.success() {
        return Err(format!(
            "chromium {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out)
}

/// The DOM of `url` once its script has run for `budget` of virtual time
/// (the page's fetches complete within it).
pub fn dom(url: &str, budget: Duration, dir: &Path) -> Result<String> {
    let budget = format!("--virtual-time-budget={}", budget.as_millis());
    let out = chromium(dir, &[&budget, "--dump-dom", url])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `width`x`height` screenshot of `url` at `png`.
pub fn screenshot(
    url: &str,
    png: &Path,
    (width, height): (u32, u32),
    budget: Duration,
    dir: &Path,
) -> Result<PathBuf> {
    let budget = format!("--virtual-time-budget={}", budget.as_millis());
    let size = format!("--window-size={width},{height}");
    let shot = format!("--screenshot={}", png.display());
    chromium(dir, &[&budget, &size, &shot, url])?;
    if !png.exists() {
        return Err(format!("chromium wrote no {}", png.display()).into());
    }
    Ok(png.to_path_buf())
}

/// The elements of `dom` that start `<{tag} class="{class}` (exactly, or
/// followed by more classes), each as its attributes.
pub fn elements(
    dom: &str,
    tag: &str,
    class: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut found = Vec::new();
    let open = format!("<{tag} ");
    for start in dom.match_indices(&open).map(|(i, _)| i + open.len()) {
        let Some(end) = dom[start..].find('>') else {
            continue;
        };
        let attrs = attributes(&dom[start..start + end]);
        let classes = attrs.get("class").map(String::as_str).unwrap_or_default();
        if classes.split_whitespace().next() == Some(class) {
            found.push(attrs);
        }
    }
    found
}

/// `name="value"` pairs, values unescaped as HTML serializes them.
fn attributes(tag: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let after = &rest[eq + 2..];
        let Some(close) = after.find('"') else { break };
        let value = after[..close]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&");
        out.insert(name, value);
        rest = &after[close + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_found_by_their_first_class_with_attributes_unescaped() {
        let dom = r#"<svg><g class="edge live" data-id="a-&gt;b" data-x="&quot;q&quot; &amp;"></g><g class="edges"><g class="node" data-id="n"></g></svg>"#;
        let edges = elements(dom, "g", "edge");
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0]["data-id"], "a->b");
        assert_eq!(edges[0]["data-x"], "\"q\" &");
        assert_eq!(elements(dom, "g", "node")[0]["data-id"], "n");
    }
}
