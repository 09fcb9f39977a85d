//! What a controller pass looks at: every object, the API's view of the node agents, and the
//! time. The plans decide from this alone (events are read only where a warning is about to be
//! recorded: see `Action::Record`).
//!
//! The objects are read from the store directly (the controllers run beside it; a list over
//! HTTPS cost a thousand volumes' worth of TLS and JSON both ways per pass), and kept between
//! passes: the first pass lists every kind, each later one reads only the store's changes since
//! (decoding a thousand volumes' objects was most of a pass, and a scale-up among them waited
//! for it). A change log that no longer reaches back that far is listed again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use tandem_client::NodeStatus;
use tandem_objects::capacity::{CapacityPolicy, PoolSpace};
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Kind,
    Object, ObjectMeta, ANNOTATION_TARGET_NODE, LABEL_CSTOR_POOL_INSTANCE_NAME,
    LABEL_PERSISTENT_VOLUME,
};

use tandem_store::{Change, ChangeKind, StoreError, Versioned};

use crate::controllers::execute::ExecuteError;
use crate::Api;

/// Everything the controllers look at: the objects kept between passes (see
/// [`Observed::refresh`]), the rest read again by each.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub pool_clusters: Vec<CStorPoolCluster>,
    pub pools: Vec<CStorPoolInstance>,
    pub configs: Vec<CStorVolumeConfig>,
    pub volumes: Vec<CStorVolume>,
    pub replicas: Vec<CStorVolumeReplica>,
    /// The node agents that reported since the control plane started.
    pub nodes: Vec<NodeStatus>,
    /// Whether the control plane has run long enough to call a silent agent gone.
    pub past_agent_grace: bool,
    /// The pass's time (RFC 3339, in seconds), for the conditions and transitions it writes.
    pub now: String,
    /// The pass's time in milliseconds since the Unix epoch, for the durations it reports.
    pub now_ms: u64,
    /// Volumes and replicas by name, configs' names, built on first use (the objects are
    /// filled in before): a scan per config cost a thousand volumes millions of comparisons
    /// per pass.
    pub index: OnceLock<Index>,
    /// The store's version the objects are as of (0: not read yet). Public only so tests
    /// can build an `Observed` with `..` (as for `placed`).
    pub version: u64,
    /// By (namespace, pool): the sizes of the replicas this pass placed (see
    /// [`Observed::pool_space`]).
    pub placed: Mutex<BTreeMap<(String, String), u64>>,
}

/// Positions in [`Observed`]'s lists, by (namespace, name).
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    volumes: BTreeMap<(String, String), usize>,
    configs: BTreeSet<(String, String)>,
    /// By (namespace, the volume named in `openebs.io/persistent-volume`).
    replicas: BTreeMap<(String, String), Vec<usize>>,
    /// How many volumes' targets each node runs (`tandem.io/target-node`).
    targets: BTreeMap<String, usize>,
    /// By (namespace, pool): the sizes of the replicas on it, added up.
    provisioned: BTreeMap<(String, String), u64>,
}

/// How many changes one read of the store's change log takes.
const CHANGES_BATCH: usize = 1000;

impl Observed {
    /// Brings the objects up to the store's newest version and reads the nodes and the time:
    /// the first call lists every kind; the others apply only the changes since.
    pub fn refresh(&mut self, api: &Api) -> Result<(), ExecuteError> {
        let caught_up = self.version > 0 && self.apply_changes(api)?;
        if !caught_up {
            self.list_everything(api)?;
        }
        self.nodes = api.node_statuses();
        self.past_agent_grace = api.past_agent_grace();
        self.placed = Mutex::default();
        let now = SystemTime::now();
        self.now = humantime::format_rfc3339_seconds(now).to_string();
        self.now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Ok(())
    }

    /// Lists every kind. The version is read first: a change made during the lists is in
    /// them or after that version, and applying it again later finds the newer state kept.
    fn list_everything(&mut self, api: &Api) -> Result<(), ExecuteError> {
        let version = (api.store.current_version())
            .map_err(|error| ExecuteError::Store(format!("reading the version: {error}")))?;
        self.pool_clusters = list(api, Kind::CStorPoolCluster)?;
        self.pools = list(api, Kind::CStorPoolInstance)?;
        self.configs = list(api, Kind::CStorVolumeConfig)?;
        self.volumes = list(api, Kind::CStorVolume)?;
        self.replicas = list(api, Kind::CStorVolumeReplica)?;
        self.index = OnceLock::new();
        self.version = version;
        self.apply_changes(api)?;
        Ok(())
    }

    /// Applies the store's changes since the objects' version, up to its newest; false if the
    /// log no longer reaches back that far (list again).
    fn apply_changes(&mut self, api: &Api) -> Result<bool, ExecuteError> {
        loop {
            let changes = match api.store.changes_since(self.version, CHANGES_BATCH) {
                Ok(changes) => changes,
                Err(StoreError::Expired { .. }) => return Ok(false),
                Err(error) => {
                    return Err(ExecuteError::Store(format!(
                        "reading the changes since version {}: {error}",
                        self.version
                    )))
                }
            };
            let complete = changes.len() < CHANGES_BATCH;
            for change in changes {
                self.version = self.version.max(change.object.resource_version);
                self.apply(change)?;
            }
            if complete {
                return Ok(true);
            }
        }
    }

    /// One change, unless the object kept is as new or newer (listed after the change).
    fn apply(&mut self, change: Change) -> Result<(), ExecuteError> {
        let stored = change.object;
        let Some(kind) = Kind::from_kind_field(&stored.key.kind) else {
            return Ok(());
        };
        let key = (stored.key.namespace.clone(), stored.key.name.clone());
        let version = stored.resource_version;
        let stored = (change.kind != ChangeKind::Deleted).then_some(stored);
        match kind {
            Kind::CStorPoolCluster => changed(&mut self.pool_clusters, &key, version, stored)?,
            Kind::CStorPoolInstance => changed(&mut self.pools, &key, version, stored)?,
            Kind::CStorVolumeConfig => changed(&mut self.configs, &key, version, stored)?,
            Kind::CStorVolume => changed(&mut self.volumes, &key, version, stored)?,
            Kind::CStorVolumeReplica => changed(&mut self.replicas, &key, version, stored)?,
            Kind::Event => return Ok(()),
        }
        self.index = OnceLock::new();
        Ok(())
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let key =
                |meta: &tandem_objects::ObjectMeta| (meta.namespace.clone(), meta.name.clone());
            let mut index = Index::default();
            for (position, volume) in self.volumes.iter().enumerate() {
                index.volumes.insert(key(&volume.metadata), position);
                if let Some(node) = volume.metadata.annotation(ANNOTATION_TARGET_NODE) {
                    *index.targets.entry(node.to_string()).or_default() += 1;
                }
            }
            for config in &self.configs {
                index.configs.insert(key(&config.metadata));
            }
            for (position, replica) in self.replicas.iter().enumerate() {
                if let Some(volume) = replica.metadata.label(LABEL_PERSISTENT_VOLUME) {
                    let volume = (replica.metadata.namespace.clone(), volume.to_string());
                    index.replicas.entry(volume).or_default().push(position);
                }
                if let Some(pool) = replica.metadata.label(LABEL_CSTOR_POOL_INSTANCE_NAME) {
                    let pool = (replica.metadata.namespace.clone(), pool.to_string());
                    *index.provisioned.entry(pool).or_default() += replica.spec.capacity.bytes();
                }
            }
            index
        })
    }

    /// The space of `pool` as a placement sees it: its capacity and use as its agent last
    /// reported them, and the sizes of the replicas on it added up, with those this pass has
    /// placed there already (they are not observed until the next pass).
    pub fn pool_space(&self, pool: &CStorPoolInstance) -> PoolSpace {
        let key = (pool.metadata.namespace.clone(), pool.name().to_string());
        let observed = self.index().provisioned.get(&key).copied().unwrap_or(0);
        let placed = (self.placed.lock().unwrap_or_else(PoisonError::into_inner))
            .get(&key)
            .copied()
            .unwrap_or(0);
        PoolSpace {
            capacity: pool.status.capacity.total.bytes(),
            used: pool.status.capacity.used.bytes(),
            provisioned: observed.saturating_add(placed),
        }
    }

    /// Notes a replica of `size` bytes this pass placed on `pool`.
    pub fn note_placed(&self, pool: &CStorPoolInstance, size: u64) {
        let key = (pool.metadata.namespace.clone(), pool.name().to_string());
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        *placed.entry(key).or_default() += size;
    }

    /// The capacity policy of pool cluster `cluster` (the defaults if it is gone, or its
    /// annotations cannot be read: admission refuses those).
    pub fn capacity_policy(&self, namespace: &str, cluster: &str) -> CapacityPolicy {
        (self.pool_clusters.iter())
            .find(|found| found.metadata.namespace == namespace && found.name() == cluster)
            .map(|found| CapacityPolicy::lenient(&found.metadata.annotations))
            .unwrap_or_default()
    }

    /// How many volumes' targets run on `node`.
    pub fn targets_on(&self, node: &str) -> usize {
        self.index().targets.get(node).copied().unwrap_or(0)
    }

    /// Whether a config of that name exists in that namespace.
    pub fn has_config(&self, namespace: &str, name: &str) -> bool {
        (self.index().configs).contains(&(namespace.to_string(), name.to_string()))
    }

    /// The replicas labelled as volume `name`'s in `namespace`.
    pub fn replicas_named(&self, namespace: &str, name: &str) -> Vec<&CStorVolumeReplica> {
        let key = (namespace.to_string(), name.to_string());
        (self.index().replicas.get(&key).into_iter().flatten())
            .map(|&position| &self.replicas[position])
            .collect()
    }

    pub fn pool(&self, namespace: &str, name: &str) -> Option<&CStorPoolInstance> {
        self.pools
            .iter()
            .find(|pool| pool.metadata.namespace == namespace && pool.name() == name)
    }

    /// The volume of a config: the CStorVolume of the same name.
    pub fn volume_of(&self, config: &CStorVolumeConfig) -> Option<&CStorVolume> {
        let key = (config.metadata.namespace.clone(), config.name().to_string());
        (self.index().volumes.get(&key)).map(|&position| &self.volumes[position])
    }

    /// The replicas of one volume, by pool name.
    pub fn replicas_of(&self, config: &CStorVolumeConfig) -> BTreeMap<&str, &CStorVolumeReplica> {
        self.replicas_named(&config.metadata.namespace, config.name())
            .into_iter()
            .filter_map(|replica| {
                replica
                    .metadata
                    .label(LABEL_CSTOR_POOL_INSTANCE_NAME)
                    .map(|pool| (pool, replica))
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.node == name)
    }
}

/// Every stored object of `kind`, in every namespace, as its type, in (namespace, name) order.
fn list<T: TryFrom<Object>>(api: &Api, kind: Kind) -> Result<Vec<T>, ExecuteError> {
    let stored = (api.store.list(kind.name(), None))
        .map_err(|error| ExecuteError::Store(format!("listing {}: {error}", kind.name())))?;
    stored.into_iter().map(decode).collect()
}

/// What a kept object is found by.
trait Kept {
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! kept {
    ($($kind:ty),*) => {
        $(impl Kept for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        })*
    };
}

kept!(
    CStorPoolCluster,
    CStorPoolInstance,
    CStorVolumeConfig,
    CStorVolume,
    CStorVolumeReplica
);

/// A stored object as its type.
fn decode<T: TryFrom<Object>>(stored: Versioned) -> Result<T, ExecuteError> {
    let read = |detail: String| {
        ExecuteError::Store(format!(
            "reading {} {}: {detail}",
            stored.key.kind, stored.key.name
        ))
    };
    let object = serde_json::from_value::<Object>(stored.object.clone())
        .map_err(|error| read(format!("it no longer parses: {error}")))?;
    T::try_from(object).map_err(|_| read("it is stored as another kind".to_string()))
}

/// Puts a changed object (`None`: deleted) into its kind's list, which stays in (namespace,
/// name) order, unless the list holds it at `version` or newer already.
fn changed<T: Kept + TryFrom<Object>>(
    objects: &mut Vec<T>,
    key: &(String, String),
    version: u64,
    stored: Option<Versioned>,
) -> Result<(), ExecuteError> {
    let position = objects.binary_search_by(|kept| {
        let meta = kept.meta();
        (meta.namespace.as_str(), meta.name.as_str()).cmp(&(key.0.as_str(), key.1.as_str()))
    });
    if let Ok(at) = position {
        let kept = objects[at]
            .meta()
            .resource_version
            .parse::<u64>()
            .unwrap_or(0);
        if kept >= version {
            return Ok(());
        }
    }
    match (position, stored.map(decode).transpose()?) {
        (Ok(at), Some(object)) => objects[at] = object,
        (Ok(at), None) => {
            objects.remove(at);
        }
        (Err(at), Some(object)) => objects.insert(at, object),
        (Err(_), None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tandem_objects::{CStorVolumeConfigPhase, CStorVolumeReplicaPhase, Object};
    use tandem_store::{ObjectKey, RedbStore, Store};

    use super::Observed;
    use crate::controllers::fixtures::{cv, cvc, replica, NS};
    use crate::Api;

    /// The objects of an [`Observed`], as JSON, for comparing two.
    fn objects(observed: &Observed) -> serde_json::Value {
        serde_json::json!([
            observed.pool_clusters,
            observed.pools,
            observed.configs,
            observed.volumes,
            observed.replicas
        ])
    }

    /// Kept across passes through creations, edits and deletions of every kind (some of them
    /// between two refreshes, some not), and through a change log that stopped reaching back,
    /// the objects are always what a first read of the store finds.
    #[test]
    fn kept_objects_stay_what_a_fresh_read_finds() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open_keeping(&dir.path().join("store.redb"), 40).expect("store"));
        let api = Api::new(store.clone(), Duration::from_secs(10));
        let mut random = StdRng::seed_from_u64(7);
        let mut kept = Observed::default();
        for round in 0..60 {
            // Up to 30 writes between two refreshes: past 40 the log no longer reaches back.
            let writes = if round % 10 == 9 {
                60
            } else {
                random.gen_range(0..30)
            };
            for _ in 0..writes {
                let name = format!("vol-{}", random.gen_range(0..8));
                let object = match random.gen_range(0..3) {
                    0 => {
                        let mut config = cvc(&name, 2);
                        config.status.phase = CStorVolumeConfigPhase::Bound;
                        Object::CStorVolumeConfig(config)
                    }
                    1 => Object::CStorVolume(cv(&name, random.gen_range(1..4))),
                    _ => {
                        let pool = if random.gen_bool(0.5) {
                            "pool-a"
                        } else {
                            "pool-b"
                        };
                        let phase = if random.gen_bool(0.5) {
                            CStorVolumeReplicaPhase::Healthy
                        } else {
                            CStorVolumeReplicaPhase::Offline
                        };
                        Object::CStorVolumeReplica(replica(&name, pool, phase))
                    }
                };
                let key = ObjectKey::new(object.kind().name(), NS, object.name());
                let value = serde_json::to_value(&object).expect("JSON");
                let result = match store.get(&key).expect("read") {
                    None => store.create(&key, value).map(|_| ()),
                    Some(_) if random.gen_bool(0.3) => store.delete(&key, None).map(|_| ()),
                    Some(current) => store
                        .update(&key, current.resource_version, value)
                        .map(|_| ()),
                };
                result.expect("write");
            }
            kept.refresh(&api).expect("refresh");
            let mut fresh = Observed::default();
            fresh.refresh(&api).expect("read");
            assert_eq!(objects(&kept), objects(&fresh), "after round {round}");
            assert_eq!(
                kept.replicas_named(NS, "vol-1").len(),
                fresh.replicas_named(NS, "vol-1").len()
            );
        }
    }
}
