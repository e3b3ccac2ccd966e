//! `cargo xtask`: everything beyond `cargo build`, so that one command sets
//! up and runs each job on a fresh Debian machine.
mod apt;
mod bench;
#[cfg(test)]
mod build_graph;
mod cmd;
mod demo;
mod demo_kube;
mod host;
mod image;
mod kind;
mod kube;
mod kube_scale;
mod measure;
#[cfg(test)]
mod module_graph;
mod scale;
mod setup;
mod test;
mod tools;
mod vagrant;
mod waypoint_bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "strait's task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (idempotent; seconds when nothing is
    /// missing; the first run builds kube-apiserver, about 8 minutes).
    Setup,
    /// Setup, then fmt, clippy (host and BPF), unit tests and end-to-end tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Setup, then bring up the demo topology, run the mesh on it, show what
    /// it did, and tear it down.
    Demo {
        /// Feed the mesh from real API servers (two clusters) instead of
        /// a directory; setup builds kube-apiserver first if needed.
        #[arg(long)]
        kube: bool,
        /// Keep the embedded demo up after its scenario, with a trickle of
        /// traffic, to look at the dashboard; Enter tears it down.
        #[arg(long, conflicts_with = "kube")]
        keep: bool,
    },
    /// Build the container image (static binaries, from scratch, with
    /// buildah) and write it as an OCI archive.
    Image,
    /// The demo's scenario on kind clusters, installed with the Helm
    /// chart (needs kind and a container engine; not run in CI).
    Kind,
    /// strait on two VMs with their own kernels under QEMU (the box is
    /// built locally with debootstrap, once).
    Vagrant,
    /// Setup, then measure strait against direct TCP on the same topology
    /// (release build) and print a table of ratios.
    Bench {
        /// Only one part: the data path, the config scale, or the
        /// Kubernetes rows.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
}

fn main() -> Result<()> {
    use setup::Job;
    match Cli::parse().task {
        Task::Setup => setup::run(Job::Kube),
        Task::Test { filter } => {
            setup::run(Job::Kube)?;
            test::run(filter.as_deref())
        }
        // The embedded default runs without an API server.
        Task::Demo { kube: false, keep } => {
            setup::run(Job::Demo)?;
            demo::run(keep)
        }
        Task::Demo { kube: true, .. } => {
            setup::run(Job::Kube)?;
            demo_kube::run()
        }
        Task::Image => {
            setup::run(Job::Image)?;
            image::build().map(drop)
        }
        Task::Kind => {
            kind::check()?;
            setup::run(Job::Kind)?;
            kind::run()
        }
        Task::Vagrant => {
            setup::run(Job::Vagrant)?;
            vagrant::run()
        }
        Task::Bench { only } => {
            setup::run(Job::Kube)?;
            bench::run(only)
        }
    }
}
