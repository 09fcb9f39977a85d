//! Scripted scenarios: each a readable story run in the simulator, checked by every checker.
//!
//! The world is quiet (no random faults) unless a scenario injects one; the workload writes,
//! reads, flushes and trims throughout, and `finish` heals, drains, and checks convergence (G3)
//! and every acknowledged write (G2) at the end.

mod common;

use common::{
    config, healthy_volume, is_rebuilding, overwrite_behind_a_cut_off_target, run_command, R1, R2,
    R3,
};
use tandem_core::{Command, EjectReason, ReplicaId, ReplicaMode, TargetEvent, VolumeStatus};
use tandem_sim::history::BLOCK_SIZE;
use tandem_sim::{swarm, Sim};

fn finish_without_violations(sim: &mut Sim) {
    swarm::finish(sim);
    for replica in 1..=sim.config.nodes as u64 {
        println!(
            "replica {replica} modes: {:?}",
            sim.modes_seen(ReplicaId(replica))
        );
    }
    assert!(
        sim.violations.is_empty(),
        "violations: {:#?}",
        sim.violations
    );
    assert!(sim.converged(), "not Healthy at the end");
}

#[test]
fn a_new_volume_becomes_healthy_and_serves_io() {
    let mut sim = healthy_volume(config(1, 2, 3));
    sim.workload_on = true;
    let mut busy = false;
    for _ in 0..2_000 {
        sim.run_ticks(1);
        let io = sim.target().and_then(|t| t.replica_io(R1));
        busy |= io
            .is_some_and(|io| io.inflight_writes > 0 && io.inflight_reads + io.inflight_syncs > 0);
    }
    assert!(
        busy,
        "the per-replica I/O counters never showed reads or flushes with writes"
    );
    finish_without_violations(&mut sim);
    common::checkpoint_everything(&mut sim);
    for replica in [R1, R2] {
        let io = sim
            .target()
            .and_then(|t| t.replica_io(replica))
            .expect("connected");
        assert_eq!(
            (io.inflight_reads, io.inflight_writes, io.inflight_syncs),
            (0, 0, 0)
        );
        assert!(
            io.checkpointed > tandem_core::Seq::ZERO && io.connected_ticks > 0,
            "{io:?}"
        );
    }
    assert!(
        sim.acked_ops > 500,
        "only {} requests answered",
        sim.acked_ops
    );
    assert!(sim.checked_reads > 100);
}

/// The seed's walk-through: two replicas, add a third on a new node, wait for it to be rebuilt
/// while the application writes, then remove one of the old ones. Nothing is lost.
#[test]
fn migration_adds_rebuilds_under_writes_then_removes() {
    let mut sim = healthy_volume(config(2, 2, 3));
    common::add_a_replica_and_rebuild_it_under_writes(&mut sim);
    assert_eq!(sim.membership().replication_factor(), 3);
    let (_, full, regions, bytes) = *sim.resyncs_finished().last().expect("a rebuild finished");
    assert!(full, "a new replica gets a full rebuild");
    assert!(regions > 0 && bytes == regions * 4 * BLOCK_SIZE);

    assert_eq!(run_command(&mut sim, Command::RemoveReplica(R1)), Ok(()));
    assert!(
        !sim.has_storage(R1),
        "the removed replica's storage is deleted"
    );
    assert_eq!(sim.membership().replication_factor(), 2);
    sim.run_ticks(500);
    finish_without_violations(&mut sim);
    assert_eq!(
        sim.modes_seen(R3),
        vec![
            ReplicaMode::Offline,
            ReplicaMode::NewReplicaDegraded,
            ReplicaMode::ReconstructingNewReplica,
            ReplicaMode::Healthy
        ]
    );
}

/// The new replica's process dies halfway through its rebuild; when it comes back the rebuild
/// starts again and completes, and the volume never stops serving.
#[test]
fn replica_killed_mid_rebuild() {
    let mut sim = healthy_volume(config(3, 2, 3));
    sim.workload_on = true;
    sim.run_ticks(500);
    assert_eq!(run_command(&mut sim, Command::AddReplica(R3)), Ok(()));
    assert!(sim.run_until(500, |s| is_rebuilding(s, R3)));

    sim.crash_replica(R3, false);
    sim.run_ticks(100);
    assert_eq!(sim.replica_mode(R3), Some(ReplicaMode::Offline));
    assert_eq!(
        sim.volume_status(),
        Some(VolumeStatus::Healthy),
        "the others still serve"
    );
    sim.restart_replica(R3);

    assert!(
        sim.run_until(3_000, Sim::converged),
        "the rebuild never finished"
    );
    let rebuilds: Vec<_> = sim
        .resyncs_finished()
        .into_iter()
        .filter(|r| r.0 == R3)
        .collect();
    assert_eq!(rebuilds.len(), 1, "one rebuild finished: {rebuilds:?}");
    finish_without_violations(&mut sim);
}

/// The target restarts (a new generation) while a new replica is being rebuilt: the new target
/// recovers from the two trusted replicas and rebuilds the new one from scratch.
#[test]
fn target_restarted_mid_rebuild() {
    let mut sim = healthy_volume(config(4, 2, 3));
    sim.workload_on = true;
    sim.run_ticks(500);
    assert_eq!(run_command(&mut sim, Command::AddReplica(R3)), Ok(()));
    assert!(sim.run_until(500, |s| is_rebuilding(s, R3)));

    sim.crash_target();
    sim.run_ticks(20);
    sim.start_target();
    assert_eq!(sim.target().map(|t| t.generation().0), Some(2));
    assert!(
        sim.run_until(3_000, Sim::converged),
        "never healed after the restart"
    );
    assert_eq!(sim.membership().replication_factor(), 3);
    finish_without_violations(&mut sim);
}

/// A partition isolates one replica while the application writes to two regions only. After
/// healing, the returning replica's resync copies exactly those two regions.
#[test]
fn partitioned_replica_resyncs_only_what_changed() {
    let mut sim = healthy_volume(config(5, 3, 3));
    sim.workload_on = true;
    sim.run_ticks(1_000);
    sim.workload_on = false;
    assert!(sim.run_until(500, |s| s.pending_client_ops() == 0));
    common::checkpoint_everything(&mut sim);
    let resyncs_before = sim.resyncs_finished().len();

    sim.partition_replica(R3);
    for round in 0..20 {
        // Blocks 0..8 are regions 0 and 1.
        sim.client_write(round % 5, 3);
    }
    assert!(sim.run_until(500, |s| s.pending_client_ops() == 0));
    assert!(sim.run_until(500, |s| s.replica_mode(R3) == Some(ReplicaMode::Offline)));
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Degraded));

    sim.heal_network();
    assert!(sim.run_until(1_000, Sim::converged));
    let resyncs = &sim.resyncs_finished()[resyncs_before..];
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    let (replica, full, regions, bytes) = resyncs[0];
    assert_eq!(replica, R3);
    assert!(!full, "a returning replica gets an incremental resync");
    assert_eq!(regions, 2, "only the two regions written meanwhile");
    assert_eq!(bytes, 2 * 4 * BLOCK_SIZE);
    finish_without_violations(&mut sim);
}

/// A replica whose storage was replaced comes back with its old identity but a new incarnation:
/// it never counts as a copy (G6) until it has been fully rebuilt and promoted again.
#[test]
fn replaced_replica_is_a_stranger_until_rebuilt() {
    let mut sim = healthy_volume(config(6, 3, 3));
    sim.workload_on = true;
    sim.run_ticks(500);
    let old_incarnation = sim.membership().get(R2).and_then(|m| m.incarnation);

    sim.wipe_replica(R2);
    sim.restart_replica(R2);
    assert!(sim.run_until(500, |s| s.replica_mode(R2)
        == Some(ReplicaMode::ReconstructingNewReplica)));
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Degraded));
    assert_eq!(
        sim.membership().get(R2).and_then(|m| m.incarnation),
        old_incarnation
    );

    assert!(sim.run_until(3_000, Sim::converged));
    assert_ne!(
        sim.membership().get(R2).and_then(|m| m.incarnation),
        old_incarnation
    );
    assert!(
        sim.resyncs_finished().iter().any(|r| r.0 == R2 && r.1),
        "a full rebuild"
    );
    finish_without_violations(&mut sim);
}

/// A new target takes over while the old one still runs: the replicas refuse the old
/// generation, the old target learns it is fenced and stops, and nothing it does lands (G5).
#[test]
fn older_generation_is_refused() {
    let mut sim = healthy_volume(config(7, 3, 3));
    sim.workload_on = true;
    sim.run_ticks(300);
    let old = sim.target().expect("target").generation();

    sim.takeover_target();
    let new = sim.target().expect("target").generation();
    assert!(new > old);
    assert!(
        sim.run_until(1_000, |s| s
            .events_of(old)
            .any(|e| *e == tandem_core::TargetEvent::Fenced)),
        "the old target never learned it was fenced"
    );
    for replica in [R1, R2, R3] {
        assert_eq!(
            sim.replica(replica)
                .expect("running")
                .superblock()
                .generation_seen,
            new
        );
    }
    finish_without_violations(&mut sim);
}

/// The old target's node is cut off with its own replica while a new target takes over
/// through the other two and overwrites data. A client still reading through the old target
/// gets nothing stale: the old target's read lease ran out before the new one served, and it
/// cannot renew it (G5).
#[test]
fn an_old_target_cut_off_with_its_own_replica_serves_nothing_stale() {
    let mut sim = healthy_volume(common::long_lease_config(11));
    overwrite_behind_a_cut_off_target(&mut sim);
    assert_eq!(sim.checked_reads, 0, "the old target served no read");
    finish_without_violations(&mut sim);
}

/// Scale-down is refused while the volume is Degraded, naming the replica that is not Healthy,
/// and nothing changes.
#[test]
fn scale_down_refused_while_degraded() {
    let mut sim = healthy_volume(config(8, 3, 3));
    sim.partition_replica(R3);
    assert!(sim.run_until(500, |s| s.replica_mode(R3) == Some(ReplicaMode::Offline)));
    let before = sim.membership().clone();

    let result = run_command(&mut sim, Command::RemoveReplica(R1));
    let error = result.expect_err("removal while Degraded is refused");
    assert!(
        error.contains("not Healthy") && error.contains("ReplicaId(3)"),
        "{error}"
    );
    assert_eq!(sim.membership(), &before);
    assert!(sim.has_storage(R1));
    sim.heal_network();
    finish_without_violations(&mut sim);
}

/// The last replica of a volume can never be removed.
#[test]
fn removing_the_last_replica_is_refused() {
    let mut sim = healthy_volume(config(9, 1, 2));
    let result = run_command(&mut sim, Command::RemoveReplica(R1));
    let error = result.expect_err("the last replica stays");
    assert!(error.contains("last replica"), "{error}");
    assert_eq!(sim.membership().replication_factor(), 1);

    // With a second replica rebuilt, the first may go.
    assert_eq!(run_command(&mut sim, Command::AddReplica(R2)), Ok(()));
    assert!(sim.run_until(3_000, Sim::converged));
    assert_eq!(run_command(&mut sim, Command::RemoveReplica(R1)), Ok(()));
    let error = run_command(&mut sim, Command::RemoveReplica(R2)).expect_err("last again");
    assert!(error.contains("last replica"), "{error}");
    finish_without_violations(&mut sim);
}

/// A write reaches only one replica before the target dies, and that replica is cut off while a
/// new target recovers from the other two. When it returns, its resync undoes the write only it
/// holds (the region is in its own dirty set), so all three end identical (G3).
#[test]
fn returning_replica_undoes_writes_only_it_holds() {
    let mut sim = Sim::new(config(10, 3, 3));
    common::fork_one_replica_then_heal(&mut sim);
    finish_without_violations(&mut sim);
}

/// Every refused membership change says which rule refused it, and changes nothing.
#[test]
fn membership_changes_are_refused_with_clear_messages() {
    let mut sim = healthy_volume(config(11, 2, 6));
    let before = sim.membership().clone();
    let error = run_command(&mut sim, Command::AddReplica(R1)).expect_err("already a member");
    assert!(error.contains("already a member"), "{error}");
    let error = run_command(&mut sim, Command::RemoveReplica(ReplicaId(9))).expect_err("unknown");
    assert!(error.contains("not a member"), "{error}");
    assert_eq!(sim.membership(), &before);

    for replica in [3, 4, 5] {
        assert_eq!(
            run_command(&mut sim, Command::AddReplica(ReplicaId(replica))),
            Ok(())
        );
        assert!(sim.run_until(3_000, Sim::converged));
    }
    assert_eq!(sim.membership().replication_factor(), 5);
    let error = run_command(&mut sim, Command::AddReplica(ReplicaId(6))).expect_err("at most five");
    assert!(error.contains("at most 5"), "{error}");

    // A removal waits until the others hold everything written so far; meanwhile any other
    // change is refused.
    sim.workload_on = true;
    sim.run_ticks(50);
    sim.command(Command::RemoveReplica(R1));
    let error = run_command(&mut sim, Command::RemoveReplica(R2)).expect_err("one at a time");
    assert!(error.contains("in progress"), "{error}");
    assert!(sim.run_until(500, |s| s.membership().get(R1).is_none()));
    finish_without_violations(&mut sim);
}

/// With every replica cut off, a client is never left hanging: its request fails with a clear
/// error once the client timeout passes, and the volume recovers when the network heals.
#[test]
fn clients_get_an_error_instead_of_hanging() {
    let mut sim = healthy_volume(config(12, 2, 2));
    sim.partition_replica(R1);
    sim.partition_replica(R2);
    sim.client_write(0, 1);
    let timeout_ticks = sim.config.target.client_timeout_ticks;
    assert!(sim.run_until(timeout_ticks + 10, |s| s.pending_client_ops() == 0));
    let errors: Vec<&String> = sim.client_errors.keys().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("client timeout"), "{errors:?}");
    sim.heal_network();
    finish_without_violations(&mut sim);
}

/// Incremental resync survives a target restart: the bookkeeping lives on the replicas, so
/// after a new target recovers, each replica it resyncs copies only the regions written since
/// its checkpoint, not the whole volume.
#[test]
fn resync_after_a_target_restart_copies_only_what_changed() {
    let mut sim = healthy_volume(config(13, 3, 3));
    sim.workload_on = true;
    sim.run_ticks(1_000);
    sim.workload_on = false;
    common::checkpoint_everything(&mut sim);
    for round in 0..10 {
        // Blocks 8..16 are regions 2 and 3.
        sim.client_write(8 + round % 5, 3);
    }
    assert!(sim.run_until(500, |s| s.pending_client_ops() == 0 && s.quiescent()));
    let resyncs_before = sim.resyncs_finished().len();

    sim.crash_target();
    sim.start_target();
    assert!(sim.run_until(1_000, Sim::converged));
    let resyncs = &sim.resyncs_finished()[resyncs_before..];
    assert_eq!(
        resyncs.len(),
        2,
        "the two replicas other than the source: {resyncs:?}"
    );
    for (_, full, regions, bytes) in resyncs {
        assert!(!full);
        assert_eq!(*regions, 2, "regions 2 and 3 only");
        assert_eq!(*bytes, 2 * 4 * BLOCK_SIZE);
    }
    finish_without_violations(&mut sim);
}

/// A replica that missed only writes still waiting for it comes back without a resync: the
/// target sends them again and it is Healthy at once (with two replicas, CF is two, so writes
/// wait for the missing one).
#[test]
fn brief_disconnect_rejoins_without_a_resync() {
    let mut sim = healthy_volume(config(14, 2, 2));
    sim.workload_on = true;
    sim.run_ticks(300);
    let resyncs_before = sim.resyncs_finished().len();

    sim.partition_replica(R2);
    assert!(sim.run_until(500, |s| s.replica_mode(R2) == Some(ReplicaMode::Offline)));
    assert_eq!(
        sim.volume_status(),
        Some(VolumeStatus::Offline),
        "CF 2 of 2: writes wait"
    );
    assert!(sim.pending_client_ops() > 0);
    sim.heal_network();
    assert!(sim.run_until(500, Sim::converged));
    assert!(
        sim.run_until(500, |s| s.pending_client_ops() < 12),
        "the waiting writes completed"
    );
    assert_eq!(
        sim.resyncs_finished().len(),
        resyncs_before,
        "no resync was needed"
    );
    finish_without_violations(&mut sim);
}

/// A replica that keeps up, only slower than the others (here a disk 8 times slower, under a
/// client that keeps 32 requests in flight), paces the volume: it is never ejected for its
/// backlog and resynced over and over. The same holds for a new replica rebuilt on that disk
/// while the client keeps writing: the rebuild finishes, once.
#[test]
fn a_slower_replica_paces_the_volume_instead_of_being_ejected() {
    let mut config = config(12, 2, 3);
    config.target.replica_inflight_max = 24;
    config.target.replica_congestion_ops = 12;
    // Slow, not dead: twelve requests queued on that disk are answered within the timeout.
    config.target.replica_timeout_ticks = 300;
    config.workload.inflight_max = 32;
    config.workload.issue_ppm = 1_000_000;
    let mut sim = healthy_volume(config);
    let resyncs_at_start = sim.resyncs_finished().len();
    sim.slow_disk(R2, 3);
    sim.workload_on = true;
    sim.run_ticks(2_000);
    assert_eq!(sim.ejections(EjectReason::Backlog), 0, "R2 was ejected");
    assert_eq!(sim.resyncs_finished().len(), resyncs_at_start);
    assert_eq!(sim.replica_mode(R2), Some(ReplicaMode::Healthy));

    sim.slow_disk(R3, 3);
    assert_eq!(run_command(&mut sim, Command::AddReplica(R3)), Ok(()));
    assert!(
        sim.run_until(20_000, Sim::converged),
        "the new replica never became Healthy: {}",
        sim.describe_targets()
    );
    assert_eq!(
        sim.ejections(EjectReason::Backlog),
        0,
        "a replica was ejected"
    );
    assert_eq!(
        sim.resyncs_finished().len(),
        resyncs_at_start + 1,
        "one rebuild, not several"
    );
    let acked_before = sim.acked_ops;
    sim.run_ticks(1_000);
    println!("acked in 1000 ticks: {}", sim.acked_ops - acked_before);
    assert!(
        sim.acked_ops > acked_before + 100,
        "the volume keeps serving"
    );
    finish_without_violations(&mut sim);
}

/// While clients do I/O, a rebuild copies at most `resync_bytes_per_tick_under_load` per tick,
/// leaving the replicas to the application; once the clients go quiet it runs uncapped.
#[test]
fn a_rebuild_yields_to_client_io_and_speeds_up_when_idle() {
    let mut config = config(13, 2, 3);
    config.target.resync_bytes_per_tick = 0;
    config.target.resync_bytes_per_tick_under_load = 256;
    let region_bytes = config.region_blocks * BLOCK_SIZE;
    let mut sim = healthy_volume(config);
    sim.workload_on = true;
    sim.run_ticks(2_000);
    assert_eq!(run_command(&mut sim, Command::AddReplica(R3)), Ok(()));
    let start = sim.now_tick;
    assert!(sim.run_until(500, |s| is_rebuilding(s, R3)));
    sim.run_ticks(300);
    let progress = sim
        .target()
        .and_then(|t| t.resync_progress())
        .expect("rebuilding");
    let ticks = sim.now_tick - start;
    println!(
        "under load: {} of {} bytes in {ticks} ticks",
        progress.bytes_done, progress.bytes_total
    );
    assert!(progress.bytes_done <= 256 * ticks + 2 * region_bytes);
    assert!(
        progress.bytes_done < progress.bytes_total,
        "finished under load"
    );

    sim.workload_on = false;
    let idle_start = sim.now_tick;
    assert!(
        sim.run_until(300, Sim::converged),
        "idle rebuild did not finish"
    );
    let left = progress.bytes_total - progress.bytes_done;
    let idle_ticks = sim.now_tick - idle_start;
    println!("idle: the last {left} bytes in {idle_ticks} ticks");
    assert!(left > 256 * idle_ticks, "the idle rebuild was still capped");
    finish_without_violations(&mut sim);
}

/// A replica whose disk fails every operation is ejected, and retried with a pause that doubles
/// each time (up to 32 reconnect intervals), not every interval; once the disk is repaired it is
/// resynced and Healthy again.
#[test]
fn a_replica_that_keeps_failing_is_retried_with_backoff() {
    let mut sim = healthy_volume(config(14, 3, 3));
    sim.workload_on = true;
    sim.fail_disk(R3, 1000);
    sim.run_ticks(3_000);
    let ejections = sim
        .target_events
        .iter()
        .filter(
            |(_, _, event)| matches!(event, TargetEvent::Ejected { replica, .. } if *replica == R3),
        )
        .count();
    let interval = sim.config.target.reconnect_interval_ticks;
    println!("R3 ejected {ejections} times in 3000 ticks (reconnect interval {interval})");
    assert!(ejections >= 3, "the failing replica was not retried");
    assert!(
        ejections <= 3_000 / (interval * 32) as usize + 8,
        "retried without backoff"
    );
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Degraded));

    sim.fail_disk(R3, 0);
    assert!(
        sim.run_until(32 * interval + 1_000, Sim::converged),
        "the repaired replica did not come back"
    );
    finish_without_violations(&mut sim);
}

fn no_space_replies(sim: &Sim) -> u64 {
    let no_space = tandem_core::ClientError::NoSpace.to_string();
    sim.client_errors.get(&no_space).copied().unwrap_or(0)
}

fn ejections_of(sim: &Sim, replica: ReplicaId) -> usize {
    sim.target_events
        .iter()
        .filter(|(_, _, event)| matches!(event, TargetEvent::Ejected { replica: r, .. } if *r == replica))
        .count()
}

/// Every replica's pool fills: writes fail with ENOSPC (voided: they change nothing anywhere),
/// reads go on, no replica is ejected and the volume stays Healthy. Once space is freed,
/// writes succeed again, with nothing lost (checked at the end).
#[test]
fn full_pools_fail_writes_with_no_space_and_keep_the_volume_healthy() {
    let mut sim = healthy_volume(config(21, 3, 3));
    sim.workload_on = true;
    sim.run_ticks(300);
    // Filled between two requests: a write in flight as one pool fills while another still
    // takes it is the staggered case (the swarm's), where the replicas that disagree go.
    sim.workload_on = false;
    assert!(sim.run_until(2_000, |s| s.pending_client_ops() == 0 && s.quiescent()));
    for replica in [R1, R2, R3] {
        sim.fill_pool(replica, true);
    }
    sim.workload_on = true;
    let (acked, reads) = (sim.acked_ops, sim.checked_reads);
    sim.run_ticks(1_500);
    assert!(no_space_replies(&sim) > 20, "{:?}", sim.client_errors);
    assert!(sim.checked_reads > reads + 50, "reads stopped");
    assert!(sim.acked_ops > acked, "nothing answered");
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Healthy));
    for replica in [R1, R2, R3] {
        assert_eq!(ejections_of(&sim, replica), 0, "{replica:?} was ejected");
    }

    // Within a probe interval of the space coming back, writes succeed again.
    for replica in [R1, R2, R3] {
        sim.fill_pool(replica, false);
    }
    sim.run_ticks(sim.config.target.no_space_probe_ticks + 100);
    let refused = no_space_replies(&sim);
    sim.run_ticks(1_000);
    assert_eq!(
        no_space_replies(&sim),
        refused,
        "writes still refused once space was freed"
    );
    finish_without_violations(&mut sim);
}

/// One replica's pool fills: the others take the writes, so clients see no error; only that
/// replica is ejected (it lacks the writes), and it is resynced once its pool has room.
#[test]
fn one_full_pool_ejects_its_replica_and_clients_see_no_error() {
    let mut sim = healthy_volume(config(22, 3, 3));
    sim.workload_on = true;
    sim.fill_pool(R3, true);
    sim.run_ticks(1_500);
    assert_eq!(no_space_replies(&sim), 0, "{:?}", sim.client_errors);
    assert!(sim.ejections(EjectReason::IoFailure(tandem_core::IoFailure::NoSpace)) > 0);
    assert_eq!(sim.volume_status(), Some(VolumeStatus::Degraded));
    sim.fill_pool(R3, false);
    assert!(sim.run_until(5_000, Sim::converged), "R3 did not come back");
    finish_without_violations(&mut sim);
}

/// A volume whose pools are all full moves to pools with room while the application keeps
/// writing: the first new replica is rebuilt though it applies writes the full ones refuse
/// (those regions are copied to it again); a second joins, the full ones are removed, and
/// writes succeed again.
#[test]
fn a_volume_on_full_pools_moves_to_pools_with_room() {
    let mut sim = healthy_volume(config(23, 2, 4));
    sim.workload_on = true;
    sim.run_ticks(300);
    sim.fill_pool(R1, true);
    sim.fill_pool(R2, true);
    sim.run_ticks(300);
    let refused = no_space_replies(&sim);
    assert!(refused > 0);
    assert_eq!(run_command(&mut sim, Command::AddReplica(R3)), Ok(()));
    assert!(
        sim.run_until(5_000, |s| s.replica_mode(R3) == Some(ReplicaMode::Healthy)),
        "R3 was never rebuilt: {}",
        sim.describe_targets()
    );
    assert!(
        no_space_replies(&sim) > refused,
        "no write was voided during the rebuild"
    );
    // The application pauses for the rest: every other replica must be Healthy for a
    // removal, and a new replica holding a write the full ones refuse is ejected.
    sim.workload_on = false;
    let r4 = ReplicaId(4);
    assert_eq!(run_command(&mut sim, Command::AddReplica(r4)), Ok(()));
    assert!(sim.run_until(5_000, Sim::converged), "R4 was not rebuilt");
    for old in [R1, R2] {
        assert!(sim.run_until(2_000, |s| s.pending_client_ops() == 0 && s.quiescent()));
        assert_eq!(run_command(&mut sim, Command::RemoveReplica(old)), Ok(()));
        assert!(sim.run_until(2_000, Sim::converged));
    }
    assert_eq!(sim.membership().replication_factor(), 2);
    // The first write is the target's probe for space; once it succeeds no write fails.
    sim.workload_on = true;
    let acked = sim.acked_ops;
    assert!(sim.run_until(500, |s| s.acked_ops > acked));
    let refused = no_space_replies(&sim);
    sim.run_ticks(1_000);
    assert_eq!(
        no_space_replies(&sim),
        refused,
        "writes refused after the move"
    );
    finish_without_violations(&mut sim);
}
