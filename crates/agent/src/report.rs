//! Logging each distinct failure once (a pass every second must not repeat the same warning
//! every second), and the bounded backoff used while the control plane is unreachable.

use std::collections::HashMap;
use std::time::Duration;

/// The last failure logged per subject ("list pools", "cvr pvc-1-cspc-a-abcd", ...).
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: HashMap<String, String>,
}

impl ErrorLog {
    /// Logs `error` about `subject` at warn level unless it is the failure last logged for it.
    /// Returns true if it was logged (a new or different failure).
    pub fn failed(&mut self, subject: &str, error: &str) -> bool {
        if self.last.get(subject).map(String::as_str) == Some(error) {
            return false;
        }
        tracing::warn!(subject, error, "failed");
        self.last.insert(subject.to_string(), error.to_string());
        true
    }

    /// Notes that `subject` works again, logging it if it had failed.
    pub fn ok(&mut self, subject: &str) {
        if self.last.remove(subject).is_some() {
            tracing::info!(subject, "recovered");
        }
    }

    /// Forgets every subject `keep` rejects (objects that are gone).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
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
        assert!(log.failed("list pools", "connection refused"));
        assert!(!log.failed("list pools", "connection refused"));
        assert!(log.failed("list pools", "timed out"));
        assert!(log.failed("cvr a", "timed out"));
        log.ok("list pools");
        assert!(log.failed("list pools", "timed out"));
        log.retain(|subject| subject != "cvr a");
        assert!(log.failed("cvr a", "timed out"));
    }
}
