//! What a controller pass looks at, read once at its start: every object, every event, the
//! API's view of the node agents, and the time. The plans decide from this alone.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tandem_client::{Client, ClientError, NodeStatus};
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Event,
    Kind, LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_PERSISTENT_VOLUME,
};

use crate::Api;

/// Everything the controllers look at, read once per pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub pool_clusters: Vec<CStorPoolCluster>,
    pub pools: Vec<CStorPoolInstance>,
    pub configs: Vec<CStorVolumeConfig>,
    pub volumes: Vec<CStorVolume>,
    pub replicas: Vec<CStorVolumeReplica>,
    /// Every event: a warning is not recorded again while it is the newest about its object.
    pub events: Vec<Event>,
    /// The node agents that reported since the control plane started.
    pub nodes: Vec<NodeStatus>,
    /// Whether the control plane has run long enough to call a silent agent gone.
    pub past_agent_grace: bool,
    /// The pass's time (RFC 3339, in seconds), for the conditions and transitions it writes.
    pub now: String,
}

impl Observed {
    pub async fn read(client: &Client, api: &Api) -> Result<Observed, ClientError> {
        Ok(Observed {
            pool_clusters: client
                .list_typed(Kind::CStorPoolCluster, None, None)
                .await?,
            pools: client
                .list_typed(Kind::CStorPoolInstance, None, None)
                .await?,
            configs: client
                .list_typed(Kind::CStorVolumeConfig, None, None)
                .await?,
            volumes: client.list_typed(Kind::CStorVolume, None, None).await?,
            replicas: client
                .list_typed(Kind::CStorVolumeReplica, None, None)
                .await?,
            events: client.list_typed(Kind::Event, None, None).await?,
            nodes: api.node_statuses(),
            past_agent_grace: api.past_agent_grace(),
            now: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }

    pub fn pool(&self, namespace: &str, name: &str) -> Option<&CStorPoolInstance> {
        self.pools
            .iter()
            .find(|pool| pool.metadata.namespace == namespace && pool.name() == name)
    }

    /// The volume of a config: the CStorVolume of the same name.
    pub fn volume_of(&self, config: &CStorVolumeConfig) -> Option<&CStorVolume> {
        self.volumes.iter().find(|volume| {
            volume.metadata.namespace == config.metadata.namespace && volume.name() == config.name()
        })
    }

    /// The replicas of one volume, by pool name.
    pub fn replicas_of(&self, config: &CStorVolumeConfig) -> BTreeMap<&str, &CStorVolumeReplica> {
        self.replicas
            .iter()
            .filter(|replica| {
                replica.metadata.namespace == config.metadata.namespace
                    && replica.metadata.label(LABEL_PERSISTENT_VOLUME) == Some(config.name())
            })
            .filter_map(|replica| {
                replica
                    .metadata
                    .label(LABEL_CSTOR_POOL_INSTANCE_NAME)
                    .map(|pool| (pool, replica))
            })
            .collect()
    }

    /// The newest event about an object (the last of the newest, as a stable sort by last
    /// time would leave them).
    pub fn newest_event_about(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Event> {
        self.events
            .iter()
            .filter(|event| {
                event.metadata.namespace == namespace
                    && event.involved_object.kind == kind.name()
                    && event.involved_object.name == name
            })
            .max_by(|a, b| a.last_timestamp.cmp(&b.last_timestamp))
    }

    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.node == name)
    }
}
