//! The heartbeat task: tells the control plane every `interval` that this node's agent is alive.
//! It runs on its own so that slow or failing reconcile work never delays it, and it never stops
//! on an error: an unreachable control plane is retried with a short bounded backoff (at most
//! [`RETRY_MAX`], well inside the control plane's agent timeout).

use std::time::Duration;

use tandem_client::{Client, NodeHeartbeat};

use crate::report::{backoff, ErrorLog};

/// The longest wait between heartbeats while they fail.
pub const RETRY_MAX: Duration = Duration::from_secs(3);

/// Heartbeats for `node`, reporting `address` (where its replica host listens) and
/// `nbd_address` (where its targets' NBD exports are).
pub async fn run(
    client: Client,
    node: String,
    address: String,
    nbd_address: String,
    interval: Duration,
    request_timeout: Duration,
) {
    let heartbeat = NodeHeartbeat {
        node,
        address,
        nbd_address,
    };
    let mut errors = ErrorLog::default();
    let mut failures: u32 = 0;
    loop {
        let timeout = request_timeout.min(interval.max(RETRY_MAX));
        let outcome = match tokio::time::timeout(timeout, client.heartbeat(&heartbeat)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        };
        match outcome {
            Ok(()) => {
                errors.ok("heartbeat");
                failures = 0;
            }
            Err(error) => {
                errors.failed("heartbeat", &error);
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(backoff(interval, failures, RETRY_MAX)).await;
    }
}
