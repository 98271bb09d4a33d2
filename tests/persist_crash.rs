//! Crash safety of estuary_persistence_save_file() (SPEC 5): a child process (this test
//! binary again, selected by an environment variable) persists two different client states
//! to one file, alternately, as fast as it can; the parent kills it with SIGKILL at seeded
//! random moments, 200 times. After every kill the file must restore, through
//! estuary_persistence_restore_file(), to exactly one of the two states: never an error,
//! never a mix.

// Not every re-export of the shared rig is used here.
#[allow(unused_imports)]
mod common;
use common::rig::*;

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant as WallClock;

use estuary::ffi::config::estuary_configuration_t;
use estuary::ffi::lifecycle::{estuary_delete, estuary_new, estuary_t};
use estuary::ffi::persist::{estuary_persistence_restore_file, estuary_persistence_save_file};
use estuary::persist::Snapshot;

const CHILD_ENV: &str = "ESTUARY_PERSIST_CRASH_CHILD";
const KILLS: usize = 200;
/// What the child prints when its save loop starts.
const READY: &str = "crash-child: saving";
/// The child gives up on its own after this long, should the parent be gone.
const CHILD_MAX_RUN: std::time::Duration = std::time::Duration::from_secs(60);

fn c_path(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn c_client() -> *mut estuary_t {
    // SAFETY: all-zero is the documented defaults; the name is set below.
    let mut cfg: estuary_configuration_t = unsafe { std::mem::zeroed() };
    cfg.endpoint_name = c"crash".as_ptr();
    cfg.prng_seed = 1;
    // SAFETY: a valid configuration.
    let e = unsafe { estuary_new(&cfg) };
    assert!(!e.is_null());
    e
}

/// A client restored from `file` through the C API.
fn restored(file: &Path) -> Result<*mut estuary_t, i32> {
    let e = c_client();
    // SAFETY: live handle and C string.
    let rc = unsafe { estuary_persistence_restore_file(e, c_path(file).as_ptr()) };
    if rc == 0 {
        Ok(e)
    } else {
        // SAFETY: created above.
        unsafe { estuary_delete(e) };
        Err(rc)
    }
}

/// Child: saves state A and state B to `dir/state`, alternately, until killed.
fn child(dir: &Path) {
    let a = restored(&dir.join("a.bin")).expect("state A");
    let b = restored(&dir.join("b.bin")).expect("state B");
    let target = c_path(&dir.join("state"));
    println!("{READY}");
    let started = WallClock::now();
    while started.elapsed() < CHILD_MAX_RUN {
        for e in [b, a] {
            // SAFETY: live handles and C string.
            assert_eq!(
                unsafe { estuary_persistence_save_file(e, target.as_ptr()) },
                0
            );
        }
    }
}

/// Two different valid states: enrolled over EST with everything, and a bare client.
fn states() -> (Vec<u8>, Vec<u8>) {
    let mut r = rig(
        Setup::PskToEst,
        Duration::from_secs(30 * 86_400),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered());
    let a = Snapshot::encode(&r.client).unwrap();
    let mut c = Client::new(ClientConfig::new("bare"), Box::new(SeededRng::new(2))).unwrap();
    let mut bs = SecurityInstance::nosec("coap://127.0.0.1:5783", 1);
    bs.bootstrap_server = true;
    bs.ssid = None;
    c.data_model_mut().security.insert(0, bs).unwrap();
    let b = Snapshot::encode(&c).unwrap();
    (a, b)
}

#[test]
fn sigkill_during_save_file_leaves_the_old_or_the_new_state() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("persist-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = states();
    assert_ne!(a, b);
    std::fs::write(dir.join("a.bin"), &a).unwrap();
    std::fs::write(dir.join("b.bin"), &b).unwrap();
    let state = dir.join("state");
    // The file starts as state A, as after an earlier run.
    std::fs::write(&state, &a).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut rng: u64 = 0x5EED_CAFE_F00D_0001;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = WallClock::now();
    let (mut old_or_a, mut new_or_b, mut tmp_left) = (0, 0, 0);
    let mut delays = Vec::with_capacity(KILLS);
    for kill in 0..KILLS {
        let mut c = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_during_save_file_leaves_the_old_or_the_new_state",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child is in its save loop, then kill it at a random moment.
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.trim_end().ends_with(READY) {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("kill {kill}: the child ended before saving: {:?}", c.wait());
            }
        }
        let delay_us = next() % 20_000;
        delays.push(delay_us);
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        c.kill().unwrap(); // SIGKILL on Unix
        let status = c.wait().unwrap();
        assert!(!status.success(), "kill {kill}: the child was not killed");

        if dir.join("state.tmp").exists() {
            tmp_left += 1;
        }
        let on_disk = std::fs::read(&state).unwrap();
        let e = restored(&state).unwrap_or_else(|rc| {
            panic!(
                "kill {kill} after {delay_us} us: the file does not restore ({rc}), {} bytes",
                on_disk.len()
            )
        });
        // SAFETY: restored above, deleted once.
        unsafe { estuary_delete(e) };
        if on_disk == a {
            old_or_a += 1;
        } else if on_disk == b {
            new_or_b += 1;
        } else {
            panic!("kill {kill}: the file holds neither state");
        }
    }
    let wall = started.elapsed();
    // The kills landed at different points of the loop: both states were seen.
    assert!(old_or_a > 0 && new_or_b > 0, "A {old_or_a}, B {new_or_b}");
    eprintln!(
        "{KILLS} SIGKILLs at 0..20 ms into the save loop: {old_or_a} times state A, \
         {new_or_b} times state B, {tmp_left} times a temporary file left behind; \
         {:.1} s wall time",
        wall.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
