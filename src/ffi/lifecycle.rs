//! The client handle `estuary_t` and its life: creation, the event loop, interrupting it,
//! triggers, and deletion (with a bounded De-register).
//!
//! The handle guards itself against re-entrant and concurrent use: every call except
//! estuary_event_loop_interrupt() takes a "busy" flag for its duration, so a call from a
//! callback or from a second thread gets `ESTUARY_ERR_BUSY` instead of undefined behaviour.
//! A panic caught inside a call leaves the handle refusing further calls.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::config::estuary_configuration_t;
use super::error::{
    ESTUARY_ERR_BUSY, ESTUARY_ERR_INTERNAL, ESTUARY_ERR_NULL_ARGUMENT, ESTUARY_ERR_STATE,
};
use super::objects::{estuary_ssid_t, ESTUARY_SSID_ANY};
use super::time::estuary_time_duration_t;
use super::{arg_ref, ffi_boundary, Refusal};
use crate::client::Event;
use crate::io::{Driver, InterruptHandle};

/// How long estuary_delete() waits for De-register responses.
pub(crate) const DELETE_DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// An Estuary LwM2M client: its configuration, objects, sockets and event loop. Create it
/// with estuary_new(), free it with estuary_delete(). Not thread-safe except
/// estuary_event_loop_interrupt(): call everything else from one thread at a time.
pub struct estuary_t {
    interrupt: InterruptHandle,
    busy: AtomicBool,
    poisoned: AtomicBool,
    inner: UnsafeCell<Inner>,
}

// SAFETY: the handle is shared between threads only as the C API allows: `interrupt` is
// Sync on its own, `busy` and `poisoned` are atomics, and `inner` is reached only by the
// call that holds the busy flag (Acquire/Release), so never from two threads at once.
unsafe impl Sync for estuary_t {}

/// What a call may change, reached only through [`with_estuary`].
pub(crate) struct Inner {
    pub(crate) driver: Driver,
    pub(crate) security_installed: bool,
    pub(crate) server_installed: bool,
    /// What was last persisted or restored, for the *_is_modified() calls.
    pub(crate) persist: crate::persist::ModificationTracker,
}

/// Releases the busy flag, and marks the handle unusable if the call panicked.
struct BusyGuard<'a>(&'a estuary_t);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Release);
        }
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Runs `f` with exclusive access to the client behind `p`.
///
/// # Safety
/// `p` must be NULL or a handle from estuary_new() that was not deleted.
pub(crate) unsafe fn with_estuary<R>(
    p: *mut estuary_t,
    f: impl FnOnce(&mut Inner) -> Result<R, Refusal>,
) -> Result<R, Refusal> {
    // SAFETY: forwarded from the caller.
    let e = unsafe { arg_ref(p.cast_const(), "estuary") }?;
    if e.poisoned.load(Ordering::Acquire) {
        return Err(Refusal::new(
            ESTUARY_ERR_INTERNAL,
            "the client is unusable after an internal error; delete it",
        ));
    }
    if e.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(Refusal::new(
            ESTUARY_ERR_BUSY,
            "the client is in use (a call from inside a callback, or from two threads at once)",
        ));
    }
    let _guard = BusyGuard(e);
    // SAFETY: the busy flag gives this call the only access to `inner`.
    f(unsafe { &mut *e.inner.get() })
}

/// The event handler of a client without a reboot callback.
pub(crate) fn default_event_handler() -> Box<dyn FnMut(&Event) + Send> {
    Box::new(|ev| {
        if *ev == Event::RebootRequested {
            ::log::warn!(
                target: "estuary::ffi",
                "the server executed Reboot, but no reboot_cb was given to estuary_device_object_install()"
            );
        }
    })
}

/// Creates a client from `config` (see estuary_configuration_t for each field). Nothing is
/// sent until estuary_event_loop_run(). Returns NULL, with a log line saying why, when
/// `config` is NULL or invalid (e.g. a NULL or invalid endpoint name) or when the operating
/// system refuses a resource (random seed, pipe).
#[no_mangle]
pub unsafe extern "C" fn estuary_new(config: *const estuary_configuration_t) -> *mut estuary_t {
    ffi_boundary!({
        // SAFETY: the C caller passes NULL or a valid configuration.
        let cfg = unsafe { arg_ref(config, "config")?.to_driver_config() }?;
        let mut driver = Driver::new(cfg)?;
        driver.set_event_handler(Some(default_event_handler()));
        let handle = Box::new(estuary_t {
            interrupt: driver.interrupt_handle(),
            busy: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            inner: UnsafeCell::new(Inner {
                driver,
                security_installed: false,
                server_installed: false,
                persist: Default::default(),
            }),
        });
        Ok(Box::into_raw(handle))
    })
}

/// De-registers from every server the client is registered with, waiting at most 5 seconds
/// for the answers (it never blocks longer), then frees the client and closes its sockets.
/// NULL is accepted and does nothing. Must not be called from inside an Estuary callback
/// (the client is then left alone, with a log line). If a signal handler may call
/// estuary_event_loop_interrupt(), make it stop using the handle before this call.
#[no_mangle]
pub unsafe extern "C" fn estuary_delete(estuary: *mut estuary_t) {
    if estuary.is_null() {
        return;
    }
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        let e = unsafe { &*estuary };
        if e.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(Refusal::new(
                ESTUARY_ERR_BUSY,
                "the client is in use (called from inside a callback?); not deleted",
            ));
        }
        // The busy flag stays taken: nothing may use the handle from here on. A panic in
        // the shutdown leaks the client rather than freeing memory that may be in use.
        if !e.poisoned.load(Ordering::Acquire) {
            // SAFETY: the busy flag gives this call the only access to `inner`.
            let inner = unsafe { &mut *e.inner.get() };
            inner.driver.shutdown(DELETE_DEREGISTER_TIMEOUT);
        }
        // SAFETY: allocated by estuary_new() with Box; no other call is using it, and the
        // caller gives up the handle now.
        drop(unsafe { Box::from_raw(estuary) });
        Ok(())
    })
}

/// Runs the client until estuary_event_loop_interrupt() is called: on the first call it
/// starts the client (registers with every server of the Security and Server objects), then
/// it waits for datagrams and timers, at most `max_wait_time` at a time, and serves them
/// (ESTUARY_TIME_DURATION_ZERO polls without sleeping). Returns 0 when interrupted (at once
/// if an interrupt arrived while the loop was not running), ESTUARY_ERR_CONFIG when no
/// server account can be used, ESTUARY_ERR_IO when waiting fails, and
/// ESTUARY_ERR_INVALID_ARGUMENT for a negative or invalid `max_wait_time`.
#[no_mangle]
pub unsafe extern "C" fn estuary_event_loop_run(
    estuary: *mut estuary_t,
    max_wait_time: estuary_time_duration_t,
) -> c_int {
    ffi_boundary!({
        let max_wait = max_wait_time.to_duration("max_wait_time")?;
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                inner.driver.run(max_wait)?;
                Ok(0)
            })
        }
    })
}

/// Makes estuary_event_loop_run() return 0 soon. Safe to call from a signal handler or
/// from another thread (async-signal-safe: it sets a flag and writes to a pipe). An
/// interrupt while the loop is not running makes its next run return at once. Returns 0,
/// or ESTUARY_ERR_NULL_ARGUMENT for NULL — without a log line, since logging is not
/// async-signal-safe.
#[no_mangle]
pub unsafe extern "C" fn estuary_event_loop_interrupt(estuary: *mut estuary_t) -> c_int {
    // Not through ffi_boundary!: no logging and no lock may happen here.
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a handle from estuary_new() per the C caller; only immutable fields are
        // touched, so this is sound while another thread runs the loop.
        match unsafe { estuary.as_ref() } {
            Some(e) => {
                e.interrupt.interrupt();
                0
            }
            None => ESTUARY_ERR_NULL_ARGUMENT,
        }
    }));
    r.unwrap_or(ESTUARY_ERR_INTERNAL)
}

/// Sends a Registration Update to the server with Short Server ID `ssid` at once, or to
/// every server with ESTUARY_SSID_ANY. Returns 0, ESTUARY_ERR_STATE before the event loop
/// has started, or ESTUARY_ERR_INVALID_ARGUMENT when no server has that SSID.
#[no_mangle]
pub unsafe extern "C" fn estuary_schedule_registration_update(
    estuary: *mut estuary_t,
    ssid: estuary_ssid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                if !inner.driver.is_started() {
                    return Err(Refusal::new(
                        ESTUARY_ERR_STATE,
                        "the event loop has not started yet",
                    ));
                }
                if ssid == 0 {
                    return Err(Refusal::invalid("SSID 0 is reserved"));
                }
                let which = (ssid != ESTUARY_SSID_ANY).then_some(ssid);
                inner.driver.schedule_registration_update(which)?;
                Ok(0)
            })
        }
    })
}

/// Starts a bootstrap at once: a Bootstrap-Request to the Bootstrap-Server account, whose
/// configuration then replaces the management accounts. Returns 0, ESTUARY_ERR_STATE before
/// the event loop has started, or ESTUARY_ERR_CONFIG when there is no usable
/// Bootstrap-Server account.
#[no_mangle]
pub unsafe extern "C" fn estuary_schedule_bootstrap_request(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                if !inner.driver.is_started() {
                    return Err(Refusal::new(
                        ESTUARY_ERR_STATE,
                        "the event loop has not started yet",
                    ));
                }
                inner.driver.schedule_bootstrap_request()?;
                Ok(0)
            })
        }
    })
}

/// A reboot callback and its argument, movable into the driver's event handler.
pub(crate) struct RebootCallback {
    pub(crate) cb: unsafe extern "C" fn(arg: *mut c_void),
    pub(crate) arg: *mut c_void,
}

// SAFETY: the callback and its argument are only ever used on the thread that runs the
// event loop, which the C caller chooses; Estuary never calls it concurrently.
unsafe impl Send for RebootCallback {}

impl RebootCallback {
    fn call(&self) {
        // SAFETY: registered by the firmware for this call shape and argument.
        unsafe { (self.cb)(self.arg) }
    }

    pub(crate) fn into_event_handler(self) -> Box<dyn FnMut(&Event) + Send> {
        Box::new(move |ev| {
            if *ev == Event::RebootRequested {
                self.call();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::sync::atomic::AtomicI32;
    use std::thread;

    use super::*;
    use crate::coap::{self, code, MessageType, Packet};
    use crate::ffi::config::estuary_configuration_t;
    use crate::ffi::objects::*;
    use crate::ffi::time::estuary_time_duration_from_scalar;
    use crate::ffi::time::ESTUARY_TIME_MS;

    static REBOOTS: AtomicI32 = AtomicI32::new(0);
    static CALL_FROM_CALLBACK: AtomicI32 = AtomicI32::new(1);

    unsafe extern "C" fn on_reboot(arg: *mut c_void) {
        let e = arg.cast::<estuary_t>();
        REBOOTS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: `arg` is the live handle the test registered.
        unsafe {
            CALL_FROM_CALLBACK.store(
                estuary_schedule_registration_update(e, ESTUARY_SSID_ANY),
                Ordering::SeqCst,
            );
            estuary_event_loop_interrupt(e);
        }
    }

    fn recv(sock: &UdpSocket) -> (Packet, std::net::SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => panic!("no datagram from the client: {e}"),
        };
        match Packet::from_bytes(&buf[..n]) {
            Ok(p) => (p, from),
            Err(e) => panic!("not CoAP: {e:?}"),
        }
    }

    fn send(sock: &UdpSocket, p: &Packet, to: std::net::SocketAddr) {
        let bytes = p.to_bytes().unwrap_or_default();
        if let Err(e) = sock.send_to(&bytes, to) {
            panic!("send: {e}");
        }
    }

    fn ack(req: &Packet, rc: u8, location: &[&str]) -> Packet {
        let mut r = coap::new_response(rc);
        r.header.set_type(MessageType::Acknowledgement);
        r.header.message_id = req.header.message_id;
        r.set_token(req.get_token().to_vec());
        for seg in location {
            r.add_option(coap::CoapOption::LocationPath, seg.as_bytes().to_vec());
        }
        r
    }

    /// A server executes Reboot: the C callback runs inside the loop, may interrupt it,
    /// and gets ESTUARY_ERR_BUSY for any other call; delete then de-registers.
    #[test]
    fn ffi_reboot_callback_runs_inside_the_loop_and_delete_deregisters() {
        let peer = match UdpSocket::bind("127.0.0.1:0") {
            Ok(s) => s,
            Err(e) => panic!("bind: {e}"),
        };
        let _ = peer.set_read_timeout(Some(Duration::from_secs(5)));
        let port = peer.local_addr().map(|a| a.port()).unwrap_or_default();
        let uri = std::ffi::CString::new(format!("coap://127.0.0.1:{port}")).unwrap_or_default();

        let server = thread::spawn(move || {
            let (reg, from) = recv(&peer);
            assert_eq!(coap::uri_path(&reg), Some(vec!["rd".to_string()]));
            send(&peer, &ack(&reg, code::CREATED, &["rd", "r1"]), from);
            let mut exec = coap::new_request(code::POST, "/3/0/4");
            exec.header.set_type(MessageType::Confirmable);
            exec.header.message_id = 0x4242;
            exec.set_token(vec![7, 7]);
            send(&peer, &exec, from);
            let (resp, _) = recv(&peer);
            assert_eq!(resp.header.message_id, 0x4242);
            assert_eq!(coap::raw_code(&resp), code::CHANGED);
            let (update, from) = recv(&peer);
            assert_eq!(coap::raw_code(&update), code::POST);
            assert_eq!(
                coap::uri_path(&update),
                Some(vec!["rd".to_string(), "r1".to_string()])
            );
            send(&peer, &ack(&update, code::CHANGED, &[]), from);
            let (dereg, from) = recv(&peer);
            assert_eq!(coap::raw_code(&dereg), code::DELETE);
            assert_eq!(
                coap::uri_path(&dereg),
                Some(vec!["rd".to_string(), "r1".to_string()])
            );
            send(&peer, &ack(&dereg, code::DELETED, &[]), from);
        });

        let cfg = estuary_configuration_t {
            endpoint_name: c"reboot-test".as_ptr(),
            udp_listen_port: 0,
            in_buffer_size: 0,
            out_buffer_size: 0,
            msg_cache_size: 0,
            udp_tx_params: std::ptr::null(),
            prng_seed: 11,
            udp_dtls_hs_tx_params: std::ptr::null(),
            trust_store_certs: crate::ffi::config::estuary_certificate_chain_info_t::EMPTY,
            confirmable_notifications: false,
            est_reenroll_config: std::ptr::null(),
            est_cacerts_policy: 0,
            trust_store_crls: crate::ffi::config::estuary_certificate_chain_info_t::EMPTY,
            lwm2m_version_config: std::ptr::null(),
            est_engine_key_address: std::ptr::null(),
            est_engine_cert_address: std::ptr::null(),
            est_engine_cacerts_address_gen_cb: None,
            est_engine_cacerts_address_gen_cb_arg: std::ptr::null_mut(),
        };
        // SAFETY: every pointer is NULL or points to a live local for the whole test.
        unsafe {
            let e = estuary_new(&cfg);
            assert!(!e.is_null());
            let sec = estuary_security_instance_t {
                ssid: 1,
                server_uri: uri.as_ptr(),
                bootstrap_server: false,
                security_mode: ESTUARY_SECURITY_NOSEC,
                client_holdoff_s: -1,
                bootstrap_timeout_s: -1,
                public_cert_or_psk_identity: std::ptr::null(),
                public_cert_or_psk_identity_size: 0,
                private_cert_or_psk_key: std::ptr::null(),
                private_cert_or_psk_key_size: 0,
                server_public_key: std::ptr::null(),
                server_public_key_size: 0,
                server_name_indication: std::ptr::null(),
                certificate_usage: std::ptr::null(),
            };
            let srv = estuary_server_instance_t {
                ssid: 1,
                lifetime: 60,
                default_min_period: -1,
                default_max_period: -1,
                disable_timeout: -1,
                binding: std::ptr::null(),
                notification_storing: false,
            };
            let dev = estuary_device_object_config_t {
                manufacturer: c"Estuary".as_ptr(),
                model_number: std::ptr::null(),
                serial_number: std::ptr::null(),
                firmware_version: std::ptr::null(),
                reboot_cb: Some(on_reboot),
                reboot_cb_arg: e.cast(),
            };
            let mut iid = ESTUARY_ID_INVALID;
            assert_eq!(estuary_security_object_install(e), 0);
            assert_eq!(estuary_security_object_add_instance(e, &sec, &mut iid), 0);
            iid = ESTUARY_ID_INVALID;
            assert_eq!(estuary_server_object_install(e), 0);
            assert_eq!(estuary_server_object_add_instance(e, &srv, &mut iid), 0);
            assert_eq!(estuary_device_object_install(e, &dev), 0);

            let step = estuary_time_duration_from_scalar(100, ESTUARY_TIME_MS);
            assert_eq!(estuary_event_loop_run(e, step), 0);
            assert_eq!(REBOOTS.load(Ordering::SeqCst), 1);
            assert_eq!(CALL_FROM_CALLBACK.load(Ordering::SeqCst), ESTUARY_ERR_BUSY);
            // The handle is usable again once the callback has returned.
            assert_eq!(estuary_schedule_registration_update(e, 1), 0);

            let t0 = std::time::Instant::now();
            estuary_delete(e);
            assert!(t0.elapsed() < DELETE_DEREGISTER_TIMEOUT);
        }
        if server.join().is_err() {
            panic!("the scripted server failed");
        }
    }
}
