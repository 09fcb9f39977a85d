//! The controllers: level-triggered loops that make the stored objects true. Each pass reads
//! every object once (a [`Snapshot`]), then reconciles pool clusters, pool liveness and volume
//! configs. A pass runs after every write to the store and at least once a second (pool
//! liveness depends on time). Every pass is idempotent, and every write names the resource
//! version it read, so a pass that raced with a user's edit loses with a conflict and the next
//! pass starts over from what is stored.
//!
//! The controllers are API clients like the CLI and the agents: their writes pass the same
//! validation and admission rules, and nothing about them depends on the store's kind.

mod pools;
mod volumes;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_client::{Client, ClientError, Recorder};
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Kind,
};

use crate::Api;

/// The event source of the volume controller, as cStor names it.
pub const VOLUME_CONTROLLER: &str = "cstorvolumeclaim-controller";
/// The event source of the pool cluster controller.
pub const POOL_CONTROLLER: &str = "cspc-controller";

/// Everything the controllers look at, read once per pass.
pub(crate) struct Snapshot {
    pub pool_clusters: Vec<CStorPoolCluster>,
    pub pools: Vec<CStorPoolInstance>,
    pub configs: Vec<CStorVolumeConfig>,
    pub volumes: Vec<CStorVolume>,
    pub replicas: Vec<CStorVolumeReplica>,
}

impl Snapshot {
    async fn read(client: &Client) -> Result<Snapshot, ClientError> {
        Ok(Snapshot {
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
        })
    }

    pub fn pool(&self, namespace: &str, name: &str) -> Option<&CStorPoolInstance> {
        self.pools
            .iter()
            .find(|pool| pool.metadata.namespace == namespace && pool.name() == name)
    }
}

/// What the controllers share: the API client, the event recorders, and the API's view of
/// the node agents.
pub(crate) struct Context {
    pub client: Client,
    pub api: Arc<Api>,
    pub volume_events: Recorder,
    pub pool_events: Recorder,
}

/// Runs the controllers against the API at `server` (this process's own) until `shutdown`.
pub async fn run(api: Arc<Api>, server: String, shutdown: impl Future<Output = ()>) {
    let client = match Client::new(&server) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "controllers cannot start");
            return;
        }
    };
    let context = Context {
        volume_events: Recorder::new(client.clone(), VOLUME_CONTROLLER, ""),
        pool_events: Recorder::new(client.clone(), POOL_CONTROLLER, ""),
        client,
        api,
    };
    let mut errors = ErrorLog::default();
    tokio::pin!(shutdown);
    loop {
        let written = context.api.written.notified();
        pass(&context, &mut errors).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = written => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn pass(context: &Context, errors: &mut ErrorLog) {
    let snapshot = match Snapshot::read(&context.client).await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            errors.report("snapshot", Err(error));
            return;
        }
    };
    for cluster in &snapshot.pool_clusters {
        let result = pools::reconcile_cluster(context, &snapshot, cluster).await;
        errors.report(&format!("cspc/{}", cluster.name()), result);
    }
    for pool in &snapshot.pools {
        let result = pools::reconcile_liveness(context, pool).await;
        errors.report(&format!("cspi/{}", pool.name()), result);
    }
    for config in &snapshot.configs {
        let result = volumes::reconcile_config(context, &snapshot, config).await;
        errors.report(&format!("cvc/{}", config.name()), result);
    }
    let result = volumes::collect_orphans(context, &snapshot).await;
    errors.report("volume garbage collection", result);
}

/// Logs each object's errors once per distinct message (a pass runs every second), and a
/// conflict, which only means a writer raced with this pass, not at all.
#[derive(Default)]
struct ErrorLog {
    last: BTreeMap<String, String>,
}

impl ErrorLog {
    fn report(&mut self, what: &str, result: Result<(), ClientError>) {
        match result {
            Ok(()) => {
                self.last.remove(what);
            }
            Err(error) if error.is_conflict() => {}
            Err(error) => {
                let message = error.to_string();
                if self.last.get(what) != Some(&message) {
                    tracing::warn!(object = what, error = %message, "reconcile failed; retrying");
                    self.last.insert(what.to_string(), message);
                }
            }
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
