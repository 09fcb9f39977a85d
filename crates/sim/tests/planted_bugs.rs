//! Each checker must be able to fail: plant a known bug and show that the swarm catches it,
//! under the checker named after the guarantee the bug breaks, within a bounded number of seeds.

use tandem_core::{Bugs, PlantedBug};
use tandem_sim::{run_seed, Guarantee};

/// Runs seeds until one reports a violation of `guarantee`; returns that seed.
fn caught_by(bug: PlantedBug, guarantee: Guarantee, seeds_max: u64) -> u64 {
    for seed in 0..seeds_max {
        let report = run_seed(seed, Bugs::plant(bug));
        if report.violations.iter().any(|v| v.guarantee == guarantee) {
            return seed;
        }
    }
    panic!("{bug:?} was not caught by {guarantee:?} within {seeds_max} seeds");
}

#[test]
fn acknowledging_before_cf_breaks_g1() {
    caught_by(
        PlantedBug::AckBeforeConsistencyFactor,
        Guarantee::G1Durability,
        50,
    );
}

#[test]
fn recovering_from_the_least_advanced_replica_breaks_g2() {
    caught_by(
        PlantedBug::RecoverFromLeastAdvanced,
        Guarantee::G2NoLostWrite,
        100,
    );
}

#[test]
fn copying_without_the_range_lock_breaks_g3() {
    caught_by(
        PlantedBug::CopyWithoutRangeLock,
        Guarantee::G3Convergence,
        200,
    );
}

#[test]
fn keeping_voided_writes_breaks_g3() {
    caught_by(PlantedBug::KeepVoidedWrites, Guarantee::G3Convergence, 300);
}

#[test]
fn replaying_past_a_voided_write_breaks_g3() {
    caught_by(
        PlantedBug::ReplayPastVoidedWrite,
        Guarantee::G3Convergence,
        2000,
    );
}

#[test]
fn reading_from_an_unhealthy_replica_breaks_g4() {
    caught_by(
        PlantedBug::ReadFromUnhealthyReplica,
        Guarantee::G4ReadYourWrites,
        50,
    );
}

#[test]
fn skipping_the_generation_check_breaks_g5() {
    caught_by(PlantedBug::SkipGenerationCheck, Guarantee::G5Fencing, 200);
}

#[test]
fn reading_without_a_lease_breaks_g5() {
    caught_by(PlantedBug::ReadWithoutLease, Guarantee::G5Fencing, 300);
}

#[test]
fn serving_before_an_old_lease_ends_breaks_g5() {
    let mut config = common::long_lease_config(11);
    config.target.bugs = Bugs::plant(PlantedBug::ServeBeforeOldLeaseEnds);
    let mut sim = common::healthy_volume(config);
    common::overwrite_behind_a_cut_off_target(&mut sim);
    assert!(
        sim.violations
            .iter()
            .any(|v| v.guarantee == Guarantee::G5Fencing),
        "a stale read through the old target: {:#?}",
        sim.violations
    );
}

#[test]
fn removing_while_degraded_breaks_g6() {
    caught_by(
        PlantedBug::RemoveWhileDegraded,
        Guarantee::G6Membership,
        100,
    );
}

#[test]
fn never_reconnecting_breaks_liveness() {
    caught_by(PlantedBug::NeverReconnect, Guarantee::Liveness, 50);
}

#[test]
fn persisting_metadata_on_every_write_breaks_g8() {
    caught_by(
        PlantedBug::PersistMetadataOnEveryWrite,
        Guarantee::G8NoMetadataPerWrite,
        10,
    );
}

mod common;

/// A rebuild whose segments keep their range locks until it ends holds back every client write
/// that reaches a copied range, and (writes are sequenced in order) every write behind it.
#[test]
fn holding_the_range_lock_for_the_whole_resync_breaks_g7() {
    let mut config = common::config(2, 2, 3);
    config.target.bugs = Bugs::plant(PlantedBug::HoldRangeLockForWholeResync);
    let mut sim = common::healthy_volume(config);
    common::add_a_replica_and_rebuild_it_under_writes(&mut sim);
    assert!(
        sim.violations
            .iter()
            .any(|v| v.guarantee == Guarantee::G7BoundedImpact),
        "not caught: {:#?}",
        sim.violations
    );
}

/// A returning replica holds a write nobody else has: resyncing only what the source changed
/// leaves it there, and the replicas differ.
#[test]
fn resyncing_only_the_source_side_breaks_g3_in_the_fork_story() {
    let mut config = common::config(10, 3, 3);
    config.target.bugs = Bugs::plant(PlantedBug::ResyncOnlySourceSide);
    let mut sim = tandem_sim::Sim::new(config);
    common::fork_one_replica_then_heal(&mut sim);
    tandem_sim::swarm::finish(&mut sim);
    assert!(
        sim.violations
            .iter()
            .any(|v| v.guarantee == Guarantee::G3Convergence),
        "not caught: {:#?}",
        sim.violations
    );
}
