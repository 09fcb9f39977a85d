//! Recovery: choosing, from the replicas' answers, the copy that holds the volume's history.

use crate::message::HelloAck;
use crate::target::link::{Awaited, LinkState};
use crate::target::{Phase, Target, TargetEvent, TargetOutput};
use crate::types::{Generation, ReplicaId, Seq, Stamp};
use crate::PlantedBug;

impl Target {
    /// Recovery: with answers from at least CF trusted replicas, the consistent one with the
    /// newest stamp holds every acknowledged write (any CF replicas include one that acknowledged
    /// it, and replicas hold a prefix of a history). A replica in the middle of a resync holds no
    /// usable prefix, but its `sync_stamp` says what it was bringing in: the source must be at
    /// least that advanced, or an acknowledged write could be lost; then wait for more replicas.
    ///
    /// The same runs again when a serving target loses every Healthy replica: it then also knows
    /// the newest write it acknowledged itself, and re-sends its unanswered operations to the
    /// source after what the source holds.
    pub(super) fn try_activate(&mut self, out: &mut Vec<TargetOutput>) {
        assert_eq!(
            self.phase,
            Phase::Recovering,
            "only a recovering target activates"
        );
        assert!(self.resync.is_none(), "no resync runs while recovering");
        let answered: Vec<(ReplicaId, LinkState, HelloAck)> = self
            .links
            .iter()
            .filter_map(|(replica, link)| {
                let c = link.connected()?;
                self.is_trusted(*replica, c.hello().incarnation)
                    .then(|| (*replica, c.state(), c.hello().clone()))
            })
            .collect();
        if !self.resumed
            && answered.len() < self.membership.consistency_factor()
            && !self.every_member_answered()
        {
            return;
        }
        // Only fresh answers describe what a replica holds now; the others were already told to
        // resync by this target and hold no usable prefix.
        let fresh: Vec<&(ReplicaId, LinkState, HelloAck)> = answered
            .iter()
            .filter(|(_, state, _)| *state == LinkState::Answered)
            .collect();
        let mut needed = fresh
            .iter()
            .filter(|(_, _, ack)| !ack.consistent)
            .map(|(_, _, ack)| ack.sync_stamp)
            .max()
            .unwrap_or(Stamp::ZERO);
        if self.resumed {
            needed = needed.max(self.acked_max);
        }
        // Recovering in place, a source must hold a prefix of this target's own history: a stamp
        // of an older generation past where this target began is a forked tail it never issued.
        let on_this_history = |stamp: Stamp| {
            !self.resumed || stamp.generation == self.generation || stamp <= self.activation_stamp
        };
        let consistent: Vec<&(ReplicaId, LinkState, HelloAck)> = fresh
            .iter()
            .copied()
            .filter(|(_, _, ack)| ack.consistent && on_this_history(ack.stamp))
            .collect();
        let least_advanced = self.options.bugs.has(PlantedBug::RecoverFromLeastAdvanced);
        let source = if least_advanced {
            consistent.iter().min_by_key(|(_, _, ack)| ack.stamp)
        } else {
            consistent.iter().max_by_key(|(_, _, ack)| ack.stamp)
        };
        let Some((source, _, source_ack)) = source else {
            return;
        };
        let (source, source_stamp) = (*source, source_ack.stamp);
        // After an unclean restart a replica knows only its checkpoint's stamp, though its cache
        // may hold more; such stamps cannot be compared. Choosing by stamp is then safe only if
        // enough replicas know theirs exactly that every write acknowledged on CF replicas is on
        // one of them (more than RF - CF), or if the target knows its own acknowledged history.
        let exact = consistent
            .iter()
            .filter(|(_, _, ack)| ack.stamp_exact)
            .count();
        let inexact = consistent.len() - exact;
        let replication_factor = self.membership.replication_factor();
        let comparable = inexact == 0
            || self.resumed
            || exact > replication_factor - self.membership.consistency_factor();
        let (mut source, mut source_stamp) = (source, source_stamp);
        if (source_stamp < needed || !comparable) && !least_advanced {
            // Wait for the others. Once every member has answered (a member whose storage was
            // replaced answers with nothing), waiting cannot help: serve the best there is. A
            // replica whose stamp is inexact was killed, and its cache holds everything it
            // applied unless it also lost power; it is the better bet than one known to be behind.
            if !self.every_member_answered() {
                return;
            }
            let inexact = consistent
                .iter()
                .filter(|(_, _, ack)| !ack.stamp_exact)
                .max_by_key(|(replica, _, ack)| {
                    (self.links[replica].acknowledged_max(), ack.stamp)
                });
            if let Some((replica, _, ack)) = inexact {
                if source_stamp < needed {
                    (source, source_stamp) = (*replica, ack.stamp);
                }
            } else if source_stamp < needed {
                out.push(TargetOutput::Event(TargetEvent::RecoveredBehind {
                    newest_acknowledged: needed,
                    recovered: source_stamp,
                }));
            }
        }
        if !self.resumed && !self.waited_out_older_leases() {
            return;
        }
        self.phase = Phase::Active;
        out.push(TargetOutput::Event(TargetEvent::RecoveredFrom {
            source,
            stamp: source_stamp,
        }));
        if !self.resumed {
            let checkpoint_max = answered
                .iter()
                .map(|(_, _, ack)| ack.checkpoint)
                .max()
                .unwrap_or(Seq::ZERO);
            self.seq_last = source_stamp.seq;
            self.last_stamp = source_stamp;
            self.activation_stamp = source_stamp;
            self.acked_max = source_stamp;
            self.committed = checkpoint_max.min(source_stamp.seq);
        }
        assert!(
            self.committed <= self.seq_last,
            "the durable watermark never passes the history served"
        );
        self.resumed = true;
        // The source holds every operation up to its stamp; later ones go to it again, in order.
        let resend: Vec<Seq> = self
            .ops
            .iter_mut()
            .filter_map(|(seq, op)| {
                if op.stamp <= source_stamp {
                    op.holders.insert(source);
                    None
                } else {
                    // Acknowledgements from before do not count: replaying earlier operations
                    // can take a replica back past this one until it is applied again.
                    op.holders.clear();
                    op.refusers.clear();
                    Some(*seq)
                }
            })
            .collect();
        let first_live_seq = resend.first().copied().unwrap_or(self.seq_last.next());
        let live_after = self.stamp_of(Seq(first_live_seq.0 - 1));
        let fresh: Vec<ReplicaId> = self
            .links
            .keys()
            .copied()
            .filter(|r| {
                self.connected(*r)
                    .is_some_and(|c| c.state() == LinkState::Answered)
            })
            .collect();
        for replica in fresh {
            self.connected_mut(replica)
                .expect("connected")
                .start_live_at(first_live_seq);
            if replica == source {
                self.connected_mut(replica)
                    .expect("connected")
                    .set_state(LinkState::Healthy);
            } else {
                self.begin_resync(replica, live_after, out);
            }
        }
        for seq in resend {
            let message = self.ops[&seq].message.clone();
            for replica in self.receivers() {
                self.send(replica, message.clone(), Some(Awaited::Op(seq)), out);
            }
        }
    }

    /// A target that takes over from an older one serves only `takeover_wait_ticks` after it
    /// first could: CF trusted replicas have accepted its generation by then, so they answer
    /// the older target no more, and any read lease that target held has run out (G5). The
    /// first generation has no predecessor.
    fn waited_out_older_leases(&mut self) -> bool {
        if self.generation <= Generation(1)
            || self.options.bugs.has(PlantedBug::ServeBeforeOldLeaseEnds)
        {
            return true;
        }
        let now = self.now_tick;
        let wait = self.options.takeover_wait_ticks;
        now >= *self.takeover_ready_at.get_or_insert(now + wait)
    }

    /// True if every member has answered since the target (re)started recovering: trusted ones
    /// with their data, and members whose storage was replaced (a new incarnation) with nothing.
    pub(super) fn every_member_answered(&self) -> bool {
        self.membership
            .members
            .iter()
            .all(|member| self.connected(member.replica).is_some() || !member.trusted)
    }

    /// Falls back to recovery when no Healthy replica is left: nothing can be served or copied
    /// until a consistent replica answers again.
    pub(super) fn check_quorum_left(&mut self, out: &mut Vec<TargetOutput>) {
        if self.phase == Phase::Active && self.healthy_replicas().is_empty() {
            self.phase = Phase::Recovering;
            self.abort_resync(out);
            // Replicas waiting for or in a resync may still be consistent copies (live writes
            // continued their history): ask them afresh.
            let connected: Vec<ReplicaId> = self
                .links
                .keys()
                .copied()
                .filter(|r| self.connected(*r).is_some())
                .collect();
            for replica in connected {
                self.hello(replica, out);
            }
        }
    }

    /// Replicas that receive sequenced operations: every connected one told what to do.
    pub(super) fn receivers(&self) -> Vec<ReplicaId> {
        self.links
            .keys()
            .copied()
            .filter(|r| {
                self.connected(*r)
                    .is_some_and(|c| c.state() != LinkState::Answered)
            })
            .collect()
    }
}
