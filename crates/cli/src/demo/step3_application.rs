//! Step 3: an application writes to the volume over NBD (the verifying workload, at the
//! address `tandem volume uri` gives), until it has written the whole volume once.

use std::time::Duration;

use anyhow::{bail, Result};

use super::common::{command, heading, seconds};
use super::{Demo, NAMESPACE};
use crate::kubectl::volume;
use crate::wait::{wait_for, Probe};
use crate::workload::{Writer, BLOCK, FLUSH_EVERY, FUA_EVERY, IO_TIMEOUT, VERIFY_EVERY};

/// Finds the volume's URI and starts the application on it; returns both.
pub(super) async fn start(demo: &Demo) -> Result<(String, Writer)> {
    heading("Step 3: an application writes to the volume over NBD (tandem volume uri)");
    let credentials =
        volume::nbd_credentials(&crate::server::ServerArgs::of_data_dir(&demo.data_dir))?;
    let uri = volume::wait_for_uri(
        &demo.api,
        NAMESPACE,
        &demo.volume,
        credentials.as_deref(),
        demo.timeout,
    )
    .await?;
    command(&format!("tandem volume uri {} -n openebs", demo.volume));
    println!("{uri}");
    let blocks = demo.size.bytes() / BLOCK;
    println!(
        "starting the application: {blocks} blocks of 64 KiB written in turn, over and over \
         (every {FUA_EVERY}th with FUA, a flush every {FLUSH_EVERY} writes, a random earlier \
         block read back every {VERIFY_EVERY}); each I/O times out after {}",
        humantime::format_duration(IO_TIMEOUT)
    );
    let writer = Writer::start(uri.clone(), blocks);
    Ok((uri, writer))
}

/// Waits until the application has written the whole volume once, so every block has data
/// before a replica moves.
pub(super) async fn wait_for_first_pass(demo: &Demo, writer: &Writer) -> Result<()> {
    let deadline = demo.deadline().polling_every(Duration::from_millis(50));
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
    Ok(())
}
