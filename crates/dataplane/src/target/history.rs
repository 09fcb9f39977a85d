//! The target's record of its rebuilds and resyncs: when each started and ended, from which
//! replica, how much it copied, and whether it completed or was abandoned (and why), kept for
//! the last few. It is put together from what the core reports: the running resync's progress,
//! `ResyncFinished`, ejections and fencing.

use std::collections::VecDeque;
use std::time::SystemTime;

use tandem_core::{EjectReason, ReplicaId, ResyncProgress};

/// How many rebuilds and resyncs the history keeps.
pub const RESYNC_HISTORY: usize = 16;

/// One rebuild (a full copy) or resync (only what changed) of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncAttempt {
    pub replica: ReplicaId,
    pub source: ReplicaId,
    pub full: bool,
    /// Bytes copied (so far, for one abandoned).
    pub bytes: u64,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub outcome: ResyncOutcome,
}

impl ResyncAttempt {
    pub fn completed(&self) -> bool {
        self.outcome == ResyncOutcome::Completed
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncOutcome {
    Completed,
    /// Abandoned before the end, for the reason given; the replica's next resync starts over
    /// from what it then holds.
    Abandoned(String),
}

/// The resync under way as last seen.
#[derive(Clone, Debug)]
struct Running {
    replica: ReplicaId,
    source: ReplicaId,
    full: bool,
    bytes: u64,
    started: SystemTime,
    /// Why it will have been abandoned, once something said so (an ejection).
    reason: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct ResyncHistory {
    running: Option<Running>,
    attempts: VecDeque<ResyncAttempt>,
}

impl ResyncHistory {
    /// The attempts, oldest first.
    pub(super) fn attempts(&self) -> Vec<ResyncAttempt> {
        self.attempts.iter().cloned().collect()
    }

    /// The resync in flight now (`None`: none): a new one starts a record, one that is gone
    /// without having finished was abandoned.
    pub(super) fn observe(&mut self, progress: Option<ResyncProgress>) {
        match (progress, &mut self.running) {
            (Some(progress), Some(running))
                if running.replica == progress.replica
                    && running.source == progress.source
                    && progress.bytes_done >= running.bytes =>
            {
                running.bytes = progress.bytes_done;
            }
            (Some(progress), _) => {
                self.abandon("started over");
                self.running = Some(Running {
                    replica: progress.replica,
                    source: progress.source,
                    full: progress.full,
                    bytes: progress.bytes_done,
                    started: SystemTime::now(),
                    reason: None,
                });
            }
            (None, Some(_)) => {
                self.abandon("interrupted (the volume lost its source or changed its members)")
            }
            (None, None) => {}
        }
    }

    /// The core said a resync finished.
    pub(super) fn finished(
        &mut self,
        replica: ReplicaId,
        source: ReplicaId,
        full: bool,
        bytes: u64,
    ) {
        let now = SystemTime::now();
        let started = match self.running.take() {
            Some(running) if running.replica == replica => running.started,
            other => {
                self.running = other;
                now
            }
        };
        self.push(ResyncAttempt {
            replica,
            source,
            full,
            bytes,
            started,
            ended: now,
            outcome: ResyncOutcome::Completed,
        });
    }

    /// `replica` was ejected: a resync to or from it is abandoned for that reason.
    pub(super) fn ejected(&mut self, replica: ReplicaId, reason: &EjectReason) {
        let Some(running) = &mut self.running else {
            return;
        };
        let role = if running.replica == replica {
            "the replica"
        } else if running.source == replica {
            "its source"
        } else {
            return;
        };
        running.reason = Some(format!("{role} was ejected: {}", eject_reason(reason)));
    }

    /// A newer target took over: whatever ran is abandoned.
    pub(super) fn fenced(&mut self) {
        if let Some(running) = &mut self.running {
            running.reason = Some("a newer target took over".to_string());
        }
        self.abandon("a newer target took over");
    }

    fn abandon(&mut self, default_reason: &str) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.push(ResyncAttempt {
            replica: running.replica,
            source: running.source,
            full: running.full,
            bytes: running.bytes,
            started: running.started,
            ended: SystemTime::now(),
            outcome: ResyncOutcome::Abandoned(
                running.reason.unwrap_or_else(|| default_reason.to_string()),
            ),
        });
    }

    fn push(&mut self, attempt: ResyncAttempt) {
        self.attempts.push_back(attempt);
        while self.attempts.len() > RESYNC_HISTORY {
            self.attempts.pop_front();
        }
    }
}

/// Why a replica was ejected, in words.
pub fn eject_reason(reason: &EjectReason) -> String {
    match reason {
        EjectReason::Timeout => "it stopped answering".to_string(),
        EjectReason::Backlog => "it fell too far behind".to_string(),
        EjectReason::IoFailure(failure) => format!("its disk failed ({failure:?})"),
        EjectReason::SessionBroken => "its connection broke".to_string(),
        EjectReason::Refused(refusal) => format!("it refused the target ({refusal:?})"),
        EjectReason::HoldsVoidedWrite => {
            "it applied a write the Healthy replicas refused for lack of space".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(replica: u64, bytes_done: u64) -> Option<ResyncProgress> {
        Some(ResyncProgress {
            replica: ReplicaId(replica),
            source: ReplicaId(1),
            full: true,
            bytes_done,
            bytes_total: 100,
        })
    }

    #[test]
    fn a_resync_seen_running_then_finished_is_one_completed_attempt() {
        let mut history = ResyncHistory::default();
        history.observe(progress(2, 10));
        history.observe(progress(2, 60));
        history.finished(ReplicaId(2), ReplicaId(1), true, 100);
        history.observe(None);
        let attempts = history.attempts();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert!(attempts[0].completed());
        assert_eq!(attempts[0].bytes, 100);
        assert!(attempts[0].started <= attempts[0].ended);
    }

    #[test]
    fn a_resync_whose_replica_is_ejected_is_abandoned_saying_why() {
        let mut history = ResyncHistory::default();
        history.observe(progress(2, 10));
        history.ejected(ReplicaId(3), &EjectReason::Timeout);
        history.ejected(ReplicaId(2), &EjectReason::Timeout);
        history.observe(None);
        // The next attempt starts from scratch and completes.
        history.observe(progress(2, 0));
        history.finished(ReplicaId(2), ReplicaId(1), true, 100);
        let attempts = history.attempts();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(
            attempts[0].outcome,
            ResyncOutcome::Abandoned("the replica was ejected: it stopped answering".to_string())
        );
        assert_eq!(attempts[0].bytes, 10);
        assert!(attempts[1].completed());
    }

    #[test]
    fn a_resync_that_goes_back_to_zero_started_over_and_the_history_is_bounded() {
        let mut history = ResyncHistory::default();
        for _ in 0..RESYNC_HISTORY + 3 {
            history.observe(progress(2, 50));
            history.observe(progress(2, 0));
        }
        let attempts = history.attempts();
        assert_eq!(attempts.len(), RESYNC_HISTORY);
        assert!(attempts.iter().all(|attempt| !attempt.completed()));
        history.fenced();
        assert_eq!(
            history
                .attempts()
                .last()
                .map(|attempt| attempt.outcome.clone()),
            Some(ResyncOutcome::Abandoned(
                "a newer target took over".to_string()
            ))
        );
    }
}
