//! Waiting until something is so, with a deadline: one helper, so every wait in the command
//! polls the same way and fails the same way, naming what it waited for and what it saw last.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// How often a wait looks again, unless its deadline says otherwise.
pub const POLL: Duration = Duration::from_millis(200);

/// When a wait gives up, and how often it looks meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
    poll: Duration,
}

impl Deadline {
    /// `timeout` from now, looking every [`POLL`].
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
            poll: POLL,
        }
    }

    /// The same deadline, looking every `poll`.
    pub fn polling_every(self, poll: Duration) -> Deadline {
        Deadline { poll, ..self }
    }

    /// How long the wait may take in all, as it was asked for.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What one look saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<T> {
    /// It is so: the wait returns this.
    Done(T),
    /// Not yet; what was seen instead, for the error if the deadline passes.
    Waiting(String),
}

/// A wait whose deadline passed: "volume pvc-1 is not Bound after 1m: not enough pools are
/// available".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What is still not so, as a statement: "volume pvc-1 is not Bound".
    pub what: String,
    pub timeout: Duration,
    /// What the last look saw.
    pub last_seen: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} after {}: {}",
            self.what,
            humantime::format_duration(self.timeout),
            self.last_seen
        )
    }
}

impl std::error::Error for TimedOut {}

/// Looks with `probe` until it says [`Probe::Done`], every poll interval of `deadline`; one last
/// look is taken at the deadline itself. Fails with [`TimedOut`] (naming `what` and the last
/// thing seen) when the deadline passes, or at once with the error of a probe that failed.
pub async fn wait_for<T, E>(
    deadline: Deadline,
    what: impl Into<String>,
    mut probe: impl AsyncFnMut() -> Result<Probe<T>, E>,
) -> Result<T, E>
where
    E: From<TimedOut>,
{
    loop {
        let last_seen = match probe().await? {
            Probe::Done(value) => return Ok(value),
            Probe::Waiting(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline.at {
            return Err(TimedOut {
                what: what.into(),
                timeout: deadline.timeout,
                last_seen,
            }
            .into());
        }
        tokio::time::sleep(deadline.poll.min(deadline.at - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_now<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn a_wait_returns_what_the_probe_found() {
        let mut looks = 0;
        let found: Result<u32, TimedOut> = check_now(wait_for(
            Deadline::after(Duration::from_secs(10)).polling_every(Duration::from_millis(1)),
            "the answer is not there",
            async || {
                looks += 1;
                Ok(if looks == 3 {
                    Probe::Done(42)
                } else {
                    Probe::Waiting(format!("look {looks}"))
                })
            },
        ));
        assert_eq!(found, Ok(42));
        assert_eq!(looks, 3);
    }

    #[test]
    fn a_timed_out_wait_names_what_it_waited_for_and_the_last_thing_seen() {
        let started = Instant::now();
        let mut looks = 0;
        let found: Result<(), TimedOut> = check_now(wait_for(
            Deadline::after(Duration::from_millis(100)).polling_every(Duration::from_millis(30)),
            "volume pvc-1 is not Bound",
            async || {
                looks += 1;
                Ok(Probe::Waiting(format!("{looks} looks")))
            },
        ));
        let error = found.unwrap_err();
        // At about 0, 30, 60 and 90 ms, and one last look at the deadline.
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(looks >= 2, "{looks} looks");
        assert_eq!(
            error.to_string(),
            format!("volume pvc-1 is not Bound after 100ms: {looks} looks")
        );
    }

    #[test]
    fn a_failed_probe_ends_the_wait_at_once() {
        let found: anyhow::Result<()> = check_now(wait_for(
            Deadline::after(Duration::from_secs(60)),
            "never",
            async || anyhow::bail!("the volume failed"),
        ));
        assert_eq!(found.unwrap_err().to_string(), "the volume failed");
    }
}
