//! The volume controller's plans as tables: given the observed configs, volumes, replicas,
//! pools and node agents, the actions one pass takes.

use tandem_objects::CStorPoolInstancePhase::{Offline, Online};
use tandem_objects::CStorVolumeReplicaPhase::{Degraded, Healthy, Recreate};
use tandem_objects::{
    CStorPoolInstance, CStorVolumeConfigPhase, CStorVolumePhase, Condition, Object,
    ANNOTATION_CORDONED, ANNOTATION_MIGRATE_FROM, ANNOTATION_TARGET_NODE,
    CONDITION_SCALING_VOLUME_REPLICAS, FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CSTOR_POOL_CLUSTER,
};

use crate::controllers::execute::Action;
use crate::controllers::fixtures::{
    bound, cv, cvc, describe, node, observed, placed_cv, pool, random, replica, NOW, NOW_MS,
};
use crate::controllers::observe::Observed;
use crate::controllers::volumes::target::plan_target;
use crate::controllers::volumes::{plan_config, plan_orphans, plan_provision, Step};

/// Plans what a pass does for every config (a volume to create first is created with uid
/// `uid-created`, as the server would answer), then for the volumes left without one, and
/// compares the actions, one line each, with `expected`.
fn check(observed: Observed, expected: &[&str]) {
    let mut actions = Vec::new();
    for config in &observed.configs {
        match plan_config(&observed, config, &mut random()) {
            Step::Act(planned) => actions.extend(planned),
            Step::CreateVolume(volume) => {
                let mut created = *volume;
                actions.push(Action::Create(Object::CStorVolume(created.clone())));
                created.metadata.uid = "uid-created".to_string();
                actions.extend(plan_provision(&observed, config, &created, &mut random()));
            }
        }
    }
    actions.extend(plan_orphans(&observed));
    let actual = describe(&actions);
    assert_eq!(actual, expected, "\nactual:\n{}\n", actual.join("\n"));
}

/// Four pools of the cluster on four nodes: `a` and `d` usable (`a` already holds a replica of
/// another volume), `b` read-only, `c` OFFLINE.
fn four_pools() -> Vec<CStorPoolInstance> {
    let mut a = pool("a", "n1", Online);
    a.status.provisioned_replicas = 1;
    let mut b = pool("b", "n2", Online);
    b.status.read_only = true;
    let c = pool("c", "n3", Offline);
    let d = pool("d", "n4", Online);
    vec![a, b, c, d]
}

fn online_pools(names: &[&str]) -> Vec<CStorPoolInstance> {
    names
        .iter()
        .enumerate()
        .map(|(index, name)| pool(name, &format!("n{}", index + 1), Online))
        .collect()
}

fn scaling_condition(reason: &str, message: &str) -> Condition {
    Condition {
        condition_type: CONDITION_SCALING_VOLUME_REPLICAS.to_string(),
        status: "True".to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        ..Condition::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Provisioning

#[test]
fn given_a_new_cvc_without_a_volume_when_planned_then_the_volume_first_then_its_replicas() {
    check(
        Observed {
            configs: vec![cvc("pvc-1", 2)],
            pools: four_pools(),
            ..observed()
        },
        &[
            "create cv pvc-1: drf 2, target - at ",
            "create replica pvc-1-d (Empty, owner CStorVolume uid-created)",
            "create replica pvc-1-a (Empty, owner CStorVolume uid-created)",
        ],
    );
}

#[test]
fn given_offline_and_read_only_pools_when_two_replicas_are_wanted_then_the_usable_two_least_loaded_first(
) {
    check(
        Observed {
            configs: vec![cvc("pvc-two", 2)],
            volumes: vec![cv("pvc-two", 2)],
            pools: four_pools(),
            ..observed()
        },
        &[
            "create replica pvc-two-d (Empty, owner CStorVolume uid-pvc-two)",
            "create replica pvc-two-a (Empty, owner CStorVolume uid-pvc-two)",
        ],
    );
}

#[test]
fn given_too_few_usable_pools_when_planned_then_a_warning_names_the_skipped_and_nothing_is_placed()
{
    check(
        Observed {
            configs: vec![cvc("pvc-three", 3)],
            volumes: vec![cv("pvc-three", 3)],
            pools: four_pools(),
            ..observed()
        },
        &[
            "event Warning Provisioning by Volumes about CStorVolumeConfig pvc-three unless its \
             newest says the same: not enough pools are available of provided CSPC: \"cspc\", \
             usable pool count: 2 pending replica count: 3 (skipped: b is read-only; c is \
             OFFLINE)",
        ],
    );
}

#[test]
fn given_a_pool_not_reported_yet_when_too_few_are_usable_then_the_warning_says_so() {
    let mut pools = online_pools(&["a"]);
    pools.push(pool(
        "e",
        "n5",
        tandem_objects::CStorPoolInstancePhase::Empty,
    ));
    check(
        Observed {
            configs: vec![cvc("pvc-1", 2)],
            volumes: vec![cv("pvc-1", 2)],
            pools,
            ..observed()
        },
        &[
            "event Warning Provisioning by Volumes about CStorVolumeConfig pvc-1 unless its \
             newest says the same: not enough pools are available of provided CSPC: \"cspc\", \
             usable pool count: 1 pending replica count: 2 (skipped: e has not come ONLINE yet)",
        ],
    );
}

#[test]
fn given_a_replica_on_a_node_when_more_are_placed_then_no_second_replica_goes_to_that_node() {
    let mut pools = online_pools(&["a", "b"]);
    pools.push(pool("a2", "n1", Online)); // a second pool on n1
    check(
        Observed {
            configs: vec![cvc("pvc-1", 3)],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![replica("pvc-1", "a", Healthy)],
            pools,
            ..observed()
        },
        &[
            "event Warning Provisioning by Volumes about CStorVolumeConfig pvc-1 unless its \
             newest says the same: not enough pools are available of provided CSPC: \"cspc\", \
             usable pool count: 1 pending replica count: 2",
        ],
    );
}

#[test]
fn given_pools_of_another_cluster_when_planned_then_they_are_not_used() {
    let mut pools = online_pools(&["a"]);
    let mut other = pool("x", "n9", Online);
    other
        .metadata
        .labels
        .insert(LABEL_CSTOR_POOL_CLUSTER.to_string(), "other".to_string());
    pools.push(other);
    check(
        Observed {
            configs: vec![cvc("pvc-1", 2)],
            volumes: vec![cv("pvc-1", 2)],
            pools,
            ..observed()
        },
        &[
            "event Warning Provisioning by Volumes about CStorVolumeConfig pvc-1 unless its \
             newest says the same: not enough pools are available of provided CSPC: \"cspc\", \
             usable pool count: 1 pending replica count: 2",
        ],
    );
}

#[test]
fn given_a_spec_that_names_its_pools_when_provisioned_then_only_those_are_used() {
    let mut config = cvc("pvc-1", 1);
    config.spec.policy.replica_pool_info = vec![tandem_objects::ReplicaPoolInfo::new("c")];
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 1)],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &["create replica pvc-1-c (Empty, owner CStorVolume uid-pvc-1)"],
    );
}

#[test]
fn given_every_replica_exists_when_planned_then_bound_placed_in_the_spec_and_synced() {
    check(
        Observed {
            configs: vec![cvc("pvc-1", 2)],
            volumes: vec![cv("pvc-1", 2)],
            replicas: vec![
                replica("pvc-1", "d", Degraded),
                replica("pvc-1", "a", Degraded),
            ],
            pools: four_pools(),
            ..observed()
        },
        &[
            "status cvc pvc-1: Bound, pools [a, d], capacity 5Gi",
            "update cvc pvc-1: pools [a, d], volume pvc-1 uid-pvc-1 (at the version just written)",
            "event Normal Synced by Volumes about CStorVolumeConfig pvc-1: cstorvolumeconfig \
             created successfully",
        ],
    );
}

#[test]
fn given_every_replica_exists_and_the_spec_already_placed_when_bound_then_no_spec_write() {
    let mut config = cvc("pvc-1", 1);
    let placed = bound("pvc-1", &["a"], &["a"]);
    config.spec = placed.spec;
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 1)],
            replicas: vec![replica("pvc-1", "a", Degraded)],
            pools: online_pools(&["a"]),
            ..observed()
        },
        &[
            "status cvc pvc-1: Bound, pools [a], capacity 5Gi",
            "event Normal Synced by Volumes about CStorVolumeConfig pvc-1: cstorvolumeconfig \
             created successfully",
        ],
    );
}

#[test]
fn given_a_created_replica_when_provisioned_then_it_is_named_labelled_and_held_as_cstor_makes_it() {
    let observed = Observed {
        pools: online_pools(&["a"]),
        ..observed()
    };
    let actions = plan_provision(&observed, &cvc("pvc-1", 1), &cv("pvc-1", 1), &mut random());
    let Some(Action::Create(Object::CStorVolumeReplica(created))) = actions.get(1) else {
        panic!("a replica is created: {actions:?}");
    };
    assert_eq!(created.name(), "pvc-1-a");
    assert_eq!(
        created.metadata.finalizers,
        [FINALIZER_CSTOR_VOLUME_REPLICA]
    );
    assert!(created.spec.replica_id.parse::<u64>().is_ok());
    assert_eq!(
        created.metadata.label("cstorpoolinstance.openebs.io/name"),
        Some("a")
    );
    assert_eq!(
        created.metadata.label("openebs.io/persistent-volume"),
        Some("pvc-1")
    );
}

#[test]
fn given_a_cvc_being_deleted_or_failed_or_without_a_cluster_when_planned_then_nothing() {
    let mut deleted = cvc("pvc-deleted", 1);
    deleted.metadata.deletion_timestamp = NOW.to_string();
    let mut failed = cvc("pvc-failed", 1);
    failed.status.phase = CStorVolumeConfigPhase::Failed;
    let mut clusterless = cvc("pvc-clusterless", 1);
    clusterless.metadata.labels.clear();
    check(
        Observed {
            configs: vec![deleted, failed, clusterless],
            pools: online_pools(&["a"]),
            ..observed()
        },
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Target placement

#[test]
fn given_a_bound_volume_when_its_first_pools_agent_serves_nbd_then_the_target_is_placed_there() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b"])],
            volumes: vec![cv("pvc-1", 2)],
            pools: online_pools(&["a", "b"]),
            nodes: vec![
                node("n1", true, "10.0.0.1:10809", 100),
                node("n2", true, "10.0.0.2:10809", 100),
            ],
            ..observed()
        },
        &["update cv pvc-1: drf 2, target n1 at 10.0.0.1:10809"],
    );
}

#[test]
fn given_a_node_running_fewer_targets_when_placing_then_the_target_goes_there() {
    let mut busy = cv("pvc-0", 2);
    busy.metadata
        .annotations
        .insert(ANNOTATION_TARGET_NODE.to_string(), "n1".to_string());
    let config = bound("pvc-1", &["a", "b"], &["a", "b"]);
    let observed = Observed {
        configs: vec![config.clone()],
        volumes: vec![cv("pvc-1", 2), busy],
        pools: online_pools(&["a", "b"]),
        nodes: vec![
            node("n1", true, "10.0.0.1:10809", 100),
            node("n2", true, "10.0.0.2:10809", 100),
        ],
        ..observed()
    };
    let volume = observed.volume_of(&config).expect("its volume");
    let placed = plan_target(&observed, &config, volume);
    let Some(Action::Update {
        object: Object::CStorVolume(placed),
        ..
    }) = placed.last()
    else {
        panic!("the target is placed: {placed:?}");
    };
    assert_eq!(
        placed.metadata.annotation(ANNOTATION_TARGET_NODE),
        Some("n2")
    );
}

#[test]
fn given_many_new_volumes_on_the_same_nodes_when_placed_in_one_pass_then_their_targets_spread() {
    let names: Vec<String> = (0..60).map(|index| format!("pvc-{index}")).collect();
    let observed = Observed {
        configs: (names.iter())
            .map(|name| bound(name, &["a", "b", "c"], &["a", "b", "c"]))
            .collect(),
        volumes: names.iter().map(|name| cv(name, 3)).collect(),
        pools: online_pools(&["a", "b", "c"]),
        nodes: vec![
            node("n1", true, "10.0.0.1:10809", 100),
            node("n2", true, "10.0.0.2:10809", 100),
            node("n3", true, "10.0.0.3:10809", 100),
        ],
        ..observed()
    };
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for config in &observed.configs {
        let volume = observed.volume_of(config).expect("its volume");
        for action in plan_target(&observed, config, volume) {
            if let Action::Update {
                object: Object::CStorVolume(placed),
                ..
            } = action
            {
                let node = placed.metadata.annotation(ANNOTATION_TARGET_NODE).unwrap();
                *per_node.entry(node.to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(per_node.values().sum::<usize>(), 60, "{per_node:?}");
    assert!(per_node.values().all(|&count| count >= 10), "{per_node:?}");
}

#[test]
fn given_the_first_pools_agent_silent_when_placing_then_the_target_goes_to_the_next_one() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b"])],
            volumes: vec![cv("pvc-1", 2)],
            pools: online_pools(&["a", "b"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 9_000),
                node("n2", true, "10.0.0.2:10809", 100),
            ],
            ..observed()
        },
        &["update cv pvc-1: drf 2, target n2 at 10.0.0.2:10809"],
    );
}

#[test]
fn given_no_agent_serving_nbd_yet_when_planned_then_the_target_waits() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a"], &["a"])],
            volumes: vec![cv("pvc-1", 1)],
            pools: online_pools(&["a"]),
            nodes: vec![node("n1", true, "", 100)],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_placed_target_whose_agent_reports_when_planned_then_it_stays() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b"])],
            volumes: vec![placed_cv("pvc-1", 2, "n2", "10.0.0.2:10809")],
            pools: online_pools(&["a", "b"]),
            nodes: vec![
                node("n1", true, "10.0.0.1:10809", 100),
                node("n2", true, "10.0.0.2:10809", 100),
            ],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_placed_targets_agent_silent_past_the_grace_and_no_other_replica_when_planned_then_offline(
) {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a"], &["a"])],
            volumes: vec![placed_cv("pvc-1", 1, "n1", "10.0.0.1:10809")],
            pools: online_pools(&["a"]),
            nodes: vec![node("n1", false, "10.0.0.1:10809", 9_000)],
            ..observed()
        },
        &[&format!(
            "status cv pvc-1: Offline since {NOW}: the agent hosting the target (node n1) is \
             not reporting, and no other node holds a trusted replica of the volume"
        )],
    );
}

#[test]
fn given_a_volume_already_offline_for_its_silent_target_when_planned_then_nothing() {
    let mut volume = placed_cv("pvc-1", 1, "n1", "10.0.0.1:10809");
    volume.status.phase = CStorVolumePhase::Offline;
    volume.status.message = "the agent hosting the target (node n1) is not reporting, and no \
                             other node holds a trusted replica of the volume"
        .to_string();
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a"], &["a"])],
            volumes: vec![volume],
            pools: online_pools(&["a"]),
            nodes: vec![node("n1", false, "10.0.0.1:10809", 9_000)],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_placed_targets_agent_silent_within_the_grace_when_planned_then_nothing() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b"])],
            volumes: vec![trusting(
                placed_cv("pvc-1", 2, "n1", "10.0.0.1:10809"),
                &["a", "b"],
            )],
            pools: online_pools(&["a", "b"]),
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
            ],
            nodes: vec![node("n2", true, "10.0.0.2:10809", 100)],
            past_agent_grace: false,
            ..observed()
        },
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Target failover

/// The CV's recorded membership trusts the replicas on `pools` (ids `id-<pool>`), generation 3.
fn trusting(
    mut volume: tandem_objects::CStorVolume,
    pools: &[&str],
) -> tandem_objects::CStorVolume {
    volume.spec.replica_details.known_replicas = pools
        .iter()
        .map(|pool| (format!("id-{pool}"), "1".to_string()))
        .collect();
    volume.metadata.annotations.insert(
        tandem_objects::ANNOTATION_TARGET_GENERATION.to_string(),
        "3".to_string(),
    );
    volume
}

/// The CV's status as the target last published it: each pool's replica in `phases`.
fn last_seen(
    mut volume: tandem_objects::CStorVolume,
    phases: &[(&str, tandem_objects::CStorVolumeReplicaPhase)],
) -> tandem_objects::CStorVolume {
    volume.status.phase = CStorVolumePhase::Healthy;
    volume.status.replica_statuses = phases
        .iter()
        .map(|(pool, phase)| tandem_objects::ReplicaStatus {
            replica_id: format!("id-{pool}"),
            phase: Some(*phase),
            ..tandem_objects::ReplicaStatus::default()
        })
        .collect();
    volume
}

fn failover_lines(from: &str, to: &str, pool: &str, state: &str, silence: &str) -> Vec<String> {
    let address = format!("10.0.0.{}:10809", &to[1..]);
    let last_seen_ms: u64 = match silence {
        "has not reported for 2.1s" => 2_100,
        "has not reported for 2.0s" => 2_050,
        "has not reported for 3.0s" => 3_000,
        _ => NOW_MS, // never heard: the annotation says 0
    };
    let last_heartbeat = NOW_MS - last_seen_ms;
    vec![
        format!(
            "status cv pvc-1: Offline since {NOW}: the target is failing over from node {from} \
             to node {to}"
        ),
        format!(
            "update cv pvc-1: drf 3, target {to} at {address}, failover from={from},to={to},\
             generation=3,started={NOW_MS},lastHeartbeat={last_heartbeat} (at the version just \
             written)"
        ),
        format!(
            "event Warning TargetFailover by Volumes about CStorVolume pvc-1: target failed over \
             from node {from} to node {to} (replica id-{pool}, {state}): the agent on {from} \
             {silence}; the old target had generation 3, the new one starts with the next"
        ),
    ]
}

fn three_replicas() -> Vec<tandem_objects::CStorVolumeReplica> {
    vec![
        replica("pvc-1", "a", Healthy),
        replica("pvc-1", "b", Healthy),
        replica("pvc-1", "c", Healthy),
    ]
}

fn check_lines(observed: Observed, expected: Vec<String>) {
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(observed, &expected);
}

#[test]
fn given_the_target_nodes_lease_expired_when_planned_then_the_target_fails_over_to_a_healthy_replica(
) {
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Degraded), ("c", Healthy)],
    );
    check_lines(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 2_100),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        failover_lines("n1", "n3", "c", "Healthy", "has not reported for 2.1s"),
    );
}

#[test]
fn given_no_other_replica_last_seen_healthy_when_failing_over_then_the_first_ready_trusted_one() {
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Degraded), ("c", Healthy)],
    );
    check_lines(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 2_100),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", false, "10.0.0.3:10809", 5_000),
            ],
            ..observed()
        },
        failover_lines(
            "n1",
            "n2",
            "b",
            "not last seen Healthy",
            "has not reported for 2.1s",
        ),
    );
}

#[test]
fn given_a_ready_node_whose_replica_is_not_trusted_when_failing_over_then_it_is_never_chosen() {
    // The replica on c is new (not in the recorded membership yet): it may miss acknowledged
    // writes, so its node cannot host the target; b's node is silent too.
    let volume = trusting(placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"), &["a", "b"]);
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c", "d"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 2_100),
                node("n2", false, "10.0.0.2:10809", 2_100),
                node("n3", true, "10.0.0.3:10809", 100),
                node("n4", true, "10.0.0.4:10809", 100),
            ],
            ..observed()
        },
        &[&format!(
            "status cv pvc-1: Offline since {NOW}: the agent hosting the target (node n1) is \
             not reporting, and no other node with a trusted replica can take it over (n2: not \
             reporting)"
        )],
    );
}

#[test]
fn given_the_only_other_trusted_nodes_agent_has_no_nbd_address_when_failing_over_then_offline_says_so(
) {
    let volume = trusting(placed_cv("pvc-1", 2, "n1", "10.0.0.1:10809"), &["a", "b"]);
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b"])],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
            ],
            pools: online_pools(&["a", "b"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 2_100),
                node("n2", true, "", 100),
            ],
            ..observed()
        },
        &[&format!(
            "status cv pvc-1: Offline since {NOW}: the agent hosting the target (node n1) is \
             not reporting, and no other node with a trusted replica can take it over (n2: no \
             NBD address yet)"
        )],
    );
}

#[test]
fn given_a_restarted_control_plane_that_never_heard_the_target_node_when_past_the_grace_then_it_fails_over(
) {
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Healthy), ("c", Healthy)],
    );
    check_lines(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        failover_lines(
            "n1",
            "n2",
            "b",
            "Healthy",
            "has not reported since the control plane started",
        ),
    );
}

#[test]
fn given_a_failover_written_when_planned_again_then_the_target_stays_on_its_new_node() {
    // The second failover's first pass is the first one's last: the new node reports, the old
    // one is still silent, nothing moves back.
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n3", "10.0.0.3:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Healthy), ("c", Healthy)],
    );
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 9_000),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_the_new_target_node_dies_too_when_planned_then_it_fails_over_again_to_the_survivor() {
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n2", "10.0.0.2:10809"),
            &["a", "b", "c"],
        ),
        &[
            ("a", tandem_objects::CStorVolumeReplicaPhase::Offline),
            ("b", Healthy),
            ("c", Healthy),
        ],
    );
    check_lines(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 9_000),
                node("n2", false, "10.0.0.2:10809", 2_050),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        failover_lines("n2", "n3", "c", "Healthy", "has not reported for 2.0s"),
    );
}

#[test]
fn given_a_failover_under_way_when_its_new_target_serves_then_it_is_finished_with_its_duration() {
    let under_way = |phase: CStorVolumePhase, generation: &str| {
        let mut volume = last_seen(
            trusting(
                placed_cv("pvc-1", 3, "n2", "10.0.0.2:10809"),
                &["a", "b", "c"],
            ),
            &[("b", Healthy), ("c", Healthy)],
        );
        volume.status.phase = phase;
        volume.metadata.annotations.insert(
            tandem_objects::ANNOTATION_TARGET_GENERATION.to_string(),
            generation.to_string(),
        );
        volume.metadata.annotations.insert(
            "tandem.io/failover".to_string(),
            format!(
                "from=n1,to=n2,generation=3,started={},lastHeartbeat={}",
                NOW_MS - 600,
                NOW_MS - 2_400
            ),
        );
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 2_400),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        }
    };
    // Not yet: the new target has not taken its generation, or does not serve yet.
    check(under_way(CStorVolumePhase::Degraded, "3"), &[]);
    check(under_way(CStorVolumePhase::Offline, "4"), &[]);
    check(
        under_way(CStorVolumePhase::Degraded, "4"),
        &[
            "update cv pvc-1: drf 3, target n2 at 10.0.0.2:10809",
            "event Normal TargetFailoverDone by Volumes about CStorVolume pvc-1: node n2 serves \
             the volume with generation 4 (Degraded): 0.6s after the failover from node n1 \
             began, 2.4s after node n1's last heartbeat",
        ],
    );
}

#[test]
fn given_a_replica_being_deleted_when_failing_over_then_its_node_is_not_chosen() {
    let mut leaving = replica("pvc-1", "b", Healthy);
    leaving.metadata.deletion_timestamp = NOW.to_string();
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Healthy), ("c", Degraded)],
    );
    check_lines(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                leaving,
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            nodes: vec![
                node("n1", false, "10.0.0.1:10809", 3_000),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        failover_lines(
            "n1",
            "n3",
            "c",
            "not last seen Healthy",
            "has not reported for 3.0s",
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Scaling

#[test]
fn given_a_bound_cvc_whose_placement_never_reached_the_spec_when_planned_then_it_is_written() {
    let mut config = bound("pvc-1", &["a", "b"], &[]);
    config.spec.cstor_volume_ref = None;
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 2)],
            pools: online_pools(&["a", "b"]),
            ..observed()
        },
        &["update cvc pvc-1: pools [a, b], volume pvc-1 uid-pvc-1"],
    );
}

#[test]
fn given_a_pool_added_to_the_spec_when_planned_then_a_replica_for_reconstruction_and_scaling_up() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b", "c"])],
            volumes: vec![cv("pvc-1", 2)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "update cv pvc-1: drf 3, target - at ",
            "create replica pvc-1-c (Recreate, owner CStorVolume uid-pvc-1)",
            &format!(
                "status cvc pvc-1: Bound, pools [a, b, c], capacity 5Gi, ScalingVolumeReplicas \
                 ScalingUp since {NOW}: Scaling up volume replicas from 2 to 3: waiting for the \
                 new replica on c to become Healthy"
            ),
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             Scaling up volume replicas from 2 to 3: waiting for the new replica on c to become \
             Healthy",
        ],
    );
}

#[test]
fn given_a_scale_up_to_a_pool_that_does_not_exist_when_planned_then_a_warning() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a"], &["a", "zz"])],
            volumes: vec![cv("pvc-1", 1)],
            replicas: vec![replica("pvc-1", "a", Healthy)],
            pools: online_pools(&["a"]),
            ..observed()
        },
        &[
            "update cv pvc-1: drf 2, target - at ",
            "event Warning ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1 unless \
             its newest says the same: failed to get cstorpoolinstance zz error: it does not \
             exist",
        ],
    );
}

#[test]
fn given_a_scale_up_whose_new_replica_is_not_healthy_when_planned_then_no_success_yet() {
    let mut config = bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"]);
    config.status.conditions.push(scaling_condition(
        "ScalingUp",
        "Scaling up volume replicas from 2 to 3",
    ));
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Recreate),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_scale_up_whose_replicas_are_all_healthy_when_planned_then_it_is_finished() {
    let mut config = bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"]);
    config.status.conditions.push(scaling_condition(
        "ScalingUp",
        "Scaling up volume replicas from 2 to 3",
    ));
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "status cvc pvc-1: Bound, pools [a, b, c], capacity 5Gi",
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             successfully scaled volume replicas to 3",
        ],
    );
}

#[test]
fn given_a_scale_up_replacing_a_dead_replica_when_the_new_one_is_promoted_then_it_is_finished() {
    // b's node is dead (Offline) and d was added to replace it: once the target trusts d (it was
    // rebuilt), the scale-up is done, so the next change (removing b) is not held off.
    let mut config = bound("pvc-1", &["a", "b", "c", "d"], &["a", "b", "c", "d"]);
    config.status.conditions.push(scaling_condition(
        "ScalingUp",
        "Scaling up volume replicas from 3 to 4",
    ));
    let dead = replica(
        "pvc-1",
        "b",
        tandem_objects::CStorVolumeReplicaPhase::Offline,
    );
    let observed_with = |trusted: &[&str]| {
        let mut volume = cv("pvc-1", 4);
        volume.status.replica_details.known_replicas = trusted
            .iter()
            .map(|pool| (format!("id-{pool}"), "1".to_string()))
            .collect();
        Observed {
            configs: vec![config.clone()],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                dead.clone(),
                replica("pvc-1", "c", Healthy),
                replica("pvc-1", "d", Healthy),
            ],
            pools: online_pools(&["a", "b", "c", "d"]),
            ..observed()
        }
    };
    check(observed_with(&["a", "b", "c"]), &[]);
    check(
        observed_with(&["a", "b", "c", "d"]),
        &[
            "status cvc pvc-1: Bound, pools [a, b, c, d], capacity 5Gi",
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             successfully scaled volume replicas to 4",
        ],
    );
}

#[test]
fn given_a_pool_removed_while_the_target_still_trusts_its_replica_when_planned_then_scale_down_waits(
) {
    let mut volume = cv("pvc-1", 3);
    volume.status.replica_details.known_replicas = ["id-a", "id-b", "id-c"]
        .into_iter()
        .map(|id| (id.to_string(), "1".to_string()))
        .collect();
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["b", "c"])],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "update cv pvc-1: drf 2, target - at ",
            &format!(
                "status cvc pvc-1: Bound, pools [a, b, c], capacity 5Gi, ScalingVolumeReplicas \
                 ScalingDown since {NOW}: Scaling down volume replicas from 3 to 2 is in progress"
            ),
            "event Warning ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1 unless \
             its newest says the same: Scaling down volume replicas from 3 to 2 is in progress",
        ],
    );
}

#[test]
fn given_a_scale_down_already_marked_when_the_target_still_trusts_the_replica_then_only_the_warning(
) {
    let message = "Scaling down volume replicas from 3 to 2 is in progress";
    let mut config = bound("pvc-1", &["a", "b", "c"], &["b", "c"]);
    config
        .status
        .conditions
        .push(scaling_condition("ScalingDown", message));
    let mut volume = cv("pvc-1", 2);
    volume.status.replica_details.known_replicas = ["id-a", "id-b", "id-c"]
        .into_iter()
        .map(|id| (id.to_string(), "1".to_string()))
        .collect();
    check(
        Observed {
            configs: vec![config],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[&format!(
            "event Warning ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1 unless \
             its newest says the same: {message}"
        )],
    );
}

#[test]
fn given_the_target_let_go_of_the_removed_replica_when_planned_then_it_is_deleted_and_scaled() {
    let mut config = bound("pvc-1", &["a", "b", "c"], &["b", "c"]);
    config.status.conditions.push(scaling_condition(
        "ScalingDown",
        "Scaling down volume replicas from 3 to 2 is in progress",
    ));
    let mut volume = cv("pvc-1", 2);
    volume.status.replica_details.known_replicas = ["id-b", "id-c"]
        .into_iter()
        .map(|id| (id.to_string(), "1".to_string()))
        .collect();
    check(
        Observed {
            configs: vec![config],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "delete CStorVolumeReplica pvc-1-a",
            "status cvc pvc-1: Bound, pools [b, c], capacity 5Gi",
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             successfully scaled volume replicas to 2",
        ],
    );
}

#[test]
fn given_the_target_let_go_of_a_dead_replica_when_planned_then_it_is_deleted_and_the_replacement_recorded(
) {
    // The seed's second edit after a node died: d was added and is Healthy, b (dead) removed.
    let mut config = bound("pvc-1", &["a", "b", "c", "d"], &["a", "c", "d"]);
    config.status.conditions.push(scaling_condition(
        "ScalingDown",
        "Scaling down volume replicas from 4 to 3 is in progress",
    ));
    let mut volume = cv("pvc-1", 3);
    volume.status.replica_details.known_replicas = ["id-a", "id-c", "id-d"]
        .into_iter()
        .map(|id| (id.to_string(), "1".to_string()))
        .collect();
    check(
        Observed {
            configs: vec![config],
            volumes: vec![volume],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica(
                    "pvc-1",
                    "b",
                    tandem_objects::CStorVolumeReplicaPhase::Offline,
                ),
                replica("pvc-1", "c", Healthy),
                replica("pvc-1", "d", Healthy),
            ],
            pools: online_pools(&["a", "b", "c", "d"]),
            ..observed()
        },
        &[
            "delete CStorVolumeReplica pvc-1-b",
            "status cvc pvc-1: Bound, pools [a, c, d], capacity 5Gi",
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             successfully scaled volume replicas to 3",
            "event Warning ReplicaReplaced by Volumes about CStorVolumeConfig pvc-1: removed the \
             replica on pool b (node n2), which was Offline; the volume's replicas are now on \
             pools a (node n1), c (node n3), d (node n4)",
        ],
    );
}

#[test]
fn given_the_removed_replica_already_being_deleted_when_planned_then_only_the_status_follows() {
    let mut leaving = replica("pvc-1", "a", Healthy);
    leaving.metadata.deletion_timestamp = NOW.to_string();
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["b"])],
            volumes: vec![cv("pvc-1", 1)],
            replicas: vec![leaving, replica("pvc-1", "b", Healthy)],
            pools: online_pools(&["a", "b"]),
            ..observed()
        },
        &[
            "status cvc pvc-1: Bound, pools [b], capacity 5Gi",
            "event Normal ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             successfully scaled volume replicas to 1",
        ],
    );
}

#[test]
fn given_pools_both_added_and_removed_when_planned_then_a_migration_warning() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "c"])],
            volumes: vec![cv("pvc-1", 2)],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "event Warning Migration by Volumes about CStorVolumeConfig pvc-1 unless its newest \
             says the same: Migration of volume replicas is not yet supported",
        ],
    );
}

#[test]
fn given_a_bound_cvc_without_its_volume_when_planned_then_nothing() {
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b", "c"])],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Garbage collection

#[test]
fn given_a_volume_whose_cvc_is_gone_when_planned_then_its_replicas_go_first() {
    let mut leaving = replica("pvc-1", "b", Healthy);
    leaving.metadata.deletion_timestamp = NOW.to_string();
    check(
        Observed {
            volumes: vec![cv("pvc-1", 2)],
            replicas: vec![replica("pvc-1", "a", Healthy), leaving],
            ..observed()
        },
        &["delete CStorVolumeReplica pvc-1-a"],
    );
}

#[test]
fn given_a_volume_whose_cvc_and_replicas_are_gone_when_planned_then_the_volume_goes() {
    check(
        Observed {
            volumes: vec![cv("pvc-1", 2)],
            ..observed()
        },
        &["delete CStorVolume pvc-1"],
    );
}

#[test]
fn given_a_volume_with_its_cvc_when_collecting_then_it_stays() {
    let config = bound("pvc-1", &["a"], &["a"]);
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 1)],
            replicas: vec![replica("pvc-1", "a", Healthy)],
            pools: online_pools(&["a"]),
            ..observed()
        },
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Migration (`tandem volume migrate`)

/// pvc-1 on a and b, migrating from a to c: c added to the spec, a named to leave.
fn migrating(current: &[&str]) -> tandem_objects::CStorVolumeConfig {
    let mut config = bound("pvc-1", current, &["a", "b", "c"]);
    (config.metadata.annotations).insert(ANNOTATION_MIGRATE_FROM.into(), "a".into());
    config
}

#[test]
fn given_a_migration_whose_new_replica_is_rebuilding_when_planned_then_the_old_one_stays() {
    let mut config = migrating(&["a", "b", "c"]);
    config.status.conditions.push(scaling_condition(
        "ScalingUp",
        "Scaling up volume replicas from 2 to 3",
    ));
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Recreate),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_migration_whose_scale_up_finished_when_planned_then_the_old_pool_leaves_the_spec() {
    check(
        Observed {
            configs: vec![migrating(&["a", "b", "c"])],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "update cvc pvc-1: pools [b, c], volume pvc-1 uid-pvc-1",
            "event Normal MigratingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1: \
             Migrating volume replicas: every replica is Healthy, removing the one on pool a",
        ],
    );
}

#[test]
fn given_a_migration_whose_old_pool_already_left_when_planned_then_only_the_annotation_goes() {
    let mut config = bound("pvc-1", &["b", "c"], &["b", "c"]);
    (config.metadata.annotations).insert(ANNOTATION_MIGRATE_FROM.into(), "a".into());
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 2)],
            replicas: vec![
                replica("pvc-1", "b", Healthy),
                replica("pvc-1", "c", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &["update cvc pvc-1: pools [b, c], volume pvc-1 uid-pvc-1"],
    );
}

// ---------------------------------------------------------------------------------------------
// Cordoned nodes (`tandem node cordon|drain`)

/// The online pools `names`, those in `cordoned` on a cordoned node.
fn pools_cordoned(names: &[&str], cordoned: &[&str]) -> Vec<CStorPoolInstance> {
    let mut pools = online_pools(names);
    for pool in &mut pools {
        if cordoned.contains(&pool.metadata.name.as_str()) {
            (pool.metadata.annotations).insert(ANNOTATION_CORDONED.into(), "true".into());
        }
    }
    pools
}

#[test]
fn given_a_cordoned_pool_when_a_volume_is_provisioned_then_no_replica_goes_there() {
    check(
        Observed {
            configs: vec![cvc("pvc-two", 2)],
            volumes: vec![cv("pvc-two", 2)],
            pools: pools_cordoned(&["a", "b", "c"], &["a"]),
            ..observed()
        },
        &[
            "create replica pvc-two-b (Empty, owner CStorVolume uid-pvc-two)",
            "create replica pvc-two-c (Empty, owner CStorVolume uid-pvc-two)",
        ],
    );
}

#[test]
fn given_the_target_on_a_cordoned_ready_node_when_planned_then_it_moves_to_an_uncordoned_one() {
    let volume = last_seen(
        trusting(
            placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
            &["a", "b", "c"],
        ),
        &[("a", Healthy), ("b", Healthy), ("c", Healthy)],
    );
    let nodes = vec![
        node("n1", true, "10.0.0.1:10809", 100),
        node("n2", true, "10.0.0.2:10809", 100),
        node("n3", true, "10.0.0.3:10809", 100),
    ];
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: pools_cordoned(&["a", "b", "c"], &["a", "b"]),
            nodes,
            ..observed()
        },
        &[
            &format!(
                "status cv pvc-1: Offline since {NOW}: the target is failing over from node n1 \
                 to node n3"
            ),
            &format!(
                "update cv pvc-1: drf 3, target n3 at 10.0.0.3:10809, failover from=n1,to=n3,\
                 generation=3,started={NOW_MS},lastHeartbeat=0 (at the version just written)"
            ),
            "event Normal TargetMoved by Volumes about CStorVolume pvc-1: target moved from node \
             n1 to node n3 (replica id-c, Healthy): node n1 is cordoned (a planned move); the \
             old target had generation 3, the new one starts with the next",
        ],
    );
}

#[test]
fn given_the_target_on_a_cordoned_node_and_every_other_cordoned_when_planned_then_it_stays() {
    let volume = trusting(
        placed_cv("pvc-1", 3, "n1", "10.0.0.1:10809"),
        &["a", "b", "c"],
    );
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"])],
            volumes: vec![volume],
            replicas: three_replicas(),
            pools: pools_cordoned(&["a", "b", "c"], &["a", "b", "c"]),
            nodes: vec![
                node("n1", true, "10.0.0.1:10809", 100),
                node("n2", true, "10.0.0.2:10809", 100),
                node("n3", true, "10.0.0.3:10809", 100),
            ],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_pool_added_back_while_its_old_replica_is_destroyed_when_planned_then_it_waits() {
    let mut leaving = replica("pvc-1", "c", Healthy);
    leaving.metadata.deletion_timestamp = NOW.to_string();
    check(
        Observed {
            configs: vec![bound("pvc-1", &["a", "b"], &["a", "b", "c"])],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
                leaving,
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "event Warning ScalingVolumeReplicas by Volumes about CStorVolumeConfig pvc-1 unless \
             its newest says the same: waiting for the replica removed from pool c to be \
             destroyed before creating a new one there",
        ],
    );
}

#[test]
fn given_a_scaling_volume_with_a_pool_left_without_a_replica_when_planned_then_one_is_made() {
    let mut config = bound("pvc-1", &["a", "b", "c"], &["a", "b", "c"]);
    config.status.conditions.push(scaling_condition(
        "ScalingUp",
        "Scaling up volume replicas from 2 to 3",
    ));
    check(
        Observed {
            configs: vec![config],
            volumes: vec![cv("pvc-1", 3)],
            replicas: vec![
                replica("pvc-1", "a", Healthy),
                replica("pvc-1", "b", Healthy),
            ],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &["create replica pvc-1-c (Recreate, owner CStorVolume uid-pvc-1)"],
    );
}

/// Pool cluster [`crate::controllers::fixtures::CLUSTER`] allowing `percent` % of each pool's
/// capacity to be provisioned.
fn cluster_allowing(percent: &str) -> tandem_objects::CStorPoolCluster {
    let mut cluster = crate::controllers::fixtures::cluster(&["n1", "n2", "n3"]);
    (cluster.metadata.annotations).insert(
        tandem_objects::capacity::ANNOTATION_OVER_PROVISIONING.to_string(),
        percent.to_string(),
    );
    cluster
}

#[test]
fn given_a_pool_past_its_over_provisioning_limit_when_a_volume_is_provisioned_then_it_goes_elsewhere(
) {
    let mut held = replica("pvc-old", "a", Healthy);
    held.spec.capacity = tandem_objects::Quantity::from_bytes_binary(5 << 30);
    check(
        Observed {
            pool_clusters: vec![cluster_allowing("100")],
            configs: vec![cvc("pvc-new", 2)],
            volumes: vec![cv("pvc-new", 2)],
            replicas: vec![held],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "create replica pvc-new-b (Empty, owner CStorVolume uid-pvc-new)",
            "create replica pvc-new-c (Empty, owner CStorVolume uid-pvc-new)",
        ],
    );
}

#[test]
fn given_a_burst_of_volumes_when_planned_in_one_pass_then_each_counts_the_replicas_placed_before_it(
) {
    check(
        Observed {
            pool_clusters: vec![cluster_allowing("100")],
            configs: vec![cvc("pvc-1", 2), cvc("pvc-2", 2)],
            volumes: vec![cv("pvc-1", 2), cv("pvc-2", 2)],
            pools: online_pools(&["a", "b", "c"]),
            ..observed()
        },
        &[
            "create replica pvc-1-b (Empty, owner CStorVolume uid-pvc-1)",
            "create replica pvc-1-a (Empty, owner CStorVolume uid-pvc-1)",
            "event Warning InsufficientCapacity by Volumes about CStorVolumeConfig pvc-2 unless \
             its newest says the same: not enough pools are available of provided CSPC: \"cspc\", \
             usable pool count: 1 pending replica count: 2 (skipped: pool a cannot take a 5 GiB \
             replica: 5 GiB of its 9.3 GiB are provisioned, and its pool cluster allows 100% \
             (9.3 GiB) (tandem.io/over-provisioning-percentage); pool b cannot take a 5 GiB \
             replica: 5 GiB of its 9.3 GiB are provisioned, and its pool cluster allows 100% \
             (9.3 GiB) (tandem.io/over-provisioning-percentage))",
        ],
    );
}
