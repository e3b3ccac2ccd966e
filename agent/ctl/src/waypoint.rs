//! `straitctl waypoint`, as `istioctl waypoint`: the Gateway of class
//! `istio-waypoint` that names a waypoint, generated; applied to a config
//! directory (a file of its own) or to a cluster (server-side apply, and
//! `--enroll-namespace` labels the namespace to use it); deleted; listed
//! with its instances and the services and workloads bound to it; and its
//! routes, as the waypoint applies them, shown.
use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;

use crate::output::Output;
use strait_config::{
    Config,
    names::check_label,
    waypoint::{USE_WAYPOINT_LABEL, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL, Waypoint as Model},
};
use strait_kube::{Access, SourceArgs, Sources};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Prints the Gateway that names a waypoint.
    Generate(Spec),
    /// Applies it: to a config directory (as `waypoint-<namespace>-<name>.yaml`)
    /// or to the cluster.
    Apply {
        #[command(flatten)]
        spec: Spec,
        /// Also label the namespace `istio.io/use-waypoint=<name>`, so its
        /// services use it (on a cluster).
        #[arg(long)]
        enroll_namespace: bool,
        /// On a cluster: wait until the waypoint controller has deployed it
        /// (the Gateway's `Programmed` condition), and print its address.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Deletes waypoints (what `apply` wrote, in a config directory).
    Delete {
        /// Waypoint names.
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Lists waypoints: where their instances are, and what is bound to
    /// them.
    List {
        /// Only this namespace's (default: all).
        #[arg(short, long)]
        namespace: Option<String>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Shows where a waypoint sends requests, as Istio's clusters: each
    /// destination (`outbound|port|subset|host`) its bound services and
    /// their routes reach, the DestinationRule policy it applies there,
    /// and its endpoints.
    Clusters {
        #[arg(default_value = "waypoint")]
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Shows what a waypoint applies: for each service bound to it, its
    /// routes in order (its VirtualService, else the Gateway API routes
    /// attached to it), their matches and destinations.
    Routes {
        #[arg(default_value = "waypoint")]
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// Which traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum For {
    Service,
    Workload,
    All,
    None,
}

impl For {
    fn label(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "none",
        }
    }
}

#[derive(Args, Debug)]
pub struct Spec {
    /// The waypoint's name.
    #[arg(default_value = "waypoint")]
    name: String,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The traffic it takes.
    #[arg(long = "for", value_enum, default_value = "service")]
    traffic: For,
}

impl Spec {
    fn check(&self) -> Result<()> {
        check_label(&self.name).map_err(|why| anyhow!("waypoint name {:?}: {why}", self.name))?;
        check_label(&self.namespace)
            .map_err(|why| anyhow!("--namespace {:?}: {why}", self.namespace))
    }

    /// The Gateway, as `istioctl waypoint generate` writes it.
    fn yaml(&self) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    {WAYPOINT_FOR_LABEL}: {traffic}
spec:
  gatewayClassName: {WAYPOINT_CLASS}
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
",
            name = self.name,
            namespace = self.namespace,
            traffic = self.traffic.label(),
        )
    }
}

pub async fn run(command: &Command, output: Output) -> Result<()> {
    match command {
        Command::Generate(spec) => {
            spec.check()?;
            let yaml = spec.yaml();
            if output == Output::Json {
                let value: serde_json::Value =
                    serde_saphyr::from_str(&yaml).context("the generated Gateway")?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{yaml}");
            }
            Ok(())
        }
        Command::Apply {
            spec,
            enroll_namespace,
            wait,
            source,
        } => {
            spec.check()?;
            match (&source.config_dir, source.access()) {
                (Some(dir), _) => {
                    if *enroll_namespace {
                        bail!(
                            "--enroll-namespace changes the Namespace object; in a config directory, add the label {USE_WAYPOINT_LABEL}: {} to the Namespace in its file",
                            spec.name
                        );
                    }
                    if *wait {
                        bail!(
                            "--wait waits for the cluster's waypoint controller; with a config directory, the demo and topologies start waypoints themselves"
                        );
                    }
                    apply_to_dir(dir, spec)
                }
                (None, Some(access)) => {
                    apply_to_cluster(&access, spec, *enroll_namespace, *wait).await
                }
                (None, None) => bail!("--config-dir, --kubeconfig or --in-cluster is required"),
            }
        }
        Command::Delete {
            names,
            namespace,
            source,
        } => {
            for name in names {
                check_label(name).map_err(|why| anyhow!("waypoint name {name:?}: {why}"))?;
            }
            match (&source.config_dir, source.access()) {
                (Some(dir), _) => delete_from_dir(dir, namespace, names),
                (None, Some(access)) => delete_from_cluster(&access, namespace, names).await,
                (None, None) => bail!("--config-dir, --kubeconfig or --in-cluster is required"),
            }
        }
        Command::List { namespace, source } => {
            let config = load(source).await?;
            print!(
                "{}",
                output.render(listed(&config, namespace.as_deref()).as_slice(), table)?
            );
            Ok(())
        }
        Command::Clusters {
            name,
            namespace,
            source,
        } => {
            let config = load(source).await?;
            let rows = clusters(&config, find(&config, namespace, name)?);
            print!("{}", output.render(rows.as_slice(), clusters_table)?);
            Ok(())
        }
        Command::Routes {
            name,
            namespace,
            source,
        } => {
            let config = load(source).await?;
            let services = routes(&config, find(&config, namespace, name)?);
            print!("{}", output.render(services.as_slice(), routes_text)?);
            Ok(())
        }
    }
}

/// The config, from a directory or the cluster.
async fn load(source: &SourceArgs) -> Result<std::sync::Arc<Config>> {
    match (&source.config_dir, source.access()) {
        (Some(dir), _) => Ok(std::sync::Arc::new(
            strait_config::load_dir(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?,
        )),
        (None, Some(access)) => {
            let sources = Sources::local(access, "Kubernetes");
            let (first, _) = strait_kube::follow(&sources)
                .await
                .context("reading the cluster")?;
            Ok(first.config)
        }
        (None, None) => bail!("--config-dir, --kubeconfig or --in-cluster is required"),
    }
}

/// One bound service's routes, as the waypoint applies them.
#[derive(Serialize)]
pub struct ServiceRoutes {
    /// `namespace/name`.
    pub service: String,
    pub host: String,
    /// `VirtualService ns/name`, or `Gateway API routes`; none without
    /// routes (straight to its endpoints).
    pub from: Option<String>,
    pub routes: Vec<RouteRow>,
}

#[derive(Serialize)]
pub struct RouteRow {
    pub name: Option<String>,
    /// Any of these (none: every request).
    pub matches: Vec<String>,
    pub to: String,
}

/// What the waypoint applies to each service bound to it.
pub fn routes(config: &Config, waypoint: &Model) -> Vec<ServiceRoutes> {
    let mut out = Vec::new();
    for service in bound(config, waypoint) {
        let host = service.hosts.first().cloned().unwrap_or_default();
        // Destination hosts as the waypoint reads them: qualified in the
        // routes' namespace.
        let (from, list, namespace) = match config.virtual_service_for(service) {
            Some(vs) => (
                format!("VirtualService {}/{}", vs.namespace, vs.name),
                vs.spec.http.clone(),
                vs.namespace.as_str(),
            ),
            None => (
                "Gateway API routes".to_string(),
                config.gateway_routes(service),
                service.namespace.as_str(),
            ),
        };
        let rows = list
            .iter()
            .map(|route| RouteRow {
                name: route.name.clone(),
                matches: route.matches.iter().map(describe_match).collect(),
                to: destinations(route, namespace),
            })
            .collect::<Vec<_>>();
        out.push(ServiceRoutes {
            service: format!("{}/{}", service.namespace, service.name),
            host,
            from: (!rows.is_empty()).then_some(from),
            routes: rows,
        });
    }
    out
}

/// Where a route sends what it matches, in a few words.
fn destinations(route: &strait_config::manifest::networking::HttpRoute, namespace: &str) -> String {
    if let Some(r) = &route.redirect {
        return format!("redirect {}", r.uri.as_deref().unwrap_or("(same path)"));
    }
    if let Some(d) = &route.direct_response {
        return format!("direct response {}", d.status);
    }
    route
        .route
        .iter()
        .map(|d| {
            let subset = d
                .destination
                .subset
                .as_ref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default();
            let port = d
                .destination
                .port
                .as_ref()
                .map(|p| format!(":{}", p.number))
                .unwrap_or_default();
            let weight = d.weight.map(|w| format!(" ({w})")).unwrap_or_default();
            let host = strait_config::qualify(&d.destination.host, namespace);
            format!("{host}{port}{subset}{weight}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The routes as text: a service a paragraph, a route a numbered line.
fn routes_text(services: &[ServiceRoutes]) -> String {
    let mut out = String::new();
    for s in services {
        let Some(from) = &s.from else {
            let _ = writeln!(
                out,
                "service {} ({}): no routes: straight to its endpoints",
                s.service, s.host
            );
            continue;
        };
        let _ = writeln!(out, "service {} ({}): {from}", s.service, s.host);
        for (i, route) in s.routes.iter().enumerate() {
            let matched = if route.matches.is_empty() {
                "every request".to_string()
            } else {
                route.matches.join(" | ")
            };
            let _ = writeln!(
                out,
                "  {}. {}: {matched} -> {}",
                i + 1,
                route.name.as_deref().unwrap_or("-"),
                route.to
            );
        }
    }
    out
}

/// Waypoint `namespace/name` of the config.
fn find<'a>(config: &'a Config, namespace: &str, name: &str) -> Result<&'a Model> {
    config
        .waypoints
        .iter()
        .find(|w| w.name == name && w.namespace == namespace)
        .ok_or_else(|| anyhow!("no waypoint {namespace}/{name} in the config"))
}

/// The services bound to `waypoint`.
fn bound<'a>(
    config: &'a Config,
    waypoint: &'a Model,
) -> impl Iterator<Item = &'a strait_config::Service> + 'a {
    config.services.iter().filter(|s| {
        config
            .service_waypoint(s)
            .is_some_and(|w| w.name == waypoint.name && w.namespace == waypoint.namespace)
    })
}

/// Where the waypoint sends requests: each destination of its bound
/// services' routes (and each bound service itself), with the policy it
/// applies there and the endpoints.
pub fn clusters(config: &Config, waypoint: &Model) -> Vec<ClusterRow> {
    // (host, port, subset), ports None for all of the service's.
    let mut destinations: Vec<(String, Option<u16>, Option<String>)> = Vec::new();
    let mut add = |d: (String, Option<u16>, Option<String>)| {
        if !destinations.contains(&d) {
            destinations.push(d);
        }
    };
    for service in bound(config, waypoint) {
        add((
            service.hosts.first().cloned().unwrap_or_default(),
            None,
            None,
        ));
        let (namespace, http, l4) = match config.virtual_service_for(service) {
            Some(vs) => (
                vs.namespace.as_str(),
                vs.spec.http.clone(),
                vs.spec
                    .tcp
                    .iter()
                    .flat_map(|r| r.route.iter())
                    .chain(vs.spec.tls.iter().flat_map(|r| r.route.iter()))
                    .map(|d| d.destination.clone())
                    .collect::<Vec<_>>(),
            ),
            None => (
                service.namespace.as_str(),
                config.gateway_routes(service),
                Vec::new(),
            ),
        };
        let http = http
            .iter()
            .flat_map(|r| r.route.iter().map(|d| d.destination.clone()))
            .collect::<Vec<_>>();
        for d in http.into_iter().chain(l4) {
            add((
                strait_config::qualify(&d.host, namespace),
                d.port.and_then(|p| u16::try_from(p.number).ok()),
                d.subset,
            ));
        }
    }
    let labels = config
        .waypoint_instances(waypoint)
        .next()
        .map(|w| w.labels.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (host, port, subset) in destinations {
        let Some(at) = config.find_service(&host) else {
            out.push(ClusterRow {
                cluster: format!(
                    "outbound|{}||{host}",
                    port.map(|p| p.to_string()).unwrap_or_default()
                ),
                endpoints: Vec::new(),
                policy: None,
                problem: Some("no such service".into()),
            });
            continue;
        };
        let rule = config.destination_rule(at, &waypoint.namespace, &labels);
        let subset_labels = subset.as_ref().and_then(|name| {
            rule.and_then(|r| r.subsets.iter().find(|s| &s.name == name))
                .map(|s| s.labels.clone())
        });
        let ports: Vec<u16> = match port {
            Some(p) => vec![p],
            None => at.service.ports.iter().map(|p| p.port).collect(),
        };
        for port in ports {
            let endpoints = match config.backends(at, port) {
                Ok(strait_config::service::Backends::Endpoints(list)) => list
                    .iter()
                    .filter(|e| {
                        subset_labels.as_ref().is_none_or(|want| {
                            want.iter()
                                .all(|(k, v)| e.workload.labels.get(k) == Some(v))
                        })
                    })
                    .map(|e| format!("{}({})", e.addr, e.workload.name))
                    .collect::<Vec<_>>(),
                Ok(strait_config::service::Backends::Dns { hosts, port }) => {
                    hosts.iter().map(|h| format!("{h}:{port}(dns)")).collect()
                }
                Ok(strait_config::service::Backends::Original) => {
                    vec!["(the address dialled)".into()]
                }
                Err(_) => Vec::new(),
            };
            let cluster = format!(
                "outbound|{port}|{}|{host}",
                subset.as_deref().unwrap_or_default()
            );
            if subset.is_some() && subset_labels.is_none() {
                out.push(ClusterRow {
                    cluster,
                    endpoints: Vec::new(),
                    policy: None,
                    problem: Some("no such subset in the DestinationRule".into()),
                });
                continue;
            }
            out.push(ClusterRow {
                cluster,
                endpoints,
                policy: policy(rule, port),
                problem: None,
            });
        }
    }
    out
}

/// One destination of a waypoint, as Istio names its clusters.
#[derive(Serialize)]
pub struct ClusterRow {
    /// `outbound|port|subset|host`.
    pub cluster: String,
    /// `address(workload)`, `host:port(dns)`, or `(the address dialled)`.
    pub endpoints: Vec<String>,
    /// The DestinationRule's policy there, in a few words.
    pub policy: Option<String>,
    /// Why there is nothing to send to.
    pub problem: Option<String>,
}

fn clusters_table(rows: &[ClusterRow]) -> String {
    let endpoints: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.endpoints.is_empty() {
                "-".to_string()
            } else {
                r.endpoints.join(",")
            }
        })
        .collect();
    let name_w = crate::width("CLUSTER", rows.iter().map(|r| r.cluster.as_str()));
    let ep_w = crate::width("ENDPOINTS", endpoints.iter().map(String::as_str));
    let mut out = format!("{:<name_w$} {:<ep_w$} POLICY\n", "CLUSTER", "ENDPOINTS");
    for (r, endpoints) in rows.iter().zip(&endpoints) {
        let policy = match (&r.problem, &r.policy) {
            (Some(problem), _) => problem.clone(),
            (None, Some(policy)) => policy.clone(),
            (None, None) => "-".into(),
        };
        let _ = writeln!(out, "{:<name_w$} {endpoints:<ep_w$} {policy}", r.cluster);
    }
    out
}

/// A DestinationRule's policy for `port`, in a few words.
fn policy(
    rule: Option<&strait_config::manifest::networking::DestinationRuleSpec>,
    port: u16,
) -> Option<String> {
    let traffic = rule.and_then(|r| r.traffic_policy.as_ref())?;
    let level = traffic
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)));
    let mut said = Vec::new();
    let lb = level
        .and_then(|p| p.load_balancer.as_ref())
        .or(traffic.load_balancer.as_ref());
    if let Some(lb) = lb {
        if let Some(simple) = &lb.simple {
            said.push(format!("lb {simple}"));
        }
        if let Some(hash) = &lb.consistent_hash {
            let on = if let Some(h) = &hash.http_header_name {
                format!("header {h}")
            } else if let Some(c) = &hash.http_cookie {
                format!("cookie {}", c.name)
            } else if let Some(q) = &hash.http_query_parameter_name {
                format!("query {q}")
            } else {
                "source ip".into()
            };
            said.push(format!("hash on {on}"));
        }
    }
    let pool = level
        .and_then(|p| p.connection_pool.as_ref())
        .or(traffic.connection_pool.as_ref());
    if let Some(pool) = pool {
        if let Some(n) = pool.tcp.as_ref().and_then(|t| t.max_connections) {
            said.push(format!("maxConnections {n}"));
        }
        if let Some(http) = &pool.http {
            if let Some(n) = http.http1_max_pending_requests {
                said.push(format!("http1MaxPendingRequests {n}"));
            }
            if let Some(n) = http.http2_max_requests {
                said.push(format!("http2MaxRequests {n}"));
            }
        }
    }
    let outlier = level
        .and_then(|p| p.outlier_detection.as_ref())
        .or(traffic.outlier_detection.as_ref());
    if let Some(o) = outlier {
        if let Some(n) = o.consecutive_5xx_errors {
            said.push(format!("eject after {n} 5xx"));
        }
        if let Some(n) = o.consecutive_gateway_errors {
            said.push(format!("eject after {n} gateway errors"));
        }
    }
    let tls = level.and_then(|p| p.tls.as_ref()).or(traffic.tls.as_ref());
    if let Some(mode) = tls.and_then(|t| t.mode.as_deref()) {
        said.push(format!("tls {mode}"));
    }
    (!said.is_empty()).then(|| said.join("; "))
}

fn describe_match(m: &strait_config::manifest::networking::HttpMatch) -> String {
    let text = |s: &strait_config::manifest::networking::StringMatch| match (
        &s.exact, &s.prefix, &s.regex,
    ) {
        (Some(e), _, _) => format!("= {e}"),
        (_, Some(p), _) => format!("prefix {p}"),
        (_, _, Some(r)) => format!("~ {r}"),
        _ => "present".to_string(),
    };
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        parts.push(format!("path {}", text(u)));
    }
    if let Some(method) = &m.method {
        parts.push(format!("method {}", text(method)));
    }
    if let Some(a) = &m.authority {
        parts.push(format!("authority {}", text(a)));
    }
    for (k, v) in &m.headers {
        parts.push(format!("header {k} {}", text(v)));
    }
    for (k, v) in &m.query_params {
        parts.push(format!("query {k} {}", text(v)));
    }
    if let Some(port) = m.port {
        parts.push(format!("port {port}"));
    }
    if parts.is_empty() {
        "every request".to_string()
    } else {
        parts.join(", ")
    }
}

fn file_of(dir: &std::path::Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("waypoint-{namespace}-{name}.yaml"))
}

fn apply_to_dir(dir: &std::path::Path, spec: &Spec) -> Result<()> {
    let file = file_of(dir, &spec.namespace, &spec.name);
    // The same Gateway written elsewhere in the directory would be two.
    let config = strait_config::load_dir(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let defined = config
        .waypoints
        .iter()
        .any(|w| w.name == spec.name && w.namespace == spec.namespace);
    if defined && !file.exists() {
        bail!(
            "waypoint {}/{} is already defined in {} (not by straitctl): change it in its file",
            spec.namespace,
            spec.name,
            dir.display()
        );
    }
    std::fs::write(&file, spec.yaml()).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "waypoint {}/{} applied: {}",
        spec.namespace,
        spec.name,
        file.display()
    );
    Ok(())
}

fn delete_from_dir(dir: &std::path::Path, namespace: &str, names: &[String]) -> Result<()> {
    for name in names {
        let file = file_of(dir, namespace, name);
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            println!("waypoint {namespace}/{name} deleted: {}", file.display());
        } else {
            bail!(
                "waypoint {namespace}/{name}: no {} (straitctl deletes what it applied; a Gateway written by hand is removed from its file)",
                file.display()
            );
        }
    }
    Ok(())
}

fn gateways(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

async fn apply_to_cluster(access: &Access, spec: &Spec, enroll: bool, wait: bool) -> Result<()> {
    let client = strait_kube::client(access)
        .await
        .context("connecting to the cluster")?;
    let object: serde_json::Value = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {WAYPOINT_FOR_LABEL: spec.traffic.label()},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    });
    gateways(client.clone(), &spec.namespace)
        .patch(
            &spec.name,
            &PatchParams::apply("straitctl").force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying Gateway {}/{}", spec.namespace, spec.name))?;
    println!("waypoint {}/{} applied", spec.namespace, spec.name);
    if enroll {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let patch = json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: spec.name}}});
        namespaces
            .patch(
                &spec.namespace,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("labelling namespace {}", spec.namespace))?;
        println!(
            "namespace {} labelled {USE_WAYPOINT_LABEL}={}",
            spec.namespace, spec.name
        );
    }
    if wait {
        wait_programmed(&gateways(client, &spec.namespace), spec).await?;
    }
    Ok(())
}

/// How long `--wait` waits, as `istioctl waypoint apply --wait`.
const WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Waits for the Gateway's `Programmed` condition; prints its addresses.
async fn wait_programmed(api: &Api<DynamicObject>, spec: &Spec) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut said = "it has no status yet: is strait's waypoint controller installed (chart value waypoints.enabled)?".to_string();
    while tokio::time::Instant::now() < deadline {
        let gateway = api
            .get(&spec.name)
            .await
            .with_context(|| format!("reading Gateway {}/{}", spec.namespace, spec.name))?;
        let status = &gateway.data["status"];
        let programmed = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Programmed");
        if let Some(condition) = programmed {
            if condition["status"] == "True" {
                let addresses: Vec<&str> = status["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["value"].as_str())
                    .collect();
                println!(
                    "waypoint {}/{} programmed at {}",
                    spec.namespace,
                    spec.name,
                    addresses.join(",")
                );
                return Ok(());
            }
            said = format!(
                "{}: {}",
                condition["reason"].as_str().unwrap_or_default(),
                condition["message"].as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    bail!(
        "waypoint {}/{} not programmed after {} s: {said}",
        spec.namespace,
        spec.name,
        WAIT.as_secs()
    )
}

async fn delete_from_cluster(access: &Access, namespace: &str, names: &[String]) -> Result<()> {
    let client = strait_kube::client(access)
        .await
        .context("connecting to the cluster")?;
    let api = gateways(client, namespace);
    for name in names {
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting Gateway {namespace}/{name}"))?;
        println!("waypoint {namespace}/{name} deleted");
    }
    Ok(())
}

/// A line per waypoint: its traffic, instances, and what is bound to it.
/// A waypoint: where its instances are, what is bound to it.
#[derive(Serialize)]
pub struct Listed {
    pub namespace: String,
    pub name: String,
    /// `istio.io/waypoint-for`.
    #[serde(rename = "for")]
    pub traffic: String,
    /// `name(address)`.
    pub instances: Vec<String>,
    /// `namespace/name`.
    pub services: Vec<String>,
    pub workloads: Vec<String>,
}

pub fn listed(config: &Config, namespace: Option<&str>) -> Vec<Listed> {
    let ours = |w: Option<&Model>, m: &Model| {
        w.is_some_and(|w| w.name == m.name && w.namespace == m.namespace)
    };
    config
        .waypoints
        .iter()
        .filter(|w| namespace.is_none_or(|n| n == w.namespace))
        .map(|waypoint| Listed {
            namespace: waypoint.namespace.clone(),
            name: waypoint.name.clone(),
            traffic: format!("{:?}", waypoint.traffic).to_ascii_lowercase(),
            instances: config
                .waypoint_instances(waypoint)
                .map(|w| {
                    let address = w
                        .addresses
                        .first()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    format!("{}({address})", w.name)
                })
                .collect(),
            services: config
                .services
                .iter()
                .filter(|s| ours(config.service_waypoint(s), waypoint))
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .collect(),
            workloads: config
                .workloads
                .iter()
                .filter(|w| ours(config.workload_waypoint(w), waypoint))
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect(),
        })
        .collect()
}

pub fn table(waypoints: &[Listed]) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let rows: Vec<[String; 6]> = waypoints
        .iter()
        .map(|w| {
            [
                w.namespace.clone(),
                w.name.clone(),
                w.traffic.clone(),
                list(&w.instances),
                list(&w.services),
                list(&w.workloads),
            ]
        })
        .collect();
    let headers = [
        "NAMESPACE",
        "NAME",
        "FOR",
        "INSTANCES",
        "SERVICES",
        "WORKLOADS",
    ];
    let widths: Vec<usize> = (0..5)
        .map(|i| crate::width(headers[i], rows.iter().map(|r| r[i].as_str())))
        .collect();
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "{cell:<w$} ");
        }
        out.push_str(cells[5]);
        out.push('\n');
        out
    };
    let mut out = line(headers);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_generated_waypoint_is_one_strait_reads() {
        let spec = Spec {
            name: "reviews-wp".into(),
            namespace: "shop".into(),
            traffic: For::All,
        };
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{}",
            spec.yaml()
        );
        let (report, config) = strait_config::check_text(Path::new("wp.yaml"), &text);
        let config = config.unwrap_or_else(|| panic!("{report}"));
        let waypoint = &config.waypoints[0];
        assert_eq!(
            (waypoint.namespace.as_str(), waypoint.name.as_str()),
            ("shop", "reviews-wp")
        );
        assert_eq!(waypoint.port, 15008);
        assert_eq!(format!("{:?}", waypoint.traffic), "All");
        let bad = Spec {
            name: "Not_A_Name".into(),
            ..spec
        };
        assert!(bad.check().unwrap_err().to_string().contains("Not_A_Name"));
    }
}
