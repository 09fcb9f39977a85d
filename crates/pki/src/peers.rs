//! Per-peer bounds of a listener: how many handshakes or connections each peer address holds,
//! so that one address cannot take every slot a listener has. Shared by every listener that
//! faces the network (the API, the NBD servers, the replica hosts).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// How many of something (handshakes, connections) each peer address holds now.
#[derive(Debug, Default)]
pub struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    pub fn new() -> Arc<PeerCounts> {
        Arc::new(PeerCounts::default())
    }

    /// One more for `peer`, unless it holds `limit` already; given back when the slot drops.
    pub fn take(self: &Arc<Self>, peer: IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(peer).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: Arc::clone(self),
            peer,
        })
    }
}

/// One of a peer's handshakes or connections; given back when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    counts: Arc<PeerCounts>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(counts: &PeerCounts, peer: IpAddr) -> usize {
        counts.0.lock().unwrap().get(&peer).copied().unwrap_or(0)
    }

    #[test]
    fn each_peer_is_bounded_on_its_own_and_slots_come_back() {
        let counts = PeerCounts::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.take(a, 2).unwrap();
        let second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none());
        let other = counts.take(b, 2).unwrap();
        assert_eq!((held_by(&counts, a), held_by(&counts, b)), (2, 1));
        drop(first);
        assert!(counts.take(a, 2).is_some(), "a dropped slot is given back");
        drop((second, other));
        assert_eq!((held_by(&counts, a), held_by(&counts, b)), (0, 0));
        assert!(
            counts.0.lock().unwrap().is_empty(),
            "no entry is left behind"
        );
    }
}
