//! `tandem volume migrate NAME --from POOL --to POOL`: the seed's migration (add the new pool to
//! `spec.policy.replicaPoolInfo`, wait until its replica is Healthy, remove the old pool) as one
//! command. It is one write: the new pool joins the spec, and the annotation
//! `tandem.io/migrate-from` records the pool to remove; the volume controller removes it once
//! the scale-up has finished. Both halves live in the store, so the migration goes on after any
//! restart (of the control plane, an agent, or this command), and the admission rules of the
//! edits apply to it unchanged. With `--wait` (the default) it follows the rebuild with progress
//! until the placement is the one asked for.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args};
use tandem_client::Client;
use tandem_objects::{
    CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase, Kind, Object, ReplicaPoolInfo,
    ANNOTATION_MIGRATE_FROM,
};
use tokio::time::Instant;

use super::{reference, report, NamespaceArg};
use crate::progress::Progress;
use crate::server::ServerArgs;
use crate::wait::{wait_for, Deadline, Probe};
use crate::workload::human;

/// How often the volume is looked at while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The volume's name.
    name: String,
    /// The pool whose replica leaves.
    #[arg(long)]
    from: String,
    /// The pool that gets a new replica (on a node without one of this volume).
    #[arg(long)]
    to: String,
    /// Wait until the migration is done, showing the rebuild's progress (`--wait=false`
    /// returns once it is recorded; it goes on without this command).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn migrate(args: MigrateArgs) -> Result<bool> {
    let client = args.server.client()?;
    let namespace = &args.namespace.namespace;
    let (from, to) = (args.from.as_str(), args.to.as_str());
    let object = client
        .find(Kind::CStorVolumeConfig, namespace, &args.name)
        .await?;
    let Some(object) = object else {
        bail!("volume {} not found in namespace {namespace}", args.name);
    };
    let config = CStorVolumeConfig::try_from(object)?;
    let pools: Vec<&str> = config.desired_pool_names();
    let migrating = config.metadata.annotations.get(ANNOTATION_MIGRATE_FROM);
    match migrating {
        // The same migration again (after this command was stopped, say): follow it.
        Some(pending) if pending == from && pools.contains(&to) => {
            println!(
                "volume {} is already migrating from pool {from} to pool {to}",
                args.name
            );
        }
        Some(pending) => bail!(
            "volume {} is migrating from pool {pending} already: wait until it is done (its \
             pools are {})",
            args.name,
            pools.join(", ")
        ),
        None if from == to => bail!("--from and --to name the same pool, {from}"),
        // Asked again once it is done (or about to be): nothing to write.
        None if pools.contains(&to) && !pools.contains(&from) => {
            println!(
                "volume {} has a replica on pool {to} and none on pool {from} already",
                args.name
            );
        }
        None => {
            if !pools.contains(&from) {
                bail!(
                    "volume {} has no replica on pool {from}: its replicas are on {}",
                    args.name,
                    pools.join(", ")
                );
            }
            if pools.contains(&to) {
                bail!(
                    "volume {} already has a replica on pool {to}: its replicas are on {}",
                    args.name,
                    pools.join(", ")
                );
            }
            let mut moving = config.clone();
            moving.spec.policy.replica_pool_info.push(ReplicaPoolInfo {
                pool_name: to.to_string(),
            });
            (moving.metadata.annotations).insert(ANNOTATION_MIGRATE_FROM.into(), from.into());
            // At the version read: a concurrent edit makes this fail rather than be lost.
            if let Err(error) = client.update(&Object::CStorVolumeConfig(moving)).await {
                report(error, None)?;
                return Ok(false);
            }
            println!(
                "{} migrating from pool {from} to pool {to}",
                reference(Kind::CStorVolumeConfig, &args.name)
            );
        }
    }
    if !args.wait {
        return Ok(true);
    }
    let done = !pools.contains(&from) && migrating.is_none();
    let mut wanted: Vec<String> = (pools.iter())
        .filter(|pool| **pool != from)
        .map(|pool| pool.to_string())
        .collect();
    if !wanted.iter().any(|pool| pool == to) {
        wanted.push(to.to_string());
    }
    wait_until_moved(&client, namespace, &args, &wanted, done).await
}

/// Follows the migration until the volume's spec and status name exactly `wanted`, the new
/// replica is Healthy and the old one is gone, showing the rebuild's progress (`done`: the spec
/// was already so when the command started).
async fn wait_until_moved(
    client: &Client,
    namespace: &str,
    args: &MigrateArgs,
    wanted: &[String],
    done: bool,
) -> Result<bool> {
    let started = Instant::now();
    let (name, from, to) = (&args.name, &args.from, &args.to);
    let deadline = Deadline::after(args.timeout).polling_every(POLL_INTERVAL);
    let mut progress = Progress::new();
    let mut phase = None;
    let mut copied = None;
    let moved = wait_for(
        deadline,
        format!("volume {name} has not moved from pool {from} to pool {to}"),
        async || {
            let config = client.get(Kind::CStorVolumeConfig, namespace, name).await?;
            let config = CStorVolumeConfig::try_from(config)?;
            let new = replica(client, namespace, name, to).await?;
            let old = replica(client, namespace, name, from).await?;
            if let Some(new) = &new {
                if phase != Some(new.status.phase) {
                    progress.println(format!("  {}: {}", new.name(), new.status.phase));
                    phase = Some(new.status.phase);
                }
                if let Some(rebuild) = &new.status.rebuild {
                    progress.show(rebuild);
                }
                if let Some(resync) = &new.status.last_resync {
                    copied = Some((resync.bytes, resync.source.clone(), resync.full));
                }
            }
            let mut desired: Vec<&str> = config.desired_pool_names();
            let mut current: Vec<&str> = (config.current_pool_names().iter())
                .map(String::as_str)
                .collect();
            let mut wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            desired.sort_unstable();
            current.sort_unstable();
            wanted.sort_unstable();
            let healthy = new
                .as_ref()
                .is_some_and(|new| new.status.phase == CStorVolumeReplicaPhase::Healthy);
            Ok(match () {
                () if desired != wanted => Probe::Waiting(match &new {
                    Some(new) => format!("its new replica is {}", new.status.phase),
                    None => format!("its new replica ({name}-{to}) was not created"),
                }),
                () if !healthy => Probe::Waiting("its new replica is not Healthy".into()),
                () if current != wanted || old.is_some() => Probe::Waiting(format!(
                    "the replica on pool {from} is being removed (the target lets go of it \
                     first)"
                )),
                () => Probe::Done(()),
            })
        },
    )
    .await;
    if let Err(error) = moved {
        progress.abandon();
        return Err(error);
    }
    progress.finish();
    if done {
        println!("its replicas are on {}", wanted.join(", "));
        return Ok(true);
    }
    let copied = match copied {
        Some((bytes, source, full)) => format!(
            "; {} copied from replica {source} ({})",
            human(bytes),
            if full {
                "full rebuild"
            } else {
                "changed regions only"
            }
        ),
        None => String::new(),
    };
    println!(
        "volume {name} moved from pool {from} to pool {to} in {:.1} s{copied}; its replicas are \
         on {}",
        started.elapsed().as_secs_f64(),
        wanted.join(", ")
    );
    Ok(true)
}

/// The volume's replica on `pool`, if there is one (CStorVolumeReplica `VOLUME-POOL`).
async fn replica(
    client: &Client,
    namespace: &str,
    volume: &str,
    pool: &str,
) -> Result<Option<CStorVolumeReplica>> {
    let name = format!("{volume}-{pool}");
    let found = (client
        .find(Kind::CStorVolumeReplica, namespace, &name)
        .await)
        .with_context(|| format!("read CStorVolumeReplica {name}"))?;
    found
        .map(CStorVolumeReplica::try_from)
        .transpose()
        .map_err(Into::into)
}
