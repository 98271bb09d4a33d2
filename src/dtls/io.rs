//! The sans-IO glue under a DTLS session: mbedtls' bio callbacks over two in-memory datagram
//! queues, and its timer callbacks over a virtual clock that reads whatever time the session
//! was last given.
//!
//! mbedtls calls these from inside `mbedtls_ssl_handshake` / `_read` / `_write`, which the
//! session only calls after storing `now` here; nothing in this module reads a clock or
//! touches a socket. The objects are shared with C by address (`Arc`, only ever accessed
//! through shared references and interior mutability), so the session can move freely.

use core::ffi::{c_int, c_uchar, c_void};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use mbedtls::ssl::context::TimerCallback;

use crate::time::Instant;

/// mbedtls' "no data yet" code (`MBEDTLS_ERR_SSL_WANT_READ`).
const WANT_READ: c_int = -0x6900;

/// Locks a mutex that is never held across a panic; a poisoned one is used as is.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Datagrams waiting for mbedtls (`inbound`) and datagrams mbedtls produced (`outbound`).
#[derive(Default)]
pub(super) struct MemIo {
    pub(super) inbound: Mutex<VecDeque<Vec<u8>>>,
    pub(super) outbound: Mutex<VecDeque<Vec<u8>>>,
}

impl MemIo {
    /// `mbedtls_ssl_send_t`: one call is one datagram.
    pub(super) unsafe extern "C" fn send(p: *mut c_void, buf: *const c_uchar, len: usize) -> c_int {
        if p.is_null() || (buf.is_null() && len > 0) {
            return -1;
        }
        // SAFETY: `p` is the `Arc<MemIo>` the session registered and keeps alive; mbedtls
        // passes a readable buffer of `len` bytes.
        let io = unsafe { &*(p as *const MemIo) };
        let data = if len == 0 {
            Vec::new()
        } else {
            unsafe { core::slice::from_raw_parts(buf, len) }.to_vec()
        };
        lock(&io.outbound).push_back(data);
        c_int::try_from(len).unwrap_or(c_int::MAX)
    }

    /// `mbedtls_ssl_recv_t`: the next queued datagram, or WANT_READ. A datagram longer than
    /// mbedtls' buffer is cut, which mbedtls then discards as a malformed record.
    pub(super) unsafe extern "C" fn recv(p: *mut c_void, buf: *mut c_uchar, len: usize) -> c_int {
        if p.is_null() || buf.is_null() {
            return -1;
        }
        // SAFETY: as in `send`; mbedtls passes a writable buffer of `len` bytes.
        let io = unsafe { &*(p as *const MemIo) };
        let Some(datagram) = lock(&io.inbound).pop_front() else {
            return WANT_READ;
        };
        let n = datagram.len().min(len).min(c_int::MAX as usize);
        unsafe { core::slice::from_raw_parts_mut(buf, n) }.copy_from_slice(&datagram[..n]);
        n as c_int
    }
}

/// The clock and the deadlines the timer callbacks share with the session, in milliseconds
/// of [`Instant`].
#[derive(Default)]
pub(super) struct TimerState {
    now: AtomicU64,
    start: AtomicU64,
    int_ms: AtomicU32,
    fin_ms: AtomicU32,
}

impl TimerState {
    pub(super) fn set_now(&self, now: Instant) {
        // Time never runs backwards for mbedtls, even if a caller's does.
        self.now.fetch_max(now.as_millis(), Ordering::Relaxed);
    }

    pub(super) fn now(&self) -> Instant {
        Instant::from_millis(self.now.load(Ordering::Relaxed))
    }

    /// When the final delay expires, if a timer is running.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.fin_ms.load(Ordering::Relaxed) {
            0 => None,
            fin => Some(Instant::from_millis(
                self.start
                    .load(Ordering::Relaxed)
                    .saturating_add(u64::from(fin)),
            )),
        }
    }

    pub(super) fn expired(&self) -> bool {
        self.deadline().is_some_and(|d| self.now() >= d)
    }
}

/// The object handed to `Context::set_timer_callback`; mbedtls calls `set_timer` with
/// (intermediate, final) delays in ms, 0 to cancel, and polls `get_timer`.
pub(super) struct VirtualTimer(pub(super) std::sync::Arc<TimerState>);

impl TimerCallback for VirtualTimer {
    unsafe extern "C" fn set_timer(p_timer: *mut c_void, int_ms: u32, fin_ms: u32) {
        if p_timer.is_null() {
            return;
        }
        // SAFETY: `p_timer` is `data_ptr()` of the boxed timer the context owns.
        let state = unsafe { &(*(p_timer as *const VirtualTimer)).0 };
        state
            .start
            .store(state.now.load(Ordering::Relaxed), Ordering::Relaxed);
        state.int_ms.store(int_ms, Ordering::Relaxed);
        state.fin_ms.store(fin_ms, Ordering::Relaxed);
    }

    /// -1 when cancelled, 2 when the final delay passed, 1 when only the intermediate one
    /// did, 0 otherwise (the `mbedtls_ssl_get_timer_t` contract).
    unsafe extern "C" fn get_timer(p_timer: *mut c_void) -> c_int {
        if p_timer.is_null() {
            return -1;
        }
        // SAFETY: as in `set_timer`.
        let state = unsafe { &(*(p_timer as *const VirtualTimer)).0 };
        let fin = u64::from(state.fin_ms.load(Ordering::Relaxed));
        if fin == 0 {
            return -1;
        }
        let elapsed = state
            .now
            .load(Ordering::Relaxed)
            .saturating_sub(state.start.load(Ordering::Relaxed));
        if elapsed >= fin {
            2
        } else if elapsed >= u64::from(state.int_ms.load(Ordering::Relaxed)) {
            1
        } else {
            0
        }
    }

    fn data_ptr(&mut self) -> *mut c_void {
        (self as *mut VirtualTimer).cast()
    }
}
