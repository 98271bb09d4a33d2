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

/// The EST rig after `tweak`, run until it registers with its first certificate and no
/// EST failure.
fn enrolled(tweak: impl FnOnce(&mut Rig)) -> Rig {
    let mut r = est_rig();
    tweak(&mut r);
    start(&mut r);
    r.run_until(Duration::from_secs(600), Rig::registered);
    assert!(r.registered(), "{:?}", r.events);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    assert_eq!(enrollments(&r, false), 1);
    r
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
    // The rig's bootstrap account is PSK: EST is tried anyway, with a warning.
    assert!(
        logs()
            .iter()
            .any(|l| l.starts_with("EST over a Psk bootstrap connection")),
        "{:?}",
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
    let plain = enrolled(|_| {});
    let delayed = enrolled(|r| r.set_est_faults(vec![EstFault::Delayed { secs: 5 }]));
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
        "delayed /sen: client bootstrap datagrams {} (undelayed {})",
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
    let (hs, regs) = (handshakes(&r, 7), r.registrations());
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
    assert_eq!(r.registrations(), regs, "no new Register");
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
        r.registrations() > regs
    });
    assert_eq!(handshakes(&r, 7), hs + 1);
    assert_eq!(r.registrations(), regs + 1);
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
    let (hs, regs) = (handshakes(&r, 7), r.registrations());
    r.set_est_faults(vec![EstFault::ServiceUnavailable { max_age: 120 }]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first, |_| false);
    let steps = r.steps;
    r.run_until(first + Duration::from_secs(60), |_| false);
    // The wait is one timer, not a spin on the past attempt time (that was 1 ms steps).
    assert!(r.steps - steps < 100, "{} clock steps", r.steps - steps);
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
        r.registrations() > regs
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

// ---------------------------------------------------------------------------------------
// est_cacerts_policy (SPEC 4.3)
//
// Every server certificate in the rig chains only to the EST CA, which is what /est/crts
// returns. The client's `trust_store_certs` holds an unrelated CA, and the accounts use
// Certificate Usage 1 (service certificate constraint: the pinned server certificate must
// also chain to the trust store), so a handshake succeeds only where the policy lets the
// /est/crts result into that connection's trust store.

use estuary::crypto::KeyPair;
use estuary::dm::tlv::{self, Tlv, TlvType};
use estuary::dm::Value;
use estuary::est::{CacertsPolicy, EstState};
use estuary_testserver::bootstrap_server::BootstrapOp;

fn unrelated_trust() -> TrustStore {
    let mut rng = Drbg::from_seed(99);
    let ca = CertificateIssuer::new_root_ca(
        KeyPair::generate(&mut rng).unwrap(),
        "CN=Unrelated CA",
        UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 86_400),
        UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 10 * 365 * 86_400),
        &mut rng,
    )
    .unwrap();
    let mut t = TrustStore::new();
    t.add(ca.certificate().clone());
    t
}

/// /0/x/15 = 1, appended to a Security instance's TLV.
fn usage_1() -> Vec<u8> {
    tlv::encode(&[Tlv::value(TlvType::Resource, 15, &Value::Integer(1))])
}

/// The mode-4 management account (ssid 7).
fn est_account(r: &Rig) -> ProvisionedAccount {
    let mut a = ProvisionedAccount::nosec(&format!("coaps://{LW_ADDR}"), 7, 86_400);
    a.mode = SecurityMode::CertificateWithEst;
    a.server_public_key = r.pki.server_cert.der().to_vec();
    a
}

/// A mode-2 management account (ssid 8) with a certificate of its own.
fn certificate_account(r: &Rig) -> ProvisionedAccount {
    let mut rng = Drbg::from_seed(5);
    let own = r
        .pki
        .issue_client(
            EP,
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 60),
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 365 * 86_400),
            &mut rng,
        )
        .unwrap();
    let mut a = ProvisionedAccount::nosec("coaps://localhost:5684", 8, 86_400);
    a.security_iid = 2;
    a.server_iid = 1;
    a.mode = SecurityMode::Certificate;
    a.identity = own.cert.der().to_vec();
    a.secret_key = own.key.to_der().expose().to_vec();
    a.server_public_key = r.pki.server_cert.der().to_vec();
    a
}

/// Has the Bootstrap-Server write `accounts` with Certificate Usage 1.
fn provision_usage_1(r: &mut Rig, accounts: &[ProvisionedAccount]) {
    let mut p = Provisioning::accounts(accounts);
    for op in &mut p.ops {
        if let BootstrapOp::Write { path, payload, .. } = op {
            if path.starts_with("/0/") {
                payload.extend(usage_1());
            }
        }
    }
    r.bs.provision(EP, p);
}

fn policy_rig(policy: CacertsPolicy) -> Rig {
    let mut r = est_rig();
    r.reconfigure(|c| {
        c.est_cacerts_policy = policy;
        c.trust_store_certs = unrelated_trust();
    });
    r
}

fn cacerts_requested(r: &Rig) -> bool {
    r.est_events()
        .iter()
        .any(|e| matches!(e, EstEvent::CaCerts { .. }))
}

fn registered_ssid(r: &Rig, ssid: u16) -> bool {
    r.count(|e| matches!(e, Event::Registered { ssid: s, .. } if *s == ssid)) > 0
}

fn handshake_failed(r: &Rig, ssid: u16) -> bool {
    r.count(|e| matches!(e, Event::SecureConnectionFailed { ssid: s, .. } if *s == ssid)) > 0
}

/// Management accounts: a mode-4 one and a mode-2 one, then a mode-2 one alone. Returns
/// (/crts requested, mode-4 registered, mode-2 registered) and (/crts requested, mode-2
/// registered) for the second run.
fn management_trust(policy: CacertsPolicy) -> ((bool, bool, bool), (bool, bool)) {
    let mut r = policy_rig(policy);
    let accounts = [est_account(&r), certificate_account(&r)];
    provision_usage_1(&mut r, &accounts);
    start(&mut r);
    r.run_until(Duration::from_secs(300), |r| {
        registered_ssid(r, 7) && registered_ssid(r, 8)
    });
    if policy == CacertsPolicy::Disabled {
        // Without /crts the enrolled certificate cannot chain to `trust_store_certs`: the
        // enrollment, and with it the bootstrap, fails before any account is used (the run
        // with the mode-2 account alone shows its handshake).
        assert_eq!(enrollments(&r, false), 0);
        assert!(!failures(&r).is_empty());
        assert!(failures(&r)
            .iter()
            .all(|(_, why)| why.contains("does not chain to the trust store")));
    } else {
        assert_eq!(enrollments(&r, false), 1, "{policy:?}: {:?}", r.events);
    }
    for ssid in [7, 8] {
        assert!(
            registered_ssid(&r, ssid)
                || handshake_failed(&r, ssid)
                || policy == CacertsPolicy::Disabled,
            "{policy:?} ssid {ssid}: {:?}",
            r.events
        );
    }
    let both = (
        cacerts_requested(&r),
        registered_ssid(&r, 7),
        registered_ssid(&r, 8),
    );

    let mut r = policy_rig(policy);
    let account = certificate_account(&r);
    provision_usage_1(&mut r, &[account]);
    start(&mut r);
    r.run_until(Duration::from_secs(300), |r| registered_ssid(r, 8));
    assert_eq!(
        enrollments(&r, false),
        0,
        "{policy:?}: no mode-4 account, no /sen"
    );
    assert!(registered_ssid(&r, 8) || handshake_failed(&r, 8));
    (both, (cacerts_requested(&r), registered_ssid(&r, 8)))
}

/// The bootstrap account in Certificate mode (factory certificate, Usage 1 on the
/// Bootstrap-Server's certificate), with the /est/crts result of an earlier enrollment
/// restored: does the bootstrap handshake succeed?
fn bootstrap_trust(policy: CacertsPolicy) -> bool {
    let mut r = policy_rig(policy);
    let mut rng = Drbg::from_seed(6);
    let factory = r
        .pki
        .issue_client(
            EP,
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 60),
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 365 * 86_400),
            &mut rng,
        )
        .unwrap();
    let mut b = SecurityInstance::certificate(
        &format!("coaps://{BS_ADDR}"),
        1,
        factory.cert.der(),
        factory.key.to_der().expose(),
        r.pki.server_cert.der(),
    );
    b.bootstrap_server = true;
    b.ssid = None;
    b.certificate_usage = Some(1);
    let sec = &mut r.client.data_model_mut().security;
    assert!(sec.remove(0));
    sec.insert(0, b).unwrap();
    r.client.restore_est_state(EstState {
        cacerts: vec![r.pki.ca.certificate().clone()],
        ..EstState::default()
    });
    start(&mut r);
    r.run_until(Duration::from_secs(300), |r| {
        r.count(|e| *e == Event::BootstrapFinished) > 0
    });
    let finished = r.count(|e| *e == Event::BootstrapFinished) > 0;
    if !finished {
        assert!(
            r.count(|e| matches!(e, Event::BootstrapFailed { reason } if reason.contains("DTLS handshake failed")))
                > 0,
            "{policy:?}: {:?}",
            r.events
        );
        assert!(r.bs_events.is_empty(), "the Bootstrap-Server saw nothing");
    }
    finished
}

fn check_policy(
    policy: CacertsPolicy,
    management: ((bool, bool, bool), (bool, bool)),
    bootstrap: bool,
) {
    assert_eq!(
        management_trust(policy),
        management,
        "{policy:?}: ((/crts, mode 4, mode 2), (/crts, mode 2 alone))"
    );
    assert_eq!(bootstrap_trust(policy), bootstrap, "{policy:?}: bootstrap");
}

#[test]
fn cacerts_disabled_never_fetches_and_trusts_nothing_from_est() {
    check_policy(
        CacertsPolicy::Disabled,
        ((false, false, false), (false, false)),
        false,
    );
}

#[test]
fn cacerts_for_est_security_verifies_mode_4_servers_only() {
    check_policy(
        CacertsPolicy::ForEstSecurity,
        ((true, true, false), (false, false)),
        false,
    );
}

#[test]
fn cacerts_for_est_security_and_bootstrap_also_verifies_the_bootstrap_server() {
    check_policy(
        CacertsPolicy::ForEstSecurityAndBootstrap,
        ((true, true, false), (false, false)),
        true,
    );
}

#[test]
fn cacerts_if_est_configured_is_trusted_everywhere_when_fetched() {
    check_policy(
        CacertsPolicy::IfEstConfigured,
        ((true, true, true), (false, false)),
        true,
    );
}

#[test]
fn cacerts_always_is_fetched_after_every_bootstrap_and_trusted_everywhere() {
    check_policy(
        CacertsPolicy::Always,
        ((true, true, true), (true, true)),
        true,
    );
}

// ---------------------------------------------------------------------------------------
// rekey (SPEC 4.4)

fn key_bytes(r: &Rig) -> Vec<u8> {
    r.client
        .est_state()
        .key
        .as_ref()
        .expect("a key")
        .to_sec1_der()
        .expose()
        .to_vec()
}

fn rekey_rig(rekey: bool) -> (Rig, Enrolled) {
    capture_logs();
    let mut r = rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(DAY),
        ReenrollConfig {
            rekey,
            ..reenroll_cfg()
        },
        86_400,
    );
    r.capture = true;
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
    let e = Enrolled {
        serial: cert.serial_hex(),
        key: key_bytes(&r),
        attempts,
    };
    (r, e)
}

#[test]
fn rekey_changes_the_key_only_when_the_new_certificate_arrives() {
    let (mut r, old) = rekey_rig(true);
    // Hold the first /sren in flight (answered 20 s later) to look at the key meanwhile.
    r.set_est_faults(vec![EstFault::Delayed { secs: 20 }]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first + Duration::from_secs(10), |_| false);
    assert!(r.client.est_in_progress(), "/sren in flight");
    assert_eq!(
        key_bytes(&r),
        old.key,
        "before the certificate: the old key"
    );
    assert_unchanged(&r, &old);
    r.run_until(first + Duration::from_secs(600), |r| {
        enrollments(r, true) > 0
    });
    assert_eq!(enrollments(&r, true), 1);
    let new_key = key_bytes(&r);
    assert_ne!(
        new_key, old.key,
        "rekey: a new key with the new certificate"
    );
    let st = r.client.est_state();
    assert!(st
        .certificate
        .as_ref()
        .unwrap()
        .matches_key(st.key.as_ref().unwrap()));

    // A failed /sren with rekey keeps the key (and certificate) in use.
    let serial = st.certificate.as_ref().unwrap().serial_hex();
    let attempts = schedule(
        st.provisioned_at.unwrap(),
        st.certificate.as_ref().unwrap().not_after(),
        &reenroll_cfg(),
    )
    .unwrap()
    .attempts();
    r.set_est_faults(vec![EstFault::WrongKey]);
    let next = elapsed_at(attempts[0]);
    r.run_until(next + Duration::from_secs(600), |r| !failures(r).is_empty());
    assert_eq!(failures(&r).len(), 1);
    assert_eq!(key_bytes(&r), new_key, "failed /sren: the key stays");
    let st = r.client.est_state();
    assert_eq!(st.certificate.as_ref().unwrap().serial_hex(), serial);
    // Cleared: the retry re-enrolls with yet another key.
    r.set_est_faults(Vec::new());
    r.run_until(elapsed_at(attempts[1]) + Duration::from_secs(600), |r| {
        enrollments(r, true) > 1
    });
    assert_eq!(enrollments(&r, true), 2);
    let third = key_bytes(&r);
    assert!(third != new_key && third != old.key);
    // None of the three private keys ever went out, in any datagram of the client.
    for key in [&old.key, &new_key, &third] {
        r.assert_no_datagram_carries_key(key);
    }
    eprintln!(
        "rekey: 3 keys, {} datagrams scanned for their private scalars",
        r.captured.len()
    );
}

#[test]
fn without_rekey_the_key_stays_across_reenrollments() {
    let (mut r, old) = rekey_rig(false);
    r.set_est_faults(vec![EstFault::Delayed { secs: 20 }]);
    let first = elapsed_at(old.attempts[0]);
    r.run_until(first + Duration::from_secs(10), |_| false);
    assert!(r.client.est_in_progress());
    assert_eq!(key_bytes(&r), old.key);
    r.set_est_faults(Vec::new());
    r.run_until(Duration::from_secs(3 * DAY), |_| false);
    assert!(enrollments(&r, true) >= 5, "{}", enrollments(&r, true));
    assert_eq!(key_bytes(&r), old.key, "same key after every /sren");
    let st = r.client.est_state();
    assert_ne!(st.certificate.as_ref().unwrap().serial_hex(), old.serial);
    assert!(st
        .certificate
        .as_ref()
        .unwrap()
        .matches_key(st.key.as_ref().unwrap()));
}

// ---------------------------------------------------------------------------------------
// /sren failing until the schedule runs out

/// The index of the first event matching `f` at or after `from`.
fn position_from(r: &Rig, from: usize, f: impl Fn(&Event) -> bool) -> Option<usize> {
    r.events
        .iter()
        .skip(from)
        .position(|(_, e)| f(e))
        .map(|i| i + from)
}

#[test]
fn sren_failing_to_expiry_purges_then_bootstraps_and_enrolls_afresh() {
    let (mut r, old) = registered_rig();
    let not_after = r
        .client
        .est_state()
        .certificate
        .as_ref()
        .unwrap()
        .not_after();
    let est = r.bs.est_mut().unwrap();
    est.set_fault_operations(&["sren"]);
    est.set_faults(vec![EstFault::WrongKey]);
    r.run_until(elapsed_at(not_after) + Duration::from_secs(600), |r| {
        r.count(|e| *e == Event::BootstrapFinished) >= 2 && enrollments(r, false) >= 2
    });
    // Every attempt of the schedule was made and refused, each at or after its time.
    let times = failure_times(&r);
    assert_eq!(times.len(), old.attempts.len(), "{:?}", failures(&r));
    for (t, due) in times.iter().zip(&old.attempts) {
        assert!(*t >= elapsed_at(*due), "attempt at {t:?} before {due:?}");
    }
    assert!(failures(&r)
        .iter()
        .all(|(op, why)| op == "Reenroll" && why.contains("matches our key")));
    assert!(
        logs()
            .iter()
            .any(|l| l.contains("the credential is purged")),
        "{:?}",
        logs()
    );
    // In order: first enrollment, the refused /sren attempts, a new bootstrap, a fresh /sen,
    // a new Register.
    let first_sen = position_from(&r, 0, |e| {
        matches!(
            e,
            Event::EstEnrolled {
                reenrollment: false,
                ..
            }
        )
    })
    .unwrap();
    let last_failure = r
        .events
        .iter()
        .rposition(|(_, e)| matches!(e, Event::EstFailed { .. }))
        .unwrap();
    assert!(first_sen < last_failure);
    let rebootstrap = position_from(&r, last_failure, |e| *e == Event::BootstrapFinished)
        .expect("bootstrap after the purge");
    let fresh_sen = position_from(&r, rebootstrap, |e| {
        matches!(
            e,
            Event::EstEnrolled {
                reenrollment: false,
                ..
            }
        )
    })
    .expect("a fresh /sen");
    r.run_until(r.elapsed() + Duration::from_secs(120), |r| {
        position_from(r, fresh_sen, |e| matches!(e, Event::Registered { .. })).is_some()
    });
    assert!(position_from(&r, fresh_sen, |e| matches!(e, Event::Registered { .. })).is_some());
    assert_eq!(enrollments(&r, true), 0);
    // A new key and certificate (the old ones were purged), valid now.
    let st = r.client.est_state();
    assert_ne!(key_bytes(&r), old.key);
    assert_ne!(st.certificate.as_ref().unwrap().serial_hex(), old.serial);
    assert!(st.certificate.as_ref().unwrap().is_valid_at(r.now.utc));
    let est: Vec<String> = r
        .est_events()
        .iter()
        .map(|e| match e {
            EstEvent::CaCerts { .. } => "crts".to_string(),
            EstEvent::Enrolled { reenroll, .. } => {
                (if *reenroll { "sren" } else { "sen" }).to_string()
            }
            EstEvent::Refused { operation, .. } => format!("refused {operation}"),
        })
        .collect();
    // The CA issued wrong-key certificates for /sren (it does not know they are wrong).
    let mut expected = vec!["crts", "sen"];
    expected.extend(std::iter::repeat_n("sren", old.attempts.len()));
    expected.extend(["crts", "sen"]);
    assert_eq!(est, expected);
    eprintln!(
        "/sren refused {} times from {:?} to {:?}; re-bootstrapped and enrolled afresh at {:?} (notAfter {:?})",
        times.len(),
        times[0],
        times[times.len() - 1],
        r.events[fresh_sen].0,
        elapsed_at(not_after)
    );
}

#[test]
fn without_reenrollment_the_certificate_is_used_until_expiry_then_bootstrap_and_sen() {
    capture_logs();
    let mut r = rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(DAY),
        ReenrollConfig {
            enable: false,
            ..reenroll_cfg()
        },
        86_400,
    );
    start(&mut r);
    r.run_until(Duration::from_secs(600), Rig::registered);
    let not_after = r
        .client
        .est_state()
        .certificate
        .as_ref()
        .unwrap()
        .not_after();
    assert_eq!(r.client.next_reenrollment(), None);
    r.run_until(elapsed_at(not_after) - Duration::from_secs(1), |_| false);
    assert_eq!(enrollments(&r, false), 1, "nothing before expiry");
    r.run_until(elapsed_at(not_after) + Duration::from_secs(600), |r| {
        enrollments(r, false) >= 2
    });
    assert_eq!(enrollments(&r, false), 2);
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 2);
    let second = r
        .events
        .iter()
        .filter(|(_, e)| *e == Event::BootstrapFinished)
        .nth(1)
        .unwrap()
        .0;
    assert!(second >= elapsed_at(not_after), "bootstrapped at expiry");
    assert!(logs()
        .iter()
        .any(|l| l.contains("the EST certificate expired")));
}

// ---------------------------------------------------------------------------------------
// Independent checks with the `openssl` command line

use std::path::{Path, PathBuf};
use std::process::Command;

use estuary::coap::content_format;
use estuary::est::{accept_enrolled, certificates};

/// Runs `openssl` (CI installs it: a missing tool fails, it is not a reason to skip) and
/// returns (stdout, stderr).
fn openssl(args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl` ({e}): install OpenSSL"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "openssl {} failed: {}{stderr}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.stdout, stderr)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A directory for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> (Scratch, PathBuf) {
    let d = std::env::temp_dir().join(format!("estuary-client-est-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    (Scratch(d.clone()), d)
}

#[test]
fn openssl_verifies_the_clients_csr_and_the_chain_it_was_issued() {
    let (mut r, _) = registered_rig();
    let csr =
        r.bs.est_mut()
            .map(|e| e.last_csr().unwrap().to_vec())
            .unwrap();
    let (_t, dir) = scratch("est-openssl");
    let csr_path = dir.join("csr.der");
    std::fs::write(&csr_path, &csr).unwrap();
    // OpenSSL 3.0 exits 0 from `req -verify` even on a bad signature: read its verdict.
    let (text, verdict) = openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        p(&csr_path),
        "-verify",
        "-noout",
        "-subject",
    ]);
    assert!(
        verdict.contains("verify OK") && !verdict.contains("failure"),
        "{verdict}"
    );
    assert!(
        String::from_utf8_lossy(&text).contains("CN = dev1")
            || String::from_utf8_lossy(&text).contains("CN=dev1"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    // The CSR carries the key the client holds.
    let st = r.client.est_state();
    let (pubkey, _) = openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        p(&csr_path),
        "-noout",
        "-pubkey",
    ]);
    let ours = st.key.as_ref().unwrap().public_key_pem();
    assert_eq!(String::from_utf8_lossy(&pubkey).trim(), ours.trim());

    // The certificate the client installed verifies against the /est/crts result.
    let leaf = dir.join("leaf.pem");
    let ca = dir.join("crts.pem");
    std::fs::write(&leaf, st.certificate.as_ref().unwrap().to_pem()).unwrap();
    let crts: String = st.cacerts.iter().map(|c| c.to_pem()).collect();
    assert!(!crts.is_empty());
    std::fs::write(&ca, crts).unwrap();
    let (out, _) = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-attime",
        &r.now.utc.unix_seconds().to_string(),
        "-CAfile",
        p(&ca),
        p(&leaf),
    ]);
    assert!(
        String::from_utf8_lossy(&out).trim_end().ends_with(": OK"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn an_openssl_made_pkcs7_bundle_is_accepted_as_sen_and_as_crts_response() {
    let (r, _) = registered_rig();
    let st = r.client.est_state();
    let leaf = st.certificate.as_ref().unwrap().clone();
    let ca = r.pki.ca.certificate().clone();
    let (_t, dir) = scratch("est-p7");
    // CA first, leaf second: the parser must find the leaf by its key.
    let pem = dir.join("chain.pem");
    std::fs::write(&pem, format!("{}{}", ca.to_pem(), leaf.to_pem())).unwrap();
    let (bundle, _) = openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        p(&pem),
        "-outform",
        "DER",
    ]);
    let certs = certificates(Some(content_format::PKCS7_CERTS_ONLY), &bundle).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0].der(), ca.der(), "OpenSSL kept the file's order");

    // As a /sen response: our certificate, picked by key, checked against the trust store.
    let mut trust = TrustStore::new();
    trust.add(ca.clone());
    let key = st.key.as_ref().unwrap();
    let enrolled = accept_enrolled(certs.clone(), key, r.now.utc, &trust).unwrap();
    assert_eq!(enrolled.certificate.der(), leaf.der());
    assert_eq!(enrolled.chain.len(), 1);
    assert_eq!(enrolled.chain[0].der(), ca.der());
    // Someone else's key finds nothing.
    let other = KeyPair::generate(&mut Drbg::from_seed(123)).unwrap();
    assert!(accept_enrolled(certs, &other, r.now.utc, &trust).is_err());

    // As a /crts response: every certificate of the bundle, in order.
    let ca_only_pem = dir.join("ca.pem");
    std::fs::write(&ca_only_pem, ca.to_pem()).unwrap();
    let (ca_bundle, _) = openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        p(&ca_only_pem),
        "-outform",
        "DER",
    ]);
    let crts = certificates(Some(content_format::PKCS7_CERTS_ONLY), &ca_bundle).unwrap();
    assert_eq!(crts.len(), 1);
    assert_eq!(crts[0].der(), ca.der());
    // Cut short, it is refused with a reason.
    let err = certificates(
        Some(content_format::PKCS7_CERTS_ONLY),
        &bundle[..bundle.len() / 2],
    )
    .unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
}

#[test]
fn sren_still_waiting_at_expiry_is_given_up_for_bootstrap_and_sen() {
    // One /sren attempt at half-life, told to come back after the certificate has expired.
    capture_logs();
    let cfg = ReenrollConfig {
        sren_attempts_count: 0,
        ..reenroll_cfg()
    };
    let mut r = rig_with_lifetime(Setup::PskToEst, Duration::from_secs(DAY), cfg, 86_400);
    start(&mut r);
    r.run_until(Duration::from_secs(600), Rig::registered);
    let old_serial = r
        .client
        .est_state()
        .certificate
        .as_ref()
        .unwrap()
        .serial_hex();
    let not_after = r
        .client
        .est_state()
        .certificate
        .as_ref()
        .unwrap()
        .not_after();
    let est = r.bs.est_mut().unwrap();
    est.set_fault_operations(&["sren"]);
    est.set_faults(vec![EstFault::ServiceUnavailable { max_age: 50_000 }]);
    r.run_until(elapsed_at(not_after) - Duration::from_secs(1), |_| false);
    assert!(r.client.est_in_progress(), "waiting on the 5.03");
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 1);
    r.run_until(elapsed_at(not_after) + Duration::from_secs(600), |r| {
        enrollments(r, false) >= 2
    });
    assert_eq!(enrollments(&r, false), 2, "{:?}", r.events);
    assert_eq!(enrollments(&r, true), 0);
    let rebootstrap = r
        .events
        .iter()
        .filter(|(_, e)| *e == Event::BootstrapFinished)
        .nth(1)
        .unwrap()
        .0;
    assert!(rebootstrap >= elapsed_at(not_after));
    assert!(logs()
        .iter()
        .any(|l| l.contains("expired during /est/sren")));
    let st = r.client.est_state();
    assert_ne!(st.certificate.as_ref().unwrap().serial_hex(), old_serial);
    assert!(st.certificate.as_ref().unwrap().is_valid_at(r.now.utc));
}

#[test]
fn a_csr_larger_than_the_out_buffer_goes_block_wise() {
    // A 128-byte out buffer (the smallest allowed): the CSR (about 200 bytes) can only go out
    // in Block1 blocks; a request that does not fit would fail with "too large".
    let plain = enrolled(|_| {});
    let mut small = enrolled(|r| r.reconfigure(|c| c.out_buffer_size = 128));
    let csr_len = small.bs.est_mut().unwrap().last_csr().unwrap().len();
    assert!(csr_len > 128, "CSR of {csr_len} bytes");
    assert!(
        small.sent[0] >= plain.sent[0] + 2,
        "the CSR in at least 3 blocks: {} vs {} datagrams",
        small.sent[0],
        plain.sent[0]
    );
    assert_eq!(enrollments(&small, false), 1);
    eprintln!(
        "128-byte out buffer: CSR {csr_len} B in blocks; bootstrap datagrams {} (vs {})",
        small.sent[0], plain.sent[0]
    );
}

#[test]
fn bootstrap_writes_and_est_answers_larger_than_the_servers_messages_go_block_wise() {
    // The Bootstrap-Server sends at most 256-byte messages: its Security writes (they carry
    // the management server's certificate) reach the client as Block1 uploads, and the
    // /est/crts and /est/sen certificates (about 450 bytes each) as Block2 downloads.
    let plain = enrolled(|_| {});
    let small = enrolled(|r| r.bs.set_max_message_size(256));
    let state = small.client.est_state();
    let cert_len = state.certificate.as_ref().unwrap().der().len();
    let ca_len = state.cacerts[0].der().len();
    assert!(cert_len > 256 && ca_len > 256, "{cert_len}, {ca_len}");
    assert_eq!(enrollments(&small, false), 1);
    // Each extra block is one more request (Block2) or answer (Block1) from the client.
    assert!(
        small.sent[0] >= plain.sent[0] + 4,
        "{} vs {} datagrams",
        small.sent[0],
        plain.sent[0]
    );
    eprintln!(
        "256-byte server messages: CA {ca_len} B and certificate {cert_len} B as Block2, \
         bootstrap datagrams {} (vs {})",
        small.sent[0], plain.sent[0]
    );
}

#[test]
fn a_client_with_a_128_byte_in_buffer_bootstraps_and_enrolls_block_wise() {
    // The Bootstrap-Server's writes (the Security instance carries a 450-byte certificate)
    // are answered 4.13 with a Block1 hint and come again in blocks the client takes; the
    // client asks for small Block2 blocks of the /est/crts and /est/sen certificates.
    let plain = enrolled(|_| {});
    let small = enrolled(|r| r.reconfigure(|c| c.in_buffer_size = 128));
    let cert_len = small
        .client
        .est_state()
        .certificate
        .as_ref()
        .unwrap()
        .der()
        .len();
    assert_eq!(enrollments(&small, false), 1);
    assert_eq!(small.bootstrap_requests(), 1);
    // At least one more request per 64-byte block of each of the two certificates.
    let extra = 2 * (cert_len as u64 / 64 - 1);
    assert!(
        small.sent[0] >= plain.sent[0] + extra,
        "{} vs {} datagrams",
        small.sent[0],
        plain.sent[0]
    );
    eprintln!(
        "128-byte in buffer: bootstrap + EST in {} datagrams from the client (vs {})",
        small.sent[0], plain.sent[0]
    );
}

// ---------------------------------------------------------------------------------------
// A bootstrap account in mode 4 (SPEC 4.1)

#[test]
fn a_mode_4_bootstrap_account_uses_the_est_certificate_for_later_bootstrap_connections() {
    use estuary_testserver::coaps::PeerAuth;

    let mut r = est_rig();
    let mut rng = Drbg::from_seed(8);
    let factory = r
        .pki
        .issue_client(
            EP,
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 60),
            UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 365 * 86_400),
            &mut rng,
        )
        .unwrap();
    let mut b = SecurityInstance::certificate(
        &format!("coaps://{BS_ADDR}"),
        1,
        factory.cert.der(),
        factory.key.to_der().expose(),
        r.pki.server_cert.der(),
    );
    b.security_mode = SecurityMode::CertificateWithEst;
    b.bootstrap_server = true;
    b.ssid = None;
    let sec = &mut r.client.data_model_mut().security;
    assert!(sec.remove(0));
    sec.insert(0, b).unwrap();
    start(&mut r);
    r.run_until(Duration::from_secs(600), Rig::registered);
    assert!(r.registered(), "{:?}", r.events);
    let peer = client_addr(ConnectionId::BOOTSTRAP);
    let seen = |r: &Rig| match r.bs_side.listener.as_ref().unwrap().peer_auth(peer) {
        Some(PeerAuth::Certificate { not_after, .. }) => not_after,
        other => panic!("{other:?}"),
    };
    // Before enrollment the bootstrap connection used the factory certificate of /0/x/3.
    assert_eq!(seen(&r), factory.cert.not_after().unix_seconds());
    let est_cert = r.client.est_state().certificate.clone().unwrap();
    assert_ne!(est_cert.serial_hex(), factory.cert.serial_hex());

    // A later bootstrap authenticates with the EST certificate, and enrolls afresh.
    r.run_until(r.elapsed() + Duration::from_secs(60), |_| false);
    r.client.schedule_bootstrap_request(r.now).unwrap();
    r.run_until(r.elapsed() + Duration::from_secs(600), |r| {
        enrollments(r, false) >= 2
    });
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 2);
    assert_eq!(seen(&r), est_cert.not_after().unix_seconds());
    assert_eq!(enrollments(&r, false), 2, "{:?}", r.events);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    // A certificate-based bootstrap connection: no warning about EST over PSK.
    assert!(!logs().iter().any(|l| l.starts_with("EST over a")));
}
