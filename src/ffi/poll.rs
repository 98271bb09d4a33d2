//! The poll-style integration for firmware that runs its own `poll()` / `select()` loop
//! instead of estuary_event_loop_run(): the sockets to wait on, serving one readable
//! socket, how long the loop may sleep, and running what is due.
//!
//! A loop iteration is: estuary_get_sockets() (the set changes as connections open and
//! close), wait at most estuary_sched_calculate_wait_time_ms() for any of them to become
//! readable, estuary_serve() each readable one, then estuary_sched_run(). Before the first
//! estuary_sched_run() the client has no socket and the wait is 0: that call starts it.

use std::ffi::c_int;
use std::time::Duration;

use super::error::ESTUARY_ERR_NO_SPACE;
use super::lifecycle::{estuary_t, with_estuary};
use super::{arg_mut, ffi_boundary, Refusal};

/// Milliseconds in `d`, rounded up so a loop never wakes before the work is due, and
/// capped at `limit_ms`.
fn wait_ms(d: Duration, limit_ms: i64) -> i64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).map_or(limit_ms, |ms| ms.min(limit_ms))
}

/// Writes the file descriptors of the UDP sockets the client uses now to
/// `fds[0 .. *inout_count)`: on input `*inout_count` is the capacity of `fds`, on output
/// the number written. Wait for them to become readable (POLLIN) and pass each readable one
/// to estuary_serve(). The set changes after estuary_serve() and estuary_sched_run()
/// (connections open and close), so call this on every loop iteration; it is empty until
/// the first estuary_sched_run() starts the client. `fds` may be NULL when the capacity is
/// 0. Returns 0; ESTUARY_ERR_NO_SPACE when `fds` is too small, with the count needed
/// written to `*inout_count` (and nothing to `fds`); ESTUARY_ERR_NULL_ARGUMENT for a NULL
/// `estuary` or `inout_count`, or a NULL `fds` with a non-zero capacity. The descriptors
/// belong to Estuary: do not read from or close them.
#[no_mangle]
pub unsafe extern "C" fn estuary_get_sockets(
    estuary: *mut estuary_t,
    fds: *mut c_int,
    inout_count: *mut usize,
) -> c_int {
    ffi_boundary!({
        // SAFETY: the C caller passes NULL or a valid, writable size_t.
        let count = unsafe { arg_mut(inout_count, "inout_count") }?;
        let capacity = *count;
        if fds.is_null() && capacity != 0 {
            return Err(Refusal::null("fds"));
        }
        // SAFETY: a handle from estuary_new() per the C caller.
        let sockets = unsafe { with_estuary(estuary, |inner| Ok(inner.driver.sockets())) }?;
        if sockets.len() > capacity {
            *count = sockets.len();
            return Err(Refusal::new(
                ESTUARY_ERR_NO_SPACE,
                format!(
                    "room for {capacity} descriptors, the client has {} sockets (the needed \
                     count is in *inout_count)",
                    sockets.len()
                ),
            ));
        }
        if !sockets.is_empty() {
            // SAFETY: non-NULL (capacity > 0 here) with room for `capacity` ints per the
            // caller, and sockets.len() <= capacity.
            let out = unsafe { std::slice::from_raw_parts_mut(fds, sockets.len()) };
            out.copy_from_slice(&sockets);
        }
        *count = sockets.len();
        Ok(0)
    })
}

/// Reads and handles what arrived on `fd`, one of the descriptors from
/// estuary_get_sockets() that poll() reported readable, and sends what follows (responses,
/// the next DTLS flight). Reading stops when the socket has nothing more, so a call never
/// blocks. Returns 0, or ESTUARY_ERR_INVALID_ARGUMENT when `fd` is not one of the client's
/// sockets (e.g. a descriptor from before a connection was closed).
#[no_mangle]
pub unsafe extern "C" fn estuary_serve(estuary: *mut estuary_t, fd: c_int) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                inner.driver.serve_fd(fd)?;
                Ok(0)
            })
        }
    })
}

/// How many milliseconds the loop may wait before estuary_sched_run() has work, at most
/// `limit_ms` (also when nothing is scheduled). Rounded up, so waiting this long never
/// wakes the loop too early; 0 means "run estuary_sched_run() now", as before the client
/// has started. `limit_ms` must be 0 or more; returns ESTUARY_ERR_INVALID_ARGUMENT (and
/// logs) for a negative limit, or another negative ESTUARY_ERR_* code on failure.
#[no_mangle]
pub unsafe extern "C" fn estuary_sched_calculate_wait_time_ms(
    estuary: *mut estuary_t,
    limit_ms: i64,
) -> i64 {
    ffi_boundary!({
        if limit_ms < 0 {
            return Err(Refusal::invalid(format!(
                "limit_ms is {limit_ms}; it must be 0 or more"
            )));
        }
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                if !inner.driver.is_started() {
                    return Ok(0);
                }
                Ok(inner
                    .driver
                    .next_wait()
                    .map_or(limit_ms, |d| wait_ms(d, limit_ms)))
            })
        }
    })
}

/// Starts the client on the first call (it registers with every server of the Security and
/// Server objects, as the first estuary_event_loop_run() does), then runs every timer that
/// is due (retransmissions, registration updates, re-enrollment, ...) and sends what they
/// produce. Returns 0, or ESTUARY_ERR_CONFIG when no server account can be used.
#[no_mangle]
pub unsafe extern "C" fn estuary_sched_run(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                inner.driver.run_due()?;
                Ok(0)
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{
        ESTUARY_ERR_INVALID_ARGUMENT, ESTUARY_ERR_NO_SPACE, ESTUARY_ERR_NULL_ARGUMENT,
    };

    #[test]
    fn ffi_wait_rounds_up_and_caps() {
        assert_eq!(wait_ms(Duration::from_micros(1), 1000), 1);
        assert_eq!(wait_ms(Duration::from_millis(5), 1000), 5);
        assert_eq!(wait_ms(Duration::from_nanos(5_000_001), 1000), 6);
        assert_eq!(wait_ms(Duration::ZERO, 1000), 0);
        assert_eq!(wait_ms(Duration::from_secs(10), 1000), 1000);
        assert_eq!(wait_ms(Duration::MAX, 7), 7);
    }

    #[test]
    fn ffi_poll_calls_refuse_null_and_bad_arguments() {
        let mut n = 4usize;
        let mut fds = [0 as c_int; 4];
        // SAFETY: NULL handles and pointers to live locals.
        unsafe {
            assert_eq!(
                estuary_get_sockets(std::ptr::null_mut(), fds.as_mut_ptr(), &mut n),
                ESTUARY_ERR_NULL_ARGUMENT
            );
            assert_eq!(n, 4, "nothing written on failure");
            assert_eq!(
                estuary_serve(std::ptr::null_mut(), 3),
                ESTUARY_ERR_NULL_ARGUMENT
            );
            assert_eq!(
                estuary_sched_calculate_wait_time_ms(std::ptr::null_mut(), 10),
                i64::from(ESTUARY_ERR_NULL_ARGUMENT)
            );
            assert_eq!(
                estuary_sched_calculate_wait_time_ms(std::ptr::null_mut(), -1),
                i64::from(ESTUARY_ERR_INVALID_ARGUMENT)
            );
            assert_eq!(
                estuary_sched_run(std::ptr::null_mut()),
                ESTUARY_ERR_NULL_ARGUMENT
            );
        }
        let _ = ESTUARY_ERR_NO_SPACE;
    }
}
