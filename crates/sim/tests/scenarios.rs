//! Scripted scenarios: each a readable story run in the simulator, checked by every checker.

use tandem_core::{Command, ReplicaId, ReplicaMode, VolumeStatus};
use tandem_sim::{Sim, SimConfig};

const R1: ReplicaId = ReplicaId(1);
const R2: ReplicaId = ReplicaId(2);
const R3: ReplicaId = ReplicaId(3);

fn assert_no_violations(sim: &Sim) {
    assert!(sim.violations.is_empty(), "violations: {:#?}", sim.violations);
}

#[test]
fn a_new_volume_becomes_healthy_and_serves_io() {
    let mut sim = Sim::new(SimConfig::quiet(1, 2, 3));
    assert!(sim.run_until(500, Sim::converged), "status {:?}", sim.volume_status());
    sim.workload_on = true;
    sim.run_ticks(2_000);
    tandem_sim::swarm::finish(&mut sim);
    assert_no_violations(&sim);
    assert!(sim.acked_ops > 500, "only {} requests answered", sim.acked_ops);
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Healthy));
}
