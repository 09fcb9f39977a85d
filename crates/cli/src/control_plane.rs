//! `tandem control-plane`: serves the object API from its store (the redb file under the data
//! directory, or etcd) and runs the controllers while it leads: always, alone on redb; when
//! elected, among the control planes that share an etcd.
//!
//! The API is served over HTTPS, every request authenticated by a client certificate of the
//! cluster's CA (`--ca`, `--certificate`, `--key`; without them, the data directory's, created
//! at the first start: `DIR/pki`). Plain HTTP only when asked for with `--insecure`, and only on
//! a loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tandem_client::{Client, Credentials};
use tandem_control_plane::leader::Leader;
use tandem_control_plane::{compaction, controllers, router, Api};
use tandem_pki::{ClientCertificates, Credential, Identity};
use tandem_store::election::{self, ControlPlane, ElectionConfig, Leadership};
use tandem_store::{Location, RedbStore, Store, StoreError};

use crate::pki::Pki;

use crate::server::{address_file, default_data_dir};

#[derive(Args)]
pub struct ControlPlaneArgs {
    /// Where the store lives (`control-plane/store.redb` under it) [default: ~/.tandem].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// How long a node agent may stay silent (its lease) before its node's targets fail over
    /// and its pool is marked OFFLINE.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// Also serve the API on this Unix socket, and record that address (`unix:PATH`) for the
    /// CLI: processes in another network namespace on this host (the `tandem` command in the
    /// root namespace of a `tandem up --netns` cluster) reach the control plane through it.
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// Where the objects live: `redb:PATH`, a path, or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` [default: control-plane/store.redb under the
    /// data directory]. Any number of control planes may share one etcd: all serve the API, the
    /// elected one runs the controllers.
    #[arg(long, env = "TANDEM_STORE")]
    store: Option<String>,
    /// The credential for an etcd that serves TLS.
    #[command(flatten)]
    etcd: crate::store::EtcdTlsArgs,
    /// On etcd, the leader's lease: how long the controllers stand still after their leader
    /// dies before another control plane leads.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    leader_lease: Duration,
    /// On etcd, how long the history of changes is kept for watches: this often the leader has
    /// etcd forget what came before the previous time, as Kubernetes' API server does. A watch
    /// from further back lists again. 0 keeps every change (etcd's own
    /// `--auto-compaction-retention` may then bound it).
    #[arg(
        long,
        env = "TANDEM_COMPACTION_INTERVAL",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    compaction_interval: Duration,
    /// The cluster CA's certificate: clients must show a certificate it signed [default:
    /// DIR/pki/ca.crt, the CA created at the first start if there is none].
    #[arg(long, requires_all = ["certificate", "key"])]
    ca: Option<PathBuf>,
    /// This control plane's certificate (its identity must be a control plane's) [default:
    /// DIR/pki/control-planes/control-plane.crt, issued from the CA if missing].
    #[arg(long, requires_all = ["ca", "key"])]
    certificate: Option<PathBuf>,
    /// The certificate's private key.
    #[arg(long, requires_all = ["ca", "certificate"])]
    key: Option<PathBuf>,
    /// Serve plain HTTP, with no authentication: whoever reaches the address may do anything.
    /// Refused unless --listen is a loopback address.
    #[arg(long, conflicts_with_all = ["ca", "certificate", "key"])]
    insecure: bool,
}

/// How the API is served.
enum Transport {
    /// HTTPS: the server's TLS configuration, and the credentials the controllers show it.
    Tls {
        server: Arc<tandem_pki::rustls::ServerConfig>,
        controllers: Box<Credentials>,
    },
    /// Plain HTTP on loopback (`--insecure`).
    Plain,
}

impl Transport {
    fn scheme(&self) -> &'static str {
        match self {
            Transport::Tls { .. } => "https",
            Transport::Plain => "http",
        }
    }
}

/// The TLS set-up from the flags, or from the data directory (made at the first start).
fn transport(args: &ControlPlaneArgs, data_dir: &Path) -> Result<Transport> {
    if args.insecure {
        if !args.listen.ip().is_loopback() {
            bail!(
                "--insecure serves the API to anyone who reaches it, so it is only allowed on a \
                 loopback address, not on {}",
                args.listen
            );
        }
        tracing::warn!("serving the API over plain HTTP without authentication (--insecure)");
        return Ok(Transport::Plain);
    }
    let (ca, certificate, key) = match (&args.ca, &args.certificate, &args.key) {
        (Some(ca), Some(certificate), Some(key)) => (ca.clone(), certificate.clone(), key.clone()),
        _ => {
            let pki = Pki::of(data_dir);
            // The first start of a standalone control plane makes the cluster's CA, its own
            // credential and an admin's for the CLI.
            let (addresses, hosts) = crate::pki::server_names(&[args.listen.ip()]);
            let (certificate, key) = pki.ensure(
                &Identity::ControlPlane("control-plane".into()),
                &addresses,
                &hosts,
            )?;
            pki.ensure(&Identity::Admin(crate::pki::ADMIN.into()), &[], &[])?;
            (pki.ca(), certificate, key)
        }
    };
    let ca_pem = std::fs::read_to_string(&ca)
        .with_context(|| format!("read the CA certificate {}", ca.display()))?;
    let credential = Credential::load(&certificate, &key)?;
    let identity = credential.identity()?;
    if !matches!(identity, Identity::ControlPlane(_)) {
        bail!(
            "{} is the certificate of {identity}, not of a control plane",
            certificate.display()
        );
    }
    let server = tandem_pki::server_config(&ca_pem, &credential, ClientCertificates::Optional)
        .with_context(|| format!("the TLS set-up from {}", certificate.display()))?;
    let controllers = Box::new(Credentials::new(&ca_pem, &credential)?);
    tracing::info!(%identity, certificate = %certificate.display(), "serving the API over HTTPS");
    Ok(Transport::Tls {
        server: Arc::new(server),
        controllers,
    })
}

/// How long a restarted control plane waits for its store and port to be let go.
const RESTART_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `attempt` until it succeeds, or fails in a way `in_use` does not call temporary, or
/// [`RESTART_PATIENCE`] is over.
async fn patiently<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
    in_use: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let deadline = tokio::time::Instant::now() + RESTART_PATIENCE;
    loop {
        match attempt() {
            Err(error) if in_use(&error) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

pub fn run(args: ControlPlaneArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let directory = data_dir.join("control-plane");
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("create data directory {}", directory.display()))?;
    let location = match &args.store {
        Some(text) => Location::parse(text)?,
        None => Location::Redb(directory.join("store.redb")),
    };
    let transport = transport(&args, &data_dir)?;
    let etcd_tls = args.etcd.load()?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async move {
        let store: Arc<dyn Store> = match &location {
            // After a kill -9 the previous control plane may still be letting go of its store
            // and its port for a moment: wait for them rather than fail a prompt restart.
            Location::Redb(path) => Arc::new(
                patiently(
                    || RedbStore::open(path),
                    |error| matches!(error, StoreError::InUse(_)),
                )
                .await
                .with_context(|| format!("open store {}", path.display()))?,
            ),
            etcd => {
                let (etcd, tls) = (etcd.clone(), etcd_tls.clone());
                tokio::task::spawn_blocking(move || etcd.open_with(tls.as_ref()))
                    .await
                    .context("open the store")??
            }
        };
        let listener = patiently(
            || std::net::TcpListener::bind(args.listen),
            |error| error.kind() == std::io::ErrorKind::AddrInUse,
        )
        .await
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        })
        .with_context(|| format!("listen on {}", args.listen))?;
        let address = listener
            .local_addr()
            .context("read the listening address")?;
        let scheme = transport.scheme();
        // Scripts read this line to find the API; the CLI reads the address file.
        println!("control plane listening on {scheme}://{address}");
        // Where processes on this host reach it over TCP: listening on every interface, on
        // loopback.
        let mut local = address;
        if address.ip().is_unspecified() {
            local.set_ip(match address.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let local_url = format!("{scheme}://{local}");
        let unix = match &args.unix_socket {
            Some(socket) => Some(bind_unix_socket(socket)?),
            None => None,
        };
        let recorded = match &args.unix_socket {
            Some(socket) => {
                println!("control plane listening on unix:{}", socket.display());
                format!("unix:{}", socket.display())
            }
            None => local_url.clone(),
        };
        write_atomically(&address_file(&data_dir), &format!("{recorded}\n"))?;
        tracing::info!(%address, store = %location, "control plane started");
        let api = Api::new(store, args.agent_timeout);
        tokio::spawn(api.clone().follow_store());
        let (leader, election) = match &location {
            Location::Redb(_) => (Leader::Sole, None),
            Location::Etcd { endpoints, prefix } => {
                let config = ElectionConfig {
                    endpoints: (endpoints.iter())
                        .map(|endpoint| tandem_store::etcd_url(endpoint, etcd_tls.as_ref()))
                        .collect(),
                    tls: etcd_tls.clone(),
                    prefix: prefix.clone(),
                    me: ControlPlane {
                        address: local_url.clone(),
                        pid: std::process::id(),
                    },
                    ttl: args.leader_lease,
                };
                let (publish, leadership) = tokio::sync::watch::channel(Leadership::Following);
                let election = tokio::spawn(election::run(config, publish));
                (Leader::Elected(leadership), Some(election))
            }
        };
        let compaction = tokio::spawn(compaction::run(
            api.clone(),
            leader.clone(),
            args.compaction_interval,
        ));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let client = match &transport {
            Transport::Tls { controllers, .. } => {
                Client::with_credentials(&local_url, Some(controllers))
            }
            Transport::Plain => Client::new(&local_url),
        }
        .context("the controllers' client")?;
        let controllers = tokio::spawn(controllers::run(
            api.clone(),
            client,
            leader,
            wait_for(stopped.clone()),
        ));
        let on_socket = unix.map(|listener| {
            let router = router(api.clone());
            let stopped = stopped.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(wait_for(stopped))
                    .await
            })
        });
        let served = match transport {
            Transport::Tls { server, .. } => {
                tandem_https::serve(
                    listener,
                    server,
                    tandem_https::Limits::default(),
                    router(api),
                    shutdown_signal(),
                )
                .await
            }
            Transport::Plain => {
                axum::serve(listener, router(api))
                    .with_graceful_shutdown(shutdown_signal())
                    .await
            }
        }
        .context("serve the API");
        // The receiver may already be gone if the controllers ended on their own.
        let _ = stop.send(true);
        let _ = controllers.await;
        compaction.abort();
        // The controllers held the only receiver: the election gives the lease back now, so
        // another control plane leads at once rather than after the lease.
        if let Some(election) = election {
            let _ = tokio::time::timeout(Duration::from_secs(2), election).await;
        }
        if let Some(on_socket) = on_socket {
            let _ = on_socket.await;
        }
        if let Some(socket) = &args.unix_socket {
            let _ = std::fs::remove_file(socket);
        }
        served
    })
}

/// Listens on `socket`, replacing a socket file a previous (killed) control plane left.
fn bind_unix_socket(socket: &std::path::Path) -> Result<tokio::net::UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(metadata) if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) => {
            std::fs::remove_file(socket)
                .with_context(|| format!("remove the stale socket {}", socket.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "--unix-socket {}: a file that is not a socket is in the way",
            socket.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listen on the Unix socket {}", socket.display()))?;
    // Requests on the socket are not authenticated: only this user may connect.
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restrict {} to its owner", socket.display()))?;
    Ok(listener)
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone, which is a stop too.
    let _ = stopped.wait_for(|stop| *stop).await;
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("control plane stopping");
}

/// Writes a small file so that a reader sees the old or the new content, never a part.
pub fn write_atomically(path: &std::path::Path, content: &str) -> Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, content)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("write {}", path.display()))
}
