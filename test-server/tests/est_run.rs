//! EST over the test server's bootstrap coaps port, in-process over real UDP on 127.0.0.1:
//! a DTLS client session with `dev1`'s factory certificate fetches /est/crts and enrolls a
//! CSR at /est/sen; the certificate comes from the state directory's root CA with the
//! configured validity. With `--fault est-503` the first enrollment is answered 5.03 with
//! Max-Age; with `--fault est-delay` it is acknowledged at once and answered later as a
//! separate response. Bounded to ~30 s.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use estuary::coap::{
    self, code, content_format, CoapOption, Endpoint, EndpointEvent, Packet, TxParams,
};
use estuary::crypto::{Certificate, Csr, Drbg, KeyPair, TrustStore};
use estuary::dtls::{Credentials, DtlsConfig, DtlsSession};
use estuary::time::{Instant, UtcTime};
use estuary::SeededRng;
use estuary_testserver::est_server::EstFault;
use estuary_testserver::init::{self, InitOptions};
use estuary_testserver::{TestServer, TestServerConfig};

/// A CoAP endpoint over one DTLS session on a real socket.
struct EstClient {
    sock: UdpSocket,
    dtls: DtlsSession,
    coap: Endpoint,
    origin: StdInstant,
}

impl EstClient {
    fn connect(server: SocketAddr, config: &DtlsConfig, limit: Duration) -> EstClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let origin = StdInstant::now();
        let mut rng = SeededRng::new(7);
        let mut c = EstClient {
            dtls: DtlsSession::new(config, Instant::from_millis(0)).unwrap(),
            coap: Endpoint::new(TxParams::default(), 4096, 4096, &mut rng),
            sock,
            origin,
        };
        while !c.dtls.is_established() {
            assert!(origin.elapsed() < limit, "DTLS handshake did not finish");
            assert!(c.dtls.error().is_none(), "{:?}", c.dtls.error());
            c.step();
        }
        c
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    /// Sends what is queued, then waits up to 50 ms for one datagram.
    fn step(&mut self) {
        let now = self.now();
        while let Some(d) = self.coap.poll_transmit() {
            self.dtls.send(now, &d).unwrap();
        }
        while let Some(d) = self.dtls.poll_transmit() {
            self.sock.send(&d).unwrap();
        }
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let _ = self.dtls.handle_datagram(self.now(), &buf[..n]);
                while let Some(p) = self.dtls.recv() {
                    let _ = self.coap.handle_datagram(self.now(), &p);
                }
            }
            Err(_) => {
                let _ = self.dtls.handle_timeout(self.now());
                self.coap.handle_timeout(self.now());
            }
        }
    }

    /// One confirmable request and its response.
    fn request(&mut self, req: Packet, limit: Duration) -> Packet {
        let start = StdInstant::now();
        let handle = self.coap.send_request(self.now(), req, true).unwrap();
        loop {
            assert!(start.elapsed() < limit, "no response");
            while let Some(ev) = self.coap.poll_event() {
                match ev {
                    EndpointEvent::Response { handle: h, packet } if h == handle => return packet,
                    EndpointEvent::Failed { handle: h, error } if h == handle => {
                        panic!("request failed: {error:?}")
                    }
                    _ => {}
                }
            }
            self.step();
        }
    }
}

fn enroll_request(csr: &[u8]) -> Packet {
    let mut req = coap::new_request(code::POST, "/est/sen");
    coap::set_content_format(&mut req, content_format::PKCS10);
    coap::set_uint_option(
        &mut req,
        CoapOption::Accept,
        content_format::PKIX_CERT as u32,
    );
    req.payload = csr.to_vec();
    req
}

fn utc_now() -> UtcTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UtcTime::from_unix_millis(ms as i64)
}

/// Starts a server for `dev1` with `faults`; returns it, the state dir guard and dev1's
/// DTLS configuration with its factory certificate.
fn start(
    validity: Duration,
    faults: Vec<EstFault>,
) -> (
    estuary_testserver::TestServerHandle,
    tempfile::TempDir,
    DtlsConfig,
    KeyPair,
    Certificate,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    init::init(&InitOptions {
        dir: dir.clone(),
        endpoints: vec!["dev1".into()],
        force: false,
    })
    .unwrap();
    let mut config = init::load_config(&dir).unwrap();
    config.ports.lwm2m_coap = 0;
    let mut cfg = TestServerConfig::from_config(&config);
    cfg.control_addr = None;
    cfg.echo_events = false;
    cfg.cert_validity = validity;
    cfg.est_faults = faults;
    let server = TestServer::start(cfg).unwrap();
    let ep = dir.join("endpoints/dev1");
    let factory =
        Certificate::from_pem(&std::fs::read(ep.join("factory-cert.pem")).unwrap()).unwrap();
    let key =
        KeyPair::from_der_or_pem(&std::fs::read(ep.join("factory-key.pem")).unwrap()).unwrap();
    let root = Certificate::from_pem(&std::fs::read(ep.join("trust-anchor.pem")).unwrap()).unwrap();
    let mut trust = TrustStore::new();
    trust.add(root.clone());
    let rng = Drbg::from_seed(3);
    let dtls = DtlsConfig::client(
        Credentials::Certificate {
            chain: vec![factory],
            key: KeyPair::from_der_or_pem(&std::fs::read(ep.join("factory-key.pem")).unwrap())
                .unwrap(),
        },
        &rng,
    )
    .with_trust(trust)
    .with_verification_time(utc_now());
    (server, tmp, dtls, key, root)
}

#[test]
fn factory_certificate_enrolls_at_the_root_ca_over_bootstrap_coaps() {
    let limit = Duration::from_secs(10);
    let validity = Duration::from_secs(120);
    let (server, _tmp, dtls, key, root) = start(validity, Vec::new());
    let addr = server
        .bootstrap_coaps_addr()
        .expect("a bootstrap coaps port");
    let mut c = EstClient::connect(addr, &dtls, limit);

    // /est/crts as one DER certificate: the root CA.
    let mut crts = coap::new_request(code::GET, "/est/crts");
    coap::set_uint_option(
        &mut crts,
        CoapOption::Accept,
        content_format::PKIX_CERT as u32,
    );
    let r = c.request(crts, limit);
    assert_eq!(coap::raw_code(&r), code::CONTENT);
    assert_eq!(r.payload, root.der());
    server
        .wait_for_event("cacerts", "dev1", Duration::from_secs(5))
        .expect("cacerts event");

    // /est/sen with a CSR for the factory key's CN.
    let mut rng = Drbg::from_seed(9);
    let csr = Csr::build(&key, "CN=dev1", &mut rng).unwrap();
    let before = utc_now();
    let r = c.request(enroll_request(&csr), limit);
    assert_eq!(coap::raw_code(&r), code::CREATED, "{r:?}");
    let cert = Certificate::from_der(&r.payload).unwrap();
    assert_eq!(cert.issuer(), root.subject());
    assert!(cert.matches_key(&key));
    let lifetime = cert.not_after().unix_millis() - cert.not_before().unix_millis();
    assert!(
        (lifetime - 120_000).abs() <= 120_000,
        "validity {lifetime} ms, expected about 120 s"
    );
    assert!(cert.not_after().unix_millis() >= before.unix_millis() + 60_000);
    let ev = server
        .wait_for_event("enrolled", "dev1", Duration::from_secs(5))
        .expect("enrolled event");
    assert!(ev.kind.log_line().contains(&cert.serial_hex()), "{ev:?}");

    // Registering at the LwM2M coaps port with the EST certificate shows as mode "est".
    let est_dtls = DtlsConfig::client(
        Credentials::Certificate {
            chain: vec![cert.clone()],
            key: key.clone(),
        },
        &Drbg::from_seed(4),
    )
    .with_trust(trust_of(&root))
    .with_verification_time(utc_now());
    let mut m = EstClient::connect(server.lwm2m_coaps_addr().unwrap(), &est_dtls, limit);
    let mut reg = coap::new_request(code::POST, "/rd");
    for q in ["ep=dev1", "lt=60", "lwm2m=1.1"] {
        coap::add_uri_query(&mut reg, q);
    }
    coap::set_content_format(&mut reg, content_format::LINK_FORMAT);
    reg.payload = b"</1/0>,</3/0>".to_vec();
    assert_eq!(coap::raw_code(&m.request(reg, limit)), code::CREATED);
    let info = server.ctl().client("dev1").expect("dev1 registered");
    assert_eq!(info.security_mode, "est");
    assert_eq!(info.certificate_subject.as_deref(), Some(cert.subject()));
    assert!(info.certificate_not_after.is_some());
    server.stop();
}

fn trust_of(root: &Certificate) -> TrustStore {
    let mut t = TrustStore::new();
    t.add(root.clone());
    t
}

#[test]
fn est_503_fault_answers_service_unavailable_with_max_age_first() {
    let limit = Duration::from_secs(10);
    let fault = EstFault::parse("est-503").unwrap();
    let (server, _tmp, dtls, key, _root) = start(Duration::from_secs(3600), vec![fault]);
    let mut c = EstClient::connect(server.bootstrap_coaps_addr().unwrap(), &dtls, limit);
    let mut rng = Drbg::from_seed(9);
    let csr = Csr::build(&key, "CN=dev1", &mut rng).unwrap();
    let first = c.request(enroll_request(&csr), limit);
    assert_eq!(coap::raw_code(&first), code::SERVICE_UNAVAILABLE);
    assert!(coap::uint_option(&first, CoapOption::MaxAge).is_some());
    let second = c.request(enroll_request(&csr), limit);
    assert_eq!(coap::raw_code(&second), code::CREATED);
    server.stop();
}

#[test]
fn est_delay_fault_acknowledges_at_once_and_answers_separately() {
    let limit = Duration::from_secs(15);
    let fault = EstFault::parse("est-delay=3").unwrap();
    let (server, _tmp, dtls, key, root) = start(Duration::from_secs(3600), vec![fault]);
    let mut c = EstClient::connect(server.bootstrap_coaps_addr().unwrap(), &dtls, limit);
    let mut rng = Drbg::from_seed(9);
    let csr = Csr::build(&key, "CN=dev1", &mut rng).unwrap();
    let before = c.coap.stats();
    let r = c.request(enroll_request(&csr), limit);
    let after = c.coap.stats();
    assert_eq!(coap::raw_code(&r), code::CREATED, "{r:?}");
    let cert = Certificate::from_der(&r.payload).unwrap();
    assert!(cert.matches_key(&key));
    assert_eq!(cert.issuer(), root.subject());
    // The request, then our ACK of the separate response; the empty ACK came before the
    // first retransmission was due (2-3 s < the 3 s delay), so nothing was resent.
    assert_eq!(after.retransmissions - before.retransmissions, 0);
    assert_eq!(after.datagrams_received - before.datagrams_received, 2);
    // Our ACK is queued by the response; step once so it goes out.
    c.step();
    assert_eq!(c.coap.stats().datagrams_sent - before.datagrams_sent, 2);
    server
        .wait_for_event("enrolled", "dev1", Duration::from_secs(5))
        .expect("enrolled event");
    server.stop();
}
