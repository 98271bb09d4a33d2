//! EST from the client's side against the test server's EST CA, on the virtual clock of the
//! shared rig: every fault switch of the CA (5.03 + Max-Age, delayed separate response,
//! wrong-key, expired and truncated certificates) on `/est/sen` and on `/est/sren`. The client
//! must turn each bad answer down with a reason (event and log line), keep the credential it
//! has, try again when its schedule says so, and succeed once the CA behaves.

mod common;

use std::sync::{Mutex, Once};
use std::thread::{self, ThreadId};

use common::rig::*;
use estuary::est::schedule;

const DAY: u64 = 86_400;

/// Log lines of the EST and client modules, per test thread (each test runs its whole
/// simulation on its own thread).
static LINES: Mutex<Vec<(ThreadId, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
            && (m.target().starts_with("estuary::est") || m.target().starts_with("estuary::client"))
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{}", record.args());
            LINES.lock().unwrap().push((thread::current().id(), line));
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// This test's log lines.
fn logs() -> Vec<String> {
    let me = thread::current().id();
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, l)| l.clone())
        .collect()
}

/// One-day certificates re-enrolled from half-life: attempts 12 h after provisioning, then
/// every 12 h / 11 until expiry.
fn reenroll_cfg() -> ReenrollConfig {
    ReenrollConfig {
        nominal_usage: 0.5,
        max_margin: None,
        ..ReenrollConfig::default()
    }
}

fn est_rig() -> Rig {
    capture_logs();
    rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(DAY),
        reenroll_cfg(),
        86_400,
    )
}

/// The client's EST failures so far: (operation, reason).
fn failures(r: &Rig) -> Vec<(String, String)> {
    r.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::EstFailed { operation, reason } => Some((operation.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn enrollments(r: &Rig, reenrollment: bool) -> usize {
    r.count(|e| matches!(e, Event::EstEnrolled { reenrollment: re, .. } if *re == reenrollment))
}

fn handshakes(r: &Rig, ssid: u16) -> usize {
    r.count(|e| matches!(e, Event::SecureConnectionEstablished { ssid: s, .. } if *s == ssid))
}

fn registrations(r: &Rig) -> usize {
    r.lw_events
        .iter()
        .filter(|(_, e)| matches!(e, ServerEvent::Registered { .. }))
        .count()
}

/// Time since the start of the rig as wall-clock time.
fn utc_of(elapsed: Duration) -> UtcTime {
    EPOCH + elapsed
}

fn elapsed_at(t: UtcTime) -> Duration {
    Duration::from_millis((t.unix_millis() - EPOCH.unix_millis()) as u64)
}

fn failure_times(r: &Rig) -> Vec<Duration> {
    r.events
        .iter()
        .filter(|(_, e)| matches!(e, Event::EstFailed { .. }))
        .map(|(t, _)| *t)
        .collect()
}

// ---------------------------------------------------------------------------------------
// /est/sen

/// `fault` on `/est/sen`: the answer is refused with `reason`, the client has no credential
/// and does not talk to the management server, bootstraps again after the back-off and is
/// refused again; once the fault is cleared the next round enrolls and registers.
fn sen_is_rejected_then_retried(fault: EstFault, reason: &str) {
    let mut r = est_rig();
    r.set_est_faults(vec![fault.clone()]);
    start(&mut r);
    r.run_until(Duration::from_secs(3600), |r| !failures(r).is_empty());
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{fault:?}: {:?}", r.events);
    assert_eq!(f[0].0, "Enroll");
    assert!(f[0].1.contains(reason), "{fault:?}: reason {:?}", f[0].1);
    assert!(
        logs()
            .iter()
            .any(|l| l.starts_with("EST /sen failed") && l.contains(reason)),
        "{fault:?}: no log line: {:?}",
        logs()
    );
    let st = r.client.est_state();
    assert!(
        st.certificate.is_none() && st.key.is_none(),
        "nothing installed"
    );
    assert!(!r.registered());
    assert_eq!(r.sent[1], 0, "nothing sent to the management server");

    // Retried: a new bootstrap round, a new /sen, refused again while the fault lasts.
    let first = r.elapsed();
    r.run_until(first + Duration::from_secs(3600), |r| {
        failures(r).len() >= 2
    });
    assert_eq!(failures(&r).len(), 2, "{fault:?}: retried");
    assert!(r.count(|e| *e == Event::BootstrapFinished) >= 2);
    // A failed enrollment fails the bootstrap attempt, which is retried after the back-off.
    assert!(
        r.count(|e| matches!(e, Event::BootstrapFailed { reason } if reason.contains("EST: ")))
            >= 1
    );
    assert!(r.client.est_state().certificate.is_none());
    assert!(!r.registered());

    r.set_est_faults(Vec::new());
    let cleared = r.elapsed();
    r.run_until(cleared + Duration::from_secs(3600), Rig::registered);
    assert!(r.registered(), "{fault:?}: {:?}", r.events);
    assert_eq!(enrollments(&r, false), 1);
    let st = r.client.est_state();
    assert!(st
        .certificate
        .as_ref()
        .unwrap()
        .matches_key(st.key.as_ref().unwrap()));
    assert!(st.certificate.as_ref().unwrap().is_valid_at(r.now.utc));
    eprintln!(
        "/sen {fault:?}: {} refusals, {} bootstraps, registered {:?} after the fault cleared",
        failures(&r).len(),
        r.count(|e| *e == Event::BootstrapFinished),
        r.elapsed() - cleared
    );
}

#[test]
fn sen_wrong_key_certificate_is_rejected_then_retried() {
    sen_is_rejected_then_retried(EstFault::WrongKey, "matches our key");
}

#[test]
fn sen_expired_certificate_is_rejected_then_retried() {
    sen_is_rejected_then_retried(EstFault::Expired, "not valid now");
}

#[test]
fn sen_truncated_certificate_is_rejected_then_retried() {
    sen_is_rejected_then_retried(EstFault::Truncated, "malformed");
}

#[test]
fn sen_response_delayed_past_the_exchange_lifetime_fails_then_retried() {
    // Longer than EXCHANGE_LIFETIME (247 s): the client stops waiting for the separate
    // response.
    sen_is_rejected_then_retried(
        EstFault::Delayed { secs: 300 },
        "no response within the retransmission window",
    );
}

#[test]
fn sen_service_unavailable_waits_max_age_then_enrolls() {
    let mut r = est_rig();
    r.set_est_faults(vec![EstFault::ServiceUnavailable { max_age: 60 }]);
    start(&mut r);
    r.run_until(Duration::from_secs(600), |_| {
        logs().iter().any(|l| l.contains("5.03, asking again"))
    });
    let told = r.elapsed();
    assert!(
        logs()
            .iter()
            .any(|l| l == "EST /sen: 5.03, asking again in 60s"),
        "{:?}",
        logs()
    );
    assert!(r.client.est_state().certificate.is_none());
    assert!(r.client.est_in_progress(), "waiting counts as in progress");
    // Nothing is resent before Max-Age.
    r.run_until(told + Duration::from_secs(59), |_| false);
    assert!(r.client.est_state().certificate.is_none());
    assert_eq!(r.est_events().len(), 1, "only /crts answered so far");
    r.run_until(told + Duration::from_secs(600), Rig::registered);
    assert!(r.registered());
    assert!(failures(&r).is_empty(), "a 5.03 is not a failure");
    let at = r.client.est_state().provisioned_at.unwrap();
    assert!(
        at >= utc_of(told + Duration::from_secs(60)),
        "resent after Max-Age"
    );
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 1);
}

#[test]
fn sen_delayed_separate_response_is_accepted() {
    // The same flow with and without the fault: the delayed answer costs the client exactly
    // one more datagram on the bootstrap connection (its ACK of the separate response).
    let run = |fault: Option<EstFault>| {
        let mut r = est_rig();
        if let Some(f) = fault {
            r.set_est_faults(vec![f]);
        }
        start(&mut r);
        r.run_until(Duration::from_secs(600), Rig::registered);
        assert!(r.registered(), "{:?}", r.events);
        assert!(failures(&r).is_empty(), "{:?}", failures(&r));
        assert_eq!(enrollments(&r, false), 1);
        r
    };
    let plain = run(None);
    let delayed = run(Some(EstFault::Delayed { secs: 5 }));
    // /sen was delayed by 5 s, and so was the whole flow.
    let reg = |r: &Rig| {
        r.events
            .iter()
            .find(|(_, e)| matches!(e, Event::Registered { .. }))
            .unwrap()
            .0
    };
    assert!(reg(&delayed) >= reg(&plain) + Duration::from_secs(5));
    assert_eq!(
        delayed.sent[0],
        plain.sent[0] + 1,
        "one ACK of the separate response"
    );
    eprintln!(
        "delayed /crts + /sen: client bootstrap datagrams {} (undelayed {})",
        delayed.sent[0], plain.sent[0]
    );
}

// ---------------------------------------------------------------------------------------
// /est/sren

struct Enrolled {
    serial: String,
    key: Vec<u8>,
    attempts: Vec<UtcTime>,
}

/// A registered client with a one-day certificate, and its re-enrollment schedule.
fn registered_rig() -> (Rig, Enrolled) {
    let mut r = est_rig();
    start(&mut r);
    r.run_until(Duration::from_secs(600), Rig::registered);
    assert!(r.registered());
    let st = r.client.est_state();
    let cert = st.certificate.as_ref().unwrap();
    let attempts = schedule(
        st.provisioned_at.unwrap(),
        cert.not_after(),
        &reenroll_cfg(),
    )
    .unwrap()
    .attempts();
    assert_eq!(attempts.len(), 11);
    let e = Enrolled {
        serial: cert.serial_hex(),
        key: st.key.as_ref().unwrap().to_sec1_der().expose().to_vec(),
        attempts,
    };
    (r, e)
}

fn assert_unchanged(r: &Rig, old: &Enrolled) {
    let st = r.client.est_state();
    let cert = st.certificate.as_ref().expect("still enrolled");
    assert_eq!(cert.serial_hex(), old.serial, "the old certificate stays");
    assert_eq!(
        st.key.as_ref().unwrap().to_sec1_der().expose(),
        &old.key[..]
    );
    assert!(cert.is_valid_at(r.now.utc));
}

/// `fault` on `/est/sren`: the answer is refused with `reason`; the client keeps its
/// certificate, key, DTLS session and registration; the next attempt of the schedule is
/// refused too; once the fault is cleared the attempt after that re-enrolls and reconnects.
fn sren_is_rejected_then_retried(fault: EstFault, reason: &str) {
    let (mut r, old) = registered_rig();
    let (hs, regs) = (handshakes(&r, 7), registrations(&r));
    r.set_est_faults(vec![fault.clone()]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first + Duration::from_secs(600), |r| {
        !failures(r).is_empty()
    });
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{fault:?}: {:?}", r.events);
    assert_eq!(f[0].0, "Reenroll");
    assert!(f[0].1.contains(reason), "{fault:?}: reason {:?}", f[0].1);
    assert!(
        logs()
            .iter()
            .any(|l| l.starts_with("EST /sren failed") && l.contains(reason)),
        "{fault:?}: {:?}",
        logs()
    );
    assert_unchanged(&r, &old);
    assert_eq!(handshakes(&r, 7), hs, "the management DTLS session is kept");
    assert_eq!(registrations(&r), regs, "no new Register");
    assert_eq!(enrollments(&r, true), 0);

    // The retry comes at the schedule's second attempt, and fails the same way.
    let second = elapsed_at(old.attempts[1]);
    r.run_until(second + Duration::from_secs(600), |r| {
        failures(r).len() >= 2
    });
    let times = failure_times(&r);
    assert_eq!(times.len(), 2, "{fault:?}");
    assert!(
        times[1] >= second,
        "retried at {:?}, due {second:?}",
        times[1]
    );
    assert_unchanged(&r, &old);
    assert_eq!(handshakes(&r, 7), hs);

    r.set_est_faults(Vec::new());
    let third = elapsed_at(old.attempts[2]);
    r.run_until(third + Duration::from_secs(600), |r| {
        enrollments(r, true) > 0
    });
    assert_eq!(enrollments(&r, true), 1, "{fault:?}: {:?}", r.events);
    let st = r.client.est_state();
    let cert = st.certificate.as_ref().unwrap();
    assert_ne!(cert.serial_hex(), old.serial);
    let renewed_at = st.provisioned_at.unwrap();
    assert!(renewed_at >= old.attempts[2]);
    assert_eq!(
        r.count(|e| *e == Event::BootstrapFinished),
        1,
        "no bootstrap"
    );
    // Every connection using the certificate starts again: a handshake and a Register.
    r.run_until(r.elapsed() + Duration::from_secs(60), |r| {
        registrations(r) > regs
    });
    assert_eq!(handshakes(&r, 7), hs + 1);
    assert_eq!(registrations(&r), regs + 1);
    eprintln!(
        "/sren {fault:?}: refused at {:?} and {:?}, re-enrolled at {:?}",
        times[0],
        times[1],
        elapsed_at(renewed_at)
    );
}

#[test]
fn sren_wrong_key_certificate_is_rejected_old_credential_kept() {
    sren_is_rejected_then_retried(EstFault::WrongKey, "matches our key");
}

#[test]
fn sren_expired_certificate_is_rejected_old_credential_kept() {
    sren_is_rejected_then_retried(EstFault::Expired, "not valid now");
}

#[test]
fn sren_truncated_certificate_is_rejected_old_credential_kept() {
    sren_is_rejected_then_retried(EstFault::Truncated, "malformed");
}

#[test]
fn sren_response_delayed_past_the_exchange_lifetime_fails_old_credential_kept() {
    sren_is_rejected_then_retried(
        EstFault::Delayed { secs: 300 },
        "no response within the retransmission window",
    );
}

#[test]
fn sren_service_unavailable_keeps_the_old_credential_until_max_age() {
    let (mut r, old) = registered_rig();
    let (hs, regs) = (handshakes(&r, 7), registrations(&r));
    r.set_est_faults(vec![EstFault::ServiceUnavailable { max_age: 120 }]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first + Duration::from_secs(60), |_| false);
    assert!(
        logs()
            .iter()
            .any(|l| l == "EST /sren: 5.03, asking again in 120s"),
        "{:?}",
        logs()
    );
    assert_unchanged(&r, &old);
    assert_eq!(handshakes(&r, 7), hs);
    assert!(r.client.est_in_progress());
    r.run_until(first + Duration::from_secs(600), |r| {
        enrollments(r, true) > 0
    });
    assert_eq!(enrollments(&r, true), 1);
    assert!(failures(&r).is_empty());
    let st = r.client.est_state();
    assert!(st.provisioned_at.unwrap() >= utc_of(first + Duration::from_secs(120)));
    assert_ne!(st.certificate.as_ref().unwrap().serial_hex(), old.serial);
    r.run_until(r.elapsed() + Duration::from_secs(60), |r| {
        registrations(r) > regs
    });
    assert_eq!(handshakes(&r, 7), hs + 1);
}

#[test]
fn sren_delayed_separate_response_is_accepted() {
    let (mut r, old) = registered_rig();
    r.set_est_faults(vec![EstFault::Delayed { secs: 20 }]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first + Duration::from_secs(10), |_| false);
    // Acknowledged, not answered yet: the old credential is in use.
    assert_unchanged(&r, &old);
    r.run_until(first + Duration::from_secs(600), |r| {
        enrollments(r, true) > 0
    });
    assert_eq!(enrollments(&r, true), 1, "{:?}", r.events);
    assert!(failures(&r).is_empty());
    let st = r.client.est_state();
    assert!(st.provisioned_at.unwrap() >= utc_of(first + Duration::from_secs(20)));
}
