//! How the progress of a rebuild is shown while a command waits for it (the demo's scale-up,
//! `tandem volume migrate`): a bar on standard output when it is a terminal, a line a second
//! otherwise, fed by a replica's `status.rebuild`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_objects::{RebuildProgress, ResyncRecord};
use tokio::time::Instant;

use crate::workload::human;

/// What a finished rebuild or resync copied: `512 MiB copied from replica ID (full rebuild)`.
pub fn copied(resync: &ResyncRecord) -> String {
    let kind = if resync.full {
        "full rebuild"
    } else {
        "changed regions only"
    };
    format!(
        "{} copied from replica {} ({kind})",
        human(resync.bytes),
        resync.source
    )
}

/// How a rebuild's progress is shown: a bar on standard output when it is a terminal (from the
/// first progress the replica reports), a line a second otherwise.
pub struct Progress {
    terminal: bool,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            terminal: std::io::stdout().is_terminal(),
            bar: None,
            last_line: Instant::now(),
        }
    }

    /// Prints a line (above the bar when one is shown).
    pub fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub fn show(&mut self, rebuild: &RebuildProgress) {
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
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(bar.length().unwrap_or(0));
            bar.finish_with_message("done");
            // The finished bar stays on its line; what follows goes below it.
            println!();
        }
    }

    /// The wait failed: the bar stays as it is.
    pub fn abandon(&self) {
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
