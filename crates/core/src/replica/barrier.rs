//! Barriers: the handshake, flush and the resync markers wait for storage to be idle, then run
//! a sync and/or a metadata write before they answer.

use crate::message::{HelloAck, Message};
use crate::meta::MetaUpdate;
use crate::replica::queue::{Inflight, Purpose, Work};
use crate::replica::{DiskOp, Replica, ReplicaOutput};
use crate::types::{IoFailure, RegionSet, Seq, SessionId, Stamp};

/// Which barrier runs. Each runs a sync and/or a metadata write, then replies.
#[derive(Clone, Copy, Debug)]
pub(super) enum Barrier {
    Hello,
    Flush { seq: Seq },
    StartResync,
    MarkInconsistent,
    FinishResync { stamp: Stamp },
}

/// A barrier in progress: which one, the session that asked for it, and its step.
#[derive(Clone, Debug)]
pub(super) struct RunningBarrier {
    pub(super) barrier: Barrier,
    pub(super) session: SessionId,
    pub(super) step: BarrierStep,
}

/// Where a running barrier is. Flush and FinishResync sync first, then write metadata; the others
/// only write metadata. A barrier ends when its metadata write does.
#[derive(Clone, Debug)]
pub(super) enum BarrierStep {
    /// Waiting for storage to make every completed write durable.
    Syncing,
    /// Waiting for the metadata write that ends the barrier; it persists `activity_log`.
    PersistingMeta { activity_log: RegionSet },
}

impl Replica {
    pub(super) fn start_barrier(
        &mut self,
        work: Work,
        session: SessionId,
        out: &mut Vec<ReplicaOutput>,
    ) {
        assert!(self.inflight.is_empty(), "barriers start with storage idle");
        assert!(self.barrier.is_none(), "one barrier at a time");
        let (barrier, step) = match work {
            Work::Hello => {
                let generation = session.generation();
                if generation <= self.superblock.generation_seen {
                    self.send_hello_ack(session, out);
                    return;
                }
                self.superblock.generation_seen = generation;
                let step = self.persist_for_barrier(self.activity_log.clone(), false, out);
                (Barrier::Hello, step)
            }
            Work::Flush { seq } => {
                self.last_applied = Stamp::new(session.generation(), seq);
                self.sync(out);
                (Barrier::Flush { seq }, BarrierStep::Syncing)
            }
            Work::StartResync {
                sync_stamp,
                live_after,
            } => {
                // Live operations continue this replica's history only if it ends exactly where
                // they start and nothing beyond it may be on disk.
                let continues = self.superblock.consistent
                    && self.stamp_exact
                    && self.failed_writes.is_none()
                    && live_after == Some(self.history_stamp());
                if continues {
                    self.joining = Some(sync_stamp);
                    self.send(session, Message::ResyncStarted, out);
                    return;
                }
                self.superblock.consistent = false;
                self.superblock.sync_stamp = sync_stamp;
                let step = self.persist_for_barrier(self.activity_log.clone(), true, out);
                (Barrier::StartResync, step)
            }
            Work::MarkInconsistent => {
                self.superblock.consistent = false;
                self.superblock.sync_stamp = self.joining.take().unwrap_or(Stamp::ZERO);
                let step = self.persist_for_barrier(self.activity_log.clone(), true, out);
                (Barrier::MarkInconsistent, step)
            }
            Work::FinishResync { stamp } => {
                self.sync(out);
                (Barrier::FinishResync { stamp }, BarrierStep::Syncing)
            }
            _ => unreachable!("not a barrier"),
        };
        self.barrier = Some(RunningBarrier {
            barrier,
            session,
            step,
        });
    }

    pub(super) fn sync(&mut self, out: &mut Vec<ReplicaOutput>) {
        let inflight = Inflight {
            purpose: Purpose::Barrier,
            session: self.current_session().expect("barrier has a session"),
            range: None,
        };
        self.issue(inflight, out, |id| DiskOp::Sync { id });
    }

    /// Persists the superblock and `activity_log` (and, with `with_map`, the changed region-map
    /// entries), for a barrier or for extending the activity log.
    pub(super) fn persist(
        &mut self,
        activity_log: RegionSet,
        with_map: bool,
        purpose: Purpose,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let region_changes = if with_map {
            std::mem::take(&mut self.regions_changed)
                .into_iter()
                .map(|region| (region, self.region_seqs[region as usize]))
                .collect()
        } else {
            Vec::new()
        };
        let inflight = Inflight {
            purpose,
            session: self.current_session().unwrap_or(SessionId(0)),
            range: None,
        };
        let superblock = self.superblock.clone();
        self.issue(inflight, out, |id| DiskOp::PersistMeta {
            id,
            update: MetaUpdate {
                superblock,
                region_changes,
                activity_log,
            },
        });
    }

    /// Persists the superblock and `activity_log` for a barrier: its last step.
    fn persist_for_barrier(
        &mut self,
        activity_log: RegionSet,
        with_map: bool,
        out: &mut Vec<ReplicaOutput>,
    ) -> BarrierStep {
        self.persist(activity_log.clone(), with_map, Purpose::Barrier, out);
        BarrierStep::PersistingMeta { activity_log }
    }

    pub(super) fn send_hello_ack(&mut self, session: SessionId, out: &mut Vec<ReplicaOutput>) {
        let consistent = self.superblock.consistent && !self.storage_failed;
        let ack = HelloAck {
            replica: self.superblock.replica,
            incarnation: self.superblock.incarnation,
            consistent,
            stamp: self.history_stamp(),
            stamp_exact: self.stamp_exact,
            sync_stamp: self.superblock.sync_stamp,
            checkpoint: self.superblock.checkpoint,
            dirty: self.regions_changed_after(self.superblock.checkpoint),
        };
        self.send(session, Message::HelloAck(ack), out);
    }

    pub(super) fn advance_barrier(
        &mut self,
        result: Result<(), IoFailure>,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let RunningBarrier {
            barrier,
            session,
            step,
        } = self.barrier.take().expect("a barrier is running");
        assert!(
            self.inflight.is_empty(),
            "a barrier runs with storage otherwise idle"
        );
        if let Err(failure) = result {
            self.storage_failed = true;
            match barrier {
                Barrier::Flush { seq } => self.send(
                    session,
                    Message::FlushDone {
                        seq,
                        result: Err(failure),
                    },
                    out,
                ),
                Barrier::FinishResync { .. } => self.send(
                    session,
                    Message::ResyncFinished {
                        result: Err(failure),
                    },
                    out,
                ),
                Barrier::Hello | Barrier::StartResync | Barrier::MarkInconsistent => {
                    self.fail_session()
                }
            }
            return;
        }
        match step {
            // The metadata write finished: the barrier is done.
            BarrierStep::PersistingMeta { activity_log } => {
                self.activity_log = activity_log;
                match barrier {
                    Barrier::Hello => self.send_hello_ack(session, out),
                    Barrier::Flush { seq } => self.send(
                        session,
                        Message::FlushDone {
                            seq,
                            result: Ok(()),
                        },
                        out,
                    ),
                    Barrier::StartResync => self.send(session, Message::ResyncStarted, out),
                    Barrier::MarkInconsistent => {}
                    Barrier::FinishResync { .. } => {
                        self.send(session, Message::ResyncFinished { result: Ok(()) }, out)
                    }
                }
            }
            // A sync finished: record the checkpoint, then persist it with the region map. The
            // activity log can be emptied: every write so far is durable and in the map.
            BarrierStep::Syncing => {
                match barrier {
                    Barrier::Flush { seq } => {
                        if self.superblock.consistent && !self.storage_failed {
                            self.superblock.stamp = self.history_stamp();
                            let checkpoint = self.committed.min(seq);
                            self.superblock.checkpoint = self.superblock.checkpoint.max(checkpoint);
                        }
                    }
                    Barrier::FinishResync { stamp } => {
                        self.last_applied = self.last_applied.max(stamp);
                        self.joining = None;
                        self.stamp_exact = true;
                        self.failed_writes = None;
                        self.superblock.consistent = !self.storage_failed;
                        self.superblock.stamp = self.last_applied;
                        self.superblock.sync_stamp = Stamp::ZERO;
                    }
                    Barrier::Hello | Barrier::StartResync | Barrier::MarkInconsistent => {
                        unreachable!("no sync")
                    }
                }
                let empty = RegionSet::new(self.activity_log.region_count());
                let step = self.persist_for_barrier(empty, true, out);
                self.barrier = Some(RunningBarrier {
                    barrier,
                    session,
                    step,
                });
            }
        }
    }
}
