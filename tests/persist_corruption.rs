//! Damaged persistence streams (SPEC 5): every truncation, every single bit flip and a newer
//! format version of each of the four parts is refused with a clear error, and the client
//! that was being restored keeps exactly the state it had (compared as a serialised
//! snapshot before and after). Checked on the Rust API (`Snapshot`, all-or-nothing) and on
//! the per-part C calls over memory streams.

// Not every re-export of the shared rig is used here.
#[allow(unused_imports)]
mod common;
use common::rig::*;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use estuary::ffi::config::estuary_configuration_t;
use estuary::ffi::lifecycle::{estuary_delete, estuary_new, estuary_t};
use estuary::ffi::log::{estuary_set_log_handler, ESTUARY_LOG_ERROR};
use estuary::ffi::persist::*;
use estuary::ffi::stream::*;
use estuary::persist::frame::{self, Part};
use estuary::persist::snapshot::{decode_part, PARTS};
use estuary::persist::{PersistError, Snapshot};
use estuary_testserver::lwm2m_server::{OpMethod, OpRequest};

/// A realistic full state: bootstrapped, enrolled over EST (with CA certificates), and
/// with attributes written by the management server.
fn enrolled_snapshot() -> Vec<u8> {
    let mut r = rig(
        Setup::PskToEst,
        Duration::from_secs(30 * 86_400),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered());
    for (path, q) in [("/3/0", "pmax=300"), ("/3/0/9", "lt=20")] {
        let mut req = OpRequest::get(path);
        req.method = OpMethod::Put;
        req.query = vec![q.to_string()];
        r.lw.request(r.now, EP, req).unwrap();
        r.run_until(r.elapsed() + Duration::from_secs(10), |_| false);
    }
    assert_eq!(r.client.attribute_storage().count(), 1);
    Snapshot::encode(&r.client).unwrap()
}

/// A different valid state: a client with only a NoSec bootstrap account.
fn other_client() -> Client {
    let mut c = Client::new(ClientConfig::new("other"), Box::new(SeededRng::new(8))).unwrap();
    let mut b = SecurityInstance::nosec("coap://127.0.0.1:5783", 1);
    b.bootstrap_server = true;
    b.ssid = None;
    c.data_model_mut().security.insert(0, b).unwrap();
    c
}

/// (part, start offset, length) of each part of `bytes`.
fn layout(bytes: &[u8]) -> Vec<(Part, usize, usize)> {
    let mut at = 0;
    PARTS
        .iter()
        .map(|p| {
            let (_, used) = decode_part(&bytes[at..], *p).unwrap();
            let r = (*p, at, used);
            at += used;
            r
        })
        .collect()
}

/// `bytes` with the format version of the part at `start` raised, the CRC made valid again.
fn newer_version(bytes: &[u8], start: usize, len: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let part = &mut b[start..start + len];
    part[5..7].copy_from_slice(&2u16.to_be_bytes());
    let body = len - frame::TRAILER_LEN;
    let crc = crc32fast::hash(&part[..body]);
    part[body..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn kind(e: &PersistError) -> &'static str {
    match e {
        PersistError::Truncated => "truncated",
        PersistError::BadMagic => "bad magic",
        PersistError::UnknownPart(_) => "unknown part",
        PersistError::WrongPart { .. } => "wrong part",
        PersistError::NewerVersion { .. } => "newer version",
        PersistError::Checksum => "checksum",
        PersistError::TooLarge(_) => "too large",
        PersistError::Malformed(_) => "malformed",
        PersistError::EstBusy | PersistError::ClientStarted => "state",
    }
}

#[test]
fn every_truncation_bit_flip_and_newer_version_is_refused_and_changes_nothing() {
    let good = enrolled_snapshot();
    let parts = layout(&good);
    let mut target = other_client();
    let before = Snapshot::encode(&target).unwrap();
    assert_ne!(before, good);
    let mut try_restore = |bytes: &[u8]| -> PersistError {
        let e = Snapshot::restore(&mut target, bytes).expect_err("damaged stream restored");
        assert!(!e.to_string().is_empty());
        e
    };

    // Every truncation of the four parts together (each part's every offset included).
    for cut in 0..good.len() {
        assert_eq!(
            try_restore(&good[..cut]),
            PersistError::Truncated,
            "cut {cut}"
        );
    }
    // Every single bit flip, in every part (header, payload and CRC).
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut flips = 0;
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.clone();
            b[byte] ^= 1 << bit;
            let e = try_restore(&b);
            assert_ne!(kind(&e), "newer version", "byte {byte} bit {bit}");
            *kinds.entry(kind(&e)).or_default() += 1;
            flips += 1;
        }
    }
    // A newer format version of each part, with a valid CRC.
    for (part, start, len) in &parts {
        let e = try_restore(&newer_version(&good, *start, *len));
        assert_eq!(
            e,
            PersistError::NewerVersion {
                found: 2,
                supported: 1
            },
            "{part:?}"
        );
    }
    // Trailing garbage after the last part.
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(kind(&try_restore(&longer)), "malformed");

    assert_eq!(
        Snapshot::encode(&target).unwrap(),
        before,
        "state changed by a refused restore"
    );
    // The undamaged stream restores (so the refusals above were about the damage).
    Snapshot::restore(&mut target, &good).unwrap();
    assert_eq!(Snapshot::encode(&target).unwrap(), good);
    eprintln!(
        "parts {:?}: {} truncations, {flips} bit flips refused ({kinds:?}), 4 newer versions",
        parts.iter().map(|(p, _, l)| (*p, *l)).collect::<Vec<_>>(),
        good.len()
    );
}

static ERROR_LINES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_errors(
    level: i32,
    _module: *const c_char,
    message: *const c_char,
    _arg: *mut c_void,
) {
    // SAFETY: a NUL-terminated message valid for the call.
    let m = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    if level == ESTUARY_LOG_ERROR && m.contains("_restore: ") {
        ERROR_LINES.fetch_add(1, Ordering::Relaxed);
    }
}

fn c_client(name: &CStr) -> *mut estuary_t {
    // SAFETY: all-zero is the documented defaults; the name is set below.
    let mut cfg: estuary_configuration_t = unsafe { std::mem::zeroed() };
    cfg.endpoint_name = name.as_ptr();
    cfg.prng_seed = 5;
    // SAFETY: a valid configuration.
    let e = unsafe { estuary_new(&cfg) };
    assert!(!e.is_null());
    e
}

/// Restores `bytes` through the per-part C call of `part`.
fn c_restore(e: *mut estuary_t, part: Part, bytes: &[u8]) -> i32 {
    let s = estuary_stream_membuf_create();
    // SAFETY: live handles; `bytes` outlives the calls.
    unsafe {
        assert_eq!(
            estuary_stream_membuf_write(s, bytes.as_ptr(), bytes.len()),
            0
        );
        let rc = match part {
            Part::Security => estuary_security_object_restore(e, s),
            Part::Server => estuary_server_object_restore(e, s),
            Part::Attributes => estuary_attr_storage_restore(e, s),
            Part::Est => estuary_est_state_restore(e, s),
        };
        estuary_stream_delete(s);
        rc
    }
}

fn saved(e: *mut estuary_t, file: &std::path::Path) -> Vec<u8> {
    let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: live handle and C string.
    assert_eq!(
        unsafe { estuary_persistence_save_file(e, path.as_ptr()) },
        0
    );
    std::fs::read(file).unwrap()
}

#[test]
fn per_part_c_restores_refuse_damage_and_log_it() {
    let good = enrolled_snapshot();
    let dir = std::env::temp_dir().join(format!("estuary-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state");
    let e = c_client(c"corrupt-c");
    // The C client starts from a different valid state.
    let other = Snapshot::encode(&other_client()).unwrap();
    for (part, start, len) in layout(&other) {
        assert_eq!(c_restore(e, part, &other[start..start + len]), 0);
    }
    let before = saved(e, &file);
    estuary_set_log_handler(Some(count_errors), std::ptr::null_mut());
    let mut refused = 0;
    for (part, start, len) in layout(&good) {
        let bytes = &good[start..start + len];
        for cut in 0..len {
            assert!(c_restore(e, part, &bytes[..cut]) < 0, "{part:?} cut {cut}");
            refused += 1;
        }
        for byte in 0..len {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[byte] ^= 1 << bit;
                assert!(c_restore(e, part, &b) < 0, "{part:?} byte {byte} bit {bit}");
                refused += 1;
            }
        }
        let newer = newer_version(&good, start, len);
        assert!(c_restore(e, part, &newer[start..start + len]) < 0);
        refused += 1;
    }
    estuary_set_log_handler(None, std::ptr::null_mut());
    assert_eq!(
        ERROR_LINES.load(Ordering::Relaxed),
        refused,
        "one log line each"
    );
    assert_eq!(
        saved(e, &file),
        before,
        "state changed by a refused restore"
    );
    // The undamaged parts restore.
    for (part, start, len) in layout(&good) {
        assert_eq!(c_restore(e, part, &good[start..start + len]), 0);
    }
    assert_eq!(saved(e, &file), good);
    // SAFETY: created above, deleted once.
    unsafe { estuary_delete(e) };
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("C API: {refused} damaged parts refused, each with one log line");
}
