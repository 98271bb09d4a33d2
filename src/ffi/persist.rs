//! Persistence from C (SPEC 5, 7.5): `_persist`, `_restore` and `_is_modified` for each part
//! (Security, Server, attribute storage, EST state) over the streams of [`super::stream`], and
//! the one-call file helpers that persist or restore all four parts at once. A part is read
//! whole and decoded completely before anything in the client changes, so a refused stream
//! leaves the client as it was; the file restore decodes all four parts before installing
//! any. Restoring is allowed before the event loop starts (the objects are then in use).

use std::ffi::{c_char, c_int};

use super::error::{ESTUARY_ERR_IO, ESTUARY_ERR_NOT_FOUND, ESTUARY_ERR_STATE};
use super::lifecycle::{estuary_t, with_estuary, Inner};
use super::stream::{estuary_stream_t, write_file_atomically, StreamKind};
use super::{arg_mut, ffi_boundary, str_arg, Refusal};
use crate::persist::snapshot::{self, PARTS};
use crate::persist::{frame, Part, PersistError, Snapshot};

impl From<PersistError> for Refusal {
    fn from(e: PersistError) -> Self {
        match e {
            // The client is not in a state where this can be done now.
            PersistError::EstBusy | PersistError::ClientStarted => {
                Refusal::new(ESTUARY_ERR_STATE, e.to_string())
            }
            // A stream that cannot be decoded is bad input from the caller's storage.
            _ => Refusal::invalid(e.to_string()),
        }
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
    Ok(snapshot::check_not_started(inner.driver.client())?)
}

/// Records that a part was installed through the C API (so objects count as installed).
fn installed(inner: &mut Inner, part: Part) {
    match part {
        Part::Security => inner.security_installed = true,
        Part::Server => inner.server_installed = true,
        Part::Attributes | Part::Est => {}
    }
}

/// Writes one part to `stream` and records it as saved. Nothing is written when the part
/// cannot be persisted now (EST in flight).
///
/// # Safety
/// As the exports: handles from estuary_new() / a stream constructor, or NULL.
unsafe fn persist_part(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
    part: Part,
) -> Result<c_int, Refusal> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { arg_mut(stream, "stream") }?;
    // SAFETY: forwarded from the caller.
    unsafe {
        with_estuary(estuary, |inner| {
            let b = snapshot::persist_part(inner.driver.client(), part)?;
            s.inner.write_all(&b)?;
            inner.persist.mark_saved(part, &b);
            Ok(0)
        })
    }
}

/// Reads one whole part from `stream` and installs it; nothing changes on any error.
///
/// # Safety
/// As [`persist_part`].
unsafe fn restore_part(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
    part: Part,
) -> Result<c_int, Refusal> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { arg_mut(stream, "stream") }?;
    // SAFETY: forwarded from the caller.
    unsafe {
        with_estuary(estuary, |inner| {
            not_running(inner)?;
            let bytes = read_part(&mut s.inner)?;
            let (decoded, _) = snapshot::decode_part(&bytes, part)?;
            decoded.install(inner.driver.client_mut());
            installed(inner, part);
            inner.persist.mark_saved(part, &bytes);
            Ok(0)
        })
    }
}

fn modified(inner: &Inner, part: Part) -> Result<bool, Refusal> {
    let now = snapshot::encode_part(inner.driver.client(), part)?;
    Ok(inner.persist.is_modified(part, &now))
}

/// Whether a part differs from what was last persisted or restored.
///
/// # Safety
/// As [`persist_part`].
unsafe fn part_modified(estuary: *mut estuary_t, part: Part) -> Result<bool, Refusal> {
    // SAFETY: forwarded from the caller.
    unsafe { with_estuary(estuary, |inner| modified(inner, part)) }
}

/// Writes the Security object (with its keys: use a 0600 file or protected flash) to
/// `stream`. Returns 0, or a negative ESTUARY_ERR_* (ESTUARY_ERR_IO when the stream refuses
/// the bytes; what it took before failing is then incomplete).
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_persist(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, stream, Part::Security) } })
}

/// Replaces the Security object with the one read from `stream`. On any error (truncated,
/// corrupt, newer format, invalid instance) the object is left unchanged.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_restore(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, stream, Part::Security) } })
}

/// True when the Security object changed since it was last persisted or restored (or was
/// never persisted). False on a NULL handle.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Security) } })
}

/// Writes the Server object to `stream`.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_persist(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, stream, Part::Server) } })
}

/// Replaces the Server object with the one read from `stream`; unchanged on any error.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_restore(
    estuary: *mut estuary_t,
    stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, stream, Part::Server) } })
}

/// True when the Server object changed since it was last persisted or restored.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Server) } })
}

/// Writes the attribute storage (the pmin, pmax, gt, lt and st each server set with
/// Write-Attributes) to `stream`. Returns 0 or a negative ESTUARY_ERR_*.
#[no_mangle]
pub unsafe extern "C" fn estuary_attr_storage_persist(
    estuary: *mut estuary_t,
    out_stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, out_stream, Part::Attributes) } })
}

/// Replaces the attribute storage with the one read from `stream` (before the event loop
/// starts). On any error (truncated, corrupt, newer format, inconsistent attributes) the
/// storage is left unchanged.
#[no_mangle]
pub unsafe extern "C" fn estuary_attr_storage_restore(
    estuary: *mut estuary_t,
    in_stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, in_stream, Part::Attributes) } })
}

/// True when the attribute storage changed since it was last persisted or restored.
#[no_mangle]
pub unsafe extern "C" fn estuary_attr_storage_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Attributes) } })
}

/// Writes the EST state (key pair, certificate and chain, CA certificates from /est/crts,
/// provisioning time) to `out_stream`. The stream then holds a private key: use a 0600 file
/// or protected flash. While a bootstrap or EST exchange is in flight (see
/// estuary_est_state_is_ready_for_persistence()) it returns ESTUARY_ERR_STATE, logs why and
/// writes nothing: keep the previously persisted state then (a file stream opened with
/// ESTUARY_STREAM_FILE_WRITE was already truncated when it was opened; check
/// estuary_est_state_is_ready_for_persistence() first, or use
/// estuary_persistence_save_file(), which leaves the old file in place).
#[no_mangle]
pub unsafe extern "C" fn estuary_est_state_persist(
    estuary: *mut estuary_t,
    out_stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { persist_part(estuary, out_stream, Part::Est) } })
}

/// Replaces the EST state with the one read from `in_stream` (before the event loop starts).
/// The key and certificate must belong together. On any error the state is left unchanged.
/// With the Security and Server objects restored too, the client then registers with its
/// EST certificate without bootstrapping, and re-enrolls on the persisted schedule.
#[no_mangle]
pub unsafe extern "C" fn estuary_est_state_restore(
    estuary: *mut estuary_t,
    in_stream: *mut estuary_stream_t,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { restore_part(estuary, in_stream, Part::Est) } })
}

/// True when the EST state changed since it was last persisted or restored.
#[no_mangle]
pub unsafe extern "C" fn estuary_est_state_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({ unsafe { part_modified(estuary, Part::Est) } })
}

/// True when the EST state can be persisted now; false while a bootstrap or an EST exchange
/// (/est/crts, /est/sen, /est/sren) is in flight, since that state cannot be rolled back
/// (estuary_est_state_persist() and estuary_persistence_save_file() then fail), and on a
/// NULL handle.
#[no_mangle]
pub unsafe extern "C" fn estuary_est_state_is_ready_for_persistence(
    estuary: *mut estuary_t,
) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({
        unsafe {
            with_estuary(estuary, |inner| {
                Ok(!inner.driver.client().est_in_progress())
            })
        }
    })
}

/// Persists all four parts (Security, Server, attribute storage, EST state) to the file
/// `path`, atomically: `path`.tmp is created with mode 0600 (tightened to 0600 if it existed),
/// written and fsync'ed, renamed over `path`, and the directory is fsync'ed. A crash at any
/// moment leaves `path` with either the old or the new content. Returns 0,
/// ESTUARY_ERR_STATE (writing nothing) while EST is in flight, or ESTUARY_ERR_IO.
#[no_mangle]
pub unsafe extern "C" fn estuary_persistence_save_file(
    estuary: *mut estuary_t,
    path: *const c_char,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: forwarded from the caller.
        unsafe {
            with_estuary(estuary, |inner| {
                let mut parts = Vec::with_capacity(PARTS.len());
                for part in PARTS {
                    parts.push((part, snapshot::persist_part(inner.driver.client(), part)?));
                }
                let all: Vec<u8> = parts.iter().flat_map(|(_, b)| b.iter().copied()).collect();
                write_file_atomically(std::path::Path::new(&path), &all)?;
                for (part, b) in &parts {
                    inner.persist.mark_saved(*part, b);
                }
                Ok(0)
            })
        }
    })
}

/// Restores all four parts from a file written by estuary_persistence_save_file() (or by
/// the four _persist calls in order on one file stream), before the event loop starts.
/// Every part is read and checked first; the client changes only if all are good. Returns
/// 0, ESTUARY_ERR_NOT_FOUND when the file does not exist (bootstrap then), or another
/// negative ESTUARY_ERR_* (corrupt, truncated or newer-format file, client already running).
#[no_mangle]
pub unsafe extern "C" fn estuary_persistence_restore_file(
    estuary: *mut estuary_t,
    path: *const c_char,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: forwarded from the caller.
        unsafe {
            with_estuary(estuary, |inner| {
                not_running(inner)?;
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    // A first start, not a fault: said at info level, not as an error.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        log::info!(
                            target: "estuary::ffi",
                            "estuary_persistence_restore_file: {path} does not exist; nothing to restore"
                        );
                        return Ok(ESTUARY_ERR_NOT_FOUND);
                    }
                    Err(e) => {
                        return Err(Refusal::new(
                            ESTUARY_ERR_IO,
                            format!("cannot read {path}: {e}"),
                        ))
                    }
                };
                let snap = Snapshot::decode(&bytes).map_err(|e| {
                    let r = Refusal::from(e);
                    Refusal::new(r.code, format!("{path}: {}", r.message))
                })?;
                let saved: Vec<(Part, Vec<u8>)> =
                    snap.part_bytes().map(|(p, b)| (p, b.to_vec())).collect();
                snap.apply(inner.driver.client_mut())?;
                for (part, b) in &saved {
                    installed(inner, *part);
                    inner.persist.mark_saved(*part, b);
                }
                Ok(0)
            })
        }
    })
}

/// True when any of the four parts changed since it was last persisted or restored.
#[no_mangle]
pub unsafe extern "C" fn estuary_persistence_is_modified(estuary: *mut estuary_t) -> bool {
    // SAFETY: forwarded from the caller.
    ffi_boundary!({
        unsafe {
            with_estuary(estuary, |inner| {
                for part in PARTS {
                    if modified(inner, part)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
        }
    })
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

    fn seed_attributes_and_est(e: *mut estuary_t) {
        use crate::dm::Path;
        use crate::lwm2m::attributes::{AttributeStore, Attributes};
        let mut store = AttributeStore::default();
        store
            .set(
                Path::resource(3, 0, 9),
                Attributes {
                    pmin: Some(5),
                    gt: Some(80.0),
                    ..Default::default()
                },
            )
            .unwrap();
        // SAFETY: a live handle.
        unsafe {
            with_estuary(e, |inner| {
                let c = inner.driver.client_mut();
                c.restore_attribute_storage([(7, store)].into());
                c.restore_est_state(crate::persist::est::enrolled_for_tests(5));
                Ok(())
            })
        }
        .unwrap();
    }

    fn snapshot_of(e: *mut estuary_t) -> Vec<u8> {
        // SAFETY: a live handle.
        unsafe { with_estuary(e, |inner| Ok(Snapshot::encode(inner.driver.client())?)) }.unwrap()
    }

    #[test]
    fn every_part_through_streams_and_the_file_helpers() {
        use super::super::est::{estuary_est_status_get, estuary_est_status_t};
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("estuary-persist-ffi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.bin");
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();

        let a = client(c"persist-all-a");
        provision(a);
        seed_attributes_and_est(a);
        let s = estuary_stream_membuf_create();
        // SAFETY: live handles and C strings.
        unsafe {
            assert!(estuary_persistence_is_modified(a));
            assert!(estuary_attr_storage_is_modified(a));
            assert!(estuary_est_state_is_modified(a));
            assert!(estuary_est_state_is_ready_for_persistence(a));
            assert_eq!(estuary_attr_storage_persist(a, s), 0);
            assert_eq!(estuary_est_state_persist(a, s), 0);
            assert!(!estuary_attr_storage_is_modified(a));
            assert!(!estuary_est_state_is_modified(a));
            assert!(
                estuary_persistence_is_modified(a),
                "Security, Server not saved"
            );
            // A missing file is NOT_FOUND, so the caller knows to bootstrap.
            assert_eq!(
                estuary_persistence_restore_file(a, path.as_ptr()),
                ESTUARY_ERR_NOT_FOUND
            );
            assert_eq!(estuary_persistence_save_file(a, path.as_ptr()), 0);
            assert!(!estuary_persistence_is_modified(a));
        }
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.join("state.bin.tmp").exists());
        let on_disk = std::fs::read(&file).unwrap();
        assert_eq!(on_disk, snapshot_of(a));

        // Per-part streams into a fresh client.
        let b = client(c"persist-all-b");
        // SAFETY: live handles.
        unsafe {
            assert_eq!(estuary_attr_storage_restore(b, s), 0);
            assert_eq!(estuary_est_state_restore(b, s), 0);
            assert!(!estuary_attr_storage_is_modified(b));
            assert!(!estuary_est_state_is_modified(b));
        }
        // The whole file into another fresh client.
        let c = client(c"persist-all-c");
        // SAFETY: live handles and C strings.
        unsafe {
            assert_eq!(estuary_persistence_restore_file(c, path.as_ptr()), 0);
            assert!(!estuary_persistence_is_modified(c));
        }
        assert_eq!(snapshot_of(c), snapshot_of(a));
        let (sa, sb) = (snapshot_of(a), snapshot_of(b));
        let part_len = |b: &[u8]| {
            frame::HEADER_LEN
                + u32::from_be_bytes([b[7], b[8], b[9], b[10]]) as usize
                + frame::TRAILER_LEN
        };
        // b has the attribute and EST parts of a (its objects are empty).
        let skip = |b: &[u8]| {
            let n = part_len(b);
            n + part_len(&b[n..])
        };
        assert_eq!(sa[skip(&sa)..], sb[skip(&sb)..]);

        let mut st = std::mem::MaybeUninit::<estuary_est_status_t>::zeroed();
        // SAFETY: live handle, valid output.
        assert_eq!(unsafe { estuary_est_status_get(c, st.as_mut_ptr()) }, 0);
        // SAFETY: written on success.
        let st = unsafe { st.assume_init() };
        assert!(st.enrolled && !st.operation_in_progress);
        // SAFETY: NUL-terminated by the call.
        let subject = unsafe { std::ffi::CStr::from_ptr(st.subject.as_ptr()) };
        assert_eq!(subject.to_str().unwrap(), "CN=dev1");
        assert_eq!(
            (st.not_before, st.not_after, st.provisioned_at),
            (1_700_000_000, 1_700_086_400, 1_700_000_123)
        );
        // Defaults {0.9, 30 days}: 0.9 of the way from provisioning to notAfter.
        assert!(st.reenrollment_scheduled);
        let p = 1_700_000_123_456i64;
        assert_eq!(
            st.next_reenrollment,
            (p + (1_700_086_400_000 - p) * 9 / 10) / 1000
        );

        // A corrupt file changes nothing in a fresh client, and a wider pre-existing file
        // mode is narrowed by the next save.
        let mut bad = on_disk.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let d = client(c"persist-all-d");
        let before = snapshot_of(d);
        // SAFETY: live handles and C strings.
        unsafe {
            assert_eq!(
                estuary_persistence_restore_file(d, path.as_ptr()),
                super::super::error::ESTUARY_ERR_INVALID_ARGUMENT
            );
        }
        assert_eq!(snapshot_of(d), before);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.join("state.bin.tmp"), b"stale").unwrap();
        std::fs::set_permissions(
            dir.join("state.bin.tmp"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        // SAFETY: live handle and C string.
        assert_eq!(
            unsafe { estuary_persistence_save_file(a, path.as_ptr()) },
            0
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), on_disk);
        // SAFETY: created above, deleted once.
        unsafe {
            assert!(estuary_persistence_save_file(a, std::ptr::null()) < 0);
            assert!(!estuary_est_state_is_ready_for_persistence(
                std::ptr::null_mut()
            ));
            estuary_stream_delete(s);
            for e in [a, b, c, d] {
                estuary_delete(e);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A started client whose bootstrap is in flight (it has no management account): its
    /// Bootstrap-Request went to a local UDP socket that never answers.
    fn bootstrapping(silent: &std::net::UdpSocket) -> *mut estuary_t {
        use crate::ffi::lifecycle::{estuary_event_loop_interrupt, estuary_event_loop_run};
        use crate::ffi::objects::ESTUARY_SECURITY_NOSEC;
        use crate::ffi::time::ESTUARY_TIME_DURATION_ZERO;
        let e = client(c"persist-busy");
        let uri = std::ffi::CString::new(format!(
            "coap://127.0.0.1:{}",
            silent.local_addr().unwrap().port()
        ))
        .unwrap();
        // SAFETY: zeroed is a valid bit pattern for this C struct; fields set below.
        let mut bs: estuary_security_instance_t = unsafe { std::mem::zeroed() };
        bs.server_uri = uri.as_ptr();
        bs.bootstrap_server = true;
        bs.security_mode = ESTUARY_SECURITY_NOSEC;
        bs.client_holdoff_s = -1;
        bs.bootstrap_timeout_s = -1;
        let mut iid = ESTUARY_ID_INVALID;
        // SAFETY: live handle and structs.
        unsafe {
            assert_eq!(estuary_security_object_install(e), 0);
            assert_eq!(estuary_security_object_add_instance(e, &bs, &mut iid), 0);
            // Start the client: an interrupt first makes the run return at once.
            assert_eq!(estuary_event_loop_interrupt(e), 0);
            assert_eq!(estuary_event_loop_run(e, ESTUARY_TIME_DURATION_ZERO), 0);
        }
        e
    }

    #[test]
    fn est_state_is_not_persisted_while_in_flight_and_nothing_is_written() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = bootstrapping(&silent);
        let dir = std::env::temp_dir().join(format!("estuary-persist-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.bin");
        std::fs::write(&file, b"previous state").unwrap();
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let s = estuary_stream_membuf_create();
        // SAFETY: live handles, local buffers and C strings.
        unsafe {
            assert_eq!(estuary_stream_membuf_write(s, b"kept".as_ptr(), 4), 0);
            assert!(!estuary_est_state_is_ready_for_persistence(e));
            assert_eq!(estuary_est_state_persist(e, s), ESTUARY_ERR_STATE);
            assert_eq!(membuf_bytes(s), b"kept");
            assert_eq!(
                estuary_persistence_save_file(e, path.as_ptr()),
                ESTUARY_ERR_STATE
            );
            assert!(!dir.join("state.bin.tmp").exists());
            // The data-model parts can still be persisted; restoring into a running
            // client is refused.
            assert_eq!(estuary_security_object_persist(e, s), 0);
            assert_eq!(estuary_security_object_restore(e, s), ESTUARY_ERR_STATE);
            assert_eq!(
                estuary_persistence_restore_file(e, path.as_ptr()),
                ESTUARY_ERR_STATE
            );
            let mut st = std::mem::MaybeUninit::<super::super::est::estuary_est_status_t>::zeroed();
            assert_eq!(
                super::super::est::estuary_est_status_get(e, st.as_mut_ptr()),
                0
            );
            let st = st.assume_init();
            assert!(st.operation_in_progress && !st.enrolled && !st.reenrollment_scheduled);
            estuary_stream_delete(s);
            estuary_delete(e);
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"previous state");
        // The request really was sent.
        let mut buf = [0u8; 512];
        silent
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(silent.recv(&mut buf).unwrap() > 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct Flash {
        data: Vec<u8>,
        limit: usize,
    }

    /// Takes what fits below `limit`, then fails: a flash region that fills up mid-write.
    unsafe extern "C" fn flash_write(
        arg: *mut std::ffi::c_void,
        data: *const u8,
        size: usize,
    ) -> c_int {
        // SAFETY: `arg` is the test's Flash, `data` has `size` bytes.
        let f = unsafe { &mut *(arg as *mut Flash) };
        // SAFETY: as above.
        let data = unsafe { std::slice::from_raw_parts(data, size) };
        let room = f.limit - f.data.len();
        f.data.extend_from_slice(&data[..size.min(room)]);
        if size > room {
            -28
        } else {
            0
        }
    }

    #[test]
    fn a_callback_stream_failing_mid_write_is_reported() {
        use crate::ffi::stream::estuary_stream_from_callbacks;
        let a = client(c"persist-flash");
        provision(a);
        seed_attributes_and_est(a);
        let mut flash = Flash {
            data: Vec::new(),
            limit: 200,
        };
        let s = estuary_stream_from_callbacks(None, Some(flash_write), (&raw mut flash).cast());
        // SAFETY: live handles.
        unsafe {
            assert_eq!(estuary_attr_storage_persist(a, s), 0);
            assert_eq!(estuary_est_state_persist(a, s), ESTUARY_ERR_IO);
            // Not recorded as saved.
            assert!(estuary_est_state_is_modified(a));
            assert!(!estuary_attr_storage_is_modified(a));
            estuary_stream_delete(s);
            estuary_delete(a);
        }
        assert_eq!(flash.data.len(), 200);
    }
}
