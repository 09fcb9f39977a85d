//! What only a running target knows, counted for metrics: client operations held back by
//! backpressure, writes answered ENOSPC, replicas ejected, bytes copied to each replica by
//! resyncs. The target task updates them (an atomic per client request; a short lock only on
//! an ejection or when resync progress moved, never per request); a scrape reads them through
//! [`TargetHandle::counters`](super::TargetHandle::counters).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tandem_core::{ReplicaId, ResyncProgress};

/// The counters of one target. Every value only grows for the life of the target.
#[derive(Debug, Default)]
pub struct TargetCounters {
    backpressure_waits: AtomicU64,
    no_space_replies: AtomicU64,
    replicas: Mutex<BTreeMap<ReplicaId, ReplicaCounters>>,
}

/// One replica's counters, as the target saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// How often the target ejected it (a timeout, a backlog, a failed write, a broken or
    /// refused session).
    pub ejections: u64,
    /// Bytes copied to it by resyncs and rebuilds, finished or not.
    pub resync_bytes_copied: u64,
}

impl TargetCounters {
    /// Client writes, trims and flushes that arrived while backpressure held new operations
    /// back (a replica had `replica_congestion_ops` unanswered), so they waited.
    pub fn backpressure_waits(&self) -> u64 {
        self.backpressure_waits.load(Ordering::Relaxed)
    }

    /// Client writes answered ENOSPC: every Healthy replica's pool was full, so they changed
    /// nothing.
    pub fn no_space_replies(&self) -> u64 {
        self.no_space_replies.load(Ordering::Relaxed)
    }

    /// Every replica this target has counted something for.
    pub fn replicas(&self) -> BTreeMap<ReplicaId, ReplicaCounters> {
        self.replicas
            .lock()
            .map(|replicas| replicas.clone())
            .unwrap_or_default()
    }

    pub(crate) fn note_backpressure_wait(&self) {
        self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_no_space_reply(&self) {
        self.no_space_replies.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_ejection(&self, replica: ReplicaId) {
        self.update(replica, |counters| counters.ejections += 1);
    }

    fn note_copied(&self, replica: ReplicaId, bytes: u64) {
        if bytes > 0 {
            self.update(replica, |counters| counters.resync_bytes_copied += bytes);
        }
    }

    fn update(&self, replica: ReplicaId, change: impl FnOnce(&mut ReplicaCounters)) {
        // Only the target task writes; a poisoned lock (a panic while holding it) cannot happen
        // with the plain arithmetic done under it, and would only cost counts.
        if let Ok(mut replicas) = self.replicas.lock() {
            change(replicas.entry(replica).or_default());
        }
    }
}

/// Turns the resync progress the target task sees (each tick) and its finished resyncs into
/// bytes copied, so the counter grows by exactly what each resync copied, whether it finished
/// or was abandoned (the destination ejected) and started again.
#[derive(Debug, Default)]
pub(crate) struct CopiedTracker {
    /// The running resync's destination and the bytes already counted for it.
    counted: Option<(ReplicaId, u64)>,
}

impl CopiedTracker {
    /// The resync in flight now (`None`: none).
    pub(crate) fn observe(&mut self, progress: Option<ResyncProgress>, counters: &TargetCounters) {
        let Some(progress) = progress else {
            self.counted = None;
            return;
        };
        let done = progress.bytes_done;
        let already = match self.counted {
            // The same job, further on.
            Some((replica, counted)) if replica == progress.replica && done >= counted => counted,
            // Another job (another replica, or this one started over).
            _ => 0,
        };
        counters.note_copied(progress.replica, done - already);
        self.counted = Some((progress.replica, done));
    }

    /// A resync finished having copied `bytes` in all.
    pub(crate) fn finished(&mut self, replica: ReplicaId, bytes: u64, counters: &TargetCounters) {
        let already = match self.counted {
            Some((counted_replica, counted)) if counted_replica == replica && bytes >= counted => {
                counted
            }
            _ => 0,
        };
        counters.note_copied(replica, bytes - already);
        self.counted = None;
    }

    /// `replica` was ejected: a resync to it is abandoned (what it copied stays counted).
    pub(crate) fn ejected(&mut self, replica: ReplicaId) {
        if self.counted.is_some_and(|(counted, _)| counted == replica) {
            self.counted = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(replica: u64, done: u64) -> Option<ResyncProgress> {
        Some(ResyncProgress {
            replica: ReplicaId(replica),
            source: ReplicaId(9),
            full: true,
            bytes_done: done,
            bytes_total: 100,
        })
    }

    fn copied(counters: &TargetCounters, replica: u64) -> u64 {
        counters
            .replicas()
            .get(&ReplicaId(replica))
            .map_or(0, |counters| counters.resync_bytes_copied)
    }

    #[test]
    fn given_a_resync_seen_tick_by_tick_when_it_finishes_then_its_bytes_are_counted_once() {
        let counters = TargetCounters::default();
        let mut tracker = CopiedTracker::default();
        tracker.observe(progress(1, 0), &counters);
        tracker.observe(progress(1, 30), &counters);
        tracker.observe(progress(1, 30), &counters);
        tracker.observe(progress(1, 70), &counters);
        assert_eq!(copied(&counters, 1), 70);
        tracker.finished(ReplicaId(1), 100, &counters);
        tracker.observe(None, &counters);
        assert_eq!(copied(&counters, 1), 100);
    }

    #[test]
    fn given_an_abandoned_resync_when_a_new_one_starts_then_both_copies_count() {
        let counters = TargetCounters::default();
        let mut tracker = CopiedTracker::default();
        tracker.observe(progress(1, 40), &counters);
        tracker.ejected(ReplicaId(1));
        assert_eq!(copied(&counters, 1), 40, "what was copied stays counted");
        tracker.observe(progress(1, 50), &counters);
        assert_eq!(copied(&counters, 1), 90);
        // Started over without an ejection seen: the progress went back.
        tracker.observe(progress(1, 10), &counters);
        assert_eq!(copied(&counters, 1), 100);
    }

    #[test]
    fn given_resyncs_of_two_replicas_when_they_follow_each_other_then_each_has_its_own() {
        let counters = TargetCounters::default();
        let mut tracker = CopiedTracker::default();
        tracker.observe(progress(1, 60), &counters);
        tracker.finished(ReplicaId(1), 100, &counters);
        tracker.observe(progress(2, 5), &counters);
        tracker.finished(ReplicaId(2), 20, &counters);
        assert_eq!((copied(&counters, 1), copied(&counters, 2)), (100, 20));
    }

    #[test]
    fn ejections_and_backpressure_waits_only_grow() {
        let counters = TargetCounters::default();
        counters.note_ejection(ReplicaId(3));
        counters.note_ejection(ReplicaId(3));
        counters.note_backpressure_wait();
        assert_eq!(
            counters.replicas().get(&ReplicaId(3)),
            Some(&ReplicaCounters {
                ejections: 2,
                resync_bytes_copied: 0
            })
        );
        assert_eq!(counters.backpressure_waits(), 1);
    }
}
