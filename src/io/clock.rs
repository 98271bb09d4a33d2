//! The real clocks: `std::time::Instant` since the driver started becomes the core's
//! monotonic [`Instant`], and `SystemTime` becomes [`UtcTime`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::time::{Instant, Now, UtcTime};

#[derive(Debug)]
pub(crate) struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let mono = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        Now::new(Instant::from_millis(mono), utc_now())
    }

    /// How long until `deadline` on the monotonic clock, rounded up to whole milliseconds
    /// so a wait never ends just before the deadline (which would spin).
    pub(crate) fn until(&self, deadline: Instant) -> Duration {
        let elapsed = self.origin.elapsed();
        Duration::from_millis(deadline.as_millis()).saturating_sub(elapsed)
    }
}

fn utc_now() -> UtcTime {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => UtcTime::from_unix_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        Err(before) => UtcTime::from_unix_millis(
            i64::try_from(before.duration().as_millis())
                .map(|ms| -ms)
                .unwrap_or(i64::MIN),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_starts_near_zero_and_utc_is_plausible() {
        let c = Clock::new();
        let now = c.now();
        assert!(now.mono.as_millis() < 1000);
        // After 2020-01-01 on any machine running these tests.
        assert!(now.utc.unix_seconds() > 1_577_836_800);
        let later = Instant::from_millis(now.mono.as_millis() + 50);
        let wait = c.until(later);
        assert!(wait <= Duration::from_millis(50) && wait > Duration::from_millis(30));
        assert_eq!(c.until(Instant::ZERO), Duration::ZERO);
    }
}
