//! Test fixtures: the seed's cluster (migration.md) as objects at a fixed `NOW`, and the golden
//! file check the table and describe tests share.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tandem_objects::{
    BlockDevice, CStorPoolCluster, CStorPoolClusterSpec, CStorPoolInstance, CStorPoolInstancePhase,
    CStorPoolInstanceSpec, CStorVolume, CStorVolumeConfig, CStorVolumeConfigPhase,
    CStorVolumePhase, CStorVolumeReplica, CStorVolumeReplicaPhase, Event, EventSource, EventType,
    Object, ObjectMeta, ObjectReference, OwnerReference, PoolConfig, PoolSpec, Quantity, RaidGroup,
    ReplicaPoolInfo, StorageCapacity, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CSTOR_POOL_CLUSTER, LABEL_CSTOR_POOL_INSTANCE_NAME,
    LABEL_CSTOR_VOLUME_NAME, LABEL_HOSTNAME, LABEL_PERSISTENT_VOLUME,
};

/// Asserts that `$actual` equals the golden file `golden/$file`, or rewrites the file when
/// `TANDEM_UPDATE_GOLDEN=1`.
macro_rules! assert_golden {
    ($file:literal, $actual:expr) => {
        $crate::output::fixtures::check_golden(
            $file,
            include_str!(concat!("golden/", $file)),
            &$actual,
        )
    };
}
pub(crate) use assert_golden;

pub fn check_golden(file: &str, committed: &str, actual: &str) {
    if std::env::var("TANDEM_UPDATE_GOLDEN").is_ok_and(|value| value == "1") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/output/golden")
            .join(file);
        if let Err(error) = std::fs::write(&path, actual) {
            panic!("cannot write {}: {error}", path.display());
        }
        return;
    }
    assert!(
        committed == actual,
        "output differs from golden/{file} (rerun with TANDEM_UPDATE_GOLDEN=1 to accept it)\n\
         --- expected\n{committed}--- actual\n{actual}---"
    );
}

pub const VOLUME: &str = "pvc-d1b26676-5035-4e5b-b564-68869b023306";
pub const CSPC: &str = "cspc-stripe-pool";

/// 2026-11-29T10:00:00Z.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_946_400)
}

/// The timestamp `seconds` before [`now`].
pub fn ago(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(now() - Duration::from_secs(seconds)).to_string()
}

fn size(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|error| panic!("fixture size {text:?}: {error}"))
}

fn meta(name: &str, uid: &str, resource_version: u32, age_seconds: u64) -> ObjectMeta {
    ObjectMeta {
        uid: uid.to_string(),
        resource_version: resource_version.to_string(),
        creation_timestamp: ago(age_seconds),
        ..ObjectMeta::named(name)
    }
}

/// (CSPI name, node, ALLOCATED, replicas held), in the seed's order.
const POOLS: [(&str, &str, &str, u32); 3] = [
    ("cspc-stripe-pool-6qkw", "e2e1-node1", "81500", 1),
    ("cspc-stripe-pool-pn9p", "e2e1-node3", "84500", 1),
    ("cspc-stripe-pool-psz5", "e2e1-node2", "56k", 0),
];

fn pool_config() -> PoolConfig {
    PoolConfig {
        data_raid_group_type: "stripe".to_string(),
        ro_threshold_limit: Some(85),
        ..PoolConfig::default()
    }
}

pub fn cspc() -> Object {
    let pools = POOLS
        .iter()
        .enumerate()
        .map(|(index, (_, node, _, _))| PoolSpec {
            node_selector: [(LABEL_HOSTNAME.to_string(), node.to_string())].into(),
            data_raid_groups: vec![RaidGroup {
                block_devices: vec![BlockDevice {
                    block_device_name: format!("blockdevice-0{index}a7c3e1"),
                    ..BlockDevice::default()
                }],
            }],
            pool_config: pool_config(),
            ..PoolSpec::default()
        })
        .collect();
    let mut cspc = CStorPoolCluster::new(
        meta(CSPC, "8d1c7f3e-54a2-4b4e-9d0e-2f1c3a5b7d90", 41, 253),
        CStorPoolClusterSpec { pools },
    );
    cspc.status.desired_instances = 3;
    cspc.status.provisioned_instances = 3;
    cspc.status.healthy_instances = 3;
    cspc.into()
}

pub fn cspis() -> Vec<Object> {
    POOLS
        .iter()
        .enumerate()
        .map(|(index, (name, node, allocated, replicas))| {
            let metadata = meta(
                name,
                &format!("3f6c1a2b-0000-4000-8000-00000000000{index}"),
                60,
                21 * 60,
            )
            .with_label(LABEL_CSTOR_POOL_CLUSTER, CSPC)
            .with_label(LABEL_HOSTNAME, *node);
            let spec = CStorPoolInstanceSpec {
                host_name: node.to_string(),
                pool_config: pool_config(),
                ..CStorPoolInstanceSpec::default()
            };
            let mut cspi = CStorPoolInstance::new(metadata, spec);
            cspi.status.phase = CStorPoolInstancePhase::Online;
            cspi.status.capacity.used = size(allocated);
            cspi.status.capacity.free = size("9630M");
            cspi.status.capacity.total = size("10G");
            cspi.status.provisioned_replicas = *replicas;
            cspi.status.healthy_replicas = *replicas;
            cspi.into()
        })
        .collect()
}

pub fn cvc() -> Object {
    let mut metadata = meta(VOLUME, "d1b26676-5035-4e5b-b564-68869b023306", 12, 356)
        .with_label(LABEL_CSTOR_POOL_CLUSTER, CSPC);
    metadata
        .annotations
        .insert("openebs.io/volumeID".to_string(), VOLUME.to_string());
    let mut cvc = CStorVolumeConfig::new(metadata, Default::default());
    cvc.spec.capacity = StorageCapacity::new(size("5Gi"));
    cvc.spec.provision.capacity = StorageCapacity::new(size("5Gi"));
    cvc.spec.provision.replica_count = 2;
    cvc.spec.policy.replica_pool_info = vec![
        ReplicaPoolInfo::new(POOLS[0].0),
        ReplicaPoolInfo::new(POOLS[1].0),
    ];
    cvc.status.phase = CStorVolumeConfigPhase::Bound;
    cvc.status.pool_info = vec![POOLS[0].0.to_string(), POOLS[1].0.to_string()];
    cvc.status.capacity = Some(StorageCapacity::new(size("5Gi")));
    cvc.into()
}

pub fn cv() -> Object {
    let metadata = meta(VOLUME, "6b0e2c4d-8f1a-4e3b-a5c7-9d2f4b6e8a10", 30, 350)
        .with_label(LABEL_PERSISTENT_VOLUME, VOLUME);
    let mut cv = CStorVolume::new(metadata, Default::default());
    cv.spec.capacity = size("5Gi");
    cv.spec.target_ip = "10.96.120.7".to_string();
    cv.spec.target_port = "3260".to_string();
    cv.spec.replication_factor = 2;
    cv.spec.consistency_factor = 2;
    cv.spec.desired_replication_factor = 2;
    cv.status.phase = CStorVolumePhase::Healthy;
    cv.status.capacity = size("5Gi");
    cv.into()
}

pub fn cvrs() -> Vec<Object> {
    POOLS[..2]
        .iter()
        .map(|(pool, node, _, _)| {
            let mut metadata = meta(
                &format!("{VOLUME}-{pool}"),
                "0c9e8d7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f",
                88,
                15 * 3600 + 20 * 60,
            )
            .with_label(LABEL_CSTOR_POOL_INSTANCE_NAME, *pool)
            .with_label(LABEL_CSTOR_VOLUME_NAME, VOLUME)
            .with_label(LABEL_PERSISTENT_VOLUME, VOLUME);
            metadata.annotations.insert(
                ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME.to_string(),
                node.to_string(),
            );
            metadata.finalizers = vec![FINALIZER_CSTOR_VOLUME_REPLICA.to_string()];
            metadata.owner_references = vec![OwnerReference {
                api_version: "cstor.openebs.io/v1".to_string(),
                kind: "CStorVolume".to_string(),
                name: VOLUME.to_string(),
                uid: "6b0e2c4d-8f1a-4e3b-a5c7-9d2f4b6e8a10".to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }];
            let mut cvr = CStorVolumeReplica::new(metadata, Default::default());
            cvr.spec.target_ip = "10.96.120.7".to_string();
            cvr.spec.capacity = size("5Gi");
            cvr.spec.replica_id = "6061958727369563311".to_string();
            cvr.status.phase = CStorVolumeReplicaPhase::Healthy;
            cvr.status.capacity.used = size("1.47G");
            cvr.status.capacity.total = size("1.26G");
            cvr.into()
        })
        .collect()
}

fn event(
    name_suffix: &str,
    event_type: EventType,
    involved: (&str, &str),
    message: &str,
    count: u32,
    first_seconds_ago: u64,
    last_seconds_ago: u64,
) -> Event {
    let (kind, name) = involved;
    Event {
        metadata: ObjectMeta::named(format!("{name}.{name_suffix}")),
        event_type,
        reason: "ScalingVolumeReplicas".to_string(),
        message: message.to_string(),
        involved_object: ObjectReference {
            api_version: "cstor.openebs.io/v1".to_string(),
            kind: kind.to_string(),
            namespace: "openebs".to_string(),
            name: name.to_string(),
            ..ObjectReference::default()
        },
        source: EventSource {
            component: "cstorvolumeclaim-controller".to_string(),
            host: String::new(),
        },
        count,
        first_timestamp: ago(first_seconds_ago),
        last_timestamp: ago(last_seconds_ago),
    }
}

/// The events on the CVC during the seed's migration; in the store's (name) order, not by time.
pub fn cvc_events() -> Vec<Event> {
    let cvc = ("CStorVolumeConfig", VOLUME);
    vec![
        event(
            "17a3f0c2d4e5a001",
            EventType::Warning,
            cvc,
            "Scaling down volume replicas from 3 to 2 is in progress",
            2,
            64 * 60,
            4,
        ),
        event(
            "17a3f0c2d4e5a002",
            EventType::Normal,
            cvc,
            "successfully scaled volume replicas to 2",
            2,
            64 * 60,
            4,
        ),
        event(
            "17a3f0c2d4e5a000",
            EventType::Normal,
            cvc,
            "successfully scaled volume replicas to 3",
            2,
            15 * 3600 + 10 * 60,
            65 * 60,
        ),
    ]
}
