//! `tandem up` and `tandem down`: a local cluster on this machine, the control plane and one
//! agent per node, each its own background process with its log and pid file under the data
//! directory:
//!
//! ```text
//! DIR/cluster.json                      what `up` was asked for (port, nodes, pool sizes) and
//!                                       with --netns, the network it created
//! DIR/control-plane/{store.redb, address, control-plane.log, control-plane.pid,
//!                    control-plane.sock (with --netns)}
//! DIR/nodes/NODE/{pool/, agent.log, agent.pid}
//! DIR/control-planes/cpN/control-plane/{address, control-plane.log, control-plane.pid}  (--ha)
//! DIR/etcd/etcdN/{data/, etcd.log, etcd.pid}                                          (--ha)
//! ```
//!
//! With `--ha` the objects live in a three-member etcd cluster ([`etcd`]) and three control
//! planes share it: every one serves the API, the elected one runs the controllers, and the
//! agents and the `tandem` command know all three addresses (DIR/control-plane/address).
//!
//! By default every process listens on 127.0.0.1. With `--netns PREFIX` each runs on its own
//! network host, a network namespace on a bridge ([`netns`]); the `tandem` command reaches the
//! control plane from the root namespace through its Unix socket.
//!
//! `up` is idempotent: it starts only what is not running, adds nodes when asked for more,
//! makes sure the pool cluster `cspc-stripe-pool` has one pool per node, and waits until they
//! are all ONLINE. `down` stops the processes with SIGTERM (SIGKILL after a grace period) and
//! leaves the data in place, so the next `up` finds every pool and volume again.

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tandem_client::{Client, Credentials};
use tandem_objects::{
    BlockDevice, CStorPoolCluster, CStorPoolClusterSpec, Kind, Object, ObjectMeta, PoolConfig,
    PoolSpec, Quantity, RaidGroup, DEFAULT_NAMESPACE, LABEL_HOSTNAME,
};
use tandem_pki::Identity;

mod etcd;
mod netns;
mod ports;
mod status;

pub use netns::{enter as enter_namespace, Network};
pub use status::{status, StatusArgs};

use crate::control_plane::write_atomically;
use crate::pki::Pki;
use crate::server::{address_file, default_data_dir};
use crate::store::EtcdTlsArgs;
use crate::wait::{wait_for, Deadline, Probe};

/// The pool cluster `tandem up` makes, named as in cStor's walk-through.
pub const POOL_CLUSTER: &str = "cspc-stripe-pool";
/// The port the first `up` asks for (then any free one if it is taken).
const DEFAULT_PORT: u16 = 7070;
/// The most nodes a local cluster may have.
const NODES_MAX: usize = 16;
/// `up --pool-size` when not given.
const POOL_SIZE_DEFAULT: &str = "10G";
/// `up --agent-timeout` when not given: a node's lease (agents heartbeat every 500ms), short
/// enough that a volume's I/O resumes within 5 s of its target's node dying.
const AGENT_TIMEOUT_DEFAULT: &str = "2s";

#[derive(Args, Debug, PartialEq, Eq)]
pub struct UpArgs {
    /// How many nodes (agents, each with one pool). A running cluster can only grow.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The capacity of each new node's pool, e.g. 10G.
    #[arg(long, default_value = POOL_SIZE_DEFAULT)]
    pool_size: String,
    /// The control plane's port on 127.0.0.1 the first time [default: 7070, or any free port
    /// if that is taken; 0: any free port]. Later runs reuse the recorded one.
    #[arg(long)]
    port: Option<u16>,
    /// How long an agent may stay silent (its lease) before its node's targets fail over and
    /// its pool is OFFLINE.
    #[arg(long, default_value = AGENT_TIMEOUT_DEFAULT, value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// How long to wait for the pools to come ONLINE.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The data directory [default: ~/.tandem].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Run every node on its own network host: namespaces PREFIX-node1.. with their own
    /// addresses on a bridge (in PREFIX-sw), the control plane in PREFIX-cp, and PREFIX-client
    /// for clients (`ip netns exec PREFIX-client nbdinfo "$(tandem volume uri VOL)"`). Needs root and `ip`. A
    /// cluster started with it keeps it.
    #[arg(long, value_name = "PREFIX")]
    netns: Option<String>,
    /// High availability: a three-member etcd cluster (Debian's etcd-server) holds the objects
    /// and three control planes share it, one of them (elected) running the controllers. A
    /// cluster started with it keeps it.
    #[arg(long)]
    ha: bool,
    /// For development and benchmarks only: no TLS and no authentication anywhere (the API over
    /// plain HTTP, plain replica links, plain NBD), on loopback only. A cluster started with it
    /// keeps it.
    #[arg(long, conflicts_with = "netns")]
    insecure: bool,
}

impl UpArgs {
    /// `tandem up --nodes NODES --data-dir DATA_DIR --timeout TIMEOUT [--port PORT]`, the
    /// other options as `up` takes them when not given.
    pub fn new(nodes: usize, data_dir: PathBuf, port: Option<u16>, timeout: Duration) -> UpArgs {
        UpArgs {
            nodes,
            pool_size: POOL_SIZE_DEFAULT.to_string(),
            port,
            agent_timeout: humantime::parse_duration(AGENT_TIMEOUT_DEFAULT)
                .expect("the default agent timeout is a duration"),
            timeout,
            data_dir: Some(data_dir),
            netns: None,
            ha: false,
            insecure: false,
        }
    }

    /// The same, on network namespaces named after `prefix` (`up --netns PREFIX`).
    pub fn on_netns(mut self, prefix: Option<String>) -> UpArgs {
        self.netns = prefix;
        self
    }
}

#[derive(Args)]
pub struct DownArgs {
    /// The data directory [default: ~/.tandem].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// What `up` was asked for, kept so the next `up` brings back the same cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterFile {
    port: u16,
    agent_timeout: String,
    nodes: Vec<NodeEntry>,
    /// The network namespaces the cluster runs on (`up --netns`); none on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<Network>,
    /// The etcd cluster and the control planes' ports (`up --ha`); none with one control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ha: Option<HighAvailability>,
    /// No TLS and no authentication (`up --insecure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
}

impl ClusterFile {
    /// The scheme of the control planes' API.
    fn scheme(&self) -> &'static str {
        if self.insecure {
            "http"
        } else {
            "https"
        }
    }
}

/// An HA cluster's etcd members and control planes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HighAvailability {
    etcd: Vec<etcd::Member>,
    /// Every control plane's port on 127.0.0.1, the first being the cluster's `port`.
    control_plane_ports: Vec<u16>,
    /// etcd serves TLS with its own CA (`DIR/pki/etcd`); false for an insecure cluster and for
    /// one made before etcd had TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    etcd_tls: bool,
}

impl HighAvailability {
    /// The etcd CA, if etcd serves TLS.
    fn etcd_pki(&self, data_dir: &Path) -> Option<etcd::EtcdPki> {
        self.etcd_tls.then(|| etcd::EtcdPki::of(data_dir))
    }
}

impl ClusterFile {
    fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.name.clone()).collect()
    }

    /// Where node `index` listens (and is reached): its namespace's address, or 127.0.0.1.
    fn node_ip(&self, index: usize) -> String {
        match &self.netns {
            Some(network) => network.node_address(index).to_string(),
            None => "127.0.0.1".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeEntry {
    name: String,
    pool_size: String,
    /// Where the node's replica host and NBD server listen on 127.0.0.1; chosen once, so a
    /// restarted agent is found (and an application reconnects) at the same address.
    #[serde(default)]
    data_port: u16,
    #[serde(default)]
    nbd_port: u16,
    /// Where the node's agent serves its metrics, chosen once like the others (a cluster
    /// recorded before metrics gets one at its next `up`).
    #[serde(default)]
    metrics_port: u16,
}

fn cluster_file(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster.json")
}

/// The number of nodes `up` recorded in the data directory (0 if none): `up` never takes
/// fewer.
pub fn recorded_nodes(data_dir: &Path) -> usize {
    read_recorded(data_dir).map_or(0, |cluster| cluster.nodes.len())
}

fn read_recorded(data_dir: &Path) -> Option<ClusterFile> {
    std::fs::read_to_string(cluster_file(data_dir))
        .ok()
        .and_then(|text| serde_json::from_str::<ClusterFile>(&text).ok())
}

/// The network namespaces the cluster in `data_dir` runs on, if it was started with --netns
/// and is not down.
pub fn recorded_network(data_dir: &Path) -> Option<Network> {
    read_recorded(data_dir)
        .and_then(|cluster| cluster.netns)
        .filter(|network| network.created)
}

fn node_dir(data_dir: &Path, node: &str) -> PathBuf {
    data_dir.join("nodes").join(node)
}

fn control_plane_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("control-plane")
}

/// The data directory of HA control plane `index` (each has its own log, pid and address).
fn ha_control_plane_dir(data_dir: &Path, index: usize) -> PathBuf {
    data_dir
        .join("control-planes")
        .join(format!("cp{}", index + 1))
}

pub fn up(args: UpArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    if args.nodes == 0 || args.nodes > NODES_MAX {
        bail!(
            "--nodes {} is out of range: a local cluster has 1 to {NODES_MAX} nodes",
            args.nodes
        );
    }
    let pool_size = Quantity::parse(&args.pool_size)
        .with_context(|| format!("--pool-size {:?}", args.pool_size))?;
    std::fs::create_dir_all(control_plane_dir(&data_dir))
        .with_context(|| format!("create the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    let mut cluster = plan(&data_dir, &args, pool_size)?;
    let prefix = args
        .netns
        .clone()
        .or_else(|| cluster.netns.as_ref().map(|network| network.prefix.clone()));
    if let Some(prefix) = prefix {
        let network = netns::reserve(&prefix, cluster.netns.as_ref(), |network| {
            let mut recorded = cluster.clone();
            recorded.netns = Some(network.clone());
            record(&data_dir, &recorded)
        })?;
        cluster.netns = Some(network.clone());
        record(&data_dir, &cluster)?;
        netns::create(&network, &cluster.node_names())?;
    } else {
        record(&data_dir, &cluster)?;
    }

    // The cluster's CA and the CLI's (and kubectl's) credential; every process started below
    // gets its own.
    let pki = Pki::of(&data_dir);
    let admin = if cluster.insecure {
        None
    } else {
        let (certificate, key) =
            pki.ensure(&Identity::Admin(crate::pki::ADMIN.into()), &[], &[])?;
        Some(
            Credentials::load(&pki.ca(), &certificate, &key)
                .context("load the admin credential")?,
        )
    };

    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let server = match &cluster.ha {
        None => runtime.block_on(start_control_plane(
            &data_dir,
            &pki,
            "control-plane",
            &cluster,
            cluster.port,
            &[],
            args.timeout,
        ))?,
        Some(ha) => {
            let etcd_pki = ha.etcd_pki(&data_dir);
            runtime.block_on(etcd::start(
                &data_dir,
                &ha.etcd,
                etcd_pki.as_ref(),
                |pid_file| running_pid(pid_file, "etcd"),
                args.timeout,
            ))?;
            let mut store = vec!["--store".to_string(), etcd::store_location(&ha.etcd)];
            if let Some(etcd_pki) = &etcd_pki {
                store.extend(EtcdTlsArgs::flags(&etcd_pki.client_files()?));
            }
            let mut servers = Vec::new();
            for (index, &port) in ha.control_plane_ports.iter().enumerate() {
                servers.push(runtime.block_on(start_control_plane(
                    &ha_control_plane_dir(&data_dir, index),
                    &pki,
                    &format!("cp{}", index + 1),
                    &cluster,
                    port,
                    &store,
                    args.timeout,
                ))?);
            }
            // The tandem command finds every control plane here.
            let server = servers.join(",");
            write_atomically(&address_file(&data_dir), &format!("{server}\n"))?;
            server
        }
    };
    // The agents join the control plane by URL, over the bridge when on namespaces.
    let agents_server = match &cluster.netns {
        Some(network) => network.control_plane_url(),
        None => server.clone(),
    };
    for (index, node) in cluster.nodes.iter().enumerate() {
        start_agent(&data_dir, &pki, &cluster, index, node, &agents_server)?;
    }
    let client = Client::with_credentials(&server, admin.as_ref())?;
    runtime.block_on(ensure_pool_cluster(&client, &cluster, args.timeout))?;
    let metrics = runtime.block_on(crate::metrics::urls(&client, &agents_server))?;

    println!();
    println!(
        "Tandem is up: {} nodes, pool cluster {POOL_CLUSTER} with {} pools ONLINE.",
        cluster.nodes.len(),
        cluster.nodes.len()
    );
    match &cluster.ha {
        None => println!("  control plane  {server}"),
        Some(ha) => {
            for address in server.split(',') {
                println!("  control plane  {address}");
            }
            let urls = etcd::client_urls(&ha.etcd, ha.etcd_tls);
            println!("  etcd           {}", urls.join(" "));
            println!("  (one control plane leads the controllers: tandem status)");
        }
    }
    for (index, node) in cluster.nodes.iter().enumerate() {
        println!(
            "  {:<13}  pool {} ({}), NBD on {}:{}",
            node.name,
            node_dir(&data_dir, &node.name).join("pool").display(),
            node.pool_size,
            cluster.node_ip(index),
            node.nbd_port
        );
    }
    if let Some(network) = &cluster.netns {
        println!(
            "Each node is a network namespace on {} ({}-node1, ...); clients run in {}:",
            network.cidr(),
            network.prefix,
            network.client_namespace()
        );
        println!(
            "  ip netns exec {} nbdinfo \"$(tandem volume uri VOLUME)\"",
            network.client_namespace(),
        );
    }
    println!("Prometheus metrics (`tandem metrics` lists them again):");
    print!("{}", crate::metrics::table(&metrics));
    println!("Logs and data are under {}.", data_dir.display());
    println!("The tandem command finds this cluster by itself; elsewhere, set");
    println!("  export TANDEM_SERVER={server}");
    if !cluster.insecure {
        let (certificate, key) = pki.paths(&Identity::Admin(crate::pki::ADMIN.into()));
        println!("  export TANDEM_CA={}", pki.ca().display());
        println!("  export TANDEM_CERTIFICATE={}", certificate.display());
        println!("  export TANDEM_KEY={}", key.display());
        println!(
            "Credentials are under {} (docs/security.md).",
            pki.dir().display()
        );
    }
    println!("Next: tandem get cspi -n openebs      Stop: tandem down");
    Ok(())
}

fn record(data_dir: &Path, cluster: &ClusterFile) -> Result<()> {
    write_atomically(
        &cluster_file(data_dir),
        &serde_json::to_string_pretty(cluster).context("encode cluster.json")?,
    )
}

/// The cluster to run: the recorded one, grown to `--nodes` if that is more.
fn plan(data_dir: &Path, args: &UpArgs, pool_size: Quantity) -> Result<ClusterFile> {
    if let Some(prefix) = &args.netns {
        netns::validate_prefix(prefix)?;
    }
    let recorded = match std::fs::read_to_string(cluster_file(data_dir)) {
        Ok(text) => Some(serde_json::from_str::<ClusterFile>(&text).with_context(|| {
            format!("{} is not a cluster file", cluster_file(data_dir).display())
        })?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error).with_context(|| format!("read {}", cluster_file(data_dir).display()))
        }
    };
    let on_netns = match &recorded {
        Some(cluster) if !cluster.nodes.is_empty() => {
            if cluster.netns.is_none() && args.netns.is_some() {
                bail!(
                    "the cluster in {} runs on loopback; it cannot move to --netns (use another \
                     --data-dir)",
                    data_dir.display()
                );
            }
            cluster.netns.is_some()
        }
        _ => args.netns.is_some(),
    };
    if on_netns {
        netns::check_can_create()?;
    }
    let highly_available = match &recorded {
        Some(cluster) if !cluster.nodes.is_empty() => {
            if cluster.ha.is_none() && args.ha {
                bail!(
                    "the cluster in {} has one control plane on a redb store; it cannot become \
                     --ha (copy its objects to etcd with `tandem store copy`, or use another \
                     --data-dir)",
                    data_dir.display()
                );
            }
            cluster.ha.is_some()
        }
        _ => args.ha,
    };
    if highly_available && on_netns {
        bail!("--ha and --netns cannot be combined yet: --ha runs on loopback");
    }
    let mut taken = recorded.as_ref().map(ports::taken_by).unwrap_or_default();
    let mut cluster = match recorded {
        Some(cluster) => cluster,
        None => ClusterFile {
            port: if on_netns {
                netns::CONTROL_PLANE_PORT
            } else {
                ports::choose(args.port, &mut taken)?
            },
            agent_timeout: humantime::format_duration(args.agent_timeout).to_string(),
            nodes: Vec::new(),
            netns: None,
            ha: None,
            insecure: args.insecure,
        },
    };
    if args.insecure && !cluster.insecure {
        bail!(
            "the cluster in {} runs with TLS; it cannot drop it (--insecure: use another \
             --data-dir)",
            data_dir.display()
        );
    }
    if highly_available && cluster.ha.is_none() {
        let mut control_plane_ports = vec![cluster.port];
        while control_plane_ports.len() < 3 {
            control_plane_ports.push(ports::choose(Some(0), &mut taken)?);
        }
        let etcd = (1..=etcd::MEMBERS)
            .map(|n| -> Result<etcd::Member> {
                Ok(etcd::Member {
                    name: format!("etcd{n}"),
                    client_port: ports::choose(Some(0), &mut taken)?,
                    peer_port: ports::choose(Some(0), &mut taken)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        cluster.ha = Some(HighAvailability {
            etcd,
            control_plane_ports,
            etcd_tls: !cluster.insecure,
        });
    }
    if args.nodes < cluster.nodes.len() {
        bail!(
            "the cluster in {} has {} nodes; `tandem up --nodes {}` cannot remove nodes (move \
             their volumes away, then edit the pool cluster)",
            data_dir.display(),
            cluster.nodes.len(),
            args.nodes
        );
    }
    while cluster.nodes.len() < args.nodes {
        cluster.nodes.push(NodeEntry {
            name: format!("node{}", cluster.nodes.len() + 1),
            pool_size: pool_size.to_string(),
            data_port: 0,
            nbd_port: 0,
            metrics_port: 0,
        });
    }
    for node in &mut cluster.nodes {
        if on_netns {
            // Every node has its own address: the same ports everywhere.
            node.data_port = netns::DATA_PORT;
            node.nbd_port = netns::NBD_PORT;
            node.metrics_port = netns::METRICS_PORT;
        }
        if node.data_port == 0 {
            node.data_port = ports::choose(Some(0), &mut taken)?;
        }
        if node.nbd_port == 0 {
            node.nbd_port = ports::choose(Some(0), &mut taken)?;
        }
        if node.metrics_port == 0 {
            node.metrics_port = ports::choose(Some(0), &mut taken)?;
        }
    }
    Ok(cluster)
}

/// Starts the control plane `name` whose data directory is `data_dir` (the cluster's, or with
/// --ha its own) on `port`, on the store the arguments `store` name if any (else the redb file
/// in its data directory), with its credential from `pki` (issued if missing); returns its
/// address once it serves.
async fn start_control_plane(
    data_dir: &Path,
    pki: &Pki,
    name: &str,
    cluster: &ClusterFile,
    port: u16,
    store: &[String],
    timeout: Duration,
) -> Result<String> {
    let directory = control_plane_dir(data_dir);
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("create {}", directory.display()))?;
    let pid_file = directory.join("control-plane.pid");
    let socket = directory.join("control-plane.sock");
    let (server, listen) = match &cluster.netns {
        Some(network) => (
            format!("{}{}", tandem_client::UNIX_SCHEME, socket.display()),
            SocketAddr::from((network.control_plane_address(), cluster.port)),
        ),
        None => (
            format!("{}://127.0.0.1:{port}", cluster.scheme()),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ),
    };
    if let Some(pid) = running_pid(&pid_file, "tandem") {
        println!("control plane already running (pid {pid}) at {server}");
        return Ok(server);
    }
    // A stale address would let the wait below succeed before the new process is up.
    let _ = std::fs::remove_file(address_file(data_dir));
    let mut args = vec![
        "control-plane".to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--agent-timeout".to_string(),
        cluster.agent_timeout.clone(),
    ];
    if cluster.insecure {
        args.push("--insecure".to_string());
    } else {
        let (addresses, hosts) = crate::pki::server_names(&[listen.ip()]);
        let identity = Identity::ControlPlane(name.to_string());
        args.extend(credential_args(pki, &identity, &addresses, &hosts)?);
    }
    args.extend(store.iter().cloned());
    let namespace = cluster.netns.as_ref().map(Network::control_plane_namespace);
    if namespace.is_some() {
        args.extend(["--unix-socket".to_string(), socket.display().to_string()]);
    }
    let mut child = spawn(
        &args,
        &directory.join("control-plane.log"),
        &pid_file,
        namespace.as_deref(),
    )?;
    println!("started control plane (pid {}) at {server}", child.id());
    let log = directory.join("control-plane.log");
    let deadline = Deadline::after(timeout).polling_every(Duration::from_millis(50));
    wait_for(deadline, "the control plane has not started", async || {
        if address_file(data_dir).exists() {
            return Ok(Probe::Done(()));
        }
        // Our own child: `try_wait` knows for sure (a /proc read can race with its exec).
        if !matches!(child.try_wait(), Ok(None)) {
            bail!("the control plane exited at start; see {}", log.display());
        }
        Ok(Probe::Waiting(format!(
            "it has not written {} yet; see {}",
            address_file(data_dir).display(),
            log.display()
        )))
    })
    .await?;
    Ok(server)
}

fn start_agent(
    data_dir: &Path,
    pki: &Pki,
    cluster: &ClusterFile,
    index: usize,
    node: &NodeEntry,
    server: &str,
) -> Result<()> {
    let directory = node_dir(data_dir, &node.name);
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("create {}", directory.display()))?;
    let pid_file = directory.join("agent.pid");
    if let Some(pid) = running_pid(&pid_file, "tandem") {
        println!("agent {} already running (pid {pid})", node.name);
        return Ok(());
    }
    let mut args = vec![
        "agent".to_string(),
        "--node".to_string(),
        node.name.clone(),
        "--pool-dir".to_string(),
        directory.join("pool").display().to_string(),
        "--pool-size".to_string(),
        node.pool_size.clone(),
        "--server".to_string(),
        server.to_string(),
        "--data-address".to_string(),
        format!("{}:{}", cluster.node_ip(index), node.data_port),
        "--nbd-address".to_string(),
        format!("{}:{}", cluster.node_ip(index), node.nbd_port),
        "--metrics-address".to_string(),
        format!("{}:{}", cluster.node_ip(index), node.metrics_port),
    ];
    if !cluster.insecure {
        let ip: IpAddr = cluster
            .node_ip(index)
            .parse()
            .context("the node's recorded address")?;
        let (addresses, hosts) = crate::pki::node_names(&node.name, &[ip]);
        let identity = Identity::Node(node.name.clone());
        args.extend(credential_args(pki, &identity, &addresses, &hosts)?);
    }
    let child = spawn(
        &args,
        &directory.join("agent.log"),
        &pid_file,
        cluster
            .netns
            .as_ref()
            .map(|network| network.node_namespace(&node.name))
            .as_deref(),
    )?;
    println!("started agent {} (pid {})", node.name, child.id());
    Ok(())
}

/// `--ca`, `--certificate` and `--key` for `identity`, issued from `pki` if missing.
fn credential_args(
    pki: &Pki,
    identity: &Identity,
    addresses: &[IpAddr],
    hosts: &[String],
) -> Result<[String; 6]> {
    let (certificate, key) = pki.ensure(identity, addresses, hosts)?;
    Ok([
        "--ca".to_string(),
        pki.ca().display().to_string(),
        "--certificate".to_string(),
        certificate.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
    ])
}

/// Starts `tandem ARGS` in the background, in its own process group (so a Ctrl-C in this
/// terminal does not reach it), appending its output to `log`, in network namespace
/// `namespace` if one is given (`ip netns exec` execs, so the pid is tandem's). It outlives this
/// process.
fn spawn(args: &[String], log: &Path, pid_file: &Path, namespace: Option<&str>) -> Result<Child> {
    let executable = std::env::current_exe().context("find the tandem executable")?;
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut command = match namespace {
        Some(namespace) => netns::command_in(namespace, &executable),
        None => Command::new(executable),
    };
    let child = command
        .args(args)
        .env_remove("TANDEM_SERVER")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("share the log file")?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start tandem {}", args.join(" ")))?;
    write_atomically(pid_file, &format!("{}\n", child.id()))?;
    Ok(child)
}

/// The pid in `pid_file`, if that process is alive and runs `program` (a pid can be reused
/// after a reboot).
fn running_pid(pid_file: &Path, program: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name in parentheses: "123 (tandem) S ...".
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let runs_it = String::from_utf8_lossy(&command).contains(program);
    (state != 'Z' && state != 'X' && runs_it).then_some(pid)
}

/// Makes sure the pool cluster has a pool on every node, then waits until they are ONLINE.
async fn ensure_pool_cluster(
    client: &Client,
    cluster: &ClusterFile,
    timeout: Duration,
) -> Result<()> {
    let deadline = Deadline::after(timeout);
    // The control plane has just written its address; it may still be a moment from serving.
    let answering = deadline.polling_every(Duration::from_millis(100));
    let existing = wait_for(answering, "the control plane does not answer", async || {
        let found = client
            .find(Kind::CStorPoolCluster, DEFAULT_NAMESPACE, POOL_CLUSTER)
            .await;
        anyhow::Ok(match found {
            Ok(found) => Probe::Done(found),
            Err(error) => Probe::Waiting(error.to_string()),
        })
    })
    .await?;
    let wanted = pool_cluster(cluster);
    match existing {
        None => {
            client.create(&Object::CStorPoolCluster(wanted)).await?;
            println!("created pool cluster {POOL_CLUSTER}");
        }
        Some(Object::CStorPoolCluster(mut current)) => {
            let missing: Vec<PoolSpec> = wanted
                .spec
                .pools
                .into_iter()
                .filter(|pool| {
                    !current
                        .spec
                        .pools
                        .iter()
                        .any(|have| have.node_selector == pool.node_selector)
                })
                .collect();
            if !missing.is_empty() {
                current.spec.pools.extend(missing);
                client.update(&Object::CStorPoolCluster(current)).await?;
                println!("added pools for the new nodes to {POOL_CLUSTER}");
            }
        }
        Some(other) => bail!(
            "{POOL_CLUSTER} is a {}, not a CStorPoolCluster",
            other.kind()
        ),
    }
    let total = cluster.nodes.len() as u32;
    let mut last_seen = None;
    let what = format!("the pools of {POOL_CLUSTER} are not all ONLINE");
    wait_for(deadline, what, async || {
        let object = client
            .get(Kind::CStorPoolCluster, DEFAULT_NAMESPACE, POOL_CLUSTER)
            .await?;
        let healthy = match &object {
            Object::CStorPoolCluster(cspc) => cspc.status.healthy_instances,
            _ => 0,
        };
        if last_seen != Some(healthy) {
            println!("pools ONLINE: {healthy}/{total}");
            last_seen = Some(healthy);
        }
        if healthy >= total {
            return Ok(Probe::Done(()));
        }
        Ok(Probe::Waiting(format!(
            "only {healthy} of {total} are; see the agents' logs (nodes/NODE/agent.log) and \
             `tandem get cspi -n openebs`"
        )))
    })
    .await
}

fn pool_cluster(cluster: &ClusterFile) -> CStorPoolCluster {
    let pools = cluster
        .nodes
        .iter()
        .map(|node| PoolSpec {
            node_selector: [(LABEL_HOSTNAME.to_string(), node.name.clone())].into(),
            data_raid_groups: vec![RaidGroup {
                block_devices: vec![BlockDevice {
                    block_device_name: format!("{}-pool", node.name),
                    capacity: Quantity::parse(&node.pool_size)
                        .ok()
                        .map(|size| size.bytes()),
                    dev_link: String::new(),
                }],
            }],
            write_cache_raid_groups: Vec::new(),
            pool_config: PoolConfig {
                data_raid_group_type: "stripe".to_string(),
                ..PoolConfig::default()
            },
        })
        .collect();
    CStorPoolCluster::new(
        ObjectMeta {
            name: POOL_CLUSTER.to_string(),
            ..ObjectMeta::default()
        },
        CStorPoolClusterSpec { pools },
    )
}

pub fn down(args: DownArgs) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut pid_files: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(data_dir.join("nodes")) {
        for entry in entries.flatten() {
            let node = entry.file_name().to_string_lossy().to_string();
            pid_files.push((format!("agent {node}"), entry.path().join("agent.pid")));
        }
    }
    pid_files.sort();
    // Agents first: the control plane outlives them, so they can report that they stop; etcd
    // last, after every control plane that uses it.
    pid_files.push((
        "control plane".to_string(),
        control_plane_dir(&data_dir).join("control-plane.pid"),
    ));
    let recorded = read_recorded(&data_dir);
    let ha = recorded.as_ref().and_then(|cluster| cluster.ha.clone());
    let mut programs = vec!["tandem"; pid_files.len()];
    if let Some(ha) = &ha {
        for index in 0..ha.control_plane_ports.len() {
            pid_files.push((
                format!("control plane cp{}", index + 1),
                control_plane_dir(&ha_control_plane_dir(&data_dir, index))
                    .join("control-plane.pid"),
            ));
            programs.push("tandem");
        }
        for member in &ha.etcd {
            pid_files.push((format!("etcd {}", member.name), member.pid_file(&data_dir)));
            programs.push("etcd");
        }
    }
    let mut stopped = 0;
    for ((what, pid_file), program) in pid_files.iter().zip(programs) {
        if let Some(pid) = running_pid(pid_file, program) {
            stop(what, pid)?;
            stopped += 1;
        }
        let _ = std::fs::remove_file(pid_file);
    }
    let _ = std::fs::remove_file(address_file(&data_dir));
    if let Some(mut cluster) = recorded {
        if let Some(network) = cluster.netns.clone().filter(|network| network.created) {
            netns::remove(&network, &cluster.node_names())?;
            cluster.netns = Some(Network {
                created: false,
                ..network
            });
            record(&data_dir, &cluster)?;
            stopped += 1;
        }
    }
    if stopped == 0 {
        println!("no Tandem cluster is running in {}", data_dir.display());
    } else {
        println!("Tandem is down; the data stays in {}", data_dir.display());
    }
    Ok(())
}

fn stop(what: &str, pid: i32) -> Result<()> {
    let grace = Duration::from_secs(10);
    let target = Pid::from_raw(pid);
    kill(target, Signal::SIGTERM).with_context(|| format!("signal {what} (pid {pid})"))?;
    let deadline = Instant::now() + grace;
    while process_alive(pid) {
        if Instant::now() > deadline {
            eprintln!("warning: {what} (pid {pid}) did not stop within 10s; killing it");
            let _ = kill(target, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped {what} (pid {pid})");
    Ok(())
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct UpWords {
        #[command(flatten)]
        args: UpArgs,
    }

    #[test]
    fn up_args_made_in_code_are_those_of_the_same_command_line() {
        let words = [
            "--nodes",
            "4",
            "--data-dir",
            "/tmp/tandem-x",
            "--timeout",
            "5m",
            "--port",
            "0",
        ];
        let parsed = UpWords::try_parse_from(words).expect("up's options").args;
        let made = UpArgs::new(
            4,
            PathBuf::from("/tmp/tandem-x"),
            Some(0),
            Duration::from_secs(300),
        );
        assert_eq!(made, parsed);
    }
}
