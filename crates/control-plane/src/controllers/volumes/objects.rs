//! The objects the volume controller makes, named and labelled as cStor makes them: the
//! CStorVolume of a config, its replicas, and the placement written back into the config.

use std::collections::BTreeMap;

use tandem_objects::capacity::ANNOTATION_PROVISIONING;
use tandem_objects::{
    CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase,
    CStorVolumeReplicaSpec, CStorVolumeSpec, Condition, Kind, ObjectMeta, ObjectReference,
    OwnerReference, ReplicaPoolInfo, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    CONDITION_SCALING_VOLUME_REPLICAS, CSTOR_API_VERSION, FINALIZER_CSTOR_VOLUME_REPLICA,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_CSTOR_POOL_INSTANCE_UID, LABEL_CSTOR_VOLUME_NAME,
    LABEL_PERSISTENT_VOLUME, LABEL_VERSION,
};

pub(crate) fn new_volume(config: &CStorVolumeConfig) -> CStorVolume {
    let replicas = config.spec.provision.replica_count;
    let mut volume = CStorVolume::new(
        ObjectMeta {
            name: config.name().to_string(),
            namespace: config.metadata.namespace.clone(),
            labels: labels(&[
                (LABEL_PERSISTENT_VOLUME, config.name()),
                (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
            ]),
            owner_references: vec![owner(
                Kind::CStorVolumeConfig,
                config.name(),
                &config.metadata.uid,
            )],
            ..ObjectMeta::default()
        },
        CStorVolumeSpec {
            capacity: config.spec.capacity.storage,
            replication_factor: replicas,
            consistency_factor: replicas / 2 + 1,
            desired_replication_factor: replicas,
            ..CStorVolumeSpec::default()
        },
    );
    volume.status.capacity = config.spec.capacity.storage;
    volume
}

/// A replica of `config`'s volume on `pool`, named `<volume>-<pool>` as in cStor.
pub(super) fn new_replica(
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    pool: &CStorPoolInstance,
    phase: CStorVolumeReplicaPhase,
) -> CStorVolumeReplica {
    let name = format!("{}-{}", config.name(), pool.name());
    let mut metadata = ObjectMeta {
        name: name.clone(),
        namespace: config.metadata.namespace.clone(),
        labels: labels(&[
            (LABEL_CSTOR_POOL_INSTANCE_NAME, pool.name()),
            (LABEL_CSTOR_POOL_INSTANCE_UID, &pool.metadata.uid),
            (LABEL_CSTOR_VOLUME_NAME, config.name()),
            (LABEL_PERSISTENT_VOLUME, config.name()),
            (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
        ]),
        finalizers: vec![FINALIZER_CSTOR_VOLUME_REPLICA.to_string()],
        owner_references: vec![owner(
            Kind::CStorVolume,
            volume.name(),
            &volume.metadata.uid,
        )],
        ..ObjectMeta::default()
    };
    metadata.annotations.insert(
        ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME.to_string(),
        pool.spec.host_name.clone(),
    );
    // A thick volume's replicas reserve their space (the agent reads it here).
    if let Some(provisioning) = config.metadata.annotation(ANNOTATION_PROVISIONING) {
        (metadata.annotations).insert(
            ANNOTATION_PROVISIONING.to_string(),
            provisioning.to_string(),
        );
    }
    let mut replica = CStorVolumeReplica::new(
        metadata,
        CStorVolumeReplicaSpec {
            capacity: config.spec.capacity.storage,
            replica_id: replica_id(&name),
            zvol_workers: config.spec.policy.replica.zvol_workers.clone(),
            compression: config.spec.policy.replica.compression.clone(),
            block_size: config.spec.policy.provision.block_size,
            ..CStorVolumeReplicaSpec::default()
        },
    );
    replica.status.phase = phase;
    replica
}

/// cStor's replica id: xxhash64 of the JSON string of `<volume>-<pool>`, in decimal.
fn replica_id(replica_name: &str) -> String {
    let json = serde_json::Value::String(replica_name.to_string()).to_string();
    xxhash_rust::xxh64::xxh64(json.as_bytes(), 0).to_string()
}

/// cStor's `addReplicaPoolInfo`: the pools actually used go into the spec too, so the user
/// edits the real placement. Also links the CVC to its CV.
pub(super) fn with_placement(
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> CStorVolumeConfig {
    let mut placed = config.clone();
    placed.spec.policy.replica_pool_info = config
        .status
        .pool_info
        .iter()
        .map(ReplicaPoolInfo::new)
        .collect();
    placed.spec.cstor_volume_ref = Some(ObjectReference {
        api_version: CSTOR_API_VERSION.to_string(),
        kind: Kind::CStorVolume.name().to_string(),
        namespace: volume.metadata.namespace.clone(),
        name: volume.name().to_string(),
        uid: volume.metadata.uid.clone(),
        resource_version: String::new(),
    });
    placed
}

pub(super) fn has_scaling_condition(config: &CStorVolumeConfig) -> bool {
    config
        .status
        .conditions
        .iter()
        .any(|condition| condition.condition_type == CONDITION_SCALING_VOLUME_REPLICAS)
}

pub(super) fn set_scaling_condition(
    config: &mut CStorVolumeConfig,
    now: &str,
    reason: &str,
    message: &str,
) {
    clear_scaling_condition(config);
    config.status.conditions.push(Condition {
        condition_type: CONDITION_SCALING_VOLUME_REPLICAS.to_string(),
        status: "True".to_string(),
        last_transition_time: now.to_string(),
        last_update_time: now.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        ..Condition::default()
    });
}

pub(super) fn clear_scaling_condition(config: &mut CStorVolumeConfig) {
    config
        .status
        .conditions
        .retain(|condition| condition.condition_type != CONDITION_SCALING_VOLUME_REPLICAS);
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn owner(kind: Kind, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: CSTOR_API_VERSION.to_string(),
        kind: kind.name().to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
