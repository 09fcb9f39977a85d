//! Targets plans as data: what a pass observed -> the steps, start plans, keep plans and status
//! writes it plans. `check_*` are the only ways a test calls the planner.
#![allow(clippy::cloned_ref_to_slice_refs)] // rows build their objects inline

use std::net::SocketAddr;

use tandem_core::{ReplicaId, ResyncProgress};
use tandem_objects::{
    ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME, ANNOTATION_ENDPOINT_NODE, ANNOTATION_TARGET_GENERATION,
};

use super::*;
use crate::fixtures::{config, cvr, known, on_node, target, volume, with_incarnation};

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The replica host of node `n<port - 7000>` (see [`view`]).
fn endpoint(port: u16) -> ReplicaEndpoint {
    ReplicaEndpoint::new(address(port), format!("n{}", port - 7000))
}

/// Two nodes, n1 and n2, whose replica hosts listen on ports 7001 and 7002.
fn view(volumes: Vec<CStorVolume>, replicas: Vec<CStorVolumeReplica>) -> View {
    View {
        clusters: Default::default(),
        volumes: volumes.into(),
        configs: Default::default(),
        replicas: replicas.into(),
        addresses: [
            ("n1".to_string(), address(7001)),
            ("n2".to_string(), address(7002)),
        ]
        .into(),
        target_addresses: BTreeMap::new(),
        index: Default::default(),
    }
}

/// The replica of `pvc-1` with id `id` on node `n<id>`, with storage (incarnation `id + 1000`).
fn replica(id: u64) -> CStorVolumeReplica {
    let cvr = cvr("pvc-1", &format!("pool-{id}"), &id.to_string());
    on_node(with_incarnation(cvr, id + 1000), &format!("n{id}"))
}

fn check_steps(running: &[(&str, u64)], volumes: &[CStorVolume], expected: Vec<Step>) {
    let running: BTreeMap<String, Generation> = running
        .iter()
        .map(|(volume, generation)| (volume.to_string(), Generation(*generation)))
        .collect();
    assert_eq!(plan_targets("n1", &running, volumes), expected);
}

// Which targets run here.

#[test]
fn given_a_volume_whose_target_is_this_node_when_none_runs_then_start_it() {
    let volumes = [volume("pvc-1", "n1", 0, 1), volume("pvc-2", "n2", 0, 1)];
    check_steps(&[], &volumes, vec![Step::Start("pvc-1".into())]);
}

#[test]
fn given_a_running_target_when_its_volume_moved_or_is_gone_then_stop_it() {
    let moved = [volume("pvc-1", "n2", 1, 1)];
    check_steps(&[("pvc-1", 1)], &moved, vec![Step::Stop("pvc-1".into())]);
    check_steps(&[("pvc-1", 1)], &[], vec![Step::Stop("pvc-1".into())]);
}

#[test]
fn given_a_running_target_when_a_newer_generation_took_the_volume_then_it_is_fenced() {
    let taken = [volume("pvc-1", "n1", 3, 1)];
    check_steps(&[("pvc-1", 2)], &taken, vec![Step::Fenced("pvc-1".into())]);
}

#[test]
fn given_a_running_target_at_the_volumes_generation_when_planning_then_keep_it() {
    let volumes = [volume("pvc-1", "n1", 2, 1), volume("pvc-3", "n1", 0, 1)];
    check_steps(
        &[("pvc-1", 2), ("pvc-9", 1)],
        &volumes,
        vec![
            Step::Stop("pvc-9".into()),
            Step::Keep("pvc-1".into()),
            Step::Start("pvc-3".into()),
        ],
    );
}

// Starting.

#[test]
fn given_a_new_volume_when_every_replica_has_storage_then_record_them_and_take_generation_one() {
    let new = volume("pvc-1", "n1", 0, 2);
    let view = view(vec![new.clone()], vec![replica(1), replica(2)]);
    let plan = plan_start(&new, &view).unwrap();
    assert_eq!(plan.generation, Generation(1));
    assert_eq!(
        plan.updated
            .metadata
            .annotation(ANNOTATION_TARGET_GENERATION),
        Some("1")
    );
    let recorded: BTreeMap<String, String> =
        [("1".into(), "1001".into()), ("2".into(), "1002".into())].into();
    assert_eq!(plan.updated.spec.replica_details.known_replicas, recorded);
    assert_eq!(plan.updated.spec.replication_factor, 2);
    assert_eq!(plan.membership.members.len(), 2);
    assert_eq!(
        plan.endpoints,
        [
            (ReplicaId(1), endpoint(7001)),
            (ReplicaId(2), endpoint(7002))
        ]
        .into()
    );
    assert_eq!(plan.geometry, cstor::geometry(1 << 30, None).unwrap());
}

#[test]
fn given_a_new_volume_when_a_replica_has_no_storage_yet_then_wait() {
    let new = volume("pvc-1", "n1", 0, 2);
    let unassigned = on_node(cvr("pvc-1", "pool-2", ""), "n2");
    for second in [cvr("pvc-1", "pool-2", "2"), unassigned] {
        let view = view(vec![new.clone()], vec![replica(1), second]);
        let error = plan_start(&new, &view).unwrap_err();
        assert!(
            matches!(
                error,
                Error::WaitingForStorage {
                    ready: 1,
                    wanted: 2
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "waiting for the storage of the volume's replicas (1 of 2 ready)"
        );
    }
}

#[test]
fn given_a_volume_with_a_recorded_membership_when_starting_then_take_the_next_generation() {
    let existing = known(volume("pvc-1", "n1", 4, 2), &[(1, 1001), (2, 1002)]);
    // Replica 2's node is unknown: it gets no address yet.
    let mut lost = replica(2);
    lost.metadata.annotations.clear();
    let view = view(vec![existing.clone()], vec![replica(1), lost]);
    let plan = plan_start(&existing, &view).unwrap();
    assert_eq!(plan.generation, Generation(5));
    assert_eq!(
        plan.membership,
        cstor::recorded_membership(&existing).unwrap()
    );
    assert_eq!(plan.endpoints, [(ReplicaId(1), endpoint(7001))].into());
}

#[test]
fn given_a_volume_that_cannot_be_mapped_when_starting_then_say_why() {
    let mut broken = known(volume("pvc-1", "n1", 1, 1), &[(1, 1001)]);
    broken
        .spec
        .replica_details
        .known_replicas
        .insert("one".into(), "1".into());
    let view = view(vec![broken.clone()], vec![replica(1)]);
    assert_eq!(
        plan_start(&broken, &view).unwrap_err().to_string(),
        "CStorVolume pvc-1 has a known replica that is not a number"
    );
    let mut empty = volume("pvc-1", "n1", 0, 1);
    empty.spec.capacity = tandem_objects::Quantity::from_bytes(0);
    assert!(matches!(
        plan_start(&empty, &view).unwrap_err(),
        Error::Cstor(cstor::CstorError::Geometry(_))
    ));
}

// Keeping.

fn check_keep(
    status: &TargetStatus,
    pools: &[&str],
    replicas: Vec<CStorVolumeReplica>,
    in_flight: bool,
    expected: KeepPlan,
) {
    let mut view = view(vec![volume("pvc-1", "n1", 1, 2)], replicas);
    view.configs.push(config("pvc-1", pools));
    assert_eq!(plan_keep(status, "pvc-1", &view, in_flight), expected);
}

#[test]
fn given_a_running_target_when_its_members_are_placed_then_it_gets_their_addresses() {
    let mut unknown = replica(2);
    unknown
        .metadata
        .annotations
        .remove(ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME);
    check_keep(
        &target(&[(1, true), (2, true)]),
        &["pool-1", "pool-2"],
        vec![replica(1), unknown],
        false,
        KeepPlan {
            endpoints: vec![(ReplicaId(1), Some(endpoint(7001))), (ReplicaId(2), None)],
            command: None,
        },
    );
}

#[test]
fn given_a_scale_up_when_the_new_replica_has_storage_then_add_it_with_its_address() {
    check_keep(
        &target(&[(1, true)]),
        &["pool-1", "pool-2"],
        vec![replica(1), replica(2)],
        false,
        KeepPlan {
            endpoints: vec![(ReplicaId(1), Some(endpoint(7001)))],
            command: Some((Command::AddReplica(ReplicaId(2)), Some(endpoint(7002)))),
        },
    );
}

#[test]
fn given_a_scale_down_when_a_members_pool_left_the_list_then_remove_it() {
    check_keep(
        &target(&[(1, true), (2, true)]),
        &["pool-1"],
        vec![replica(1), replica(2)],
        false,
        KeepPlan {
            endpoints: vec![
                (ReplicaId(1), Some(endpoint(7001))),
                (ReplicaId(2), Some(endpoint(7002))),
            ],
            command: Some((Command::RemoveReplica(ReplicaId(2)), None)),
        },
    );
}

#[test]
fn given_a_membership_change_in_flight_when_another_is_asked_for_then_wait() {
    check_keep(
        &target(&[(1, true)]),
        &["pool-1", "pool-2"],
        vec![replica(1), replica(2)],
        true,
        KeepPlan {
            endpoints: vec![(ReplicaId(1), Some(endpoint(7001)))],
            command: None,
        },
    );
}

// Publishing.

fn measured(progress_due: bool, counters_due: bool) -> Measured {
    Measured {
        progress_due,
        counters_due,
        now: "2026-01-01T00:00:00Z".to_string(),
        ..Measured::default()
    }
}

fn check_publish(
    volume: &CStorVolume,
    replicas: &[CStorVolumeReplica],
    status: &TargetStatus,
    measured: &Measured,
) -> Publish {
    let replicas: Vec<&CStorVolumeReplica> = replicas.iter().collect();
    plan_publish(volume, &replicas, status, measured)
}

#[test]
fn given_a_healthy_target_when_the_objects_say_otherwise_then_write_the_cv_and_the_cvrs() {
    let cv = known(volume("pvc-1", "n1", 1, 2), &[(1, 1001), (2, 1002)]);
    let status = target(&[(1, true), (2, true)]);
    let publish = check_publish(
        &cv,
        &[replica(1), replica(2)],
        &status,
        &measured(false, false),
    );
    let written = publish.volume.expect("the CV's status is written");
    assert_eq!(written.status.phase, CStorVolumePhase::Healthy);
    assert_eq!(written.status.replica_statuses.len(), 2);
    assert_eq!(written.status.replica_statuses[0].replica_id, "1");
    assert_eq!(written.status.replica_statuses[0].quorum, "1");
    assert_eq!(written.status.last_transition_time, "2026-01-01T00:00:00Z");
    assert_eq!(publish.replicas.len(), 2);
    assert!(publish
        .replicas
        .iter()
        .all(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Healthy));

    // Written once, nothing more to write.
    let mut replicas = publish.replicas.clone();
    replicas.sort_by(|a, b| a.name().cmp(b.name()));
    let again = check_publish(&written, &replicas, &status, &measured(true, true));
    assert_eq!(again, Publish::default());
}

#[test]
fn given_a_fenced_target_when_publishing_then_the_volume_is_offline_and_says_why() {
    let cv = volume("pvc-1", "n1", 1, 1);
    let mut status = target(&[(1, true)]);
    status.fenced = true;
    let publish = check_publish(&cv, &[replica(1)], &status, &measured(false, false));
    let written = publish.volume.expect("written");
    assert_eq!(written.status.phase, CStorVolumePhase::Offline);
    assert_eq!(written.status.message, "a newer target took over");
}

#[test]
fn given_rebuild_progress_alone_when_its_interval_has_not_passed_then_write_nothing() {
    let cv = volume("pvc-1", "n1", 1, 2);
    let mut status = target(&[(1, true), (2, false)]);
    status
        .modes
        .insert(ReplicaId(2), ReplicaMode::ReconstructingNewReplica);
    let progress = |bytes_done| ResyncProgress {
        replica: ReplicaId(2),
        source: ReplicaId(1),
        full: true,
        bytes_done,
        bytes_total: 100,
    };
    status.resync = Some(progress(10));
    let first = check_publish(
        &cv,
        &[replica(1), replica(2)],
        &status,
        &measured(true, true),
    );
    let written = first.volume.expect("written");
    let mut replicas = first.replicas.clone();
    replicas.sort_by(|a, b| a.name().cmp(b.name()));
    assert_eq!(
        replicas[1].status.rebuild.as_ref().map(|r| r.bytes_done),
        Some(10)
    );

    status.resync = Some(progress(20));
    let early = check_publish(&written, &replicas, &status, &measured(false, false));
    assert_eq!(early, Publish::default());
    let due = check_publish(&written, &replicas, &status, &measured(true, false));
    assert_eq!(due.replicas.len(), 1);
    assert!(due.volume.is_some());
}

// The endpoint.

#[test]
fn given_a_volume_without_an_endpoint_node_when_a_target_starts_then_record_its_node_once() {
    let new = volume("pvc-1", "n1", 0, 2);
    let view = view(vec![new.clone()], vec![replica(1), replica(2)]);
    let plan = plan_start(&new, &view).unwrap();
    assert_eq!(
        plan.updated.metadata.annotation(ANNOTATION_ENDPOINT_NODE),
        Some("n1")
    );
    // A later target elsewhere keeps the first one's node.
    let mut moved = known(volume("pvc-1", "n2", 1, 2), &[(1, 1001), (2, 1002)]);
    moved
        .metadata
        .annotations
        .insert(ANNOTATION_ENDPOINT_NODE.to_string(), "n1".to_string());
    let view = super::View {
        volumes: vec![moved.clone()].into(),
        ..view
    };
    let plan = plan_start(&moved, &view).unwrap();
    assert_eq!(
        plan.updated.metadata.annotation(ANNOTATION_ENDPOINT_NODE),
        Some("n1")
    );
}

fn check_routes(node: &str, volumes: &[CStorVolume], expected: &[(&str, u16)]) {
    let target_addresses = [
        ("n1".to_string(), address(8001)),
        ("n2".to_string(), address(8002)),
    ]
    .into();
    let expected: Routes = expected
        .iter()
        .map(|(volume, port)| (volume.to_string(), address(*port)))
        .collect();
    assert_eq!(plan_routes(node, volumes, &target_addresses), expected);
}

#[test]
fn given_volumes_on_several_nodes_when_routing_then_forward_only_those_whose_target_is_elsewhere_and_known(
) {
    let mut unplaced = volume("pvc-4", "n1", 0, 1);
    unplaced.metadata.annotations.clear();
    let volumes = [
        volume("pvc-1", "n1", 1, 1),
        volume("pvc-2", "n2", 1, 1),
        // n3 never reported where it serves its targets (gone, or an older agent).
        volume("pvc-3", "n3", 1, 1),
        unplaced,
    ];
    check_routes("n1", &volumes, &[("pvc-2", 8002)]);
    check_routes("n2", &volumes, &[("pvc-1", 8001)]);
    check_routes("n3", &volumes, &[("pvc-1", 8001), ("pvc-2", 8002)]);
    check_routes("n1", &[], &[]);
}

fn first_addresses(n1: u16) -> std::collections::BTreeMap<String, std::net::SocketAddr> {
    [("n1".to_string(), address(n1))].into()
}

#[test]
fn given_a_control_plane_that_has_not_heard_from_a_node_yet_when_filling_then_its_last_addresses_stay(
) {
    let mut known = KnownAddresses::default();
    let mut first = view(vec![], vec![]);
    first.addresses = [
        ("n1".to_string(), address(7001)),
        ("n2".to_string(), address(7002)),
    ]
    .into();
    first.target_addresses = [
        ("n1".to_string(), address(8001)),
        ("n2".to_string(), address(8002)),
    ]
    .into();
    known.fill(&mut first);

    // A restarted control plane has heard from n1 only, which now listens elsewhere: news
    // (the loop passes at once), unlike what is known already or a node not heard from.
    let mut restarted = view(vec![], vec![]);
    restarted.addresses = [("n1".to_string(), address(7011))].into();
    restarted.target_addresses = [("n1".to_string(), address(8011))].into();
    assert!(known.learns_from(&restarted.addresses, &restarted.target_addresses));
    assert!(known.learns_from(&first_addresses(7001), &restarted.target_addresses));
    assert!(!known.learns_from(&first_addresses(7001), &Default::default()));
    assert!(!known.learns_from(&Default::default(), &Default::default()));
    known.fill(&mut restarted);
    assert!(!known.learns_from(&restarted.addresses, &restarted.target_addresses));
    assert_eq!(
        restarted.addresses,
        [
            ("n1".to_string(), address(7011)),
            ("n2".to_string(), address(7002))
        ]
        .into()
    );
    assert_eq!(
        restarted.target_addresses,
        [
            ("n1".to_string(), address(8011)),
            ("n2".to_string(), address(8002))
        ]
        .into()
    );
    // So a volume whose target is on n2 is still forwarded there.
    assert_eq!(
        plan_routes(
            "n1",
            &[volume("pvc-1", "n2", 1, 1)],
            &restarted.target_addresses
        ),
        [("pvc-1".to_string(), address(8002))].into()
    );
}

#[test]
fn given_up_time_alone_when_the_counters_interval_passed_then_write_nothing() {
    let cv = known(volume("pvc-1", "n1", 1, 2), &[(1, 1001), (2, 1002)]);
    let status = target(&[(1, true), (2, true)]);
    let first = check_publish(
        &cv,
        &[replica(1), replica(2)],
        &status,
        &measured(true, true),
    );
    let mut written = first.volume.expect("written");
    for replica in &mut written.status.replica_statuses {
        replica.up_time = 3600;
    }
    let mut replicas = first.replicas.clone();
    replicas.sort_by(|a, b| a.name().cmp(b.name()));
    let again = check_publish(&written, &replicas, &status, &measured(true, true));
    assert_eq!(
        again,
        Publish::default(),
        "up time alone is not worth a write"
    );
}

#[test]
fn given_rebuilds_when_publishing_then_the_history_outlives_targets_and_keeps_the_newest() {
    use std::time::{Duration, SystemTime};
    let at = |seconds: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds);
    let attempt = |seconds: u64, outcome: ResyncOutcome| ResyncAttempt {
        replica: ReplicaId(2),
        source: ReplicaId(1),
        full: true,
        bytes: 100,
        started: at(seconds),
        ended: at(seconds + 1),
        outcome,
    };
    let cv = known(volume("pvc-1", "n1", 1, 2), &[(1, 1001), (2, 1002)]);
    let mut status = target(&[(1, true), (2, true)]);
    status.resync_history = vec![
        attempt(
            0,
            ResyncOutcome::Abandoned("its source was ejected".to_string()),
        ),
        attempt(10, ResyncOutcome::Completed),
    ];
    let first = check_publish(
        &cv,
        &[replica(1), replica(2)],
        &status,
        &measured(true, true),
    );
    let written = first.volume.expect("written");
    let history = &written.status.resync_history;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].outcome, "Abandoned");
    assert_eq!(history[0].reason, "its source was ejected");
    assert_eq!(history[0].replica, "2");
    assert_eq!(history[1].outcome, "Completed");
    let cvr = first
        .replicas
        .iter()
        .find(|cvr| cvr.status.resync_history.len() == 2)
        .expect("the rebuilt replica's CVR keeps its own history");
    assert!(cvr
        .status
        .resync_history
        .iter()
        .all(|record| record.replica.is_empty()));

    // A new target (after a failover) knows only its own; the volume keeps the older ones, and
    // only the newest VOLUME_HISTORY.
    let mut next = target(&[(1, true), (2, true)]);
    next.resync_history = (20..20 + VOLUME_HISTORY as u64)
        .map(|seconds| attempt(seconds * 10, ResyncOutcome::Completed))
        .collect();
    let again = check_publish(&written, &first.replicas, &next, &measured(true, true));
    let history = again.volume.expect("written").status.resync_history;
    assert_eq!(history.len(), VOLUME_HISTORY);
    assert!(history.iter().all(|record| record.outcome == "Completed"));
    assert_eq!(
        history.last().map(|record| record.started.clone()),
        Some(humantime::format_rfc3339_millis(at((19 + VOLUME_HISTORY as u64) * 10)).to_string())
    );
}

#[test]
fn given_pace_annotations_when_planning_then_the_volumes_win_over_its_clusters() {
    use tandem_objects::{
        CStorPoolCluster, ObjectMeta, RebuildPace, ANNOTATION_REBUILD_RATE,
        ANNOTATION_REBUILD_SEGMENTS, LABEL_CSTOR_POOL_CLUSTER,
    };
    let mut cluster = CStorPoolCluster::new(ObjectMeta::named("cspc-a"), Default::default());
    for (key, value) in [
        (ANNOTATION_REBUILD_RATE, "200Mi"),
        (ANNOTATION_REBUILD_SEGMENTS, "8"),
    ] {
        cluster
            .metadata
            .annotations
            .insert(key.to_string(), value.to_string());
    }
    let mut with_cluster = config("pvc-1", &["cspc-a-1"]);
    with_cluster
        .metadata
        .labels
        .insert(LABEL_CSTOR_POOL_CLUSTER.to_string(), "cspc-a".to_string());
    let mut own = with_cluster.clone();
    own.metadata.name = "pvc-2".to_string();
    own.metadata
        .annotations
        .insert(ANNOTATION_REBUILD_RATE.to_string(), "10Mi".to_string());
    let mut bad = own.clone();
    bad.metadata.name = "pvc-3".to_string();
    bad.metadata
        .annotations
        .insert(ANNOTATION_REBUILD_SEGMENTS.to_string(), "lots".to_string());
    let mut view = view(Vec::new(), Vec::new());
    view.clusters.push(cluster);
    view.configs.extend([with_cluster, own, bad]);
    let cluster_pace = RebuildPace {
        idle: Some(200 << 20),
        segments: 8,
        ..RebuildPace::default()
    };
    assert_eq!(view.pace("pvc-1"), Ok(cluster_pace));
    assert_eq!(
        view.pace("pvc-2"),
        Ok(RebuildPace {
            idle: Some(10 << 20),
            ..cluster_pace
        })
    );
    let (pace, error) = view.pace("pvc-3").expect_err("a bad value");
    assert_eq!(pace, RebuildPace::default());
    assert!(
        error.to_string().contains(ANNOTATION_REBUILD_SEGMENTS),
        "{error}"
    );
    assert_eq!(view.pace("pvc-9"), Ok(RebuildPace::default()));
}
