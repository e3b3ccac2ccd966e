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
    #[command(flatten)]
    source: strait_kube::SourceArgs,
    #[command(flatten)]
    mesh: strait_kube::MeshArgs,
    /// With a cluster: the Secret of the CA's namespace that holds its
    /// keys. The first replica to start makes them and creates it; every
    /// replica copies them into --ca-dir (an in-memory volume).
    #[arg(long, env = "STRAIT_CA_SECRET")]
    ca_secret: Option<String>,
    /// With a cluster: the ConfigMap of the CA's namespace to publish the
    /// roots in (`control-root.pem`, `mesh-root.pem`): what agents mount
    /// as their --credential-dir.
    #[arg(long, env = "STRAIT_ROOTS_CONFIG_MAP")]
    roots_config_map: Option<String>,
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Prometheus metrics (`/metrics`) and readiness (`/ready`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    metrics_addr: SocketAddr,
    /// The longest certificate this CA signs, whatever is asked.
    #[arg(long, default_value = "24h", value_parser = strait_config::duration::parse)]
    max_cert_lifetime: Duration,
    /// With a cluster: the agents' ServiceAccount (`namespace/name`);
    /// a token of it, bound to a pod, authenticates that pod's node.
    #[arg(long, default_value = "kube-system/strait")]
    agent_service_account: String,
    /// With a cluster: the audience agents' tokens must be for.
    #[arg(long, default_value = "strait-ca")]
    token_audience: String,
}

async fn serve(args: Serve) -> Result<()> {
    let Serve {
        ca_dir,
        source,
        mesh,
        ca_secret,
        roots_config_map,
        listen,
        metrics_addr,
        max_cert_lifetime,
        agent_service_account,
        token_audience,
    } = args;
    mesh.apply().map_err(anyhow::Error::msg)?;
    let access = source.access();
    let client = match &access {
        Some(access) => Some(strait_kube::client(access).await?),
        None if ca_secret.is_some() || roots_config_map.is_some() => {
            anyhow::bail!("--ca-secret and --roots-config-map need --kubeconfig or --in-cluster")
        }
        None => None,
    };
    let (config, cluster) = match (&source.config_dir, &access) {
        (Some(dir), _) => (
            strait_config::load_dir(dir).context("loading the config directory")?,
            None,
        ),
        (None, Some(access)) => {
            let (first, updates) =
                strait_kube::follow(&strait_kube::Sources::local(access.clone(), "ca"))
                    .await
                    .context("reading the cluster")?;
            (Arc::unwrap_or_clone(first.config), Some(updates))
        }
        (None, None) => anyhow::bail!("--config-dir, --kubeconfig or --in-cluster is required"),
    };
    let trust_domain = config.trust_domain.clone();
    if let (Some(client), Some(secret)) = (&client, &ca_secret) {
        let origin = strait_kube::files_in_secret(
            client,
            client.default_namespace(),
            secret,
            &ca_dir,
            &control::KEY_FILES,
            |dir| {
                Signer::open_or_create(dir, &trust_domain).map_err(|e| e.to_string())?;
                ControlRoot::open_or_create(dir, &trust_domain)
                    .map(drop)
                    .map_err(|e| format!("{e:#}"))
            },
        )
        .await
        .context("--ca-secret")?;
        info!(secret = %secret, ?origin, "the CA's keys");
    }
    let signer = Signer::open_or_create(&ca_dir, &trust_domain)
        .with_context(|| format!("opening the mesh root in {}", ca_dir.display()))?
        .with_max_lifetime(max_cert_lifetime);
    let control = ControlRoot::open_or_create(&ca_dir, &trust_domain)?;
    if let (Some(client), Some(name)) = (&client, &roots_config_map) {
        strait_kube::publish_config_map(
            client,
            client.default_namespace(),
            name,
            control.roots_text(signer.root()),
        )
        .await
        .context("--roots-config-map")?;
        info!(config_map = %name, "roots published");
    }
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(config));
    match (source.config_dir, cluster) {
        (Some(dir), _) => registry.watch(dir, metrics.clone()),
        (None, Some(updates)) => registry.follow(updates, metrics.clone()),
        (None, None) => {}
    }

    let tokens = match client {
        Some(client) => Some(
            strait_kube::TokenReviewer::new(client, &token_audience, &agent_service_account)
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
                    match req.uri().path() {
                        "/metrics" => {
                            *response.body_mut() = Full::new(Bytes::from(metrics.encode()));
                        }
                        // Listening here means the keys are open and the
                        // signing endpoint is bound.
                        "/ready" => {
                            *response.body_mut() = Full::new(Bytes::from_static(b"ready\n"))
                        }
                        _ => {
                            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
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
