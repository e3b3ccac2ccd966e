//! `strait-agent`: one per node. Loads the embedded eBPF programs, attaches
//! them to the cgroup subtree of the node's pods, and serves the admin and
//! readiness endpoints.
mod admin;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::Parser;
use strait_capture::{Capture, CaptureConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Name of the node this agent serves.
    #[arg(long, env = "STRAIT_NODE")]
    node: String,
    /// cgroup v2 directory holding the node's pods; capture attaches here.
    #[arg(long, env = "STRAIT_CAPTURE_CGROUP")]
    capture_cgroup: PathBuf,
    /// This agent's directory on bpffs; pinned maps and links live here.
    #[arg(long, env = "STRAIT_PIN_DIR", default_value = "/sys/fs/bpf/strait")]
    pin_dir: PathBuf,
    /// Admin endpoint (capture state); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Detach capture on exit (remove the pins) instead of leaving pods
    /// captured for the next agent to pick up.
    #[arg(long)]
    uninstall_on_exit: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let capture = Capture::attach(&CaptureConfig {
        cgroup: args.capture_cgroup.clone(),
        pin_dir: args.pin_dir.clone(),
    })
    .with_context(|| {
        format!(
            "attaching capture to {} (pins in {})",
            args.capture_cgroup.display(),
            args.pin_dir.display()
        )
    })?;

    let pins = capture.layout().clone();
    let state = Arc::new(admin::State::new(args.node.clone(), capture));
    let admin = admin::bind(args.admin_addr, admin::Routes::Admin, state.clone()).await?;
    let readiness =
        admin::bind(args.readiness_addr, admin::Routes::Readiness, state.clone()).await?;
    state.set_ready();
    info!(node = %args.node, admin = %args.admin_addr, readiness = %args.readiness_addr, "agent ready");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    admin.abort();
    readiness.abort();

    if args.uninstall_on_exit {
        pins.remove().context("removing capture pins")?;
        info!("capture detached");
    } else {
        info!("capture stays attached for the next agent");
    }
    Ok(())
}
