//! The target's clock: how many core ticks are due, counted from the monotonic clock.
//!
//! The core's time is ticks. They must follow real time, not the number of timer wake-ups: a
//! target that was paused (SIGSTOP, a stalled VM, a starved CPU) must see that time passed
//! before it decides anything, or it would trust a read lease that ran out while it slept
//! (see `TargetOptions::read_lease_ticks`).

use std::time::{Duration, Instant};

/// Counts the ticks due since it started against those already fed to the core.
#[derive(Debug)]
pub(super) struct TickClock {
    started: Instant,
    tick: Duration,
    fed: u64,
}

impl TickClock {
    pub(super) fn start(tick: Duration) -> TickClock {
        assert!(!tick.is_zero(), "a tick has a length");
        TickClock {
            started: Instant::now(),
            tick,
            fed: 0,
        }
    }

    /// When tick `tick` is due: the core may be given it from then on.
    pub(super) fn instant_of(&self, tick: u64) -> Instant {
        let nanos = u128::from(tick) * self.tick.as_nanos();
        self.started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The ticks to feed the core now (and counts them as fed).
    pub(super) fn due(&mut self) -> u64 {
        self.due_at(Instant::now())
    }

    fn due_at(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started);
        let total = (elapsed.as_nanos() / self.tick.as_nanos()) as u64;
        let due = total.saturating_sub(self.fed);
        self.fed += due;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_made_up_in_full_and_no_tick_is_fed_twice() {
        let mut clock = TickClock::start(Duration::from_millis(10));
        let start = clock.started;
        assert_eq!(clock.due_at(start + Duration::from_millis(9)), 0);
        assert_eq!(clock.due_at(start + Duration::from_millis(10)), 1);
        assert_eq!(clock.due_at(start + Duration::from_millis(15)), 0);
        // Paused for five seconds: every tick of it is due at once.
        assert_eq!(clock.due_at(start + Duration::from_millis(5_012)), 500);
        assert_eq!(clock.due_at(start + Duration::from_millis(5_012)), 0);
        // The instant a tick is due is the first at which it is counted.
        let at = clock.instant_of(502);
        assert_eq!(clock.due_at(at - Duration::from_nanos(1)), 0);
        assert_eq!(clock.due_at(at), 1);
    }
}
