//! DTLS through the simulator: PSK and Certificate mode handshakes on the virtual clock, then
//! Register and Read over the secure link, clean and with 30 % loss; and the refusals (wrong
//! PSK, unknown identity, server certificate expired / not yet valid / untrusted / for another
//! name, client certificate not trusted), each reported with its reason and leaving the
//! server without a registration.

use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::Duration;

use estuary::coap::code;
use estuary::crypto::{Drbg, SecretBytes, TrustStore};
use estuary::dm::objects::SecurityInstance;
use estuary::dtls::HandshakeTimers;
use estuary::time::UtcTime;
use estuary::Event;
use estuary_testserver::coaps::{PeerAuth, SecureEvent, SecureListenerConfig};
use estuary_testserver::pki::{Issued, TestPki};
use estuary_testserver::sim::{Direction, LinkConfig, Sim, SimConfig, SIM_EPOCH_UTC};

const URI: &str = "coaps://127.0.0.1:5684";
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
const PSK_ID: &[u8] = b"sim-client";
const PSK_KEY: &[u8] = &[0x11; 16];

/// Warnings logged, with the thread that logged them (tests run in parallel threads; each
/// simulation runs in its test's thread).
static WARNINGS: Mutex<Vec<(ThreadId, String)>> = Mutex::new(Vec::new());

struct CaptureWarnings;

impl log::Log for CaptureWarnings {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{}", r.args());
            if let Ok(mut w) = WARNINGS.lock() {
                w.push((std::thread::current().id(), line));
            }
        }
    }

    fn flush(&self) {}
}

fn capture_warnings() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = log::set_logger(&CaptureWarnings);
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// The warnings this test's thread logged.
fn my_warnings() -> Vec<String> {
    let me = std::thread::current().id();
    WARNINGS
        .lock()
        .map(|w| {
            w.iter()
                .filter(|(t, _)| *t == me)
                .map(|(_, l)| l.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn at(offset_s: i64) -> UtcTime {
    UtcTime::from_unix_seconds(SIM_EPOCH_UTC.unix_seconds() + offset_s)
}

fn psk_server(entries: &[(&[u8], &[u8])]) -> SecureListenerConfig {
    SecureListenerConfig {
        psk: entries
            .iter()
            .map(|(id, key)| (id.to_vec(), SecretBytes::new(key.to_vec())))
            .collect(),
        ..Default::default()
    }
}

fn psk_sim(seed: u64, id: &[u8], key: &[u8], server: SecureListenerConfig) -> Sim {
    Sim::new(SimConfig::new(seed).with_dtls(SecurityInstance::psk(URI, 1, id, key), server))
}

/// Credentials for a certificate-mode simulation.
struct Pki {
    pki: TestPki,
    client: Issued,
}

fn pki(seed: u64, from: i64, to: i64) -> Pki {
    let mut rng = Drbg::from_seed(seed);
    let pki = TestPki::generate(&mut rng, at(from), at(to)).unwrap();
    let client = pki
        .issue_client("sim-client", at(-DAY), at(365 * DAY), &mut rng)
        .unwrap();
    Pki { pki, client }
}

fn cert_server(p: &Pki, client_cas: TrustStore) -> SecureListenerConfig {
    SecureListenerConfig {
        certificate: Some((p.pki.server_chain(), p.pki.server_key.clone(), client_cas)),
        ..Default::default()
    }
}

fn ca_store(p: &Pki) -> TrustStore {
    let mut t = TrustStore::new();
    t.add(p.pki.ca.certificate().clone());
    t
}

/// Certificate Usage 2 with the CA as /0/x/4, or 3 (absent) with the server's certificate.
fn cert_instance(p: &Pki, usage: Option<u8>) -> SecurityInstance {
    let given = match usage {
        Some(2) | Some(0) => p.pki.ca.certificate().der().to_vec(),
        _ => p.pki.server_cert.der().to_vec(),
    };
    let mut inst = SecurityInstance::certificate(
        URI,
        1,
        p.client.cert.der(),
        p.client.key.to_der().expose(),
        &given,
    );
    inst.certificate_usage = usage;
    inst
}

fn cert_sim(seed: u64, p: &Pki, inst: SecurityInstance) -> Sim {
    let server = cert_server(p, ca_store(p));
    Sim::new(SimConfig::new(seed).with_dtls(inst, server))
}

fn read_device_manufacturer(sim: &mut Sim, limit: Duration) {
    let op = sim.read("/3/0/0", None).unwrap();
    let r = sim.run_until_op(op, limit).expect("read finished");
    let r = r.expect("read succeeded");
    assert_eq!(r.code, code::to_string(code::CONTENT), "{r:?}");
}

fn established(sim: &Sim) -> Vec<PeerAuth> {
    sim.secure_events()
        .iter()
        .filter_map(|e| match &e.event {
            SecureEvent::Established { auth, .. } => Some(auth.clone()),
            _ => None,
        })
        .collect()
}

fn client_failures(sim: &Sim) -> Vec<String> {
    sim.client_events()
        .iter()
        .filter_map(|e| match &e.event {
            Event::SecureConnectionFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn psk_handshake_then_register_and_read_on_a_clean_link() {
    let mut sim = psk_sim(1, PSK_ID, PSK_KEY, psk_server(&[(PSK_ID, PSK_KEY)]));
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(10)));
    // Six flights of a cookie exchange and full handshake plus Register, 10 ms each way.
    assert!(
        sim.elapsed() <= Duration::from_millis(100),
        "{:?}",
        sim.elapsed()
    );
    // Four round trips of 20 ms: cookie exchange, PSK handshake (two flights each way),
    // Register; one datagram per flight each way.
    assert_eq!(sim.elapsed(), Duration::from_millis(80));
    assert_eq!(
        (
            sim.stats(Direction::ClientToServer).sent,
            sim.stats(Direction::ServerToClient).sent
        ),
        (4, 4)
    );
    assert_eq!(
        established(&sim),
        vec![PeerAuth::Psk {
            identity: "sim-client".into()
        }]
    );
    assert!(sim.client_events().iter().any(|e| matches!(
        &e.event,
        Event::SecureConnectionEstablished { cipher_suite, .. }
            if cipher_suite == "TLS_PSK_WITH_AES_128_CCM_8"
    )));
    assert!(sim.server().registration("sim-client").is_some());
    read_device_manufacturer(&mut sim, Duration::from_secs(5));
    // De-register, then close_notify: the last datagram up is a DTLS alert record.
    sim.shutdown_client();
    assert!(sim.run_until(|s| s.client().is_shut_down(), Duration::from_secs(10)));
    sim.run_for(Duration::from_secs(1));
    assert!(sim.server().registration("sim-client").is_none());
    assert_eq!(
        sim.sent(Direction::ClientToServer).last().unwrap().data[0],
        21
    );
    // Nothing on the wire is plaintext CoAP: every datagram is a DTLS record
    // (content types 20..=23, version 0xFEFD or 0xFEFF).
    for c in sim.capture() {
        assert!(
            (20..=23).contains(&c.data[0]) && c.data[1] == 0xFE,
            "{:02x?}",
            &c.data[..3]
        );
    }
}

#[test]
fn certificate_handshake_then_register_and_read_on_a_clean_link() {
    let p = pki(2, -DAY, 365 * DAY);
    for usage in [None, Some(2), Some(0)] {
        let mut sim = cert_sim(2, &p, cert_instance(&p, usage));
        sim.start().unwrap();
        assert!(
            sim.run_until_registered(Duration::from_secs(10)),
            "usage {usage:?}: {:?}",
            client_failures(&sim)
        );
        // Four round trips; the server's flight with its certificate chain, key exchange
        // and certificate request takes one datagram more than PSK's.
        assert_eq!(sim.elapsed(), Duration::from_millis(80));
        let up = sim.stats(Direction::ClientToServer).sent;
        let down = sim.stats(Direction::ServerToClient).sent;
        assert_eq!((up, down), (4, 5), "usage {usage:?}");
        assert_eq!(
            established(&sim),
            vec![PeerAuth::Certificate {
                subject: "CN=sim-client".into(),
                not_after: at(365 * DAY).unix_seconds(),
            }]
        );
        read_device_manufacturer(&mut sim, Duration::from_secs(5));
    }
}

/// in_buffer_size bounds CoAP messages, not DTLS records: a client with 300-byte buffers
/// still takes the server's certificate flight (larger datagrams) and registers.
#[test]
fn small_coap_buffers_do_not_limit_the_handshake() {
    let p = pki(23, -DAY, 365 * DAY);
    let mut cfg =
        SimConfig::new(23).with_dtls(cert_instance(&p, None), cert_server(&p, ca_store(&p)));
    cfg.client.in_buffer_size = 300;
    let mut sim = Sim::new(cfg);
    sim.start().unwrap();
    assert!(
        sim.run_until_registered(Duration::from_secs(10)),
        "{:?}",
        client_failures(&sim)
    );
    let largest = sim
        .delivered(Direction::ServerToClient)
        .map(|c| c.data.len())
        .max()
        .unwrap();
    assert!(largest > 300, "{largest}");
}

/// Certificate Usage 1: the server's own certificate in /0/x/4, its chain checked against the
/// client's trust_store_certs.
#[test]
fn certificate_usage_1_checks_the_chain_and_the_certificate() {
    let p = pki(20, -DAY, 365 * DAY);
    let other = pki(21, -DAY, 365 * DAY);
    let mut inst = cert_instance(&p, Some(1));
    inst.server_public_key = p.pki.server_cert.der().to_vec();
    let mut cfg = SimConfig::new(20).with_dtls(inst.clone(), cert_server(&p, ca_store(&p)));
    cfg.client.trust_store_certs = ca_store(&p);
    let mut sim = Sim::new(cfg);
    sim.start().unwrap();
    assert!(
        sim.run_until_registered(Duration::from_secs(10)),
        "{:?}",
        client_failures(&sim)
    );

    // The right certificate, but the trust store does not lead to its CA.
    let mut cfg = SimConfig::new(22).with_dtls(inst, cert_server(&p, ca_store(&p)));
    cfg.client.trust_store_certs = ca_store(&other);
    let (client, _) = refused(Sim::new(cfg));
    assert_reason(&client, "peer certificate not trusted");
}

/// 30 seeds at 30 % loss each way: every one completes the handshake by retransmitting on
/// the virtual clock, registers and answers a Read.
#[test]
fn psk_and_certificate_survive_30_percent_loss_over_30_seeds() {
    let p = pki(3, -DAY, 365 * DAY);
    let lossy = LinkConfig::clean().with_loss(0.3);
    let mut worst = Duration::ZERO;
    let (mut lost_total, mut runs_with_loss) = (0, 0);
    for seed in 0..30u64 {
        for cert in [false, true] {
            let cfg = SimConfig::new(1000 + seed).with_link(lossy.clone());
            let cfg = if cert {
                cfg.with_dtls(cert_instance(&p, None), cert_server(&p, ca_store(&p)))
            } else {
                cfg.with_dtls(
                    SecurityInstance::psk(URI, 1, PSK_ID, PSK_KEY),
                    psk_server(&[(PSK_ID, PSK_KEY)]),
                )
            };
            let mut sim = Sim::new(cfg);
            sim.start().unwrap();
            assert!(
                sim.run_until_registered(Duration::from_secs(1800)),
                "seed {seed} cert {cert}: {:?}",
                client_failures(&sim)
            );
            worst = worst.max(sim.elapsed());
            let lost = sim.stats(Direction::ClientToServer).lost
                + sim.stats(Direction::ServerToClient).lost;
            lost_total += lost;
            runs_with_loss += usize::from(lost > 0);
            read_device_manufacturer(&mut sim, Duration::from_secs(600));
        }
    }
    // Most runs lost datagrams during the handshake or Register and recovered from it.
    assert!(
        runs_with_loss >= 50,
        "{runs_with_loss} of 60 runs lost datagrams"
    );
    println!(
        "30 % loss: {runs_with_loss}/60 runs lost {lost_total} datagrams before registering; \
         slowest registration after {worst:?} of virtual time"
    );
}

/// Runs a refused configuration for 100 s of virtual time and returns the client's
/// failure reasons and the server's.
fn refused(mut sim: Sim) -> (Vec<String>, Vec<String>) {
    capture_warnings();
    sim.start().unwrap();
    assert!(!sim.run_until_registered(Duration::from_secs(100)));
    assert!(sim.server().registration("sim-client").is_none());
    assert!(established(&sim).is_empty());
    let client = client_failures(&sim);
    // A failed handshake counts as a failed registration attempt.
    assert!(sim
        .client_events()
        .iter()
        .any(|e| matches!(&e.event, Event::RegistrationFailed { .. })));
    let server = sim
        .secure_events()
        .iter()
        .filter_map(|e| match &e.event {
            SecureEvent::HandshakeFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    (client, server)
}

/// Every reason names `needle`, and each was logged as a warning about the handshake.
fn assert_reason(reasons: &[String], needle: &str) {
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| r.contains(needle)),
        "expected {needle:?} in {reasons:?}"
    );
    let logged = my_warnings();
    for r in reasons {
        assert!(
            logged
                .iter()
                .any(|l| l.contains("DTLS handshake") && l.contains(r.as_str())),
            "reason {r:?} was not logged: {logged:?}"
        );
    }
}

#[test]
fn wrong_psk_is_refused_with_the_reason() {
    let sim = psk_sim(4, PSK_ID, &[0x22; 16], psk_server(&[(PSK_ID, PSK_KEY)]));
    let (client, server) = refused(sim);
    assert_reason(&client, "pre-shared key mismatch");
    assert_reason(&server, "pre-shared key mismatch");
}

#[test]
fn unknown_psk_identity_is_refused_with_the_reason() {
    let sim = psk_sim(5, b"stranger", PSK_KEY, psk_server(&[(PSK_ID, PSK_KEY)]));
    let (client, server) = refused(sim);
    assert_reason(&client, "unknown to the server");
    assert_reason(&server, "\"stranger\" is unknown");
}

#[test]
fn expired_server_certificate_is_refused() {
    let p = pki(6, -365 * DAY, -DAY);
    let (client, _) = refused(cert_sim(6, &p, cert_instance(&p, Some(2))));
    assert_reason(&client, "peer certificate expired");
}

#[test]
fn server_certificate_not_yet_valid_is_refused() {
    let p = pki(7, DAY, 365 * DAY);
    let (client, _) = refused(cert_sim(7, &p, cert_instance(&p, Some(2))));
    assert_reason(&client, "peer certificate not yet valid");
}

#[test]
fn untrusted_server_certificate_is_refused() {
    let p = pki(8, -DAY, 365 * DAY);
    let other = pki(9, -DAY, 365 * DAY);
    // Usage 2 with another CA as the anchor; usage 3 pinned to another server certificate.
    for (usage, given) in [
        (Some(2), other.pki.ca.certificate().der().to_vec()),
        (None, other.pki.server_cert.der().to_vec()),
    ] {
        let mut inst = cert_instance(&p, usage);
        inst.server_public_key = given;
        let (client, _) = refused(cert_sim(8, &p, inst));
        assert_reason(&client, "peer certificate not trusted");
    }
    // Usage 0: the chain must pass through the CA in /0/x/4 and end at trust_store_certs.
    let mut inst = cert_instance(&p, Some(0));
    inst.server_public_key = other.pki.ca.certificate().der().to_vec();
    let mut cfg = SimConfig::new(8).with_dtls(inst, cert_server(&p, ca_store(&p)));
    cfg.client.trust_store_certs = ca_store(&p);
    let (client, _) = refused(Sim::new(cfg));
    assert_reason(&client, "does not pass through the given CA");
}

#[test]
fn server_certificate_for_another_name_is_refused() {
    let p = pki(10, -DAY, 365 * DAY);
    let mut inst = cert_instance(&p, Some(2));
    inst.server_name_indication = Some("lwm2m.example.com".into());
    let (client, _) = refused(cert_sim(10, &p, inst));
    assert_reason(&client, "peer certificate name mismatch");
    assert_reason(&client, "lwm2m.example.com");
}

#[test]
fn client_certificate_not_trusted_by_the_server_is_refused() {
    let p = pki(11, -DAY, 365 * DAY);
    let other = pki(12, -DAY, 365 * DAY);
    let server = cert_server(&p, ca_store(&other));
    let sim = Sim::new(SimConfig::new(11).with_dtls(cert_instance(&p, None), server));
    let (client, server) = refused(sim);
    assert_reason(&server, "peer certificate not trusted");
    assert_reason(&client, "peer refused our certificate");
}

/// The server forgets every DTLS session (a restart): the client's next Update goes
/// unanswered, and the registration retry runs a new handshake and registers again.
#[test]
fn a_server_that_lost_the_session_gets_a_new_handshake() {
    let mut sim = psk_sim(16, PSK_ID, PSK_KEY, psk_server(&[(PSK_ID, PSK_KEY)]));
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(10)));
    sim.restart_server_dtls();
    let now = sim.now();
    sim.client_mut()
        .schedule_registration_update(now, None)
        .unwrap();
    let t0 = sim.elapsed();
    // The Update times out (MAX_TRANSMIT_WAIT, 93 s), the retry comes 30 s later.
    assert!(sim.run_until(
        |s| s
            .client_events()
            .iter()
            .filter(|e| matches!(e.event, Event::Registered { .. }))
            .count()
            == 2,
        Duration::from_secs(300)
    ));
    let took = sim.elapsed() - t0;
    assert!(
        took > Duration::from_secs(90) && took < Duration::from_secs(200),
        "{took:?}"
    );
    assert_eq!(established(&sim).len(), 2);
    read_device_manufacturer(&mut sim, Duration::from_secs(5));
}

/// The link goes dead long enough for an Update to fail; the server still holds the old
/// session when the client's new handshake arrives from the same address (a client
/// reconnect, RFC 6347 section 4.2.8), and the client registers again.
#[test]
fn a_new_handshake_from_the_same_address_replaces_the_old_session() {
    let mut sim = psk_sim(17, PSK_ID, PSK_KEY, psk_server(&[(PSK_ID, PSK_KEY)]));
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(10)));
    let dead = sim.add_filter(Direction::ClientToServer, |_, _| {
        estuary_testserver::sim::Verdict::Drop
    });
    let now = sim.now();
    sim.client_mut()
        .schedule_registration_update(now, None)
        .unwrap();
    // The Update fails after MAX_TRANSMIT_WAIT; the link comes back before the retry.
    sim.run_for(Duration::from_secs(100));
    assert!(sim
        .client_events()
        .iter()
        .any(|e| matches!(e.event, Event::RegistrationFailed { .. })));
    sim.remove_filter(dead);
    assert!(sim.run_until(
        |s| s
            .client_events()
            .iter()
            .filter(|e| matches!(e.event, Event::Registered { .. }))
            .count()
            == 2,
        Duration::from_secs(120)
    ));
    assert_eq!(established(&sim).len(), 2);
    read_device_manufacturer(&mut sim, Duration::from_secs(5));
}

/// `udp_dtls_hs_tx_params` drives the handshake retransmissions on the virtual clock: with
/// 2 s doubling to 8 s and a silent server, the ClientHello goes out at 0, 2 and 6 s and the
/// handshake fails at 14 s.
#[test]
fn handshake_timers_come_from_the_client_configuration() {
    capture_warnings();
    let mut cfg = SimConfig::new(18).with_dtls(
        SecurityInstance::psk(URI, 1, PSK_ID, PSK_KEY),
        psk_server(&[(PSK_ID, PSK_KEY)]),
    );
    cfg.client.udp_dtls_hs_tx_params = HandshakeTimers {
        min: Duration::from_secs(2),
        max: Duration::from_secs(8),
    };
    let mut sim = Sim::new(cfg);
    sim.add_filter(Direction::ClientToServer, |_, _| {
        estuary_testserver::sim::Verdict::Drop
    });
    sim.start().unwrap();
    sim.run_for(Duration::from_secs(20));
    let sent: Vec<Duration> = sim
        .sent(Direction::ClientToServer)
        .map(|c| sim.since_start(c.at))
        .collect();
    assert_eq!(
        sent,
        [0, 2, 6].map(Duration::from_secs).to_vec(),
        "ClientHello send times"
    );
    let failed: Vec<Duration> = sim
        .client_events()
        .iter()
        .filter(|e| matches!(e.event, Event::SecureConnectionFailed { .. }))
        .map(|e| sim.since_start(e.at))
        .collect();
    assert_eq!(failed, vec![Duration::from_secs(14)]);
    assert_reason(&client_failures(&sim), "timed out");
}

#[test]
fn a_failed_handshake_is_retried_with_the_registration_back_off() {
    let mut sim = psk_sim(13, PSK_ID, &[0x22; 16], psk_server(&[(PSK_ID, PSK_KEY)]));
    sim.start().unwrap();
    sim.run_for(Duration::from_secs(200));
    let failures: Vec<Duration> = sim
        .client_events()
        .iter()
        .filter(|e| matches!(e.event, Event::SecureConnectionFailed { .. }))
        .map(|e| sim.since_start(e.at))
        .collect();
    // At once, then after the 60 s and 120 s back-off waits of a failed Register (the
    // default Communication Retry Timer, 60 s, doubling).
    assert_eq!(failures.len(), 3, "{failures:?}");
    let gap1 = failures[1] - failures[0];
    let gap2 = failures[2] - failures[1];
    assert!(
        gap1 >= Duration::from_secs(60) && gap1 < Duration::from_secs(61),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(120) && gap2 < Duration::from_secs(121),
        "{gap2:?}"
    );
}

#[test]
fn rpk_and_mismatched_schemes_are_refused_at_start() {
    let mut cfg = SimConfig::new(14);
    let mut inst = SecurityInstance::psk(URI, 1, PSK_ID, PSK_KEY);
    inst.security_mode = estuary::dm::objects::SecurityMode::Rpk;
    cfg = cfg.with_dtls(inst, psk_server(&[(PSK_ID, PSK_KEY)]));
    let mut sim = Sim::new(cfg);
    let err = sim.start().unwrap_err().to_string();
    assert!(err.contains("raw public key"), "{err}");

    let inst = SecurityInstance::psk("coap://127.0.0.1:5684", 1, PSK_ID, PSK_KEY);
    let mut sim = Sim::new(SimConfig::new(15).with_dtls(inst, psk_server(&[(PSK_ID, PSK_KEY)])));
    let err = sim.start().unwrap_err().to_string();
    assert!(err.contains("needs a coaps:// server URI"), "{err}");
    assert_eq!(sim.stats(Direction::ClientToServer).sent, 0);
}
