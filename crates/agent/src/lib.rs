//! Tandem's node agent: cStor's pool-manager without ZFS. One agent runs per node and owns one
//! pool directory of a fixed capacity. It
//!
//! * heartbeats to the control plane (a task of its own, so nothing else can stall it; the
//!   control plane marks the node's pools OFFLINE when the heartbeats stop);
//! * serves the CStorPoolInstance labelled `kubernetes.io/hostname=<node>` (the oldest, if two
//!   pool clusters name the node; the others are set to `ErrorDuplicate`): claims the directory
//!   for it (`pool.json`), and reports its phase, capacity, read-only mode and replica counts;
//! * creates, measures and removes the storage of the CStorVolumeReplicas on that pool
//!   (`replicas/<volume>/{data,meta}`), removing a replica's finalizer once its storage is gone;
//! * serves the replicas' data to the volumes' targets: one [`ReplicaHost`] listens on
//!   `data_address` (reported in the heartbeat) and serves every replica whose storage is sound,
//!   from the start (before the control plane is reached: it is never on the data path) and
//!   from the moment new storage is created; a replica is taken off the host before its storage
//!   is removed.
//!
//! Code map:
//!
//! * `storage` — a replica's storage (re-exported from `tandem_dataplane::replica::storage`,
//!   which owns the format): the `meta` binary format, atomic writes, creation and removal,
//!   allocation measurement, the geometry a volume gets.
//! * `pool` — the pool directory: `pool.json`, the read-only decision, the pool's used space.
//! * `cstor` — cStor objects in the core's terms: a CVR's volume, replica id (none until
//!   assigned), incarnation and node, a volume's geometry, generation and target node, the
//!   membership a CV records, the membership change a CVC's pool list asks for. Both loops read
//!   and write the CVRs' labels, annotations and `spec.replicaid` and the CVs' annotations only
//!   through it (which is where the one difference between them is written down: the targets
//!   loop, like the control plane, takes a volume's replicas by the persistent-volume label
//!   alone, see `replica_volume`).
//! * `reconcile` — the pool loop, one idempotent pass at a time: `reconcile/plan.rs` decides
//!   from what a pass observed (pure, tested as tables), `reconcile/mod.rs` observes (API, pool
//!   directory, replica host) and carries the actions out.
//! * `targets` — the targets this node hosts, the same way: `targets/plan.rs` decides which to
//!   start, keep or stop and what to write, `targets/mod.rs` runs them, exports them over NBD
//!   and keeps their membership in the CV.
//! * `endpoint` — the node's client endpoint: every volume on one NBD port, its own targets
//!   served directly, the others forwarded (one hop, to the target node's own-targets
//!   listener, so never in a loop).
//! * `metrics` — the Prometheus metrics the agent serves on `metrics_address` (the targets'
//!   client I/O through `metrics::metered::Metered`, their replicas, the pool).
//! * `heartbeat` — the heartbeat task. `changes` — the wake-ups of the loops (a watch on the
//!   objects, the targets' state changes). `report` — each distinct failure logged once, the
//!   bounded backoff.
//! * `error` — the crate's one error type (with `kind()`), and the typed key of the error log.
//!
//! Invariants: storage is never deleted except for a CVR being deleted (storage without a CVR is
//! an orphan: logged, counted, kept, since the store may have been lost); existing storage is
//! never overwritten; a directory that belongs to another pool is never used; nothing read from
//! the network or the disk is unwrapped.

mod changes;
pub(crate) mod cstor;
pub mod endpoint;
pub(crate) mod error;
#[cfg(test)]
mod fixtures;
mod heartbeat;
pub mod metrics;
pub(crate) mod pool;
mod reconcile;
mod report;
mod targets;

pub use tandem_dataplane::replica::storage;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tandem_client::{Client, Recorder};
use tandem_core::ReplicaId;
use tandem_dataplane::replica::{HostOptions, ReplicaHost};
pub use tandem_dataplane::security::LinkSecurity;

pub use reconcile::{
    EVENT_COMPONENT, FINALIZER, MESSAGE_READ_ONLY_SET, MESSAGE_READ_ONLY_UNSET,
    REASON_DELETION_FAILED, REASON_POOL_CREATION_FAILED, REASON_READ_ONLY,
};

/// How the agent runs. [`AgentConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name: the agent serves the CSPI labelled `kubernetes.io/hostname=<node>`.
    pub node: String,
    /// The pool directory (created if missing).
    pub pool_dir: PathBuf,
    /// The pool's capacity in bytes (its `status.capacity.total`).
    pub pool_size: u64,
    /// The control plane, e.g. `https://127.0.0.1:7070` (several separated by commas).
    pub server: String,
    /// The node's credential and the cluster's CA, shown to control planes served over HTTPS.
    pub credentials: Option<tandem_client::Credentials>,
    /// How replica links are secured: mutual TLS with the node's credential (its replica host
    /// requires a node's certificate; its targets check each host names the replica's node),
    /// or plain (the default, for loopback-only use).
    pub links: LinkSecurity,
    /// NBD over TLS (required) with the node's credential: the server set-up for its endpoints
    /// and the client set-up its forwarders reach other nodes' targets with. `None`: plain NBD
    /// (loopback only).
    pub nbd_tls: Option<NbdTls>,
    /// HTTPS for the metrics, requiring a client certificate of the cluster's CA (the node's
    /// credential, as its NBD endpoints'); `None`: plain HTTP (loopback only).
    pub metrics_tls: Option<Arc<tandem_pki::rustls::ServerConfig>>,
    /// How often to heartbeat, renewing the node's lease (default 500ms: four heartbeats per
    /// default lease of 2s, so one lost heartbeat never loses the lease).
    pub heartbeat: Duration,
    /// Where the pool and replica objects are (default `openebs`).
    pub namespace: String,
    /// How often to run a reconcile pass when nothing changed (default 60s: a change of the
    /// objects or of the pool's used space brings one at once; this is a slow resync, and all
    /// an idle node's replicas cost besides the pool measurement).
    pub reconcile_interval: Duration,
    /// How often to re-measure the pool's used space (default 2s, between passes too; also
    /// after every change).
    pub measure_interval: Duration,
    /// The longest a single API request may take before it counts as failed (default 10s).
    pub request_timeout: Duration,
    /// Where the replica host listens for targets (default `127.0.0.1:0`: any free port on
    /// loopback; [`NodeAgent::data_address`] says which).
    pub data_address: SocketAddr,
    /// The node's client endpoint: where applications reach every volume, whichever node runs
    /// its target (default `127.0.0.1:0`; [`NodeAgent::nbd_address`] says which; deployments use
    /// the standard 10809). Clients reconnect to it after a restart, so a cluster gives each
    /// node a fixed port.
    pub nbd_address: SocketAddr,
    /// Where the agent serves its Prometheus metrics (`GET /metrics`; default `127.0.0.1:0`;
    /// [`NodeAgent::metrics_address`] says which; reported in the heartbeat).
    pub metrics_address: SocketAddr,
    /// Where this node serves its own targets, and nothing else, to other nodes' endpoints
    /// (which forward to it). `None`: the NBD address's IP with any free port (reported in the
    /// heartbeat).
    pub target_address: Option<SocketAddr>,
    /// The address other nodes and clients reach this node at, reported in the heartbeat with
    /// the ports the agent listens on. `None` reports the listening addresses themselves, which
    /// then must name one interface (not `0.0.0.0` or `::`).
    pub advertise_ip: Option<IpAddr>,
}

impl AgentConfig {
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
    pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_MEASURE_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_DATA_ADDRESS: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

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
            credentials: None,
            links: LinkSecurity::Plain,
            nbd_tls: None,
            metrics_tls: None,
            heartbeat: AgentConfig::DEFAULT_HEARTBEAT,
            namespace: tandem_objects::DEFAULT_NAMESPACE.to_string(),
            reconcile_interval: AgentConfig::DEFAULT_RECONCILE_INTERVAL,
            measure_interval: AgentConfig::DEFAULT_MEASURE_INTERVAL,
            request_timeout: AgentConfig::DEFAULT_REQUEST_TIMEOUT,
            data_address: AgentConfig::DEFAULT_DATA_ADDRESS,
            nbd_address: AgentConfig::DEFAULT_DATA_ADDRESS,
            metrics_address: AgentConfig::DEFAULT_DATA_ADDRESS,
            target_address: None,
            advertise_ip: None,
        }
    }

    /// Where the own-targets listener listens: `target_address`, or the NBD address's IP with
    /// any free port.
    pub fn target_address(&self) -> SocketAddr {
        self.target_address
            .unwrap_or_else(|| SocketAddr::new(self.nbd_address.ip(), 0))
    }

    /// The address to report for a listener bound at `bound`: the advertised IP with the bound
    /// port, or `bound` itself.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        match self.advertise_ip {
            Some(ip) => SocketAddr::new(ip, bound.port()),
            None => bound,
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
        if let Some(ip) = self.advertise_ip {
            if ip.is_unspecified() {
                bail!(
                    "the advertised address {ip} names no interface: give the address other \
                     nodes reach this one at"
                );
            }
        }
        for (what, address) in [
            ("data", self.data_address),
            ("NBD", self.nbd_address),
            ("target", self.target_address()),
            ("metrics", self.metrics_address),
        ] {
            if address.ip().is_unspecified() && self.advertise_ip.is_none() {
                bail!(
                    "the {what} address {address} listens on every interface, so it cannot be \
                     reported to other nodes: say which address reaches this node \
                     (--advertise-address)"
                );
            }
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
/// directory it cannot create, a data address it cannot listen on); an unreachable control
/// plane is retried forever.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    NodeAgent::start(config).await?.run(shutdown).await
}

/// A started agent: its replica host is listening and serving the replicas found on disk;
/// [`NodeAgent::run`] does the rest.
pub struct NodeAgent {
    config: AgentConfig,
    client: Client,
    host: Arc<ReplicaHost>,
    /// Volume name -> the replica the host serves from `replicas/<volume>`.
    hosted: HashMap<String, ReplicaId>,
    endpoint: Arc<endpoint::EndpointServer>,
    nbd_listener: tokio::net::TcpListener,
    own: Arc<targets::OwnTargetsServer>,
    target_listener: tokio::net::TcpListener,
    metrics: Arc<metrics::AgentMetrics>,
    metrics_listener: tokio::net::TcpListener,
}

impl NodeAgent {
    /// Checks the configuration, creates the pool directory, starts the replica host on
    /// `data_address` and serves every sound replica already in the pool (a replica whose
    /// storage cannot be opened is logged and left to the reconcile passes).
    pub async fn start(config: AgentConfig) -> anyhow::Result<NodeAgent> {
        config.validate()?;
        let client = Client::with_credentials(&config.server, config.credentials.as_ref())?;
        std::fs::create_dir_all(&config.pool_dir)
            .with_context(|| format!("create the pool directory {}", config.pool_dir.display()))?;
        let data_listener = listen(config.data_address, "replica traffic").await?;
        let options = HostOptions {
            security: config.links.clone(),
            ..HostOptions::default()
        };
        let host = ReplicaHost::serve(data_listener, options).context("start the replica host")?;
        let hosted = host_existing(&host, &config.pool_dir.join(pool::REPLICAS_DIR)).await;
        let nbd_listener = listen(config.nbd_address, "NBD clients").await?;
        let target_listener = listen(config.target_address(), "other nodes' forwarders").await?;
        let metrics_listener = listen(config.metrics_address, "metrics scrapes").await?;
        let endpoint = nbd_config(config.nbd_tls.as_ref(), endpoint_allows);
        // Every other node forwards each volume whose target runs here over a connection of
        // its own: this listener needs room for volumes x nodes, from few addresses.
        let own = tandem_nbd::ServerConfig {
            connections_max: OWN_TARGETS_CONNECTIONS_MAX,
            connections_per_peer: OWN_TARGETS_CONNECTIONS_PER_PEER,
            ..nbd_config(config.nbd_tls.as_ref(), own_targets_allow)
        };
        Ok(NodeAgent {
            config,
            client,
            host: Arc::new(host),
            hosted,
            endpoint: Arc::new(tandem_nbd::Server::new(endpoint)),
            nbd_listener,
            own: Arc::new(tandem_nbd::Server::new(own)),
            target_listener,
            metrics: metrics::AgentMetrics::new(),
            metrics_listener,
        })
    }

    /// Where targets reach this node's replicas.
    pub fn data_address(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// Where applications reach the volumes whose targets this node hosts.
    pub fn nbd_address(&self) -> SocketAddr {
        self.nbd_listener
            .local_addr()
            .unwrap_or(self.config.nbd_address)
    }

    /// Where other nodes' endpoints reach the targets this node hosts.
    pub fn target_address(&self) -> SocketAddr {
        self.target_listener
            .local_addr()
            .unwrap_or(self.config.target_address())
    }

    /// Where the agent serves its metrics (`http://ADDRESS/metrics`).
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or(self.config.metrics_address)
    }

    /// Runs until `shutdown` completes, then stops the replica host (waiting for its disk work).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let nbd_address = self.nbd_address();
        let target_address = self.target_address();
        let metrics_address = self.metrics_address();
        let NodeAgent {
            config,
            client,
            host,
            hosted,
            endpoint,
            nbd_listener,
            own,
            target_listener,
            metrics,
            metrics_listener,
        } = self;
        let data_address = config.advertised(host.local_addr());
        let nbd_address = config.advertised(nbd_address);
        let target_address = config.advertised(target_address);
        let metrics_address = config.advertised(metrics_address);
        tracing::info!(
            node = %config.node,
            pool_dir = %config.pool_dir.display(),
            pool_size = config.pool_size,
            server = %config.server,
            data_address = %data_address,
            nbd_address = %nbd_address,
            target_address = %target_address,
            metrics_address = %metrics_address,
            replicas = hosted.len(),
            "node agent started"
        );
        let heartbeat = tokio::spawn(heartbeat::run(
            client.clone(),
            tandem_client::NodeHeartbeat {
                node: config.node.clone(),
                address: data_address.to_string(),
                nbd_address: nbd_address.to_string(),
                target_address: target_address.to_string(),
                metrics_address: metrics_address.to_string(),
                nbd_tls: config.nbd_tls.is_some(),
                metrics_tls: config.metrics_tls.is_some(),
            },
            config.heartbeat,
            config.request_timeout,
        ));
        let (nbd_stop, nbd_stopped) = tokio::sync::watch::channel(false);
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let serving =
            tokio::spawn(Arc::clone(&endpoint).serve(nbd_listener, stopped(nbd_stopped.clone())));
        let serving_own =
            tokio::spawn(Arc::clone(&own).serve(target_listener, stopped(nbd_stopped.clone())));
        let serving_metrics = tokio::spawn(metrics::serve(
            metrics_listener,
            config.metrics_tls.clone(),
            Arc::clone(&metrics),
            stopped(nbd_stopped.clone()),
        ));
        let (routes, routed) = tokio::sync::watch::channel(endpoint::Routes::new());
        let forwarding = tokio::spawn(endpoint::forward(
            Arc::clone(&endpoint),
            routed,
            config.nbd_tls.as_ref().map(|tls| Arc::clone(&tls.client)),
        ));
        let cache = changes::Cache::start(&client, &config.namespace);
        let changes = changes::Changes::new();
        let watching = changes.follow(&cache);
        let targets = tokio::spawn(
            targets::Targets::new(
                client.clone(),
                cache.clone(),
                config.node.clone(),
                Arc::clone(&own),
                Arc::clone(&endpoint),
                routes,
                Arc::clone(&metrics),
            )
            .with_security(config.links.clone())
            .with_local_host(host.local(config.node.clone()))
            .run(changes.clone()),
        );
        let recorder = Recorder::new(client.clone(), EVENT_COMPONENT, &config.node);
        let mut agent = reconcile::Agent::new(
            config,
            client,
            cache,
            recorder,
            Arc::clone(&host),
            hosted,
            metrics,
        );
        tokio::select! {
            // The agent's loop never ends on its own.
            () = agent.run(changes.subscribe()) => {}
            () = shutdown => {}
        }
        heartbeat.abort();
        watching.abort();
        targets.abort();
        forwarding.abort();
        let _ = nbd_stop.send(true);
        let _ = serving.await;
        let _ = serving_own.await;
        if let Ok(Err(error)) = serving_metrics.await {
            tracing::warn!(%error, "the metrics server failed");
        }
        drop(agent);
        match Arc::try_unwrap(host) {
            Ok(host) => host.shutdown().await,
            Err(host) => drop(host),
        }
        tracing::info!("node agent stopped");
        Ok(())
    }
}

/// NBD over TLS with a node's credential (see [`AgentConfig::nbd_tls`]).
#[derive(Clone)]
pub struct NbdTls {
    /// From [`tandem_pki::server_config`], client certificates required.
    pub server: Arc<tandem_pki::rustls::ServerConfig>,
    /// From [`tandem_pki::client_config`] with the node's credential.
    pub client: Arc<tandem_pki::rustls::ClientConfig>,
}

impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdTls").finish_non_exhaustive()
    }
}

/// Who may open volumes on a node's client endpoint: users (administrators).
fn endpoint_allows(identity: &tandem_pki::Identity) -> bool {
    matches!(identity, tandem_pki::Identity::Admin(_))
}

/// Who may open volumes on the endpoint of a node's own targets: other nodes' forwarders, and
/// users.
fn own_targets_allow(identity: &tandem_pki::Identity) -> bool {
    matches!(
        identity,
        tandem_pki::Identity::Node(_) | tandem_pki::Identity::Admin(_)
    )
}

/// Connections the endpoint of a node's own targets takes (in all, and from one address): one
/// per volume whose target runs here, from every other node that forwards it.
const OWN_TARGETS_CONNECTIONS_MAX: usize = 16_384;
const OWN_TARGETS_CONNECTIONS_PER_PEER: usize = 4_096;

/// An NBD server's configuration: TLS required with `tls`, letting in whom `allow` allows.
fn nbd_config(
    tls: Option<&NbdTls>,
    allow: fn(&tandem_pki::Identity) -> bool,
) -> tandem_nbd::ServerConfig {
    tandem_nbd::ServerConfig {
        tls: tls.map(|tls| tandem_nbd::TlsRequired {
            config: Arc::clone(&tls.server),
            allow,
        }),
        ..tandem_nbd::ServerConfig::default()
    }
}

/// How long the agent waits for its configured port to become free before it takes any free
/// port instead: after a crash or kill -9 the previous process may still be releasing its
/// sockets, and clients reconnect to the address they know.
const PORT_PATIENCE: Duration = Duration::from_secs(10);

/// Listens on `address` for `what`. A fixed port that is taken is tried again for
/// [`PORT_PATIENCE`] (the previous agent may still be exiting), then any free port is used,
/// with a warning (the heartbeat tells the control plane where).
async fn listen(address: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + PORT_PATIENCE;
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && address.port() != 0
                    && tokio::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::info!(%address, "the address for {what} is taken; waiting for it to be free");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) if address.port() != 0 => {
                tracing::warn!(%address, %error, "cannot listen for {what}; using any free port");
                let mut any = address;
                any.set_port(0);
                return tokio::net::TcpListener::bind(any)
                    .await
                    .with_context(|| format!("listen for {what} on {any}"));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("listen for {what} on {address}"))
            }
        }
    }
}

/// Serves every replica under `replicas_dir` whose storage opens; returns volume -> replica.
async fn host_existing(host: &ReplicaHost, replicas_dir: &Path) -> HashMap<String, ReplicaId> {
    let mut hosted = HashMap::new();
    let dir = replicas_dir.to_path_buf();
    let listed = tokio::task::spawn_blocking(move || storage::list_replicas(&dir))
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result.map_err(|error| error.to_string()));
    let volumes = match listed {
        Ok(volumes) => volumes,
        Err(error) => {
            tracing::warn!(dir = %replicas_dir.display(), %error, "cannot list the replicas to serve");
            return hosted;
        }
    };
    for volume in volumes {
        let dir = replicas_dir.join(&volume);
        match host.add_replica(&dir).await {
            Ok(replica) => {
                hosted.insert(volume, replica);
            }
            Err(error) => {
                tracing::warn!(path = %dir.display(), %error, "cannot serve replica storage")
            }
        }
    }
    hosted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config = AgentConfig::new("n1", "/tmp/pool", 10 << 30, "http://127.0.0.1:7070");
        assert_eq!(config.heartbeat, Duration::from_millis(500));
        assert_eq!(config.namespace, "openebs");
        assert_eq!(config.reconcile_interval, Duration::from_secs(60));
        assert_eq!(config.measure_interval, Duration::from_secs(2));
        assert_eq!(config.data_address.to_string(), "127.0.0.1:0");
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
        assert_eq!(
            broken(|c| c.data_address = "0.0.0.0:7000".parse().unwrap()),
            "the data address 0.0.0.0:7000 listens on every interface, so it cannot be reported \
             to other nodes: say which address reaches this node (--advertise-address)"
        );
        assert!(broken(|c| c.nbd_address = "[::]:10809".parse().unwrap())
            .starts_with("the NBD address [::]:10809 listens on every interface"));
        assert!(
            broken(|c| c.target_address = Some("0.0.0.0:7100".parse().unwrap()))
                .starts_with("the target address 0.0.0.0:7100 listens on every interface")
        );
        // By default the own-targets listener takes the NBD address's IP and any free port.
        assert_eq!(config.target_address().to_string(), "127.0.0.1:0");
        let mut moved = config.clone();
        moved.nbd_address = "10.77.0.2:10809".parse().unwrap();
        assert_eq!(moved.target_address().to_string(), "10.77.0.2:0");
        assert_eq!(
            broken(|c| c.advertise_ip = Some("0.0.0.0".parse().unwrap())),
            "the advertised address 0.0.0.0 names no interface: give the address other nodes \
             reach this one at"
        );
    }

    #[test]
    fn every_interface_is_reported_as_the_advertised_address_with_the_bound_port() {
        let mut config = AgentConfig::new("n1", "/tmp/pool", 1, "http://127.0.0.1:7070");
        config.data_address = "0.0.0.0:0".parse().unwrap();
        config.nbd_address = "0.0.0.0:10809".parse().unwrap();
        config.advertise_ip = Some("10.77.0.2".parse().unwrap());
        assert!(config.validate().is_ok());
        let bound: SocketAddr = "0.0.0.0:41000".parse().unwrap();
        assert_eq!(config.advertised(bound).to_string(), "10.77.0.2:41000");
        config.advertise_ip = None;
        let loopback: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        assert_eq!(config.advertised(loopback), loopback);
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
