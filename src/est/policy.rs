//! When to re-enroll (SPEC 4.4): a pure function of the provisioning time P, the
//! certificate's notAfter E and [`ReenrollConfig`], giving the first `/est/sren` attempt and
//! the retries spread evenly up to E. No clock is read; callers compare with their `Now`.

use core::time::Duration;

use crate::time::UtcTime;

/// `estuary_est_reenroll_config_t` in Rust.
#[derive(Clone, Debug, PartialEq)]
pub struct ReenrollConfig {
    /// Re-enroll at all; when false the certificate is used until it expires, then the
    /// client falls back to bootstrap.
    pub enable: bool,
    /// Fraction of the validity (from provisioning) after which re-enrollment starts;
    /// clamped to [0, 1], NaN counts as 0.
    pub nominal_usage: f64,
    /// Start no later than this before expiry; `None` means no limit.
    pub max_margin: Option<Duration>,
    /// Retries after a failed first attempt.
    pub sren_attempts_count: u32,
    /// Make a new key pair for each re-enrollment.
    pub rekey: bool,
}

impl Default for ReenrollConfig {
    fn default() -> Self {
        ReenrollConfig {
            enable: true,
            nominal_usage: 0.9,
            max_margin: Some(Duration::from_secs(30 * 86_400)),
            sren_attempts_count: 10,
            rekey: false,
        }
    }
}

impl ReenrollConfig {
    fn usage(&self) -> f64 {
        if self.nominal_usage.is_nan() {
            0.0
        } else {
            self.nominal_usage.clamp(0.0, 1.0)
        }
    }
}

/// The attempts of one re-enrollment: attempt 0 is the start, the rest are retries. Kept as
/// start, step and count (no allocation: the client asks for it on every timer poll).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReenrollSchedule {
    start_ms: i64,
    step_ms: i64,
    /// Number of attempts (first + retries).
    count: u32,
    /// The certificate's notAfter: past it the credential is unusable.
    pub expires: UtcTime,
}

impl ReenrollSchedule {
    /// When re-enrollment starts.
    pub fn start(&self) -> UtcTime {
        UtcTime::from_unix_millis(self.start_ms)
    }

    /// When attempt number `failures` (0 = the first) is due, or `None` once every attempt
    /// has been used: then the client falls back to bootstrap.
    pub fn attempt_after_failures(&self, failures: u32) -> Option<UtcTime> {
        (failures < self.count)
            .then(|| UtcTime::from_unix_millis(self.start_ms + i64::from(failures) * self.step_ms))
    }

    /// Every attempt, in order.
    pub fn attempts(&self) -> Vec<UtcTime> {
        (0..self.count)
            .filter_map(|k| self.attempt_after_failures(k))
            .collect()
    }
}

/// Computes the schedule. Start = max(P + u·(E − P), E − max_margin), kept within [P, E];
/// attempt k of n = `sren_attempts_count` retries is at start + k·(E − start)/(n + 1), so the
/// last one still leaves time before E. `None` when re-enrollment is disabled.
pub fn schedule(
    provisioned_at: UtcTime,
    not_after: UtcTime,
    cfg: &ReenrollConfig,
) -> Option<ReenrollSchedule> {
    if !cfg.enable {
        return None;
    }
    let p = provisioned_at.unix_millis();
    let e = not_after.unix_millis().max(p);
    let span = (e - p) as f64;
    let by_usage = p.saturating_add((span * cfg.usage()).round() as i64);
    let by_margin = match cfg.max_margin {
        Some(m) => e.saturating_sub(i64::try_from(m.as_millis()).unwrap_or(i64::MAX)),
        None => i64::MIN,
    };
    let start = by_usage.max(by_margin).clamp(p, e);
    let n = i64::from(cfg.sren_attempts_count);
    Some(ReenrollSchedule {
        start_ms: start,
        step_ms: (e - start) / (n + 1),
        count: cfg.sren_attempts_count.saturating_add(1),
        expires: UtcTime::from_unix_millis(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn at_days(d: i64) -> UtcTime {
        UtcTime::from_unix_seconds(1_700_000_000 + d * DAY)
    }

    #[test]
    fn defaults_with_a_one_year_certificate_start_30_days_before_expiry() {
        let s = schedule(at_days(0), at_days(365), &ReenrollConfig::default()).unwrap();
        assert_eq!(s.start(), at_days(335));
        assert_eq!(s.attempts().len(), 11);
        // Ten retries spread over the 30 days: every 30/11 days, the last before expiry.
        let last = *s.attempts().last().unwrap();
        assert!(last < at_days(365) && last > at_days(362), "{last:?}");
        assert!(s.attempts().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nominal_usage_wins_when_later_than_the_margin() {
        let cfg = ReenrollConfig {
            nominal_usage: 0.8,
            max_margin: Some(Duration::from_secs(7 * DAY as u64)),
            ..ReenrollConfig::default()
        };
        // 100-day certificate: 0.8 → day 80, margin → day 93: the later one.
        assert_eq!(
            schedule(at_days(0), at_days(100), &cfg).unwrap().start(),
            at_days(93)
        );
        // 10-day certificate: 0.8 → day 8, margin → day 3: day 8.
        assert_eq!(
            schedule(at_days(0), at_days(10), &cfg).unwrap().start(),
            at_days(8)
        );
    }

    #[test]
    fn usage_is_clamped_and_nan_is_zero_and_no_margin_means_no_limit() {
        let mk = |u: f64| ReenrollConfig {
            nominal_usage: u,
            max_margin: None,
            ..ReenrollConfig::default()
        };
        assert_eq!(
            schedule(at_days(0), at_days(10), &mk(f64::NAN))
                .unwrap()
                .start(),
            at_days(0)
        );
        assert_eq!(
            schedule(at_days(0), at_days(10), &mk(-3.0))
                .unwrap()
                .start(),
            at_days(0)
        );
        assert_eq!(
            schedule(at_days(0), at_days(10), &mk(7.0)).unwrap().start(),
            at_days(10)
        );
        assert_eq!(
            schedule(at_days(0), at_days(10), &mk(0.5)).unwrap().start(),
            at_days(5)
        );
    }

    #[test]
    fn seed_example_numbers() {
        // The CF-EST example's {0.8, 7 days}: a one-year certificate starts 7 days before
        // expiry, a 120-second one at 96 s.
        let cfg = ReenrollConfig {
            nominal_usage: 0.8,
            max_margin: Some(Duration::from_secs(7 * DAY as u64)),
            ..ReenrollConfig::default()
        };
        assert_eq!(
            schedule(at_days(0), at_days(365), &cfg).unwrap().start(),
            at_days(358)
        );
        let p = UtcTime::from_unix_seconds(1_700_000_000);
        let e = UtcTime::from_unix_seconds(1_700_000_120);
        assert_eq!(
            schedule(p, e, &cfg).unwrap().start(),
            UtcTime::from_unix_seconds(1_700_000_096)
        );
    }

    #[test]
    fn short_validity_of_two_minutes() {
        let p = UtcTime::from_unix_seconds(1_700_000_000);
        let e = UtcTime::from_unix_seconds(1_700_000_120);
        let cfg = ReenrollConfig {
            nominal_usage: 0.5,
            sren_attempts_count: 3,
            ..ReenrollConfig::default()
        };
        let s = schedule(p, e, &cfg).unwrap();
        // Margin of 30 days is before P: clamped, so usage decides: 60 s, then every 15 s.
        let secs: Vec<i64> = s
            .attempts()
            .iter()
            .map(|t| t.unix_seconds() - 1_700_000_000)
            .collect();
        assert_eq!(secs, vec![60, 75, 90, 105]);
        assert_eq!(s.attempt_after_failures(3), Some(s.attempts()[3]));
        assert_eq!(s.attempt_after_failures(4), None);
    }

    #[test]
    fn disabled_or_odd_inputs() {
        let off = ReenrollConfig {
            enable: false,
            ..ReenrollConfig::default()
        };
        assert_eq!(schedule(at_days(0), at_days(1), &off), None);
        // notAfter before provisioning (a clock set wrong when it was issued): start at once.
        let s = schedule(at_days(5), at_days(1), &ReenrollConfig::default()).unwrap();
        assert_eq!(s.start(), at_days(5));
        assert!(s.attempts().iter().all(|t| *t == at_days(5)));
        // Extreme values do not overflow.
        let s = schedule(
            UtcTime::from_unix_millis(i64::MIN / 2),
            UtcTime::from_unix_millis(i64::MAX / 2),
            &ReenrollConfig::default(),
        )
        .unwrap();
        assert!(s.start() <= s.expires);
    }
}
