//! The CVC admission rules: one case per rule showing its refusal and exact message, and the
//! updates of the walk-through (scale up, the controller's status updates, scale down) accepted.
//! Every case starts from the seed's CVC (two replicas, Bound) and a three-node cluster.

use tandem_objects::*;

const SEED_CVC: &str = include_str!("../fixtures/seed-cvc.yaml");
const VOLUME: &str = "pvc-d1b26676-5035-4e5b-b564-68869b023306";
const CLUSTER: &str = "cspc-stripe-pool";
const POOL_A: &str = "cspc-stripe-pool-6qkw";
const POOL_B: &str = "cspc-stripe-pool-pn9p";
const POOL_C: &str = "cspc-stripe-pool-psz5";

/// The seed's CVC, with what the seed elides but cStor always sets: the pool cluster label and
/// the provisioned size and replica count.
fn seed_cvc() -> CStorVolumeConfig {
    let object = parse_yaml(SEED_CVC).unwrap_or_else(|error| panic!("{error}"));
    let mut cvc = CStorVolumeConfig::try_from(object).unwrap_or_else(|error| panic!("{error}"));
    cvc.metadata
        .labels
        .insert(LABEL_CSTOR_POOL_CLUSTER.to_string(), CLUSTER.to_string());
    cvc.spec.provision = VolumeProvision {
        capacity: StorageCapacity::new(Quantity::from_bytes_binary(5 << 30)),
        replica_count: 2,
    };
    cvc
}

fn pool(
    name: &str,
    cluster: Option<&str>,
    phase: CStorPoolInstancePhase,
    read_only: bool,
) -> CStorPoolInstance {
    let mut metadata = ObjectMeta::named(name);
    if let Some(cluster) = cluster {
        metadata = metadata.with_label(LABEL_CSTOR_POOL_CLUSTER, cluster);
    }
    let mut pool = CStorPoolInstance::new(metadata, CStorPoolInstanceSpec::default());
    pool.status.phase = phase;
    pool.status.read_only = read_only;
    // The seed's pools: 10G each, nearly empty.
    pool.status.capacity.total = Quantity::from_bytes(10_000_000_000);
    pool.status.capacity.used = Quantity::from_bytes(1 << 20);
    pool
}

/// `pool` with `used` bytes of its 10G taken.
fn using(mut pool: CStorPoolInstance, used: u64) -> CStorPoolInstance {
    pool.status.capacity.used = Quantity::from_bytes(used);
    pool
}

/// `pool` on a cordoned node (`node4`).
fn cordoned(mut pool: CStorPoolInstance) -> CStorPoolInstance {
    pool.spec.host_name = "node4".to_string();
    (pool.metadata.annotations).insert(tandem_objects::ANNOTATION_CORDONED.into(), "true".into());
    pool
}

/// Three ONLINE pools of the volume's cluster (one per node, as in the seed), plus one pool of
/// each kind the guards refuse.
fn cluster(volume_phase: Option<CStorVolumePhase>) -> PoolSnapshot {
    use CStorPoolInstancePhase::*;
    let mut snapshot = PoolSnapshot::new()
        .with_pool(pool(POOL_A, Some(CLUSTER), Online, false))
        .with_pool(pool(POOL_B, Some(CLUSTER), Online, false))
        .with_pool(pool(POOL_C, Some(CLUSTER), Online, false))
        .with_pool(pool("cspc-stripe-pool-off1", Some(CLUSTER), Offline, false))
        .with_pool(pool("cspc-stripe-pool-new1", Some(CLUSTER), Empty, false))
        .with_pool(pool("cspc-stripe-pool-full", Some(CLUSTER), Online, true))
        .with_pool(cordoned(pool(
            "cspc-stripe-pool-crd1",
            Some(CLUSTER),
            Online,
            false,
        )))
        .with_pool(pool(
            "cspc-mirror-pool-x2k4",
            Some("cspc-mirror-pool"),
            Online,
            false,
        ))
        .with_pool(pool("loose-pool", None, Online, false))
        .with_pool(pool("cspc-stripe-pool-prm1", Some(CLUSTER), Online, false))
        .with_pool(using(
            pool("cspc-stripe-pool-use1", Some(CLUSTER), Online, false),
            8_500_000_000,
        ));
    // 16 GiB promised of the 20G its cluster allows: no room for another 5 GiB.
    snapshot
        .provisioned
        .insert("cspc-stripe-pool-prm1".into(), 16 << 30);
    if let Some(phase) = volume_phase {
        snapshot = snapshot.with_volume_phase(VOLUME, phase);
    }
    snapshot
}

fn set_desired(cvc: &mut CStorVolumeConfig, pools: &[&str]) {
    cvc.spec.policy.replica_pool_info = pools
        .iter()
        .map(|pool| ReplicaPoolInfo::new(*pool))
        .collect();
}

fn set_current(cvc: &mut CStorVolumeConfig, pools: &[&str]) {
    cvc.status.pool_info = pools.iter().map(|pool| pool.to_string()).collect();
}

/// One update to judge: how the old and new objects differ from the seed's CVC, the volume's
/// phase, and the verdict (a rule and its exact message, or acceptance).
struct Case {
    name: &'static str,
    old: fn(&mut CStorVolumeConfig),
    new: fn(&mut CStorVolumeConfig),
    volume_phase: Option<CStorVolumePhase>,
    expected: Result<(), (AdmissionRule, &'static str)>,
}

fn unchanged(_: &mut CStorVolumeConfig) {}

fn check(case: &Case) {
    let mut old = seed_cvc();
    (case.old)(&mut old);
    let mut new = old.clone();
    (case.new)(&mut new);
    let actual = validate_cvc_update(&old, &new, &cluster(case.volume_phase))
        .map_err(|error| (error.rule, error.to_string()));
    let expected = case
        .expected
        .map_err(|(rule, message)| (rule, message.to_string()));
    assert_eq!(actual, expected, "case: {}", case.name);
    if let Err((rule, _)) = expected {
        assert_eq!(
            rule.is_cstor_rule(),
            (rule as u8) < (AdmissionRule::LastReplicaRemoval as u8),
            "case: {}",
            case.name
        );
    }
}

const HEALTHY: Option<CStorVolumePhase> = Some(CStorVolumePhase::Healthy);

#[test]
fn accepted_updates() {
    let cases = [
        Case {
            name: "scale up: add a third pool (step 1 of the walk-through)",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "the provisioner records its placement in the empty spec (second bind write)",
            old: |cvc| set_desired(cvc, &[]),
            new: |cvc| set_desired(cvc, &[POOL_B, POOL_A]),
            volume_phase: None,
            expected: Ok(()),
        },
        Case {
            name: "scale up by two pools in one edit (cStor allows it)",
            old: |cvc| {
                set_desired(cvc, &[POOL_A]);
                set_current(cvc, &[POOL_A]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "the controller records the scale-up in status",
            old: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            new: |cvc| set_current(cvc, &[POOL_A, POOL_B, POOL_C]),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "scale down: remove the old pool (step 2 of the walk-through)",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_C]),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "the controller records the scale-down in status, whatever the volume's phase",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
            },
            new: |cvc| set_current(cvc, &[POOL_A, POOL_C]),
            volume_phase: Some(CStorVolumePhase::Degraded),
            expected: Ok(()),
        },
        Case {
            name: "the provisioner binds a new volume, even if a chosen pool went offline since",
            old: |cvc| {
                cvc.status = CStorVolumeConfigStatus::default();
                set_desired(cvc, &[]);
            },
            new: |cvc| {
                cvc.status.phase = CStorVolumeConfigPhase::Bound;
                set_desired(cvc, &[POOL_A, "cspc-stripe-pool-off1"]);
                set_current(cvc, &[POOL_A, "cspc-stripe-pool-off1"]);
            },
            volume_phase: None,
            expected: Ok(()),
        },
        Case {
            name: "the same size written another way is no change",
            old: unchanged,
            new: |cvc| {
                cvc.spec.provision.capacity.storage = Quantity::from_bytes(5 << 30);
            },
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "the volume grows (spec.capacity may change, spec.provision may not)",
            old: unchanged,
            new: |cvc| cvc.spec.capacity.storage = Quantity::from_bytes_binary(10 << 30),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
        Case {
            name: "reordering the pools changes nothing",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_B, POOL_A]),
            volume_phase: HEALTHY,
            expected: Ok(()),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn cstor_rules_refuse_with_cstor_messages() {
    let cases = [
        Case {
            name: "replicaCount modified",
            old: unchanged,
            new: |cvc| cvc.spec.provision.replica_count = 3,
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ReplicaCountModified,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306 replicaCount got modified from 2 to 3",
            )),
        },
        Case {
            name: "provisioned capacity modified (cStor's message ends with a space)",
            old: unchanged,
            new: |cvc| cvc.spec.provision.capacity.storage = Quantity::from_bytes_binary(10 << 30),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ProvisionedCapacityModified,
                "cvc initial provisioned capacity `Spec.Provision.Capacity` is immutable, can't be modified ",
            )),
        },
        Case {
            name: "scaling while not Bound",
            old: |cvc| {
                cvc.status = CStorVolumeConfigStatus::default();
                set_desired(cvc, &[]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ScalingWhileNotBound,
                "Can't perform scaling of volume replicas when CVC is not in Bound state",
            )),
        },
        Case {
            name: "replacing a pool in one edit",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_C]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolReplacement,
                "volume replica migration directly by modifying pool names [cspc-stripe-pool-pn9p] is not yet supported",
            )),
        },
        Case {
            name: "more than one scale-down in one edit",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::MoreThanOneScaleDown,
                "Can't perform more than one replica scale down requested scale down count 2",
            )),
        },
        Case {
            name: "scaling again while a scale-up is in progress",
            old: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C, "cspc-stripe-pool-x9k2"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ScalingAlreadyInProgress,
                "scaling of CVC pvc-d1b26676-5035-4e5b-b564-68869b023306 is already in progress",
            )),
        },
        Case {
            name: "cancelling a scale-up in progress (cStor refuses this too)",
            old: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ScalingAlreadyInProgress,
                "scaling of CVC pvc-d1b26676-5035-4e5b-b564-68869b023306 is already in progress",
            )),
        },
        Case {
            name: "duplicate pool names in spec",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_B]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::DuplicatePoolNamesInSpec,
                "duplicate pool names [cspc-stripe-pool-6qkw cspc-stripe-pool-pn9p cspc-stripe-pool-pn9p] found under spec of cvc pvc-d1b26676-5035-4e5b-b564-68869b023306",
            )),
        },
        Case {
            name: "duplicate pool names in status",
            old: unchanged,
            new: |cvc| set_current(cvc, &[POOL_A, POOL_A]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::DuplicatePoolNamesInStatus,
                "duplicate pool names [cspc-stripe-pool-6qkw cspc-stripe-pool-6qkw] found under status of cvc pvc-d1b26676-5035-4e5b-b564-68869b023306",
            )),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn tandem_guards_refuse_with_clear_messages() {
    let cases = [
        Case {
            name: "removing the last replica (cStor allows 1 -> 0)",
            old: |cvc| {
                set_desired(cvc, &[POOL_A]);
                set_current(cvc, &[POOL_A]);
            },
            new: |cvc| set_desired(cvc, &[]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::LastReplicaRemoval,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: refusing to remove the last replica (pools [cspc-stripe-pool-6qkw]): spec.policy.replicaPoolInfo must keep at least one pool",
            )),
        },
        Case {
            name: "swapping the pool of a scale-up in progress (same count, so cStor misses it)",
            old: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-x9k2"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ChangeWhileScaling,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: a replica change is already in flight (spec.policy.replicaPoolInfo [cspc-stripe-pool-6qkw cspc-stripe-pool-pn9p cspc-stripe-pool-psz5], status.poolInfo [cspc-stripe-pool-6qkw cspc-stripe-pool-pn9p]); wait until status.poolInfo matches the spec before changing the pools again",
            )),
        },
        Case {
            name: "scale down while the last scale-up's new replica is still rebuilding",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
                cvc.status.conditions.push(Condition {
                    condition_type: CONDITION_SCALING_VOLUME_REPLICAS.to_string(),
                    message: "waiting for the new replica on cspc-stripe-pool-psz5".to_string(),
                    ..Condition::default()
                });
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_C]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::ChangeWhileScaling,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: the last replica change is not finished (waiting for the new replica on cspc-stripe-pool-psz5); wait until the ScalingVolumeReplicas condition is gone from its status",
            )),
        },
        Case {
            name: "scale down while the volume is Degraded",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_C]),
            volume_phase: Some(CStorVolumePhase::Degraded),
            expected: Err((
                AdmissionRule::ScaleDownWhileNotHealthy,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: scale down (removing pool cspc-stripe-pool-pn9p) is allowed only while CStorVolume pvc-d1b26676-5035-4e5b-b564-68869b023306 is Healthy; it is Degraded",
            )),
        },
        Case {
            name: "scale down with no CStorVolume",
            old: |cvc| {
                set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
                set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_C]),
            volume_phase: None,
            expected: Err((
                AdmissionRule::ScaleDownWhileNotHealthy,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: scale down (removing pool cspc-stripe-pool-pn9p) is allowed only while CStorVolume pvc-d1b26676-5035-4e5b-b564-68869b023306 is Healthy; there is no CStorVolume pvc-d1b26676-5035-4e5b-b564-68869b023306",
            )),
        },
        Case {
            name: "a pool that does not exist (a typo, openebs#2982)",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-psz6"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolNotFound,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-psz6 named in spec.policy.replicaPoolInfo does not exist (there is no CStorPoolInstance cspc-stripe-pool-psz6)",
            )),
        },
        Case {
            name: "a pool of another pool cluster",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-mirror-pool-x2k4"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolInOtherCluster,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-mirror-pool-x2k4 belongs to CStorPoolCluster cspc-mirror-pool, but the volume's replicas must be on pools of CStorPoolCluster cspc-stripe-pool",
            )),
        },
        Case {
            name: "a pool of no pool cluster",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "loose-pool"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolInOtherCluster,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool loose-pool belongs to no CStorPoolCluster (it has no openebs.io/cstor-pool-cluster label), but the volume's replicas must be on pools of CStorPoolCluster cspc-stripe-pool",
            )),
        },
        Case {
            name: "an OFFLINE pool",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-off1"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolNotOnline,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-off1 is OFFLINE, not ONLINE, so it cannot take a new replica",
            )),
        },
        Case {
            name: "a pool that has not reported yet",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-new1"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolNotOnline,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-new1 has not reported a phase yet, not ONLINE, so it cannot take a new replica",
            )),
        },
        Case {
            name: "a read-only pool",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-full"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolReadOnly,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-full is read-only (its used space reached its read-only threshold), so it cannot take a new replica; expand the pool or choose another",
            )),
        },
        Case {
            name: "a pool past its over-provisioning limit",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-prm1"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolHasNoRoom,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-prm1 cannot take a 5 GiB replica: 16 GiB of its 9.3 GiB are provisioned, and its pool cluster allows 200% (18.6 GiB) (tandem.io/over-provisioning-percentage); choose another pool, or free or add space",
            )),
        },
        Case {
            name: "a pool with less than its minimum free space",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-use1"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolHasNoRoom,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-use1 cannot take a 5 GiB replica: 1.4 GiB of its 9.3 GiB are free, and its pool cluster keeps 20% (1.9 GiB) free (tandem.io/minimum-free-percentage); choose another pool, or free or add space",
            )),
        },
        Case {
            name: "a pool on a cordoned node",
            old: unchanged,
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, "cspc-stripe-pool-crd1"]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::PoolCordoned,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-crd1 is on node node4, which is cordoned (tandem node uncordon node4), so it cannot take a new replica",
            )),
        },
        Case {
            name: "a volume that does not say its pool cluster",
            old: |cvc| {
                cvc.metadata.labels.clear();
            },
            new: |cvc| set_desired(cvc, &[POOL_A, POOL_B, POOL_C]),
            volume_phase: HEALTHY,
            expected: Err((
                AdmissionRule::VolumeClusterUnknown,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306 has no openebs.io/cstor-pool-cluster label, so the pools in spec.policy.replicaPoolInfo cannot be checked against the volume's CStorPoolCluster",
            )),
        },
        Case {
            name: "the provisioner may not bind a volume to a pool that does not exist",
            old: |cvc| {
                cvc.status = CStorVolumeConfigStatus::default();
                set_desired(cvc, &[]);
            },
            new: |cvc| {
                cvc.status.phase = CStorVolumeConfigPhase::Bound;
                set_desired(cvc, &[POOL_A, "cspc-stripe-pool-gone"]);
                set_current(cvc, &[POOL_A, "cspc-stripe-pool-gone"]);
            },
            volume_phase: None,
            expected: Err((
                AdmissionRule::PoolNotFound,
                "cvc pvc-d1b26676-5035-4e5b-b564-68869b023306: pool cspc-stripe-pool-gone named in spec.policy.replicaPoolInfo does not exist (there is no CStorPoolInstance cspc-stripe-pool-gone)",
            )),
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn cstor_rules_come_before_tandem_guards() {
    // Removing two pools at once from a Degraded volume breaks a cStor rule and a Tandem guard;
    // cStor's message wins, as its webhook would answer first.
    check(&Case {
        name: "two removals while Degraded",
        old: |cvc| {
            set_desired(cvc, &[POOL_A, POOL_B, POOL_C]);
            set_current(cvc, &[POOL_A, POOL_B, POOL_C]);
        },
        new: |cvc| set_desired(cvc, &[POOL_A]),
        volume_phase: Some(CStorVolumePhase::Degraded),
        expected: Err((
            AdmissionRule::MoreThanOneScaleDown,
            "Can't perform more than one replica scale down requested scale down count 2",
        )),
    });
}

/// One removal of pool B: its name, the pools before, each replica's phase, the verdict.
type Removal = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, CStorVolumeReplicaPhase)],
    Result<(), String>,
);

/// Removing a replica that is not Healthy (the seed's replace-a-dead-node flow, second edit):
/// allowed exactly when every other replica is Healthy and at least CF of them remain, whatever
/// the volume's phase (it is Degraded while the dead replica is a member).
#[test]
fn a_replica_that_is_not_healthy_is_removed_only_when_the_others_are_healthy_and_enough_remain() {
    use CStorVolumeReplicaPhase::{Degraded, Healthy, Offline, Rebuilding};
    const POOL_D: &str = "cspc-stripe-pool-full"; // any fourth pool name
    let removing_b = |consistency_factor: u32, phase: &str| {
        format!(
            "cvc {VOLUME}: removing pool {POOL_B}, whose replica is {phase} (not Healthy), is \
             allowed only when every other replica is Healthy and at least {consistency_factor} \
             (the volume's consistency factor) of them remain"
        )
    };
    let table: [Removal; 6] = [
        (
            "a dead replica replaced: the new one is Healthy, three of four remain",
            &[POOL_A, POOL_B, POOL_C, POOL_D],
            &[
                (POOL_A, Healthy),
                (POOL_B, Offline),
                (POOL_C, Healthy),
                (POOL_D, Healthy),
            ],
            Ok(()),
        ),
        (
            "a dead replica dropped from three: two remain, the consistency factor of three",
            &[POOL_A, POOL_B, POOL_C],
            &[(POOL_A, Healthy), (POOL_B, Offline), (POOL_C, Healthy)],
            Ok(()),
        ),
        (
            "the replacement is still being rebuilt",
            &[POOL_A, POOL_B, POOL_C, POOL_D],
            &[
                (POOL_A, Healthy),
                (POOL_B, Offline),
                (POOL_C, Healthy),
                (POOL_D, Rebuilding),
            ],
            Err(format!(
                "{}; the replica on pool {POOL_D} is Rebuilding",
                removing_b(3, "Offline")
            )),
        ),
        (
            "another replica is Degraded too",
            &[POOL_A, POOL_B, POOL_C],
            &[(POOL_A, Degraded), (POOL_B, Offline), (POOL_C, Healthy)],
            Err(format!(
                "{}; the replica on pool {POOL_A} is Degraded",
                removing_b(2, "Offline")
            )),
        ),
        (
            "a dead replica of two: one would remain, fewer than the consistency factor",
            &[POOL_A, POOL_B],
            &[(POOL_A, Healthy), (POOL_B, Offline)],
            Err(format!(
                "{}; only 1 would remain: add a pool on a live node to \
                 spec.policy.replicaPoolInfo first, and remove {POOL_B} once its replica is \
                 Healthy",
                removing_b(2, "Offline")
            )),
        ),
        (
            "another pool has no replica",
            &[POOL_A, POOL_B, POOL_C],
            &[(POOL_A, Healthy), (POOL_B, Degraded)],
            Err(format!(
                "{}; pool {POOL_C} has no replica",
                removing_b(2, "Degraded")
            )),
        ),
    ];
    for (name, pools, phases, expected) in table {
        let mut old = seed_cvc();
        set_desired(&mut old, pools);
        set_current(&mut old, pools);
        let mut new = old.clone();
        let kept: Vec<&str> = pools.iter().copied().filter(|p| *p != POOL_B).collect();
        set_desired(&mut new, &kept);
        let mut snapshot = cluster(Some(CStorVolumePhase::Degraded));
        for (pool, phase) in phases {
            snapshot = snapshot.with_replica_phase(VOLUME, pool, *phase);
        }
        let actual = validate_cvc_update(&old, &new, &snapshot).map_err(|error| {
            assert_eq!(error.rule, AdmissionRule::UnhealthyReplicaRemoval, "{name}");
            assert!(!error.rule.is_cstor_rule());
            error.message
        });
        assert_eq!(actual, expected, "case: {name}");
    }
}
