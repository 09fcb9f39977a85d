//! Swarm testing: each seed draws its own world (replica count, fault mix and rates), runs a
//! fault phase, heals, and checks every guarantee; many seeds make a swarm.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{Bugs, ReplicaId, ReplicaMode};

use crate::history::{Guarantee, Violation};
use crate::network::{NetworkCounters, NetworkFaults};
use crate::world::{FaultCounters, FaultRates, Sim, SimConfig};

/// Ticks of faults and load, then the bounds for healing and draining.
pub const FAULT_TICKS: u64 = 2_500;
pub const CONVERGE_TICKS_MAX: u64 = 5_000;
pub const DRAIN_TICKS_MAX: u64 = 2_000;

/// What one seed did and found.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub replicas: usize,
    pub nodes: usize,
    pub ticks: u64,
    pub violations: Vec<Violation>,
    pub faults: FaultCounters,
    pub network: NetworkCounters,
    pub acked_ops: u64,
    pub checked_reads: u64,
    /// Client requests answered with an error, by error.
    pub client_errors: BTreeMap<String, u64>,
    pub resyncs: usize,
    pub modes_seen: BTreeMap<ReplicaId, Vec<ReplicaMode>>,
}

/// The world a seed draws: swarm testing varies the fault mix, not just the dice.
pub fn swarm_config(seed: u64) -> SimConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
    let replicas = rng.gen_range(1..=3);
    let nodes = replicas + rng.gen_range(1..=2);
    let mut config = SimConfig::quiet(seed, replicas, nodes);
    let mut rate = |max: u32| {
        if rng.gen_bool(0.6) {
            rng.gen_range(0..=max)
        } else {
            0
        }
    };
    config.faults = FaultRates {
        network: NetworkFaults {
            drop_ppm: rate(3_000),
            duplicate_ppm: rate(3_000),
            reorder_ppm: rate(3_000),
            delay_spike_ppm: rate(5_000),
        },
        partition_ppm: rate(2_000),
        partition_one_way_ppm: rate(2_000),
        replica_crash_ppm: rate(2_000),
        power_loss_ppm: rate(1_000),
        target_crash_ppm: rate(1_000),
        target_takeover_ppm: rate(1_000),
        disk_errors_ppm: rate(1_000),
        // Drawn last (below).
        pool_full_ppm: 0,
        slow_disk_ppm: rate(2_000),
        wipe_ppm: rate(1_000),
        add_replica_ppm: rate(2_000),
        remove_replica_ppm: rate(2_000),
    };
    config.target.resync_bytes_per_tick = if rng.gen_bool(0.5) {
        0
    } else {
        rng.gen_range(512..8192)
    };
    config.workload.inflight_max = rng.gen_range(1..=12);
    // Drawn last, so every other parameter of a seed stays as it was before backpressure.
    if rng.gen_bool(0.5) {
        config.target.replica_congestion_ops = rng.gen_range(2..=16);
    }
    if rng.gen_bool(0.5) {
        config.target.resync_bytes_per_tick_under_load = rng.gen_range(256..4096);
    }
    if rng.gen_bool(0.5) {
        config.faults.pool_full_ppm = rng.gen_range(0..=1_000);
    }
    config
}

/// Runs one seed: faults and load, then heal, converge, drain, and check the end state.
pub fn run_seed(seed: u64, bugs: Bugs) -> RunReport {
    let mut config = swarm_config(seed);
    config.target.bugs = bugs;
    config.replica.bugs = bugs;
    run(config)
}

pub fn run(config: SimConfig) -> RunReport {
    let (replicas, nodes, seed) = (config.replicas, config.nodes, config.seed);
    let mut sim = Sim::new(config);
    sim.faults_on = true;
    sim.workload_on = true;
    sim.run_ticks(FAULT_TICKS);
    finish(&mut sim);
    let node_ids: Vec<ReplicaId> = (1..=nodes as u64).map(ReplicaId).collect();
    RunReport {
        seed,
        replicas,
        nodes,
        ticks: sim.now_tick,
        violations: sim.violations.clone(),
        faults: sim.faults,
        network: sim.network.counters,
        acked_ops: sim.acked_ops,
        checked_reads: sim.checked_reads,
        client_errors: sim.client_errors.clone(),
        resyncs: sim.resyncs_finished().len(),
        modes_seen: node_ids
            .into_iter()
            .map(|r| (r, sim.modes_seen(r)))
            .collect(),
    }
}

/// Heals everything and checks liveness, convergence (G3) and the final read-back (G2).
pub fn finish(sim: &mut Sim) {
    sim.heal_everything();
    if !sim.run_until(CONVERGE_TICKS_MAX, Sim::converged) {
        let detail = describe_state(sim);
        sim.violations.push(Violation {
            guarantee: Guarantee::Liveness,
            tick: sim.now_tick,
            detail: format!(
                "not Healthy {CONVERGE_TICKS_MAX} ticks after faults stopped: {detail}"
            ),
        });
        return;
    }
    sim.workload_on = false;
    if !sim.run_until(DRAIN_TICKS_MAX, |s| s.pending_client_ops() == 0) {
        let pending = sim.pending_client_ops();
        let detail = describe_state(sim);
        sim.violations.push(Violation {
            guarantee: Guarantee::Liveness,
            tick: sim.now_tick,
            detail: format!("{pending} client requests still unanswered after healing: {detail}"),
        });
        return;
    }
    sim.client_flush();
    let settled = sim.run_until(CONVERGE_TICKS_MAX, |s| {
        s.pending_client_ops() == 0 && s.quiescent() && s.converged()
    });
    if !settled {
        sim.violations.push(Violation {
            guarantee: Guarantee::Liveness,
            tick: sim.now_tick,
            detail: "the final flush never settled".into(),
        });
        return;
    }
    sim.check_convergence();
    sim.read_guarantee = Guarantee::G2NoLostWrite;
    sim.client_read_all();
    if !sim.run_until(DRAIN_TICKS_MAX, |s| s.pending_client_ops() == 0) {
        sim.violations.push(Violation {
            guarantee: Guarantee::Liveness,
            tick: sim.now_tick,
            detail: "final read-back never answered".into(),
        });
    }
}

fn describe_state(sim: &Sim) -> String {
    let Some(target) = sim.target() else {
        return "no target".into();
    };
    let modes: Vec<String> = sim
        .membership()
        .members
        .iter()
        .map(|m| {
            format!(
                "{}{}={:?}",
                m.replica.0,
                if m.trusted { "" } else { "(new)" },
                target.replica_mode(m.replica)
            )
        })
        .collect();
    format!(
        "status {:?}, replicas {}, resync {:?}; {}",
        target.status(),
        modes.join(" "),
        target.resync_progress(),
        sim.describe_targets()
    )
}

/// Totals over a swarm.
#[derive(Clone, Debug, Default)]
pub struct SwarmSummary {
    pub seeds: u64,
    pub violations: Vec<(u64, Violation)>,
    pub faults: BTreeMap<&'static str, u64>,
    pub acked_ops: u64,
    pub checked_reads: u64,
    pub resyncs: u64,
    /// Client requests answered with an error, by error (ENOSPC from full pools among them).
    pub client_errors: BTreeMap<String, u64>,
    /// Every replica mode some replica reached.
    pub modes_reached: std::collections::BTreeSet<String>,
}

impl SwarmSummary {
    pub fn add(&mut self, report: &RunReport) {
        self.seeds += 1;
        self.acked_ops += report.acked_ops;
        self.checked_reads += report.checked_reads;
        self.resyncs += report.resyncs as u64;
        for (error, count) in &report.client_errors {
            *self.client_errors.entry(error.clone()).or_default() += count;
        }
        for violation in &report.violations {
            self.violations.push((report.seed, violation.clone()));
        }
        for modes in report.modes_seen.values() {
            self.modes_reached
                .extend(modes.iter().map(|mode| format!("{mode:?}")));
        }
        let f = report.faults;
        let n = report.network;
        for (name, count) in [
            ("message dropped", n.dropped),
            ("message duplicated", n.duplicated),
            ("message reordered", n.reordered),
            ("message delayed (spike)", n.delay_spikes),
            ("message lost to partition", n.cut),
            ("partition (both ways)", f.partitions),
            ("partition (one way)", f.one_way_partitions),
            ("replica crash (kill -9)", f.replica_crashes),
            ("connection reset seen by the target", f.connection_resets),
            ("replica power loss", f.power_losses),
            ("target crash", f.target_crashes),
            ("target takeover (zombie)", f.target_takeovers),
            ("disk error window", f.disk_error_windows),
            ("disk I/O error", f.disk_errors),
            ("pools full window", f.pools_full),
            ("slow disk", f.slow_disks),
            ("replica storage wiped", f.wipes),
            ("replica added", f.replicas_added),
            ("replica removed", f.replicas_removed),
            ("membership change refused", f.membership_refused),
        ] {
            *self.faults.entry(name).or_default() += count;
        }
    }
}
