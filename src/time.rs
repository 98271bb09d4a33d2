//! Time as the core sees it: a monotonic [`Instant`] for timers and a wall-clock [`UtcTime`]
//! for certificate validity and schedules, always passed in by the caller ([`Now`]).
//!
//! Nothing here reads a clock; `io/` and the simulator do.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point on the monotonic clock, in milliseconds from an arbitrary origin.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ms))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(ms))
    }
}

/// Wall-clock time (UTC) in milliseconds since the Unix epoch.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(i64);

impl UtcTime {
    pub const fn from_unix_millis(ms: i64) -> Self {
        UtcTime(ms)
    }

    pub const fn from_unix_seconds(s: i64) -> Self {
        UtcTime(s.saturating_mul(1000))
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

impl Add<Duration> for UtcTime {
    type Output = UtcTime;
    fn add(self, d: Duration) -> UtcTime {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UtcTime(self.0.saturating_add(ms))
    }
}

/// The current time, both clocks, handed to every core entry point.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub utc: UtcTime,
}

impl Now {
    pub const fn new(mono: Instant, utc: UtcTime) -> Self {
        Now { mono, utc }
    }

    /// Both clocks moved forward by `d`, as a simulator advances virtual time.
    pub fn advanced(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            utc: self.utc + d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!((t - Duration::from_secs(1)).as_millis(), 0);
        assert_eq!(
            (t + Duration::from_millis(7)).saturating_duration_since(t),
            Duration::from_millis(7)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn utc_seconds_round_toward_negative_infinity() {
        assert_eq!(UtcTime::from_unix_millis(-1).unix_seconds(), -1);
        assert_eq!(UtcTime::from_unix_millis(1999).unix_seconds(), 1);
    }
}
