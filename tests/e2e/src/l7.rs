//! What the L7 tests (and the bench and demo) run beside the mesh: keys and
//! JWTs (`tests/e2e/py/jwt_tool.py`), and a Redis for the rate-limit
//! service.
use std::{path::Path, time::Duration};

use strait_topology::{Pod, Process};

use crate::{Result, install};

/// Keys and tokens kept in one directory: `key`, `drop`, `sign` and
/// `forge`, as `jwt_tool.py` says.
pub struct JwtTool {
    dir: String,
    python: String,
    script: String,
}

impl JwtTool {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.display().to_string(),
            python: install::l7_python().display().to_string(),
            script: install::l7_script("jwt_tool.py").display().to_string(),
        }
    }

    /// `jwt_tool.py COMMAND DIR ARGS...`; what it printed.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(&self.python)
            .arg(&self.script)
            .args(args.iter().take(1))
            .arg(&self.dir)
            .args(args.iter().skip(1))
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "jwt_tool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A token of `claims` (JSON) signed with `kid`'s key as `alg`.
    pub fn sign(&self, kid: &str, alg: &str, claims: &str) -> Result<String> {
        self.run(&["sign", kid, alg, claims])
    }
}

/// A Redis in `pod` on port 6379 of its address, keeping nothing on disk;
/// reached from other pods with no password (a test's own).
pub fn redis(pod: &Pod) -> Result<Process> {
    let mut server = pod.place.spawn(&[
        "redis-server",
        "--port",
        "6379",
        "--bind",
        &pod.ipv4.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ])?;
    server.wait_listening(6379, Duration::from_secs(10))?;
    Ok(server)
}
