//! The client's bootstrap and EST flows against the test server's sans-IO Bootstrap-Server,
//! EST CA and LwM2M server, on a virtual clock: bootstrap then register (NoSec, PSK, EST
//! mode 4 with enrollment), an inconsistent configuration refused at Finish, a silent
//! Bootstrap-Server, re-enrollment over many certificate lifetimes, and fall-back to
//! bootstrap when the management server never answers; server-initiated bootstrap
//! (/1/x/9); the Server object's retry resources over a simulated day; Certificate mode;
//! Bootstrap-Discover, -Read and -Delete, and bad writes, through the test server.

mod common;

use common::rig::*;
/// A NoSec client bootstrapped and registered with the management server.
fn registered_nosec() -> Rig {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    assert!(r.registered(), "events: {:?}", r.events);
    r
}

#[test]
fn nosec_bootstrap_then_register() {
    let r = registered_nosec();
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 1);
    let steps: Vec<String> = r
        .bs_events
        .iter()
        .filter_map(|(_, e)| match e {
            BootstrapEvent::Step { op, code, .. } => Some(format!("{op} {code}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            "delete / 2.02",
            "write /0/1 2.04",
            "write /1/0 2.04",
            "finish 2.04"
        ]
    );
    // The bootstrap account is still there, next to the written one.
    let dm = r.client.data_model();
    assert!(dm.security.iter().any(|(_, s)| s.bootstrap_server));
    assert_eq!(dm.server.by_ssid(7).map(|s| s.lifetime), Some(120));
    eprintln!(
        "bootstrap + register (NoSec): {:?}, client datagrams bootstrap={} management={}",
        r.elapsed(),
        r.sent[0],
        r.sent[1]
    );
}

#[test]
fn psk_bootstrap_then_psk_register() {
    let mut r = rig(
        Setup::PskToPsk,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    assert!(r.registered(), "events: {:?}", r.events);
    assert_eq!(r.count(|e| matches!(e, Event::EstEnrolled { .. })), 0);
}

/// Many instances: 150 of them make the Register body about 2 KB, more than one DTLS record
/// holds within the 1232-byte MTU.
struct ManyInstances;

impl estuary::dm::Object for ManyInstances {
    fn oid(&self) -> u16 {
        9000
    }

    fn instances(&self) -> Vec<u16> {
        (0..150).collect()
    }

    fn resources(&self, _iid: u16) -> Result<Vec<estuary::dm::ResourceDef>, estuary::dm::DmError> {
        Ok(Vec::new())
    }

    fn read(
        &self,
        _iid: u16,
        _rid: u16,
    ) -> Result<estuary::dm::ResourceValue, estuary::dm::DmError> {
        Err(estuary::dm::DmError::NotFound)
    }
}

#[test]
fn a_register_larger_than_one_dtls_record_goes_block_wise() {
    let mut r = rig(
        Setup::PskToPsk,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    r.client.register_object(Box::new(ManyInstances)).unwrap();
    r.capture = true;
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    assert!(r.registered(), "events: {:?}", r.events);
    let objects = &r.lw.registration(EP).unwrap().objects;
    assert!(objects.iter().any(|o| o == "/9000/149"), "{objects:?}");
    let body: usize = objects.iter().map(|o| o.len() + 3).sum();
    assert!(body > 1232, "{body} bytes of links");
    // Every datagram fits the MTU, so the body went as several Block1 requests.
    let largest = r.captured.iter().map(Vec::len).max().unwrap();
    assert!(largest <= 1232, "a {largest}-byte datagram");
}

#[test]
fn est_mode_enrolls_after_finish_and_registers_with_the_certificate() {
    let mut r = rig(
        Setup::PskToEst,
        Duration::from_secs(30 * 86_400),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered(), "events: {:?}", r.events);
    let est: Vec<&EstEvent> = r
        .bs_events
        .iter()
        .filter_map(|(_, e)| match e {
            BootstrapEvent::Est { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    assert!(matches!(est[0], EstEvent::CaCerts { .. }), "{est:?}");
    assert!(
        matches!(
            est[1],
            EstEvent::Enrolled {
                reenroll: false,
                ..
            }
        ),
        "{est:?}"
    );
    let state = r.client.est_state();
    let cert = state.certificate.as_ref().expect("enrolled");
    assert_eq!(cert.subject_common_name(), Some(EP));
    assert!(cert.matches_key(state.key.as_ref().unwrap()));
    assert_eq!(state.cacerts.len(), 1);
    assert_eq!(
        state.provisioned_at.map(|t| t.unix_seconds() / 60),
        Some(EPOCH.unix_seconds() / 60)
    );
    // The management server saw a certificate issued by the EST CA.
    let mut trust = TrustStore::new();
    trust.add(r.pki.ca.certificate().clone());
    assert!(trust
        .verify_chain(std::slice::from_ref(cert), r.now.utc)
        .is_ok());
    assert_eq!(
        r.client
            .next_reenrollment()
            .map(|t| t.unix_seconds() - EPOCH.unix_seconds()),
        // 30-day certificate, defaults: max(0.9 × 30 d, 30 d − 30 d) = 27 d.
        Some(27 * 86_400)
    );
}

#[test]
fn ninety_days_of_reenrollments_keep_the_device_registered() {
    // One-day certificates renewed at half-life: two /sren a day. 90 days of virtual time
    // (180 renewals, each a DTLS handshake and a Register) keep the test fast in debug
    // builds; a one-day registration lifetime keeps Updates out of the way.
    let reenroll = ReenrollConfig {
        nominal_usage: 0.5,
        max_margin: None,
        ..ReenrollConfig::default()
    };
    let mut r = rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(86_400),
        reenroll,
        86_400,
    );
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered());
    let days: u64 = std::env::var("EST_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    r.run_until(Duration::from_secs(days * 86_400), |_| false);
    let renewals = r.count(|e| {
        matches!(
            e,
            Event::EstEnrolled {
                reenrollment: true,
                ..
            }
        )
    });
    assert!(
        renewals as u64 >= 2 * days - 2,
        "{renewals} re-enrollments in {days} days: {:?}",
        r.events.iter().rev().take(10).collect::<Vec<_>>()
    );
    assert_eq!(r.count(|e| matches!(e, Event::EstFailed { .. })), 0);
    // Never without a valid certificate, never bootstrapped again.
    let state = r.client.est_state();
    assert!(state.certificate.as_ref().unwrap().is_valid_at(r.now.utc));
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 1);
    // Re-registered after each re-enrollment (a new handshake with the new certificate).
    let registrations = r
        .lw_events
        .iter()
        .filter(|(_, e)| matches!(e, ServerEvent::Registered { .. }))
        .count();
    assert!(registrations >= renewals, "{registrations} registrations");
    eprintln!(
        "{days} days: {renewals} re-enrollments, {registrations} registrations, \
         client datagrams bootstrap={} management={}",
        r.sent[0], r.sent[1]
    );
}

#[test]
fn silent_bootstrap_server_gets_retries_with_growing_intervals() {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    r.bs_silent = true;
    start(&mut r);
    r.run_until(Duration::from_secs(86_400), |_| false);
    let failures: Vec<Duration> = r
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::BootstrapFailed { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert!(failures.len() >= 5, "{failures:?}");
    let gaps: Vec<u64> = failures
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    // Each gap is the back-off (30 s doubling to 1 h) plus the time the attempt took to
    // time out, which varies by up to ACK_RANDOM_FACTOR's spread (31 s): so the gaps grow up
    // to the cap, within that jitter, and never fall below an hour once there.
    assert!(
        gaps.windows(2).all(|w| w[1] + 31 >= w[0]),
        "gaps grow: {gaps:?}"
    );
    assert!(gaps[0] >= 30 && gaps[0] < 30 + 93, "{gaps:?}");
    assert!(gaps.iter().rev().take(3).all(|g| *g >= 3600), "{gaps:?}");
    // Bound: per attempt at most 1 + MAX_RETRANSMIT datagrams; attempts are at least 30 s
    // apart, doubling to one hour: at most 5 + 24 + ... over a day — fewer than 200.
    assert!(r.sent[0] < 200, "{} datagrams in a day", r.sent[0]);
    assert!(!r.registered());
    eprintln!(
        "silent bootstrap server: {} attempts, {} datagrams in one day, gaps {gaps:?}",
        failures.len(),
        r.sent[0]
    );
}

#[test]
fn inconsistent_configuration_is_refused_at_finish_and_not_used() {
    let mut r = rig(
        Setup::PskToPsk,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    // A PSK account without its key: the client must answer Finish with 4.06.
    let mut bad = ProvisionedAccount::nosec(&format!("coaps://{LW_ADDR}"), 7, 120);
    bad.mode = SecurityMode::Psk;
    bad.identity = EP.as_bytes().to_vec();
    r.bs.provision(EP, Provisioning::accounts(&[bad]));
    start(&mut r);
    r.run_until(Duration::from_secs(600), |_| false);
    let finish: Vec<&String> = r
        .bs_events
        .iter()
        .filter_map(|(_, e)| match e {
            BootstrapEvent::Step { op, code, .. } if op == "finish" => Some(code),
            _ => None,
        })
        .collect();
    assert!(
        !finish.is_empty() && finish.iter().all(|c| *c == "4.06"),
        "{finish:?}"
    );
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 0);
    assert!(!r.registered());
    assert!(r.sent[1] == 0, "nothing sent to the management server");
}

#[test]
fn unreachable_management_server_leads_back_to_bootstrap_with_bounded_traffic() {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    r.lw_silent = true;
    start(&mut r);
    r.run_until(Duration::from_secs(86_400), |_| false);
    let bootstraps = r.count(|e| *e == Event::BootstrapFinished);
    assert!(bootstraps >= 2, "fell back to bootstrap: {bootstraps}");
    // Bound: a round is one bootstrap (≤ 5 datagrams) and 5 failed Registers (≤ 5 datagrams
    // each; with the default retry resources each fails ≥ 62 s after it began and they are
    // 60 + 120 + 240 + 480 s apart, so a round lasts ≥ 1210 s), and the k-th fall-back
    // waits 60 s · 2^(k−1), capped at 1 h. The first 7 rounds take ≥ 7 × 1210 + 3780 s;
    // over a day that leaves at most 7 + (86400 − 12250) / (1210 + 3600) < 23 rounds; 23 ×
    // 30 = 690 datagrams.
    let total = r.sent[0] + r.sent[1];
    assert!(total <= 690, "{total} datagrams in a day");
    eprintln!(
        "unreachable management server: {bootstraps} bootstraps, {} + {} datagrams in a day",
        r.sent[0], r.sent[1]
    );
}

#[test]
fn a_year_of_30_day_certificates_renews_every_27_days_on_time() {
    let mut r = rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(30 * 86_400),
        ReenrollConfig::default(),
        86_400,
    );
    r.capture = true;
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered());
    let mut keys = vec![r.client.est_state().key.clone().unwrap()];
    let mut due = r.client.next_reenrollment().unwrap();
    let mut late = Vec::new();
    let mut renewals = 0;
    // Step through the year one scheduled renewal at a time, checking that a working
    // credential exists at every step and that each renewal happens on time.
    while r.elapsed() < Duration::from_secs(365 * 86_400) {
        let target = Duration::from_millis((due.unix_millis() - EPOCH.unix_millis()) as u64)
            + Duration::from_secs(60);
        let before = r.count(|e| {
            matches!(
                e,
                Event::EstEnrolled {
                    reenrollment: true,
                    ..
                }
            )
        });
        r.run_until(target.min(Duration::from_secs(365 * 86_400)), |_| false);
        let state = r.client.est_state();
        assert!(state.certificate.as_ref().unwrap().is_valid_at(r.now.utc));
        let after = r.count(|e| {
            matches!(
                e,
                Event::EstEnrolled {
                    reenrollment: true,
                    ..
                }
            )
        });
        if after > before {
            renewals += 1;
            let at = state.provisioned_at.unwrap();
            late.push(at.unix_millis() - due.unix_millis());
            keys.push(state.key.clone().unwrap());
            due = r.client.next_reenrollment().unwrap();
        }
    }
    assert_eq!(renewals, 13, "renewals in a year");
    assert!(
        late.iter().all(|ms| (0..1000).contains(ms)),
        "lateness (ms): {late:?}"
    );
    // No rekey by default: the same key throughout.
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    // No byte string of the private key ever appears in what the client sent.
    let secret = keys[0].to_sec1_der();
    r.assert_no_datagram_carries_key(secret.expose());
    eprintln!(
        "one year of 30-day certificates: {renewals} renewals, lateness {late:?} ms, {} datagrams scanned",
        r.captured.len()
    );
}

/// The answer code of the management server's operation `op`.
fn op_code(r: &Rig, op: estuary_testserver::lwm2m_server::OpId) -> Option<String> {
    r.lw_events.iter().find_map(|(_, e)| match e {
        ServerEvent::OpFinished {
            op: o,
            result: Ok(res),
            ..
        } if *o == op => Some(res.code.clone()),
        _ => None,
    })
}

fn execute(r: &mut Rig, path: &str) -> estuary_testserver::lwm2m_server::OpId {
    use estuary_testserver::lwm2m_server::{OpMethod, OpRequest};
    let req = OpRequest {
        method: OpMethod::Post,
        ..OpRequest::get(path)
    };
    let op = r.lw.request(r.now, EP, req).unwrap();
    r.pump();
    op
}

#[test]
fn bootstrap_request_trigger_bootstraps_again_and_registers_with_the_new_configuration() {
    for setup in [Setup::NoSecToNoSec, Setup::PskToPsk] {
        let mut r = rig(setup, Duration::from_secs(3600), ReenrollConfig::default());
        start(&mut r);
        r.run_until(Duration::from_secs(60), Rig::registered);
        assert!(r.registered(), "{setup:?}: {:?}", r.events);
        assert_eq!(r.bootstrap_requests(), 1);
        // The second provisioning gives a different lifetime, so "registers again with what
        // it was given" is visible in the new Register.
        r.bs.provision(
            EP,
            Provisioning::accounts(&[{
                let mut a = ProvisionedAccount::nosec(
                    &format!(
                        "{}://{LW_ADDR}",
                        if setup == Setup::NoSecToNoSec {
                            "coap"
                        } else {
                            "coaps"
                        }
                    ),
                    7,
                    300,
                );
                if setup == Setup::PskToPsk {
                    a.mode = SecurityMode::Psk;
                    a.identity = EP.as_bytes().to_vec();
                    a.secret_key = PSK_KEY.to_vec();
                }
                a
            }]),
        );
        let op = execute(&mut r, "/1/0/9");
        let t0 = r.elapsed();
        let until = t0 + Duration::from_secs(60);
        r.run_until(until, |r| r.registrations() >= 2);
        assert_eq!(op_code(&r, op).as_deref(), Some("2.04"), "{setup:?}");
        assert_eq!(r.bootstrap_requests(), 2, "{setup:?}: {:?}", r.bs_events);
        assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 2);
        let regs: Vec<u32> = r
            .lw_events
            .iter()
            .filter_map(|(_, e)| match e {
                ServerEvent::Registered { lifetime, .. } => Some(*lifetime),
                _ => None,
            })
            .collect();
        assert_eq!(regs, vec![120, 300], "{setup:?}");
        assert_eq!(
            r.client.data_model().server.by_ssid(7).map(|s| s.lifetime),
            Some(300)
        );
        // The Bootstrap-Request followed the 2.04 at once (no hold-off: the trigger asks
        // for it now), and the new registration came within a few round trips.
        let second_request = r
            .bs_events
            .iter()
            .filter(|(_, e)| matches!(e, BootstrapEvent::Requested { .. }))
            .nth(1)
            .map(|(t, _)| *t)
            .unwrap();
        assert!(second_request - t0 < Duration::from_secs(1), "{setup:?}");
        assert!(r.client.is_registered());
    }
}

#[test]
fn bootstrap_request_trigger_without_a_bootstrap_account_is_refused_and_changes_nothing() {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    // A factory-configured client: one management account, no Bootstrap-Server account.
    let mut client = Client::new(ClientConfig::new(EP), Box::new(SeededRng::new(3))).unwrap();
    let dm = client.data_model_mut();
    dm.security
        .insert(1, SecurityInstance::nosec(&format!("coap://{LW_ADDR}"), 7))
        .unwrap();
    dm.server
        .insert(0, estuary::dm::objects::ServerInstance::new(7, 120))
        .unwrap();
    r.client = client;
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    assert!(r.registered());
    let before = format!(
        "{:?} {:?}",
        r.client.data_model().security.iter().collect::<Vec<_>>(),
        r.client.data_model().server.iter().collect::<Vec<_>>()
    );
    let events_before = r.events.len();
    let sent_before = r.sent;
    let op = execute(&mut r, "/1/0/9");
    r.run_until(r.elapsed() + Duration::from_secs(30), |_| false);
    // 4.05: the request is well-formed and the resource exists, but the operation is not
    // available on a device without a bootstrap account (4.00 would blame the request).
    assert_eq!(op_code(&r, op).as_deref(), Some("4.05"));
    let after = format!(
        "{:?} {:?}",
        r.client.data_model().security.iter().collect::<Vec<_>>(),
        r.client.data_model().server.iter().collect::<Vec<_>>()
    );
    assert_eq!(before, after);
    assert_eq!(
        r.events.len(),
        events_before,
        "{:?}",
        &r.events[events_before..]
    );
    assert_eq!(
        r.sent[0], sent_before[0],
        "nothing sent to a Bootstrap-Server"
    );
    // Only the 4.05 went out to the management server.
    assert_eq!(r.sent[1], sent_before[1] + 1);
    assert_eq!(r.bootstrap_requests(), 0);
    assert_eq!(r.registrations(), 1);
    assert!(r.client.is_registered());
}

/// Replaces the rig's client by one with the same bootstrap account whose CoAP timeouts have
/// no random spread (ACK_RANDOM_FACTOR 1): a Register to a silent server then fails exactly
/// 2 + 4 + 8 + 16 + 32 = 62 s after it was first sent, so retry times are exact.
fn deterministic_client(r: &mut Rig) {
    let mut cfg = ClientConfig::new(EP);
    cfg.udp_tx_params = TxParams {
        ack_random_factor: 1.0,
        ..TxParams::default()
    };
    let mut c = Client::new(cfg, Box::new(SeededRng::new(3))).unwrap();
    let accounts: Vec<(u16, SecurityInstance)> = r
        .client
        .data_model()
        .security
        .iter()
        .map(|(i, s)| (i, s.clone()))
        .collect();
    for (i, s) in accounts {
        c.data_model_mut().security.insert(i, s).unwrap();
    }
    r.client = c;
}

/// Time from a Register's first transmission to its failure when nothing answers.
const EXCHANGE_FAILS_AFTER: u64 = 62;

/// The retry resources as the test configures them (seconds and counts).
#[derive(Clone, Copy, Debug)]
struct Retry {
    count: u64,
    timer: u64,
    sequences: u64,
    sequence_delay: u64,
    bootstrap_on_failure: bool,
}

/// When each Register fails (seconds from the start) if the management server never
/// answers and bootstrap itself takes no time: the specification's schedule, written out
/// independently of the client. After the last sequence the client either falls back to
/// bootstrap (waiting 60 s doubling to 1 h per fall-back in a row) or starts the next
/// sequence after the sequence delay.
fn expected_failures(p: Retry, until: u64) -> (Vec<u64>, usize) {
    let mut out = Vec::new();
    let mut bootstraps = 1;
    let mut fallbacks = 0u32;
    let mut start = 0u64;
    loop {
        for seq in 0..p.sequences {
            for a in 0..p.count {
                let failed = start + EXCHANGE_FAILS_AFTER;
                if failed > until {
                    return (out, bootstraps);
                }
                out.push(failed);
                let wait = if a + 1 < p.count {
                    p.timer << a
                } else if seq + 1 < p.sequences || !p.bootstrap_on_failure {
                    p.sequence_delay
                } else {
                    let w = (60u64 << fallbacks.min(6)).min(3600);
                    fallbacks += 1;
                    if failed + w <= until {
                        bootstraps += 1;
                    }
                    w
                };
                start = failed + wait;
            }
        }
    }
}

fn failure_times(r: &Rig) -> Vec<u64> {
    r.events
        .iter()
        .filter(|(_, e)| matches!(e, Event::RegistrationFailed { .. }))
        .map(|(t, _)| {
            assert_eq!(t.subsec_millis(), 0, "failure at {t:?}");
            t.as_secs()
        })
        .collect()
}

/// Bootstrap-Server provisioning of the NoSec account with extra Server resources.
fn provision_with_server_resources(r: &mut Rig, extra: &[(u16, estuary::dm::Value)]) {
    use estuary::dm::tlv::{self, Tlv, TlvType};
    use estuary_testserver::bootstrap_server::BootstrapOp;
    let a = ProvisionedAccount::nosec(&format!("coap://{LW_ADDR}"), 7, 120);
    let mut p = Provisioning::accounts(&[a]);
    let extra: Vec<Tlv> = extra
        .iter()
        .map(|(rid, v)| Tlv::value(TlvType::Resource, *rid, v))
        .collect();
    for op in &mut p.ops {
        if let BootstrapOp::Write { path, payload, .. } = op {
            if path == "/1/0" {
                payload.extend(tlv::encode(&extra));
            }
        }
    }
    r.bs.provision(EP, p);
}

/// A day with a silent management server whose Server instance has the `extra` resources
/// (none: the defaults): the failed Registers come exactly when `spec` says (the schedule
/// written out by [`expected_failures`]), and so do the fall-backs to bootstrap. Returns the
/// rig, the failure times and the number of bootstraps.
fn silent_day(extra: &[(u16, estuary::dm::Value)], spec: Retry) -> (Rig, Vec<u64>, usize) {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    if !extra.is_empty() {
        provision_with_server_resources(&mut r, extra);
    }
    deterministic_client(&mut r);
    r.lw_silent = true;
    start(&mut r);
    r.run_until(Duration::from_secs(86_400), |_| false);
    let (expected, bootstraps) = expected_failures(spec, 86_400);
    assert_eq!(failure_times(&r), expected);
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), bootstraps);
    // Each failed Register is 5 datagrams (1 + MAX_RETRANSMIT); at most one is cut off by
    // the end of the day.
    assert!(
        r.sent[1] <= 5 * (expected.len() as u64 + 1),
        "{}",
        r.sent[1]
    );
    eprintln!(
        "{spec:?}, silent management server, one day: {} failed Registers, {bootstraps} \
         bootstraps, {} + {} datagrams",
        expected.len(),
        r.sent[0],
        r.sent[1]
    );
    (r, expected, bootstraps)
}

#[test]
fn default_retry_resources_give_the_specified_schedule_over_a_day() {
    // LwM2M 1.1 defaults: 5 attempts, 60 s doubling, 1 sequence, then bootstrap.
    let spec = Retry {
        count: 5,
        timer: 60,
        sequences: 1,
        sequence_delay: 86_400,
        bootstrap_on_failure: true,
    };
    let (r, expected, bootstraps) = silent_day(&[], spec);
    assert_eq!(&expected[..6], &[62, 184, 366, 668, 1210, 1332]);
    // Each bootstrap is 5 datagrams (Request and 4 answers).
    assert!(r.sent[0] <= 5 * bootstraps as u64, "{}", r.sent[0]);
    assert!(r.sent[0] + r.sent[1] <= 700);
}

#[test]
fn configured_retry_resources_give_their_schedule_over_a_day() {
    use estuary::dm::Value;
    let spec = Retry {
        count: 2,
        timer: 10,
        sequences: 2,
        sequence_delay: 60,
        bootstrap_on_failure: true,
    };
    let extra = [
        (17, Value::Unsigned(2)),
        (18, Value::Unsigned(10)),
        (19, Value::Unsigned(60)),
        (20, Value::Unsigned(2)),
    ];
    let (r, expected, _) = silent_day(&extra, spec);
    let srv = r.client.data_model().server.by_ssid(7).unwrap().clone();
    assert_eq!(srv.communication_retry_count, Some(2));
    assert_eq!(srv.communication_sequence_retry_count, Some(2));
    // Attempt, +10 s, attempt; 60 s; attempt, +10 s, attempt; fall back after 60 s.
    assert_eq!(&expected[..5], &[62, 134, 256, 328, 450]);
    assert!(r.sent[0] + r.sent[1] <= 1600);
}

#[test]
fn without_bootstrap_on_registration_failure_sequences_continue_and_no_bootstrap_follows() {
    use estuary::dm::Value;
    let spec = Retry {
        count: 3,
        timer: 30,
        sequences: 1,
        sequence_delay: 3600,
        bootstrap_on_failure: false,
    };
    let extra = [
        (16, Value::Boolean(false)),
        (17, Value::Unsigned(3)),
        (18, Value::Unsigned(30)),
        (19, Value::Unsigned(3600)),
    ];
    let (_, expected, bootstraps) = silent_day(&extra, spec);
    assert_eq!(bootstraps, 1);
    // 3 Registers per hour and a bit: 24 sequences at most.
    assert!(expected.len() <= 3 * 24, "{}", expected.len());
}

#[test]
fn certificate_bootstrap_then_certificate_register() {
    let mut r = rig(
        Setup::CertToCert,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    let serial = |i: &Option<Issued>| i.as_ref().unwrap().cert.serial_hex();
    let (factory, management) = (serial(&r.factory_cert), serial(&r.management_cert));
    assert_ne!(factory, management);
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    // The rig records who each DTLS listener saw while its session was up.
    let bs_peer = r.peer_serials(true).first().cloned();
    let lw_peer = r.peer_serials(false).first().cloned();
    assert!(r.registered(), "events: {:?}", r.events);
    assert_eq!(r.count(|e| *e == Event::BootstrapFinished), 1);
    // The bootstrap connection authenticated with the factory certificate, the management
    // connection with the certificate the Bootstrap-Server wrote.
    assert_eq!(bs_peer.as_deref(), Some(factory.as_str()));
    assert_eq!(lw_peer.as_deref(), Some(management.as_str()));
    let dm = r.client.data_model();
    let (_, acc) = dm
        .security
        .management_accounts()
        .find(|(_, s)| s.ssid == Some(7))
        .unwrap();
    assert_eq!(acc.security_mode, SecurityMode::Certificate);
    assert!(r.count(|e| matches!(e, Event::SecureConnectionEstablished { ssid: 7, .. })) == 1);
    assert_eq!(r.count(|e| matches!(e, Event::EstEnrolled { .. })), 0);
}

/// The steps the Bootstrap-Server saw after `skip` of them: (operation, code, payload).
fn steps_after(r: &Rig, skip: usize) -> Vec<(String, String, Vec<u8>)> {
    r.bs_events
        .iter()
        .filter_map(|(_, e)| match e {
            BootstrapEvent::Step {
                op, code, payload, ..
            } => Some((op.clone(), code.clone(), payload.clone())),
            _ => None,
        })
        .skip(skip)
        .collect()
}

fn step_count(r: &Rig) -> usize {
    steps_after(r, 0).len()
}

#[test]
fn bootstrap_discover_read_and_delete_through_the_test_server() {
    use estuary::dm::tlv::{self, TlvType};
    use estuary::dm::Value;
    use estuary_testserver::bootstrap_server::BootstrapOp;
    let mut r = registered_nosec();
    // The second bootstrap looks before it deletes, and again after.
    let account = ProvisionedAccount::nosec(&format!("coap://{LW_ADDR}"), 7, 120);
    let mut ops = vec![
        BootstrapOp::Discover("/".into()),
        BootstrapOp::Read("/1".into()),
        BootstrapOp::Delete("/".into()),
        BootstrapOp::Discover("/".into()),
    ];
    ops.extend(Provisioning::accounts(&[account]).ops.into_iter().skip(1));
    r.bs.provision(EP, Provisioning { ops });
    let skip = step_count(&r);
    execute(&mut r, "/1/0/9");
    let until = r.elapsed() + Duration::from_secs(60);
    r.run_until(until, |r| r.registrations() >= 2);
    assert_eq!(r.registrations(), 2);
    let steps = steps_after(&r, skip);
    let summary: Vec<String> = steps.iter().map(|(o, c, _)| format!("{o} {c}")).collect();
    assert_eq!(
        summary,
        [
            "discover / 2.05",
            "read /1 2.05",
            "delete / 2.02",
            "discover / 2.05",
            "write /0/1 2.04",
            "write /1/0 2.04",
            "finish 2.04"
        ]
    );
    // Bootstrap-Discover (LwM2M 1.1 TS §5.2.7.3): the enabler version on "/", `ssid` and
    // `uri` on Security instances (none on the bootstrap account), `ssid` on Server
    // instances, `ver` on objects whose version is not 1.0.
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    assert_eq!(
        text(&steps[0].2),
        format!(
            "</>;lwm2m=1.1,</0/0>;uri=\"coap://{BS_ADDR}\",\
             </0/1>;ssid=7;uri=\"coap://{LW_ADDR}\",</1>;ver=1.1,</1/0>;ssid=7,</3/0>"
        )
    );
    // Bootstrap-Read of /1 (TLV): instance 0 with its SSID, lifetime, notification storing
    // and binding; nothing else is set.
    let read = tlv::decode(&steps[1].2).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].ty, read[0].id), (TlvType::ObjectInstance, 0));
    let tlv::TlvBody::Children(children) = &read[0].body else {
        panic!("instance TLV without resources: {read:?}");
    };
    let res: Vec<(u16, Value)> = children
        .iter()
        .map(|t| {
            let kind = estuary::dm::objects::ServerObject::resource_kind(t.id).unwrap();
            let tlv::TlvBody::Value(b) = &t.body else {
                panic!("nested resource {t:?}");
            };
            (t.id, tlv::decode_value(kind, b).unwrap())
        })
        .collect();
    assert_eq!(
        res,
        vec![
            (0, Value::Integer(7)),
            (1, Value::Integer(120)),
            (6, Value::Boolean(false)),
            (7, Value::String("U".into())),
        ]
    );
    // Bootstrap-Delete of "/" kept the bootstrap account and /3/0, and nothing else.
    assert_eq!(
        text(&steps[3].2),
        format!("</>;lwm2m=1.1,</0/0>;uri=\"coap://{BS_ADDR}\",</1>;ver=1.1,</3/0>")
    );
}

/// The client's configuration as it would be persisted, plus every field of the two
/// objects (some are not persisted yet).
fn configuration(r: &Rig) -> (Vec<u8>, Vec<u8>, String) {
    use estuary::persist::objects::{security_persist, server_persist};
    let dm = r.client.data_model();
    (
        security_persist(&dm.security).unwrap(),
        server_persist(&dm.server).unwrap(),
        format!(
            "{:?} {:?}",
            dm.security.iter().collect::<Vec<_>>(),
            dm.server.iter().collect::<Vec<_>>()
        ),
    )
}

#[test]
fn bad_bootstrap_writes_through_the_test_server_get_4xx_and_change_nothing() {
    use estuary::coap::content_format as cf;
    use estuary::dm::tlv::{self, Tlv, TlvType};
    use estuary::dm::Value;
    use estuary_testserver::bootstrap_server::BootstrapOp;
    let mut r = registered_nosec();
    let before = configuration(&r);
    let good = ProvisionedAccount::nosec(&format!("coap://{LW_ADDR}"), 7, 120);
    let res = |rid, v: Value| Tlv::value(TlvType::Resource, rid, &v);
    let write = |path: &str, content_format, payload: Vec<u8>| BootstrapOp::Write {
        path: path.into(),
        content_format,
        payload,
    };
    let cases: Vec<(&str, BootstrapOp, &str)> = vec![
        (
            "lifetime as text that is not a number",
            write("/1/0/1", cf::TEXT_PLAIN, b"soon".to_vec()),
            "4.00",
        ),
        (
            "binding as an integer",
            write(
                "/1/0",
                cf::LWM2M_TLV,
                tlv::encode(&[res(7, Value::Integer(1))]),
            ),
            "4.00",
        ),
        (
            "security mode out of range",
            write("/0/1/2", cf::TEXT_PLAIN, b"9".to_vec()),
            "4.00",
        ),
        (
            "an object the client does not have",
            write("/4242/0", cf::LWM2M_TLV, good.server_tlv()),
            "4.04",
        ),
        (
            "a 70 KiB certificate",
            write(
                "/0/1",
                cf::LWM2M_TLV,
                tlv::encode(&[res(3, Value::Opaque(vec![0x30; 70 * 1024]))]),
            ),
            // Refused by block-wise reassembly before it reaches the data model.
            "4.13",
        ),
        (
            "a Security instance with an invalid URI",
            write("/0/2", cf::LWM2M_TLV, {
                let mut a = ProvisionedAccount::nosec("http://127.0.0.1:5683", 8, 60);
                a.security_iid = 2;
                a.security_tlv()
            }),
            "4.00",
        ),
        (
            "a Server instance without a lifetime",
            write("/1/1/0", cf::TEXT_PLAIN, b"8".to_vec()),
            "4.00",
        ),
        (
            "a retry count of 0",
            write(
                "/1/0",
                cf::LWM2M_TLV,
                tlv::encode(&[res(17, Value::Unsigned(0))]),
            ),
            "4.00",
        ),
    ];
    for (what, op, want) in cases {
        r.bs.provision(EP, Provisioning { ops: vec![op] });
        let skip = step_count(&r);
        r.client.schedule_bootstrap_request(r.now).unwrap();
        let until = r.elapsed() + Duration::from_secs(30);
        r.run_until(until, |r| step_count(r) > skip);
        let steps = steps_after(&r, skip);
        assert_eq!(steps.len(), 1, "{what}: {steps:?}");
        assert!(steps[0].1.starts_with(want), "{what}: {}", steps[0].1);
        assert_eq!(
            configuration(&r),
            before,
            "{what} changed the configuration"
        );
        eprintln!("{what}: {}", steps[0].1);
    }
    // The configuration still works: a good bootstrap registers with it again.
    r.bs.provision(EP, Provisioning::accounts(&[good]));
    r.client.schedule_bootstrap_request(r.now).unwrap();
    let until = r.elapsed() + Duration::from_secs(60);
    r.run_until(until, |r| r.registrations() >= 2);
    assert_eq!(r.registrations(), 2);
    assert_eq!(configuration(&r), before);
}
