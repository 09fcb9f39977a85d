//! Logging each distinct failure once (a pass every second must not repeat the same warning
//! every second), and the bounded backoff used while the control plane is unreachable.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::error::Subject;

/// The last failure logged per subject (the pool directory, a CVR, ...).
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: HashMap<Subject, String>,
}

impl ErrorLog {
    /// Logs `error` about `subject` at warn level unless it is the failure last logged for it.
    /// Returns true if it was logged (a new or different failure).
    pub fn failed(&mut self, subject: &Subject, error: impl fmt::Display) -> bool {
        let error = error.to_string();
        if self.last.get(subject) == Some(&error) {
            return false;
        }
        let text = subject.to_string();
        tracing::warn!(subject = text.as_str(), error = error.as_str(), "failed");
        self.last.insert(subject.clone(), error);
        true
    }

    /// Notes that `subject` works again, logging it if it had failed.
    pub fn ok(&mut self, subject: &Subject) {
        if self.last.remove(subject).is_some() {
            let text = subject.to_string();
            tracing::info!(subject = text.as_str(), "recovered");
        }
    }

    /// Forgets every subject `keep` rejects (objects that are gone).
    pub fn retain(&mut self, mut keep: impl FnMut(&Subject) -> bool) {
        self.last.retain(|subject, _| keep(subject));
    }
}

/// The wait before the next attempt after `failures` consecutive failures: `base` when all is
/// well, doubling per failure, never more than `cap` (nor less than `base`).
pub fn backoff(base: Duration, failures: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        let waits: Vec<u64> = (0..6).map(|n| backoff(second, n, cap).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(second, u32::MAX, cap), cap);
        // A base above the cap is kept.
        assert_eq!(
            backoff(Duration::from_secs(30), 3, cap),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn each_distinct_failure_is_logged_once() {
        let mut log = ErrorLog::default();
        let pools = Subject::Reconcile;
        let cvr = Subject::cvr("a");
        assert!(log.failed(&pools, "connection refused"));
        assert!(!log.failed(&pools, "connection refused"));
        assert!(log.failed(&pools, "timed out"));
        assert!(log.failed(&cvr, "timed out"));
        log.ok(&pools);
        assert!(log.failed(&pools, "timed out"));
        log.retain(|subject| *subject != cvr);
        assert!(log.failed(&cvr, "timed out"));
    }
}
