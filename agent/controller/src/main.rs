//! `strait-controller`: makes waypoints from Gateways. Applying a Gateway
//! of class `istio-waypoint` is enough, as with Istio: this creates its
//! ServiceAccount, Deployment and Service ([`objects`]), keeps them so
//! ([`reconcile`]), and writes the Gateway's status (`Accepted`,
//! `Programmed`, its address). It holds no key and signs nothing; the CA
//! stays the only key holder.
mod metrics;
mod objects;
mod reconcile;
mod settings;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use clap::Parser;
use tracing::{info, warn};

use crate::{reconcile::Context, settings::Settings};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How waypoints are made (JSON; the chart renders it from its
    /// `waypoints` values).
    #[arg(long, env = "STRAIT_CONTROLLER_SETTINGS")]
    settings: PathBuf,
    /// Kubeconfig of the API server; without it, as a pod reaches its own
    /// cluster.
    #[arg(long, env = "STRAIT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Prometheus metrics (`/metrics`) and readiness (`/healthz/ready`),
    /// on each of these.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.0.0.0:15020,0.0.0.0:15021"
    )]
    stats_addr: Vec<SocketAddr>,
}

/// How often the Gateway API is looked for while it is not served.
const CRD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = Settings::read(&args.settings).context("--settings")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args, settings))
}

async fn run(args: Args, settings: Settings) -> Result<()> {
    let access = match args.kubeconfig {
        Some(path) => strait_kube::Access::Kubeconfig(path),
        None => strait_kube::Access::InCluster,
    };
    let client = strait_kube::client(&access)
        .await
        .with_context(|| format!("the API server ({access})"))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stats = {
        let metrics = metrics.clone();
        strait_http::bind_stats(
            &args.stats_addr,
            "controller stats",
            Arc::new(move || metrics.encode()),
            ready.clone(),
        )
        .await?
    };
    // Not ready until the Gateway API is served: the pod's readiness says
    // what is missing.
    let gateway = &strait_kube::KINDS[4];
    let gateways = loop {
        if let Some(resource) = gateway.resource(&client).await {
            break resource;
        }
        warn!(
            "the API server serves no {}/{} {}: install the Gateway API CRDs; looking again in {} s",
            gateway.group,
            gateway.versions.join(" or "),
            gateway.kind,
            CRD_WAIT.as_secs()
        );
        tokio::time::sleep(CRD_WAIT).await;
    };
    info!(gateways = %gateways.api_version, image = %settings.image, "waypoint controller started");
    let ctx = Arc::new(Context {
        client,
        gateways,
        settings,
        metrics,
    });
    ready.store(true, Ordering::Release);
    tokio::select! {
        () = reconcile::run(ctx) => {}
        signal = strait_drain::signalled() => {
            signal.context("installing the signal handlers")?;
        }
    }
    ready.store(false, Ordering::Release);
    for task in stats {
        task.abort();
    }
    Ok(())
}
