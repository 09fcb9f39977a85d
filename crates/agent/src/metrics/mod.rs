//! The agent's Prometheus metrics, served at `https://--metrics-address/metrics` (to clients
//! with a certificate of the cluster's CA; plain `http://` on an insecure, loopback-only node)
//! in Prometheus text format 0.0.4: for every volume whose target runs on this node, its clients' I/O
//! ([`metered`]: operations, errors, bytes and latency by kind of request), its status,
//! generation, replication and consistency factors and backpressure waits, and per replica its
//! mode, resync progress, bytes copied, rate and ejections; for the node's pool, its capacity,
//! used space, read-only state and replica counts. `docs/metrics.md` lists them.
//!
//! The loops publish what they already know into [`AgentMetrics`] (the targets loop registers
//! each target it starts, the pool loop its measurements); a scrape reads it all at once
//! (`collect`), so serving metrics adds nothing to the data path but [`metered`]'s atomics.

mod collect;
pub mod metered;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use tandem_core::ReplicaId;
use tandem_dataplane::target::{TargetCounters, TargetHandle, TargetStatus};
use tandem_pki::rustls::ServerConfig;
use tokio::sync::watch;

use metered::VolumeIo;

/// The content type of what `/metrics` answers: Prometheus' text format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reports, shared by the loops that know it.
#[derive(Default)]
pub struct AgentMetrics {
    volumes: Mutex<BTreeMap<String, ServedVolume>>,
    pool: Mutex<Option<PoolSample>>,
}

/// A volume whose target runs here (not its handle: a handle keeps a target running).
#[derive(Clone)]
struct ServedVolume {
    status: watch::Receiver<TargetStatus>,
    counters: Arc<TargetCounters>,
    io: Arc<VolumeIo>,
    /// Bytes per second of the running resync, as the targets loop measures it.
    resync_rate: u64,
    /// Replica id -> the pool its CVR names.
    pools: BTreeMap<ReplicaId, String>,
}

/// The pool as the pool loop last measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSample {
    pub pool: String,
    pub node: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub read_only: bool,
    /// Replicas with storage in the pool.
    pub replicas: u64,
    /// Of them, those whose CVR is Healthy.
    pub healthy_replicas: u64,
    /// The sizes of the replicas on the pool, added up.
    pub provisioned_bytes: u64,
    /// The highest usage warning threshold (a percentage) the pool's use has reached; 0 if
    /// none.
    pub usage_warning_percent: u64,
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        Arc::new(AgentMetrics::default())
    }

    /// A target of `volume` started here: its status and counters, and `io` (its clients' I/O,
    /// counted by the [`metered::Metered`] device its exports serve), are reported from now on.
    pub fn target_started(&self, volume: &str, target: &TargetHandle, io: Arc<VolumeIo>) {
        let served = ServedVolume {
            status: target.watch_status(),
            counters: Arc::clone(target.counters()),
            io,
            resync_rate: 0,
            pools: BTreeMap::new(),
        };
        self.volumes().insert(volume.to_string(), served);
    }

    /// The target of `volume` stopped here: its series go.
    pub fn target_stopped(&self, volume: &str) {
        self.volumes().remove(volume);
    }

    /// What the targets loop measured for `volume`: the running resync's rate, and the pool
    /// of each replica.
    pub fn target_measured(
        &self,
        volume: &str,
        resync_rate: u64,
        pools: BTreeMap<ReplicaId, String>,
    ) {
        if let Some(served) = self.volumes().get_mut(volume) {
            served.resync_rate = resync_rate;
            served.pools = pools;
        }
    }

    /// What the pool loop measured.
    pub fn pool_measured(&self, sample: PoolSample) {
        *self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sample);
    }

    fn volumes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServedVolume>> {
        // Nothing panics while holding it; a poisoned map is still a consistent map.
        self.volumes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Everything, in Prometheus' text format.
    pub fn encode(&self) -> String {
        let volumes: Vec<(String, ServedVolume)> = self
            .volumes()
            .iter()
            .map(|(name, served)| (name.clone(), served.clone()))
            .collect();
        let pool = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        collect::encode(volumes, pool)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    metrics: Arc<AgentMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    match tls {
        // The handshake requires a certificate of the cluster's CA: every holder may scrape.
        Some(config) => {
            let limits = tandem_https::Limits::default();
            tandem_https::serve(listener, config, limits, router, shutdown).await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

async fn scrape(State(metrics): State<Arc<AgentMetrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}
