//! Test fixtures for the controllers' plans: small builders of observed objects, and one line
//! of text per action, so that a plan's test reads as a table of "given, expect".

use rand::rngs::StdRng;
use rand::SeedableRng;
use tandem_client::NodeStatus;
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorPoolInstancePhase, CStorPoolInstanceSpec,
    CStorVolume, CStorVolumeConfig, CStorVolumeConfigPhase, CStorVolumeReplica,
    CStorVolumeReplicaPhase, CStorVolumeSpec, Event, Kind, Object, ObjectMeta, ObjectReference,
    PoolSpec, Quantity, ReplicaPoolInfo, StorageCapacity, ANNOTATION_TARGET_NODE,
    LABEL_CSTOR_POOL_CLUSTER, LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_HOSTNAME,
    LABEL_PERSISTENT_VOLUME,
};

use crate::controllers::execute::{Action, Version};
use crate::controllers::observe::Observed;

pub(crate) const NS: &str = "openebs";
pub(crate) const CLUSTER: &str = "cspc";
pub(crate) const NOW: &str = "2026-12-02T11:00:00Z";
/// [`NOW`] in milliseconds since the Unix epoch.
pub(crate) const NOW_MS: u64 = 1_796_209_200_000;

/// The seeded randomness of every plan under test.
pub(crate) fn random() -> StdRng {
    StdRng::seed_from_u64(9)
}

/// An observed state past the agents' grace period, at [`NOW`].
pub(crate) fn observed() -> Observed {
    Observed {
        past_agent_grace: true,
        now: NOW.to_string(),
        now_ms: NOW_MS,
        ..Observed::default()
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: NS.to_string(),
        uid: format!("uid-{name}"),
        resource_version: "7".to_string(),
        ..ObjectMeta::default()
    }
}

/// A pool cluster [`CLUSTER`] with one pool on each of `nodes`.
pub(crate) fn cluster(nodes: &[&str]) -> CStorPoolCluster {
    let mut cluster = CStorPoolCluster::new(meta(CLUSTER), Default::default());
    cluster.spec.pools = nodes
        .iter()
        .map(|node| PoolSpec {
            node_selector: [(LABEL_HOSTNAME.to_string(), node.to_string())].into(),
            ..PoolSpec::default()
        })
        .collect();
    cluster
}

/// A pool of [`CLUSTER`] on `node`.
pub(crate) fn pool(name: &str, node: &str, phase: CStorPoolInstancePhase) -> CStorPoolInstance {
    let metadata = meta(name)
        .with_label(LABEL_CSTOR_POOL_CLUSTER, CLUSTER)
        .with_label(LABEL_HOSTNAME, node);
    let mut pool = CStorPoolInstance::new(
        metadata,
        CStorPoolInstanceSpec {
            host_name: node.to_string(),
            ..CStorPoolInstanceSpec::default()
        },
    );
    pool.status.phase = phase;
    // 10G, nearly empty (as the seed's pools).
    pool.status.capacity.total = Quantity::from_bytes(10_000_000_000);
    pool.status.capacity.used = Quantity::from_bytes(1 << 20);
    pool
}

/// A Pending CVC of [`CLUSTER`] for `replicas` replicas of 5Gi.
pub(crate) fn cvc(name: &str, replicas: u32) -> CStorVolumeConfig {
    let capacity = StorageCapacity::new(Quantity::parse("5Gi").expect("a quantity"));
    let mut config = CStorVolumeConfig::new(
        meta(name).with_label(LABEL_CSTOR_POOL_CLUSTER, CLUSTER),
        Default::default(),
    );
    config.spec.capacity = capacity.clone();
    config.spec.provision.capacity = capacity;
    config.spec.provision.replica_count = replicas;
    config
}

/// A Bound CVC on `pools` (status), whose spec asks for `desired`, with its volume linked.
pub(crate) fn bound(name: &str, pools: &[&str], desired: &[&str]) -> CStorVolumeConfig {
    let mut config = cvc(name, u32::try_from(pools.len()).expect("a few pools"));
    config.status.phase = CStorVolumeConfigPhase::Bound;
    config.status.capacity = Some(config.spec.capacity.clone());
    config.status.pool_info = pools.iter().map(|pool| pool.to_string()).collect();
    config.spec.policy.replica_pool_info =
        desired.iter().copied().map(ReplicaPoolInfo::new).collect();
    config.spec.cstor_volume_ref = Some(ObjectReference {
        api_version: tandem_objects::CSTOR_API_VERSION.to_string(),
        kind: "CStorVolume".to_string(),
        namespace: NS.to_string(),
        name: name.to_string(),
        uid: format!("uid-{name}"),
        resource_version: String::new(),
    });
    config
}

/// The CStorVolume of a config, for `replicas` replicas.
pub(crate) fn cv(name: &str, replicas: u32) -> CStorVolume {
    CStorVolume::new(
        meta(name).with_label(LABEL_PERSISTENT_VOLUME, name),
        CStorVolumeSpec {
            replication_factor: replicas,
            consistency_factor: replicas / 2 + 1,
            desired_replication_factor: replicas,
            ..CStorVolumeSpec::default()
        },
    )
}

/// A CV whose target was placed on `node` at `address`.
pub(crate) fn placed_cv(name: &str, replicas: u32, node: &str, address: &str) -> CStorVolume {
    let mut volume = cv(name, replicas);
    volume
        .metadata
        .annotations
        .insert(ANNOTATION_TARGET_NODE.to_string(), node.to_string());
    let (ip, port) = address.rsplit_once(':').expect("ip:port");
    volume.spec.target_ip = ip.to_string();
    volume.spec.target_port = port.to_string();
    volume.spec.target_portal = address.to_string();
    volume
}

/// The replica of `volume` on `pool`, with replica id `id-<pool>`.
pub(crate) fn replica(
    volume: &str,
    pool: &str,
    phase: CStorVolumeReplicaPhase,
) -> CStorVolumeReplica {
    let metadata = meta(&format!("{volume}-{pool}"))
        .with_label(LABEL_PERSISTENT_VOLUME, volume)
        .with_label(LABEL_CSTOR_POOL_INSTANCE_NAME, pool);
    let mut replica = CStorVolumeReplica::new(metadata, Default::default());
    replica.spec.replica_id = format!("id-{pool}");
    replica.status.phase = phase;
    replica
}

/// A node agent that last reported `last_seen_ms` ago, serving NBD at `nbd_address` (or not,
/// if empty).
pub(crate) fn node(name: &str, ready: bool, nbd_address: &str, last_seen_ms: u64) -> NodeStatus {
    NodeStatus {
        node: name.to_string(),
        address: String::new(),
        nbd_address: nbd_address.to_string(),
        target_address: String::new(),
        metrics_address: String::new(),
        nbd_tls: false,
        metrics_tls: false,
        last_seen_ms,
        ready,
    }
}

/// An event about a CVC, last seen at `last_timestamp`.
pub(crate) fn event(cvc: &str, reason: &str, message: &str, last_timestamp: &str) -> Event {
    Event {
        metadata: meta(&format!("{cvc}.{last_timestamp}")),
        reason: reason.to_string(),
        message: message.to_string(),
        involved_object: ObjectReference {
            kind: Kind::CStorVolumeConfig.name().to_string(),
            namespace: NS.to_string(),
            name: cvc.to_string(),
            ..ObjectReference::default()
        },
        last_timestamp: last_timestamp.to_string(),
        ..Event::default()
    }
}

/// One line per action (log lines left out): what is written, and the fields the controllers
/// decide.
pub(crate) fn describe(actions: &[Action]) -> Vec<String> {
    actions.iter().filter_map(describe_one).collect()
}

fn describe_one(action: &Action) -> Option<String> {
    let line = match action {
        Action::Log(_) => return None,
        Action::Create(object) => format!("create {}", describe_object(object)),
        Action::Update { object, at } => {
            let at = match at {
                Version::Read => "",
                Version::OfPreviousWrite => " (at the version just written)",
            };
            format!("update {}{at}", describe_object(object))
        }
        Action::UpdateStatus(object) => format!("status {}", describe_status(object)),
        Action::Delete { kind, name, .. } => format!("delete {} {name}", kind.name()),
        Action::Record {
            by,
            about,
            event_type,
            reason,
            message,
            unless_newest_says_the_same,
        } => {
            let unless = if *unless_newest_says_the_same {
                " unless its newest says the same"
            } else {
                ""
            };
            format!(
                "event {event_type} {reason} by {by:?} about {} {}{unless}: {message}",
                about.kind().name(),
                about.name()
            )
        }
    };
    Some(line)
}

fn describe_object(object: &Object) -> String {
    match object {
        Object::CStorPoolInstance(pool) => format!(
            "pool of {} on {}",
            pool.pool_cluster_name().unwrap_or("?"),
            pool.spec.host_name
        ),
        Object::CStorVolumeReplica(replica) => format!(
            "replica {} ({:?}, owner {})",
            replica.name(),
            replica.status.phase,
            replica
                .metadata
                .owner_references
                .iter()
                .map(|owner| format!("{} {}", owner.kind, owner.uid))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Object::CStorVolume(volume) => format!(
            "cv {}: drf {}, target {} at {}{}",
            volume.name(),
            volume.spec.desired_replication_factor,
            volume
                .metadata
                .annotation(ANNOTATION_TARGET_NODE)
                .unwrap_or("-"),
            volume.spec.target_portal,
            volume
                .metadata
                .annotation("tandem.io/failover")
                .map_or(String::new(), |failover| format!(", failover {failover}"))
        ),
        Object::CStorVolumeConfig(config) => format!(
            "cvc {}: pools [{}], volume {}",
            config.name(),
            config.desired_pool_names().join(", "),
            config
                .spec
                .cstor_volume_ref
                .as_ref()
                .map_or("-".to_string(), |volume| format!(
                    "{} {}",
                    volume.name, volume.uid
                ))
        ),
        other => format!("{} {}", other.kind().name(), other.name()),
    }
}

fn describe_status(object: &Object) -> String {
    match object {
        Object::CStorPoolCluster(cluster) => format!(
            "cspc {}: desired {}, provisioned {}, healthy {}",
            cluster.name(),
            cluster.status.desired_instances,
            cluster.status.provisioned_instances,
            cluster.status.healthy_instances
        ),
        Object::CStorPoolInstance(pool) => format!("pool {}: {}", pool.name(), pool.status.phase),
        Object::CStorVolume(volume) => format!(
            "cv {}: {} since {}: {}",
            volume.name(),
            volume.status.phase,
            volume.status.last_transition_time,
            volume.status.message
        ),
        Object::CStorVolumeConfig(config) => {
            let conditions: Vec<String> = config
                .status
                .conditions
                .iter()
                .map(|condition| {
                    format!(
                        "{} {} since {}: {}",
                        condition.condition_type,
                        condition.reason,
                        condition.last_transition_time,
                        condition.message
                    )
                })
                .collect();
            format!(
                "cvc {}: {}, pools [{}], capacity {}{}",
                config.name(),
                config.status.phase,
                config.status.pool_info.join(", "),
                config
                    .status
                    .capacity
                    .as_ref()
                    .map_or("-".to_string(), |capacity| capacity.storage.to_string()),
                if conditions.is_empty() {
                    String::new()
                } else {
                    format!(", {}", conditions.join("; "))
                }
            )
        }
        other => format!("{} {}", other.kind().name(), other.name()),
    }
}
