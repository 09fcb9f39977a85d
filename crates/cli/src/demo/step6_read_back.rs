//! Step 6: stop the application and read back every block; the summary, and what to look at
//! next (or, with `--cleanup`, the volume deleted).

use anyhow::Result;

use super::common::{command, heading, seconds};
use super::{Demo, NAMESPACE};
use crate::kubectl::volume;
use crate::server::default_data_dir;
use crate::workload::{human, verify_all, Checked, Stats, Writer, Written, BLOCK, PROBLEMS_SHOWN};

/// Stops the application and, if the migration (`migrated`) went through, reads back every
/// block, prints the summary and what next; true when no data was lost and no I/O failed.
pub(super) async fn run(
    demo: &Demo,
    uri: &str,
    writer: Writer,
    migrated: Result<()>,
    original: &[String],
) -> Result<bool> {
    let stats_line = writer.stats().line();
    if migrated.is_ok() {
        heading("Step 6: stop the application and read back every block");
    } else {
        println!();
        println!("stopping the application ...");
    }
    let written = writer.stop().await;
    if let Err(error) = migrated {
        println!("application until then: {stats_line}");
        writer_problems(&written.stats);
        return Err(error);
    }
    println!(
        "application stopped after its final flush: {}",
        written.stats.line()
    );
    let checked = verify_all(uri, &written).await;
    let blocks = demo.size.bytes() / BLOCK;
    println!(
        "read back {} blocks ({}) on a new connection: {} as last written, {} wrong, {} \
         unreadable",
        blocks,
        human(blocks * BLOCK),
        checked.good,
        checked.wrong,
        checked.unreadable
    );
    let ok = summary(demo, &written, &checked, original).await?;
    finish(demo, uri).await?;
    Ok(ok)
}

/// Prints the summary; true when nothing was lost and no I/O failed.
async fn summary(
    demo: &Demo,
    written: &Written,
    checked: &Checked,
    original: &[String],
) -> Result<bool> {
    let stats = written.stats.counts();
    let config = demo.config().await?;
    let pools = demo.pools().await?;
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
        demo.volume,
        human(demo.size.bytes()),
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
    println!("  time taken         {}", seconds(demo.started.elapsed()));
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
async fn finish(demo: &Demo, uri: &str) -> Result<()> {
    let default = default_data_dir()
        .canonicalize()
        .is_ok_and(|dir| dir == demo.data_dir);
    if demo.cleanup {
        heading("Cleanup (--cleanup): the volume is deleted, the cluster keeps running");
        command(&format!("tandem volume delete {} -n openebs", demo.volume));
        volume::delete_volume(&demo.api, NAMESPACE, &demo.volume).await?;
        println!("The cluster is still running:");
    } else {
        heading(&format!(
            "The cluster is still running, with the volume {}. To look around:",
            demo.volume
        ));
    }
    if !default {
        println!("  export TANDEM_DATA_DIR={}", demo.data_dir.display());
    }
    if !demo.cleanup {
        println!("  the replicas         tandem get cvr -n openebs -o wide");
        println!(
            "  the scaling events   tandem describe cvc {} -n openebs",
            demo.volume
        );
        // On network namespaces, clients reach the nodes from the client namespace only.
        let client = crate::cluster::recorded_network(&demo.data_dir)
            .map(|network| format!("ip netns exec {} ", network.client_namespace()))
            .unwrap_or_default();
        if uri.starts_with("nbds://") {
            // libnbd's tools take the URI with its credentials as it is (qemu needs them
            // spelled out: docs/security.md).
            println!(
                "  the data             {client}nbdcopy '{uri}' - | head -c 64 | od -A d -t x1"
            );
        } else {
            println!("  the data             {client}qemu-io -f raw -c 'read -v 0 64' {uri}");
        }
        println!(
            "  remove the volume    tandem volume delete {} -n openebs",
            demo.volume
        );
    }
    println!(
        "  stop the cluster     tandem down    (the data stays in {})",
        demo.data_dir.display()
    );
    Ok(())
}

fn writer_problems(stats: &Stats) {
    let problems = stats.problems();
    if problems.is_empty() {
        return;
    }
    println!("  problems (the first and the last, {PROBLEMS_SHOWN} in all):");
    for problem in &problems {
        println!("    {problem}");
    }
}
