//! The `tandem` command: one binary for every Tandem command.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<bool> = match cli.command {
        TopCommand::Sim(command) => sim::run(command),
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
