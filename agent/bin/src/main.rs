//! `strait-agent`: one per node. Loads the embedded eBPF programs and
//! attaches them to the cgroup subtree of the node's pods, enrolls the pods
//! that are in the mesh, and proxies their traffic over mutual-TLS HBONE.
mod admin;
mod dns;
mod east_west;
mod logging;
mod metrics;
mod pod;
mod pods;
mod probes;
mod proxy;
mod serve;
mod share;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use strait_capture::{Capture, CaptureConfig};
use strait_ebpf_common::AGENT_MARK;
use strait_identity::{CertManager, tls::ClientConfigs};
use strait_state::{NodeState, reload};
use tracing::{info, warn};

use crate::proxy::Proxy;

/// The image's (musl) build allocates with mimalloc: musl's own allocator
/// held the agent to 49% (4 streams) and 69% (1 stream) of the glibc
/// build's throughput, at 121% of its CPU per new connection; with
/// mimalloc the image's agent measured 118% and 92%, at 106% (`cargo xtask
/// bench`). The glibc build keeps glibc's allocator: mimalloc changed
/// nothing there beyond the machine's noise, and added about 25 MiB of RSS.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Name of the node this agent serves.
    #[arg(long, env = "STRAIT_NODE")]
    node: String,
    /// `node`: capture and proxy the node's pods. `east-west-gateway`:
    /// serve the Gateway `--gateway` names, on its addresses that are on
    /// this host (no capture).
    #[arg(long, env = "STRAIT_ROLE", value_enum, default_value = "node")]
    role: Role,
    /// With `--role east-west-gateway`: the Gateway (class
    /// istio-east-west), `namespace/name`.
    #[arg(long, env = "STRAIT_GATEWAY")]
    gateway: Option<String>,
    /// With `--role east-west-gateway`: listen here instead of on the
    /// Gateway's addresses (a pod behind the LoadBalancer Service whose
    /// external addresses are the Gateway's: `0.0.0.0:15008`). Repeatable.
    #[arg(long = "listen", env = "STRAIT_LISTEN", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    #[command(flatten)]
    source: strait_kube::SourceArgs,
    #[command(flatten)]
    mesh: strait_kube::MeshArgs,
    /// This cluster's name: where its endpoints are (`topology.istio.io/cluster`).
    #[arg(long, env = "STRAIT_CLUSTER", default_value = "Kubernetes")]
    cluster: String,
    /// With --kubeconfig or --in-cluster: a directory of remote clusters' kubeconfigs, one
    /// file per cluster named after it (a mounted Secret works).
    #[arg(long, env = "STRAIT_REMOTE_KUBECONFIGS")]
    remote_kubeconfigs: Option<PathBuf>,
    /// With --kubeconfig or --in-cluster: the namespace of the local cluster whose Secrets
    /// labelled `istio/multiCluster=true` hold remote clusters' kubeconfigs
    /// (Istio's remote secrets).
    #[arg(long, env = "STRAIT_REMOTE_SECRETS_NAMESPACE")]
    remote_secrets_namespace: Option<String>,
    /// cgroup v2 directory holding the node's pods; capture attaches here
    /// (the node role needs it).
    #[arg(long, env = "STRAIT_CAPTURE_CGROUP")]
    capture_cgroup: Option<PathBuf>,
    /// This agent's directory on bpffs; pinned maps and links live here.
    #[arg(long, env = "STRAIT_PIN_DIR", default_value = "/sys/fs/bpf/strait")]
    pin_dir: PathBuf,
    #[command(flatten)]
    ca: strait_state::ca_addr::CaArgs,
    #[command(flatten)]
    trace: strait_trace::TraceArgs,
    /// How long an outbound connection may take to reach one endpoint
    /// (TCP, TLS and CONNECT) before the next choice is tried.
    #[arg(long, default_value = "1s", value_parser = strait_config::duration::parse)]
    connect_timeout: Duration,
    /// The readiness board: each agent publishes the results of its
    /// workloads' probes here, and reads the other agents' (agents of one
    /// mesh share it).
    #[arg(
        long,
        env = "STRAIT_STATUS_DIR",
        default_value = "/var/lib/strait/status"
    )]
    status_dir: PathBuf,
    /// Where pods' network namespaces are found by address.
    #[arg(long, default_value = "/run/netns")]
    netns_dir: PathBuf,
    /// Admin endpoint (config, workloads, certificates); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Run WorkloadGroup `exec` probes of workloads that have no mount and
    /// PID namespaces of their own (a bare network namespace) on the node,
    /// as root, with only the network namespace switched. Off by default:
    /// whoever writes a WorkloadGroup would run commands as root on every
    /// node. Workloads with their own namespaces are always probed inside
    /// them, as their own user.
    #[arg(long)]
    exec_probes_on_host: bool,
    /// Detach capture on exit (remove the pins) instead of leaving pods
    /// captured for the next agent to pick up.
    #[arg(long)]
    uninstall_on_exit: bool,
    /// The DaemonSet this agent runs in, `namespace/name` (with
    /// --in-cluster or --kubeconfig), watched: on SIGTERM, when it was last
    /// seen gone or being deleted (the chart was uninstalled), capture is
    /// detached as with --uninstall-on-exit; otherwise it stays for the
    /// agent that replaces this one. When the API server never said,
    /// capture stays (pods fail closed rather than leave the mesh).
    #[arg(long, env = "STRAIT_DAEMONSET")]
    daemonset: Option<String>,
    /// On SIGTERM: stop accepting (the replacing agent, sharing the ports,
    /// takes new connections) and let accepted connections finish for up
    /// to this long before exiting.
    #[arg(long, default_value = "0s", value_parser = strait_config::duration::parse)]
    drain_timeout: Duration,
    /// Connections one pod may have open through the agent, each way
    /// (from it, to it); past it, more are refused (and counted), so one
    /// pod cannot take the agent from the node's others.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_pod: u32,
    /// Connections all pods together may have open through the agent. The
    /// agent raises its descriptor limit to fit them (as far as the hard
    /// limit allows; fewer otherwise).
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Node,
    EastWestGateway,
}

/// One attempt at one CA replica.
const CA_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args = Args::parse();
    // The name goes into file names (the readiness board) and the CA's
    // decisions: hold it to Kubernetes' rule for node names.
    strait_config::names::check_subdomain(&args.node)
        .map_err(|reason| anyhow::anyhow!("--node {reason}"))?;
    args.mesh.apply().map_err(anyhow::Error::msg)?;
    let logging = Arc::new(logging::Logging::init());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args, logging))
}

async fn run(args: Args, logging: Arc<logging::Logging>) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let tracer = args
        .trace
        .tracer("strait-agent", &args.node, metrics.trace.clone())
        .context("--otlp-endpoint")?;
    let access = args.source.access();
    if access.is_none()
        && (args.remote_kubeconfigs.is_some() || args.remote_secrets_namespace.is_some())
    {
        anyhow::bail!(
            "--remote-kubeconfigs and --remote-secrets-namespace need --kubeconfig or --in-cluster"
        );
    }
    let daemonset = match (&args.daemonset, &access) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!("--daemonset needs --kubeconfig or --in-cluster"),
        (Some(name), Some(access)) => {
            let (namespace, name) = name
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--daemonset {name:?}: not namespace/name"))?;
            Some(strait_kube::follow_daemonset(
                strait_kube::client(access).await?,
                namespace,
                name,
            ))
        }
    };
    let sources = access.map(|access| strait_kube::Sources {
        access,
        cluster: args.cluster.clone(),
        remote_dir: args.remote_kubeconfigs.clone(),
        remote_secrets: args.remote_secrets_namespace.clone(),
        // A gateway reads no routes or policies: its ServiceAccount may
        // read no more than it needs.
        kinds: match args.role {
            Role::Node => strait_kube::KINDS.len(),
            Role::EastWestGateway => strait_kube::GATEWAY_READS,
        },
    });
    let opened = strait_state::source::open(args.source.config_dir.as_deref(), sources).await?;
    if let Some(clusters) = opened.clusters {
        metrics.follow_clusters(clusters);
    }
    metrics.config.loaded_in(opened.took);
    let (config, cluster) = (opened.config, opened.updates);
    let state = NodeState::new(&args.node, config);

    if args.role == Role::EastWestGateway {
        return run_gateway(&args, state, metrics, cluster).await;
    }
    let capture_cgroup = args
        .capture_cgroup
        .clone()
        .context("--capture-cgroup is required for --role node")?;
    let capture = Capture::attach(&CaptureConfig {
        cgroup: capture_cgroup.clone(),
        pin_dir: args.pin_dir.clone(),
    })
    .with_context(|| {
        format!(
            "attaching capture to {} (pins in {})",
            capture_cgroup.display(),
            args.pin_dir.display()
        )
    })?;

    let certs = cert_manager(&args, &state)?;
    metrics.follow_certs(certs.clone());

    let board = Arc::new(strait_health::Board::new(&args.status_dir));
    board.refresh();
    let pins = capture.layout().clone();
    let node_connections = share::fit_descriptor_limit(args.max_connections as usize)
        .context("raising the descriptor limit")?;
    if node_connections < args.max_connections as usize {
        warn!(
            wanted = args.max_connections,
            room = node_connections,
            "the descriptor limit's hard value leaves room for fewer connections than --max-connections"
        );
    }
    let caps = Arc::new(share::Caps::new(
        args.max_connections_per_pod as usize,
        node_connections,
    ));
    info!(
        per_pod = caps.per_pod(),
        node = caps.node_total(),
        "connection caps"
    );
    let proxy = Arc::new(Proxy {
        state: state.clone(),
        maps: capture.maps(),
        dialer: strait_upstream::Dialer {
            pool: strait_hbone::Pool::new(),
            clients: ClientConfigs::new(certs.clone()),
            certs: certs.clone(),
        },
        metrics: metrics.clone(),
        connect_timeout: args.connect_timeout,
        health: Arc::new(strait_balance::outlier::Health::default()),
        load: Arc::new(strait_balance::load::Load::default()),
        board: board.clone(),
        open_inbound: Default::default(),
        hbone_limits: strait_hbone::Limits::default(),
        in_flight: Arc::default(),
        tracer,
    });
    let handlers = Arc::new(serve::Handlers {
        proxy: proxy.clone(),
        dns: Arc::new(dns::Dns {
            state: state.clone(),
            maps: proxy.maps.clone(),
            metrics: metrics.clone(),
        }),
    });
    let capture = Arc::new(Mutex::new(capture));
    let pods = Arc::new(pods::Pods::new(
        capture.clone(),
        certs.clone(),
        Arc::new(probes::Probes::new(
            &args.node,
            args.status_dir.clone(),
            metrics.clone(),
            board.clone(),
        )),
        metrics.clone(),
        handlers,
        pods::Settings {
            netns_dir: args.netns_dir.clone(),
            exec_probes_on_host: args.exec_probes_on_host,
            caps,
        },
    )?);
    let board_watch = strait_health::board::watch(board.clone(), reload::POLL);
    let enrolled = pods.sync(&state.snapshot()).await;
    // From another version whose maps this one could not take over: the
    // pods are in this version's maps now, so its programs may take over.
    let switched = capture
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish_upgrade()
        .context("switching capture over from the previous version")?;
    if switched > 0 {
        info!(switched, "capture switched over from the previous version");
    }
    let retries = pods.spawn_retries(state.clone());

    let reload_status = reload::initial_status();
    let follow = reload::Follow {
        state: state.clone(),
        status: reload_status.clone(),
        metrics: metrics.config.clone(),
        then: Enrollment {
            pods: pods.clone(),
            proxy: proxy.clone(),
            state: state.clone(),
        },
    };
    match (args.source.config_dir.clone(), cluster) {
        (Some(dir), _) => reload::spawn(dir, follow),
        (None, Some(updates)) => reload::spawn_cluster(updates, follow),
        (None, None) => {}
    }

    let admin_state = Arc::new(admin::State::new(
        proxy.clone(),
        reload_status,
        capture,
        pods.clone(),
        certs,
        logging,
    ));
    let servers = [
        admin::bind(args.admin_addr, admin::Routes::Admin, admin_state.clone()).await?,
        admin::bind(
            args.readiness_addr,
            admin::Routes::Readiness,
            admin_state.clone(),
        )
        .await?,
        admin::bind(
            args.metrics_addr,
            admin::Routes::Metrics,
            admin_state.clone(),
        )
        .await?,
    ];
    admin_state.set_ready();
    info!(node = %args.node, enrolled, admin = %args.admin_addr, "agent ready");

    strait_drain::signalled()
        .await
        .context("installing the signal handlers")?;
    admin_state.set_stopping();
    retries.abort();
    pods.stop_accepting().await;
    strait_drain::drain(&proxy.in_flight, args.drain_timeout).await;
    for server in servers {
        server.abort();
    }
    board_watch.abort();
    let uninstall = args.uninstall_on_exit
        || daemonset.is_some_and(|removed| removed.load(std::sync::atomic::Ordering::Relaxed));
    if uninstall {
        pins.remove().context("removing capture pins")?;
        info!("capture detached");
    } else {
        info!("capture stays attached for the next agent");
    }
    Ok(())
}

/// The gateway role: no capture, no pods; the Gateway's listeners.
async fn run_gateway(
    args: &Args,
    state: NodeState,
    metrics: Arc<metrics::Metrics>,
    cluster: Option<tokio::sync::watch::Receiver<Option<strait_kube::Snapshot>>>,
) -> Result<()> {
    let name = args
        .gateway
        .as_deref()
        .context("--role east-west-gateway needs --gateway namespace/name")?;
    let (namespace, name) = name
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--gateway {name:?}: not namespace/name"))?;
    let certs = cert_manager(args, &state)?;
    metrics.follow_certs(certs.clone());
    let snapshot = state.snapshot();
    let object = snapshot
        .config
        .east_west_gateways
        .iter()
        .find(|g| g.namespace == namespace && g.name == name)
        .with_context(|| {
            format!(
                "--gateway {namespace}/{name}: no Gateway of class {} by that name in the config",
                strait_config::EAST_WEST_CLASS
            )
        })?;
    let identity = strait_identity::Identity::new(
        &snapshot.config.trust_domain,
        namespace,
        &object.service_account,
    );
    let board = Arc::new(strait_health::Board::new(&args.status_dir));
    board.refresh();
    let board_watch = strait_health::board::watch(board.clone(), reload::POLL);
    let placed = east_west::Placed {
        state: state.clone(),
        metrics: metrics.clone(),
        namespace: namespace.into(),
        name: name.into(),
    };
    placed.update();
    let follow = reload::Follow {
        state: state.clone(),
        status: reload::initial_status(),
        metrics: metrics.config.clone(),
        then: placed,
    };
    match (args.source.config_dir.clone(), cluster) {
        (Some(dir), _) => reload::spawn(dir, follow),
        (None, Some(updates)) => reload::spawn_cluster(updates, follow),
        (None, None) => {}
    }
    let tls = strait_identity::tls::server_config(&certs, &identity)
        .with_context(|| format!("the TLS configuration of {identity}"))?;
    let gateway = Arc::new(east_west::Gateway {
        state,
        namespace: namespace.into(),
        name: name.into(),
        identity,
        tls,
        certs,
        metrics,
        health: Default::default(),
        board,
        limits: east_west::limits(),
        admission: Default::default(),
        connect_timeout: args.connect_timeout,
    });
    let result = east_west::run(
        gateway,
        &args.listen,
        &[args.metrics_addr, args.readiness_addr],
    )
    .await;
    board_watch.abort();
    result
}

/// After a reload in the node role: open connections re-judged by the new
/// policies, pods enrolled and released to match.
struct Enrollment {
    pods: Arc<pods::Pods>,
    proxy: Arc<Proxy>,
    state: NodeState,
}

impl reload::Applied for Enrollment {
    async fn applied(&self) -> usize {
        let closed = self.proxy.enforce_policies();
        if closed > 0 {
            info!(closed, "open connections the new policies deny were closed");
        }
        self.pods.sync(&self.state.snapshot()).await
    }
}

/// Certificates from the CA for this node's identities.
fn cert_manager(args: &Args, state: &NodeState) -> Result<Arc<CertManager>> {
    // Only a node's agent shares its namespaces with capture (and holds
    // CAP_NET_ADMIN); a gateway needs no mark, and may not set one.
    let mark = (args.role == Role::Node).then_some(AGENT_MARK);
    args.ca
        .cert_manager(state, mark, CA_TIMEOUT)
        .with_context(|| {
            format!(
                "certificates from the CA, with the credential in {}",
                args.ca.credential_dir.display()
            )
        })
}
