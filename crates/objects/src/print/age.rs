//! Ages as kubectl prints them: `HumanDuration` from k8s.io/apimachinery
//! (`pkg/util/duration`) and `translateTimestampSince` from kubectl, over RFC 3339 timestamps
//! and a `now` passed in by the caller (nothing here reads the clock).

use std::time::SystemTime;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The age of `timestamp` (RFC 3339, as objects store them) at `now`, e.g. "4m13s", "21m",
/// "15h". "<unknown>" when the timestamp is empty or cannot be read, as kubectl prints a zero
/// timestamp.
pub fn age(timestamp: &str, now: SystemTime) -> String {
    match elapsed_nanos(timestamp, now) {
        Some(nanos) => human_duration(nanos),
        None => "<unknown>".to_string(),
    }
}

/// Reads an RFC 3339 timestamp ("2026-11-28T10:00:00Z"); `None` when empty or unreadable.
pub fn parse_timestamp(timestamp: &str) -> Option<SystemTime> {
    let trimmed = timestamp.trim();
    if trimmed.is_empty() {
        return None;
    }
    humantime::parse_rfc3339(trimmed).ok()
}

/// Nanoseconds from `timestamp` to `now`, negative when the timestamp is in the future.
fn elapsed_nanos(timestamp: &str, now: SystemTime) -> Option<i128> {
    let then = parse_timestamp(timestamp)?;
    Some(match now.duration_since(then) {
        Ok(elapsed) => i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX),
        Err(ahead) => -i128::try_from(ahead.duration().as_nanos()).unwrap_or(i128::MAX),
    })
}

/// kubectl's `HumanDuration`: about two significant figures, more detail for short durations.
/// Up to 1s in the future counts as now ("0s"); further is "<invalid>". Divisions truncate, as
/// Go's integer divisions of a `time.Duration` do.
pub fn human_duration(nanos: i128) -> String {
    let seconds = nanos / NANOS_PER_SECOND;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_remainder(minutes, "m", seconds % 60, "s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return with_remainder(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_remainder(days, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return with_remainder(years, "y", days % 365, "d");
    }
    format!("{years}y")
}

/// "5m28s", or "5m" when the remainder is zero.
fn with_remainder(whole: i128, unit: &str, remainder: i128, remainder_unit: &str) -> String {
    if remainder == 0 {
        format!("{whole}{unit}")
    } else {
        format!("{whole}{unit}{remainder}{remainder_unit}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: i128 = NANOS_PER_SECOND;
    const MINUTE: i128 = 60 * SECOND;
    const HOUR: i128 = 60 * MINUTE;
    const DAY: i128 = 24 * HOUR;
    const YEAR: i128 = 365 * DAY;

    #[test]
    fn human_duration_boundaries() {
        let table: &[(i128, &str)] = &[
            (-2 * SECOND, "<invalid>"),
            (-SECOND - 999_999_999, "0s"), // Go truncates -1.99s to -1s: still "now"
            (-SECOND, "0s"),
            (-1, "0s"),
            (0, "0s"),
            (999_999_999, "0s"),
            (33 * SECOND, "33s"),
            (119 * SECOND + 999_999_999, "119s"),
            (2 * MINUTE, "2m"),
            (2 * MINUTE + SECOND, "2m1s"),
            (4 * MINUTE + 13 * SECOND, "4m13s"),
            (5 * MINUTE + 28 * SECOND, "5m28s"),
            (9 * MINUTE + 59 * SECOND, "9m59s"),
            (10 * MINUTE, "10m"),
            (10 * MINUTE + 59 * SECOND, "10m"),
            (21 * MINUTE, "21m"),
            (64 * MINUTE, "64m"),
            (179 * MINUTE + 59 * SECOND, "179m"),
            (3 * HOUR, "3h"),
            (3 * HOUR + MINUTE, "3h1m"),
            (7 * HOUR + 59 * MINUTE, "7h59m"),
            (8 * HOUR, "8h"),
            (15 * HOUR + 30 * MINUTE, "15h"),
            (47 * HOUR + 59 * MINUTE, "47h"),
            (2 * DAY, "2d"),
            (2 * DAY + HOUR, "2d1h"),
            (7 * DAY + 23 * HOUR, "7d23h"),
            (8 * DAY, "8d"),
            (729 * DAY + 23 * HOUR, "729d"),
            (2 * YEAR, "2y"),
            (2 * YEAR + DAY, "2y1d"),
            (7 * YEAR + 364 * DAY, "7y364d"),
            (8 * YEAR, "8y"),
            (100 * YEAR + 5 * DAY, "100y"),
        ];
        for (nanos, expected) in table {
            assert_eq!(human_duration(*nanos), *expected, "{nanos}ns");
        }
    }

    #[test]
    fn age_of_a_timestamp() {
        let created = "2026-11-28T10:00:00Z";
        let created_time = parse_timestamp(created).expect("a valid timestamp");
        let at = |seconds: u64| created_time + Duration::from_secs(seconds);
        assert_eq!(age(created, at(253)), "4m13s");
        assert_eq!(age(created, at(15 * 3600 + 59 * 60)), "15h");
        assert_eq!(
            age(created, created_time + Duration::from_millis(1500)),
            "1s"
        );
        assert_eq!(
            age(created, created_time - Duration::from_secs(5)),
            "<invalid>"
        );
        assert_eq!(age("2026-11-28T10:00:00.250Z", at(1)), "0s");
    }

    #[test]
    fn unreadable_timestamps_are_unknown() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for timestamp in ["", "  ", "yesterday", "2026-13-01T00:00:00Z", "2026-11-28"] {
            assert_eq!(age(timestamp, now), "<unknown>", "{timestamp:?}");
        }
    }
}
