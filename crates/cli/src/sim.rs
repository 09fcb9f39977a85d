//! `tandem sim`: replay one seed of the simulator, or run a swarm of seeds.

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Subcommand;
use tandem_core::Bugs;
use tandem_sim::{run_seed, swarm_config, RunReport, SwarmSummary};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Replays one seed exactly and prints what happened.
    Replay {
        /// The seed to replay (as printed by a swarm).
        seed: u64,
    },
    /// Runs many seeds and prints the faults injected and any violations.
    Swarm {
        /// How many seeds to run.
        #[arg(long, default_value_t = 500)]
        seeds: u64,
        /// The first seed; the swarm runs `first..first+seeds`.
        #[arg(long, default_value_t = 0)]
        first: u64,
    },
}

/// Returns `Ok(false)` when the simulator found violations.
pub fn run(command: SimCommand) -> Result<bool> {
    match command {
        SimCommand::Replay { seed } => {
            let config = swarm_config(seed);
            println!(
                "seed {seed}: a volume of {} replicas on {} nodes, {} blocks",
                config.replicas, config.nodes, config.blocks
            );
            let report = run_seed(seed, Bugs::none());
            print_report(&report);
            Ok(report.violations.is_empty())
        }
        SimCommand::Swarm { seeds, first } => {
            ensure!(seeds > 0, "--seeds must be at least 1");
            let started = Instant::now();
            let mut summary = SwarmSummary::default();
            for seed in first..first + seeds {
                let report = run_seed(seed, Bugs::none());
                for violation in &report.violations {
                    println!("seed {seed}: {violation}");
                }
                summary.add(&report);
            }
            print_summary(&summary, started.elapsed().as_secs_f64());
            Ok(summary.violations.is_empty())
        }
    }
}

fn print_report(report: &RunReport) {
    println!(
        "ran {} ticks: {} client requests answered, {} reads checked, {} resyncs finished",
        report.ticks, report.acked_ops, report.checked_reads, report.resyncs
    );
    let mut summary = SwarmSummary::default();
    summary.add(report);
    println!("faults injected:");
    for (name, count) in summary.faults.iter().filter(|(_, count)| **count > 0) {
        println!("  {name:<28} {count}");
    }
    println!("replica modes reached:");
    for (replica, modes) in &report.modes_seen {
        println!("  replica {}: {modes:?}", replica.0);
    }
    for violation in &report.violations {
        println!("VIOLATION {violation}");
    }
    println!("violations: {}", report.violations.len());
}

fn print_summary(summary: &SwarmSummary, seconds: f64) {
    println!("seeds run: {} in {seconds:.1}s", summary.seeds);
    println!(
        "client requests answered: {}, reads checked: {}, resyncs finished: {}",
        summary.acked_ops, summary.checked_reads, summary.resyncs
    );
    println!("faults injected:");
    for (name, count) in &summary.faults {
        println!("  {name:<28} {count}");
    }
    let modes: Vec<&str> = summary.modes_reached.iter().map(String::as_str).collect();
    println!("replica modes reached: {}", modes.join(", "));
    println!("violations: {}", summary.violations.len());
}
