//! `straitctl`: the user's view of strait.
mod admin;
mod dashboard;
mod output;
mod validate;
mod waypoint;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use output::Output;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The node agent's admin endpoint.
    #[arg(
        long,
        global = true,
        env = "STRAIT_ADMIN",
        default_value = "127.0.0.1:15000"
    )]
    admin: SocketAddr,
    /// In Kubernetes: the agent on this node, through the API server's
    /// port-forward to its pod (at `--admin`'s port; the cluster from
    /// KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, conflicts_with = "pod")]
    node: Option<String>,
    /// In Kubernetes: the agent on this pod's node (`namespace/name`).
    #[arg(long, global = true)]
    pod: Option<String>,
    /// How to print: a table (or text), or the agent's document as JSON
    /// or YAML.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Same as `-o json`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture state of the node agent: attached programs and counters.
    Capture,
    /// This node's workloads: addresses, identity, whether they are captured.
    Workloads,
    /// Workload certificates held on this node: identity, serial, validity.
    Certs,
    /// A service's endpoints as this node sees them: locality, priority
    /// level, weight, health and ejection state.
    Endpoints {
        /// A host (`reviews.default.svc.cluster.local`), `name.namespace`
        /// or `namespace/name`.
        service: String,
        /// The service port (default: its first).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Checks Kubernetes/Istio manifests without an agent: a line per
    /// object (accepted, ignored, rejected with file:line, field and reason,
    /// warnings). Exits 1 when anything is rejected.
    Validate {
        /// A file, a directory of `*.yaml`/`*.yml` files, or `-` for stdin.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Prints the CustomResourceDefinitions of the Istio kinds strait
    /// reads, for `straitctl crds | kubectl apply -f -` where Istio's are
    /// not installed.
    Crds,
    /// What the config says of a pod or service, and why, as this node's
    /// agent sees it (as `istioctl x describe`).
    Describe {
        #[command(subcommand)]
        what: Describe,
    },
    /// Every service this node's agent knows: hosts, addresses, ports,
    /// waypoint, export, workloads.
    Services,
    /// The AuthorizationPolicies that apply to each of this node's
    /// workloads, and why.
    Policies,
    /// Connections open through this node's agent now: both ends'
    /// addresses and identities, the service, how long, bytes so far.
    Connections,
    /// The agent's log filter; with `--level`, sets it (`debug`,
    /// `strait_agent=debug,info`) until the agent restarts.
    Log {
        #[arg(long)]
        level: Option<String>,
    },
    /// A live topology view of the mesh from Prometheus: a web page of
    /// workloads grouped by network, cluster and locality, and the edges
    /// between them (rates, bytes, errors, mutual TLS, gateways).
    Dashboard(dashboard::Args),
    /// Waypoints, as `istioctl waypoint`: generate, apply, delete, list.
    Waypoint {
        #[command(subcommand)]
        command: waypoint::Command,
    },
}

impl Cli {
    fn output(&self) -> Output {
        if self.json { Output::Json } else { self.output }
    }

    fn target(&self) -> Result<admin::Target> {
        admin::Target::new(self.admin, self.node.as_deref(), self.pod.as_deref())
    }
}

#[derive(Subcommand, Debug)]
enum Describe {
    /// Enrolled or not and by which rule, identity, PeerAuthentication
    /// mode, the AuthorizationPolicies that apply and why, its waypoint,
    /// its services, the gateways other networks reach it through.
    Pod {
        /// `namespace/name`.
        name: String,
    },
    /// Hosts, addresses, ports, waypoint, export, its workloads, and its
    /// endpoints by priority as this node's clients see them.
    Service {
        /// A host, `name.namespace` or `namespace/name`.
        name: String,
    },
}

/// The agent's `/describe?service=` document.
#[derive(Deserialize)]
struct ServiceReport {
    service: strait_config::describe::ServiceDescription,
    endpoints: Option<EndpointsReport>,
}

#[derive(Deserialize)]
struct WorkloadReport {
    name: String,
    namespace: String,
    addresses: Vec<String>,
    identity: String,
    state: String,
}

/// The agent's `/endpoints` document.
#[derive(Deserialize)]
struct EndpointsReport {
    service: String,
    host: String,
    port: u16,
    from: String,
    kind: String,
    endpoints: Vec<EndpointReport>,
}

#[derive(Deserialize)]
struct EndpointReport {
    address: String,
    workload: String,
    locality: String,
    network: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    stale: bool,
    priority: u32,
    weight: f64,
    health: String,
    #[serde(default)]
    via: Vec<ViaReport>,
}

/// A gateway instance an endpoint on another network is reached through.
#[derive(Deserialize)]
struct ViaReport {
    gateway: String,
    address: String,
    health: String,
}

#[derive(Deserialize)]
struct CertReport {
    identity: String,
    serial: String,
    not_before: i64,
    not_after: i64,
    generation: u64,
}

/// The agent's `/capture` document.
#[derive(Deserialize)]
struct CaptureReport {
    node: String,
    cgroup: String,
    pin_dir: String,
    programs: Vec<ProgramReport>,
    counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct ProgramReport {
    name: String,
    attached: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate { path } => validate::run(path, cli.output()),
        Command::Crds => {
            use std::io::Write;
            std::io::stdout()
                .write_all(strait_crds::render(cli.output() == Output::Json).as_bytes())
                .map(|()| ExitCode::SUCCESS)
                .context("writing the CRDs")
        }
        Command::Waypoint { command } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|runtime| runtime.block_on(waypoint::run(command, cli.output())))
            .map(|()| ExitCode::SUCCESS),
        Command::Dashboard(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|runtime| runtime.block_on(dashboard::run(args)))
            .map(|()| ExitCode::SUCCESS),
        Command::Capture => inspect(&cli, "/capture", |body| {
            Ok(render_capture(&serde_json::from_str(body)?))
        }),
        Command::Workloads => inspect(&cli, "/workloads", |body| {
            Ok(render_workloads(&serde_json::from_str::<Vec<_>>(body)?))
        }),
        Command::Certs => inspect(&cli, "/certs", |body| {
            Ok(render_certs(&serde_json::from_str::<Vec<_>>(body)?))
        }),
        Command::Describe {
            what: Describe::Pod { name },
        } => inspect(&cli, &format!("/describe?pod={name}"), |body| {
            Ok(render_pod(&serde_json::from_str(body)?))
        }),
        Command::Describe {
            what: Describe::Service { name },
        } => inspect(&cli, &format!("/describe?service={name}"), |body| {
            Ok(render_service(&serde_json::from_str(body)?))
        }),
        Command::Services => inspect(&cli, "/services", |body| {
            Ok(render_services(&serde_json::from_str::<Vec<_>>(body)?))
        }),
        Command::Connections => inspect(&cli, "/connections", |body| {
            Ok(render_connections(&serde_json::from_str::<Vec<_>>(body)?))
        }),
        Command::Policies => inspect(&cli, "/policies", |body| {
            Ok(render_policies(&serde_json::from_str::<Vec<_>>(body)?))
        }),
        Command::Log { level } => {
            let answer = match level {
                Some(level) => {
                    let query: String = form_urlencoded::Serializer::new(String::new())
                        .append_pair("level", level)
                        .finish();
                    cli.target()
                        .and_then(|t| admin::post(&t, &format!("/logging?{query}")))
                }
                None => cli.target().and_then(|t| admin::get(&t, "/logging")),
            };
            answer.map(|filter| {
                print!("{filter}");
                ExitCode::SUCCESS
            })
        }
        Command::Endpoints { service, port } => {
            let mut path = format!("/endpoints?service={service}");
            if let Some(port) = port {
                path.push_str(&format!("&port={port}"));
            }
            inspect(&cli, &path, |body| {
                Ok(render_endpoints(&serde_json::from_str(body)?))
            })
        }
    };
    // A path `validate` cannot read is 2, its verdict "rejected" being 1;
    // every other command fails with 1.
    let failed = if matches!(cli.command, Command::Validate { .. }) {
        2
    } else {
        1
    };
    result.unwrap_or_else(|err| {
        eprintln!("straitctl: {err:#}");
        ExitCode::from(failed)
    })
}

/// Reads one of the agent's admin documents and shows it, as a table or
/// (`--json`) as sent.
fn inspect(
    cli: &Cli,
    path: &str,
    render: fn(&str) -> serde_json::Result<String>,
) -> Result<ExitCode> {
    let target = cli.target()?;
    let body = admin::get(&target, path)?;
    let unexpected = || format!("{target} sent an unexpected {path} document");
    let text = match cli.output() {
        Output::Json => format!("{body}\n"),
        Output::Yaml => {
            let value: serde_json::Value = serde_json::from_str(&body).with_context(unexpected)?;
            serde_saphyr::to_string(&value).context("writing YAML")?
        }
        Output::Table => render(&body).with_context(unexpected)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn render_workloads(workloads: &[WorkloadReport]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<34} {:<48} STATE\n",
        "NAME", "NAMESPACE", "ADDRESSES", "IDENTITY"
    );
    for w in workloads {
        out.push_str(&format!(
            "{:<24} {:<16} {:<34} {:<48} {}\n",
            w.name,
            w.namespace,
            w.addresses.join(","),
            w.identity,
            w.state
        ));
    }
    out
}

/// A column wide enough for its header and every value: long names do
/// not push the columns after them out of line.
fn width<'a>(header: &str, values: impl Iterator<Item = &'a str>) -> usize {
    values.map(str::len).max().unwrap_or(0).max(header.len())
}

fn render_services(services: &[strait_config::describe::ServiceDescription]) -> String {
    let name_width = width("SERVICE", services.iter().map(|s| s.service.as_str()));
    let mut out = format!(
        "{:<name_width$}  {:<34} {:<28} {:<24} {:<8} WORKLOADS\n",
        "SERVICE", "ADDRESSES", "PORTS", "WAYPOINT", "EXPORTED"
    );
    for s in services {
        out.push_str(&format!(
            "{:<name_width$}  {:<34} {:<28} {:<24} {:<8} {}\n",
            s.service,
            dash(&s.addresses.join(",")),
            dash(
                &s.ports
                    .iter()
                    .map(|p| p.split_once(' ').map_or(p.as_str(), |(_, rest)| rest))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            s.waypoint.as_deref().unwrap_or("-"),
            if s.exported { "yes" } else { "no" },
            s.workloads.len()
        ));
    }
    out
}

fn render_connections(open: &[strait_telemetry::open::OpenConnection]) -> String {
    let src_width = width("SOURCE", open.iter().map(|c| c.src.as_str()));
    let dst_width = width("DESTINATION", open.iter().map(|c| c.dst.as_str()));
    let id_width = width(
        "IDENTITY",
        open.iter().flat_map(|c| {
            [
                c.source_principal.as_str(),
                c.destination_principal.as_str(),
            ]
        }),
    );
    let mut out = format!(
        "{:<11}  {:<src_width$}  {:<id_width$}  {:<dst_width$}  {:<id_width$}  {:>9}  {:>12}  {:>12}  SERVICE\n",
        "REPORTER", "SOURCE", "IDENTITY", "DESTINATION", "IDENTITY", "AGE", "RECEIVED", "SENT"
    );
    for c in open {
        out.push_str(&format!(
            "{:<11}  {:<src_width$}  {:<id_width$}  {:<dst_width$}  {:<id_width$}  {:>8.1}s  {:>12}  {:>12}  {}\n",
            c.reporter,
            c.src,
            c.source_principal,
            c.dst,
            c.destination_principal,
            c.duration_ms as f64 / 1000.0,
            c.bytes_received,
            c.bytes_sent,
            dash(&c.service)
        ));
    }
    out
}

/// One workload's policies, as the agent's `/policies` lists them.
#[derive(Deserialize)]
struct PodPolicies {
    pod: String,
    policies: Vec<strait_config::describe::AppliedPolicy>,
}

fn render_policies(pods: &[PodPolicies]) -> String {
    let pod_width = width("POD", pods.iter().map(|p| p.pod.as_str()));
    let policy_width = width(
        "POLICY",
        pods.iter()
            .flat_map(|p| &p.policies)
            .map(|p| p.policy.as_str()),
    );
    let mut out = format!(
        "{:<pod_width$}  {:<policy_width$}  {:<6} WHY\n",
        "POD", "POLICY", "ACTION"
    );
    for pod in pods {
        if pod.policies.is_empty() {
            out.push_str(&format!(
                "{:<pod_width$}  {:<policy_width$}  {:<6} no policy applies: everything is allowed\n",
                pod.pod, "-", "-"
            ));
        }
        for p in &pod.policies {
            out.push_str(&format!(
                "{:<pod_width$}  {:<policy_width$}  {:<6} {}\n",
                pod.pod, p.policy, p.action, p.scope
            ));
        }
    }
    out
}

fn render_pod(pod: &strait_config::describe::PodDescription) -> String {
    let mut out = format!("Pod: {}/{}\n", pod.namespace, pod.name);
    let mut field =
        |name: &str, value: &str| out.push_str(&format!("  {name:<20} {}\n", dash(value)));
    field("Workload:", &pod.workload);
    field("Addresses:", &pod.addresses.join(", "));
    field("Node:", pod.node.as_deref().unwrap_or_default());
    field("Cluster:", &pod.cluster);
    field("Network:", &pod.network);
    field("Locality:", &pod.locality);
    field("Identity:", &pod.identity);
    field(
        "Enrolled:",
        &format!(
            "{} ({})",
            if pod.enrolled { "yes" } else { "no" },
            pod.reason
        ),
    );
    if let Some(capture) = &pod.capture {
        field("Capture:", capture);
    }
    field("PeerAuthentication:", &pod.mtls_mode);
    field("Waypoint:", pod.waypoint.as_deref().unwrap_or("none"));
    field("Gateways in:", &pod.gateways.join(", "));
    out.push_str("  Services:\n");
    if pod.services.is_empty() {
        out.push_str("    none\n");
    }
    for s in &pod.services {
        out.push_str(&format!(
            "    {} ({}), waypoint {}\n",
            s.service,
            s.host,
            s.waypoint.as_deref().unwrap_or("none")
        ));
    }
    out.push_str("  AuthorizationPolicies:\n");
    if pod.policies.is_empty() {
        out.push_str("    none (everything is allowed)\n");
    }
    for p in &pod.policies {
        out.push_str(&format!("    {:<6} {}: {}\n", p.action, p.policy, p.scope));
    }
    out
}

fn render_service(report: &ServiceReport) -> String {
    let s = &report.service;
    let mut out = format!("Service: {}\n", s.service);
    let mut field =
        |name: &str, value: &str| out.push_str(&format!("  {name:<12} {}\n", dash(value)));
    field("Hosts:", &s.hosts.join(", "));
    field("Addresses:", &s.addresses.join(", "));
    field("Ports:", &s.ports.join("; "));
    field("Waypoint:", s.waypoint.as_deref().unwrap_or("none"));
    field(
        "Exported:",
        if s.exported {
            "to other networks (istio.io/global)"
        } else {
            "no"
        },
    );
    field(
        "Visible to:",
        &if s.export_to.is_empty() {
            "every namespace".to_string()
        } else {
            s.export_to.join(", ")
        },
    );
    field("Workloads:", &s.workloads.join(", "));
    if let Some(endpoints) = &report.endpoints {
        out.push_str(&render_endpoints(endpoints));
    }
    out
}

fn render_endpoints(report: &EndpointsReport) -> String {
    let mut out = format!(
        "service {} ({}) port {}, seen from {}: {}\n",
        report.service,
        report.host,
        report.port,
        if report.from.is_empty() {
            "-"
        } else {
            &report.from
        },
        report.kind
    );
    out.push_str(&format!(
        "{:<26} {:<28} {:<20} {:<10} {:<12} {:>8} {:>8}  HEALTH\n",
        "ENDPOINT", "WORKLOAD", "LOCALITY", "NETWORK", "CLUSTER", "PRIORITY", "WEIGHT"
    ));
    for e in &report.endpoints {
        // What a cluster whose API server is away last listed may be gone.
        let stale = if e.stale { " (stale)" } else { "" };
        out.push_str(&format!(
            "{:<26} {:<28} {:<20} {:<10} {:<12} {:>8} {:>8.1}  {}{stale}\n",
            e.address,
            e.workload,
            dash(&e.locality),
            dash(&e.network),
            dash(&e.cluster),
            e.priority,
            e.weight,
            e.health
        ));
        for via in &e.via {
            out.push_str(&format!(
                "  via gateway {} at {}  {}\n",
                via.gateway, via.address, via.health
            ));
        }
    }
    out
}

/// Empty columns would shift the ones after them for readers that split
/// on whitespace.
fn dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn render_certs(certs: &[CertReport]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = format!(
        "{:<48} {:<34} {:>10} {:>12} {:>4}\n",
        "IDENTITY", "SERIAL", "AGE", "EXPIRES IN", "GEN"
    );
    for c in certs {
        out.push_str(&format!(
            "{:<48} {:<34} {:>9}s {:>11}s {:>4}\n",
            c.identity,
            c.serial,
            now - c.not_before,
            c.not_after - now,
            c.generation
        ));
    }
    out
}

fn render_capture(report: &CaptureReport) -> String {
    let mut out = format!(
        "node:    {}\ncgroup:  {}\npins:    {}\n\nPROGRAM                ATTACHED\n",
        report.node, report.cgroup, report.pin_dir
    );
    for p in &report.programs {
        out.push_str(&format!("{:<22} {}\n", p.name, p.attached));
    }
    out.push_str("\nCOUNTER                VALUE\n");
    for (name, value) in &report.counters {
        out.push_str(&format!("{name:<22} {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_workloads_and_certs() {
        let workloads: Vec<WorkloadReport> = serde_json::from_str(
            r#"[{"name":"db","namespace":"shop","addresses":["10.2.0.10","fd00::a"],"identity":"spiffe://cluster.local/ns/shop/sa/db","state":"captured","netns":null}]"#,
        )
        .unwrap();
        let text = render_workloads(&workloads);
        assert!(text.contains("10.2.0.10,fd00::a"), "{text}");
        assert!(text.trim_end().ends_with("captured"), "{text}");
        let certs: Vec<CertReport> = serde_json::from_str(
            r#"[{"identity":"spiffe://cluster.local/ns/shop/sa/db","serial":"0a1b","not_before":0,"not_after":4102444800,"generation":2}]"#,
        )
        .unwrap();
        let text = render_certs(&certs);
        assert!(text.contains("0a1b"), "{text}");
        assert!(text.trim_end().ends_with('2'), "{text}");
    }

    #[test]
    fn renders_endpoints() {
        let report: EndpointsReport = serde_json::from_str(
            r#"{"service":"shop/web","host":"web.shop.svc.cluster.local","port":80,"from":"r1/z1","kind":"endpoints","endpoints":[{"address":"10.2.0.10:8080","workload":"shop/near","locality":"r1/z1","network":"","node":"n2","priority":0,"weight":1.0,"health":"ejected (4s left)","consecutive_errors":0,"times_ejected":1},{"address":"10.3.0.10:8080","workload":"shop/far","locality":"r2/z1","network":"","cluster":"c2","stale":true,"node":"n3.c2","priority":1,"weight":1.0,"health":"healthy","consecutive_errors":0,"times_ejected":0},{"address":"10.9.0.10:8080","workload":"shop/remote","locality":"r3/z1","network":"net2","priority":11,"weight":1.0,"health":"healthy","consecutive_errors":0,"times_ejected":0,"via":[{"gateway":"istio-system/eastwest-net2","address":"100.64.0.3:15008","health":"ejected (2s left)"}]}]}"#,
        )
        .unwrap();
        let text = render_endpoints(&report);
        assert!(
            text.trim_end().ends_with(
                "  via gateway istio-system/eastwest-net2 at 100.64.0.3:15008  ejected (2s left)"
            ),
            "{text}"
        );
        assert!(text.starts_with("service shop/web"), "{text}");
        assert!(text.contains("10.2.0.10:8080"), "{text}");
        assert!(text.contains("ejected (4s left)\n"), "{text}");
        assert!(text.contains("healthy (stale)\n"), "{text}");
        assert!(text.contains(" c2 "), "{text}");
    }

    #[test]
    fn renders_a_capture_report() {
        let report: CaptureReport = serde_json::from_str(
            r#"{"node":"n1","cgroup":"/cg","pin_dir":"/pins/v1-x","programs":[{"name":"strait_connect4","attached":"kept"}],"counters":{"connect4":3}}"#,
        )
        .unwrap();
        let text = render_capture(&report);
        assert!(text.contains("node:    n1"), "{text}");
        assert!(text.contains("strait_connect4        kept"), "{text}");
        assert!(text.contains("connect4               3"), "{text}");
    }
}
