//! `cargo xtask bench`: strait against direct TCP between the same two pods
//! over the same links, measured in one run. Direct first (the pods are in
//! the mesh's config, but no agent runs yet); then through a pair of plain
//! user-space relays, one in each pod, which is what any design that puts
//! a proxy process at each end pays before doing anything; then the same
//! measurements with an agent on each node; then from the same client to a
//! server on another network, through that network's east-west gateway
//! (double HBONE), beside the same-network figures of the same run.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use strait_e2e::{Mesh, east_west_gateway_yaml, namespace_yaml, topology_node_yaml, workload_yaml};
use strait_topology::{Locality, Place, Process, Spec, Topology};

use crate::{
    cmd::{self, section},
    image, kube_scale,
    measure::{cpu_seconds, rss_mib},
    scale, waypoint_bench,
};

/// The parts of the bench, each on a topology of its own.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// strait against direct TCP and a relay pair, same links.
    Path,
    /// An agent loading a large config directory.
    Scale,
    /// Pods enrolled from a real API server, and memory at cluster scale.
    Kube,
    /// HTTP through the waypoint beside Envoy.
    Waypoint,
}

/// Seconds per measurement: long enough to be stable, short enough to keep
/// the whole run around a minute.
const SECONDS: u32 = 5;
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const CONN_PORT: u16 = 7000;
/// The relay pair listens on the servers' ports plus these offsets: in the
/// client pod (on loopback) and in the server pod.
const RELAY_CLIENT_OFFSET: u16 = 10000;
const RELAY_SERVER_OFFSET: u16 = 20000;
/// The service whose only endpoint is on the other network.
const FAR_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// Where the client sends each measurement's traffic.
#[derive(Clone, Copy)]
struct Target {
    ip: IpAddr,
    /// Added to every server port.
    port_offset: u16,
}

impl Target {
    fn port(self, port: u16) -> String {
        (port + self.port_offset).to_string()
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    gbps_1: f64,
    gbps_4: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    conn_per_s: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
}

pub fn run(only: Option<Part>) -> Result<()> {
    let bin = cmd::build_release(&[
        "strait-agent",
        "strait-ca",
        "straitctl",
        "strait-e2e",
        "strait-waypoint",
    ])?;
    let runs = |part| only.is_none_or(|o| o == part);
    if runs(Part::Path) || runs(Part::Scale) {
        // What users run: the image's static musl binaries, beside glibc's.
        let musl = if runs(Part::Path) {
            section("the image's binaries (static, musl)");
            Some(image::binaries()?)
        } else {
            None
        };
        path_and_scale(&bin, musl.as_deref(), runs(Part::Path), runs(Part::Scale))?;
    }
    if runs(Part::Waypoint) {
        waypoint_bench::run(&bin)?;
    }
    if runs(Part::Kube) {
        section(&format!(
            "Kubernetes: {} pods enrolled from the API server; {} pods and {} services",
            kube_scale::PODS,
            kube_scale::ALL_PODS,
            kube_scale::SERVICES
        ));
        let kube = kube_scale::measure(&bin)?;
        println!();
        println!(
            "| Kubernetes (kube-apiserver {}) | strait | target |",
            strait_e2e::kube::VERSION
        );
        println!("|---|---:|---|");
        println!(
            "| `kubectl apply` of {} pods (s) | {:.1} | |",
            kube_scale::PODS,
            kube.apply_seconds
        );
        println!(
            "| from `kubectl apply` of {} pods (made ready) to all enrolled on their {} nodes (s) | {:.1} | |",
            kube_scale::PODS,
            kube_scale::NODES,
            kube.enroll_seconds
        );
        println!(
            "| {} more pods and {} services created until all in the agent's config (s) | {:.1} | |",
            kube_scale::ALL_PODS - kube_scale::PODS,
            kube_scale::SERVICES,
            kube.listed_seconds
        );
        println!(
            "| agent RSS with {} pods and {} services in the cluster (MiB) | {:.1} | < 300 MiB |",
            kube_scale::ALL_PODS,
            kube_scale::SERVICES,
            kube.rss_mib
        );
        println!(
            "| agent peak RSS over the run (MiB) | {:.1} | |",
            kube.peak_rss_mib
        );
        println!(
            "| agent restarted on that cluster: start to ready (s) | {:.1} | |",
            kube.restart_seconds
        );
        println!(
            "| agent RSS once ready after the restart (MiB) | {:.1} | |",
            kube.restart_rss_mib
        );
        println!(
            "| agent peak RSS over the restart (MiB) | {:.1} | |",
            kube.restart_peak_rss_mib
        );
    }
    Ok(())
}

fn path_and_scale(bin: &Path, musl: Option<&Path>, path: bool, scale_rows: bool) -> Result<()> {
    let bin = bin.to_path_buf();

    section(
        "topology: client pod on n1, server pod on n2, one veth hop each way; \
         far pod on n3 in net2, behind the gateway nodes g1 (net1) and g2 (net2)",
    );
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
            .gateway_node("g1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n3", "c2", "net2", Locality::new("r2", "z1", ""))
            .gateway_node("g2", "c2", "net2", Locality::new("r2", "z1", ""))
            .pod("client", "n1")
            .pod("server", "n2")
            .pod("far", "n3"),
    )
    .context("creating the bench topology")?;
    let mut mesh = Mesh::with_bin_dir(&topo, bin.clone()).map_err(anyhow::Error::from_boxed)?;
    let (client, server, far) = (topo.pod("client")?, topo.pod("server")?, topo.pod("far")?);
    let mut yaml = [
        namespace_yaml("bench", true),
        namespace_yaml("istio-system", false),
        workload_yaml(client, "bench", "client", &[]),
        workload_yaml(server, "bench", "server", &[]),
        workload_yaml(far, "bench", "far", &[("service", "far")]),
        east_west_gateway_yaml(&topo, "net2", &["g2"]).map_err(anyhow::Error::from_boxed)?,
        far_service(),
    ]
    .concat();
    for node in topo.nodes() {
        yaml.push_str(&topology_node_yaml(node));
    }
    mesh.write("bench.yaml", &yaml)
        .map_err(anyhow::Error::from_boxed)?;
    if path {
        let _servers = start_servers(server, &bin)?;

        let direct_target = Target {
            ip: server.ipv4.into(),
            port_offset: 0,
        };
        section("direct TCP (no mesh)");
        let direct = measure(client, direct_target, &bin)?;

        section("two plain relays (no TLS, no HTTP/2, no capture): the floor of a proxy pair");
        let relays = start_relays(client, server, &bin)?;
        let floor = measure(
            client,
            Target {
                ip: Ipv4Addr::LOCALHOST.into(),
                port_offset: RELAY_CLIENT_OFFSET,
            },
            &bin,
        )?;
        drop(relays);

        section("strait (agents on both nodes, mTLS HBONE)");
        let agents = ["n1", "n2"]
            .iter()
            .map(|n| mesh.start_agent(n, &[]).map_err(anyhow::Error::from_boxed))
            .collect::<Result<Vec<_>>>()?;
        let glibc = measure_agents(client, direct_target, &bin, &agents)?;

        section("strait across networks: n1 -> g2 (east-west gateway) -> n3, double HBONE");
        let _far_servers = start_servers(far, &bin)?;
        let mut far_agents = vec![
            mesh.start_agent("n3", &[])
                .map_err(anyhow::Error::from_boxed)?,
        ];
        far_agents.push(
            mesh.start_gateway("g2", "net2")
                .map_err(anyhow::Error::from_boxed)?,
        );
        let across = measure(
            client,
            Target {
                ip: FAR_VIP.into(),
                port_offset: 0,
            },
            &bin,
        )?;
        drop(far_agents);
        drop(agents);

        section("strait, the image's binaries (static musl), on the same path");
        let musl_dir = musl.ok_or_else(|| anyhow!("no musl binaries built"))?;
        let glibc_dir = mesh.bin_dir().to_path_buf();
        mesh.set_bin_dir(musl_dir.to_path_buf());
        let agents = ["n1", "n2"]
            .iter()
            .map(|n| mesh.start_agent(n, &[]).map_err(anyhow::Error::from_boxed))
            .collect::<Result<Vec<_>>>()?;
        let musl_run = measure_agents(client, direct_target, &bin, &agents)?;
        mesh.set_bin_dir(glibc_dir);
        drop(agents);

        section("results");
        print_table(&direct, &floor, &glibc, &musl_run);
        println!();
        print_across(&glibc.figures, &across);
    }
    if scale_rows {
        section(&format!(
            "scale: an agent loading {} Services and {} WorkloadEntries",
            scale::SERVICES,
            scale::WORKLOADS
        ));
        let scale_dir = topo.scratch_dir().join("config-scale");
        scale::write_config(&scale_dir)?;
        let scale = scale::measure(&mesh, "n1", &scale_dir)?;

        println!();
        println!("| scale: 10,000 Services, 100,000 WorkloadEntries | strait | target |");
        println!("|---|---:|---|");
        println!(
            "| config load at start (s) | {:.2} | < 5 s |",
            scale.load_seconds
        );
        println!(
            "| config reload after a change (s) | {:.2} | |",
            scale.reload_seconds
        );
        println!(
            "| agent peak RSS while loading at start (MiB) | {:.1} | |",
            scale.start_peak_rss_mib
        );
        println!(
            "| agent RSS once loaded (MiB) | {:.1} | < 300 MiB |",
            scale.rss_mib
        );
        println!(
            "| agent peak RSS over start and reload (MiB) | {:.1} | |",
            scale.peak_rss_mib
        );
    }
    Ok(())
}

/// One build of strait measured: the path's figures, both agents' CPU per
/// new connection and the larger agent's RSS.
struct Run {
    figures: Figures,
    cpu_per_connection_us: f64,
    rss_mib: f64,
}

fn measure_agents(client: &Place, target: Target, bin: &Path, agents: &[Process]) -> Result<Run> {
    let figures = measure(client, target, bin)?;
    // CPU is steadier than wall-clock time on a shared machine: what both
    // agents spend on one new connection, over another connection run.
    let cpu = |all: &[Process]| all.iter().map(cpu_seconds).sum::<f64>();
    let before = cpu(agents);
    let (rate, _, _) = connections(client, target, bin)?;
    let cpu_per_connection_us = (cpu(agents) - before) / (rate * f64::from(SECONDS)) * 1e6;
    let rss_mib = agents
        .iter()
        .map(|a| rss_mib(a).0)
        .max_by(f64::total_cmp)
        .unwrap_or(0.0);
    Ok(Run {
        figures,
        cpu_per_connection_us,
        rss_mib,
    })
}

/// `far` (the pod on net2) as a service exported to other networks, with
/// the bench's ports.
fn far_service() -> String {
    let ports: String = [
        ("iperf", IPERF_PORT),
        ("sockperf", SOCKPERF_PORT),
        ("conn", CONN_PORT),
    ]
    .iter()
    .map(|(name, port)| format!("  - name: tcp-{name}\n    port: {port}\n"))
    .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: far\n  namespace: bench\n  labels:\n    istio.io/global: \"true\"\nspec:\n  clusterIP: {FAR_VIP}\n  selector:\n    service: far\n  ports:\n{ports}---\n"
    )
}

/// The same client, the same measurements: to a server on its own network
/// and to one on the other, through the gateway.
fn print_across(same: &Figures, across: &Figures) {
    type Row = (&'static str, fn(&Figures) -> f64, Compare);
    let rows: [Row; 4] = [
        (
            "throughput, 1 stream (Gbit/s)",
            |f| f.gbps_1,
            Compare::Ratio,
        ),
        (
            "latency 64 B RTT p50 (µs)",
            |f| f.rtt_p50_us,
            Compare::Added,
        ),
        ("new connections (/s)", |f| f.conn_per_s, Compare::Ratio),
        (
            "connect+first byte p50 (µs)",
            |f| f.conn_p50_us,
            Compare::Added,
        ),
    ];
    println!(
        "| measurement | strait, same network | strait, across networks (via the gateway) | across vs same |"
    );
    println!("|---|---:|---:|---:|");
    for (name, figure, compare) in rows {
        let (s, a) = (figure(same), figure(across));
        println!("| {name} | {s:.2} | {a:.2} | {} |", compare.show(a, s));
    }
}

fn start_servers(server: &Place, bin: &Path) -> Result<Vec<Process>> {
    let mut iperf = server.spawn(&["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?;
    iperf.wait_listening(IPERF_PORT, Duration::from_secs(10))?;
    let mut sockperf = server.spawn(&[
        "sockperf",
        "sr",
        "--tcp",
        "-i",
        "0.0.0.0",
        "-p",
        &SOCKPERF_PORT.to_string(),
    ])?;
    sockperf.wait_listening(SOCKPERF_PORT, Duration::from_secs(10))?;
    let connbench = bin.join("connbench");
    let mut conn = server.spawn(&[
        &connbench.to_string_lossy(),
        "server",
        &CONN_PORT.to_string(),
    ])?;
    conn.wait_listening(CONN_PORT, Duration::from_secs(10))?;
    Ok(vec![iperf, sockperf, conn])
}

/// One relay in each pod: client pod loopback -> server pod -> server
/// loopback, for each server port.
fn start_relays(client: &Place, server: &strait_topology::Pod, bin: &Path) -> Result<Vec<Process>> {
    let relay = bin.join("relay").to_string_lossy().into_owned();
    let ports = [IPERF_PORT, SOCKPERF_PORT, CONN_PORT];
    let server_side: Vec<String> = ports
        .iter()
        .map(|p| format!("0.0.0.0:{}=127.0.0.1:{p}", p + RELAY_SERVER_OFFSET))
        .collect();
    let client_side: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "127.0.0.1:{}={}:{}",
                p + RELAY_CLIENT_OFFSET,
                server.ipv4,
                p + RELAY_SERVER_OFFSET
            )
        })
        .collect();
    let mut processes = Vec::new();
    for (place, pairs, offset) in [
        (&server.place, &server_side, RELAY_SERVER_OFFSET),
        (client, &client_side, RELAY_CLIENT_OFFSET),
    ] {
        let mut argv = vec![relay.as_str()];
        argv.extend(pairs.iter().map(String::as_str));
        let mut process = place.spawn(&argv)?;
        for port in ports {
            process.wait_listening(port + offset, Duration::from_secs(10))?;
        }
        processes.push(process);
    }
    Ok(processes)
}

fn measure(client: &Place, server: Target, bin: &Path) -> Result<Figures> {
    let mut f = Figures::default();
    for (streams, slot) in [(1, &mut f.gbps_1), (4, &mut f.gbps_4)] {
        *slot = iperf(client, server, streams)?;
        println!("  iperf3, {streams} stream(s): {:.2} Gbit/s", *slot);
    }
    (f.rtt_p50_us, f.rtt_p99_us) = sockperf(client, server)?;
    println!(
        "  sockperf ping-pong 64 B: RTT p50 {:.1} µs, p99 {:.1} µs",
        f.rtt_p50_us, f.rtt_p99_us
    );
    (f.conn_per_s, f.conn_p50_us, f.conn_p99_us) = connections(client, server, bin)?;
    println!(
        "  new connections: {:.0}/s, connect+first byte p50 {:.1} µs, p99 {:.1} µs",
        f.conn_per_s, f.conn_p50_us, f.conn_p99_us
    );
    Ok(f)
}

/// Receiver-side throughput (the client receives: `-R`), in Gbit/s.
fn iperf(client: &Place, server: Target, streams: u32) -> Result<f64> {
    let out = client.run_ok(
        &[
            "iperf3",
            "-c",
            &server.ip.to_string(),
            "-p",
            &server.port(IPERF_PORT),
            "-R",
            "-J",
            "-t",
            &SECONDS.to_string(),
            "-P",
            &streams.to_string(),
        ],
        Duration::from_secs(u64::from(SECONDS) + 30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"sum_received\"";
    let at = text
        .rfind(key)
        .ok_or_else(|| anyhow!("iperf3 printed no sum_received"))?;
    let bps = number_after(&text[at..], "\"bits_per_second\":")
        .ok_or_else(|| anyhow!("no bits_per_second"))?;
    Ok(bps / 1e9)
}

/// Round-trip percentiles of 64-byte ping-pong, in µs.
fn sockperf(client: &Place, server: Target) -> Result<(f64, f64)> {
    let out = client.run_ok(
        &[
            "sockperf",
            "pp",
            "--tcp",
            "-i",
            &server.ip.to_string(),
            "-p",
            &server.port(SOCKPERF_PORT),
            "-m",
            "64",
            "-t",
            &SECONDS.to_string(),
            "--full-rtt",
        ],
        Duration::from_secs(u64::from(SECONDS) + 30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pct = |p: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .ok_or_else(|| anyhow!("sockperf printed no {p} percentile:\n{text}"))?;
        number_after(line, "=").ok_or_else(|| anyhow!("bad sockperf line {line:?}"))
    };
    Ok((pct("50.000")?, pct("99.000")?))
}

/// Connections per second, and connect+first-byte p50/p99 in µs.
fn connections(client: &Place, server: Target, bin: &Path) -> Result<(f64, f64, f64)> {
    let connbench = bin.join("connbench");
    let out = client.run_ok(
        &[
            &connbench.to_string_lossy(),
            "client",
            &format!("{}:{}", server.ip, server.port(CONN_PORT)),
            &SECONDS.to_string(),
            "200000",
        ],
        Duration::from_secs(u64::from(SECONDS) + 30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields.as_slice() {
        [count, seconds, p50, p99] if *seconds > 0.0 => Ok((count / seconds, *p50, *p99)),
        _ => bail!("connbench printed {text:?}"),
    }
}

fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+')
        })
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// How a row compares a figure with direct: as a share of it (more is
/// better) or as time added to it (less is better).
#[derive(Clone, Copy)]
enum Compare {
    Ratio,
    Added,
}

impl Compare {
    fn show(self, measured: f64, direct: f64) -> String {
        match self {
            Compare::Ratio if direct > 0.0 => format!("{:.0}%", 100.0 * measured / direct),
            Compare::Ratio => "-".into(),
            Compare::Added => format!("{:+.1} µs", measured - direct),
        }
    }
}

fn print_table(direct: &Figures, floor: &Figures, glibc: &Run, musl: &Run) {
    type Row = (&'static str, fn(&Figures) -> f64, Compare, &'static str);
    let rows: [Row; 7] = [
        (
            "throughput, 1 stream (Gbit/s)",
            |f| f.gbps_1,
            Compare::Ratio,
            "≥ 35%",
        ),
        (
            "throughput, 4 streams (Gbit/s)",
            |f| f.gbps_4,
            Compare::Ratio,
            "≥ 35%",
        ),
        (
            "latency 64 B RTT p50 (µs)",
            |f| f.rtt_p50_us,
            Compare::Added,
            "≤ +30 µs",
        ),
        (
            "latency 64 B RTT p99 (µs)",
            |f| f.rtt_p99_us,
            Compare::Added,
            "",
        ),
        (
            "new connections (/s)",
            |f| f.conn_per_s,
            Compare::Ratio,
            "≥ 70%",
        ),
        (
            "connect+first byte p50 (µs)",
            |f| f.conn_p50_us,
            Compare::Added,
            "",
        ),
        (
            "connect+first byte p99 (µs)",
            |f| f.conn_p99_us,
            Compare::Added,
            "",
        ),
    ];
    println!(
        "| measurement | direct | 2 plain relays | strait | strait musl (image) | relays vs direct | strait vs direct | musl vs strait | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, figure, compare, target) in rows {
        let (d, r, m, u) = (
            figure(direct),
            figure(floor),
            figure(&glibc.figures),
            figure(&musl.figures),
        );
        println!(
            "| {name} | {d:.2} | {r:.2} | {m:.2} | {u:.2} | {} | {} | {} | {target} |",
            compare.show(r, d),
            compare.show(m, d),
            compare.show(u, m)
        );
    }
    println!(
        "| agents' CPU per new connection (µs, both ends) | - | - | {:.0} | {:.0} | - | - | {} | |",
        glibc.cpu_per_connection_us,
        musl.cpu_per_connection_us,
        Compare::Ratio.show(musl.cpu_per_connection_us, glibc.cpu_per_connection_us)
    );
    println!(
        "| agent peak RSS (MiB) | - | - | {:.1} | {:.1} | - | - | {} | |",
        glibc.rss_mib,
        musl.rss_mib,
        Compare::Ratio.show(musl.rss_mib, glibc.rss_mib)
    );
}
