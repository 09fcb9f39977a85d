//! Step 1: a local cluster and its pools, as `tandem up` starts it (or finds it running).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use tandem_objects::Kind;

use super::common::{heading, Pool};
use super::Demo;
use crate::cluster::{self, UpArgs, POOL_CLUSTER};
use crate::wait::{wait_for, Probe};

/// Starts the cluster in `data_dir` (or reuses it) with `up`'s own function, with at least
/// `nodes` nodes.
pub(super) fn start_cluster(
    data_dir: &Path,
    nodes: usize,
    port: Option<u16>,
    netns: Option<String>,
    timeout: Duration,
) -> Result<()> {
    heading("Step 1: a local cluster and its pools (tandem up)");
    // Never fewer nodes than the cluster has: `up` refuses to remove nodes.
    let nodes = nodes.max(cluster::recorded_nodes(data_dir));
    cluster::up(UpArgs::new(nodes, data_dir.to_path_buf(), port, timeout).on_netns(netns))
}

/// Waits for the pools and shows them (`get cspc`, `get cspi`).
pub(super) async fn show_pools(demo: &Demo) -> Result<Vec<Pool>> {
    let pools = wait_for_pools(demo).await?;
    println!();
    demo.list_table(
        "tandem get cspc -n openebs",
        Kind::CStorPoolCluster,
        None,
        false,
    )
    .await?;
    println!();
    demo.pool_table().await?;
    Ok(pools)
}

/// Waits until at least 3 pools of the pool cluster are ONLINE and writable (`up` waited
/// for every pool to be ONLINE; a reused cluster may have read-only ones).
async fn wait_for_pools(demo: &Demo) -> Result<Vec<Pool>> {
    let what = format!("{POOL_CLUSTER} has fewer than 3 ONLINE, writable pools");
    wait_for(demo.deadline(), what, async || {
        let pools = demo.pools().await?;
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
