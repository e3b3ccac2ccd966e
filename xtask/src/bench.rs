//! `cargo xtask bench`: strait against direct TCP between the same two pods
//! over the same links, measured in one run. Direct first (the pods are in
//! the mesh's config, but no agent runs yet), then the same measurements
//! with an agent on each node.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use strait_e2e::{Mesh, namespace_yaml, workload_yaml};
use strait_topology::{Locality, Place, Process, Spec, Topology};

use crate::cmd::{self, section};

/// Seconds per measurement: long enough to be stable, short enough to keep
/// the whole run around a minute.
const SECONDS: u32 = 5;
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const CONN_PORT: u16 = 7000;

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

pub fn run() -> Result<()> {
    let bin = cmd::build_release(&["strait-agent", "straitctl", "strait-e2e"])?;

    section("topology: client pod on n1, server pod on n2, one veth hop each way");
    let topo = Topology::create(
        Spec::new()
            .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
            .pod("client", "n1")
            .pod("server", "n2"),
    )
    .context("creating the bench topology")?;
    let mesh = Mesh::with_bin_dir(&topo, bin.clone()).map_err(anyhow::Error::from_boxed)?;
    let (client, server) = (topo.pod("client")?, topo.pod("server")?);
    mesh.write(
        "bench.yaml",
        &[
            namespace_yaml("bench", true),
            workload_yaml(client, "bench", "client", &[]),
            workload_yaml(server, "bench", "server", &[]),
        ]
        .concat(),
    )
    .map_err(anyhow::Error::from_boxed)?;
    let _servers = start_servers(server, &bin)?;

    section("direct TCP (no mesh)");
    let direct = measure(client, server.ipv4, &bin)?;

    section("strait (agents on both nodes, mTLS HBONE)");
    let agents = ["n1", "n2"]
        .iter()
        .map(|n| mesh.start_agent(n, &[]).map_err(anyhow::Error::from_boxed))
        .collect::<Result<Vec<_>>>()?;
    let mesh_figures = measure(client, server.ipv4, &bin)?;
    let rss_mib = agents
        .iter()
        .map(peak_rss_mib)
        .max_by(f64::total_cmp)
        .unwrap_or(0.0);

    section("results");
    print_table(&direct, &mesh_figures, rss_mib);
    Ok(())
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

fn measure(client: &Place, server: Ipv4Addr, bin: &Path) -> Result<Figures> {
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
fn iperf(client: &Place, server: Ipv4Addr, streams: u32) -> Result<f64> {
    let out = client.run_ok(
        &[
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
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
fn sockperf(client: &Place, server: Ipv4Addr) -> Result<(f64, f64)> {
    let out = client.run_ok(
        &[
            "sockperf",
            "pp",
            "--tcp",
            "-i",
            &server.to_string(),
            "-p",
            &SOCKPERF_PORT.to_string(),
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
fn connections(client: &Place, server: Ipv4Addr, bin: &Path) -> Result<(f64, f64, f64)> {
    let connbench = bin.join("connbench");
    let out = client.run_ok(
        &[
            &connbench.to_string_lossy(),
            "client",
            &format!("{server}:{CONN_PORT}"),
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

/// Peak resident memory of a process, from `VmHWM`.
fn peak_rss_mib(process: &Process) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", process.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| number_after(l, "VmHWM:"))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn print_table(direct: &Figures, mesh: &Figures, rss_mib: f64) {
    let ratio = |m: f64, d: f64| {
        if d > 0.0 {
            format!("{:.0}%", 100.0 * m / d)
        } else {
            "-".into()
        }
    };
    let added = |m: f64, d: f64| format!("{:+.1} µs", m - d);
    let rows = [
        (
            "throughput, 1 stream (Gbit/s)",
            direct.gbps_1,
            mesh.gbps_1,
            ratio(mesh.gbps_1, direct.gbps_1),
            "≥ 35%",
        ),
        (
            "throughput, 4 streams (Gbit/s)",
            direct.gbps_4,
            mesh.gbps_4,
            ratio(mesh.gbps_4, direct.gbps_4),
            "≥ 35%",
        ),
        (
            "latency 64 B RTT p50 (µs)",
            direct.rtt_p50_us,
            mesh.rtt_p50_us,
            added(mesh.rtt_p50_us, direct.rtt_p50_us),
            "≤ +30 µs",
        ),
        (
            "latency 64 B RTT p99 (µs)",
            direct.rtt_p99_us,
            mesh.rtt_p99_us,
            added(mesh.rtt_p99_us, direct.rtt_p99_us),
            "",
        ),
        (
            "new connections (/s)",
            direct.conn_per_s,
            mesh.conn_per_s,
            ratio(mesh.conn_per_s, direct.conn_per_s),
            "≥ 70%",
        ),
        (
            "connect+first byte p50 (µs)",
            direct.conn_p50_us,
            mesh.conn_p50_us,
            added(mesh.conn_p50_us, direct.conn_p50_us),
            "",
        ),
        (
            "connect+first byte p99 (µs)",
            direct.conn_p99_us,
            mesh.conn_p99_us,
            added(mesh.conn_p99_us, direct.conn_p99_us),
            "",
        ),
    ];
    println!("| measurement | direct | strait | strait vs direct | target |");
    println!("|---|---:|---:|---:|---|");
    for (name, d, m, vs, target) in rows {
        println!("| {name} | {d:.2} | {m:.2} | {vs} | {target} |");
    }
    println!("| agent peak RSS (MiB) | - | {rss_mib:.1} | - | |");
}
