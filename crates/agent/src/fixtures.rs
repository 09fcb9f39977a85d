//! Objects for the plan tests: CVRs, volumes, configs and target states built in one line each.

use std::collections::BTreeMap;

use tandem_core::{
    Generation, Incarnation, Member, Membership, ReplicaId, ReplicaMode, VolumeStatus,
};
use tandem_dataplane::target::TargetStatus;
use tandem_objects::{
    CStorVolume, CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase, ObjectMeta,
    Quantity, ReplicaPoolInfo, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME, ANNOTATION_INCARNATION,
    ANNOTATION_TARGET_GENERATION, ANNOTATION_TARGET_NODE, FINALIZER_CSTOR_VOLUME_REPLICA,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_PERSISTENT_VOLUME,
};

/// The CVR of `volume` in `pool` (named `<volume>-<pool>`, uid `uid-<volume>-<pool>`, 1 GiB,
/// with the agent's finalizer), recording `replica_id` ("" for none).
pub fn cvr(volume: &str, pool: &str, replica_id: &str) -> CStorVolumeReplica {
    let name = format!("{volume}-{pool}");
    let mut metadata = ObjectMeta::named(name.clone())
        .with_label(LABEL_CSTOR_POOL_INSTANCE_NAME, pool)
        .with_label(LABEL_PERSISTENT_VOLUME, volume);
    metadata.uid = format!("uid-{name}");
    metadata
        .finalizers
        .push(FINALIZER_CSTOR_VOLUME_REPLICA.to_string());
    let mut replica = CStorVolumeReplica::new(metadata, Default::default());
    replica.spec.capacity = Quantity::parse("1Gi").expect("a quantity");
    replica.spec.replica_id = replica_id.to_string();
    replica
}

pub fn phase(mut cvr: CStorVolumeReplica, phase: CStorVolumeReplicaPhase) -> CStorVolumeReplica {
    cvr.status.phase = phase;
    cvr
}

pub fn deleted(mut cvr: CStorVolumeReplica) -> CStorVolumeReplica {
    cvr.metadata.deletion_timestamp = "2026-01-01T00:00:00Z".to_string();
    cvr
}

pub fn with_incarnation(mut cvr: CStorVolumeReplica, incarnation: u64) -> CStorVolumeReplica {
    cvr.metadata
        .annotations
        .insert(ANNOTATION_INCARNATION.to_string(), incarnation.to_string());
    cvr
}

/// The CVR's pool is on `node`.
pub fn on_node(mut cvr: CStorVolumeReplica, node: &str) -> CStorVolumeReplica {
    cvr.metadata.annotations.insert(
        ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME.to_string(),
        node.to_string(),
    );
    cvr
}

/// A CV of 1 GiB wanting `replicas` replicas, its target on `node` at `generation` (0: none).
pub fn volume(name: &str, node: &str, generation: u64, replicas: u32) -> CStorVolume {
    let mut metadata = ObjectMeta::named(name);
    metadata
        .annotations
        .insert(ANNOTATION_TARGET_NODE.to_string(), node.to_string());
    if generation > 0 {
        metadata.annotations.insert(
            ANNOTATION_TARGET_GENERATION.to_string(),
            generation.to_string(),
        );
    }
    let mut volume = CStorVolume::new(metadata, Default::default());
    volume.spec.capacity = Quantity::parse("1Gi").expect("a quantity");
    volume.spec.desired_replication_factor = replicas;
    volume
}

/// The CV records these members (replica id -> incarnation).
pub fn known(mut volume: CStorVolume, members: &[(u64, u64)]) -> CStorVolume {
    volume.spec.replica_details.known_replicas = members
        .iter()
        .map(|(id, incarnation)| (id.to_string(), incarnation.to_string()))
        .collect();
    volume
}

/// A CVC whose `replicaPoolInfo` lists `pools`.
pub fn config(volume: &str, pools: &[&str]) -> CStorVolumeConfig {
    let mut config = CStorVolumeConfig::new(ObjectMeta::named(volume), Default::default());
    config.spec.policy.replica_pool_info = pools
        .iter()
        .map(|pool| ReplicaPoolInfo::new(*pool))
        .collect();
    config
}

/// A live target whose members are `(replica id, trusted)`, every one Healthy.
pub fn target(members: &[(u64, bool)]) -> TargetStatus {
    let members: Vec<Member> = members
        .iter()
        .map(|(id, trusted)| Member {
            replica: ReplicaId(*id),
            incarnation: trusted.then_some(Incarnation(*id + 1000)),
            trusted: *trusted,
        })
        .collect();
    TargetStatus {
        generation: Generation(1),
        status: VolumeStatus::Healthy,
        modes: members
            .iter()
            .map(|member| (member.replica, ReplicaMode::Healthy))
            .collect::<BTreeMap<_, _>>(),
        membership: Membership { members },
        resync: None,
        resync_history: Vec::new(),
        fenced: false,
        no_space: false,
    }
}
