//! The heartbeat task: tells the control plane every `interval` that this node's agent is alive.
//! It runs on its own so that slow or failing reconcile work never delays it, and it never stops
//! on an error: an unreachable control plane is retried with a short bounded backoff (at most
//! [`RETRY_MAX`], well inside the control plane's agent timeout).

use std::time::Duration;

use tandem_client::{Client, NodeHeartbeat};

use crate::error::{Error, Subject};
use crate::report::{backoff, ErrorLog};

/// The longest wait between heartbeats while they fail.
pub const RETRY_MAX: Duration = Duration::from_secs(3);

/// Heartbeats for `node`, reporting `address` (where its replica host listens),
/// `nbd_address` (its client endpoint) and `target_address` (where it serves its own targets
/// to other nodes' endpoints).
pub async fn run(
    client: Client,
    node: String,
    address: String,
    nbd_address: String,
    target_address: String,
    interval: Duration,
    request_timeout: Duration,
) {
    let heartbeat = NodeHeartbeat {
        node,
        address,
        nbd_address,
        target_address,
    };
    let mut errors = ErrorLog::default();
    let mut failures: u32 = 0;
    loop {
        let timeout = answer_timeout(interval, request_timeout);
        let outcome = match tokio::time::timeout(timeout, client.heartbeat(&heartbeat)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::from(error)),
            Err(_) => Err(Error::NoAnswer(timeout)),
        };
        match outcome {
            Ok(()) => {
                errors.ok(&Subject::Heartbeat);
                failures = 0;
            }
            Err(error) => {
                errors.failed(&Subject::Heartbeat, &error);
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(backoff(interval, failures, RETRY_MAX)).await;
    }
}

/// How long one heartbeat waits for an answer: the request timeout, cut to the interval (at
/// least [`RETRY_MAX`]) so a hung request cannot hold back the next heartbeat for long.
fn answer_timeout(interval: Duration, request_timeout: Duration) -> Duration {
    request_timeout.min(interval.max(RETRY_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_request_timeout_longer_than_the_interval_when_heartbeating_then_wait_at_most_the_interval_or_the_retry_cap(
    ) {
        let second = Duration::from_secs(1);
        let ten = Duration::from_secs(10);
        assert_eq!(answer_timeout(second, ten), RETRY_MAX);
        assert_eq!(
            answer_timeout(Duration::from_secs(5), ten),
            Duration::from_secs(5)
        );
        assert_eq!(answer_timeout(Duration::from_secs(30), ten), ten);
        assert_eq!(answer_timeout(second, second), second);
    }
}
