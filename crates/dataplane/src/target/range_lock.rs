//! Byte-range locks for a target's client writes, granted in arrival order among overlapping
//! ranges: a partial-block write reads the blocks around it and writes them back whole, and no
//! other write to those blocks may land in between.
//!
//! Every write, trim and zeroing of a volume takes the lock of the blocks it touches, so a
//! read-modify-write is atomic with respect to every other write, whichever connection sent it.
//! Reads take no lock (a read racing a write may see either, as on any disk). Requests that do
//! not overlap never wait for each other; overlapping ones are served first come, first served,
//! so no writer starves behind a stream of others.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The locks of one volume; shared by every handle to its target.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    /// Held and waiting ranges by ticket (arrival order).
    entries: Mutex<Entries>,
    released: Notify,
}

#[derive(Debug, Default)]
struct Entries {
    next_ticket: u64,
    ranges: BTreeMap<u64, Range<u64>>,
}

/// A granted range; released when dropped (also when the request is abandoned).
#[derive(Debug)]
pub(crate) struct RangeGuard {
    locks: Arc<RangeLocks>,
    ticket: u64,
}

impl RangeLocks {
    /// Waits until no range that arrived before this one overlaps `range`, then holds it.
    pub(crate) async fn lock(self: &Arc<Self>, range: Range<u64>) -> RangeGuard {
        assert!(
            range.start < range.end,
            "an empty range {range:?} is never locked"
        );
        let guard = {
            let mut entries = self.entries();
            let ticket = entries.next_ticket;
            entries.next_ticket += 1;
            entries.ranges.insert(ticket, range.clone());
            RangeGuard {
                locks: self.clone(),
                ticket,
            }
        };
        loop {
            // Registered before checking, so a release in between is not missed.
            let released = self.released.notified();
            if !self.blocked(guard.ticket, &range) {
                return guard;
            }
            released.await;
        }
    }

    fn blocked(&self, ticket: u64, range: &Range<u64>) -> bool {
        self.entries()
            .ranges
            .range(..ticket)
            .any(|(_, earlier)| earlier.start < range.end && range.start < earlier.end)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent whatever panicked while holding it: every change is one call.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().ranges.len()
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.locks.entries().ranges.remove(&self.ticket);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` is still pending after the runtime has run everything else it can.
    async fn pending<F: std::future::Future>(future: &mut std::pin::Pin<Box<F>>) -> bool {
        tokio::select! {
            biased;
            _ = future.as_mut() => false,
            _ = tokio::task::yield_now() => true,
        }
    }

    #[tokio::test]
    async fn disjoint_ranges_do_not_wait_and_overlapping_ones_do() {
        let locks = Arc::new(RangeLocks::default());
        let first = locks.lock(0..4096).await;
        let _disjoint = locks.lock(4096..8192).await;
        let mut overlapping = Box::pin(locks.lock(4000..4090));
        assert!(pending(&mut overlapping).await);
        drop(first);
        let granted = tokio::time::timeout(Duration::from_secs(10), overlapping).await;
        assert!(
            granted.is_ok(),
            "the overlapping range is granted once the first is released"
        );
    }

    #[tokio::test]
    async fn overlapping_ranges_are_granted_in_arrival_order() {
        let locks = Arc::new(RangeLocks::default());
        let held = locks.lock(0..100).await;
        // Arrives second and overlaps the first; a later range overlapping only this waiter
        // must not overtake it.
        let mut second = Box::pin(locks.lock(50..200));
        assert!(pending(&mut second).await);
        let mut third = Box::pin(locks.lock(150..300));
        assert!(pending(&mut third).await);
        drop(held);
        let second = second.await;
        assert!(pending(&mut third).await);
        drop(second);
        drop(third.await);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_wait_releases_its_place() {
        let locks = Arc::new(RangeLocks::default());
        let held = locks.lock(0..10).await;
        let mut abandoned = Box::pin(locks.lock(0..10));
        assert!(pending(&mut abandoned).await);
        drop(abandoned);
        drop(held);
        assert_eq!(locks.len(), 0);
        drop(locks.lock(5..6).await);
    }
}
