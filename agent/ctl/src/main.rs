//! `straitctl`: the user's view of strait.
mod admin;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
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
    /// Print the agent's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture state of the node agent: attached programs and counters.
    Capture,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Capture => {
            let body = admin::get(cli.admin, "/capture")?;
            if cli.json {
                println!("{body}");
                return Ok(());
            }
            let report: CaptureReport = serde_json::from_str(&body).with_context(|| {
                format!(
                    "the agent at {} sent an unexpected /capture document",
                    cli.admin
                )
            })?;
            print!("{}", render_capture(&report));
        }
    }
    Ok(())
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
