//! `tandem demo`: the seed's walk-through (cStor's "How to Migrate Data Replica Across Nodes")
//! for real, on a local cluster, with an application writing to the volume the whole time. One
//! module per step, in the order [`Demo::walk`] runs them:
//!
//! 1. `step1_cluster` — start (or reuse) the local cluster as `tandem up` does, and show its
//!    pools;
//! 2. `step2_volume` — create a 2-replica volume `pvc-<uuid>` and show where its replicas are;
//! 3. `step3_application` — start the application: the verifying workload
//!    ([`crate::workload`]) writing 64 KiB blocks across the volume over NBD, with FUA writes,
//!    flushes and read-back checks, timing every I/O;
//! 4. `step4_scale_up` — scale up to the pool with no replica (a merge patch of
//!    `spec.policy.replicaPoolInfo`, as `tandem patch` sends it) and follow the new replica's
//!    rebuild until it is Healthy;
//! 5. `step5_scale_down` — drop the first original pool, wait until its replica is gone and
//!    the pool's space is freed;
//! 6. `step6_read_back` — stop the application and read back every block: each one's last
//!    content is known; the summary, and what to look at next.
//!
//! `common` has what the steps share: the pools, the volume's config and events, the `get`
//! tables, the pool patch.
//!
//! The summary says how much was written and verified, how many I/O errors there were, and the
//! longest single I/O ("the longest I/O stall"); the exit status is 1 if any I/O failed or any
//! block read back wrong. Every wait has a deadline (`--timeout`) and fails naming what it
//! waited for and what it saw last ([`crate::wait`]). The cluster and the volume are left in
//! place to look around (`--cleanup` deletes the volume); `tandem down` stops the cluster.
//!
//! The demo calls the same functions as the commands it prints: `cluster::up`, the `volume
//! create`, `volume uri` and `volume delete` verbs' functions, `render_table` for the `get`
//! tables, the API client's merge patch as `tandem patch` sends it.

mod common;
mod step1_cluster;
mod step2_volume;
mod step3_application;
mod step4_scale_up;
mod step5_scale_down;
mod step6_read_back;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tandem_client::Client as ApiClient;
use tandem_objects::{Quantity, DEFAULT_NAMESPACE};
use tokio::time::Instant;

use crate::server::{default_data_dir, ServerArgs};
use crate::workload::{Writer, BLOCK, QUEUE_DEPTH};

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
    /// Run the cluster on network namespaces (as `tandem up --netns PREFIX`), the application
    /// in PREFIX-client. A cluster started with --netns is reused on its namespaces either way.
    #[arg(long, value_name = "PREFIX")]
    netns: Option<String>,
}

const NAMESPACE: &str = DEFAULT_NAMESPACE;

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

    step1_cluster::start_cluster(
        &data_dir,
        args.nodes,
        args.port,
        args.netns.clone(),
        args.timeout,
    )?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    // On namespaces, the application is a client like any other: it runs in PREFIX-client
    // (this thread, and the runtime's threads it starts below); the API stays reachable over
    // the control plane's Unix socket.
    if let Some(network) = crate::cluster::recorded_network(&data_dir) {
        crate::cluster::enter_namespace(&network.client_namespace())?;
        println!(
            "(the application runs in the network namespace {})",
            network.client_namespace()
        );
    }
    let api = ServerArgs::of_data_dir(&data_dir).client()?;

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

/// What every step works with: the cluster, the volume, the options.
struct Demo {
    api: ApiClient,
    size: Quantity,
    /// How long each step may take.
    timeout: Duration,
    data_dir: PathBuf,
    volume: String,
    /// Events already printed: (name, count).
    seen_events: HashSet<(String, u32)>,
    started: Instant,
    cleanup: bool,
}

impl Demo {
    /// The steps, in order; true when no data was lost and no I/O failed.
    async fn walk(&mut self) -> Result<bool> {
        let pools = step1_cluster::show_pools(self).await?;
        let original = step2_volume::create(self, &pools).await?;
        let (uri, writer) = step3_application::start(self).await?;
        let migrated = self.migrate(&writer, &original).await;
        step6_read_back::run(self, &uri, writer, migrated, &original).await
    }

    /// What happens while the application writes: step 3's first pass over the volume, then
    /// steps 4 and 5.
    async fn migrate(&mut self, writer: &Writer, original: &[String]) -> Result<()> {
        step3_application::wait_for_first_pass(self, writer).await?;
        let wanted = step4_scale_up::run(self, writer, original).await?;
        step5_scale_down::run(self, wanted, &original[0]).await
    }
}
