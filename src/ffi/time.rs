//! Durations in the C API: `estuary_time_duration_t` (Anjay's `avs_time_duration_t` shape)
//! and its helpers, and the conversion to `core::time::Duration`.

use std::ffi::c_int;
use std::time::Duration;

use super::{ffi_boundary, Refusal};

/// A span of time: `seconds` plus `nanoseconds` (always 0 to 999999999, also for negative
/// durations: -1 ms is { -1, 999000000 }). A `nanoseconds` value outside that range marks
/// an invalid duration, see ESTUARY_TIME_DURATION_INVALID.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct estuary_time_duration_t {
    /// Whole seconds (negative for a negative duration).
    pub seconds: i64,
    /// Nanoseconds added to `seconds`: 0 to 999999999 in a valid duration.
    pub nanoseconds: i32,
}

/// The zero-length duration.
pub const ESTUARY_TIME_DURATION_ZERO: estuary_time_duration_t = estuary_time_duration_t {
    seconds: 0,
    nanoseconds: 0,
};

/// "No valid duration": what estuary_time_duration_from_scalar() returns on overflow or an
/// unknown unit.
pub const ESTUARY_TIME_DURATION_INVALID: estuary_time_duration_t = estuary_time_duration_t {
    seconds: 0,
    nanoseconds: -1,
};

/// A unit for estuary_time_duration_from_scalar(): one of the ESTUARY_TIME_* constants.
pub type estuary_time_unit_t = c_int;
/// Days of 86400 seconds.
pub const ESTUARY_TIME_DAY: estuary_time_unit_t = 0;
/// Hours.
pub const ESTUARY_TIME_HOUR: estuary_time_unit_t = 1;
/// Minutes.
pub const ESTUARY_TIME_MIN: estuary_time_unit_t = 2;
/// Seconds.
pub const ESTUARY_TIME_S: estuary_time_unit_t = 3;
/// Milliseconds.
pub const ESTUARY_TIME_MS: estuary_time_unit_t = 4;
/// Microseconds.
pub const ESTUARY_TIME_US: estuary_time_unit_t = 5;
/// Nanoseconds.
pub const ESTUARY_TIME_NS: estuary_time_unit_t = 6;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

fn nanos_per(unit: estuary_time_unit_t) -> Option<i128> {
    Some(match unit {
        ESTUARY_TIME_DAY => 86_400 * NANOS_PER_SECOND,
        ESTUARY_TIME_HOUR => 3_600 * NANOS_PER_SECOND,
        ESTUARY_TIME_MIN => 60 * NANOS_PER_SECOND,
        ESTUARY_TIME_S => NANOS_PER_SECOND,
        ESTUARY_TIME_MS => 1_000_000,
        ESTUARY_TIME_US => 1_000,
        ESTUARY_TIME_NS => 1,
        _ => return None,
    })
}

impl estuary_time_duration_t {
    pub(crate) fn is_valid(self) -> bool {
        (0..1_000_000_000).contains(&self.nanoseconds)
    }

    /// A non-negative, valid duration as a `Duration`; `what` names it in the refusal.
    pub(crate) fn to_duration(self, what: &str) -> Result<Duration, Refusal> {
        if !self.is_valid() {
            return Err(Refusal::invalid(format!("{what} is not a valid duration")));
        }
        let secs = u64::try_from(self.seconds)
            .map_err(|_| Refusal::invalid(format!("{what} is negative")))?;
        Ok(Duration::new(secs, self.nanoseconds.unsigned_abs()))
    }
}

/// `value` `unit`s as a duration, e.g. estuary_time_duration_from_scalar(7, ESTUARY_TIME_DAY).
/// Returns ESTUARY_TIME_DURATION_INVALID (and logs) for an unknown unit, or when the result
/// does not fit.
#[no_mangle]
pub extern "C" fn estuary_time_duration_from_scalar(
    value: i64,
    unit: estuary_time_unit_t,
) -> estuary_time_duration_t {
    let r = ffi_boundary!({
        let per =
            nanos_per(unit).ok_or_else(|| Refusal::invalid(format!("unknown time unit {unit}")))?;
        let total = i128::from(value) * per;
        let seconds = i64::try_from(total.div_euclid(NANOS_PER_SECOND))
            .map_err(|_| Refusal::invalid(format!("{value} (unit {unit}) does not fit")))?;
        let nanoseconds = total.rem_euclid(NANOS_PER_SECOND) as i32;
        Ok(Some(estuary_time_duration_t {
            seconds,
            nanoseconds,
        }))
    });
    r.unwrap_or(ESTUARY_TIME_DURATION_INVALID)
}

/// True if `d` is a valid duration (not ESTUARY_TIME_DURATION_INVALID or another value with
/// `nanoseconds` out of range).
#[no_mangle]
pub extern "C" fn estuary_time_duration_is_valid(d: estuary_time_duration_t) -> bool {
    ffi_boundary!({ Ok(d.is_valid()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seconds: i64, nanoseconds: i32) -> estuary_time_duration_t {
        estuary_time_duration_t {
            seconds,
            nanoseconds,
        }
    }

    #[test]
    fn ffi_from_scalar_normalises_and_refuses_overflow() {
        let f = estuary_time_duration_from_scalar;
        assert_eq!(f(7, ESTUARY_TIME_DAY), d(604_800, 0));
        assert_eq!(f(2, ESTUARY_TIME_HOUR), d(7_200, 0));
        assert_eq!(f(3, ESTUARY_TIME_MIN), d(180, 0));
        assert_eq!(f(1_500, ESTUARY_TIME_MS), d(1, 500_000_000));
        assert_eq!(f(-1, ESTUARY_TIME_MS), d(-1, 999_000_000));
        assert_eq!(f(1, ESTUARY_TIME_US), d(0, 1_000));
        assert_eq!(f(i64::MAX, ESTUARY_TIME_NS), d(9_223_372_036, 854_775_807));
        assert_eq!(f(i64::MAX, ESTUARY_TIME_DAY), ESTUARY_TIME_DURATION_INVALID);
        assert_eq!(f(1, 99), ESTUARY_TIME_DURATION_INVALID);
        assert!(!estuary_time_duration_is_valid(
            ESTUARY_TIME_DURATION_INVALID
        ));
        assert!(estuary_time_duration_is_valid(ESTUARY_TIME_DURATION_ZERO));
    }

    #[test]
    fn ffi_durations_convert_when_valid_and_non_negative() {
        assert_eq!(d(1, 5).to_duration("x").ok(), Some(Duration::new(1, 5)));
        assert!(d(-1, 0).to_duration("x").is_err());
        assert!(d(0, -1).to_duration("x").is_err());
        assert!(d(0, 1_000_000_000).to_duration("x").is_err());
    }
}
