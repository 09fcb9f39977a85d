//! What the scenario and planted-bug tests share: the volume they use and the stories they tell.
#![allow(dead_code)]

use tandem_core::{Command, ReplicaId, VolumeStatus};
use tandem_sim::{Sim, SimConfig};

pub const R1: ReplicaId = ReplicaId(1);
pub const R2: ReplicaId = ReplicaId(2);
pub const R3: ReplicaId = ReplicaId(3);

/// A volume big enough that a rebuild takes a while under the throttle: 256 blocks in 64
/// regions of 2 KiB, copied at most 2 KiB per tick.
pub fn config(seed: u64, replicas: usize, nodes: usize) -> SimConfig {
    let mut config = SimConfig::quiet(seed, replicas, nodes);
    config.blocks = 256;
    config.target.resync_bytes_per_tick = 2048;
    config
}

pub fn healthy_volume(config: SimConfig) -> Sim {
    let mut sim = Sim::new(config);
    assert!(
        sim.run_until(500, Sim::converged),
        "volume never became Healthy"
    );
    sim
}

/// Sends an operator command to the target and waits for its answer.
pub fn run_command(sim: &mut Sim, command: Command) -> Result<(), String> {
    let answered_before = sim.command_results.len();
    sim.command(command);
    assert!(
        sim.run_until(500, |s| s.command_results.len() > answered_before),
        "{command:?} never answered"
    );
    let (answered, result) = sim.command_results[answered_before].clone();
    assert_eq!(answered, command);
    result.map_err(|error| error.to_string())
}

pub fn is_rebuilding(sim: &Sim, replica: ReplicaId) -> bool {
    sim.target()
        .and_then(|t| t.resync_progress())
        .is_some_and(|p| p.replica == replica && p.bytes_done > 0 && p.bytes_done < p.bytes_total)
}

/// The first half of `migration_adds_rebuilds_under_writes_then_removes`, shared with the
/// planted-bug test: on a Healthy volume of two replicas the application writes, a third replica
/// is added and rebuilt while it keeps writing, and once the new replica is Healthy the client
/// waits are checked (G7).
pub fn add_a_replica_and_rebuild_it_under_writes(sim: &mut Sim) {
    sim.workload_on = true;
    sim.run_ticks(500);
    assert_eq!(run_command(sim, Command::AddReplica(R3)), Ok(()));
    assert_eq!(sim.membership().desired_replication_factor(), 3);
    assert_eq!(
        sim.membership().replication_factor(),
        2,
        "not trusted until rebuilt"
    );
    assert!(
        sim.run_until(500, |s| is_rebuilding(s, R3)),
        "no rebuild progress"
    );
    assert_eq!(
        sim.volume_status(),
        Some(VolumeStatus::Healthy),
        "a rebuild keeps the volume Healthy"
    );
    assert!(
        sim.run_until(3_000, Sim::converged),
        "the new replica never became Healthy"
    );
    // G7: a rebuild holds a client write back for at most one source round trip per segment.
    let (steady, during) = sim.longest_client_waits();
    println!("longest client wait: {steady:?} ticks steady, {during:?} ticks during the rebuild");
    assert!(
        steady.is_some() && during.is_some(),
        "client waits measured both before and during the rebuild"
    );
    sim.check_client_wait();
}

/// Two flushes, one after the other: the second carries the first's durable watermark, so every
/// replica checkpoints past everything written so far.
pub fn checkpoint_everything(sim: &mut Sim) {
    for _ in 0..2 {
        sim.client_flush();
        assert!(sim.run_until(500, |s| s.pending_client_ops() == 0 && s.quiescent()));
    }
}

/// The story of `returning_replica_undoes_writes_only_it_holds`, shared with the planted-bug test.
pub fn fork_one_replica_then_heal(sim: &mut Sim) {
    use tandem_sim::network::Node;
    assert!(sim.run_until(500, Sim::converged));
    sim.workload_on = true;
    sim.run_ticks(300);
    sim.workload_on = false;
    checkpoint_everything(sim);

    let old = sim.target().expect("target").generation();
    sim.network.cut(Node::Target(old), Node::Replica(R1));
    sim.network.cut(Node::Target(old), Node::Replica(R2));
    sim.client_write(0, 4);
    sim.run_ticks(20);
    sim.crash_target();
    sim.heal_network();
    sim.start_target();
    sim.partition_replica(R3);
    assert!(sim.run_until(1_000, |s| s.volume_status() == Some(VolumeStatus::Degraded)));
    sim.run_ticks(100);
    sim.heal_network();
    assert!(sim.run_until(2_000, Sim::converged));
}

/// The world of `overwrite_behind_a_cut_off_target`: a lease long enough (and replica timeouts
/// longer still) that the new target's recovery and resync fit inside it, so serving before the
/// old lease ends would be seen.
pub fn long_lease_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::quiet(seed, 3, 3);
    config.target.read_lease_ticks = 200;
    config.target.takeover_wait_ticks = 250;
    config.target.replica_timeout_ticks = 300;
    config
}

/// A takeover across a partition: the old target's node is cut off with its own replica (R1)
/// while a new target takes over through the other two and overwrites the first blocks; then a
/// client that did not notice reads the volume through the old target (checked on arrival:
/// anything older than the overwrite breaks G5). Returns the old target's generation.
pub fn overwrite_behind_a_cut_off_target(sim: &mut Sim) -> tandem_core::Generation {
    let acked = sim.acked_ops;
    sim.client_write(0, 16);
    assert!(sim.run_until(500, |s| s.acked_ops > acked), "first write");
    // Two flushes, the second answered just before the cut: every replica's checkpoint covers
    // the write (the new target then has nothing to resync), and the old target heard from
    // every replica lately.
    for _ in 0..2 {
        let acked = sim.acked_ops;
        sim.client_flush();
        assert!(sim.run_until(500, |s| s.acked_ops > acked), "flush");
    }
    let old = sim.target().expect("a target").generation();
    sim.isolate_target_with(R1);
    sim.takeover_target();
    sim.cut_target_from(R1);
    let acked = sim.acked_ops;
    sim.client_write(0, 16);
    assert!(
        sim.run_until(1_000, |s| s.acked_ops > acked),
        "the new target serves"
    );
    sim.client_read_all_through(old);
    sim.run_ticks(300);
    old
}
