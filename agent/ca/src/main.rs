//! `strait-ca`: the mesh's certificate authority, a service of its own and
//! the only process that opens the signing keys. Agents authenticate as
//! their node and send signing requests; the CA signs an identity only for
//! a node that runs a workload in the mesh with it, by its own reading of
//! the config. Replicas may share one CA directory.
//!
//! - [`control`]: the control root, node credentials, the service's TLS;
//! - [`nodes`]: who may hold which identity, from the config;
//! - [`server`]: the signing endpoint;
//! - [`metrics`]: requests by outcome.
mod control;
mod metrics;
mod nodes;
mod server;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::{Response, body::Bytes, service::service_fn};
use strait_identity::Signer;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tracing::info;

use crate::{control::ControlRoot, metrics::Metrics, nodes::Registry, server::Service};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the signing service.
    Serve(Serve),
    /// Write the roots alone (for agents that authenticate with a
    /// ServiceAccount token: their `--credential-dir`).
    Roots {
        #[arg(long, env = "STRAIT_CA_DIR", default_value = "/var/lib/strait/ca")]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Make a node's credential directory (setup, once per node): the key
    /// and certificate its agent authenticates with, and the roots.
    NodeCredential {
        #[arg(long, env = "STRAIT_CA_DIR", default_value = "/var/lib/strait/ca")]
        ca_dir: PathBuf,
        #[arg(long)]
        node: String,
        /// Where to write it; the node's agent reads it (`--credential-dir`).
        #[arg(long)]
        out: PathBuf,
        /// The trust domain, should this make the roots.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::NodeCredential {
            ca_dir,
            node,
            out,
            trust_domain,
        } => write_credential(&ca_dir, &trust_domain, &out, Some(&node)),
        Command::Roots {
            ca_dir,
            out,
            trust_domain,
        } => write_credential(&ca_dir, &trust_domain, &out, None),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(serve(args)),
    }
}

/// Writes `node`'s credential directory to `out`, or with no node the
/// roots alone; prints where.
fn write_credential(
    ca_dir: &std::path::Path,
    trust_domain: &str,
    out: &std::path::Path,
    node: Option<&str>,
) -> Result<()> {
    let mesh = Signer::open_or_create(ca_dir, trust_domain)
        .with_context(|| format!("opening the mesh root in {}", ca_dir.display()))?;
    let control = ControlRoot::open_or_create(ca_dir, trust_domain)?;
    match node {
        Some(node) => control
            .write_node_credential(node, mesh.root(), out)
            .with_context(|| format!("writing {node}'s credential to {}", out.display()))?,
        None => control
            .write_roots(mesh.root(), out)
            .with_context(|| format!("writing the roots to {}", out.display()))?,
    }
    println!("{}", out.display());
    Ok(())
}

#[derive(clap::Args)]
struct Serve {
    /// The CA's keys: the mesh root and the control root (made on the
    /// first start). Only CA processes may read it.
    #[arg(long, env = "STRAIT_CA_DIR", default_value = "/var/lib/strait/ca")]
    ca_dir: PathBuf,
    /// The mesh's manifests, the same the agents read: which workload
    /// runs on which node, as what.
    #[arg(
        long,
        env = "STRAIT_CONFIG_DIR",
        required_unless_present = "kubeconfig",
        conflicts_with = "kubeconfig"
    )]
    config_dir: Option<PathBuf>,
    /// Or the cluster's API server, as the agents watch it.
    #[arg(long, env = "STRAIT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    metrics_addr: SocketAddr,
    /// The longest certificate this CA signs, whatever is asked.
    #[arg(long, default_value = "24h", value_parser = strait_config::duration::parse)]
    max_cert_lifetime: Duration,
    /// With --kubeconfig: the agents' ServiceAccount (`namespace/name`);
    /// a token of it, bound to a pod, authenticates that pod's node.
    #[arg(long, default_value = "kube-system/strait", requires = "kubeconfig")]
    agent_service_account: String,
    /// With --kubeconfig: the audience agents' tokens must be for.
    #[arg(long, default_value = "strait-ca", requires = "kubeconfig")]
    token_audience: String,
}

async fn serve(args: Serve) -> Result<()> {
    let Serve {
        ca_dir,
        config_dir,
        kubeconfig,
        listen,
        metrics_addr,
        max_cert_lifetime,
        agent_service_account,
        token_audience,
    } = args;
    let (config, cluster) = match (&config_dir, &kubeconfig) {
        (Some(dir), _) => (
            strait_config::load_dir(dir).context("loading the config directory")?,
            None,
        ),
        (None, Some(kubeconfig)) => {
            let (first, updates) =
                strait_kube::follow(&strait_kube::Sources::local(kubeconfig, "ca"))
                    .await
                    .context("reading the cluster")?;
            (Arc::unwrap_or_clone(first.config), Some(updates))
        }
        (None, None) => anyhow::bail!("--config-dir or --kubeconfig is required"),
    };
    let trust_domain = config.trust_domain.clone();
    let signer = Signer::open_or_create(&ca_dir, &trust_domain)
        .with_context(|| format!("opening the mesh root in {}", ca_dir.display()))?
        .with_max_lifetime(max_cert_lifetime);
    let control = ControlRoot::open_or_create(&ca_dir, &trust_domain)?;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(config));
    match (config_dir, cluster) {
        (Some(dir), _) => registry.watch(dir, metrics.clone()),
        (None, Some(updates)) => registry.follow(updates, metrics.clone()),
        (None, None) => {}
    }

    let tokens = match &kubeconfig {
        Some(kubeconfig) => Some(
            strait_kube::TokenReviewer::new(
                strait_kube::client(kubeconfig).await?,
                &token_audience,
                &agent_service_account,
            )
            .map_err(|why| anyhow::anyhow!("--agent-service-account: {why}"))?,
        ),
        None => None,
    };
    let tls = server::tls_config(&control, tokens.is_some())?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let service = Arc::new(Service {
        signer,
        registry: registry.clone(),
        metrics: metrics.clone(),
        tokens,
    });
    let signing = server::serve(listener, tls, service);

    let metrics_listener = TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("binding {metrics_addr}"))?;
    let exporter = strait_http::serve(
        metrics_listener,
        strait_http::Limits::default(),
        "metrics",
        move |tcp, _peer| {
            let metrics = metrics.clone();
            async move {
                let service = service_fn(move |req: hyper::Request<_>| {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    if req.uri().path() == "/metrics" {
                        *response.body_mut() = Full::new(Bytes::from(metrics.encode()));
                    } else {
                        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                Some((tcp, service))
            }
        },
    );
    info!(%listen, %metrics_addr, trust_domain = %registry.trust_domain(), max_cert_lifetime = ?max_cert_lifetime, "CA serving");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    signing.abort();
    exporter.abort();
    Ok(())
}
