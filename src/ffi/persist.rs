//! Persistence from C (SPEC 5, 7.5): `_persist`, `_restore` and `_is_modified` for each part,
//! over the streams of [`super::stream`]. A part is read whole and decoded completely before
//! anything in the client changes, so a refused stream leaves the client as it was.
//! Restoring is allowed before the event loop starts (the objects are then in use).

use std::ffi::c_int;

use super::error::ESTUARY_ERR_STATE;
use super::lifecycle::{estuary_t, with_estuary, Inner};
use super::stream::{estuary_stream_t, StreamKind};
use super::{arg_mut, ffi_boundary, Refusal};
use crate::persist::{self, frame, Part, PersistError};

impl From<PersistError> for Refusal {
    fn from(e: PersistError) -> Self {
        // A stream that cannot be decoded is bad input from the caller's storage.
        Refusal::invalid(e.to_string())
    }
}

/// Reads one whole part (header, payload, CRC) from `stream`.
pub(crate) fn read_part(stream: &mut StreamKind) -> Result<Vec<u8>, Refusal> {
    let mut part = vec![0u8; frame::HEADER_LEN];
    stream.read_exact(&mut part)?;
    let len = u32::from_be_bytes([part[7], part[8], part[9], part[10]]) as usize;
    if &part[..4] != frame::MAGIC.as_slice() {
        return Err(PersistError::BadMagic.into());
    }
    if len > frame::MAX_PAYLOAD {
        return Err(PersistError::TooLarge(len).into());
    }
    let head = part.len();
    part.resize(head + len + frame::TRAILER_LEN, 0);
    stream.read_exact(&mut part[head..])?;
    Ok(part)
}

fn not_running(inner: &Inner) -> Result<(), Refusal> {
    if inner.driver.is_started() {
        return Err(Refusal::new(
            ESTUARY_ERR_STATE,
            "restore before the event loop starts",
        ));
    }
    Ok(())
}

fn security_bytes(inner: &Inner) -> Result<Vec<u8>, Refusal> {
    Ok(persist::objects::security_persist(
        &inner.driver.client().data_model().security,
    )?)
}

fn server_bytes(inner: &Inner) -> Result<Vec<u8>, Refusal> {
    Ok(persist::objects::server_persist(
        &inner.driver.client().data_model().server,
    )?)
}

fn security_apply(inner: &mut Inner, bytes: &[u8]) -> Result<(), Refusal> {
    let (obj, _) = persist::objects::security_restore(bytes)?;
    inner.driver.client_mut().data_model_mut().security = obj;
    inner.security_installed = true;
    Ok(())
}

fn server_apply(inner: &mut Inner, bytes: &[u8]) -> Result<(), Refusal> {
    let (obj, _) = persist::objects::server_restore(bytes)?;
    inner.driver.client_mut().data_model_mut().server = obj;
    inner.server_installed = true;
    Ok(())
}

/// Writes one part to `stream` and records it as saved.
///
/// # Safety
/// As the exports: handles from estuary_new() / a stream constructor, or NULL.
unsafe fn persist_part(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
    part: Part,
    bytes: fn(&Inner) -> Result<Vec<u8>, Refusal>,
) -> Result<c_int, Refusal> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { arg_mut(stream, "stream") }?;
    // SAFETY: forwarded from the caller.
    unsafe {
        with_estuary(estuary, |inner| {
            let b = bytes(inner)?;
            s.inner.write_all(&b)?;
            inner.persist.mark_saved(part, &b);
            Ok(0)
        })
    }
}

/// Reads one whole part from `stream` and applies it; nothing changes on any error.
///
/// # Safety
/// As [`persist_part`].
unsafe fn restore_part(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
    part: Part,
    apply: fn(&mut Inner, &[u8]) -> Result<(), Refusal>,
) -> Result<c_int, Refusal> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { arg_mut(stream, "stream") }?;
    // SAFETY: forwarded from the caller.
    unsafe {
        with_estuary(estuary, |inner| {
            not_running(inner)?;
            let bytes = read_part(&mut s.inner)?;
            apply(inner, &bytes)?;
            inner.persist.mark_saved(part, &bytes);
            Ok(0)
        })
    }
}

/// Whether a part differs from what was last persisted or restored.
///
/// # Safety
/// As [`persist_part`].
unsafe fn part_modified(
    estuary: *mut estuary_t,
    part: Part,
    bytes: fn(&Inner) -> Result<Vec<u8>, Refusal>,
) -> Result<bool, Refusal> {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_estuary(estuary, |inner| {
            Ok(inner.persist.is_modified(part, &bytes(inner)?))
        })
    }
}

/// Writes the Security object (with its keys: use a 0600 file or protected flash) to
/// `stream`.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_persist(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, stream, Part::Security, security_bytes) } })
}

/// Replaces the Security object with the one read from `stream`. On any error (truncated,
/// corrupt, newer format, invalid instance) the object is left unchanged.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_restore(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, stream, Part::Security, security_apply) } })
}

/// True when the Security object changed since it was last persisted or restored (or was
/// never persisted). False on a NULL handle.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Security, security_bytes) } })
}

/// Writes the Server object to `stream`.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_persist(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, stream, Part::Server, server_bytes) } })
}

/// Replaces the Server object with the one read from `stream`; unchanged on any error.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_restore(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, stream, Part::Server, server_apply) } })
}

/// True when the Server object changed since it was last persisted or restored.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Server, server_bytes) } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::config::estuary_configuration_t;
    use crate::ffi::lifecycle::{estuary_delete, estuary_new};
    use crate::ffi::objects::{
        estuary_security_instance_t, estuary_security_object_add_instance,
        estuary_security_object_install, estuary_server_instance_t,
        estuary_server_object_add_instance, estuary_server_object_install, ESTUARY_ID_INVALID,
        ESTUARY_SECURITY_PSK,
    };
    use crate::ffi::stream::{
        estuary_stream_delete, estuary_stream_membuf_create, estuary_stream_membuf_data,
        estuary_stream_membuf_write,
    };

    fn client(name: &std::ffi::CStr) -> *mut estuary_t {
        // SAFETY: all-zero is the documented "defaults" configuration; fields set below.
        let mut cfg: estuary_configuration_t = unsafe { std::mem::zeroed() };
        cfg.endpoint_name = name.as_ptr();
        cfg.prng_seed = 3;
        // SAFETY: a live configuration.
        let e = unsafe { estuary_new(&cfg) };
        assert!(!e.is_null());
        e
    }

    fn provision(e: *mut estuary_t) {
        let key = [0x11u8; 16];
        // SAFETY: zeroed is a valid bit pattern for these C structs (NULL pointers, zeros).
        let mut sec: estuary_security_instance_t = unsafe { std::mem::zeroed() };
        sec.ssid = 7;
        sec.server_uri = c"coaps://127.0.0.1:5684".as_ptr();
        sec.security_mode = ESTUARY_SECURITY_PSK;
        sec.client_holdoff_s = -1;
        sec.bootstrap_timeout_s = -1;
        sec.public_cert_or_psk_identity = b"dev1".as_ptr();
        sec.public_cert_or_psk_identity_size = 4;
        sec.private_cert_or_psk_key = key.as_ptr();
        sec.private_cert_or_psk_key_size = key.len();
        // SAFETY: as above.
        let mut srv: estuary_server_instance_t = unsafe { std::mem::zeroed() };
        srv.ssid = 7;
        srv.lifetime = 300;
        srv.default_min_period = -1;
        srv.default_max_period = -1;
        srv.disable_timeout = -1;
        srv.binding = c"U".as_ptr();
        let mut iid = ESTUARY_ID_INVALID;
        // SAFETY: live handle and structs.
        unsafe {
            assert_eq!(estuary_security_object_install(e), 0);
            assert_eq!(estuary_security_object_add_instance(e, &sec, &mut iid), 0);
            let mut iid = ESTUARY_ID_INVALID;
            assert_eq!(estuary_server_object_install(e), 0);
            assert_eq!(estuary_server_object_add_instance(e, &srv, &mut iid), 0);
        }
    }

    fn membuf_bytes(s: *mut estuary_stream_t) -> Vec<u8> {
        let mut n = 0;
        // SAFETY: live memory stream.
        let p = unsafe { estuary_stream_membuf_data(s, &mut n) };
        // SAFETY: `n` bytes at `p`.
        unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
    }

    #[test]
    fn persist_restore_round_trip_and_modified_flags() {
        let a = client(c"persist-a");
        provision(a);
        let s = estuary_stream_membuf_create();
        // SAFETY: live handles.
        unsafe {
            assert!(estuary_security_object_is_modified(a));
            assert_eq!(estuary_security_object_persist(a, s), 0);
            assert_eq!(estuary_server_object_persist(a, s), 0);
            assert!(!estuary_security_object_is_modified(a));
            assert!(!estuary_server_object_is_modified(a));
        }
        let stored = membuf_bytes(s);

        let b = client(c"persist-b");
        // SAFETY: live handles.
        unsafe {
            assert_eq!(estuary_security_object_restore(b, s), 0);
            assert_eq!(estuary_server_object_restore(b, s), 0);
            assert!(!estuary_security_object_is_modified(b));
        }
        with_both(a, b, |x, y| {
            let (dx, dy) = (
                x.driver.client().data_model(),
                y.driver.client().data_model(),
            );
            assert_eq!(
                dx.security.iter().collect::<Vec<_>>(),
                dy.security.iter().collect::<Vec<_>>()
            );
            assert_eq!(
                dx.server.iter().collect::<Vec<_>>(),
                dy.server.iter().collect::<Vec<_>>()
            );
        });

        // Every truncation of the Security part and a flipped bit in each of its bytes are
        // refused; the client keeps what it had.
        let security_len = frame::HEADER_LEN
            + u32::from_be_bytes([stored[7], stored[8], stored[9], stored[10]]) as usize
            + frame::TRAILER_LEN;
        assert!(security_len < stored.len());
        for cut in 0..security_len {
            let t = estuary_stream_membuf_create();
            let mut flipped = stored[..security_len].to_vec();
            flipped[cut] ^= 0x04;
            for bytes in [&stored[..cut], &flipped[..]] {
                // SAFETY: live handles and a live local buffer.
                unsafe {
                    assert_eq!(
                        estuary_stream_membuf_write(t, bytes.as_ptr(), bytes.len()),
                        0
                    );
                    assert!(estuary_security_object_restore(b, t) < 0, "cut {cut}");
                }
            }
            // SAFETY: created above.
            unsafe { estuary_stream_delete(t) };
        }
        with_both(a, b, |x, y| {
            assert_eq!(
                x.driver
                    .client()
                    .data_model()
                    .security
                    .iter()
                    .collect::<Vec<_>>(),
                y.driver
                    .client()
                    .data_model()
                    .security
                    .iter()
                    .collect::<Vec<_>>()
            );
        });
        // SAFETY: created above, deleted once.
        unsafe {
            estuary_stream_delete(s);
            estuary_delete(a);
            estuary_delete(b);
        }
    }

    fn with_both(a: *mut estuary_t, b: *mut estuary_t, f: impl FnOnce(&Inner, &Inner)) {
        // SAFETY: live, distinct handles; the closures do not re-enter.
        unsafe {
            with_estuary(a, |x| {
                with_estuary(b, |y| {
                    f(x, y);
                    Ok(())
                })
            })
            .unwrap();
        }
    }

    #[test]
    fn null_arguments_are_refused() {
        let s = estuary_stream_membuf_create();
        // SAFETY: NULLs are what is being tested.
        unsafe {
            assert!(estuary_security_object_persist(std::ptr::null_mut(), s) < 0);
            assert!(estuary_server_object_restore(std::ptr::null_mut(), s) < 0);
            let e = client(c"persist-null");
            assert!(estuary_security_object_persist(e, std::ptr::null_mut()) < 0);
            assert!(estuary_server_object_restore(e, std::ptr::null_mut()) < 0);
            assert!(!estuary_server_object_is_modified(std::ptr::null_mut()));
            estuary_delete(e);
            estuary_stream_delete(s);
        }
    }
}
