//! `strait-waypoint`: the L7 proxy of a Gateway of class `istio-waypoint`.
//! Node agents send it what is bound to it (HBONE, asking for the address
//! the client dialled); it reads each request, matches it against the
//! destination's routes, and sends it on to an endpoint over HBONE, with
//! retries, timeouts and request metrics.
//!
//! Where a request goes, by file: [`inbound`] terminates HBONE and decides
//! what a CONNECT may reach, [`detect`] tells HTTP from anything else,
//! [`routes`] matches a request to a VirtualService route
//! ([`matching`] holds the match rules, [`actions`] the rewrites, redirects
//! and header operations), [`forward`] picks the endpoint,
//! retries and times out, [`pool`] keeps the connections to endpoints,
//! [`tcp`] carries what is not HTTP (TLS by its server name, [`sni`]),
//! [`metrics`] counts requests.
mod access;
mod actions;
mod affinity;
mod authz;
mod breaker;
mod buckets;
mod call;
mod cors;
mod detect;
mod extauthz;
mod forward;
mod inbound;
mod jwt;
mod matching;
mod metrics;
mod mirror;
mod normalize;
mod origination;
mod plan;
mod pool;
mod proxy;
mod ratelimit;
mod record;
mod replay;
mod routes;
mod share;
mod sni;
mod tcp;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use strait_identity::{Identity, tls::ClientConfigs};
use strait_state::{NodeState, reload};
use tokio::net::TcpListener;
use tracing::info;

use crate::proxy::Waypoint;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The node this instance runs on.
    #[arg(long, env = "STRAIT_NODE")]
    node: String,
    /// The Gateway (class istio-waypoint) this is an instance of,
    /// `namespace/name`.
    #[arg(long, env = "STRAIT_GATEWAY")]
    gateway: String,
    /// Listen here instead of on this instance's own addresses at the
    /// Gateway's HBONE port (`0.0.0.0:15008`). Repeatable.
    #[arg(long = "listen", env = "STRAIT_LISTEN", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    #[command(flatten)]
    source: strait_kube::SourceArgs,
    #[command(flatten)]
    mesh: strait_kube::MeshArgs,
    /// This cluster's name.
    #[arg(long, env = "STRAIT_CLUSTER", default_value = "Kubernetes")]
    cluster: String,
    #[command(flatten)]
    ca: strait_state::ca_addr::CaArgs,
    #[command(flatten)]
    trace: strait_trace::TraceArgs,
    /// How long opening a connection to one endpoint may take before the
    /// next one is tried.
    #[arg(long, default_value = "1s", value_parser = strait_config::duration::parse)]
    connect_timeout: Duration,
    /// The readiness board the agents publish their workloads' probes to.
    #[arg(
        long,
        env = "STRAIT_STATUS_DIR",
        default_value = "/var/lib/strait/status"
    )]
    status_dir: PathBuf,
    /// Prometheus metrics (`/metrics`) and readiness (`/healthz/ready`),
    /// on each of these.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.0.0.0:15020,0.0.0.0:15021"
    )]
    stats_addr: Vec<SocketAddr>,
    /// Requests one client (an identity at an address) may have waiting
    /// for their answer at once; more wait their turn.
    #[arg(long, default_value_t = share::PER_CLIENT, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_client: u32,
    /// How request paths are normalized before routes and policies match
    /// on them and they are sent on: NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES (the mesh config's
    /// `pathNormalization.normalization`, when it says, comes first).
    #[arg(long, env = "STRAIT_PATH_NORMALIZATION", default_value = "BASE")]
    path_normalization: normalize::Normalization,
    /// How often a RequestAuthentication's `jwksUri` is fetched again (so a
    /// rotated key is picked up); Istio's default.
    #[arg(long, default_value = "20m", value_parser = strait_config::duration::parse)]
    jwks_refresh: Duration,
    /// Istio's meshConfig (the `mesh` key of its ConfigMap), for the
    /// external authorizers CUSTOM policies name (`extensionProviders`).
    #[arg(long, env = "STRAIT_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// On SIGTERM: how long requests in flight may take to finish.
    #[arg(long, default_value = "5s", value_parser = strait_config::duration::parse)]
    drain_timeout: Duration,
}

/// How long the first certificate may take.
const FIRST_CERT: Duration = Duration::from_secs(30);
const CA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle connections to endpoints are looked over.
const SWEEP: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args = Args::parse();
    strait_config::names::check_subdomain(&args.node)
        .map_err(|reason| anyhow::anyhow!("--node {reason}"))?;
    args.mesh.apply().map_err(anyhow::Error::msg)?;
    // One access-log line per request: written by a thread of its own, so
    // a request never waits on stdout (at most 128k lines wait; past that
    // lines are dropped, not memory spent). Flushed when main returns.
    let (log, _flush) = tracing_appender::non_blocking(std::io::stdout());
    let access = access::AccessLog::new(log.clone());
    tracing_subscriber::fmt()
        .with_writer(log)
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args, access))
}

async fn run(args: Args, access: access::AccessLog) -> Result<()> {
    let (namespace, name) = args
        .gateway
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--gateway {:?}: not namespace/name", args.gateway))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let tracer = args
        .trace
        .tracer(
            "strait-waypoint",
            &format!("{namespace}/{name}@{}", args.node),
            metrics.trace.clone(),
        )
        .context("--otlp-endpoint")?;
    let sources = args
        .source
        .access()
        .map(|access| strait_kube::Sources::local(access, &args.cluster));
    let opened = strait_state::source::open(args.source.config_dir.as_deref(), sources).await?;
    metrics.config.loaded_in(opened.took);
    let state = NodeState::new(&args.node, opened.config);
    let mut updates = opened.updates;
    if let Some(updates) = updates.as_mut() {
        // In a cluster this pod may start before the API server has its
        // address (the kubelet writes it after the sandbox is up): wait a
        // while for the instance to be known.
        let deadline = tokio::time::Instant::now() + FIRST_CERT;
        while !has_instance(&state.snapshot().config, namespace, name, &args.node) {
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => {
                    if let Some(snapshot) = updates.borrow_and_update().clone() {
                        state.replace(snapshot.config);
                    }
                }
                _ => break,
            }
        }
    }
    let snapshot = state.snapshot();
    let config = &snapshot.config;
    let waypoint = config.waypoint(namespace, name).with_context(|| {
        format!(
            "--gateway {namespace}/{name}: no Gateway of class {} by that name in the config",
            strait_config::waypoint::WAYPOINT_CLASS
        )
    })?;
    let instance = config
        .waypoint_instances(waypoint)
        .find(|w| w.node.as_deref() == Some(args.node.as_str()))
        .cloned()
        .with_context(|| {
            format!(
                "no instance of waypoint {namespace}/{name} on node {} in the config (a pod labelled {}={name} running as {})",
                args.node,
                strait_config::GATEWAY_NAME_LABEL,
                waypoint.service_account
            )
        })?;
    let identity = Identity::new(
        &config.trust_domain,
        &waypoint.namespace,
        &waypoint.service_account,
    );
    let port = waypoint.port;
    drop(snapshot);

    let certs = args
        .ca
        .cert_manager(&state, None, CA_TIMEOUT)
        .with_context(|| {
            format!(
                "certificates from the CA, with the credential in {}",
                args.ca.credential_dir.display()
            )
        })?;
    certs
        .ensure(&identity, FIRST_CERT)
        .await
        .with_context(|| format!("getting a certificate for {identity}"))?;
    let tls = strait_identity::tls::server_config(&certs, &identity)
        .with_context(|| format!("the TLS configuration of {identity}"))?;

    let board = Arc::new(strait_health::Board::new(&args.status_dir));
    board.refresh();
    let board_watch = strait_health::board::watch(board.clone(), reload::POLL);
    let listeners = if args.listen.is_empty() {
        let mut listeners = Vec::new();
        for ip in &instance.addresses {
            let addr = SocketAddr::new(*ip, port);
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding this instance's address {addr}"))?,
            );
        }
        listeners
    } else {
        let mut listeners = Vec::new();
        for addr in &args.listen {
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--listen {addr}"))?,
            );
        }
        listeners
    };
    let mesh_config = match &args.mesh_config {
        Some(path) => strait_config::mesh_config::MeshConfig::read(path)
            .map_err(|e| anyhow::anyhow!("--mesh-config {e}"))?,
        None => Default::default(),
    };
    // The mesh config's pathNormalization, where it says one.
    let normalization = match &mesh_config.path_normalization {
        Some(mode) => mode
            .parse()
            .map_err(|e| anyhow::anyhow!("--mesh-config pathNormalization: {e}"))?,
        None => args.path_normalization,
    };
    let authorizers = mesh_config.authorizers;
    let waypoint = Arc::new(Waypoint {
        state: state.clone(),
        namespace: namespace.into(),
        name: name.into(),
        identity: identity.clone(),
        instance,
        tls,
        dialer: strait_upstream::Dialer {
            pool: strait_hbone::Pool::coalescing(),
            clients: ClientConfigs::new(certs.clone()),
            certs,
        },
        metrics: metrics.clone(),
        health: Default::default(),
        load: Default::default(),
        board,
        admission: Default::default(),
        connect_timeout: args.connect_timeout,
        upstreams: Default::default(),
        tables: Default::default(),
        breakers: Default::default(),
        shares: share::Shares::new(args.max_requests_per_client),
        normalization,
        jwt_keys: jwt::Keys::new(args.jwks_refresh),
        rate_buckets: Default::default(),
        authorizers,
        in_flight: Default::default(),
        mirror_slots: Arc::new(tokio::sync::Semaphore::new(mirror::IN_FLIGHT)),
        origins: Default::default(),
        access,
        tracer,
    });

    let follow = reload::Follow {
        state: state.clone(),
        status: reload::initial_status(),
        metrics: metrics.config.clone(),
        then: Prune(waypoint.clone()),
    };
    match (args.source.config_dir.clone(), updates) {
        (Some(dir), _) => reload::spawn(dir, follow),
        (None, Some(updates)) => reload::spawn_cluster(updates, follow),
        (None, None) => {}
    }

    // Connections to endpoints idle past their idleTimeout are closed.
    let sweeper = {
        let waypoint = waypoint.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                waypoint.upstreams.sweep();
            }
        })
    };
    let ready = Arc::new(AtomicBool::new(false));
    let stats = {
        let metrics = metrics.clone();
        strait_http::bind_stats(
            &args.stats_addr,
            "waypoint stats",
            Arc::new(move || metrics.encode()),
            ready.clone(),
        )
        .await?
    };
    let bound: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| inbound::serve(waypoint.clone(), l))
        .collect();
    ready.store(true, Ordering::Release);
    info!(waypoint = %format!("{namespace}/{name}"), %identity, ?bound, "waypoint ready");

    strait_drain::signalled()
        .await
        .context("installing the signal handlers")?;
    ready.store(false, Ordering::Release);
    for task in tasks {
        task.abort();
    }
    strait_drain::drain(&waypoint.in_flight, args.drain_timeout).await;
    for task in stats {
        task.abort();
    }
    board_watch.abort();
    sweeper.abort();
    Ok(())
}

/// Whether the config knows an instance of waypoint `namespace/name` on
/// `node`.
fn has_instance(config: &strait_config::Config, namespace: &str, name: &str, node: &str) -> bool {
    config.waypoint(namespace, name).is_some_and(|w| {
        config
            .waypoint_instances(w)
            .any(|i| i.node.as_deref() == Some(node))
    })
}

/// After a reload: connections to endpoints that left the mesh are closed,
/// their health forgotten, and the circuit breakers of services that left
/// (holding nothing) dropped.
struct Prune(Arc<Waypoint>);

impl reload::Applied for Prune {
    async fn applied(&self) -> usize {
        let state = self.0.state.snapshot();
        let known = |addr: SocketAddr| {
            state.config.workload_by_address(addr.ip()).is_some()
                || state
                    .config
                    .east_west_gateways
                    .iter()
                    .any(|g| g.addresses.contains(&addr.ip()))
        };
        self.0.upstreams.retain(known);
        // The rules' certificate files are read again when next used.
        self.0.origins.clear();
        // A filter's buckets go with it (and start full if it comes back).
        self.0.rate_buckets.retain(|scope| {
            let filter = scope.split('@').next().unwrap_or_default();
            state
                .config
                .rate_limit_filters
                .iter()
                .any(|f| format!("{}/{}", f.namespace, f.name) == filter)
        });
        self.0.jwt_keys.retain(|source| {
            state
                .config
                .request_authentications
                .iter()
                .flat_map(|r| &r.spec.jwt_rules)
                .any(|rule| match source {
                    jwt::Source::Inline(jwks) => rule.jwks.as_deref() == Some(jwks),
                    jwt::Source::Uri(uri) => rule.jwks_uri.as_deref() == Some(uri),
                    jwt::Source::Discovery(issuer) => {
                        rule.jwks.is_none() && rule.jwks_uri.is_none() && rule.issuer == issuer
                    }
                })
        });
        self.0.health.retain(known);
        self.0.breakers.retain(|destination| {
            let service = destination.rsplit_once(':').map_or(destination, |(s, _)| s);
            state
                .config
                .services
                .iter()
                .any(|s| format!("{}/{}", s.namespace, s.name) == service)
        });
        0
    }
}
