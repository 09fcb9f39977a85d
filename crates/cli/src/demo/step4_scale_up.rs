//! Step 4: scale up to the pool with no replica (a merge patch of
//! `spec.policy.replicaPoolInfo`, as `tandem patch` sends it) and follow the new replica's
//! rebuild until it is Healthy, with a progress bar.

use anyhow::{bail, Result};
use tandem_objects::{CStorVolumeReplica, CStorVolumeReplicaPhase, Event, Kind};

use super::common::{has_new_event, heading, newest_event, replica_status, Pool};
use super::{Demo, NAMESPACE};
use crate::cluster::POOL_CLUSTER;
use crate::progress::{self, Progress};
use crate::wait::{wait_for, Probe};
use crate::workload::{human, Writer};

/// Adds a replica on the least used usable pool without one, waits until it is rebuilt and
/// its pool shows the space; returns the volume's pools now.
pub(super) async fn run(
    demo: &mut Demo,
    writer: &Writer,
    original: &[String],
) -> Result<Vec<String>> {
    let pools = demo.pools().await?;
    let mut free: Vec<&Pool> = pools
        .iter()
        .filter(|pool| pool.usable && !original.contains(&pool.name))
        .collect();
    free.sort_by(|a, b| (a.allocated.bytes(), &a.name).cmp(&(b.allocated.bytes(), &b.name)));
    let Some(target) = free.first().map(|pool| (*pool).clone()) else {
        bail!(
            "no ONLINE, writable pool of {POOL_CLUSTER} is without a replica of {}: `tandem \
             get cspi -n openebs` shows the pools",
            demo.volume
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
    let baseline = demo.events().await?;
    demo.patch_pools(&wanted).await?;
    let copied = wait_for_rebuild(demo, &target, &baseline).await?;
    wait_for_growth(demo, &target, copied).await?;
    println!();
    demo.replica_table().await?;
    println!("application meanwhile: {}", writer.stats().line());
    Ok(wanted)
}

/// Follows the new replica on `pool` until it is Healthy and the volume config says it
/// scaled to 3, with a progress bar fed by the replica's `status.rebuild` (lines instead
/// when standard output is not a terminal).
/// Returns how many bytes the rebuild copied (0 if the replica does not say).
async fn wait_for_rebuild(demo: &mut Demo, pool: &Pool, baseline: &[Event]) -> Result<u64> {
    let name = format!("{}-{}", demo.volume, pool.name);
    let done_message = "successfully scaled volume replicas to 3";
    let what = format!(
        "volume {} has not scaled up to pool {}",
        demo.volume, pool.name
    );
    let mut progress = Progress::new();
    let mut phase = None;
    let healthy = wait_for(demo.deadline(), what, async || {
        let events = demo.print_new_events(|line| progress.println(line)).await?;
        let scaled = has_new_event(&events, baseline, done_message);
        let found = demo
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
        .map(|resync| format!(": {}", progress::copied(resync)))
        .unwrap_or_default();
    progress.finish();
    println!(
        "the new replica on {} ({}) is Healthy{copied}",
        pool.name, pool.node
    );
    Ok(resync.map_or(0, |resync| resync.bytes))
}

/// Waits until `pool`'s agent reports the space its new replica takes (ALLOCATED up by at
/// least half of the `copied` bytes since before the scale-up; the data file is sparse, so
/// it holds at least what was copied), so the tables show it.
async fn wait_for_growth(demo: &Demo, pool: &Pool, copied: u64) -> Result<()> {
    let wanted = pool.allocated.bytes() + (copied / 2).max(1);
    let what = format!(
        "pool {} does not show the space of its new replica",
        pool.name
    );
    wait_for(demo.deadline(), what, async || {
        let allocated = demo.allocated(&pool.name).await?;
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
