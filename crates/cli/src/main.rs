//! The `tandem` command: one binary for every Tandem command.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod control_plane;
mod sim;

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
    /// Serves the control plane's object API.
    ControlPlane(control_plane::ControlPlaneArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: Result<bool> = match cli.command {
        TopCommand::Sim(command) => sim::run(command),
        TopCommand::ControlPlane(args) => control_plane::run(args).map(|()| true),
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
