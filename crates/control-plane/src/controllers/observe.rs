//! What a controller pass looks at, read once at its start: every object (read from the store
//! directly: the controllers run beside it, and a list over HTTPS cost a thousand volumes'
//! worth of TLS and JSON both ways per pass), the API's view of the node agents, and the time. The plans decide from this alone (events are read only where a
//! warning is about to be recorded: see `Action::Record`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::SystemTime;

use tandem_client::NodeStatus;
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Kind,
    Object, ANNOTATION_TARGET_NODE, LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_PERSISTENT_VOLUME,
};

use crate::controllers::execute::ExecuteError;
use crate::Api;

/// Everything the controllers look at, read once per pass.
#[derive(Debug, Clone, Default)]
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
}

impl Observed {
    pub fn read(api: &Api) -> Result<Observed, ExecuteError> {
        Ok(Observed {
            pool_clusters: list(api, Kind::CStorPoolCluster)?,
            pools: list(api, Kind::CStorPoolInstance)?,
            configs: list(api, Kind::CStorVolumeConfig)?,
            volumes: list(api, Kind::CStorVolume)?,
            replicas: list(api, Kind::CStorVolumeReplica)?,
            nodes: api.node_statuses(),
            past_agent_grace: api.past_agent_grace(),
            now: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            now_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                }),
            index: OnceLock::new(),
        })
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
            }
            index
        })
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

/// Every stored object of `kind`, in every namespace, as its type.
fn list<T: TryFrom<Object>>(api: &Api, kind: Kind) -> Result<Vec<T>, ExecuteError> {
    let read = |detail: String| ExecuteError::Store(format!("listing {}: {detail}", kind.name()));
    let stored = (api.store.list(kind.name(), None)).map_err(|error| read(error.to_string()))?;
    stored
        .into_iter()
        .map(|stored| {
            let name = stored.key.name.clone();
            let object = serde_json::from_value::<Object>(stored.object)
                .map_err(|error| read(format!("{name} no longer parses: {error}")))?;
            T::try_from(object).map_err(|_| read(format!("{name} is stored as another kind")))
        })
        .collect()
}
