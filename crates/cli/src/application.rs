//! `tandem workload`: the verifying application (`tandem::workload`) as a command, so a test or
//! an operator can run it against any volume, from any host or network namespace.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use tandem::workload::{human, verify_all_on, Writer, BLOCK};

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// The volume's NBD URIs (`tandem volume uri NAME --node N` for each node): the application
    /// reconnects to the next one after a failure, as a multipath initiator would.
    #[arg(required = true)]
    uris: Vec<String>,
    /// How many 64 KiB blocks at the start of the volume it writes, round after round.
    #[arg(long, default_value_t = 256)]
    blocks: u64,
    /// How long it writes before it stops and reads every block back (it also stops early, and
    /// still checks, on SIGTERM or Ctrl-C).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Prints the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the application, reads everything back, prints the summary; false if any block held
/// the wrong data or could not be read back.
pub fn run(args: WorkloadArgs) -> Result<bool> {
    if args.blocks == 0 {
        bail!("--blocks must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let writer = Writer::start_on(args.uris.clone(), args.blocks);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::time::sleep(args.duration) => {}
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let written = writer.stop().await;
        let checked = verify_all_on(&args.uris, &written).await;
        let counts = written.stats.counts();
        let problems = written.stats.problems();
        if args.json {
            let summary = serde_json::json!({
                "writes": counts.writes,
                "fuaWrites": counts.fua_writes,
                "flushes": counts.flushes,
                "bytesWritten": counts.bytes_written,
                "bytesVerified": counts.bytes_verified,
                "ioErrors": counts.io_errors,
                "reconnects": counts.reconnects,
                "rounds": counts.rounds,
                "longestIoMs": counts.longest_io_ms,
                "longestPauseMs": counts.longest_pause_ms,
                "wrongWhileRunning": counts.wrong,
                "blocksGood": checked.good,
                "blocksWrong": checked.wrong,
                "blocksUnreadable": checked.unreadable,
                "problems": problems,
            });
            println!("{summary}");
        } else {
            println!("{}", written.stats.line());
            println!(
                "longest pause without a successful I/O: {} ms; {} rounds",
                counts.longest_pause_ms, counts.rounds
            );
            println!(
                "read back: {} of {} blocks good ({}), {} wrong, {} unreadable",
                checked.good,
                written.blocks(),
                human(checked.good * BLOCK),
                checked.wrong,
                checked.unreadable
            );
            for problem in &problems {
                println!("  {problem}");
            }
        }
        Ok(counts.wrong == 0 && checked.wrong == 0 && checked.unreadable == 0)
    })
}
