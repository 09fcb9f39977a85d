//! Membership changes: adding, promoting and removing replicas (G6).

use crate::membership::{Member, MembershipError, REPLICAS_MAX};
use crate::target::link::{Awaited, LinkState, ReplicaLink};
use crate::target::{Command, Fenced, Phase, Target, TargetEvent, TargetOutput};
use crate::types::{ReplicaId, Seq};
use crate::PlantedBug;

/// A removal waiting for the others to catch up.
#[derive(Clone, Copy, Debug)]
pub(super) struct Removal {
    pub(super) replica: ReplicaId,
    /// The others must have acknowledged everything up to here.
    pub(super) drain_seq: Seq,
}

pub(super) enum PendingMembership {
    Command(Command),
    Promotion(ReplicaId),
}

impl Target {
    /// A rebuilt new replica becomes trusted only once that is persisted: until then it counts for
    /// nothing, so a restarted target can never depend on a replica its membership does not name.
    pub(super) fn try_promote(&mut self, out: &mut Vec<TargetOutput>) {
        if self.membership_pending.is_some() {
            return;
        }
        let Some(replica) = self.links.keys().copied().find(|r| {
            self.connected(*r)
                .is_some_and(|c| c.state() == LinkState::AwaitingPromotion)
        }) else {
            return;
        };
        let incarnation = self
            .connected(replica)
            .expect("connected")
            .hello()
            .incarnation;
        let mut membership = self.membership.clone();
        let member = membership
            .members
            .iter_mut()
            .find(|m| m.replica == replica)
            .expect("awaiting promotion means member");
        member.incarnation = Some(incarnation);
        member.trusted = true;
        self.membership_pending = Some(PendingMembership::Promotion(replica));
        out.push(TargetOutput::PersistMembership(membership));
    }

    pub(super) fn on_command(&mut self, command: Command, out: &mut Vec<TargetOutput>) {
        let result = self.apply_command(command, out);
        if let Err(error) = result {
            out.push(TargetOutput::CommandDone {
                command,
                result: Err(error),
            });
        }
    }

    pub(super) fn apply_command(
        &mut self,
        command: Command,
        out: &mut Vec<TargetOutput>,
    ) -> Result<(), MembershipError> {
        if self.phase != Phase::Active {
            return Err(MembershipError::NotActive);
        }
        if self.membership_pending.is_some() || self.removal.is_some() {
            return Err(MembershipError::ChangeInProgress);
        }
        let mut membership = self.membership.clone();
        match command {
            Command::AddReplica(replica) => {
                if membership.get(replica).is_some() {
                    return Err(MembershipError::AlreadyMember(replica));
                }
                if membership.members.len() >= REPLICAS_MAX {
                    return Err(MembershipError::TooManyReplicas);
                }
                membership.members.push(Member {
                    replica,
                    incarnation: None,
                    trusted: false,
                });
                self.links
                    .insert(replica, ReplicaLink::offline(self.now_tick));
            }
            Command::RemoveReplica(replica) => {
                let member = membership
                    .get(replica)
                    .ok_or(MembershipError::NotMember(replica))?
                    .clone();
                if member.trusted {
                    if membership.replication_factor() <= 1 {
                        return Err(MembershipError::LastReplica(replica));
                    }
                    self.check_others_healthy(replica)?;
                    // Removed only once the others hold everything sequenced so far, so no
                    // acknowledged write depends on the leaving replica (cStor drains, too).
                    self.removal = Some(Removal {
                        replica,
                        drain_seq: self.seq_last,
                    });
                    self.progress_removal(out);
                    return Ok(());
                }
                self.remove_member(replica, out);
                return Ok(());
            }
        }
        self.membership = membership.clone();
        self.membership_pending = Some(PendingMembership::Command(command));
        out.push(TargetOutput::PersistMembership(membership));
        Ok(())
    }

    /// Refuses to remove `removing` unless every other trusted member is Healthy.
    pub(super) fn check_others_healthy(&self, removing: ReplicaId) -> Result<(), MembershipError> {
        let unhealthy: Vec<ReplicaId> = self
            .membership
            .members
            .iter()
            .filter(|m| m.trusted && m.replica != removing && !self.is_healthy(m.replica))
            .map(|m| m.replica)
            .collect();
        if unhealthy.is_empty() || self.options.bugs.has(PlantedBug::RemoveWhileDegraded) {
            Ok(())
        } else {
            Err(MembershipError::NotHealthy {
                removing,
                unhealthy,
            })
        }
    }

    /// Finishes a removal once every other trusted replica has acknowledged everything
    /// sequenced before it was asked for; refuses it if one of them stops being Healthy first.
    pub(super) fn progress_removal(&mut self, out: &mut Vec<TargetOutput>) {
        let Some(removal) = self.removal else {
            return;
        };
        if let Err(error) = self.check_others_healthy(removal.replica) {
            self.removal = None;
            out.push(TargetOutput::CommandDone {
                command: Command::RemoveReplica(removal.replica),
                result: Err(error),
            });
            return;
        }
        let drained = self.membership.members.iter().all(|m| {
            m.replica == removal.replica
                || !m.trusted
                || self.connected(m.replica).is_none_or(|c| {
                    c.awaited().keys().all(
                        |awaited| !matches!(awaited, Awaited::Op(seq) if *seq <= removal.drain_seq),
                    )
                })
        });
        if drained {
            self.removal = None;
            self.remove_member(removal.replica, out);
        }
    }

    /// Drops a member: from now on it counts for nothing and hears nothing. Safe before the
    /// change is persisted: any CF of the old membership includes a replica holding every write
    /// acknowledged under the new one.
    pub(super) fn remove_member(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        let mut membership = self.membership.clone();
        membership.members.retain(|m| m.replica != replica);
        self.links.remove(&replica);
        self.forget_replica_work(replica, out);
        assert!(
            membership.members.iter().any(|m| m.trusted),
            "a volume never loses its last trusted replica"
        );
        self.membership = membership.clone();
        self.membership_pending = Some(PendingMembership::Command(Command::RemoveReplica(replica)));
        out.push(TargetOutput::PersistMembership(membership));
    }

    pub(super) fn on_membership_persisted(
        &mut self,
        result: Result<(), Fenced>,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(pending) = self.membership_pending.take() else {
            return;
        };
        if result.is_err() {
            self.fence(out);
            return;
        }
        match pending {
            PendingMembership::Command(command) => {
                if let Command::RemoveReplica(replica) = command {
                    out.push(TargetOutput::Event(TargetEvent::ReplicaRemoved { replica }));
                }
                out.push(TargetOutput::CommandDone {
                    command,
                    result: Ok(()),
                });
            }
            PendingMembership::Promotion(replica) => {
                if let Some(c) = self.connected(replica) {
                    let incarnation = c.hello().incarnation;
                    if let Some(member) = self
                        .membership
                        .members
                        .iter_mut()
                        .find(|m| m.replica == replica)
                    {
                        member.incarnation = Some(incarnation);
                        member.trusted = true;
                    }
                    let c = self.connected_mut(replica).expect("connected");
                    if c.state() == LinkState::AwaitingPromotion {
                        c.set_state(LinkState::Healthy);
                    }
                    out.push(TargetOutput::Event(TargetEvent::ReplicaPromoted {
                        replica,
                    }));
                } else if let Some(member) = self
                    .membership
                    .members
                    .iter_mut()
                    .find(|m| m.replica == replica)
                {
                    // It left before the promotion landed; the persisted membership trusts it, so
                    // this target does too (it is a consistent copy) and resyncs it on return.
                    member.trusted = true;
                }
            }
        }
        self.try_promote(out);
    }
}
