//! Client and server sessions paired in memory, with a virtual clock that jumps to the next
//! deadline and a link that loses datagrams by a seeded generator.

use core::time::Duration;
use std::sync::OnceLock;

use super::*;
use crate::crypto::{
    Certificate, CertificateIssuer, CertificateProfile, CertificateTemplate, Drbg, KeyPair,
    SecretBytes, TrustStore,
};
use crate::rng::{RandomSource, SeededRng};
use crate::time::{Instant, UtcTime};

/// 2023-11-14T22:13:20Z: long before the machine's clock, so every certificate test also
/// shows that validity is judged at the configured time, not the system's.
const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;
const CLIENT_ADDR: &[u8] = b"\xc6\x33\x64\x07\x16\x33"; // 198.51.100.7:5683
const START: Instant = Instant::from_millis(5_000_000);

fn utc(s: i64) -> UtcTime {
    UtcTime::from_unix_seconds(s)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// The harness

/// A one-way-at-a-time datagram link: perfect, lossy by seed, or a black hole.
struct Link {
    rng: SeededRng,
    loss: f64,
    dropped: usize,
    delivered: usize,
}

impl Link {
    fn perfect() -> Self {
        Link::lossy(0, 0.0)
    }

    fn lossy(seed: u64, loss: f64) -> Self {
        Link {
            rng: SeededRng::new(seed),
            loss,
            dropped: 0,
            delivered: 0,
        }
    }

    fn passes(&mut self) -> bool {
        let pass = self.loss <= 0.0 || self.rng.next_f64() >= self.loss;
        if pass {
            self.delivered += 1;
        } else {
            self.dropped += 1;
        }
        pass
    }
}

#[derive(Debug)]
struct Outcome {
    client: DtlsState,
    server: DtlsState,
    client_error: Option<DtlsError>,
    server_error: Option<DtlsError>,
    /// Virtual time from the start until both sides were done.
    elapsed: Duration,
}

impl Outcome {
    fn established(&self) -> bool {
        self.client == DtlsState::Established && self.server == DtlsState::Established
    }
}

/// A client and a server session joined by a [`Link`], on a virtual clock.
struct Pair {
    client: DtlsSession,
    server: DtlsSession,
    server_config: DtlsConfig,
    now: Instant,
    link: Link,
    /// Every datagram the client and the server sent, in order.
    client_sent: Vec<(Instant, Vec<u8>)>,
    server_sent: Vec<(Instant, Vec<u8>)>,
}

impl Pair {
    fn new(client: &DtlsConfig, server: &DtlsConfig, link: Link) -> Pair {
        Pair {
            client: DtlsSession::new(client, START).expect("client session"),
            server: DtlsSession::accept(server, START, CLIENT_ADDR).expect("server session"),
            server_config: server.clone(),
            now: START,
            link,
            client_sent: Vec::new(),
            server_sent: Vec::new(),
        }
    }

    /// Carries datagrams both ways until neither side has anything to send. Session errors
    /// are left in the sessions, where the tests look at them.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(d) = self.client.poll_transmit() {
                moved = true;
                self.client_sent.push((self.now, d.clone()));
                if self.link.passes() {
                    let _ = self.server.handle_datagram(self.now, &d);
                }
            }
            while let Some(d) = self.server.poll_transmit() {
                moved = true;
                self.server_sent.push((self.now, d.clone()));
                if self.link.passes() {
                    let _ = self.client.handle_datagram(self.now, &d);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs the handshake until both sides are done (or the server idles after the client
    /// gave up), jumping the clock to the next deadline whenever nothing is in flight.
    /// Fails the test if the client is left waiting without a timer: that would hang.
    fn run(&mut self) -> Outcome {
        for _ in 0..10_000 {
            self.exchange();
            let client_done = self.client.state() != DtlsState::Handshaking;
            let server_done = self.server.state() != DtlsState::Handshaking;
            let server_idle = self.server.poll_timeout().is_none();
            if client_done && (server_done || server_idle) {
                return self.outcome();
            }
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else {
                panic!(
                    "hang: nothing in flight and no timer; client {:?}, server {:?}",
                    self.client, self.server
                );
            };
            assert!(
                client_done || self.client.poll_timeout().is_some(),
                "a handshaking client must always have a timer"
            );
            self.now = self.now.max(next);
            let _ = self.client.handle_timeout(self.now);
            let _ = self.server.handle_timeout(self.now);
        }
        panic!(
            "no end after 10000 steps: {:?} {:?}",
            self.client, self.server
        );
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            client: self.client.state(),
            server: self.server.state(),
            client_error: self.client.error().cloned(),
            server_error: self.server.error().cloned(),
            elapsed: self.now.saturating_duration_since(START),
        }
    }

    /// Sends one datagram each way and returns what arrived.
    fn ping_pong(&mut self, request: &[u8], response: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.client.send(self.now, request).unwrap();
        self.exchange();
        let got_request = self.server.recv().expect("request delivered");
        self.server.send(self.now, response).unwrap();
        self.exchange();
        let got_response = self.client.recv().expect("response delivered");
        (got_request, got_response)
    }

    /// Replaces the client with a fresh session (a client restart), keeping the server's.
    fn restart_client(&mut self, client: &DtlsConfig) {
        self.client = DtlsSession::new(client, self.now).unwrap();
    }

    /// A fresh server session for the same address (the server forgot the client).
    fn fresh_server_session(&mut self) {
        self.server = DtlsSession::accept(&self.server_config, self.now, CLIENT_ADDR).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

const PSK_IDENTITY: &[u8] = b"urn:imei:490154203237518";

fn psk_key() -> SecretBytes {
    SecretBytes::new((1..=16).collect())
}

fn psk_client(identity: &[u8], key: SecretBytes) -> DtlsConfig {
    let credentials = Credentials::Psk {
        identity: identity.to_vec(),
        key,
    };
    DtlsConfig::client(credentials, &Drbg::from_seed(11))
}

fn psk_server() -> DtlsConfig {
    DtlsConfig::server(&Drbg::from_seed(12))
        .unwrap()
        .with_psk_lookup(PskLookup::from_table(vec![(
            PSK_IDENTITY.to_vec(),
            psk_key(),
        )]))
}

/// A root CA, an intermediate CA issuing the server's certificate, and a client certificate
/// issued by the root; plus a second, unrelated root.
struct Pki {
    root: CertificateIssuer,
    intermediate: Certificate,
    /// The intermediate with its key (it issued the server certificate).
    mid: CertificateIssuer,
    server_key: KeyPair,
    server_cert: Certificate,
    client_key: KeyPair,
    client_cert: Certificate,
    other_root: CertificateIssuer,
    foreign_client_cert: Certificate,
}

const SERVER_NAME: &str = "lwm2m.example";

fn template(subject: &str, from: i64, to: i64, profile: CertificateProfile) -> CertificateTemplate {
    CertificateTemplate {
        subject: subject.into(),
        serial: vec![0x42, subject.len() as u8],
        not_before: utc(from),
        not_after: utc(to),
        profile,
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let mut rng = Drbg::from_seed(40);
        let root_key = KeyPair::generate(&mut rng).unwrap();
        let root = CertificateIssuer::new_root_ca(
            root_key,
            "CN=Estuary DTLS Test Root",
            utc(T0 - DAY),
            utc(T0 + 3650 * DAY),
            &mut rng,
        )
        .unwrap();
        let mid_key = KeyPair::generate(&mut rng).unwrap();
        let mid_profile = CertificateProfile::Ca { path_len: Some(0) };
        let intermediate = root
            .issue(
                mid_key.public_key_der(),
                &template(
                    "CN=Estuary DTLS Intermediate",
                    T0 - DAY,
                    T0 + 365 * DAY,
                    mid_profile,
                ),
                &mut rng,
            )
            .unwrap();
        let mid = CertificateIssuer::new(mid_key, intermediate.clone()).unwrap();
        let server_key = KeyPair::generate(&mut rng).unwrap();
        let server_profile = CertificateProfile::Server {
            dns_names: vec![SERVER_NAME.into()],
            ip_addresses: vec![],
        };
        let server_cert = mid
            .issue(
                server_key.public_key_der(),
                &template("CN=LwM2M Test Server", T0, T0 + 30 * DAY, server_profile),
                &mut rng,
            )
            .unwrap();
        let client_key = KeyPair::generate(&mut rng).unwrap();
        let client_cert = root
            .issue(
                client_key.public_key_der(),
                &template("CN=dev1", T0, T0 + 30 * DAY, CertificateProfile::Client),
                &mut rng,
            )
            .unwrap();
        let other_key = KeyPair::generate(&mut rng).unwrap();
        let other_root = CertificateIssuer::new_root_ca(
            other_key,
            "CN=Estuary DTLS Test Root",
            utc(T0 - DAY),
            utc(T0 + 3650 * DAY),
            &mut rng,
        )
        .unwrap();
        let foreign_client_cert = other_root
            .issue(
                client_key.public_key_der(),
                &template("CN=dev1", T0, T0 + 30 * DAY, CertificateProfile::Client),
                &mut rng,
            )
            .unwrap();
        Pki {
            root,
            intermediate,
            mid,
            server_key,
            server_cert,
            client_key,
            client_cert,
            other_root,
            foreign_client_cert,
        }
    })
}

fn store(ca: &CertificateIssuer) -> TrustStore {
    TrustStore::from_bytes(ca.certificate().der()).unwrap()
}

/// The client's verification time: an hour into everything's validity.
const NOW_UTC: i64 = T0 + 3600;

fn cert_client_with(
    client_cert: &Certificate,
    trust: TrustStore,
    at: i64,
    name: &str,
) -> DtlsConfig {
    let pki = pki();
    let credentials = Credentials::Certificate {
        chain: vec![client_cert.clone()],
        key: pki.client_key.clone(),
    };
    DtlsConfig::client(credentials, &Drbg::from_seed(21))
        .with_trust(trust)
        .with_server_name(name)
        .with_verification_time(utc(at))
}

fn cert_client() -> DtlsConfig {
    let pki = pki();
    cert_client_with(&pki.client_cert, store(&pki.root), NOW_UTC, SERVER_NAME)
}

fn cert_server_trusting(client_trust: TrustStore) -> DtlsConfig {
    let pki = pki();
    DtlsConfig::server(&Drbg::from_seed(22))
        .unwrap()
        .with_certificate(
            vec![pki.server_cert.clone(), pki.intermediate.clone()],
            pki.server_key.clone(),
            client_trust,
        )
        .with_verification_time(utc(NOW_UTC))
}

fn cert_server() -> DtlsConfig {
    cert_server_trusting(store(&pki().root))
}

const SUITES: [&str; 4] = [
    "TLS_PSK_WITH_AES_128_CCM_8",
    "TLS_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
];

// ---------------------------------------------------------------------------------------------
// Handshakes that work

#[test]
fn psk_handshake_then_data_both_ways() {
    let mut pair = Pair::new(
        &psk_client(PSK_IDENTITY, psk_key()),
        &psk_server(),
        Link::perfect(),
    );
    assert_eq!(
        pair.client.send(pair.now, b"too early"),
        Err(DtlsError::NotEstablished)
    );
    let outcome = pair.run();
    assert!(outcome.established(), "{outcome:?}");
    assert_eq!(
        outcome.elapsed,
        Duration::ZERO,
        "no retransmission on a perfect link"
    );

    for side in [&pair.client, &pair.server] {
        assert_eq!(side.cipher_suite(), Some("TLS_PSK_WITH_AES_128_CCM_8"));
        assert_eq!(side.cipher_suite_id(), Some(0xC0A8));
        assert_eq!(side.psk_identity(), Some(PSK_IDENTITY));
        assert!(side.peer_certificate().is_none());
        assert!(!side.resumed());
        assert_eq!(side.poll_timeout(), None);
    }
    // HelloVerifyRequest, then the ServerHello flight, then the server's Finished flight.
    assert_eq!(
        pair.client_sent.len(),
        3,
        "ClientHello twice, then the key exchange flight"
    );
    assert_eq!(
        handshake_type(&pair.server_sent[0].1),
        Some(HELLO_VERIFY_REQUEST)
    );

    let (req, resp) = pair.ping_pong(b"POST /rd?ep=dev1", b"2.01 Created");
    assert_eq!(req, b"POST /rd?ep=dev1");
    assert_eq!(resp, b"2.01 Created");

    // Several datagrams in a row keep their boundaries and order.
    for i in 0..5u8 {
        pair.client
            .send(pair.now, &vec![i; 10 + usize::from(i)])
            .unwrap();
    }
    pair.exchange();
    for i in 0..5u8 {
        assert_eq!(pair.server.recv(), Some(vec![i; 10 + usize::from(i)]));
    }
    assert_eq!(pair.server.recv(), None);

    // One record carries at most max_payload bytes with the default MTU.
    let max = pair.client.max_payload().unwrap();
    assert!((1100..1232).contains(&max), "max payload {max}");
    pair.client.send(pair.now, &vec![7; max]).unwrap();
    pair.exchange();
    assert_eq!(pair.server.recv().map(|d| d.len()), Some(max));
    assert_eq!(
        pair.client.send(pair.now, &vec![7; max + 1]),
        Err(DtlsError::PayloadTooLarge { len: max + 1, max })
    );
}

#[test]
fn certificate_handshake_with_an_issued_chain_then_data_both_ways() {
    let pki = pki();
    let mut pair = Pair::new(&cert_client(), &cert_server(), Link::perfect());
    let outcome = pair.run();
    assert!(outcome.established(), "{outcome:?}");

    assert_eq!(
        pair.client.cipher_suite(),
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8")
    );
    assert_eq!(pair.server.cipher_suite(), pair.client.cipher_suite());
    // The client saw the server's chain (leaf and intermediate), the server the client's.
    let server_chain: Vec<&str> = pair
        .client
        .peer_certificates()
        .iter()
        .map(Certificate::subject)
        .collect();
    assert_eq!(
        server_chain,
        ["CN=LwM2M Test Server", "CN=Estuary DTLS Intermediate"]
    );
    assert_eq!(pair.server.peer_certificate(), Some(&pki.client_cert));
    assert_eq!(pair.server.psk_identity(), None);

    let (req, resp) = pair.ping_pong(b"GET /3/0", b"2.05 Content");
    assert_eq!(
        (req.as_slice(), resp.as_slice()),
        (&b"GET /3/0"[..], &b"2.05 Content"[..])
    );

    // The ClientHello named the server (SNI).
    let hello = &pair.client_sent[0].1;
    assert!(hello
        .windows(SERVER_NAME.len())
        .any(|w| w == SERVER_NAME.as_bytes()));

    // The server certificate is long expired by the machine's clock; only the configured
    // time made it valid. Every datagram respected the MTU (the chain was fragmented).
    assert!(pki.server_cert.not_after() < utc(T0 + 31 * DAY));
    let largest = pair.server_sent.iter().map(|(_, d)| d.len()).max().unwrap();
    assert!(
        largest <= usize::from(DEFAULT_MTU),
        "datagram of {largest} bytes"
    );
}

#[test]
fn the_negotiated_suite_is_one_of_the_four_whichever_the_client_prefers() {
    // A server offering everything: a PSK client gets a PSK suite, a certificate client a
    // certificate one.
    let pki = pki();
    let both = cert_server().with_psk_lookup(PskLookup::from_table(vec![(
        PSK_IDENTITY.to_vec(),
        psk_key(),
    )]));
    let mut psk = Pair::new(&psk_client(PSK_IDENTITY, psk_key()), &both, Link::perfect());
    assert!(psk.run().established());
    let mut cert = Pair::new(&cert_client(), &both, Link::perfect());
    assert!(cert.run().established());
    for pair in [&psk, &cert] {
        let suite = pair.client.cipher_suite().unwrap();
        assert!(SUITES.contains(&suite), "{suite}");
    }
    assert!(psk.client.cipher_suite().unwrap().starts_with("TLS_PSK"));
    assert!(cert
        .client
        .cipher_suite()
        .unwrap()
        .starts_with("TLS_ECDHE_ECDSA"));
    assert_eq!(cert.server.peer_certificate(), Some(&pki.client_cert));
}

// ---------------------------------------------------------------------------------------------
// Loss and time

/// Runs 30 seeded PSK handshakes over a link losing `loss` of the datagrams each way; every
/// one must end established or with a timeout (never hang), within three client flights'
/// worth of retransmission schedule. Returns (established times, timeouts, datagrams lost).
fn lossy_runs(loss: f64) -> (Vec<Duration>, Vec<Duration>, usize) {
    let timers = HandshakeTimers::default();
    let bound = timers.give_up_after() * 3;
    let client = psk_client(PSK_IDENTITY, psk_key());
    let server = psk_server();
    let (mut times, mut timeouts, mut lost) = (Vec::new(), Vec::new(), 0);
    for seed in 0..30 {
        let mut pair = Pair::new(&client, &server, Link::lossy(seed, loss));
        let outcome = pair.run();
        lost += pair.link.dropped;
        assert!(outcome.elapsed <= bound, "seed {seed}: {outcome:?}");
        if outcome.established() {
            times.push(outcome.elapsed);
            pair.link = Link::perfect();
            let (req, _) = pair.ping_pong(b"after loss", b"ok");
            assert_eq!(req, b"after loss");
        } else {
            match &outcome.client_error {
                Some(e @ DtlsError::Timeout { elapsed, .. }) => {
                    assert_eq!(*elapsed, outcome.elapsed);
                    assert!(e.to_string().contains("timed out"));
                }
                other => panic!("seed {seed}: {other:?} / {outcome:?}"),
            }
            timeouts.push(outcome.elapsed);
        }
    }
    (times, timeouts, lost)
}

/// 30 seeds with 30% of datagrams lost in both directions: every handshake completes by
/// retransmitting on the virtual clock; at 60% loss some give up with a timeout instead.
/// Nothing hangs (the harness fails the test if a client is left without a timer).
#[test]
fn lossy_link_handshakes_complete_or_time_out_never_hang() {
    let (times, timeouts, lost) = lossy_runs(0.3);
    let worst = times.iter().max().copied().unwrap_or_default();
    let mean = times.iter().map(|d| secs(*d)).sum::<f64>() / times.len().max(1) as f64;
    eprintln!(
        "30% loss: {} of 30 established (worst {:.0} s, mean {:.1} s virtual), {} timed out, \
         {lost} datagrams lost",
        times.len(),
        secs(worst),
        mean,
        timeouts.len(),
    );
    assert!(lost > 30, "the link did lose datagrams");
    // Measured: all 30 complete, the slowest after 46 s of virtual time (mean 6.7 s), less
    // than the 123 s a single flight may stay unanswered.
    assert_eq!(times.len(), 30);
    assert!(
        worst < HandshakeTimers::default().give_up_after(),
        "worst {worst:?}"
    );

    let (times, timeouts, _) = lossy_runs(0.6);
    eprintln!(
        "60% loss: {} of 30 established (worst {:?}), {} timed out (latest {:?})",
        times.len(),
        times.iter().max(),
        timeouts.len(),
        timeouts.iter().max()
    );
    assert!(!timeouts.is_empty() && !times.is_empty());
    // A timeout never comes before one whole schedule (123 s) has passed.
    assert!(timeouts
        .iter()
        .all(|t| *t >= HandshakeTimers::default().give_up_after()));
}

/// The certificate handshake (bigger flights, the server's fragmented to the MTU) over the
/// same 30%-lossy link.
#[test]
fn lossy_link_certificate_handshakes() {
    let client = cert_client();
    let server = cert_server();
    let mut worst = Duration::ZERO;
    let mut done = 0;
    for seed in 100..130 {
        let mut pair = Pair::new(&client, &server, Link::lossy(seed, 0.3));
        let outcome = pair.run();
        if outcome.established() {
            done += 1;
            worst = worst.max(outcome.elapsed);
        } else {
            assert!(
                matches!(outcome.client_error, Some(DtlsError::Timeout { .. })),
                "seed {seed}: {outcome:?}"
            );
        }
    }
    eprintln!("30% loss, certificates: {done} of 30 established, worst {worst:?}");
    assert!(done >= 28, "{done} of 30");
    assert!(
        worst < HandshakeTimers::default().give_up_after(),
        "worst {worst:?}"
    );
}

/// Into a black hole the client retransmits on RFC 6347's schedule and then gives up with a
/// timeout that says so.
#[test]
fn retransmissions_follow_the_timers_then_time_out() {
    for (timers, expected_sends, expected_end) in [
        (
            HandshakeTimers::default(),
            vec![0, 1, 3, 7, 15, 31, 63],
            123,
        ),
        (
            HandshakeTimers {
                min: Duration::from_secs(2),
                max: Duration::from_secs(8),
            },
            vec![0, 2, 6],
            14,
        ),
    ] {
        let client = psk_client(PSK_IDENTITY, psk_key()).with_handshake_timers(timers);
        let mut pair = Pair::new(&client, &psk_server(), Link::lossy(1, 1.0));
        let outcome = pair.run();
        let sends: Vec<u64> = pair
            .client_sent
            .iter()
            .map(|(t, _)| t.saturating_duration_since(START).as_secs())
            .collect();
        assert_eq!(sends, expected_sends);
        assert_eq!(outcome.elapsed, Duration::from_secs(expected_end));
        assert_eq!(timers.give_up_after(), Duration::from_secs(expected_end));
        let Some(DtlsError::Timeout {
            elapsed,
            retransmissions,
        }) = outcome.client_error
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(elapsed, Duration::from_secs(expected_end));
        assert_eq!(retransmissions, timers.retransmissions());
        assert_eq!(pair.client.state(), DtlsState::Failed);
        assert_eq!(pair.client.poll_timeout(), None);
        // The same error again on any further use.
        assert!(matches!(
            pair.client.handle_datagram(pair.now, &[22, 0xFE, 0xFD]),
            Err(DtlsError::Timeout { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals, each naming its reason on both sides

fn refused(client: &DtlsConfig, server: &DtlsConfig) -> (DtlsError, DtlsError) {
    let mut pair = Pair::new(client, server, Link::perfect());
    let outcome = pair.run();
    assert_eq!(outcome.client, DtlsState::Failed, "{outcome:?}");
    assert_eq!(outcome.server, DtlsState::Failed, "{outcome:?}");
    assert_eq!(
        outcome.elapsed,
        Duration::ZERO,
        "refused at once, not by timeout"
    );
    (outcome.client_error.unwrap(), outcome.server_error.unwrap())
}

#[test]
fn wrong_psk_is_refused_as_a_key_mismatch() {
    let wrong = SecretBytes::new(vec![0xAA; 16]);
    let (client, server) = refused(&psk_client(PSK_IDENTITY, wrong), &psk_server());
    let identity = String::from_utf8(PSK_IDENTITY.to_vec()).unwrap();
    assert!(
        matches!(&server, DtlsError::PskMismatch { identity: id, .. } if *id == identity),
        "{server}"
    );
    assert!(
        matches!(&client, DtlsError::PskMismatch { identity: id, .. } if *id == identity),
        "{client}"
    );
    assert!(
        client.to_string().contains("pre-shared key mismatch"),
        "{client}"
    );
    assert!(server.to_string().contains("MAC"), "{server}");
    assert!(client.is_authentication_failure());
}

#[test]
fn unknown_psk_identity_is_refused_by_name() {
    let (client, server) = refused(&psk_client(b"stranger", psk_key()), &psk_server());
    let expected = DtlsError::UnknownPskIdentity {
        identity: "stranger".into(),
    };
    assert_eq!(server, expected);
    assert_eq!(client, expected);
    assert_eq!(
        client.to_string(),
        "PSK identity \"stranger\" is unknown to the server"
    );

    // A lookup that panics refuses the identity rather than unwinding into mbedtls; a binary
    // identity is shown in hex.
    let panicky = DtlsConfig::server(&Drbg::from_seed(13))
        .unwrap()
        .with_psk_lookup(PskLookup::new(|_| panic!("lookup exploded")));
    let (client, server) = refused(&psk_client(&[0, 1, 0xFE], psk_key()), &panicky);
    let expected = DtlsError::UnknownPskIdentity {
        identity: "0001fe".into(),
    };
    assert_eq!((client, server), (expected.clone(), expected));
}

fn assert_rejected(err: &DtlsError, problem: CertificateProblem, text: &str) {
    match err {
        DtlsError::CertificateRejected { problem: p, reason } => {
            assert_eq!(*p, problem, "{err}");
            assert!(reason.contains(text), "{reason:?} should mention {text:?}");
        }
        other => panic!("expected a {problem} certificate, got {other}"),
    }
}

fn assert_refused_by_peer(err: &DtlsError, alert: u8) {
    assert_eq!(*err, DtlsError::CertificateRefusedByPeer { alert }, "{err}");
}

#[test]
fn server_certificate_expired_at_the_passed_time() {
    let pki = pki();
    let late = T0 + 31 * DAY;
    let client = cert_client_with(&pki.client_cert, store(&pki.root), late, SERVER_NAME);
    let (client, server) = refused(&client, &cert_server());
    assert_rejected(
        &client,
        CertificateProblem::Expired,
        "CN=LwM2M Test Server (depth 0): expired at 2023-12-14T22:13:20Z",
    );
    assert_refused_by_peer(&server, 45);
    assert!(
        server.to_string().contains("certificate_expired"),
        "{server}"
    );
}

#[test]
fn server_certificate_not_yet_valid_at_the_passed_time() {
    let pki = pki();
    let early = T0 - 60;
    let client = cert_client_with(&pki.client_cert, store(&pki.root), early, SERVER_NAME);
    let (client, server) = refused(&client, &cert_server());
    assert_rejected(
        &client,
        CertificateProblem::NotYetValid,
        "CN=LwM2M Test Server (depth 0): not valid before 2023-11-14T22:13:20Z",
    );
    assert!(
        matches!(server, DtlsError::CertificateRefusedByPeer { .. }),
        "{server}"
    );
}

#[test]
fn server_certificate_from_an_untrusted_ca() {
    let pki = pki();
    let client = cert_client_with(
        &pki.client_cert,
        store(&pki.other_root),
        NOW_UTC,
        SERVER_NAME,
    );
    let (client, server) = refused(&client, &cert_server());
    assert_rejected(
        &client,
        CertificateProblem::Untrusted,
        "not correctly signed by the trusted CA",
    );
    assert_refused_by_peer(&server, 48);
    assert!(server.to_string().contains("unknown_ca"), "{server}");
}

#[test]
fn server_certificate_for_another_name() {
    let pki = pki();
    let client = cert_client_with(&pki.client_cert, store(&pki.root), NOW_UTC, "other.example");
    let (client, server) = refused(&client, &cert_server());
    assert_rejected(
        &client,
        CertificateProblem::NameMismatch,
        "CN=LwM2M Test Server (depth 0): not valid for name \"other.example\"",
    );
    assert!(
        matches!(server, DtlsError::CertificateRefusedByPeer { .. }),
        "{server}"
    );

    // The subjectAltName is what counts (not the CN), and an IP literal is not sent as SNI
    // but still checked.
    let by_ip = cert_client_with(&pki.client_cert, store(&pki.root), NOW_UTC, "192.0.2.1");
    let mut pair = Pair::new(&by_ip, &cert_server(), Link::perfect());
    let outcome = pair.run();
    assert_rejected(
        outcome.client_error.as_ref().unwrap(),
        CertificateProblem::NameMismatch,
        "192.0.2.1",
    );
    let hello = &pair.client_sent[0].1;
    assert!(
        !hello.windows(9).any(|w| w == b"192.0.2.1"),
        "no IP literal as SNI"
    );
}

#[test]
fn client_certificate_not_trusted_by_the_server() {
    let pki = pki();
    let client = cert_client_with(
        &pki.foreign_client_cert,
        store(&pki.root),
        NOW_UTC,
        SERVER_NAME,
    );
    let (client, server) = refused(&client, &cert_server());
    assert_rejected(
        &server,
        CertificateProblem::Untrusted,
        "CN=dev1 (depth 0): The certificate is not correctly signed by the trusted CA",
    );
    assert_refused_by_peer(&client, 48);
    assert!(client.is_authentication_failure());

    // And a server trusting only the other root refuses the genuine client certificate.
    let picky = cert_server_trusting(store(&pki.other_root));
    let (_, server) = refused(&cert_client(), &picky);
    assert_rejected(&server, CertificateProblem::Untrusted, "CN=dev1");
}

/// A trust store with `ca`'s certificate and a CRL from `issuer` revoking `revoked`; the
/// CRL's nextUpdate is long past at the verification time, which must not matter.
fn store_with_crl(
    ca: &CertificateIssuer,
    issuer: &CertificateIssuer,
    revoked: &Certificate,
) -> TrustStore {
    let mut trust = store(ca);
    let crl = crate::crypto::test_support::crl_revoking(
        issuer,
        &[revoked.serial()],
        utc(T0 - 2 * DAY),
        utc(T0 - DAY),
        &mut Drbg::from_seed(23),
    );
    assert_eq!(trust.add_crl_bytes(&crl).unwrap(), 1);
    trust
}

#[test]
fn a_revoked_client_certificate_is_refused_by_the_server() {
    let pki = pki();
    let server = cert_server_trusting(store_with_crl(&pki.root, &pki.root, &pki.client_cert));
    let (client, server) = refused(&cert_client(), &server);
    match &server {
        DtlsError::CertificateRejected { reason, .. } => {
            assert!(
                reason.contains("CN=dev1") && reason.contains("revoked"),
                "{reason}"
            )
        }
        other => panic!("expected a rejected certificate, got {other}"),
    }
    assert!(client.is_authentication_failure(), "{client}");
}

#[test]
fn a_revoked_server_certificate_is_refused_by_the_client_and_others_still_work() {
    let pki = pki();
    let trust = store_with_crl(&pki.root, &pki.mid, &pki.server_cert);
    let client = cert_client_with(&pki.client_cert, trust, NOW_UTC, SERVER_NAME);
    let (client, _) = refused(&client, &cert_server());
    match &client {
        DtlsError::CertificateRejected { reason, .. } => assert!(
            reason.contains("CN=LwM2M Test Server") && reason.contains("revoked"),
            "{reason}"
        ),
        other => panic!("expected a rejected certificate, got {other}"),
    }
    // A CRL that lists another serial leaves the handshake alone.
    let trust = store_with_crl(&pki.root, &pki.mid, &pki.intermediate);
    let client = cert_client_with(&pki.client_cert, trust, NOW_UTC, SERVER_NAME);
    let mut pair = Pair::new(&client, &cert_server(), Link::perfect());
    let outcome = pair.run();
    assert_eq!(outcome.client, DtlsState::Established, "{outcome:?}");
}

// ---------------------------------------------------------------------------------------------
// Hostile and odd input

const HELLO_VERIFY_REQUEST: u8 = 3;

/// The handshake message type of the first record, if it is an epoch-0 handshake record.
fn handshake_type(datagram: &[u8]) -> Option<u8> {
    (datagram.len() > 13 && datagram[0] == 22 && datagram[3..5] == [0, 0]).then(|| datagram[13])
}

#[test]
fn garbage_and_truncated_records_do_not_break_an_established_session() {
    let mut pair = Pair::new(
        &psk_client(PSK_IDENTITY, psk_key()),
        &psk_server(),
        Link::perfect(),
    );
    assert!(pair.run().established());

    // A genuine application record to mangle.
    pair.client.send(pair.now, b"genuine").unwrap();
    let genuine = pair.client.poll_transmit().unwrap();
    pair.server.handle_datagram(pair.now, &genuine).unwrap();
    assert_eq!(pair.server.recv().as_deref(), Some(&b"genuine"[..]));

    let mut rng = SeededRng::new(99);
    let mut hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        genuine.clone(), // a replay
        [genuine.clone(), genuine.clone()].concat(),
        [genuine.clone(), vec![23, 0xFE, 0xFD, 0, 1]].concat(),
    ];
    for cut in 1..genuine.len() {
        hostile.push(genuine[..cut].to_vec());
    }
    for i in 13..genuine.len() {
        let mut flipped = genuine.clone();
        flipped[i] ^= 0x20; // authenticated bytes: the MAC fails
        hostile.push(flipped);
    }
    let mut huge_length = genuine.clone();
    huge_length[11..13].copy_from_slice(&[0xFF, 0xFF]);
    hostile.push(huge_length);
    let mut old_epoch = genuine.clone();
    old_epoch[3..5].copy_from_slice(&[0, 0]);
    hostile.push(old_epoch);
    for len in [1usize, 12, 13, 14, 50, 300, 1500] {
        for _ in 0..20 {
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            hostile.push(d.clone());
            // Random bodies behind a plausible header too.
            if len > 13 {
                d[0] = 23;
                d[1..3].copy_from_slice(&[0xFE, 0xFD]);
                d[3..5].copy_from_slice(&[0, 1]);
                d[11..13].copy_from_slice(&((len - 13) as u16).to_be_bytes());
                hostile.push(d);
            }
        }
    }
    for (i, d) in hostile.iter().enumerate() {
        assert_eq!(
            pair.server.handle_datagram(pair.now, d),
            Ok(()),
            "#{i}: {d:02x?}"
        );
        assert_eq!(
            pair.client.handle_datagram(pair.now, d),
            Ok(()),
            "#{i}: {d:02x?}"
        );
    }
    assert!(pair.server.is_established() && pair.client.is_established());
    assert_eq!(
        pair.server.recv(),
        None,
        "nothing forged or replayed got through"
    );
    assert_eq!(pair.client.recv(), None);
    assert!(pair.server.discarded_datagrams() > 100);

    let (req, resp) = pair.ping_pong(b"still there?", b"yes");
    assert_eq!((req, resp), (b"still there?".to_vec(), b"yes".to_vec()));

    // Seeded mutations of real traffic (application records, alerts, the handshake's
    // encrypted Finished records), glued together and cut anywhere.
    let mut samples: Vec<Vec<u8>> = vec![genuine];
    for size in [0usize, 1, 100, 1000] {
        pair.server.send(pair.now, &vec![3; size]).unwrap();
        samples.push(pair.server.poll_transmit().unwrap());
    }
    samples.extend(
        pair.server_sent
            .iter()
            .map(|(_, d)| d.clone())
            .filter(|d| d.len() > 13),
    );
    let mut noise = [0u8; 8];
    for round in 0..2000 {
        rng.fill_bytes(&mut noise);
        let a = &samples[usize::from(noise[0]) % samples.len()];
        let b = &samples[usize::from(noise[1]) % samples.len()];
        let mut d = if noise[2] % 3 == 0 {
            [a.clone(), b.clone()].concat()
        } else {
            a.clone()
        };
        for k in 0..usize::from(noise[3] % 4) {
            let i = usize::from(u16::from_le_bytes([noise[4], noise[5 + k % 3]])) % d.len();
            d[i] = d[i].wrapping_add(noise[7] | 1);
        }
        d.truncate(d.len() - usize::from(noise[6]) % (d.len() / 2 + 1));
        assert_eq!(
            pair.client.handle_datagram(pair.now, &d),
            Ok(()),
            "round {round}"
        );
        let _ = pair.client.recv(); // an unmutated sample may well be new and deliverable
    }
    assert!(pair.client.is_established());

    // The same towards the server, from the client's records after its ClientHellos (a
    // ClientHello with a valid cookie is a reconnect, see the restart test).
    let mut samples: Vec<Vec<u8>> = pair.client_sent[2..]
        .iter()
        .map(|(_, d)| d.clone())
        .collect();
    for size in [0usize, 1, 100, 1000] {
        pair.client.send(pair.now, &vec![4; size]).unwrap();
        samples.push(pair.client.poll_transmit().unwrap());
    }
    for round in 0..2000 {
        rng.fill_bytes(&mut noise);
        let mut d = samples[usize::from(noise[0]) % samples.len()].clone();
        for k in 0..usize::from(noise[3] % 4) {
            let i = usize::from(u16::from_le_bytes([noise[4], noise[5 + k % 3]])) % d.len();
            d[i] = d[i].wrapping_add(noise[7] | 1);
        }
        d.truncate(d.len() - usize::from(noise[6]) % (d.len() / 2 + 1));
        assert_eq!(
            pair.server.handle_datagram(pair.now, &d),
            Ok(()),
            "round {round}"
        );
        let _ = pair.server.recv();
    }
    assert!(pair.server.is_established());
    let (req, _) = pair.ping_pong(b"after the storm", b"ok");
    assert_eq!(req, b"after the storm");
}

#[test]
fn garbage_during_the_handshake_is_ignored_and_a_forged_hello_is_named() {
    let client = psk_client(PSK_IDENTITY, psk_key());
    let mut pair = Pair::new(&client, &psk_server(), Link::perfect());
    let mut rng = SeededRng::new(5);
    for len in [0usize, 5, 13, 40, 200] {
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        pair.server.handle_datagram(pair.now, &d).unwrap();
        pair.client.handle_datagram(pair.now, &d).unwrap();
    }
    assert!(pair.run().established());

    // A ServerHello that does not parse, arriving where the client expects one, is fatal
    // and reported as malformed.
    let mut pair = Pair::new(&client, &psk_server(), Link::perfect());
    let _client_hello = pair.client.poll_transmit().unwrap();
    let mut forged = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 16];
    forged.extend_from_slice(&[2, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 0xFE, 0xFD, 0, 0]);
    let err = pair.client.handle_datagram(pair.now, &forged).unwrap_err();
    assert!(matches!(err, DtlsError::MalformedRecord { .. }), "{err}");
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(pair.client.state(), DtlsState::Failed);
}

#[test]
fn cookies_are_bound_to_the_client_address_and_shared_by_the_server_config() {
    let server_config = psk_server();
    let mut client = DtlsSession::new(&psk_client(PSK_IDENTITY, psk_key()), START).unwrap();
    let mut server = DtlsSession::accept(&server_config, START, CLIENT_ADDR).unwrap();
    let hello = client.poll_transmit().unwrap();
    server.handle_datagram(START, &hello).unwrap();
    let hvr = server.poll_transmit().unwrap();
    assert_eq!(handshake_type(&hvr), Some(HELLO_VERIFY_REQUEST));
    assert_eq!(
        server.poll_timeout(),
        None,
        "no server state is kept waiting for a cookie"
    );
    client.handle_datagram(START, &hvr).unwrap();
    let hello_with_cookie = client.poll_transmit().unwrap();

    // Presented from another address, the cookie does not verify: another HVR.
    let mut elsewhere = DtlsSession::accept(&server_config, START, b"203.0.113.9:1").unwrap();
    elsewhere
        .handle_datagram(START, &hello_with_cookie)
        .unwrap();
    assert_eq!(
        handshake_type(&elsewhere.poll_transmit().unwrap()),
        Some(HELLO_VERIFY_REQUEST)
    );
    // From the right address, a fresh session of the same server config accepts it (the
    // cookie key is shared), and answers with the ServerHello flight.
    let mut fresh = DtlsSession::accept(&server_config, START, CLIENT_ADDR).unwrap();
    fresh.handle_datagram(START, &hello_with_cookie).unwrap();
    assert_eq!(handshake_type(&fresh.poll_transmit().unwrap()), Some(2));
    assert!(fresh.poll_timeout().is_some());
}

// ---------------------------------------------------------------------------------------------
// Session life

#[test]
fn resumption_with_a_saved_session() {
    for (client, server) in [
        (psk_client(PSK_IDENTITY, psk_key()), psk_server()),
        (cert_client(), cert_server()),
    ] {
        let mut first = Pair::new(&client, &server, Link::perfect());
        assert!(first.run().established());
        let saved = first.client.saved_session().expect("client session saved");
        assert!(first.server.saved_session().is_none());
        assert!(format!("{saved:?}").ends_with("bytes)"));
        let full_bytes: usize = first.server_sent.iter().map(|(_, d)| d.len()).sum();

        // Persisted and restored as bytes, then offered to a new server session.
        let restored = SavedSession::from_bytes(saved.as_bytes().to_vec());
        let again = client.clone().resume_from(restored);
        let mut second = Pair::new(&again, &server, Link::perfect());
        assert!(second.run().established());
        assert!(second.client.resumed() && second.server.resumed());
        let resumed_bytes: usize = second.server_sent.iter().map(|(_, d)| d.len()).sum();
        assert!(
            resumed_bytes * 4 < full_bytes * 3,
            "abbreviated handshake: {resumed_bytes} vs {full_bytes} bytes from the server"
        );
        assert_eq!(second.client.cipher_suite(), first.client.cipher_suite());
        // The server's certificate comes back with the session.
        assert_eq!(
            second.client.peer_certificate(),
            first.client.peer_certificate()
        );
        let (req, _) = second.ping_pong(b"resumed", b"ok");
        assert_eq!(req, b"resumed");

        // Bytes that are not a session: a full handshake instead.
        let junk = client
            .clone()
            .resume_from(SavedSession::from_bytes(vec![1, 2, 3]));
        let mut third = Pair::new(&junk, &server, Link::perfect());
        assert!(third.run().established());
        assert!(!third.client.resumed());
    }
}

#[test]
fn close_notify_ends_the_session_on_both_sides() {
    let mut pair = Pair::new(
        &psk_client(PSK_IDENTITY, psk_key()),
        &psk_server(),
        Link::perfect(),
    );
    assert!(pair.run().established());
    pair.client.close(pair.now);
    assert_eq!(pair.client.state(), DtlsState::Closed);
    let alert = pair.client.poll_transmit().expect("close_notify");
    assert_eq!(
        pair.server.handle_datagram(pair.now, &alert),
        Err(DtlsError::PeerClosed)
    );
    assert_eq!(pair.server.state(), DtlsState::Closed);
    assert_eq!(pair.server.send(pair.now, b"x"), Err(DtlsError::Closed));
    assert_eq!(pair.client.send(pair.now, b"x"), Err(DtlsError::Closed));
    assert_eq!(
        pair.server.handle_datagram(pair.now, &alert),
        Err(DtlsError::Closed)
    );
}

#[test]
fn a_client_restarting_on_the_same_address_gets_a_new_handshake() {
    let client = psk_client(PSK_IDENTITY, psk_key());
    let mut pair = Pair::new(&client, &psk_server(), Link::perfect());
    assert!(pair.run().established());
    pair.restart_client(&client);
    assert!(pair.run().established(), "{:?}", pair.server);
    let (req, _) = pair.ping_pong(b"after restart", b"ok");
    assert_eq!(req, b"after restart");

    // A server that lost its session (restarted) accepts the client's next handshake too.
    pair.fresh_server_session();
    pair.restart_client(&client);
    assert!(pair.run().established());
}

#[test]
fn sessions_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<DtlsSession>();
    is_send::<DtlsConfig>();
}

#[test]
fn roles_are_checked() {
    let client = psk_client(PSK_IDENTITY, psk_key());
    let server = psk_server();
    assert!(matches!(
        DtlsSession::accept(&client, START, CLIENT_ADDR),
        Err(DtlsError::InvalidConfig(_))
    ));
    assert!(matches!(
        DtlsSession::new(&server, START),
        Err(DtlsError::InvalidConfig(_))
    ));
    assert!(matches!(
        DtlsSession::accept(&server, START, b""),
        Err(DtlsError::InvalidConfig(_))
    ));
}
