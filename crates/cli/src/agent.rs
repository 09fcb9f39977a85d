//! `tandem agent`: the node agent, one per node; owns one pool directory and the replicas the
//! control plane places in it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::sync::Arc;
use tandem_agent::AgentConfig;

use tandem_agent::{LinkSecurity, NbdTls};
use tandem_objects::Quantity;
use tandem_pki::{ClientCertificates, Credential, Identity};

use crate::server::ServerArgs;

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name; the agent serves the pool whose CSPI is on this node.
    #[arg(long)]
    node: String,
    /// The pool directory (created if missing).
    #[arg(long)]
    pool_dir: PathBuf,
    /// The pool's capacity, e.g. 10G or 64Mi.
    #[arg(long, default_value = "10G")]
    pool_size: String,
    /// Where the replica host listens for targets.
    #[arg(long, default_value = "127.0.0.1:0")]
    data_address: std::net::SocketAddr,
    /// The node's client endpoint: applications reach every volume here, whichever node runs
    /// its target (volumes whose target runs elsewhere are forwarded to it). 10809 is NBD's
    /// standard port.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_address: std::net::SocketAddr,
    /// Where this node serves its own targets, and nothing else, to other nodes' endpoints
    /// [default: the --nbd-address IP with any free port; reported to the control plane].
    #[arg(long)]
    target_address: Option<std::net::SocketAddr>,
    /// Where the agent serves its Prometheus metrics (`GET /metrics`; port 0: any free port,
    /// reported to the control plane; `tandem metrics` lists it).
    #[arg(long, default_value = "127.0.0.1:9580")]
    metrics_address: std::net::SocketAddr,
    /// The address other nodes and clients reach this node at (reported with the ports it
    /// listens on). Needed when --data-address or --nbd-address listen on every interface
    /// (0.0.0.0 or ::); by default the listening addresses are reported as they are.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// How often to heartbeat, renewing this node's lease with the control plane (keep it well
    /// under the control plane's --agent-timeout).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    heartbeat_interval: std::time::Duration,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let pool_size = Quantity::parse(&args.pool_size)
        .with_context(|| format!("--pool-size {:?}", args.pool_size))?;
    let server = args.server.address()?;
    let credentials = args.server.credentials()?;
    if let Some(credentials) = &credentials {
        let identity = credentials.identity();
        if *identity != Identity::Node(args.node.clone()) {
            bail!(
                "the agent of node {} must show its node's certificate (--certificate \
                 DIR/pki/nodes/{}.crt, --key ...), not that of {identity}",
                args.node,
                args.node
            );
        }
    }
    let mut config = AgentConfig::new(args.node, args.pool_dir, pool_size.bytes(), server);
    match args.server.credential_files() {
        Some((ca, certificate, key)) => {
            let ca = std::fs::read_to_string(&ca)
                .with_context(|| format!("read the CA certificate {}", ca.display()))?;
            let credential = Credential::load(&certificate, &key)?;
            config.links = LinkSecurity::mutual_tls(&ca, &credential)
                .context("the TLS set-up of the replica links")?;
            // The NBD endpoints and the metrics both require a certificate of the cluster's CA.
            let server = Arc::new(
                tandem_pki::server_config(&ca, &credential, ClientCertificates::Required)
                    .context("the TLS set-up of the NBD endpoints and the metrics")?,
            );
            config.metrics_tls = Some(Arc::clone(&server));
            config.nbd_tls = Some(NbdTls {
                server,
                client: Arc::new(
                    tandem_pki::client_config(&ca, Some(&credential))
                        .context("the TLS set-up of the forwarders")?,
                ),
            });
        }
        None => {
            // Without a credential nothing is authenticated: loopback only.
            for (flag, address) in [
                ("--data-address", args.data_address),
                ("--nbd-address", args.nbd_address),
                ("--metrics-address", args.metrics_address),
            ] {
                if !address.ip().is_loopback() {
                    bail!(
                        "{flag} {address}: without a credential (--ca, --certificate, --key) the \
                         agent serves only on loopback, as it would let in anyone reaching it"
                    );
                }
            }
        }
    }
    config.credentials = credentials;
    config.data_address = args.data_address;
    config.nbd_address = args.nbd_address;
    config.target_address = args.target_address;
    config.metrics_address = args.metrics_address;
    config.advertise_ip = args.advertise_address;
    config.heartbeat = args.heartbeat_interval;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(tandem_agent::run(
        config,
        crate::control_plane::shutdown_signal(),
    ))
}
