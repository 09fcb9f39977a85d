//! A verifying workload for a volume, over NBD (the `tandem_nbd` client): an application that
//! writes 64 KiB blocks across the volume round after round, with FUA writes, flushes and
//! read-back checks, timing every I/O; and, once it is stopped, a read-back of every block.
//! Each block's content names the block and the round that wrote it, so every block's last
//! content is known (or, after a failed write, one of two) and a wrong one is recognised.
//!
//! `tandem demo` runs it while it moves a replica; tests and tools can run it against any
//! volume's URI:
//!
//! ```no_run
//! # async fn example() {
//! use tandem::workload::{verify_all, Writer};
//! let writer = Writer::start("nbd://127.0.0.1:10809/pvc-1".to_string(), 512);
//! // ... move replicas, kill agents ...
//! let written = writer.stop().await;
//! let checked = verify_all("nbd://127.0.0.1:10809/pvc-1", &written).await;
//! assert_eq!(checked.good, 512);
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
// The one place that names the NBD client's error type.
use tandem_nbd::ClientError as NbdError;
use tandem_nbd::{Client as NbdClient, ClientOptions};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The application's block: every write and read is one block.
pub const BLOCK: u64 = 64 * 1024;
/// Writes in flight at once (one batch of consecutive blocks).
pub const QUEUE_DEPTH: u64 = 4;
/// Every this many writes, one is FUA.
pub const FUA_EVERY: u64 = 5;
/// A flush after this many writes.
pub const FLUSH_EVERY: u64 = 32;
/// A read-back check of a random earlier block after this many writes.
pub const VERIFY_EVERY: u64 = 16;
/// Reads in flight during the final check.
pub const VERIFY_DEPTH: usize = 8;
/// An I/O not answered within this counts as an error (the application goes on, on a new
/// connection).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most problems (I/O errors, wrong data) kept for the summary: the first half and the
/// last half of them.
pub const PROBLEMS_SHOWN: usize = 20;

/// "256 MiB", "1.5 GiB", "512 KiB", "12 B".
pub use tandem_objects::format_bytes_binary as human;

/// The content of `block` after the write of round `round`: a header naming both, then words
/// derived from them, so any block read back can be checked and, when wrong, recognised.
fn block_data(block: u64, round: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(BLOCK as usize);
    data.extend_from_slice(b"TANDEMv1");
    data.extend_from_slice(&block.to_le_bytes());
    data.extend_from_slice(&u64::from(round).to_le_bytes());
    let mut state = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(round) << 32 ^ 0x5eed;
    while data.len() < BLOCK as usize {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    data
}

/// What a block read back holds, for messages: "round 3 of block 7", "zeroes", ...
fn describe_content(data: &[u8]) -> String {
    if data.iter().all(|&byte| byte == 0) {
        return "zeroes".to_string();
    }
    if data.len() >= 24 && &data[..8] == b"TANDEMv1" {
        let block = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let round = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
        let intact = u32::try_from(round)
            .map(|round| block_data(block, round) == data)
            .unwrap_or(false);
        return format!(
            "round {round} of block {block}{}",
            if intact { "" } else { ", damaged" }
        );
    }
    "data the application never wrote".to_string()
}

/// What a block must hold: each candidate is a round (`None`: never written, zeroes). One
/// candidate normally; a failed write adds its round (the old or the new content may be there).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expect(Vec<Option<u32>>);

impl Expect {
    fn matches(&self, block: u64, data: &[u8]) -> bool {
        self.0.iter().any(|candidate| match candidate {
            None => data.iter().all(|&byte| byte == 0),
            Some(round) => data == block_data(block, *round).as_slice(),
        })
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|candidate| match candidate {
                None => "zeroes".to_string(),
                Some(round) => format!("round {round}"),
            })
            .collect();
        names.join(" or ")
    }
}

/// The application's counters, shared with whoever watches it while it runs.
#[derive(Default)]
pub struct Stats {
    bytes_written: AtomicU64,
    writes: AtomicU64,
    fua_writes: AtomicU64,
    flushes: AtomicU64,
    bytes_verified: AtomicU64,
    io_errors: AtomicU64,
    wrong: AtomicU64,
    longest_us: AtomicU64,
    /// The longest time between two I/Os that succeeded (a failover, a reconnection).
    longest_pause_us: AtomicU64,
    /// When the last I/O succeeded, since `epoch`.
    last_success_us: AtomicU64,
    epoch: EpochInstant,
    /// Full passes over the volume finished.
    rounds: AtomicU64,
    reconnects: AtomicU64,
    problems: Mutex<Problems>,
}

/// The first and the last problems, and how many were in between.
#[derive(Default)]
struct Problems {
    first: Vec<String>,
    last: VecDeque<String>,
    skipped: u64,
}

impl Problems {
    fn push(&mut self, message: String) {
        if self.first.len() < PROBLEMS_SHOWN / 2 {
            self.first.push(message);
            return;
        }
        if self.last.len() == PROBLEMS_SHOWN - PROBLEMS_SHOWN / 2 {
            self.last.pop_front();
            self.skipped += 1;
        }
        self.last.push_back(message);
    }

    fn list(&self) -> Vec<String> {
        let mut list = self.first.clone();
        if self.skipped > 0 {
            list.push(format!("({} more)", self.skipped));
        }
        list.extend(self.last.iter().cloned());
        list
    }
}

/// The moment the counters started (an `Instant` with a default).
struct EpochInstant(Instant);

impl Default for EpochInstant {
    fn default() -> Self {
        EpochInstant(Instant::now())
    }
}

impl Stats {
    fn took(&self, duration: Duration) {
        self.longest_us
            .fetch_max(duration.as_micros() as u64, Ordering::Relaxed);
    }

    /// An I/O succeeded: the time since the previous one is a pause the application saw.
    fn succeeded(&self) {
        let now = self.epoch.0.elapsed().as_micros() as u64;
        let previous = self.last_success_us.swap(now, Ordering::Relaxed);
        self.longest_pause_us
            .fetch_max(now.saturating_sub(previous), Ordering::Relaxed);
    }

    fn problem(&self, message: String) {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }

    fn io_error(&self, message: String) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        self.problem(message);
    }

    fn wrong_data(&self, message: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        self.problem(message);
    }

    /// The counters as they are now.
    pub fn counts(&self) -> Counts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            bytes_written: load(&self.bytes_written),
            writes: load(&self.writes),
            fua_writes: load(&self.fua_writes),
            flushes: load(&self.flushes),
            bytes_verified: load(&self.bytes_verified),
            io_errors: load(&self.io_errors),
            wrong: load(&self.wrong),
            longest_io_ms: load(&self.longest_us).div_ceil(1000),
            longest_pause_ms: load(&self.longest_pause_us).div_ceil(1000),
            reconnects: load(&self.reconnects),
            rounds: load(&self.rounds),
        }
    }

    /// The first and the last problems (I/O errors, wrong data), [`PROBLEMS_SHOWN`] in all, in
    /// order, with a line saying how many were left out between them.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list()
    }

    /// "1.2 GiB written, 80 MiB verified, 0 I/O errors, longest I/O stall 41 ms".
    pub fn line(&self) -> String {
        let reconnects = self.reconnects.load(Ordering::Relaxed);
        format!(
            "{} written, {} verified, {} I/O errors{}, longest I/O stall {} ms",
            human(self.bytes_written.load(Ordering::Relaxed)),
            human(self.bytes_verified.load(Ordering::Relaxed)),
            self.io_errors.load(Ordering::Relaxed),
            if reconnects > 0 {
                format!(" ({reconnects} reconnections)")
            } else {
                String::new()
            },
            self.longest_us.load(Ordering::Relaxed).div_ceil(1000)
        )
    }
}

/// [`Stats`] as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub bytes_written: u64,
    /// Writes of one block that succeeded, and how many of them were FUA.
    pub writes: u64,
    pub fua_writes: u64,
    pub flushes: u64,
    /// Blocks read back as they must be, in bytes (while writing and at the end).
    pub bytes_verified: u64,
    pub io_errors: u64,
    /// Block reads that returned wrong data.
    pub wrong: u64,
    /// The longest single I/O ("the longest I/O stall"), rounded up.
    pub longest_io_ms: u64,
    /// The longest time without a successful I/O (a failover, a reconnection), rounded up.
    pub longest_pause_ms: u64,
    pub reconnects: u64,
    pub rounds: u64,
}

/// A failed I/O: its message, and whether the connection must be replaced.
struct Failure {
    message: String,
    lost: bool,
}

/// Runs one I/O with the application's timeout, recording how long it took.
async fn timed<T>(
    stats: &Stats,
    io: impl Future<Output = Result<T, NbdError>>,
) -> Result<T, Failure> {
    let began = Instant::now();
    let result = tokio::time::timeout(IO_TIMEOUT, io).await;
    stats.took(began.elapsed());
    match result {
        Ok(Ok(value)) => {
            stats.succeeded();
            Ok(value)
        }
        Ok(Err(error)) => Err(Failure {
            lost: error.needs_reconnect(),
            message: error.to_string(),
        }),
        Err(_) => Err(Failure {
            lost: true,
            message: format!(
                "no answer within {}",
                humantime::format_duration(IO_TIMEOUT)
            ),
        }),
    }
}

/// What the application leaves when it stops: its counters, and what each block must hold.
pub struct Written {
    pub stats: Arc<Stats>,
    expected: Vec<Expect>,
}

impl Written {
    /// The volume's size in blocks.
    pub fn blocks(&self) -> u64 {
        self.expected.len() as u64
    }
}

/// The running application.
pub struct Writer {
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Expect>>,
    started: Instant,
}

impl Writer {
    /// Starts writing the first `blocks` blocks of the volume at `uri` (a tokio task).
    pub fn start(uri: String, blocks: u64) -> Writer {
        Writer::start_on(vec![uri], blocks)
    }

    /// [`Writer::start`] with several addresses of the same volume (every node's endpoint):
    /// after a failure the application reconnects to the next one in turn, as a multipath
    /// initiator would.
    pub fn start_on(uris: Vec<String>, blocks: u64) -> Writer {
        assert!(!uris.is_empty(), "the application needs an address");
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_loop(
            uris,
            blocks,
            Arc::clone(&stats),
            Arc::clone(&stop),
        ));
        Writer {
            stats,
            stop,
            task,
            started: Instant::now(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Full passes over the volume finished so far.
    pub fn rounds(&self) -> u64 {
        self.stats.rounds.load(Ordering::Relaxed)
    }

    /// True once the application stopped by itself (its task ended).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// How long the application has been running.
    pub fn running_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the application after its current batch and final flush.
    pub async fn stop(self) -> Written {
        self.stop.store(true, Ordering::SeqCst);
        let expected = match self.task.await {
            Ok(expected) => expected,
            Err(error) => {
                self.stats
                    .io_error(format!("the application's task failed: {error}"));
                Vec::new()
            }
        };
        Written {
            stats: self.stats,
            expected,
        }
    }
}

/// Connects (again) to the volume, through the next of `uris` each time, retrying until it
/// works or `give_up` says so; each failed attempt is an I/O error.
async fn connect(
    uris: &[String],
    turn: &mut usize,
    stats: &Stats,
    give_up: impl Fn() -> bool,
) -> Option<Arc<NbdClient>> {
    let options = ClientOptions {
        handshake_timeout: IO_TIMEOUT,
        ..ClientOptions::default()
    };
    loop {
        if give_up() {
            return None;
        }
        let uri = &uris[*turn % uris.len()];
        *turn += 1;
        let began = Instant::now();
        let connected = NbdClient::connect_with(uri, &options).await;
        stats.took(began.elapsed());
        match connected {
            Ok(client) => return Some(Arc::new(client)),
            Err(error) => {
                stats.io_error(format!("connecting to {uri}: {error}"));
                // Every address was tried: wait a moment before the next round.
                if (*turn).is_multiple_of(uris.len()) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// The application: writes the volume block after block, round after round, a batch of
/// [`QUEUE_DEPTH`] writes in flight at a time; FUA, flushes and read-back checks as the
/// constants say. Returns what each block must hold.
async fn write_loop(
    uris: Vec<String>,
    blocks: u64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> Vec<Expect> {
    let mut expected = vec![Expect(vec![None]); blocks as usize];
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut client: Option<Arc<NbdClient>> = None;
    let mut round: u32 = 0;
    let mut next: u64 = 0;
    let mut writes: u64 = 0;
    let mut since_flush: u64 = 0;
    let mut turn = 0;
    while !stop.load(Ordering::SeqCst) {
        let nbd = match &client {
            Some(nbd) => Arc::clone(nbd),
            None => match connect(&uris, &mut turn, &stats, || stop.load(Ordering::SeqCst)).await {
                Some(nbd) => {
                    if writes > 0 {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    client = Some(Arc::clone(&nbd));
                    nbd
                }
                None => break,
            },
        };
        let batch: Vec<u64> = (next..(next + QUEUE_DEPTH).min(blocks)).collect();
        let mut in_flight = JoinSet::new();
        for &block in &batch {
            writes += 1;
            let fua = writes.is_multiple_of(FUA_EVERY);
            let nbd = Arc::clone(&nbd);
            let stats = Arc::clone(&stats);
            in_flight.spawn(async move {
                let data = block_data(block, round);
                let result = timed(&stats, nbd.write(block * BLOCK, &data, fua)).await;
                (block, fua, result)
            });
        }
        let mut lost = false;
        while let Some(joined) = in_flight.join_next().await {
            let (block, fua, result) = match joined {
                Ok(done) => done,
                Err(error) => {
                    stats.io_error(format!("a write task failed: {error}"));
                    continue;
                }
            };
            let expect = &mut expected[block as usize];
            match result {
                Ok(()) => {
                    *expect = Expect(vec![Some(round)]);
                    stats.bytes_written.fetch_add(BLOCK, Ordering::Relaxed);
                    stats.writes.fetch_add(1, Ordering::Relaxed);
                    if fua {
                        stats.fua_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(failure) => {
                    expect.0.push(Some(round));
                    lost |= failure.lost;
                    stats.io_error(format!(
                        "write of block {block} (round {round}): {}",
                        failure.message
                    ));
                }
            }
        }
        let verify_now = writes % VERIFY_EVERY < batch.len() as u64;
        next += batch.len() as u64;
        if next >= blocks {
            next = 0;
            round += 1;
            stats.rounds.store(u64::from(round), Ordering::Relaxed);
        }
        since_flush += batch.len() as u64;
        if !lost && since_flush >= FLUSH_EVERY {
            since_flush = 0;
            match timed(&stats, nbd.flush()).await {
                Ok(()) => {
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => {
                    lost |= failure.lost;
                    stats.io_error(format!("flush: {}", failure.message));
                }
            }
        }
        if !lost && verify_now {
            let written = if round == 0 { next } else { blocks };
            if written > 0 {
                let block = rng.gen_range(0..written);
                let check = check_block(&nbd, &stats, block, &expected[block as usize]).await;
                lost |= check == BlockCheck::Failed { lost: true };
            }
        }
        if lost {
            client = None;
        }
    }
    if let Some(nbd) = client {
        match timed(&stats, nbd.flush()).await {
            Ok(()) => {
                stats.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => stats.io_error(format!("final flush: {}", failure.message)),
        }
        if let Some(nbd) = Arc::into_inner(nbd) {
            let _ = tokio::time::timeout(IO_TIMEOUT, nbd.disconnect()).await;
        }
    }
    expected
}

/// How a block read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockCheck {
    Good,
    Wrong,
    /// The read failed; `lost`: the connection must be replaced.
    Failed {
        lost: bool,
    },
}

/// Reads `block` back and checks it against what it must hold, counting into `stats`.
async fn check_block(nbd: &NbdClient, stats: &Stats, block: u64, expect: &Expect) -> BlockCheck {
    match timed(stats, nbd.read(block * BLOCK, BLOCK as u32)).await {
        Ok(data) if expect.matches(block, &data) => {
            stats.bytes_verified.fetch_add(BLOCK, Ordering::Relaxed);
            BlockCheck::Good
        }
        Ok(data) => {
            stats.wrong_data(format!(
                "block {block} (offset {}): expected {}, read {}",
                block * BLOCK,
                expect.describe(),
                describe_content(&data)
            ));
            BlockCheck::Wrong
        }
        Err(failure) => {
            stats.io_error(format!("read of block {block}: {}", failure.message));
            BlockCheck::Failed { lost: failure.lost }
        }
    }
}

/// The result of reading back every block at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Blocks that hold what was last written to them.
    pub good: u64,
    pub wrong: u64,
    pub unreadable: u64,
    /// The bytes of the good blocks.
    pub bytes: u64,
}

/// How often the final check reads a block whose read failed (an application tries a failed
/// read again, on a new connection if the old one is gone) before it counts as unreadable.
pub const READ_ATTEMPTS: u32 = 3;

/// The pause after a batch of reads with a failure, before the next batch.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Reads back every block on a new connection, [`VERIFY_DEPTH`] at a time, and checks each
/// against what it must hold. A lost connection is replaced (within [`IO_TIMEOUT`]); a failed
/// read is tried again, up to [`READ_ATTEMPTS`] in all (each failure is an I/O error in the
/// counts); a block that cannot be read then counts as unreadable.
pub async fn verify_all(uri: &str, written: &Written) -> Checked {
    verify_all_on(&[uri.to_string()], written).await
}

/// [`verify_all`] through any of `uris` (in turn, after a failure).
pub async fn verify_all_on(uris: &[String], written: &Written) -> Checked {
    assert!(!uris.is_empty(), "the check needs an address");
    let stats = &written.stats;
    let mut turn = 0;
    let expected = Arc::new(written.expected.clone());
    let mut waiting: VecDeque<(u64, u32)> = (0..expected.len() as u64).map(|b| (b, 0)).collect();
    let mut checked = Checked::default();
    let mut nbd: Option<Arc<NbdClient>> = None;
    while !waiting.is_empty() {
        let client = match &nbd {
            Some(client) => Arc::clone(client),
            None => {
                let give_up = Instant::now() + IO_TIMEOUT;
                match connect(uris, &mut turn, stats, || Instant::now() > give_up).await {
                    Some(client) => {
                        nbd = Some(Arc::clone(&client));
                        client
                    }
                    None => {
                        checked.unreadable += waiting.len() as u64;
                        break;
                    }
                }
            }
        };
        let mut in_flight = JoinSet::new();
        let mut failed = false;
        for (block, attempts) in waiting.drain(..waiting.len().min(VERIFY_DEPTH)) {
            let (client, stats, expected) = (
                Arc::clone(&client),
                Arc::clone(stats),
                Arc::clone(&expected),
            );
            in_flight.spawn(async move {
                let check = check_block(&client, &stats, block, &expected[block as usize]).await;
                (block, attempts + 1, check)
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            let (block, attempts, check) = match joined {
                Ok(done) => done,
                Err(error) => {
                    checked.unreadable += 1;
                    stats.io_error(format!("a read task failed: {error}"));
                    continue;
                }
            };
            match check {
                BlockCheck::Good => {
                    checked.good += 1;
                    checked.bytes += BLOCK;
                }
                BlockCheck::Wrong => checked.wrong += 1,
                BlockCheck::Failed { lost } => {
                    failed = true;
                    if lost {
                        nbd = None;
                    }
                    if attempts < READ_ATTEMPTS {
                        waiting.push_back((block, attempts));
                    } else {
                        checked.unreadable += 1;
                    }
                }
            }
        }
        if failed {
            // Give whatever failed (a failover, a replica ejected) a moment before trying again.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    if let Some(client) = nbd.and_then(Arc::into_inner) {
        let _ = tokio::time::timeout(IO_TIMEOUT, client.disconnect()).await;
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_and_round_has_its_own_content() {
        let a = block_data(7, 3);
        assert_eq!(a.len(), BLOCK as usize);
        assert_eq!(a, block_data(7, 3));
        assert_ne!(a, block_data(7, 4));
        assert_ne!(a, block_data(8, 3));
        assert_eq!(describe_content(&a), "round 3 of block 7");
        let mut damaged = a.clone();
        damaged[40_000] ^= 1;
        assert_eq!(describe_content(&damaged), "round 3 of block 7, damaged");
        assert_eq!(describe_content(&vec![0; BLOCK as usize]), "zeroes");
        assert_eq!(
            describe_content(&vec![1; BLOCK as usize]),
            "data the application never wrote"
        );
    }

    #[test]
    fn a_failed_write_allows_the_old_or_the_new_content() {
        let zeroes = vec![0; BLOCK as usize];
        let fresh = Expect(vec![None]);
        assert!(fresh.matches(5, &zeroes));
        assert!(!fresh.matches(5, &block_data(5, 0)));
        let uncertain = Expect(vec![Some(1), Some(2)]);
        assert!(uncertain.matches(5, &block_data(5, 1)));
        assert!(uncertain.matches(5, &block_data(5, 2)));
        assert!(!uncertain.matches(5, &block_data(5, 3)));
        assert!(!uncertain.matches(5, &block_data(6, 2)));
        assert_eq!(uncertain.describe(), "round 1 or round 2");
        assert_eq!(Expect(vec![None, Some(0)]).describe(), "zeroes or round 0");
    }

    #[test]
    fn the_first_and_the_last_problems_are_kept() {
        let mut problems = Problems::default();
        for n in 0..(PROBLEMS_SHOWN + 5) {
            problems.push(format!("problem {n}"));
        }
        let list = problems.list();
        assert_eq!(list.len(), PROBLEMS_SHOWN + 1);
        assert_eq!(list[0], "problem 0");
        assert_eq!(list[PROBLEMS_SHOWN / 2], "(5 more)");
        assert_eq!(
            list[PROBLEMS_SHOWN],
            format!("problem {}", PROBLEMS_SHOWN + 4)
        );
    }

    /// A file whose reads fail: the first read of each block in `flaky` (with `ESHUTDOWN`, so
    /// the reader reconnects), and every read of `dead`.
    struct Flaky {
        file: tandem_block::FileDevice,
        flaky: Mutex<std::collections::BTreeSet<u64>>,
        dead: u64,
    }

    impl tandem_block::BlockDevice for Flaky {
        fn info(&self) -> tandem_block::ExportInfo {
            self.file.info()
        }
        async fn read(&self, offset: u64, len: u32) -> Result<bytes::Bytes, tandem_block::IoError> {
            let block = offset / BLOCK;
            if block == self.dead || self.flaky.lock().unwrap().remove(&block) {
                return Err(tandem_block::IoError::Shutdown);
            }
            self.file.read(offset, len).await
        }
        async fn write(
            &self,
            offset: u64,
            data: bytes::Bytes,
            fua: bool,
        ) -> Result<(), tandem_block::IoError> {
            self.file.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<(), tandem_block::IoError> {
            self.file.flush().await
        }
        async fn trim(
            &self,
            offset: u64,
            len: u32,
            fua: bool,
        ) -> Result<(), tandem_block::IoError> {
            self.file.trim(offset, len, fua).await
        }
        async fn write_zeroes(
            &self,
            offset: u64,
            len: u32,
            fua: bool,
            no_hole: bool,
        ) -> Result<(), tandem_block::IoError> {
            self.file.write_zeroes(offset, len, fua, no_hole).await
        }
        async fn block_status(
            &self,
            offset: u64,
            len: u32,
        ) -> Result<Vec<tandem_block::Extent>, tandem_block::IoError> {
            self.file.block_status(offset, len).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_read_is_tried_again_and_one_that_always_fails_is_unreadable() {
        const BLOCKS: u64 = 32;
        let directory = tempfile::tempdir().unwrap();
        let file = tandem_block::FileDevice::create(directory.path().join("disk"), BLOCKS * BLOCK)
            .unwrap();
        let device = Arc::new(Flaky {
            file,
            flaky: Mutex::new(std::collections::BTreeSet::new()),
            dead: BLOCKS + 1,
        });
        let server = Arc::new(tandem_nbd::Server::new(tandem_nbd::ServerConfig::default()));
        server.add_export("disk", Arc::clone(&device)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("nbd://{}/disk", listener.local_addr().unwrap());
        tokio::spawn(Arc::clone(&server).serve(listener, std::future::pending()));

        let writer = Writer::start(uri.clone(), BLOCKS);
        while writer.rounds() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let written = writer.stop().await;
        let errors_before = written.stats.counts().io_errors;
        // Every block's first read fails: each is read again (a new connection), and good.
        *device.flaky.lock().unwrap() = (0..BLOCKS).collect();
        let checked = verify_all(&uri, &written).await;
        assert_eq!(
            (checked.good, checked.wrong, checked.unreadable),
            (BLOCKS, 0, 0)
        );
        assert_eq!(written.stats.counts().io_errors - errors_before, BLOCKS);

        // A block that never reads is unreadable after READ_ATTEMPTS tries; the others are good.
        let dead = 5;
        let device = Arc::new(Flaky {
            file: tandem_block::FileDevice::open(directory.path().join("disk"), false).unwrap(),
            flaky: Mutex::new(std::collections::BTreeSet::new()),
            dead,
        });
        server.remove_export("disk");
        server.add_export("disk", device).unwrap();
        let errors_before = written.stats.counts().io_errors;
        let checked = verify_all(&uri, &written).await;
        assert_eq!(
            (checked.good, checked.wrong, checked.unreadable),
            (BLOCKS - 1, 0, 1)
        );
        assert_eq!(
            written.stats.counts().io_errors - errors_before,
            u64::from(READ_ATTEMPTS)
        );
        assert!(written
            .stats
            .problems()
            .iter()
            .any(|p| p.contains("block 5")));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(12), "12 B");
        assert_eq!(human(64 << 10), "64 KiB");
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human((3 << 29) + 1), "1.5 GiB");
        assert_eq!(human(1020 << 20), "1020 MiB");
    }
}
