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
    }

    /// The firmware's own poll() loop against a scripted server on 127.0.0.1: the first
    /// estuary_sched_run() starts the client, its socket appears in estuary_get_sockets(),
    /// the Register is answered, a Read from the server is served through estuary_serve(),
    /// and the loop sleeps between events instead of spinning.
    #[test]
    fn ffi_a_poll_loop_registers_and_serves_a_read() {
        use crate::coap::{self, code, MessageType, Packet};
        use crate::ffi::config::estuary_configuration_t;
        use crate::ffi::lifecycle::{estuary_delete, estuary_new};
        use crate::ffi::objects::*;
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let port = peer.local_addr().map(|a| a.port()).unwrap_or_default();
        let uri = std::ffi::CString::new(format!("coap://127.0.0.1:{port}")).unwrap_or_default();
        let done = Arc::new(AtomicBool::new(false));
        let done_in_server = Arc::clone(&done);
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut recv = || {
                let (n, from) = peer
                    .recv_from(&mut buf)
                    .expect("a datagram from the client");
                (Packet::from_bytes(&buf[..n]).expect("CoAP"), from)
            };
            let (reg, from) = recv();
            assert_eq!(coap::uri_path(&reg), Some(vec!["rd".to_string()]));
            let mut ack = coap::new_response(code::CREATED);
            ack.header.set_type(MessageType::Acknowledgement);
            ack.header.message_id = reg.header.message_id;
            ack.set_token(reg.get_token().to_vec());
            ack.add_option(coap::CoapOption::LocationPath, b"rd".to_vec());
            ack.add_option(coap::CoapOption::LocationPath, b"p1".to_vec());
            peer.send_to(&ack.to_bytes().unwrap_or_default(), from)
                .expect("send");
            let mut read = coap::new_request(code::GET, "/1/0/1");
            read.header.set_type(MessageType::Confirmable);
            read.header.message_id = 0x5151;
            read.set_token(vec![5, 1]);
            peer.send_to(&read.to_bytes().unwrap_or_default(), from)
                .expect("send");
            let (resp, _) = recv();
            let result = (resp.header.message_id, coap::raw_code(&resp), resp.payload);
            done_in_server.store(true, Ordering::SeqCst);
            // estuary_delete() de-registers.
            let (dereg, from) = recv();
            assert_eq!(coap::raw_code(&dereg), code::DELETE);
            let mut ack = coap::new_response(code::DELETED);
            ack.header.set_type(MessageType::Acknowledgement);
            ack.header.message_id = dereg.header.message_id;
            ack.set_token(dereg.get_token().to_vec());
            peer.send_to(&ack.to_bytes().unwrap_or_default(), from)
                .expect("send");
            result
        });

        // SAFETY: every pointer is NULL or points to a live local for the whole test; the
        // all-zero configuration is valid (NULL pointers, zero numbers, no callback).
        unsafe {
            let mut cfg: estuary_configuration_t = std::mem::zeroed();
            cfg.endpoint_name = c"poll-test".as_ptr();
            cfg.prng_seed = 12;
            let e = estuary_new(&cfg);
            assert!(!e.is_null());
            let mut sec: estuary_security_instance_t = std::mem::zeroed();
            sec.ssid = 1;
            sec.server_uri = uri.as_ptr();
            sec.security_mode = ESTUARY_SECURITY_NOSEC;
            sec.client_holdoff_s = -1;
            sec.bootstrap_timeout_s = -1;
            let mut srv: estuary_server_instance_t = std::mem::zeroed();
            srv.ssid = 1;
            srv.lifetime = 60;
            srv.default_min_period = -1;
            srv.default_max_period = -1;
            srv.disable_timeout = -1;
            let mut iid = ESTUARY_ID_INVALID;
            assert_eq!(estuary_security_object_install(e), 0);
            assert_eq!(estuary_security_object_add_instance(e, &sec, &mut iid), 0);
            iid = ESTUARY_ID_INVALID;
            assert_eq!(estuary_server_object_install(e), 0);
            assert_eq!(estuary_server_object_add_instance(e, &srv, &mut iid), 0);

            // Before the start: no socket, and the start is due now.
            let mut fds = [-1 as c_int; 4];
            let mut n = fds.len();
            assert_eq!(estuary_get_sockets(e, fds.as_mut_ptr(), &mut n), 0);
            assert_eq!(n, 0);
            assert_eq!(estuary_sched_calculate_wait_time_ms(e, 1000), 0);

            let mut iterations = 0;
            let mut served = 0;
            let t0 = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(10) {
                iterations += 1;
                let mut n = fds.len();
                assert_eq!(estuary_get_sockets(e, fds.as_mut_ptr(), &mut n), 0);
                let wait = estuary_sched_calculate_wait_time_ms(e, 100);
                assert!((0..=100).contains(&wait), "{wait}");
                let mut pfds: Vec<libc::pollfd> = fds[..n]
                    .iter()
                    .map(|&fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                let rc = libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait as i32);
                assert!(rc >= 0);
                for p in &pfds {
                    if p.revents & libc::POLLIN != 0 {
                        assert_eq!(estuary_serve(e, p.fd), 0);
                        served += 1;
                    }
                }
                assert_eq!(estuary_sched_run(e), 0);
            }
            // The Register's ACK and the Read (often in one wake-up); the loop slept between
            // events (a spinning loop runs thousands of iterations here).
            assert!(served >= 1, "served {served}");
            assert!(iterations < 200, "{iterations} iterations");
            eprintln!("poll loop: {iterations} iterations, {served} readable wake-ups");

            // The socket is there now; a zero capacity reports the count needed.
            let mut zero = 0usize;
            assert_eq!(
                estuary_get_sockets(e, std::ptr::null_mut(), &mut zero),
                ESTUARY_ERR_NO_SPACE
            );
            assert_eq!(zero, 1);
            let mut n = fds.len();
            assert_eq!(estuary_get_sockets(e, fds.as_mut_ptr(), &mut n), 0);
            assert_eq!(
                estuary_serve(e, fds[0] + 1000),
                ESTUARY_ERR_INVALID_ARGUMENT,
                "not an Estuary socket"
            );
            let t1 = std::time::Instant::now();
            estuary_delete(e);
            assert!(
                t1.elapsed() < Duration::from_secs(4),
                "the De-register was answered"
            );
            let (mid, rc, payload) = server.join().expect("the scripted server failed");
            assert_eq!((mid, rc), (0x5151, code::CONTENT));
            assert!(!payload.is_empty());
        }
    }
}
