//! Tandem's node agent: cStor's pool-manager without ZFS. One agent runs per node and owns one
//! pool directory of a fixed capacity. It
//!
//! * heartbeats to the control plane (a task of its own, so nothing else can stall it; the
//!   control plane marks the node's pools OFFLINE when the heartbeats stop);
//! * serves the CStorPoolInstance labelled `kubernetes.io/hostname=<node>` (the oldest, if two
//!   pool clusters name the node; the others are set to `ErrorDuplicate`): claims the directory
//!   for it (`pool.json`), and reports its phase, capacity, read-only mode and replica counts;
//! * creates, measures and removes the storage of the CStorVolumeReplicas on that pool
//!   (`replicas/<volume>/{data,meta}`), removing a replica's finalizer once its storage is gone.
//!
//! Code map:
//!
//! * `storage` — a replica's storage: the `meta` binary format, atomic writes, creation and
//!   removal, allocation measurement, the geometry a volume gets.
//! * `pool` — the pool directory: `pool.json`, the read-only decision, the pool's used space.
//! * `reconcile` — one reconcile pass over the pool's objects (idempotent).
//! * `heartbeat` — the heartbeat task.
//!
//! Invariants: storage is never deleted except for a CVR being deleted (storage without a CVR is
//! an orphan: logged, counted, kept, since the store may have been lost); existing storage is
//! never overwritten; a directory that belongs to another pool is never used; nothing read from
//! the network or the disk is unwrapped.

mod heartbeat;
pub mod pool;
mod reconcile;
mod report;
pub mod storage;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tandem_client::{Client, Recorder};

pub use reconcile::{
    EVENT_COMPONENT, FINALIZER, MESSAGE_READ_ONLY_SET, MESSAGE_READ_ONLY_UNSET,
    REASON_DELETION_FAILED, REASON_POOL_CREATION_FAILED, REASON_READ_ONLY,
};

/// How the agent runs. [`AgentConfig::new`] fills in the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// This node's name: the agent serves the CSPI labelled `kubernetes.io/hostname=<node>`.
    pub node: String,
    /// The pool directory (created if missing).
    pub pool_dir: PathBuf,
    /// The pool's capacity in bytes (its `status.capacity.total`).
    pub pool_size: u64,
    /// The control plane, e.g. `http://127.0.0.1:7070`.
    pub server: String,
    /// How often to heartbeat (default 1s).
    pub heartbeat: Duration,
    /// Where the pool and replica objects are (default `openebs`).
    pub namespace: String,
    /// How often to run a reconcile pass when nothing changed (default 1s).
    pub reconcile_interval: Duration,
    /// How often to re-measure the pool's used space (default 2s; also after every change).
    pub measure_interval: Duration,
    /// The longest a single API request may take before it counts as failed (default 10s).
    pub request_timeout: Duration,
}

impl AgentConfig {
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
    pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_MEASURE_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// A configuration with the default intervals and namespace.
    pub fn new(
        node: impl Into<String>,
        pool_dir: impl Into<PathBuf>,
        pool_size: u64,
        server: impl Into<String>,
    ) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            pool_dir: pool_dir.into(),
            pool_size,
            server: server.into(),
            heartbeat: AgentConfig::DEFAULT_HEARTBEAT,
            namespace: tandem_objects::DEFAULT_NAMESPACE.to_string(),
            reconcile_interval: AgentConfig::DEFAULT_RECONCILE_INTERVAL,
            measure_interval: AgentConfig::DEFAULT_MEASURE_INTERVAL,
            request_timeout: AgentConfig::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.node.is_empty() {
            bail!("the node name is empty");
        }
        // It goes into a label selector and a URL path.
        if !self
            .node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            bail!(
                "the node name {:?} may hold only letters, digits, '-', '.' and '_'",
                self.node
            );
        }
        if self.pool_size == 0 {
            bail!("the pool size is zero");
        }
        tandem_objects::validate_namespace(&self.namespace)
            .with_context(|| format!("namespace {:?}", self.namespace))?;
        for (name, interval) in [
            ("heartbeat", self.heartbeat),
            ("reconcile interval", self.reconcile_interval),
            ("measure interval", self.measure_interval),
            ("request timeout", self.request_timeout),
        ] {
            if interval.is_zero() {
                bail!("the {name} is zero");
            }
        }
        Ok(())
    }
}

/// Runs the agent until `shutdown` completes. Returns an error only for a configuration it
/// cannot run with (an empty node name, a zero pool size, a malformed server address, a pool
/// directory it cannot create); an unreachable control plane is retried forever.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    let client = Client::new(&config.server)?;
    std::fs::create_dir_all(&config.pool_dir)
        .with_context(|| format!("create the pool directory {}", config.pool_dir.display()))?;
    tracing::info!(
        node = %config.node,
        pool_dir = %config.pool_dir.display(),
        pool_size = config.pool_size,
        server = %config.server,
        "node agent started"
    );
    let heartbeat = tokio::spawn(heartbeat::run(
        client.clone(),
        config.node.clone(),
        config.heartbeat,
        config.request_timeout,
    ));
    let recorder = Recorder::new(client.clone(), EVENT_COMPONENT, &config.node);
    let mut agent = reconcile::Agent::new(config, client, recorder);
    tokio::select! {
        // The agent's loop never ends on its own.
        () = agent.run() => {}
        () = shutdown => {}
    }
    heartbeat.abort();
    tracing::info!("node agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config = AgentConfig::new("n1", "/tmp/pool", 10 << 30, "http://127.0.0.1:7070");
        assert_eq!(config.heartbeat, Duration::from_secs(1));
        assert_eq!(config.namespace, "openebs");
        assert_eq!(config.reconcile_interval, Duration::from_secs(1));
        assert_eq!(config.measure_interval, Duration::from_secs(2));
        assert!(config.validate().is_ok());
        let broken = |change: fn(&mut AgentConfig)| {
            let mut config = config.clone();
            change(&mut config);
            config.validate().unwrap_err().to_string()
        };
        assert_eq!(broken(|c| c.node.clear()), "the node name is empty");
        assert!(broken(|c| c.node = "a,b=c".into()).contains("may hold only"));
        assert!(broken(|c| c.node = "../x/y".into()).contains("may hold only"));
        assert_eq!(broken(|c| c.pool_size = 0), "the pool size is zero");
        assert_eq!(
            broken(|c| c.heartbeat = Duration::ZERO),
            "the heartbeat is zero"
        );
        assert!(broken(|c| c.namespace = "Bad/NS".into()).starts_with("namespace"));
    }

    #[test]
    fn cstor_event_texts() {
        assert_eq!(
            MESSAGE_READ_ONLY_SET,
            "Pool storage limit reached to read only threshold limit. Pool expansion is required \
             to make its volume replicas RW"
        );
        assert_eq!(
            MESSAGE_READ_ONLY_UNSET,
            "Pool roThresholdLimit or pool got expanded due to that pool readOnly mode is unset"
        );
        assert_eq!(FINALIZER, "cstorvolumereplica.openebs.io/finalizer");
    }

    #[tokio::test]
    async fn a_bad_configuration_is_an_error_not_a_hang() {
        let config = AgentConfig::new("n1", "/tmp/pool", 1, "127.0.0.1:7070");
        let error = run(config, std::future::pending()).await.unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
    }
}
