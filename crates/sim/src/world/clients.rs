//! The simulated clients: the workload's requests, and every reply checked against the
//! history (G4, and G1 for flushes).

use rand::Rng;
use tandem_core::{
    ClientOp, ClientReplyBody, ClientRequest, ClientRequestId, Generation, TargetInput,
};

use crate::history::{block_data, block_value, Guarantee, BLOCK_SIZE};
use crate::network::chance;
use crate::world::{Sim, Work};

/// How long client requests waited for their replies, kept apart for the requests a rebuild
/// overlapped: G7's measure. A rebuild runs (for this measure) while the volume is not
/// converged, from the moment a replica joins or falls behind until every member is trusted
/// and Healthy again.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientWaits {
    /// The longest wait, in ticks, of a request during which no rebuild ran.
    pub steady_ticks_max: Option<u64>,
    /// The longest wait, in ticks, of a request during which a rebuild ran at some tick.
    pub rebuild_ticks_max: Option<u64>,
    /// The last tick at which a rebuild was seen running.
    pub(super) rebuild_seen_tick: Option<u64>,
}

impl ClientWaits {
    /// A request issued at `issued_tick` was answered at `now_tick`; `rebuilding` says whether
    /// a rebuild runs now.
    fn record(&mut self, issued_tick: u64, now_tick: u64, rebuilding: bool) {
        let waited = now_tick - issued_tick;
        let overlapped = rebuilding || self.rebuild_seen_tick.is_some_and(|t| t >= issued_tick);
        let longest = if overlapped {
            &mut self.rebuild_ticks_max
        } else {
            &mut self.steady_ticks_max
        };
        *longest = Some(longest.map_or(waited, |max| max.max(waited)));
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Pending {
    Read {
        first_block: u64,
        blocks: u64,
        issued_at: u64,
    },
    /// A block status query: every block it calls a hole must be allowed to read as zeroes.
    Allocation {
        first_block: u64,
        blocks: u64,
        issued_at: u64,
    },
    Write {
        id: u64,
        fua: bool,
    },
    Flush {
        issued_at: u64,
    },
}

impl Sim {
    pub(super) fn issue_client_request(&mut self) {
        let workload = self.config.workload;
        if self.clients.len() >= workload.inflight_max || !chance(&mut self.rng, workload.issue_ppm)
        {
            return;
        }
        let Some(generation) = self.current else {
            return;
        };
        let total = workload.write_weight
            + workload.read_weight
            + workload.flush_weight
            + workload.trim_weight
            + workload.allocation_weight;
        let pick = self.rng.gen_range(0..total);
        let blocks = self
            .rng
            .gen_range(1..=workload.blocks_max.min(self.config.blocks));
        let first_block = self.rng.gen_range(0..=self.config.blocks - blocks);
        let offset = first_block * BLOCK_SIZE;
        let len = blocks * BLOCK_SIZE;
        let (op, pending) = if pick < workload.write_weight {
            let id = self.new_write_id();
            let fua = chance(&mut self.rng, workload.fua_ppm);
            self.history.issue_write(id, first_block, blocks, false);
            (
                ClientOp::Write {
                    offset,
                    data: block_data(id, blocks),
                    fua,
                },
                Pending::Write { id, fua },
            )
        } else if pick < workload.write_weight + workload.read_weight {
            let issued_at = self.history.now();
            (
                ClientOp::Read { offset, len },
                Pending::Read {
                    first_block,
                    blocks,
                    issued_at,
                },
            )
        } else if pick < workload.write_weight + workload.read_weight + workload.flush_weight {
            let issued_at = self.history.now();
            (ClientOp::Flush, Pending::Flush { issued_at })
        } else if pick < total - workload.allocation_weight {
            let id = self.new_write_id();
            self.history.issue_write(id, first_block, blocks, true);
            (
                ClientOp::Trim { offset, len },
                Pending::Write { id, fua: false },
            )
        } else {
            let issued_at = self.history.now();
            (
                ClientOp::Allocation { offset, len },
                Pending::Allocation {
                    first_block,
                    blocks,
                    issued_at,
                },
            )
        };
        let generation = match op {
            ClientOp::Read { .. } | ClientOp::Allocation { .. } => self.reader_target(generation),
            _ => generation,
        };
        self.submit(generation, op, pending);
    }

    /// The guarantee a wrong read from `generation` breaks: a target that another took over
    /// from serving stale data is a fencing failure (G5); otherwise the read rule itself.
    fn read_guarantee_of(&self, generation: Generation) -> Guarantee {
        if self.control_plane.generation > generation {
            Guarantee::G5Fencing
        } else {
            self.read_guarantee
        }
    }

    /// Where a read goes: half the time, while an older target still runs unfenced, a client
    /// that has not noticed the takeover reads through it. It must never be served anything
    /// older than what the new target acknowledged (G5).
    fn reader_target(&mut self, current: Generation) -> Generation {
        let stale = self
            .targets
            .iter()
            .filter(|(generation, target)| **generation < current && !target.is_fenced())
            .map(|(generation, _)| *generation)
            .max();
        match stale {
            Some(stale) if self.rng.gen_bool(0.5) => stale,
            _ => current,
        }
    }

    fn new_write_id(&mut self) -> u64 {
        self.next_write += 1;
        self.next_write
    }

    fn submit(
        &mut self,
        generation: Generation,
        op: ClientOp,
        pending: Pending,
    ) -> ClientRequestId {
        self.next_client += 1;
        let id = ClientRequestId(self.next_client);
        self.clients
            .insert(id, (generation, pending, self.now_tick));
        self.process(Work::Target(
            generation,
            TargetInput::Client(ClientRequest { id, op }),
        ));
        id
    }

    /// Writes `blocks` blocks at `first_block` through the current target; returns the write id.
    pub fn client_write(&mut self, first_block: u64, blocks: u64) -> Option<u64> {
        let generation = self.current?;
        let id = self.new_write_id();
        self.history.issue_write(id, first_block, blocks, false);
        let op = ClientOp::Write {
            offset: first_block * BLOCK_SIZE,
            data: block_data(id, blocks),
            fua: false,
        };
        self.submit(generation, op, Pending::Write { id, fua: false });
        Some(id)
    }

    pub fn client_flush(&mut self) {
        if let Some(generation) = self.current {
            let issued_at = self.history.now();
            self.submit(generation, ClientOp::Flush, Pending::Flush { issued_at });
        }
    }

    /// Reads the whole volume through the current target; each block is checked on arrival.
    pub fn client_read_all(&mut self) {
        if let Some(generation) = self.current {
            self.client_read_all_through(generation);
        }
    }

    /// Reads the whole volume through target `generation` (an old one, for a client that did
    /// not notice a takeover), if it still runs; each block is checked on arrival.
    pub fn client_read_all_through(&mut self, generation: Generation) {
        if self.targets.contains_key(&generation) {
            let issued_at = self.history.now();
            let blocks = self.config.blocks;
            let op = ClientOp::Read {
                offset: 0,
                len: blocks * BLOCK_SIZE,
            };
            self.submit(
                generation,
                op,
                Pending::Read {
                    first_block: 0,
                    blocks,
                    issued_at,
                },
            );
        }
    }

    pub(super) fn on_client_reply(
        &mut self,
        generation: Generation,
        reply: tandem_core::ClientReply,
    ) {
        let Some((_, pending, issued_tick)) = self.clients.remove(&reply.id) else {
            return;
        };
        let rebuilding = !self.converged();
        self.client_waits
            .record(issued_tick, self.now_tick, rebuilding);
        let body = match reply.result {
            Ok(body) => body,
            Err(error) => {
                // Fenced or timed out: the outcome is unknown, which the history allows.
                *self.client_errors.entry(error.to_string()).or_default() += 1;
                return;
            }
        };
        self.acked_ops += 1;
        match (pending, body) {
            (
                Pending::Read {
                    first_block,
                    blocks,
                    issued_at,
                },
                ClientReplyBody::Read(data),
            ) => {
                self.checked_reads += 1;
                for index in 0..blocks {
                    let start = (index * BLOCK_SIZE) as usize;
                    let value = block_value(&data[start..start + BLOCK_SIZE as usize]);
                    let block = first_block + index;
                    if let Err(problem) = self.history.check_block(block, value, issued_at) {
                        let guarantee = self.read_guarantee_of(generation);
                        self.violate(
                            guarantee,
                            format!("read from generation {}: {problem}", generation.0),
                        );
                    }
                }
            }
            (
                Pending::Allocation {
                    first_block,
                    blocks,
                    issued_at,
                },
                ClientReplyBody::Allocation(extents),
            ) => {
                self.checked_reads += 1;
                let mut block = first_block;
                for extent in &extents {
                    let extent_blocks = extent.len / BLOCK_SIZE;
                    if extent.len % BLOCK_SIZE != 0 || block + extent_blocks > first_block + blocks
                    {
                        self.violate(
                            Guarantee::G4ReadYourWrites,
                            format!("allocation {extents:?} does not cover blocks {first_block}+{blocks}"),
                        );
                        return;
                    }
                    if !extent.allocated {
                        for hole in block..block + extent_blocks {
                            if let Err(problem) = self.history.check_block(hole, Some(0), issued_at)
                            {
                                let guarantee = self.read_guarantee_of(generation);
                                self.violate(
                                    guarantee,
                                    format!(
                                        "block status from generation {} calls a block with data a hole: {problem}",
                                        generation.0
                                    ),
                                );
                            }
                        }
                    }
                    block += extent_blocks;
                }
            }
            (Pending::Write { id, fua }, ClientReplyBody::Done { stamp }) => {
                self.history.ack_write(id, stamp);
                if fua {
                    let now = self.history.now();
                    self.history.flush_acked(now);
                }
                self.check_write_durability(generation, id, stamp);
            }
            (Pending::Flush { issued_at }, ClientReplyBody::Done { .. }) => {
                self.check_flush_durability(generation, issued_at);
                self.history.flush_acked(issued_at);
            }
            (pending, body) => self.violate(
                Guarantee::G4ReadYourWrites,
                format!("reply {body:?} does not match request {pending:?}"),
            ),
        }
    }
}
