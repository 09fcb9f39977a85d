//! A simulated network between a volume's targets and replicas.
//!
//! Links behave like TCP by default: each link delivers in order after a random delay. Faults
//! break that on purpose: a message may be dropped, duplicated, or reordered (delivered ahead of
//! earlier ones), and links can be cut one way or both (partitions). The core must turn each of
//! these into a clean session break, never into a misapplied message.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::{Generation, ReplicaId};

/// An endpoint: a target (by generation) or a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Target(Generation),
    Replica(ReplicaId),
}

/// Per-message fault rates, in parts per million.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetworkFaults {
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    pub reorder_ppm: u32,
    /// Occasionally a message takes much longer (a delay spike), keeping link order.
    pub delay_spike_ppm: u32,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetworkCounters {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delay_spikes: u64,
    pub cut: u64,
}

pub struct Network {
    pub faults: NetworkFaults,
    pub delay_ticks_min: u64,
    pub delay_ticks_max: u64,
    /// Directed links that deliver nothing.
    cut: BTreeSet<(Node, Node)>,
    /// The tick of the last in-order delivery per directed link, to keep links FIFO.
    last_delivery: BTreeMap<(Node, Node), u64>,
    pub counters: NetworkCounters,
}

impl Network {
    pub fn new(delay_ticks_min: u64, delay_ticks_max: u64) -> Network {
        Network {
            faults: NetworkFaults::default(),
            delay_ticks_min,
            delay_ticks_max,
            cut: BTreeSet::new(),
            last_delivery: BTreeMap::new(),
            counters: NetworkCounters::default(),
        }
    }

    pub fn cut(&mut self, from: Node, to: Node) {
        self.cut.insert((from, to));
    }

    pub fn is_cut(&self, from: Node, to: Node) -> bool {
        self.cut.contains(&(from, to))
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn heal_link(&mut self, a: Node, b: Node) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// Decides when (if ever) a message sent now arrives; each tick in the result is one copy.
    pub fn route(&mut self, from: Node, to: Node, now: u64, rng: &mut ChaCha8Rng) -> Vec<u64> {
        self.counters.sent += 1;
        if self.is_cut(from, to) {
            self.counters.cut += 1;
            return Vec::new();
        }
        if chance(rng, self.faults.drop_ppm) {
            self.counters.dropped += 1;
            return Vec::new();
        }
        let mut delay = rng.gen_range(self.delay_ticks_min..=self.delay_ticks_max);
        if chance(rng, self.faults.delay_spike_ppm) {
            self.counters.delay_spikes += 1;
            delay += rng.gen_range(20..200);
        }
        let mut arrivals = Vec::with_capacity(1);
        if chance(rng, self.faults.reorder_ppm) {
            // Skips the link's queue: it may overtake messages sent before it.
            self.counters.reordered += 1;
            arrivals.push(now + self.delay_ticks_min);
        } else {
            let last = self.last_delivery.entry((from, to)).or_insert(0);
            let at = (now + delay).max(*last);
            *last = at;
            arrivals.push(at);
        }
        if chance(rng, self.faults.duplicate_ppm) {
            self.counters.duplicated += 1;
            arrivals.push(now + delay + rng.gen_range(1..50));
        }
        arrivals
    }
}

pub fn chance(rng: &mut ChaCha8Rng, ppm: u32) -> bool {
    ppm > 0 && rng.gen_range(0..1_000_000) < ppm
}
