//! What the scenario and planted-bug tests share: the volume they use and the stories they tell.
#![allow(dead_code)]

use tandem_core::{ReplicaId, VolumeStatus};
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
