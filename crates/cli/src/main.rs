//! The `tandem` command: one binary for every Tandem command.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tandem::{wait, workload};

mod agent;
mod application;
mod cluster;
mod control_plane;
mod demo;
mod kubeconfig;
mod kubectl;
mod metrics;
mod output;
mod pki;
mod progress;
mod server;
mod sim;
mod store;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Replicated block storage with cStor's object model"
)]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// Runs the deterministic simulator of the replication core.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Starts a local cluster: the control plane and N node agents, each its own process.
    Up(cluster::UpArgs),
    /// Stops the local cluster started by `tandem up`.
    Down(cluster::DownArgs),
    /// Serves the control plane's object API and runs its controllers.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Runs the node agent: owns one pool directory and the replicas placed in it.
    Agent(agent::AgentArgs),
    /// Moves a volume's replica to another node while an application writes to it, checking
    /// that no data is lost (cStor's migration walk-through, on the local cluster).
    Demo(demo::DemoArgs),
    /// Runs a verifying application against a volume: writes known content round after round
    /// (FUA writes, flushes, read-back checks, reconnecting after failures), then reads every
    /// block back. Fails if any block held the wrong data.
    Workload(application::WorkloadArgs),
    /// Moves a cluster's objects between stores (`tandem store copy --from redb:... --to etcd://...`).
    Store(store::StoreArgs),
    /// Shows the local cluster's processes: control planes (which leads), etcd members, nodes.
    Status(cluster::StatusArgs),
    /// Prints a kubeconfig for the cluster, so the real kubectl reaches its control plane.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Prints where Prometheus scrapes the cluster: the control plane's and every agent's
    /// /metrics URL.
    Metrics(metrics::MetricsArgs),
    /// Issues credentials from the cluster's CA: for a new node, a new user, or a rotation.
    Credential(pki::CredentialArgs),
    /// The kubectl-style verbs: get, describe, edit, patch, apply, create, delete, volume.
    #[command(flatten)]
    Kubectl(kubectl::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result: Result<bool> = match cli.command {
        TopCommand::Sim(command) => sim::run(command),
        TopCommand::Up(args) => cluster::up(args).map(|()| true),
        TopCommand::Down(args) => cluster::down(args).map(|()| true),
        TopCommand::ControlPlane(args) => control_plane::run(args).map(|()| true),
        TopCommand::Agent(args) => agent::run(args).map(|()| true),
        TopCommand::Demo(args) => demo::run(args),
        TopCommand::Workload(args) => application::run(args),
        TopCommand::Status(args) => cluster::status(args),
        TopCommand::Store(args) => store::run(args),
        TopCommand::Kubeconfig(args) => kubeconfig::run(args),
        TopCommand::Metrics(args) => metrics::run(args),
        TopCommand::Credential(args) => pki::run(args),
        TopCommand::Kubectl(command) => kubectl::run(command),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
