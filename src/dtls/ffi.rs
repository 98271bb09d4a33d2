//! The few Mbed TLS 2.28 functions the `mbedtls` 0.13 wrapper does not expose, declared by
//! hand: per-context bio, hostname, client transport ID and MTU; record read and write; the PSK lookup callback; the
//! handshake retransmission timeouts; session save/restore for resumption; close_notify.
//!
//! The C library is the one `mbedtls-sys-auto` compiles into the build (as `crypto/` already
//! relies on for `mbedtls_strerror`); the signatures below are copied from its `ssl.h`.
//! Context and config pointers are passed as `void *` because the wrapper does not re-export
//! the bindgen types; pointers have the same representation. Nothing outside `dtls/` uses
//! this module.

use core::ffi::{c_char, c_int, c_uchar, c_void};

/// `mbedtls_ssl_send_t`.
pub(super) type SendFn = unsafe extern "C" fn(*mut c_void, *const c_uchar, usize) -> c_int;
/// `mbedtls_ssl_recv_t`.
pub(super) type RecvFn = unsafe extern "C" fn(*mut c_void, *mut c_uchar, usize) -> c_int;
/// `mbedtls_ssl_recv_timeout_t`.
pub(super) type RecvTimeoutFn =
    unsafe extern "C" fn(*mut c_void, *mut c_uchar, usize, u32) -> c_int;
/// The `f_psk` argument of `mbedtls_ssl_conf_psk_cb`.
pub(super) type PskFn =
    unsafe extern "C" fn(*mut c_void, *mut c_void, *const c_uchar, usize) -> c_int;

extern "C" {
    pub(super) fn mbedtls_ssl_set_bio(
        ssl: *mut c_void,
        p_bio: *mut c_void,
        f_send: Option<SendFn>,
        f_recv: Option<RecvFn>,
        f_recv_timeout: Option<RecvTimeoutFn>,
    );
    pub(super) fn mbedtls_ssl_set_hostname(ssl: *mut c_void, hostname: *const c_char) -> c_int;
    pub(super) fn mbedtls_ssl_set_client_transport_id(
        ssl: *mut c_void,
        info: *const c_uchar,
        ilen: usize,
    ) -> c_int;
    pub(super) fn mbedtls_ssl_set_mtu(ssl: *mut c_void, mtu: u16);
    pub(super) fn mbedtls_ssl_get_max_out_record_payload(ssl: *const c_void) -> c_int;
    pub(super) fn mbedtls_ssl_close_notify(ssl: *mut c_void) -> c_int;
    pub(super) fn mbedtls_ssl_read(ssl: *mut c_void, buf: *mut c_uchar, len: usize) -> c_int;
    pub(super) fn mbedtls_ssl_write(ssl: *mut c_void, buf: *const c_uchar, len: usize) -> c_int;

    pub(super) fn mbedtls_ssl_conf_handshake_timeout(conf: *mut c_void, min: u32, max: u32);
    pub(super) fn mbedtls_ssl_conf_psk(
        conf: *mut c_void,
        psk: *const c_uchar,
        psk_len: usize,
        psk_identity: *const c_uchar,
        psk_identity_len: usize,
    ) -> c_int;
    pub(super) fn mbedtls_ssl_conf_psk_cb(
        conf: *mut c_void,
        f_psk: Option<PskFn>,
        p_psk: *mut c_void,
    );
    pub(super) fn mbedtls_ssl_set_hs_psk(
        ssl: *mut c_void,
        psk: *const c_uchar,
        psk_len: usize,
    ) -> c_int;

    pub(super) fn mbedtls_ssl_session_init(session: *mut c_void);
    pub(super) fn mbedtls_ssl_session_free(session: *mut c_void);
    pub(super) fn mbedtls_ssl_get_session(ssl: *const c_void, session: *mut c_void) -> c_int;
    pub(super) fn mbedtls_ssl_set_session(ssl: *mut c_void, session: *const c_void) -> c_int;
    pub(super) fn mbedtls_ssl_session_save(
        session: *const c_void,
        buf: *mut c_uchar,
        buf_len: usize,
        olen: *mut usize,
    ) -> c_int;
    pub(super) fn mbedtls_ssl_session_load(
        session: *mut c_void,
        buf: *const c_uchar,
        len: usize,
    ) -> c_int;
}

/// Storage for one `mbedtls_ssl_session`, which the wrapper does not expose and whose size we
/// cannot name without its bindgen types. The 2.28 struct is 160 bytes with 8-byte alignment
/// on 64-bit targets (less on 32-bit ones); this reserves 1 KiB, 8-byte aligned, initialised
/// with `mbedtls_ssl_session_init` and released with `mbedtls_ssl_session_free` on drop.
pub(super) struct OpaqueSession(Box<[u64; 128]>);

impl OpaqueSession {
    pub(super) fn new() -> Self {
        let mut s = OpaqueSession(Box::new([0u64; 128]));
        // SAFETY: the buffer is larger than and as aligned as `mbedtls_ssl_session`.
        unsafe { mbedtls_ssl_session_init(s.as_mut_ptr()) };
        s
    }

    pub(super) fn as_ptr(&self) -> *const c_void {
        self.0.as_ptr().cast()
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }
}

impl Drop for OpaqueSession {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; `session_free` frees what mbedtls allocated inside it
        // (peer certificate, ticket) and zeroises the struct (it holds the master secret).
        unsafe { mbedtls_ssl_session_free(self.as_mut_ptr()) };
    }
}
