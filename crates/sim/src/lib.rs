//! Tandem's deterministic simulator: the replication core in a seeded world that injects faults
//! and checks the data-path guarantees (G1-G8 and liveness) from outside.

pub mod disk;
pub mod history;
pub mod network;
pub mod swarm;
pub mod world;

pub use history::{Guarantee, Violation};
pub use swarm::{run, run_seed, swarm_config, RunReport, SwarmSummary};
pub use world::{FaultRates, Sim, SimConfig, WorkloadConfig};
