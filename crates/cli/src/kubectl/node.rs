//! `tandem node cordon|uncordon|drain NODE`: retiring a node. A cordoned node's pools take no
//! new replica and its agent no new target (the annotation `tandem.io/cordoned` on each of its
//! CStorPoolInstances, which placement, admission and the target's placement read); the
//! volume controller moves the targets it hosts to other nodes (a planned move: the next
//! generation on the new node, clients reconnect through the stable endpoint). `drain` checks
//! first that every replica on the node has somewhere to go (a usable pool of the volume's
//! cluster, on a node without a replica of that volume, most free space first) and refuses,
//! naming the volumes, when one has not; then cordons, and migrates the replicas
//! (`tandem volume migrate`, at most `--max-parallel` at once) until none is left and no target
//! runs there. Every migration is recorded in the store, so running `drain` again after any
//! crash carries on where it was.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use tandem_client::Client;
use tandem_objects::capacity::{
    provisioned_by_pool, room_for, CapacityPolicy, PoolSpace, Provisioning,
};
use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorPoolInstancePhase, CStorVolume, CStorVolumeConfig,
    CStorVolumeReplica, Kind, Object, ANNOTATION_CORDONED, ANNOTATION_MIGRATE_FROM,
    ANNOTATION_TARGET_NODE,
};

use super::migrate;
use super::NamespaceArg;
use crate::server::ServerArgs;
use crate::wait::{wait_for, Deadline, Probe};
use crate::workload::human;

/// How often the cluster is looked at while draining.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Marks the node unschedulable: its pools take no new replica, its agent no new target.
    Cordon(NodeArgs),
    /// Makes the node schedulable again.
    Uncordon(NodeArgs),
    /// Cordons the node, then moves every replica in its pools to pools on other nodes and
    /// every target it hosts to another node; refuses before changing anything when some
    /// replica has nowhere to go. Works when the node is down (its replicas are rebuilt from
    /// the others); run it again to carry on after an interruption.
    Drain(DrainArgs),
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's name (as its pools' `spec.hostName`).
    node: String,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// How many replicas are rebuilt at once.
    #[arg(long, default_value_t = 2)]
    max_parallel: usize,
    /// How long to wait for the whole drain.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(command: NodeCommand) -> Result<bool> {
    match command {
        NodeCommand::Cordon(args) => cordon(&args, true).await,
        NodeCommand::Uncordon(args) => cordon(&args, false).await,
        NodeCommand::Drain(args) => drain(args).await,
    }
}

/// The node's pools (every pool cluster's), or an error naming the nodes that have some.
async fn pools_on(client: &Client, namespace: &str, node: &str) -> Result<Vec<CStorPoolInstance>> {
    let pools: Vec<CStorPoolInstance> = client
        .list_typed(Kind::CStorPoolInstance, Some(namespace), None)
        .await?;
    let (on, others): (Vec<_>, Vec<_>) = pools.into_iter().partition(|p| p.spec.host_name == node);
    if on.is_empty() {
        let mut nodes: Vec<String> = others.iter().map(|p| p.spec.host_name.clone()).collect();
        nodes.sort();
        nodes.dedup();
        bail!(
            "node {node} has no pool in namespace {namespace} (nodes with pools: {})",
            nodes.join(", ")
        );
    }
    Ok(on)
}

async fn cordon(args: &NodeArgs, cordoned: bool) -> Result<bool> {
    let client = args.server.client()?;
    let node = &args.node;
    set_cordoned(&client, &args.namespace.namespace, node, cordoned).await?;
    println!(
        "node/{node} {}",
        if cordoned { "cordoned" } else { "uncordoned" }
    );
    Ok(true)
}

async fn set_cordoned(client: &Client, namespace: &str, node: &str, cordoned: bool) -> Result<()> {
    for mut pool in pools_on(client, namespace, node).await? {
        let annotations = &mut pool.metadata.annotations;
        let changed = if cordoned {
            annotations
                .insert(ANNOTATION_CORDONED.into(), "true".into())
                .is_none()
        } else {
            annotations.remove(ANNOTATION_CORDONED).is_some()
        };
        if changed {
            client.update(&Object::CStorPoolInstance(pool)).await?;
        }
    }
    Ok(())
}

/// A replica to move: its volume, the pool it leaves and the pool it goes to.
#[derive(Debug, Clone)]
struct Move {
    volume: String,
    from: String,
    to: String,
}

async fn drain(args: DrainArgs) -> Result<bool> {
    let client = args.node.server.client()?;
    let namespace = &args.node.namespace.namespace;
    let node = &args.node.node;
    let leaving: Vec<String> = (pools_on(&client, namespace, node).await?.into_iter())
        .map(|pool| pool.metadata.name)
        .collect();
    let moves = plan(&client, namespace, node, &leaving).await?;
    set_cordoned(&client, namespace, node, true).await?;
    println!("node/{node} cordoned");
    println!(
        "moving {} replica(s) off node {node}, at most {} at once",
        moves.len(),
        args.max_parallel
    );
    let mut pending: Vec<Move> = moves.clone();
    pending.reverse();
    let mut running: Vec<Move> = Vec::new();
    let mut moved = 0;
    // Bytes the finished moves copied.
    let mut copied: u64 = 0;
    let total = moves.len();
    let deadline = Deadline::after(args.timeout).polling_every(POLL_INTERVAL);
    wait_for(
        deadline,
        format!("node {node} is not drained"),
        async || {
            let mut still = Vec::new();
            // The running rebuilds: bytes copied and to copy.
            let (mut copying, mut to_copy) = (0, 0);
            for one in running.drain(..) {
                let pools = (one.from.as_str(), one.to.as_str());
                let state = migrate::check(&client, namespace, &one.volume, pools).await?;
                let new = state.new.as_ref().map(|cvr| &cvr.status);
                if state.done {
                    let bytes = new
                        .and_then(|status| status.last_resync.as_ref())
                        .map_or(0, |resync| resync.bytes);
                    copied += bytes;
                    moved += 1;
                    println!(
                        "  {}: moved from pool {} to pool {} ({} copied; {moved} of {total})",
                        one.volume,
                        one.from,
                        one.to,
                        human(bytes)
                    );
                } else {
                    if let Some(rebuild) = new.and_then(|status| status.rebuild.as_ref()) {
                        copying += rebuild.bytes_done;
                        to_copy += rebuild.bytes_total;
                    }
                    still.push(one);
                }
            }
            running = still;
            while running.len() < args.max_parallel.max(1) {
                let Some(one) = pending.pop() else { break };
                let pools = (one.from.as_str(), one.to.as_str());
                migrate::start(&client, namespace, &one.volume, pools).await??;
                println!(
                    "  {}: migrating from pool {} to pool {}",
                    one.volume, one.from, one.to
                );
                running.push(one);
            }
            if !running.is_empty() || !pending.is_empty() {
                return Ok::<_, anyhow::Error>(Probe::Waiting(format!(
                    "{moved} of {total} replicas moved, {} copied in all; moving {} ({} of {} \
                     copied)",
                    human(copied + copying),
                    names(&running),
                    human(copying),
                    human(to_copy)
                )));
            }
            let targets = targets_on(&client, namespace, node).await?;
            Ok(if targets.is_empty() {
                Probe::Done(())
            } else {
                Probe::Waiting(format!(
                    "the targets of {} still run on node {node}",
                    targets.join(", ")
                ))
            })
        },
    )
    .await?;
    println!(
        "node/{node} drained: {total} replica(s) moved ({} copied), no target left on it",
        human(copied)
    );
    Ok(true)
}

fn names(moves: &[Move]) -> String {
    let names: Vec<&str> = moves.iter().map(|one| one.volume.as_str()).collect();
    names.join(", ")
}

/// The volumes whose target runs on `node`.
async fn targets_on(client: &Client, namespace: &str, node: &str) -> Result<Vec<String>> {
    let volumes: Vec<CStorVolume> = client
        .list_typed(Kind::CStorVolume, Some(namespace), None)
        .await?;
    Ok(volumes
        .iter()
        .filter(|volume| volume.metadata.annotation(ANNOTATION_TARGET_NODE) == Some(node))
        .map(|volume| volume.name().to_string())
        .collect())
}

/// Where each replica on `leaving` goes: a usable pool of its volume's cluster on a node
/// holding no replica of that volume, the most free space first (counting the replicas this
/// drain puts there); refused, naming every volume, if one has nowhere to go. A volume already
/// migrating off the node keeps its migration.
async fn plan(
    client: &Client,
    namespace: &str,
    node: &str,
    leaving: &[String],
) -> Result<Vec<Move>> {
    let pools: Vec<CStorPoolInstance> = client
        .list_typed(Kind::CStorPoolInstance, Some(namespace), None)
        .await?;
    let configs: Vec<CStorVolumeConfig> = client
        .list_typed(Kind::CStorVolumeConfig, Some(namespace), None)
        .await?;
    let replicas: Vec<CStorVolumeReplica> = client
        .list_typed(Kind::CStorVolumeReplica, Some(namespace), None)
        .await?;
    let clusters: Vec<CStorPoolCluster> = client
        .list_typed(Kind::CStorPoolCluster, Some(namespace), None)
        .await?;
    let policy = |cluster: Option<&str>| {
        (clusters.iter())
            .find(|found| Some(found.name()) == cluster)
            .map(|found| CapacityPolicy::lenient(&found.metadata.annotations))
            .unwrap_or_default()
    };
    // What each pool has promised, with what this drain puts there.
    let mut provisioned = provisioned_by_pool(&replicas);
    let node_of: BTreeMap<&str, &str> = (pools.iter())
        .map(|pool| (pool.metadata.name.as_str(), pool.spec.host_name.as_str()))
        .collect();
    let mut free: BTreeMap<&str, u64> = (pools.iter())
        .map(|pool| {
            (
                pool.metadata.name.as_str(),
                pool.status.capacity.free.bytes(),
            )
        })
        .collect();
    let mut moves = Vec::new();
    let mut stuck = Vec::new();
    let mut busy = Vec::new();
    for config in &configs {
        let desired = config.desired_pool_names();
        let Some(from) = desired
            .iter()
            .find(|pool| leaving.iter().any(|l| l == *pool))
        else {
            continue;
        };
        if let Some(pending) = config.metadata.annotations.get(ANNOTATION_MIGRATE_FROM) {
            // Already on its way (an earlier drain, or a migration by hand): `volume migrate`
            // put the new pool last.
            match desired.last() {
                Some(to) if pending == from && !leaving.iter().any(|l| l == to) => {
                    moves.push(Move {
                        volume: config.name().to_string(),
                        from: from.to_string(),
                        to: to.to_string(),
                    });
                }
                _ => busy.push(format!("{} (from pool {pending})", config.name())),
            }
            continue;
        }
        let nodes_used: Vec<&str> = (desired.iter())
            .filter_map(|pool| node_of.get(pool).copied())
            .collect();
        let size = config.spec.capacity.storage.bytes();
        let provisioning = Provisioning::of(&config.metadata.annotations).unwrap_or_default();
        let policy = policy(config.pool_cluster_name());
        let to = (pools.iter())
            .filter(|pool| {
                pool.pool_cluster_name() == config.pool_cluster_name()
                    && pool.status.phase == CStorPoolInstancePhase::Online
                    && !pool.status.read_only
                    && !pool.cordoned()
                    && pool.spec.host_name != node
                    && !nodes_used.contains(&pool.spec.host_name.as_str())
            })
            .filter(|pool| {
                let name = pool.metadata.name.as_str();
                let capacity = pool.status.capacity.total.bytes();
                let space = PoolSpace {
                    capacity,
                    used: capacity.saturating_sub(free[name]),
                    provisioned: provisioned.get(name).copied().unwrap_or(0),
                };
                room_for(name, space, size, provisioning, &policy).is_ok()
            })
            .max_by_key(|pool| {
                (
                    free[pool.metadata.name.as_str()],
                    std::cmp::Reverse(&pool.metadata.name),
                )
            })
            .map(|pool| pool.metadata.name.as_str());
        match to {
            Some(to) => {
                let left = free.get_mut(to).expect("every pool counted");
                // A thin replica takes about what its source holds; counted in full, as
                // thick, so a drain never plans more than a pool can hold.
                *left = left.saturating_sub(size);
                *provisioned.entry(to).or_default() += size;
                moves.push(Move {
                    volume: config.name().to_string(),
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
            None => stuck.push(config.name().to_string()),
        }
    }
    if !busy.is_empty() {
        bail!(
            "cannot drain node {node} yet: these volumes are migrating already: {}; wait until \
             they are done; nothing was changed",
            busy.join(", ")
        );
    }
    if !stuck.is_empty() {
        bail!(
            "cannot drain node {node}: no usable pool (ONLINE, writable, not cordoned, with room \
             under its pool cluster's provisioning limit and minimum free space, on a node \
             without a replica of the volume) can take the replica of {}; nothing was changed",
            stuck.join(", ")
        );
    }
    Ok(moves)
}
