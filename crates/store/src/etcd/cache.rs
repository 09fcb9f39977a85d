//! The etcd store's watch cache: the newest changes, kept in memory by one live etcd watch.
//!
//! A watch that starts in etcd's past waits for etcd's catch-up loop (every 100 ms), so asking
//! etcd's history for every `changes_since` would delay each watcher by up to that. Instead one
//! watch per store follows every write as etcd commits it, and `changes_since` reads the window
//! it keeps once the window has reached the store's current version (as Kubernetes' API server
//! does). A version older than the window, a window not yet started or one that does not catch
//! up promptly is answered from etcd's history instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::WatchOptions;
use tokio::time::Instant;

use super::{last_write, revision, Cluster, Failure, Member};
use crate::Change;

/// How long a read waits for the window to reach the current version before asking etcd.
const CATCH_UP_PATIENCE: Duration = Duration::from_millis(500);

pub(super) struct Cache {
    window: Mutex<Option<Window>>,
    /// The newest revision the window has seen, to wake readers.
    progress: tokio::sync::watch::Sender<u64>,
    kept: usize,
}

/// Every change after `floor` up to `seen`, oldest first.
struct Window {
    floor: u64,
    seen: u64,
    changes: VecDeque<Change>,
}

impl Cache {
    pub(super) fn new(kept: usize) -> Cache {
        Cache {
            window: Mutex::new(None),
            progress: tokio::sync::watch::Sender::new(0),
            kept: kept.max(1),
        }
    }

    fn window(&self) -> MutexGuard<'_, Option<Window>> {
        // A panic while holding the lock cannot leave a window half-changed in a way that
        // matters more than losing it: start over.
        self.window.lock().unwrap_or_else(|poisoned| {
            let mut window = poisoned.into_inner();
            *window = None;
            window
        })
    }

    /// The changes after `version` (at most `limit`), once the window has seen `current`; None
    /// when the window cannot answer (not started, too new, or not caught up in time).
    pub(super) async fn read(
        &self,
        version: u64,
        current: u64,
        limit: usize,
    ) -> Option<Vec<Change>> {
        let mut progress = self.progress.subscribe();
        let until = Instant::now() + CATCH_UP_PATIENCE;
        // Bounded by `until`.
        loop {
            {
                let window = self.window();
                let window = window.as_ref()?;
                if version < window.floor {
                    return None;
                }
                if window.seen >= current {
                    let first = window
                        .changes
                        .partition_point(|change| change.object.resource_version <= version);
                    return Some(window.changes.range(first..).take(limit).cloned().collect());
                }
            }
            match tokio::time::timeout_at(until, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The newest revision the window has seen, as it changes.
    pub(super) fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn seen(&self) -> Option<u64> {
        self.window().as_ref().map(|window| window.seen)
    }

    fn start(&self, at: u64) {
        *self.window() = Some(Window {
            floor: at,
            seen: at,
            changes: VecDeque::new(),
        });
    }

    fn forget(&self) {
        *self.window() = None;
    }

    /// Adds the changes of revisions up to `seen`, dropping the oldest beyond the bound.
    fn append(&self, changes: Vec<Change>, seen: u64) {
        {
            let mut window = self.window();
            let Some(window) = window.as_mut() else {
                return;
            };
            window.changes.extend(changes);
            while window.changes.len() > self.kept {
                if let Some(dropped) = window.changes.pop_front() {
                    window.floor = dropped.object.resource_version;
                }
            }
            window.seen = window.seen.max(seen);
        }
        self.progress.send_replace(seen);
    }
}

/// Keeps the cache's window current for the store's life (the store's runtime ends it): follows
/// etcd's changes, and after any failure resumes where it stopped, on the next member.
pub(super) async fn follow(cluster: Arc<Cluster>) {
    let mut index = 0;
    let mut pause = Duration::from_millis(50);
    loop {
        let member = cluster.members[index % cluster.members.len()].clone();
        if follow_once(&cluster, member).await.unwrap_or(false) {
            pause = Duration::from_millis(50);
        }
        index += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One watch, until it ends; true if it delivered anything.
async fn follow_once(cluster: &Cluster, mut member: Member) -> Result<bool, Failure> {
    let cache = &cluster.cache;
    let from = match cache.seen() {
        Some(seen) => seen,
        None => {
            let at = last_write(&mut member.kv, cluster.marker.clone()).await?;
            cache.start(at);
            at
        }
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision(from + 1))
        .with_prev_key();
    let mut stream = member
        .watch
        .watch(cluster.watched.clone(), Some(options))
        .await?;
    let mut delivered = false;
    // Until etcd or the connection ends the watch.
    while let Some(answer) = stream.message().await? {
        if answer.compact_revision() > 0 {
            // Changes were lost to compaction while away: start a new window.
            cache.forget();
            return Ok(delivered);
        }
        if answer.canceled() {
            return Ok(delivered);
        }
        let mut changes = Vec::new();
        let mut seen = from;
        for event in answer.events() {
            match cluster.read_event(event) {
                Ok(Some((at, change))) => {
                    seen = seen.max(at);
                    changes.extend(change);
                }
                Ok(None) => {}
                Err(_) => {
                    // Reads from history report it; the window starts again after it.
                    cache.forget();
                    return Ok(delivered);
                }
            }
        }
        if !answer.events().is_empty() {
            cache.append(changes, seen);
            delivered = true;
        }
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeKind, ObjectKey, Versioned};

    fn change(version: u64) -> Change {
        Change {
            kind: ChangeKind::Modified,
            object: Versioned {
                key: ObjectKey::new("K", "ns", "a"),
                resource_version: version,
                object: serde_json::json!({"metadata": {}}),
            },
        }
    }

    fn versions(changes: Option<Vec<Change>>) -> Option<Vec<u64>> {
        changes.map(|c| c.iter().map(|c| c.object.resource_version).collect())
    }

    #[tokio::test]
    async fn given_a_window_when_read_then_it_answers_only_what_it_holds_whole() {
        let cache = Cache::new(3);
        assert_eq!(versions(cache.read(0, 5, 10).await), None, "not started");
        cache.start(10);
        assert_eq!(
            versions(cache.read(9, 12, 10).await),
            None,
            "before the window"
        );
        cache.append(vec![change(11), change(13)], 13);
        assert_eq!(versions(cache.read(10, 13, 10).await), Some(vec![11, 13]));
        assert_eq!(versions(cache.read(11, 12, 10).await), Some(vec![13]));
        assert_eq!(
            versions(cache.read(10, 13, 1).await),
            Some(vec![11]),
            "limit"
        );
        // Marker-only revisions (other stores' keys) move `seen` without changes.
        cache.append(vec![change(14), change(15)], 16);
        assert_eq!(
            versions(cache.read(10, 16, 10).await),
            None,
            "11 was dropped"
        );
        assert_eq!(
            versions(cache.read(11, 16, 10).await),
            Some(vec![13, 14, 15])
        );
        // A read of a version the window has not reached yet waits for it, then gives up.
        let started = Instant::now();
        assert_eq!(versions(cache.read(15, 17, 10).await), None);
        assert!(started.elapsed() >= CATCH_UP_PATIENCE);
        let (read, ()) = tokio::join!(cache.read(15, 17, 10), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.append(vec![change(17)], 17);
        });
        assert_eq!(versions(read), Some(vec![17]));
        cache.forget();
        assert_eq!(versions(cache.read(15, 17, 10).await), None, "forgotten");
    }
}
