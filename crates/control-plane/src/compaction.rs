//! Keeps a shared store's history bounded, as Kubernetes' API server compacts etcd: while this
//! control plane leads, every interval it has the store forget the changes before the version it
//! read one interval earlier. A watcher more than an interval behind (and older than the watch
//! cache) is told its version is too old (410 Gone) and lists again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::api::Api;
use crate::leader::Leader;

/// Compacts every `interval` while leading, for ever; returns at once for a zero interval (keep
/// everything) or the sole control plane (its store bounds its own history).
pub async fn run(api: Arc<Api>, mut leader: Leader, interval: Duration) {
    if interval.is_zero() || matches!(leader, Leader::Sole) {
        return;
    }
    loop {
        let mandate = leader.until_leading().await;
        tokio::select! {
            () = leader.clone().lost(mandate) => {}
            () = compact_every(&api, interval) => {}
        }
    }
}

/// The store's version now, and one interval later compaction before it; and so on.
async fn compact_every(api: &Api, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous: Option<u64> = None;
    let mut compacted = 0;
    loop {
        ticks.tick().await;
        if let Some(version) = previous.filter(|version| *version > compacted) {
            match api.store.compact(version) {
                Ok(()) => {
                    compacted = version;
                    tracing::info!(version, "compacted the store's history before version");
                }
                // The next interval compacts further, which covers this.
                Err(error) => tracing::warn!(version, %error, "could not compact the store"),
            }
        }
        match api.store.current_version() {
            Ok(version) => previous = Some(version),
            Err(error) => tracing::warn!(%error, "could not read the store's version to compact"),
        }
    }
}
