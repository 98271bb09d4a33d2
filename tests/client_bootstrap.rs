//! The client's bootstrap and EST flows against the test server's sans-IO Bootstrap-Server,
//! EST CA and LwM2M server, on a virtual clock: bootstrap then register (NoSec, PSK, EST
//! mode 4 with enrollment), an inconsistent configuration refused at Finish, a silent
//! Bootstrap-Server, re-enrollment over many certificate lifetimes, and fall-back to
//! bootstrap when the management server refuses every Register.
//!
//! The harness routes the client's bootstrap connection to the Bootstrap-Server and its
//! management connections to the LwM2M server, each behind a DTLS listener when the account
//! is secure. Delivery is immediate unless a test drops datagrams.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use estuary::coap::TxParams;
use estuary::crypto::{CertificateIssuer, Drbg, SecretBytes, TrustStore};
use estuary::dm::objects::{SecurityInstance, SecurityMode};
use estuary::est::ReenrollConfig;
use estuary::rng::SeededRng;
use estuary::time::{Instant, Now, UtcTime};
use estuary::{Client, ClientConfig, ConnectionId, Event};
use estuary_testserver::bootstrap_server::{
    BootstrapEvent, BootstrapServer, ProvisionedAccount, Provisioning,
};
use estuary_testserver::coaps::{SecureListener, SecureListenerConfig};
use estuary_testserver::est_server::{EstCa, EstEvent};
use estuary_testserver::lwm2m_server::{Lwm2mServer, ServerEvent};
use estuary_testserver::pki::TestPki;

const EP: &str = "dev1";
const BS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5694);
const LW_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5684);
const PSK_KEY: [u8; 16] = [0x5A; 16];

fn client_addr(conn: ConnectionId) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000 + conn.0 as u16)
}

fn conn_of(peer: SocketAddr) -> ConnectionId {
    ConnectionId(u32::from(peer.port() - 40_000))
}

/// How the client talks to the Bootstrap-Server, and what account it is given.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Setup {
    NoSecToNoSec,
    PskToPsk,
    PskToEst,
}

struct Side {
    listener: Option<SecureListener>,
}

impl Side {
    fn inbound(&mut self, now: Now, peer: SocketAddr, data: &[u8]) -> Vec<Vec<u8>> {
        match self.listener.as_mut() {
            Some(l) => l.handle_datagram(now, peer, data),
            None => vec![data.to_vec()],
        }
    }
}

struct Rig {
    now: Now,
    client: Client,
    bs: BootstrapServer,
    lw: Lwm2mServer,
    bs_side: Side,
    lw_side: Side,
    events: Vec<(Duration, Event)>,
    bs_events: Vec<(Duration, BootstrapEvent)>,
    lw_events: Vec<(Duration, ServerEvent)>,
    start: Instant,
    /// Drop every datagram to or from the Bootstrap-Server.
    bs_silent: bool,
    /// Drop every datagram to the management server.
    lw_silent: bool,
    /// Datagrams the client sent, per connection kind (bootstrap, management).
    sent: [u64; 2],
    /// Every datagram the client sent, when `capture` is on.
    captured: Vec<Vec<u8>>,
    capture: bool,
    pki: TestPki,
    steps: u64,
}

const EPOCH: UtcTime = UtcTime::from_unix_seconds(1_767_225_600);

fn rig(setup: Setup, cert_validity: Duration, reenroll: ReenrollConfig) -> Rig {
    rig_with_lifetime(setup, cert_validity, reenroll, 120)
}

fn rig_with_lifetime(
    setup: Setup,
    cert_validity: Duration,
    reenroll: ReenrollConfig,
    lifetime: u32,
) -> Rig {
    let now = Now::new(Instant::from_millis(1_000_000), EPOCH);
    let mut rng = Drbg::from_seed(77);
    let pki = TestPki::generate(
        &mut rng,
        UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 86_400),
        UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 20 * 365 * 86_400),
    )
    .unwrap();
    let mut trust = TrustStore::new();
    trust.add(pki.ca.certificate().clone());
    let listener_cfg = |psk: bool| SecureListenerConfig {
        psk: if psk {
            vec![(EP.as_bytes().to_vec(), SecretBytes::new(PSK_KEY.to_vec()))]
        } else {
            Vec::new()
        },
        certificate: Some((pki.server_chain(), pki.server_key.clone(), trust.clone())),
        timers: None,
    };
    let secure_bs = setup != Setup::NoSecToNoSec;
    let bs_side = Side {
        listener: secure_bs.then(|| SecureListener::new(listener_cfg(true), &rng).unwrap()),
    };
    let lw_side = Side {
        listener: secure_bs.then(|| SecureListener::new(listener_cfg(true), &rng).unwrap()),
    };

    // What the Bootstrap-Server writes.
    let scheme = if secure_bs { "coaps" } else { "coap" };
    let mut account = ProvisionedAccount::nosec(&format!("{scheme}://{LW_ADDR}"), 7, lifetime);
    match setup {
        Setup::NoSecToNoSec => {}
        Setup::PskToPsk => {
            account.mode = SecurityMode::Psk;
            account.identity = EP.as_bytes().to_vec();
            account.secret_key = PSK_KEY.to_vec();
        }
        Setup::PskToEst => {
            account.mode = SecurityMode::CertificateWithEst;
            account.server_public_key = pki.server_cert.der().to_vec();
        }
    }
    let mut bs = BootstrapServer::new(TxParams::default(), 5);
    bs.provision(EP, Provisioning::accounts(&[account]));
    let issuer =
        CertificateIssuer::new(pki.ca.key().clone(), pki.ca.certificate().clone()).unwrap();
    let mut est = EstCa::new(issuer, TrustStore::new(), cert_validity, Drbg::from_seed(9));
    // The bootstrap account is PSK here; /sen over PSK is allowed for the test (/sren still
    // needs the EST certificate).
    est.require_certificate = false;
    bs.set_est(est);

    let mut cfg = ClientConfig::new(EP);
    cfg.est_reenroll = reenroll;
    let mut client = Client::new(cfg, Box::new(SeededRng::new(3))).unwrap();
    let mut b = SecurityInstance::nosec(&format!("{scheme}://{BS_ADDR}"), 1);
    b.bootstrap_server = true;
    b.ssid = None;
    if secure_bs {
        b.security_mode = SecurityMode::Psk;
        b.public_cert_or_psk_identity = EP.as_bytes().to_vec();
        b.private_cert_or_psk_key = PSK_KEY.to_vec();
    }
    client.data_model_mut().security.insert(0, b).unwrap();
    let lw = Lwm2mServer::new(TxParams::default(), 6);
    Rig {
        now,
        client,
        bs,
        lw,
        bs_side,
        lw_side,
        events: Vec::new(),
        bs_events: Vec::new(),
        lw_events: Vec::new(),
        start: now.mono,
        bs_silent: false,
        lw_silent: false,
        sent: [0; 2],
        captured: Vec::new(),
        capture: false,
        pki,
        steps: 0,
    }
}

impl Rig {
    fn elapsed(&self) -> Duration {
        self.now.mono.saturating_duration_since(self.start)
    }

    /// Moves everything that can move at the current time.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                if self.capture {
                    self.captured.push(t.data.clone());
                }
                let from = client_addr(t.conn);
                if t.conn == ConnectionId::BOOTSTRAP {
                    self.sent[0] += 1;
                    if self.bs_silent {
                        continue;
                    }
                    for d in self.bs_side.inbound(self.now, from, &t.data) {
                        // The DTLS listener says who the peer is; the EST CA needs its
                        // certificate for /sren.
                        if let Some(auth) = self
                            .bs_side
                            .listener
                            .as_ref()
                            .and_then(|l| l.est_peer_auth(from))
                        {
                            self.bs.set_peer_auth(from, auth);
                        }
                        self.bs.handle_datagram(self.now, from, &d);
                    }
                } else {
                    self.sent[1] += 1;
                    if self.lw_silent {
                        continue;
                    }
                    for d in self.lw_side.inbound(self.now, from, &t.data) {
                        self.lw.handle_datagram(self.now, from, &d);
                    }
                }
            }
            while let Some((peer, d)) = self.bs.poll_transmit() {
                moved = true;
                match self.bs_side.listener.as_mut() {
                    Some(l) => {
                        l.send(self.now, peer, &d);
                    }
                    None if !self.bs_silent => {
                        self.client
                            .handle_datagram(self.now, ConnectionId::BOOTSTRAP, &d)
                    }
                    None => {}
                }
            }
            if let Some(l) = self.bs_side.listener.as_mut() {
                while let Some((_, d)) = l.poll_transmit() {
                    moved = true;
                    if !self.bs_silent {
                        self.client
                            .handle_datagram(self.now, ConnectionId::BOOTSTRAP, &d);
                    }
                }
            }
            while let Some((peer, d)) = self.lw.poll_transmit() {
                moved = true;
                match self.lw_side.listener.as_mut() {
                    Some(l) => {
                        l.send(self.now, peer, &d);
                    }
                    None => self.client.handle_datagram(self.now, conn_of(peer), &d),
                }
            }
            if let Some(l) = self.lw_side.listener.as_mut() {
                while let Some((peer, d)) = l.poll_transmit() {
                    moved = true;
                    self.client.handle_datagram(self.now, conn_of(peer), &d);
                }
            }
            let t = self.elapsed();
            while let Some(e) = self.client.poll_event() {
                self.events.push((t, e));
            }
            while let Some(e) = self.bs.poll_event() {
                self.bs_events.push((t, e));
            }
            while let Some(e) = self.lw.poll_event() {
                self.lw_events.push((t, e));
            }
            if !moved {
                return;
            }
        }
        panic!("the rig did not settle");
    }

    /// Runs the virtual clock until `until` (from the start) or `stop` holds.
    fn run_until(&mut self, until: Duration, stop: impl Fn(&Rig) -> bool) {
        self.pump();
        while self.elapsed() < until && !stop(self) {
            let next = [
                self.client.poll_timeout(),
                self.bs.poll_timeout(),
                self.lw.poll_timeout(),
                self.bs_side
                    .listener
                    .as_ref()
                    .and_then(|l| l.poll_timeout()),
                self.lw_side
                    .listener
                    .as_ref()
                    .and_then(|l| l.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let limit = self.start + until;
            let next = next
                .map_or(limit, |n| n.min(limit))
                .max(self.now.mono + Duration::from_millis(1));
            let step = next.saturating_duration_since(self.now.mono);
            self.now = self.now.advanced(step);
            self.steps += 1;
            assert!(
                self.steps < 5_000_000,
                "busy loop at {:?}: {:?}",
                self.elapsed(),
                self.events.iter().rev().take(5).collect::<Vec<_>>()
            );
            self.client.handle_timeout(self.now);
            self.bs.handle_timeout(self.now);
            self.lw.handle_timeout(self.now);
            if let Some(l) = self.bs_side.listener.as_mut() {
                l.handle_timeout(self.now);
            }
            if let Some(l) = self.lw_side.listener.as_mut() {
                l.handle_timeout(self.now);
            }
            self.pump();
        }
    }

    fn registered(&self) -> bool {
        self.lw_events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::Registered { endpoint, .. } if endpoint == EP))
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
}

fn start(r: &mut Rig) {
    r.client.start(r.now).unwrap();
}

#[test]
fn nosec_bootstrap_then_register() {
    let mut r = rig(
        Setup::NoSecToNoSec,
        Duration::from_secs(3600),
        ReenrollConfig::default(),
    );
    start(&mut r);
    r.run_until(Duration::from_secs(60), Rig::registered);
    assert!(r.registered(), "events: {:?}", r.events);
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
    // each, the 5th failing ≥ 30+60+120+240 s of back-off + 5 × 2 s of first timeouts after
    // the round began), and the k-th fall-back waits 60 s · 2^(k−1), capped at 1 h. Over a
    // day that leaves at most 1 + 6 + (86400 − 3840) / (3600 + 460) rounds < 28; 28 × 30 =
    // 840 datagrams.
    let total = r.sent[0] + r.sent[1];
    assert!(total <= 840, "{total} datagrams in a day");
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
    let scalar = private_scalar(secret.expose());
    for d in &r.captured {
        assert!(
            !d.windows(scalar.len()).any(|w| w == scalar),
            "a datagram carries the private key"
        );
    }
    eprintln!(
        "one year of 30-day certificates: {renewals} renewals, lateness {late:?} ms, {} datagrams scanned",
        r.captured.len()
    );
}

/// The 32-byte private scalar inside a SEC1 `ECPrivateKey` (the OCTET STRING after the
/// version INTEGER).
fn private_scalar(sec1: &[u8]) -> Vec<u8> {
    let pos = sec1
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("SEC1 private key octet string");
    sec1[pos + 2..pos + 34].to_vec()
}
