//! Step 5: scale down: remove the replica on the first original pool, and see its space freed.

use std::time::Duration;

use anyhow::Result;
use tandem_objects::{CStorVolumeReplica, Event, Kind, Quantity};

use super::common::{has_new_event, heading, newest_event, replica_status, seconds};
use super::{Demo, NAMESPACE};
use crate::wait::{wait_for, Probe};
use crate::workload::human;

/// How long the application goes on writing on the new replicas before it is stopped.
const WRITE_AFTER_MIGRATION: Duration = Duration::from_secs(3);

/// Drops `leaving` from the volume's pools (`wanted`), waits until its replica is gone and the
/// pool's space is freed, then lets the application write on the new replicas a little longer.
pub(super) async fn run(demo: &mut Demo, wanted: Vec<String>, leaving: &str) -> Result<()> {
    let leaving_node = demo
        .pools()
        .await?
        .into_iter()
        .find(|pool| pool.name == leaving)
        .map(|pool| pool.node)
        .unwrap_or_default();
    heading(&format!(
        "Step 5: scale down: remove the replica on the first original pool, {leaving} on \
         {leaving_node}"
    ));
    demo.pool_table().await?;
    let before = demo
        .pools()
        .await?
        .into_iter()
        .find(|pool| pool.name == leaving)
        .map_or(Quantity::ZERO, |pool| pool.allocated);
    println!();
    let remaining: Vec<String> = wanted.into_iter().filter(|pool| pool != leaving).collect();
    let baseline = demo.events().await?;
    demo.patch_pools(&remaining).await?;
    wait_for_removal(demo, leaving, &baseline).await?;
    let after = wait_for_space(demo, leaving, before).await?;
    println!();
    demo.replica_table().await?;
    println!();
    demo.pool_table().await?;
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

/// Waits until the replica on `pool` is gone and the volume config says it scaled to 2.
async fn wait_for_removal(demo: &mut Demo, pool: &str, baseline: &[Event]) -> Result<()> {
    let name = format!("{}-{pool}", demo.volume);
    let done_message = "successfully scaled volume replicas to 2";
    let what = format!(
        "volume {} has not scaled down from pool {pool}",
        demo.volume
    );
    wait_for(demo.deadline(), what, async || {
        let events = demo.print_new_events(|line| println!("{line}")).await?;
        let scaled = has_new_event(&events, baseline, done_message);
        let replica = demo
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
async fn wait_for_space(demo: &Demo, pool: &str, before: Quantity) -> Result<Quantity> {
    let what = format!("pool {pool} has not freed the space of its removed replica");
    wait_for(demo.deadline(), what, async || {
        let allocated = demo.allocated(pool).await?;
        Ok(if allocated.bytes() < before.bytes() {
            Probe::Done(allocated)
        } else {
            Probe::Waiting(format!("its ALLOCATED is still {allocated}"))
        })
    })
    .await
}
