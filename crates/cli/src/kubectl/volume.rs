//! `tandem volume create NAME --size 5Gi --replicas 2 [--cspc NAME]` and `tandem volume delete
//! NAME`: what a StorageClass and a PVC do in Kubernetes, in one command. `create` makes the
//! CStorVolumeConfig and, unless `--wait=false`, waits until the controllers have bound it,
//! printing the events about it as they come.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Subcommand};
use tandem_client::Client;
use tandem_objects::capacity::{
    ANNOTATION_OVER_PROVISIONING, ANNOTATION_PROVISIONING, REASON_INSUFFICIENT_CAPACITY,
};
use tandem_objects::{
    CStorPoolInstance, CStorVolumeConfig, CStorVolumeConfigPhase, CStorVolumeConfigSpec,
    CStorVolumePhase, Event, EventType, Kind, Object, ObjectMeta, Quantity, StorageCapacity,
    VolumeProvision, ANNOTATION_ENDPOINT_NODE, ANNOTATION_TARGET_NODE, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_HOSTNAME,
};

use super::delete::delete_one;
use super::{reference, NamespaceArg};
use crate::server::ServerArgs;
use crate::wait::{wait_for, Deadline, Probe};

/// How often the volume is looked at while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Creates a volume (a CStorVolumeConfig) and waits until it is Bound.
    Create(CreateArgs),
    /// Deletes a volume (its CStorVolumeConfig; the controllers remove the rest).
    Delete(DeleteArgs),
    /// Prints where applications reach the volume: nbd://ADDRESS:PORT/NAME.
    ///
    /// Every node serves every volume on its NBD endpoint (forwarding to the node that runs the
    /// volume's target), so any node's URI works and keeps working when the target moves.
    /// `--node N` prints node N's. Without it: the volume's endpoint node, the node its first
    /// target ran on (recorded on the CStorVolume as tandem.io/endpoint-node), so the URI stays
    /// the same for the life of the volume; pick another node with --node if that one is down.
    Uri(UriArgs),
    /// Moves the volume's replica from one pool to another, with the volume in use: adds a
    /// replica on --to, waits until it is rebuilt and Healthy, then removes the one on --from
    /// (the two edits of spec.policy.replicaPoolInfo in one command, under the same rules).
    /// Recorded in the volume config, so it goes on after any restart; `--wait` follows it.
    Migrate(super::migrate::MigrateArgs),
}

#[derive(Args, Debug)]
pub struct UriArgs {
    /// The volume's name.
    name: String,
    /// Print this node's endpoint [default: the volume's endpoint node, see above].
    #[arg(long)]
    node: Option<String>,
    /// Wait up to this long for the volume's target to be placed and serving.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The volume's name (also its CStorVolume's).
    name: String,
    /// The volume's size, e.g. 5Gi or 10G.
    #[arg(long)]
    size: String,
    /// How many replicas, each in a pool on a different node.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// The CStorPoolCluster whose pools hold the replicas; may be left out when the namespace
    /// has exactly one.
    #[arg(long)]
    cspc: Option<String>,
    /// Reserve each replica's space when it is created (a thick volume: it can never run out
    /// of space, and counts in full against its pools' free space). Volumes are thin by
    /// default: space is taken as data is written.
    #[arg(long)]
    thick: bool,
    /// Wait until the volume is Bound (`--wait=false` returns once it is created).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The volume's name.
    name: String,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(command: VolumeCommand) -> Result<bool> {
    match command {
        VolumeCommand::Create(args) => create(args).await,
        VolumeCommand::Uri(args) => uri(args).await,
        VolumeCommand::Migrate(args) => super::migrate::migrate(args).await,
        VolumeCommand::Delete(args) => {
            let client = args.server.client()?;
            delete_volume(&client, &args.namespace.namespace, &args.name).await
        }
    }
}

/// `tandem volume delete`: deletes the volume's CStorVolumeConfig (the controllers remove the
/// rest), printing kubectl's line; `Ok(false)` if the control plane refused (reported).
pub async fn delete_volume(client: &Client, namespace: &str, name: &str) -> Result<bool> {
    delete_one(client, Kind::CStorVolumeConfig, namespace, name).await
}

/// Waits until the volume's CStorVolume names its target's address and the target serves I/O
/// (Healthy or Degraded), then prints the NBD URI.
async fn uri(args: UriArgs) -> Result<bool> {
    let client = args.server.client()?;
    let namespace = &args.namespace.namespace;
    let credentials = nbd_credentials(&args.server)?;
    let uri = wait_for_endpoint(
        &client,
        namespace,
        &args.name,
        args.node.as_deref(),
        credentials.as_deref(),
        args.timeout,
    )
    .await?;
    println!("{uri}");
    Ok(true)
}

/// `nbd://ADDRESS:PORT/NAME`, the volume's default endpoint (see `tandem volume uri --help`),
/// once its target serves I/O (Healthy or Degraded); waits up to `timeout`.
pub async fn wait_for_uri(
    client: &Client,
    namespace: &str,
    name: &str,
    credentials: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<String> {
    wait_for_endpoint(client, namespace, name, None, credentials, timeout).await
}

/// The directory of the CLI's credential as NBD clients read it (`nbds://...?tls-certificates=`),
/// made beside the credential; `None` without a credential.
pub fn nbd_credentials(server: &ServerArgs) -> Result<Option<std::path::PathBuf>> {
    server
        .credential_files()
        .map(|(ca, certificate, key)| crate::pki::nbd_client_dir(&ca, &certificate, &key))
        .transpose()
}

/// `nbd://ADDRESS:PORT/NAME` of `node`'s endpoint (`None`: the volume's endpoint node, or for a
/// volume that has not recorded one, its target's node), once the volume's target serves I/O
/// (Healthy or Degraded); waits up to `timeout`. A node that requires TLS gets
/// `nbds://ADDRESS:PORT/NAME?tls-certificates=DIR` with the client's `credentials` directory. A
/// node no agent ever reported from and that holds no pool is an error at once.
pub async fn wait_for_endpoint(
    client: &Client,
    namespace: &str,
    name: &str,
    node: Option<&str>,
    credentials: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<String> {
    let deadline = Deadline::after(timeout).polling_every(POLL_INTERVAL);
    wait_for(
        deadline,
        format!("volume {name} has no NBD address"),
        async || {
            let waiting_for = match client.get(Kind::CStorVolume, namespace, name).await {
                Ok(Object::CStorVolume(volume)) => {
                    let serving = matches!(
                        volume.status.phase,
                        CStorVolumePhase::Healthy | CStorVolumePhase::Degraded
                    );
                    let annotations = &volume.metadata.annotations;
                    let chosen = node
                        .or(annotations
                            .get(ANNOTATION_ENDPOINT_NODE)
                            .map(String::as_str))
                        .or(annotations.get(ANNOTATION_TARGET_NODE).map(String::as_str));
                    match (chosen, serving) {
                        (Some(chosen), true) => {
                            match endpoint_of(client, chosen, node.is_some()).await? {
                                Ok((address, false)) => {
                                    return Ok(Probe::Done(format!(
                                        "nbd://{address}/{}",
                                        volume.name()
                                    )))
                                }
                                Ok((address, true)) => {
                                    let Some(dir) = credentials else {
                                        bail!(
                                            "node {chosen} serves NBD over TLS only, and no \
                                             client credential was found (--ca, --certificate, \
                                             --key, or the cluster's --data-dir)"
                                        );
                                    };
                                    let uri = tandem_nbd::NbdUri {
                                        host: address.ip().to_string(),
                                        port: address.port(),
                                        export: volume.name().to_string(),
                                        tls: true,
                                        tls_certificates: Some(dir.display().to_string()),
                                    };
                                    return Ok(Probe::Done(uri.to_string()));
                                }
                                Err(waiting) => waiting,
                            }
                        }
                        _ => format!(
                            "its target to serve (the volume is {})",
                            volume.status.phase
                        ),
                    }
                }
                Ok(_) => bail!("{name} is not a CStorVolume"),
                Err(error) if error.is_not_found() => {
                    // A volume just created has its config before its CStorVolume; a name
                    // with neither is a mistake, said at once.
                    match client.get(Kind::CStorVolumeConfig, namespace, name).await {
                        Ok(_) => "its CStorVolume (the volume is being provisioned)".to_string(),
                        Err(error) if error.is_not_found() => bail!(
                            "volume {name} not found: there is no CStorVolumeConfig {name} in \
                             namespace {namespace}"
                        ),
                        Err(error) => return Err(error.into()),
                    }
                }
                Err(error) => return Err(error.into()),
            };
            Ok(Probe::Waiting(format!("waiting for {waiting_for}")))
        },
    )
    .await
}

/// Node `node`'s NBD endpoint and whether it requires TLS (`Ok(Ok(..))`), or what to wait for
/// (`Ok(Err(..))`). A node nothing is known of is an error when `named` (the user asked for
/// it).
async fn endpoint_of(
    client: &Client,
    node: &str,
    named: bool,
) -> Result<std::result::Result<(std::net::SocketAddr, bool), String>> {
    let nodes = client.nodes().await?;
    if let Some(status) = nodes.iter().find(|status| status.node == node) {
        if status.nbd_address.is_empty() {
            bail!(
                "node {node} has reported no NBD endpoint (is its agent older than the endpoint?)"
            );
        }
        let address = status
            .nbd_address
            .parse::<std::net::SocketAddr>()
            .with_context(|| {
                format!(
                    "node {node} reported {:?} as its NBD endpoint",
                    status.nbd_address
                )
            })?;
        return Ok(Ok((address, status.nbd_tls)));
    }
    let pools: Vec<CStorPoolInstance> = client
        .list_typed(Kind::CStorPoolInstance, None, None)
        .await?;
    let has_pool = pools
        .iter()
        .any(|pool| pool.metadata.labels.get(LABEL_HOSTNAME).map(String::as_str) == Some(node));
    if named && !has_pool {
        let mut known: Vec<&str> = nodes.iter().map(|status| status.node.as_str()).collect();
        known.sort_unstable();
        bail!(
            "unknown node {node}: no agent of that name has reported to the control plane and no \
             pool is on it (nodes that reported: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(Err(format!(
        "node {node} to report its NBD endpoint (its agent has not reported to the control plane \
         since it started; is it running?)"
    )))
}

async fn create(args: CreateArgs) -> Result<bool> {
    let size = Quantity::parse(&args.size)
        .map_err(|error| anyhow::anyhow!("--size {:?}: {error}", args.size))?;
    let client = args.server.client()?;
    let volume = NewVolume {
        name: &args.name,
        size,
        replicas: args.replicas,
        cspc: args.cspc.as_deref(),
        thick: args.thick,
    };
    let wait = args.wait.then_some(args.timeout);
    create_volume(&client, &args.namespace.namespace, &volume, wait).await
}

/// A volume to create, as `volume create`'s options give it.
#[derive(Debug, Clone)]
pub struct NewVolume<'a> {
    pub name: &'a str,
    pub size: Quantity,
    pub replicas: u32,
    /// The pool cluster; `None`: the namespace's only one.
    pub cspc: Option<&'a str>,
    /// Thick: each replica's space is reserved when it is created.
    pub thick: bool,
}

/// `tandem volume create`: creates the volume's CStorVolumeConfig in `namespace` and, with
/// `wait`, waits up to that long until it is Bound, printing as it goes.
pub async fn create_volume(
    client: &Client,
    namespace: &str,
    volume: &NewVolume<'_>,
    wait: Option<Duration>,
) -> Result<bool> {
    let cluster = match volume.cspc {
        Some(cluster) => {
            client
                .get(Kind::CStorPoolCluster, namespace, cluster)
                .await?;
            cluster.to_string()
        }
        None => only_cluster(client, namespace).await?,
    };
    let mut metadata = ObjectMeta {
        namespace: namespace.to_string(),
        ..ObjectMeta::named(volume.name).with_label(LABEL_CSTOR_POOL_CLUSTER, &cluster)
    };
    if volume.thick {
        (metadata.annotations).insert(ANNOTATION_PROVISIONING.to_string(), "thick".to_string());
    }
    let config = CStorVolumeConfig::new(
        metadata,
        CStorVolumeConfigSpec {
            capacity: StorageCapacity::new(volume.size),
            provision: VolumeProvision {
                capacity: StorageCapacity::new(volume.size),
                replica_count: volume.replicas,
            },
            ..CStorVolumeConfigSpec::default()
        },
    );
    client.create(&Object::CStorVolumeConfig(config)).await?;
    let created = reference(Kind::CStorVolumeConfig, volume.name);
    println!("{created} created");
    let Some(timeout) = wait else {
        return Ok(true);
    };
    println!(
        "waiting up to {} for {} replicas in pools of {cluster} ...",
        humantime::format_duration(timeout),
        volume.replicas
    );
    wait_until_bound(client, namespace, volume.name, timeout).await
}

/// The namespace's one CStorPoolCluster, or an error saying why there is no obvious choice.
async fn only_cluster(client: &Client, namespace: &str) -> Result<String> {
    let clusters = client
        .list(Kind::CStorPoolCluster, Some(namespace), None)
        .await?
        .items;
    let names: Vec<&str> = clusters.iter().map(Object::name).collect();
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "there is no CStorPoolCluster in namespace {namespace}: create one first (tandem \
             apply -f cspc.yaml)"
        ),
        several => bail!(
            "namespace {namespace} has {} CStorPoolClusters ({}): name one with --cspc",
            several.len(),
            several.join(", ")
        ),
    }
}

/// Polls the volume until it is Bound, printing each new event about it; on timeout, fails
/// with the newest warning (what the controllers say is missing).
async fn wait_until_bound(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<bool> {
    let deadline = Deadline::after(timeout).polling_every(POLL_INTERVAL);
    let mut shown: Vec<(String, u32)> = Vec::new();
    let mut warning: Option<String> = None;
    wait_for(
        deadline,
        format!("volume {name} is not Bound"),
        async || {
            let object = client.get(Kind::CStorVolumeConfig, namespace, name).await?;
            let events = client.events_about(&object).await?;
            for event in &events {
                let seen = (event.metadata.name.clone(), event.count);
                if !shown.contains(&seen) {
                    print_event(event);
                    shown.push(seen);
                }
                if event.event_type == EventType::Warning {
                    warning = Some(event.message.clone());
                }
            }
            let config = CStorVolumeConfig::try_from(object)?;
            // Enough pools, too little room in them: nothing changes by waiting.
            let no_room = events.last().filter(|newest| {
                newest.event_type == EventType::Warning
                    && newest.reason == REASON_INSUFFICIENT_CAPACITY
            });
            if let (Some(newest), CStorVolumeConfigPhase::Pending) = (no_room, &config.status.phase)
            {
                bail!(
                    "volume {name} cannot be placed: {}\n  It stays Pending and is placed once \
                     pools have room (free space, add pools, or raise {ANNOTATION_OVER_PROVISIONING} \
                     on the pool cluster); `tandem volume delete {name}` gives it up.",
                    newest.message
                );
            }
            match config.status.phase {
                CStorVolumeConfigPhase::Bound => {
                    let pools =
                        pools_and_nodes(client, namespace, &config.status.pool_info).await?;
                    println!(
                        "volume {name} is Bound: {} replicas, in pools {}",
                        config.status.pool_info.len(),
                        pools.join(", ")
                    );
                    return Ok(Probe::Done(true));
                }
                CStorVolumeConfigPhase::Failed => {
                    bail!(
                        "volume {name} failed{}",
                        warning
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )
                }
                CStorVolumeConfigPhase::Pending => {}
            }
            Ok(Probe::Waiting(warning.clone().unwrap_or_else(|| {
                "the controllers reported nothing".to_string()
            })))
        },
    )
    .await
}

/// "cspc-stripe-6qkw (node-1)" for each pool, in order.
async fn pools_and_nodes(
    client: &Client,
    namespace: &str,
    pools: &[String],
) -> Result<Vec<String>> {
    let instances: Vec<CStorPoolInstance> = client
        .list_typed(Kind::CStorPoolInstance, Some(namespace), None)
        .await?;
    Ok(pools
        .iter()
        .map(
            |pool| match instances.iter().find(|instance| instance.name() == pool) {
                Some(instance) => format!("{pool} ({})", instance.spec.host_name),
                None => pool.clone(),
            },
        )
        .collect())
}

fn print_event(event: &Event) {
    println!("{}", event_line(event));
}

/// "  Normal Scaled: successfully scaled volume replicas to 3": an event as `volume create`
/// (and the demo) print it.
pub fn event_line(event: &Event) -> String {
    format!(
        "  {} {}: {}",
        event.event_type.as_str(),
        event.reason,
        event.message
    )
}
