//! `tandem demo`: the seed's walk-through (cStor's "How to Migrate Data Replica Across Nodes")
//! for real, on a local cluster, with an application writing to the volume the whole time:
//!
//! 1. start (or reuse) the local cluster as `tandem up` does, and show its pools;
//! 2. create a 2-replica volume `pvc-<uuid>` and show where its replicas are;
//! 3. start the application: a task writing 64 KiB blocks across the volume over NBD (the
//!    `tandem_nbd` client), with FUA writes, flushes and read-back checks, timing every I/O;
//! 4. scale up to the pool with no replica (a merge patch of `spec.policy.replicaPoolInfo`, as
//!    `tandem patch` sends it) and follow the new replica's rebuild until it is Healthy;
//! 5. scale down: drop the first original pool, wait until its replica is gone and the pool's
//!    space is freed;
//! 6. stop the application and read back every block: each one's last content is known.
//!
//! The summary says how much was written and verified, how many I/O errors there were, and the
//! longest single I/O ("the longest I/O stall"); the exit status is 1 if any I/O failed or any
//! block read back wrong. Every wait has a deadline (`--timeout`) and fails naming what did not
//! happen. The cluster and the volume are left in place to look around (`--cleanup` deletes
//! the volume); `tandem down` stops the cluster.
//!
//! Everything goes through the same code as the commands it names: `cluster::up`, the `volume
//! create` verb, the API client for patches, `render_table` for the tables.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tandem_client::Client as ApiClient;
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstancePhase, CStorVolumeConfig, CStorVolumeReplica,
    CStorVolumeReplicaPhase, Event, Kind, Object, Quantity, RebuildProgress, DEFAULT_NAMESPACE,
    LABEL_CSTOR_POOL_CLUSTER, LABEL_PERSISTENT_VOLUME,
};
use tokio::time::Instant;

use crate::cluster::{self, UpArgs, POOL_CLUSTER};
use crate::kubectl::reference;
use crate::kubectl::volume::{self, NewVolume};
use crate::output::{no_resources, render_table};
use crate::server::{default_data_dir, ServerArgs};
use crate::wait::{wait_for, Deadline, Probe};
use crate::workload::{
    human, verify_all, Checked, Stats, Writer, Written, BLOCK, FLUSH_EVERY, FUA_EVERY, IO_TIMEOUT,
    PROBLEMS_SHOWN, QUEUE_DEPTH, VERIFY_EVERY,
};

/// What `tandem demo --help` says after the options.
const AFTER_HELP: &str = "\
What it does: starts (or reuses) the local cluster in the data directory as `tandem up` does,
creates a 2-replica volume pvc-<uuid>, starts an application writing 64 KiB blocks across it over
NBD (FUA writes, flushes, read-back checks), adds a replica on the pool that has none and follows
its rebuild, removes the replica on the first original pool, then stops the application and reads
back every block.

Exit status: 0 when no I/O failed and every block read back as last written (\"no data lost\"),
1 otherwise, or when a step did not happen within --timeout (the message names it).

Afterwards the cluster keeps running and the volume stays, so you can look around (tandem get
cvr -n openebs, tandem describe cvc NAME -n openebs, qemu-io on the volume's URI); nothing is
deleted unless --cleanup is given. `tandem down` stops the cluster; `tandem volume delete NAME`
removes the volume.";

#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct DemoArgs {
    /// The local cluster's data directory [default: ~/.tandem]. A cluster already running there
    /// is reused.
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The demo volume's size (a multiple of 64Ki).
    #[arg(long, default_value = "256Mi")]
    size: String,
    /// Nodes of the cluster (at least 3: two replicas, and a pool to move one to). A running
    /// cluster with more keeps them.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The control plane's port when the demo starts the cluster (as `tandem up --port`).
    #[arg(long)]
    port: Option<u16>,
    /// How long each step may take (pools ONLINE, volume Bound, rebuild, scale-down).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Delete the demo's volume at the end (the cluster keeps running either way).
    #[arg(long)]
    cleanup: bool,
    /// Keep the demo's volume at the end; this is the default (the opposite of --cleanup).
    #[arg(long, conflicts_with = "cleanup")]
    keep: bool,
}

const NAMESPACE: &str = DEFAULT_NAMESPACE;
/// How long the application goes on writing on the new replicas before it is stopped.
const WRITE_AFTER_MIGRATION: Duration = Duration::from_secs(3);

pub fn run(args: DemoArgs) -> Result<bool> {
    let size =
        Quantity::parse(&args.size).map_err(|error| anyhow!("--size {:?}: {error}", args.size))?;
    if size.bytes() < QUEUE_DEPTH * BLOCK || !size.bytes().is_multiple_of(BLOCK) {
        bail!(
            "--size {}: the demo writes 64 KiB blocks, so the size must be a multiple of 64Ki and \
             at least 256Ki",
            args.size
        );
    }
    if args.nodes < 3 {
        bail!(
            "--nodes {}: the demo needs at least 3 nodes (two replicas, and a pool to move one \
             to)",
            args.nodes
        );
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let started = Instant::now();

    heading("Step 1: a local cluster and its pools (tandem up)");
    // Never fewer nodes than the cluster has: `up` refuses to remove nodes.
    let nodes = args.nodes.max(cluster::recorded_nodes(&data_dir));
    cluster::up(UpArgs::new(
        nodes,
        data_dir.clone(),
        args.port,
        args.timeout,
    ))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let api = ServerArgs {
        server: None,
        data_dir: Some(data_dir.clone()),
    }
    .client()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut demo = Demo {
        api,
        size,
        timeout: args.timeout,
        data_dir,
        volume: format!("pvc-{}", uuid::Uuid::new_v4()),
        seen_events: HashSet::new(),
        started,
        cleanup: args.cleanup,
    };
    runtime.block_on(demo.walk())
}

fn heading(text: &str) {
    println!();
    println!("== {text}");
}

/// A command line, as the user would type it to see the same.
fn command(text: &str) {
    println!("$ {text}");
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// A pool as the demo needs it.
#[derive(Debug, Clone)]
struct Pool {
    name: String,
    node: String,
    /// The ALLOCATED column.
    allocated: Quantity,
    usable: bool,
}

impl Pool {
    fn from(instance: &CStorPoolInstance) -> Pool {
        Pool {
            name: instance.name().to_string(),
            node: instance.spec.host_name.clone(),
            allocated: instance.status.capacity.used,
            usable: instance.status.phase == CStorPoolInstancePhase::Online
                && !instance.status.read_only,
        }
    }
}

struct Demo {
    api: ApiClient,
    size: Quantity,
    timeout: Duration,
    data_dir: PathBuf,
    volume: String,
    /// Events already printed: (name, count).
    seen_events: HashSet<(String, u32)>,
    started: Instant,
    cleanup: bool,
}

impl Demo {
    async fn walk(&mut self) -> Result<bool> {
        let pools = self.wait_for_pools().await?;
        println!();
        self.list_table(
            "tandem get cspc -n openebs",
            Kind::CStorPoolCluster,
            None,
            false,
        )
        .await?;
        println!();
        self.pool_table().await?;

        heading(&format!(
            "Step 2: a volume with 2 replicas (tandem volume create {} --size {} --replicas 2)",
            self.volume, self.size
        ));
        self.create_volume().await?;
        let config = self.config().await?;
        let original: Vec<String> = config
            .spec
            .policy
            .replica_pool_info
            .iter()
            .map(|pool| pool.pool_name.clone())
            .collect();
        if original.len() != 2 {
            bail!(
                "volume {} is Bound with {} pools in spec.policy.replicaPoolInfo, expected 2",
                self.volume,
                original.len()
            );
        }
        println!();
        self.volume_table().await?;
        println!();
        command(&format!(
            "tandem get cvc {} -n openebs -o yaml    (abridged: where the replicas are)",
            self.volume
        ));
        print_pools_of(&config, &pools);
        self.wait_for_replicas(&original).await?;
        println!();
        self.replica_table().await?;

        heading("Step 3: an application writes to the volume over NBD (tandem volume uri)");
        let uri = volume::wait_for_uri(&self.api, NAMESPACE, &self.volume, self.timeout).await?;
        command(&format!("tandem volume uri {} -n openebs", self.volume));
        println!("{uri}");
        let blocks = self.size.bytes() / BLOCK;
        println!(
            "starting the application: {blocks} blocks of 64 KiB written in turn, over and over \
             (every {FUA_EVERY}th with FUA, a flush every {FLUSH_EVERY} writes, a random earlier \
             block read back every {VERIFY_EVERY}); each I/O times out after {}",
            humantime::format_duration(IO_TIMEOUT)
        );
        let writer = Writer::start(uri.clone(), blocks);
        let steps = self.migrate(&writer, &original).await;
        let mut stats_line = writer.stats().line();
        if steps.is_ok() {
            heading("Step 6: stop the application and read back every block");
        } else {
            println!();
            println!("stopping the application ...");
        }
        let written = writer.stop().await;
        if let Err(error) = steps {
            println!("application until then: {stats_line}");
            writer_problems(&written.stats);
            return Err(error);
        }
        stats_line = written.stats.line();
        println!("application stopped after its final flush: {stats_line}");
        let checked = verify_all(&uri, &written).await;
        println!(
            "read back {} blocks ({}) on a new connection: {} as last written, {} wrong, {} \
             unreadable",
            blocks,
            human(blocks * BLOCK),
            checked.good,
            checked.wrong,
            checked.unreadable
        );
        let ok = self.summary(&written, &checked, &original).await?;
        self.finish(&uri).await?;
        Ok(ok)
    }

    /// Steps 3 (the volume filled once), 4 and 5, while the writer runs.
    async fn migrate(&mut self, writer: &Writer, original: &[String]) -> Result<()> {
        let deadline = self.deadline().polling_every(Duration::from_millis(50));
        let what = "the application has not written the whole volume once";
        let filled = wait_for(deadline, what, async || {
            if writer.rounds() >= 1 {
                return Ok(Probe::Done(writer.running_for()));
            }
            if writer.has_stopped() {
                bail!(
                    "the application stopped before it wrote the whole volume once (so far {})",
                    writer.stats().line()
                );
            }
            Ok(Probe::Waiting(format!(
                "it is still writing (so far {}; a larger volume needs a longer --timeout)",
                writer.stats().line()
            )))
        })
        .await?;
        println!(
            "the application wrote the whole volume once in {} and goes on: {}",
            seconds(filled),
            writer.stats().line()
        );

        // Step 4: scale up.
        let pools = self.pools().await?;
        let mut free: Vec<&Pool> = pools
            .iter()
            .filter(|pool| pool.usable && !original.contains(&pool.name))
            .collect();
        free.sort_by(|a, b| (a.allocated.bytes(), &a.name).cmp(&(b.allocated.bytes(), &b.name)));
        let Some(target) = free.first().map(|pool| (*pool).clone()) else {
            bail!(
                "no ONLINE, writable pool of {POOL_CLUSTER} is without a replica of {}: `tandem \
                 get cspi -n openebs` shows the pools",
                self.volume
            );
        };
        heading(&format!(
            "Step 4: scale up to the pool with no replica, {} on {} (tandem patch cvc)",
            target.name, target.node
        ));
        println!(
            "{} has no replica of the volume: add it to spec.policy.replicaPoolInfo",
            target.name
        );
        let mut wanted: Vec<String> = original.to_vec();
        wanted.push(target.name.clone());
        let baseline = self.events().await?;
        self.patch_pools(&wanted).await?;
        let copied = self.wait_for_rebuild(&target, &baseline).await?;
        self.wait_for_growth(&target, copied).await?;
        println!();
        self.replica_table().await?;
        println!("application meanwhile: {}", writer.stats().line());

        // Step 5: scale down.
        let leaving = original[0].clone();
        let leaving_node = pools
            .iter()
            .find(|pool| pool.name == leaving)
            .map(|pool| pool.node.clone())
            .unwrap_or_default();
        heading(&format!(
            "Step 5: scale down: remove the replica on the first original pool, {leaving} on \
             {leaving_node}"
        ));
        self.pool_table().await?;
        let before = self
            .pools()
            .await?
            .into_iter()
            .find(|pool| pool.name == leaving)
            .map_or(Quantity::ZERO, |pool| pool.allocated);
        println!();
        let remaining: Vec<String> = wanted.into_iter().filter(|pool| *pool != leaving).collect();
        let baseline = self.events().await?;
        self.patch_pools(&remaining).await?;
        self.wait_for_removal(&leaving, &baseline).await?;
        let after = self.wait_for_space(&leaving, before).await?;
        println!();
        self.replica_table().await?;
        println!();
        self.pool_table().await?;
        println!(
            "{leaving} on {leaving_node}: ALLOCATED {before} -> {after} ({} freed)",
            human(before.bytes().saturating_sub(after.bytes()))
        );
        println!(
            "the application goes on for {} on the new replicas ...",
            seconds(WRITE_AFTER_MIGRATION)
        );
        tokio::time::sleep(WRITE_AFTER_MIGRATION).await;
        Ok(())
    }

    /// A deadline for one step: `--timeout` from now.
    fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }

    /// Prints `shown` and the table it prints: the objects of `kind` (those matching
    /// `selector`, when given).
    async fn list_table(
        &self,
        shown: &str,
        kind: Kind,
        selector: Option<&str>,
        wide: bool,
    ) -> Result<()> {
        command(shown);
        let objects = self.api.list(kind, Some(NAMESPACE), selector).await?.items;
        print_table(kind, &objects, wide);
        Ok(())
    }

    /// `tandem get cvc NAME -n openebs`.
    async fn volume_table(&self) -> Result<()> {
        command(&format!("tandem get cvc {} -n openebs", self.volume));
        let kind = Kind::CStorVolumeConfig;
        let object = self.api.get(kind, NAMESPACE, &self.volume).await?;
        print_table(kind, &[object], false);
        Ok(())
    }

    async fn pool_table(&self) -> Result<()> {
        self.list_table(
            "tandem get cspi -n openebs",
            Kind::CStorPoolInstance,
            None,
            false,
        )
        .await
    }

    async fn replica_table(&self) -> Result<()> {
        let selector = format!("{LABEL_PERSISTENT_VOLUME}={}", self.volume);
        self.list_table(
            &format!("tandem get cvr -n openebs -o wide -l {selector}"),
            Kind::CStorVolumeReplica,
            Some(&selector),
            true,
        )
        .await
    }

    /// The pools of the pool cluster, by name.
    async fn pools(&self) -> Result<Vec<Pool>> {
        let selector = format!("{LABEL_CSTOR_POOL_CLUSTER}={POOL_CLUSTER}");
        let instances: Vec<CStorPoolInstance> = self
            .api
            .list_typed(Kind::CStorPoolInstance, Some(NAMESPACE), Some(&selector))
            .await?;
        let mut pools: Vec<Pool> = instances.iter().map(Pool::from).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// Waits until at least 3 pools of the pool cluster are ONLINE and writable (`up` waited
    /// for every pool to be ONLINE; a reused cluster may have read-only ones).
    async fn wait_for_pools(&self) -> Result<Vec<Pool>> {
        let what = format!("{POOL_CLUSTER} has fewer than 3 ONLINE, writable pools");
        wait_for(self.deadline(), what, async || {
            let pools = self.pools().await?;
            if pools.iter().filter(|pool| pool.usable).count() >= 3 {
                return Ok(Probe::Done(pools));
            }
            let states: Vec<String> = pools
                .iter()
                .map(|pool| {
                    format!(
                        "{} on {}: {}",
                        pool.name,
                        pool.node,
                        if pool.usable {
                            "ONLINE"
                        } else {
                            "not ONLINE or read-only"
                        }
                    )
                })
                .collect();
            Ok(Probe::Waiting(format!(
                "the pools: {}",
                if states.is_empty() {
                    "none".to_string()
                } else {
                    states.join(", ")
                }
            )))
        })
        .await
    }

    async fn create_volume(&self) -> Result<()> {
        let new = NewVolume {
            name: &self.volume,
            size: self.size,
            replicas: 2,
            cspc: Some(POOL_CLUSTER),
        };
        if !volume::create_volume(&self.api, NAMESPACE, &new, Some(self.timeout)).await? {
            bail!("volume {} could not be created", self.volume);
        }
        Ok(())
    }

    async fn config(&self) -> Result<CStorVolumeConfig> {
        let object = self
            .api
            .get(Kind::CStorVolumeConfig, NAMESPACE, &self.volume)
            .await?;
        Ok(CStorVolumeConfig::try_from(object)?)
    }

    /// The events about the volume's CStorVolumeConfig, oldest first.
    async fn events(&self) -> Result<Vec<Event>> {
        let object = self
            .api
            .get(Kind::CStorVolumeConfig, NAMESPACE, &self.volume)
            .await?;
        Ok(self.api.events_about(&object).await?)
    }

    /// Prints the events not printed yet (through the progress bar when one is shown).
    async fn print_new_events(&mut self, progress: Option<&Progress>) -> Result<Vec<Event>> {
        let events = self.events().await?;
        for event in &events {
            if self
                .seen_events
                .insert((event.metadata.name.clone(), event.count))
            {
                let line = format!(
                    "  {} {}: {}",
                    event.event_type.as_str(),
                    event.reason,
                    event.message
                );
                match progress {
                    Some(progress) => progress.println(line),
                    None => println!("{line}"),
                }
            }
        }
        Ok(events)
    }

    /// Sets `spec.policy.replicaPoolInfo` with a JSON merge patch, as `tandem patch` does.
    async fn patch_pools(&mut self, pools: &[String]) -> Result<()> {
        let patch = json!({
            "spec": {"policy": {"replicaPoolInfo":
                pools.iter().map(|pool| json!({"poolName": pool})).collect::<Vec<_>>()
            }}
        });
        command(&format!(
            "tandem patch cvc {} -n openebs --type merge -p '{patch}'",
            self.volume
        ));
        // Only the events after the patch are news.
        for event in self.events().await? {
            self.seen_events
                .insert((event.metadata.name.clone(), event.count));
        }
        self.api
            .patch(Kind::CStorVolumeConfig, NAMESPACE, &self.volume, &patch)
            .await
            .map_err(|error| anyhow!("the control plane refused the patch: {error}"))?;
        println!(
            "{} patched",
            reference(Kind::CStorVolumeConfig, &self.volume)
        );
        Ok(())
    }

    /// Follows the new replica on `pool` until it is Healthy and the volume config says it
    /// scaled to 3, with a progress bar fed by the replica's `status.rebuild` (lines instead
    /// when standard output is not a terminal).
    /// Returns how many bytes the rebuild copied (0 if the replica does not say).
    async fn wait_for_rebuild(&mut self, pool: &Pool, baseline: &[Event]) -> Result<u64> {
        let name = format!("{}-{}", self.volume, pool.name);
        let done_message = "successfully scaled volume replicas to 3";
        let what = format!(
            "volume {} has not scaled up to pool {}",
            self.volume, pool.name
        );
        let mut progress = Progress::new();
        let mut phase = None;
        let healthy = wait_for(self.deadline(), what, async || {
            let events = self.print_new_events(Some(&progress)).await?;
            let scaled = has_new_event(&events, baseline, done_message);
            let found = self
                .api
                .find(Kind::CStorVolumeReplica, NAMESPACE, &name)
                .await?;
            let Some(object) = found else {
                return Ok(Probe::Waiting(format!(
                    "its new replica (CStorVolumeReplica {name}) was not created; the volume's \
                     newest event: {}",
                    newest_event(&events)
                )));
            };
            let replica = CStorVolumeReplica::try_from(object)?;
            let now = replica.status.phase;
            if phase != Some(now) {
                progress.println(format!("  {name}: {now}"));
                phase = Some(now);
            }
            if let Some(rebuild) = &replica.status.rebuild {
                progress.show(rebuild);
            }
            Ok(match (now == CStorVolumeReplicaPhase::Healthy, scaled) {
                (true, true) => Probe::Done(replica),
                (true, false) => Probe::Waiting(format!(
                    "its new replica is Healthy, but the volume has no event {done_message:?}; \
                     its newest: {}",
                    newest_event(&events)
                )),
                (false, _) => Probe::Waiting(format!(
                    "its new replica is not Healthy; its status: {}",
                    replica_status(&replica)
                )),
            })
        })
        .await;
        let replica = match healthy {
            Ok(replica) => replica,
            Err(error) => {
                progress.abandon();
                return Err(error);
            }
        };
        let resync = replica.status.last_resync.as_ref();
        let copied = resync
            .map(|resync| {
                format!(
                    ": {} copied from replica {} ({})",
                    human(resync.bytes),
                    resync.source,
                    if resync.full {
                        "full rebuild"
                    } else {
                        "changed regions only"
                    }
                )
            })
            .unwrap_or_default();
        progress.finish();
        println!(
            "the new replica on {} ({}) is Healthy{copied}",
            pool.name, pool.node
        );
        Ok(resync.map_or(0, |resync| resync.bytes))
    }

    /// Waits until the replica on `pool` is gone and the volume config says it scaled to 2.
    async fn wait_for_removal(&mut self, pool: &str, baseline: &[Event]) -> Result<()> {
        let name = format!("{}-{pool}", self.volume);
        let done_message = "successfully scaled volume replicas to 2";
        let what = format!(
            "volume {} has not scaled down from pool {pool}",
            self.volume
        );
        wait_for(self.deadline(), what, async || {
            let events = self.print_new_events(None).await?;
            let scaled = has_new_event(&events, baseline, done_message);
            let replica = self
                .api
                .find(Kind::CStorVolumeReplica, NAMESPACE, &name)
                .await?;
            anyhow::Ok(match replica {
                Some(object) => {
                    let replica = CStorVolumeReplica::try_from(object)?;
                    Probe::Waiting(format!(
                        "its replica there ({name}) is not removed; its status: {}; the \
                         volume's newest event: {}",
                        replica_status(&replica),
                        newest_event(&events)
                    ))
                }
                None if scaled => Probe::Done(()),
                None => Probe::Waiting(format!(
                    "the replica is gone, but the volume has no event {done_message:?}; its \
                     newest: {}",
                    newest_event(&events)
                )),
            })
        })
        .await?;
        println!("the replica on {pool} is gone");
        Ok(())
    }

    /// Waits until the pool's ALLOCATED drops below `before` (its agent reports every few
    /// seconds); returns the new value.
    async fn wait_for_space(&self, pool: &str, before: Quantity) -> Result<Quantity> {
        let what = format!("pool {pool} has not freed the space of its removed replica");
        wait_for(self.deadline(), what, async || {
            let allocated = self.allocated(pool).await?;
            Ok(if allocated.bytes() < before.bytes() {
                Probe::Done(allocated)
            } else {
                Probe::Waiting(format!("its ALLOCATED is still {allocated}"))
            })
        })
        .await
    }

    /// The pool's ALLOCATED now.
    async fn allocated(&self, pool: &str) -> Result<Quantity> {
        self.pools()
            .await?
            .into_iter()
            .find(|found| found.name == pool)
            .map(|found| found.allocated)
            .ok_or_else(|| anyhow!("pool {pool} is gone"))
    }

    /// Waits until `pool`'s agent reports the space its new replica takes (ALLOCATED up by at
    /// least half of the `copied` bytes since before the scale-up; the data file is sparse, so
    /// it holds at least what was copied), so the tables show it.
    async fn wait_for_growth(&self, pool: &Pool, copied: u64) -> Result<()> {
        let wanted = pool.allocated.bytes() + (copied / 2).max(1);
        let what = format!(
            "pool {} does not show the space of its new replica",
            pool.name
        );
        wait_for(self.deadline(), what, async || {
            let allocated = self.allocated(&pool.name).await?;
            Ok(if allocated.bytes() >= wanted {
                Probe::Done(())
            } else {
                Probe::Waiting(format!(
                    "its ALLOCATED is {allocated}, it was {} before the replica copied {} (at \
                     least half of that is expected)",
                    pool.allocated,
                    human(copied)
                ))
            })
        })
        .await
    }

    /// Waits until the replicas on `pools` are all Healthy.
    async fn wait_for_replicas(&self, pools: &[String]) -> Result<()> {
        let what = format!("the replicas of volume {} are not all Healthy", self.volume);
        wait_for(self.deadline(), what, async || {
            for pool in pools {
                let name = format!("{}-{pool}", self.volume);
                let found = self
                    .api
                    .find(Kind::CStorVolumeReplica, NAMESPACE, &name)
                    .await?;
                let status = match found {
                    Some(object) => {
                        let replica = CStorVolumeReplica::try_from(object)?;
                        if replica.status.phase == CStorVolumeReplicaPhase::Healthy {
                            continue;
                        }
                        replica_status(&replica)
                    }
                    None => "it does not exist".to_string(),
                };
                return Ok(Probe::Waiting(format!(
                    "the replica on pool {pool} ({name}): {status}"
                )));
            }
            Ok(Probe::Done(()))
        })
        .await
    }

    /// Prints the summary; true when nothing was lost and no I/O failed.
    async fn summary(
        &self,
        written: &Written,
        checked: &Checked,
        original: &[String],
    ) -> Result<bool> {
        let stats = written.stats.counts();
        let config = self.config().await?;
        let pools = self.pools().await?;
        let node_of = |name: &str| {
            pools
                .iter()
                .find(|pool| pool.name == name)
                .map_or_else(|| "?".to_string(), |pool| pool.node.clone())
        };
        let now: Vec<String> = config
            .status
            .pool_info
            .iter()
            .map(|pool| node_of(pool))
            .collect();
        let before: Vec<String> = original.iter().map(|pool| node_of(pool)).collect();
        let errors = stats.io_errors;
        let wrong = stats.wrong;
        heading("Summary");
        println!(
            "  volume             {} ({}), replicas on {} -> {}",
            self.volume,
            human(self.size.bytes()),
            before.join(" and "),
            now.join(" and ")
        );
        println!(
            "  bytes written      {} ({} writes of 64 KiB, {} with FUA; {} flushes)",
            human(stats.bytes_written),
            stats.writes,
            stats.fua_writes,
            stats.flushes
        );
        println!(
            "  bytes verified     {} ({} while writing, {} at the end)",
            human(stats.bytes_verified),
            human(stats.bytes_verified - checked.bytes),
            human(checked.bytes)
        );
        println!("  I/O errors         {errors}");
        println!("  longest I/O stall  {} ms", stats.longest_io_ms);
        println!("  time taken         {}", seconds(self.started.elapsed()));
        let ok = errors == 0 && wrong == 0;
        if ok {
            println!(
                "  result             no data lost: all {} blocks hold what was last written to \
                 them, and no I/O failed",
                written.blocks()
            );
        } else {
            println!(
                "  result             FAILED: {wrong} block reads returned wrong data, {errors} \
                 I/O errors"
            );
            writer_problems(&written.stats);
        }
        Ok(ok)
    }

    /// What to do next; deletes the volume with `--cleanup`.
    async fn finish(&self, uri: &str) -> Result<()> {
        let default = default_data_dir()
            .canonicalize()
            .is_ok_and(|dir| dir == self.data_dir);
        if self.cleanup {
            heading("Cleanup (--cleanup): the volume is deleted, the cluster keeps running");
            command(&format!("tandem volume delete {} -n openebs", self.volume));
            volume::delete_volume(&self.api, NAMESPACE, &self.volume).await?;
            println!("The cluster is still running:");
        } else {
            heading(&format!(
                "The cluster is still running, with the volume {}. To look around:",
                self.volume
            ));
        }
        if !default {
            println!("  export TANDEM_DATA_DIR={}", self.data_dir.display());
        }
        if !self.cleanup {
            println!("  the replicas         tandem get cvr -n openebs -o wide");
            println!(
                "  the scaling events   tandem describe cvc {} -n openebs",
                self.volume
            );
            println!("  the data             qemu-io -f raw -c 'read -v 0 64' {uri}");
            println!(
                "  remove the volume    tandem volume delete {} -n openebs",
                self.volume
            );
        }
        println!(
            "  stop the cluster     tandem down    (the data stays in {})",
            self.data_dir.display()
        );
        Ok(())
    }
}

/// The table `tandem get` prints for `objects` of `kind` (kubectl's line when there are none).
fn print_table(kind: Kind, objects: &[Object], wide: bool) {
    let table = render_table(kind, objects, wide, SystemTime::now(), false, true);
    if table.is_empty() {
        println!("{}", no_resources(Some(NAMESPACE)));
    } else {
        print!("{table}");
    }
}

/// How a rebuild's progress is shown: a bar on standard output when it is a terminal (from the
/// first progress the replica reports), a line a second otherwise.
struct Progress {
    terminal: bool,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            bar: None,
            last_line: Instant::now(),
        }
    }

    /// Prints a line (above the bar when one is shown).
    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn show(&mut self, rebuild: &RebuildProgress) {
        let eta = rebuild
            .eta_seconds
            .map_or(String::new(), |eta| format!(", ~{eta} s left"));
        let rate = match rebuild.bytes_per_second {
            0 => "rate not known yet".to_string(),
            rate => format!("{}/s{eta}", human(rate)),
        };
        if self.terminal && self.bar.is_none() {
            self.bar = Some(progress_bar());
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(rebuild.bytes_total);
                bar.set_position(rebuild.bytes_done);
                bar.set_message(rate);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(1) => {
                println!(
                    "  rebuild: {} of {} ({}%), {rate}",
                    human(rebuild.bytes_done),
                    human(rebuild.bytes_total),
                    rebuild.bytes_done * 100 / rebuild.bytes_total.max(1)
                );
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// The rebuild is done: the bar shows all of it, and stays on its line.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(bar.length().unwrap_or(0));
            bar.finish_with_message("done");
            // The finished bar stays on its line; what follows goes below it.
            println!();
        }
    }

    /// The wait failed: the bar stays as it is.
    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// The rebuild's progress bar, on standard output (a terminal).
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
    bar.set_style(
        ProgressStyle::with_template(
            "  rebuild [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar
}

/// The abridged YAML of the seed: `spec.policy.replicaPoolInfo` and `status.poolInfo`, with
/// each pool's node.
fn print_pools_of(config: &CStorVolumeConfig, pools: &[Pool]) {
    let node = |name: &str| {
        pools
            .iter()
            .find(|pool| pool.name == name)
            .map_or(String::new(), |pool| format!("    # on {}", pool.node))
    };
    println!("spec:");
    println!("  policy:");
    println!("    replicaPoolInfo:");
    for pool in &config.spec.policy.replica_pool_info {
        println!(
            "    - poolName: {}{}",
            pool.pool_name,
            node(&pool.pool_name)
        );
    }
    println!("status:");
    println!("  phase: {}", config.status.phase);
    println!("  poolInfo:");
    for pool in &config.status.pool_info {
        println!("  - {pool}{}", node(pool));
    }
}

/// True if `events` has one whose message contains `message` and that is not in `baseline`
/// (new, or repeated since: a higher count).
fn has_new_event(events: &[Event], baseline: &[Event], message: &str) -> bool {
    events.iter().any(|event| {
        event.message.contains(message)
            && !baseline
                .iter()
                .any(|old| old.metadata.name == event.metadata.name && old.count == event.count)
    })
}

fn newest_event(events: &[Event]) -> String {
    events.last().map_or_else(
        || "none".to_string(),
        |event| {
            format!(
                "{} {}: {}",
                event.event_type.as_str(),
                event.reason,
                event.message
            )
        },
    )
}

fn replica_status(replica: &CStorVolumeReplica) -> String {
    let mut text = format!("phase {}", replica.status.phase);
    if let Some(rebuild) = &replica.status.rebuild {
        text.push_str(&format!(
            ", rebuild {} of {} at {}/s",
            human(rebuild.bytes_done),
            human(rebuild.bytes_total),
            human(rebuild.bytes_per_second)
        ));
    }
    if !replica.status.message.is_empty() {
        text.push_str(&format!(", message {:?}", replica.status.message));
    }
    text
}

fn writer_problems(stats: &Stats) {
    let problems = stats.problems();
    if problems.is_empty() {
        return;
    }
    println!("  problems (the first {PROBLEMS_SHOWN}):");
    for problem in &problems {
        println!("    {problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_events_are_told_from_old_ones() {
        let event = |name: &str, count: u32, message: &str| {
            let mut event = Event::default();
            event.metadata.name = name.to_string();
            event.count = count;
            event.message = message.to_string();
            event
        };
        let done = "successfully scaled volume replicas to 3";
        let old = vec![event("a", 1, done)];
        assert!(!has_new_event(&old, &old, done));
        assert!(has_new_event(&[event("a", 2, done)], &old, done));
        assert!(has_new_event(&[event("b", 1, done)], &[], done));
        assert!(!has_new_event(&[event("b", 1, "other")], &[], done));
    }
}
