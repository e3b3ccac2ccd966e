//! The scale rows of `cargo xtask bench`: an agent loading a generated
//! config of 10,000 Services and 100,000 WorkloadEntries (spread over 100
//! namespaces, every Service selecting ten entries), how long it takes and
//! what the agent holds afterwards.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, Result};
use strait_e2e::{Mesh, metric_sum};

const NAMESPACES: usize = 100;
pub const SERVICES: usize = 10_000;
pub const WORKLOADS: usize = 100_000;
/// Entries per generated file.
const PER_FILE: usize = 10_000;

pub struct Figures {
    pub load_seconds: f64,
    pub reload_seconds: f64,
    /// Peak while loading at start.
    pub start_peak_rss_mib: f64,
    /// Resident once loaded.
    pub rss_mib: f64,
    /// Peak over the start and the reload (old and new config coexist while
    /// the new one is checked).
    pub peak_rss_mib: f64,
}

/// Writes the generated manifests into `dir`.
pub fn write_config(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n"
        );
    }
    for i in 0..SERVICES {
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{ns}\nspec:\n  clusterIP: 10.{a}.{b}.{c}\n  selector:\n    app: svc-{i}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n",
            ns = i % NAMESPACES,
            a = 96 + i / 65_536,
            b = (i / 256) % 256,
            c = i % 256,
        );
    }
    write(dir, "services.yaml", &text)?;
    for part in 0..WORKLOADS / PER_FILE {
        text.clear();
        for k in part * PER_FILE..(part + 1) * PER_FILE {
            let i = k % SERVICES;
            let _ = write!(
                text,
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we-{k}\n  namespace: ns-{ns}\nspec:\n  address: 10.{a}.{b}.{c}\n  serviceAccount: sa-{i}\n  labels:\n    app: svc-{i}\n  locality: r{r}/z{z}\n---\n",
                ns = i % NAMESPACES,
                a = 128 + k / 65_536,
                b = (k / 256) % 256,
                c = k % 256,
                r = k % 3,
                z = k % 2,
            );
        }
        write(dir, &format!("workloads-{part:02}.yaml"), &text)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Starts `node`'s agent on the generated config in `dir`, then has it
/// reload the same directory once.
pub fn measure(mesh: &Mesh<'_>, node: &str, dir: &Path) -> Result<Figures> {
    let flags = [("--config-dir", dir.to_str().context("a UTF-8 path")?)];
    let agent = mesh
        .start_agent(node, &flags)
        .map_err(anyhow::Error::from_boxed)?;
    let metric = |name: &str| -> Result<f64> {
        let text = mesh.metrics(node).map_err(anyhow::Error::from_boxed)?;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .with_context(|| format!("no {name} in the agent's metrics"))
    };
    let load_seconds = metric("strait_config_load_seconds")?;
    let rss = || super::measure::rss_mib(&agent);
    let (start_peak_rss_mib, rss_after_load) = rss();

    // A change (a new file) makes the agent load the whole directory again.
    write(
        dir,
        "zz-touch.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: touched\n",
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reload_seconds = loop {
        let text = mesh.metrics(node).map_err(anyhow::Error::from_boxed)?;
        if metric_sum(
            &text,
            "strait_config_reloads_total",
            &["result=\"success\""],
        ) >= 1
        {
            break metric("strait_config_load_seconds")?;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the agent did not reload the generated config within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (peak_rss_mib, _) = rss();
    Ok(Figures {
        load_seconds,
        reload_seconds,
        start_peak_rss_mib,
        rss_mib: rss_after_load,
        peak_rss_mib,
    })
}
