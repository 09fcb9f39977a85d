//! The checkers that look at replicas' disks and at client waits: G1 at each acknowledgement,
//! G2 at each recovery, G3 at the end, G5 at each replica write, G6 at each membership change,
//! G7 when a scenario asks after a rebuild, G8 at each metadata write.

use bytes::Bytes;
use tandem_core::{Generation, ReplicaId, ReplicaMode, Stamp};

use crate::history::{block_value, Guarantee, BLOCK_SIZE};
use crate::world::Sim;

impl Sim {
    /// True if a block value on a disk is at least as new as the write stamped `needed`.
    pub(super) fn value_at_least(
        &self,
        block: u64,
        value: Option<u64>,
        needed_id: u64,
        needed: Stamp,
    ) -> bool {
        match value {
            Some(0) => self.history.zeroed_since(block, needed),
            Some(value) => {
                value == needed_id || self.history.stamp_of(value).is_some_and(|s| s >= needed)
            }
            None => false,
        }
    }

    /// G1 (and G6) at the moment a write is acknowledged: CF replicas hold it in their caches,
    /// and CF of those are trusted members.
    pub(super) fn check_write_durability(&mut self, generation: Generation, id: u64, stamp: Stamp) {
        let record = self.history.writes[&id].clone();
        if record.lossy {
            return;
        }
        let Some(target) = self.targets.get(&generation) else {
            return;
        };
        let needed = target.consistency_factor();
        let (mut holders, mut trusted_holders) = (0, 0);
        for (replica, node) in &self.nodes {
            let Some(disk) = node.disk.as_ref() else {
                continue;
            };
            if node.wiped_at.is_some_and(|at| at > record.issued_at) {
                holders += 1;
                trusted_holders += 1;
                continue;
            }
            let holds = (record.first_block..record.first_block + record.blocks).all(|block| {
                let start = (block * BLOCK_SIZE) as usize;
                let value = block_value(&disk.cache()[start..start + BLOCK_SIZE as usize]);
                self.value_at_least(block, value, id, stamp)
            });
            if holds {
                holders += 1;
                if self
                    .control_plane
                    .membership
                    .trusts(*replica, disk.incarnation)
                {
                    trusted_holders += 1;
                }
            }
        }
        if holders < needed {
            let seen: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(replica, node)| {
                    let disk = node.disk.as_ref()?;
                    let values: Vec<Option<u64>> = (record.first_block
                        ..record.first_block + record.blocks)
                        .map(|block| {
                            let start = (block * BLOCK_SIZE) as usize;
                            block_value(&disk.cache()[start..start + BLOCK_SIZE as usize])
                        })
                        .collect();
                    Some(format!("replica {} holds {values:?}", replica.0))
                })
                .collect();
            self.violate(
                Guarantee::G1Durability,
                format!(
                    "write {id} (stamp {stamp}, blocks {}..{}) acknowledged but held by {holders} replicas, CF is {needed}: {}",
                    record.first_block,
                    record.first_block + record.blocks,
                    seen.join("; ")
                ),
            );
        } else if trusted_holders < needed {
            self.violate(
                Guarantee::G6Membership,
                format!(
                    "write {id} (stamp {stamp}) acknowledged with {trusted_holders} trusted holders, CF is {needed}"
                ),
            );
        }
    }

    /// G1 at the moment a flush is acknowledged: every write acknowledged before it is durable
    /// on CF replicas.
    pub(super) fn check_flush_durability(&mut self, generation: Generation, issued_at: u64) {
        let Some(target) = self.targets.get(&generation) else {
            return;
        };
        let needed = target.consistency_factor();
        for block in 0..self.config.blocks {
            let Some((id, stamp)) = self.history.required(block, issued_at) else {
                continue;
            };
            let start = (block * BLOCK_SIZE) as usize;
            let issued_at = self.history.writes[&id].issued_at;
            let holders = self
                .nodes
                .values()
                .filter(|node| {
                    let wiped_since = node.wiped_at.is_some_and(|at| at > issued_at);
                    wiped_since
                        || node.disk.as_ref().is_some_and(|disk| {
                            let value =
                                block_value(&disk.durable()[start..start + BLOCK_SIZE as usize]);
                            self.value_at_least(block, value, id, stamp)
                        })
                })
                .count();
            if holders < needed {
                self.violate(
                    Guarantee::G1Durability,
                    format!(
                        "flush acknowledged but block {block} (write {id}, stamp {stamp}) is durable on {holders} replicas, CF is {needed}"
                    ),
                );
                return;
            }
        }
    }

    /// G2 when a target finishes recovering: the replica it chose as the volume's history holds
    /// every write that must survive. A target that a newer one took over from may still
    /// recover in place from a replica the newer one never reached (cut off together); it
    /// cannot serve what it recovered (its writes need CF replicas, which refuse it; its reads
    /// need a read lease), and every read it does answer is checked against the whole history
    /// (G5), so its recovery is not held to writes it never saw.
    pub(super) fn check_recovery_source(&mut self, generation: Generation, source: ReplicaId) {
        if generation < self.control_plane.generation {
            return;
        }
        let Some(disk) = self.nodes.get(&source).and_then(|n| n.disk.as_ref()) else {
            return;
        };
        let now = self.history.now();
        let mut problem = None;
        for block in 0..self.config.blocks {
            let Some((id, stamp)) = self.history.required(block, now) else {
                continue;
            };
            let start = (block * BLOCK_SIZE) as usize;
            let value = block_value(&disk.cache()[start..start + BLOCK_SIZE as usize]);
            if !self.value_at_least(block, value, id, stamp) {
                problem = Some(format!(
                    "recovered from replica {} whose block {block} holds {value:?}, but write {id} (stamp {stamp}) was acknowledged",
                    source.0
                ));
                break;
            }
        }
        if let Some(problem) = problem {
            self.violate(Guarantee::G2NoLostWrite, problem);
        }
    }

    /// G5: a replica never applies client data from a generation older than one it accepted.
    pub(super) fn check_fencing(&mut self, replica: ReplicaId, data: &Bytes) {
        let Some(process) = self.replica(replica) else {
            return;
        };
        let seen = process.superblock().generation_seen;
        for block in data.chunks_exact(BLOCK_SIZE as usize) {
            let Some(value) = block_value(block) else {
                continue;
            };
            if let Some(stamp) = self.history.stamp_of(value) {
                if stamp.generation < seen {
                    self.violate(
                        Guarantee::G5Fencing,
                        format!(
                            "replica {} applied write {value} of generation {} after accepting generation {}",
                            replica.0, stamp.generation.0, seen.0
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// G3: every Healthy trusted replica holds the same bytes, in cache and (after a flush) on
    /// durable media.
    pub fn check_convergence(&mut self) {
        let Some(target) = self.target() else {
            return;
        };
        let healthy: Vec<ReplicaId> = self
            .control_plane
            .membership
            .members
            .iter()
            .filter(|m| target.replica_mode(m.replica) == Some(ReplicaMode::Healthy))
            .map(|m| m.replica)
            .collect();
        let Some((&first, rest)) = healthy.split_first() else {
            return;
        };
        let reference = self.nodes[&first].disk.as_ref().expect("healthy has disk");
        let mut problems = Vec::new();
        for other in rest {
            let disk = self.nodes[other].disk.as_ref().expect("healthy has disk");
            for (image, name) in [
                (reference.cache(), "cache"),
                (reference.durable(), "durable"),
            ] {
                let theirs = if name == "cache" {
                    disk.cache()
                } else {
                    disk.durable()
                };
                if let Some(block) = (0..self.config.blocks).find(|b| {
                    let start = (b * BLOCK_SIZE) as usize;
                    let end = start + BLOCK_SIZE as usize;
                    image[start..end] != theirs[start..end]
                }) {
                    let start = (block * BLOCK_SIZE) as usize;
                    let end = start + BLOCK_SIZE as usize;
                    problems.push(format!(
                        "replicas {} and {} differ ({name}) at block {block}: {:?} vs {:?}",
                        first.0,
                        other.0,
                        block_value(&image[start..end]),
                        block_value(&theirs[start..end])
                    ));
                }
            }
        }
        for problem in problems {
            self.violate(Guarantee::G3Convergence, problem);
        }
    }

    /// The longest client waits so far, in ticks: of requests no rebuild overlapped, and of
    /// requests one did, counting those still unanswered with their wait so far.
    pub fn longest_client_waits(&self) -> (Option<u64>, Option<u64>) {
        let rebuilding = !self.converged();
        let seen = self.client_waits.rebuild_seen_tick;
        let unanswered = self
            .clients
            .values()
            .filter(|(_, _, issued)| rebuilding || seen.is_some_and(|t| t >= *issued))
            .map(|(_, _, issued)| self.now_tick - issued)
            .max();
        (
            self.client_waits.steady_ticks_max,
            self.client_waits.rebuild_ticks_max.max(unanswered),
        )
    }

    /// G7, asked by a scenario once a rebuild is over: no client request a rebuild overlapped
    /// waited (or, unanswered, has waited) longer than the longest wait of one it did not
    /// overlap, plus one source round trip (a segment's read request to the source, its disk
    /// read, the data's way back: how long a segment holds its range lock). Only meaningful in a
    /// quiet world: faults make requests wait for reasons of their own. Without a request of
    /// each kind there is nothing to compare.
    pub fn check_client_wait(&mut self) {
        let (Some(steady), Some(rebuild)) = self.longest_client_waits() else {
            return;
        };
        let round_trip_ticks =
            2 * self.config.network_delay_ticks.1 + self.config.disk_latency_ticks.1;
        if rebuild > steady + round_trip_ticks {
            self.violate(
                Guarantee::G7BoundedImpact,
                format!(
                    "a client request waited {rebuild} ticks while a rebuild ran, but at most {steady} ticks otherwise; one source round trip is {round_trip_ticks} ticks"
                ),
            );
        }
    }

    /// G8 at each metadata write a replica's storage performs that neither extends the persisted
    /// activity log (a write's first touch of a region outside it: the log gains a region and
    /// loses none) nor marks a consistent replica inconsistent (a resync's start, or its first
    /// segment's). Such a write belongs to a barrier, and each barrier message delivered to the
    /// replica (Hello, Flush, StartResync, FinishResync) pays for at most one: a replica never
    /// performs more of them than it was asked for barriers. A write repeated for every client
    /// write soon outnumbers them.
    pub(super) fn check_metadata_write(&mut self, replica: ReplicaId) {
        let Some(node) = self.nodes.get_mut(&replica) else {
            return;
        };
        node.barrier_meta_writes += 1;
        let (writes, barriers) = (node.barrier_meta_writes, node.barriers_asked);
        if writes > barriers {
            self.violate(
                Guarantee::G8NoMetadataPerWrite,
                format!(
                    "replica {} wrote metadata {writes} times without extending its activity log, but was asked for {barriers} barriers",
                    replica.0
                ),
            );
        }
    }
}
