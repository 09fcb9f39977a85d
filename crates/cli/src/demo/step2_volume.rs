//! Step 2: a volume with 2 replicas, created as `tandem volume create` creates it, and where
//! its replicas are.

use anyhow::{bail, Result};
use tandem_objects::{CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase, Kind};

use super::common::{command, heading, replica_status, Pool};
use super::{Demo, NAMESPACE};
use crate::cluster::POOL_CLUSTER;
use crate::kubectl::volume::{self, NewVolume};
use crate::wait::{wait_for, Probe};

/// Creates the volume, shows it and waits until both replicas are Healthy; returns the pools
/// they are on.
pub(super) async fn create(demo: &Demo, pools: &[Pool]) -> Result<Vec<String>> {
    heading(&format!(
        "Step 2: a volume with 2 replicas (tandem volume create {} --size {} --replicas 2)",
        demo.volume, demo.size
    ));
    create_volume(demo).await?;
    let config = demo.config().await?;
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
            demo.volume,
            original.len()
        );
    }
    println!();
    demo.volume_table().await?;
    println!();
    command(&format!(
        "tandem get cvc {} -n openebs -o yaml    (abridged: where the replicas are)",
        demo.volume
    ));
    print_pools_of(&config, pools);
    wait_for_replicas(demo, &original).await?;
    println!();
    demo.replica_table().await?;
    Ok(original)
}

async fn create_volume(demo: &Demo) -> Result<()> {
    let new = NewVolume {
        name: &demo.volume,
        size: demo.size,
        replicas: 2,
        cspc: Some(POOL_CLUSTER),
        thick: false,
    };
    if !volume::create_volume(&demo.api, NAMESPACE, &new, Some(demo.timeout)).await? {
        bail!("volume {} could not be created", demo.volume);
    }
    Ok(())
}

/// Waits until the replicas on `pools` are all Healthy.
async fn wait_for_replicas(demo: &Demo, pools: &[String]) -> Result<()> {
    let what = format!("the replicas of volume {} are not all Healthy", demo.volume);
    wait_for(demo.deadline(), what, async || {
        for pool in pools {
            let name = format!("{}-{pool}", demo.volume);
            let found = demo
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
