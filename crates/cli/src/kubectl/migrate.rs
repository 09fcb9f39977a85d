//! `tandem volume migrate NAME --from POOL --to POOL`: the seed's migration (add the new pool to
//! `spec.policy.replicaPoolInfo`, wait until its replica is Healthy, remove the old pool) as one
//! command. It is one write: the new pool joins the spec, and the annotation
//! `tandem.io/migrate-from` records the pool to remove; the volume controller removes it once
//! the scale-up has finished. Both halves live in the store, so the migration goes on after any
//! restart (of the control plane, an agent, or this command), and the admission rules of the
//! edits apply to it unchanged. With `--wait` (the default) it follows the rebuild with progress
//! until the placement is the one asked for. `tandem node drain` migrates with [`start`] and
//! [`check`] too.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args};
use tandem_client::{Client, ClientError};
use tandem_objects::{
    CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase, Kind, Object, ReplicaPoolInfo,
    ANNOTATION_MIGRATE_FROM,
};
use tokio::time::Instant;

use super::{reference, report, NamespaceArg};
use crate::progress::{self, Progress};
use crate::server::ServerArgs;
use crate::wait::{wait_for, Deadline, Probe};

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

/// What [`start`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Started {
    /// The migration is recorded now.
    Recorded,
    /// The same migration was recorded before (it is under way, or finishing).
    AlreadyMigrating,
    /// The volume has a replica on `to` and none on `from`: nothing to record.
    AlreadyDone,
}

/// Records the migration of volume `name`'s replica from pool `from` to pool `to`, unless it is
/// recorded or done already. `Ok(Err(_))`: the control plane refused it (its admission rules);
/// `Err(_)`: it cannot be asked for (no such volume, no replica on `from`, ...).
pub(super) async fn start(
    client: &Client,
    namespace: &str,
    name: &str,
    (from, to): (&str, &str),
) -> Result<Result<Started, ClientError>> {
    let config = volume_config(client, namespace, name).await?;
    let pools: Vec<&str> = config.desired_pool_names();
    let listed = pools.join(", ");
    match config.metadata.annotations.get(ANNOTATION_MIGRATE_FROM) {
        Some(pending) if pending == from && pools.contains(&to) => {
            return Ok(Ok(Started::AlreadyMigrating))
        }
        Some(pending) => bail!(
            "volume {name} is migrating from pool {pending} already: wait until it is done (its \
             pools are {listed})"
        ),
        None if from == to => bail!("--from and --to name the same pool, {from}"),
        None if pools.contains(&to) && !pools.contains(&from) => {
            return Ok(Ok(Started::AlreadyDone))
        }
        None if !pools.contains(&from) => {
            bail!("volume {name} has no replica on pool {from}: its replicas are on {listed}")
        }
        None if pools.contains(&to) => {
            bail!("volume {name} already has a replica on pool {to}: its replicas are on {listed}")
        }
        None => {}
    }
    let mut moving = config.clone();
    moving.spec.policy.replica_pool_info.push(ReplicaPoolInfo {
        pool_name: to.to_string(),
    });
    (moving.metadata.annotations).insert(ANNOTATION_MIGRATE_FROM.into(), from.into());
    // At the version read: a concurrent edit makes this fail rather than be lost.
    Ok(client
        .update(&Object::CStorVolumeConfig(moving))
        .await
        .map(|_| Started::Recorded))
}

/// How far a migration is.
pub(super) struct Check {
    pub done: bool,
    /// What it waits for, when not done.
    pub waiting: String,
    /// The replica on the new pool, once it exists.
    pub new: Option<CStorVolumeReplica>,
    /// The volume's pools once it is done.
    pub wanted: Vec<String>,
}

/// Whether volume `name` has moved from `from` to `to`: its spec and status name the same pools,
/// `to` among them and `from` not, the annotation is gone, the new replica is Healthy and the
/// old one deleted (or its deletion asked for: on a dead node its data is destroyed when its
/// agent is back).
pub(super) async fn check(
    client: &Client,
    namespace: &str,
    name: &str,
    (from, to): (&str, &str),
) -> Result<Check> {
    let config = volume_config(client, namespace, name).await?;
    let new = replica(client, namespace, name, to).await?;
    let old = (replica(client, namespace, name, from).await?)
        .filter(|old| old.metadata.deletion_timestamp.is_empty());
    let mut desired: Vec<&str> = config.desired_pool_names();
    let mut current: Vec<&str> = (config.current_pool_names().iter())
        .map(String::as_str)
        .collect();
    let mut wanted: Vec<&str> = desired
        .iter()
        .copied()
        .filter(|pool| *pool != from)
        .collect();
    if !wanted.contains(&to) {
        wanted.push(to);
    }
    desired.sort_unstable();
    current.sort_unstable();
    wanted.sort_unstable();
    let healthy =
        (new.as_ref()).is_some_and(|new| new.status.phase == CStorVolumeReplicaPhase::Healthy);
    let waiting = if desired != wanted {
        match &new {
            Some(new) => format!("its new replica is {}", new.status.phase),
            None => format!("its new replica ({name}-{to}) was not created"),
        }
    } else if !healthy {
        "its new replica is not Healthy".to_string()
    } else if current != wanted || old.is_some() {
        format!("the replica on pool {from} is being removed (the target lets go of it first)")
    } else {
        String::new()
    };
    Ok(Check {
        done: waiting.is_empty(),
        waiting,
        new,
        wanted: wanted.iter().map(|pool| pool.to_string()).collect(),
    })
}

pub async fn migrate(args: MigrateArgs) -> Result<bool> {
    let client = args.server.client()?;
    let namespace = &args.namespace.namespace;
    let (name, from, to) = (&args.name, args.from.as_str(), args.to.as_str());
    let started = match start(&client, namespace, name, (from, to)).await? {
        Ok(started) => started,
        Err(refused) => {
            report(refused, None)?;
            return Ok(false);
        }
    };
    match started {
        Started::Recorded => println!(
            "{} migrating from pool {from} to pool {to}",
            reference(Kind::CStorVolumeConfig, name)
        ),
        Started::AlreadyMigrating => {
            println!("volume {name} is already migrating from pool {from} to pool {to}")
        }
        Started::AlreadyDone => {
            println!("volume {name} has a replica on pool {to} and none on pool {from} already")
        }
    }
    if !args.wait {
        return Ok(true);
    }
    wait_until_moved(&client, namespace, &args, started == Started::AlreadyDone).await
}

/// Follows the migration until [`check`] says it is done, showing the rebuild's progress
/// (`done`: the spec was already so when the command started).
async fn wait_until_moved(
    client: &Client,
    namespace: &str,
    args: &MigrateArgs,
    done: bool,
) -> Result<bool> {
    let started = Instant::now();
    let (name, from, to) = (&args.name, args.from.as_str(), args.to.as_str());
    let deadline = Deadline::after(args.timeout).polling_every(POLL_INTERVAL);
    let mut progress = Progress::new();
    let mut phase = None;
    let mut copied = None;
    let moved = wait_for(
        deadline,
        format!("volume {name} has not moved from pool {from} to pool {to}"),
        async || {
            let check = check(client, namespace, name, (from, to)).await?;
            if let Some(new) = &check.new {
                if phase != Some(new.status.phase) {
                    progress.println(format!("  {}: {}", new.name(), new.status.phase));
                    phase = Some(new.status.phase);
                }
                if let Some(rebuild) = &new.status.rebuild {
                    progress.show(rebuild);
                }
                if let Some(resync) = &new.status.last_resync {
                    copied = Some(progress::copied(resync));
                }
            }
            Ok(if check.done {
                Probe::Done(check.wanted)
            } else {
                Probe::Waiting(check.waiting)
            })
        },
    )
    .await;
    let wanted = match moved {
        Ok(wanted) => wanted,
        Err(error) => {
            progress.abandon();
            return Err(error);
        }
    };
    progress.finish();
    if done {
        println!("its replicas are on {}", wanted.join(", "));
        return Ok(true);
    }
    let copied = copied
        .map(|copied| format!("; {copied}"))
        .unwrap_or_default();
    println!(
        "volume {name} moved from pool {from} to pool {to} in {:.1} s{copied}; its replicas are \
         on {}",
        started.elapsed().as_secs_f64(),
        wanted.join(", ")
    );
    Ok(true)
}

/// The volume's config, or an error saying it does not exist.
async fn volume_config(client: &Client, namespace: &str, name: &str) -> Result<CStorVolumeConfig> {
    match client
        .find(Kind::CStorVolumeConfig, namespace, name)
        .await?
    {
        Some(object) => Ok(CStorVolumeConfig::try_from(object)?),
        None => bail!("volume {name} not found in namespace {namespace}"),
    }
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
