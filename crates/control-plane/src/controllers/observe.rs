//! What a controller pass looks at, read once at its start: every object, the API's view of the
//! node agents, and the time. The plans decide from this alone (events are read only where a
//! warning is about to be recorded: see `Action::Record`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use tandem_client::{Client, ClientError, NodeStatus};
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Kind,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_PERSISTENT_VOLUME,
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
    /// The node agents that reported since the control plane started.
    pub nodes: Vec<NodeStatus>,
    /// Whether the control plane has run long enough to call a silent agent gone.
    pub past_agent_grace: bool,
    /// The pass's time (RFC 3339, in seconds), for the conditions and transitions it writes.
    pub now: String,
    /// The pass's time in milliseconds since the Unix epoch, for the durations it reports.
    pub now_ms: u64,
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
            nodes: api.node_statuses(),
            past_agent_grace: api.past_agent_grace(),
            now: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            now_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                }),
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

    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.node == name)
    }
}
