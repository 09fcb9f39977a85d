//! The heartbeat task: tells the control plane every `interval` that this node's agent is alive.
//! Each heartbeat renews the node's lease (the control plane's agent timeout); a node whose
//! lease runs out loses its targets to other nodes. With several control planes the heartbeat
//! goes to each of them at once (they keep leases in memory, so whichever leads, now or after a
//! handover, knows every node without a store write per heartbeat). So the task runs on its own, never stops on
//! an error, and keeps its cadence whatever happens: a heartbeat that gets no answer within one
//! interval is abandoned and the next one sent on time, and an unreachable control plane is
//! tried again every interval (no backoff: one small request per interval, and a backoff longer
//! than the lease would lose it right after the control plane comes back).

use std::time::Duration;

use tandem_client::{Client, NodeHeartbeat};
use tokio::time::Instant;

use crate::error::{Error, Subject};
use crate::report::ErrorLog;

/// The shortest time a heartbeat waits for its answer, however short the interval.
pub const ANSWER_MIN: Duration = Duration::from_millis(200);

/// Sends `heartbeat` (the node, where its replica host listens, its client endpoint, where it
/// serves its own targets to other nodes' endpoints, and its metrics) every `interval`.
pub async fn run(
    client: Client,
    heartbeat: NodeHeartbeat,
    interval: Duration,
    request_timeout: Duration,
) {
    let mut errors = ErrorLog::default();
    let timeout = answer_timeout(interval, request_timeout);
    let control_planes = client.each();
    loop {
        let started = Instant::now();
        let sent = control_planes.iter().map(|client| async {
            let outcome = match tokio::time::timeout(timeout, client.heartbeat(&heartbeat)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(Error::from(error)),
                Err(_) => Err(Error::NoAnswer(timeout)),
            };
            (Subject::Heartbeat(client.server().to_string()), outcome)
        });
        for (subject, outcome) in futures::future::join_all(sent).await {
            match outcome {
                Ok(()) => errors.ok(&subject),
                Err(error) => {
                    errors.failed(&subject, &error);
                }
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// How long one heartbeat waits for an answer: one interval (at least [`ANSWER_MIN`]), never
/// more than the request timeout, so a hung request cannot hold back the next heartbeat.
fn answer_timeout(interval: Duration, request_timeout: Duration) -> Duration {
    request_timeout.min(interval.max(ANSWER_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_request_timeout_longer_than_the_interval_when_heartbeating_then_wait_one_interval_at_most(
    ) {
        let half = Duration::from_millis(500);
        let ten = Duration::from_secs(10);
        assert_eq!(answer_timeout(half, ten), half);
        assert_eq!(
            answer_timeout(Duration::from_millis(50), ten),
            ANSWER_MIN,
            "never less than the minimum"
        );
        assert_eq!(answer_timeout(Duration::from_secs(30), ten), ten);
        assert_eq!(
            answer_timeout(half, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}
