//! The bootstrap + EST + management rig shared by the client-level simulator tests: the
//! client's bootstrap connection is routed to the test server's sans-IO Bootstrap-Server (with
//! its EST CA), its management connections to the LwM2M server, each behind a DTLS listener
//! when the account is secure, on a virtual clock. Delivery is immediate unless a test drops
//! datagrams.

pub use std::net::{IpAddr, Ipv4Addr, SocketAddr};
pub use std::time::Duration;

pub use estuary::coap::TxParams;
pub use estuary::crypto::{CertificateIssuer, Drbg, SecretBytes, TrustStore};
pub use estuary::dm::objects::{SecurityInstance, SecurityMode};
pub use estuary::est::ReenrollConfig;
pub use estuary::rng::SeededRng;
pub use estuary::time::{Instant, Now, UtcTime};
pub use estuary::{Client, ClientConfig, ConnectionId, Event};
pub use estuary_testserver::bootstrap_server::{
    BootstrapEvent, BootstrapServer, ProvisionedAccount, Provisioning,
};
pub use estuary_testserver::coaps::{SecureListener, SecureListenerConfig};
pub use estuary_testserver::est_server::EstFault;
pub use estuary_testserver::est_server::{EstCa, EstEvent, PeerAuth};
pub use estuary_testserver::lwm2m_server::{Lwm2mServer, ServerEvent};
pub use estuary_testserver::pki::{Issued, TestPki};

pub const EP: &str = "dev1";
pub const BS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5694);
pub const LW_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5684);
pub const PSK_KEY: [u8; 16] = [0x5A; 16];

pub fn client_addr(conn: ConnectionId) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000 + conn.0 as u16)
}

pub fn conn_of(peer: SocketAddr) -> ConnectionId {
    ConnectionId(u32::from(peer.port() - 40_000))
}

/// How the client talks to the Bootstrap-Server, and what account it is given.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Setup {
    NoSecToNoSec,
    PskToPsk,
    PskToEst,
    /// Certificate mode (2) both ways: the bootstrap account holds a factory certificate
    /// from the test PKI, and the Bootstrap-Server writes a mode-2 account with another
    /// certificate for the management server.
    CertToCert,
}

pub struct Side {
    pub listener: Option<SecureListener>,
}

impl Side {
    pub fn inbound(&mut self, now: Now, peer: SocketAddr, data: &[u8]) -> Vec<Vec<u8>> {
        match self.listener.as_mut() {
            Some(l) => l.handle_datagram(now, peer, data),
            None => vec![data.to_vec()],
        }
    }
}

pub struct Rig {
    pub now: Now,
    pub client: Client,
    pub bs: BootstrapServer,
    pub lw: Lwm2mServer,
    pub bs_side: Side,
    pub lw_side: Side,
    pub events: Vec<(Duration, Event)>,
    pub bs_events: Vec<(Duration, BootstrapEvent)>,
    pub lw_events: Vec<(Duration, ServerEvent)>,
    pub start: Instant,
    /// Drop every datagram to or from the Bootstrap-Server.
    pub bs_silent: bool,
    /// Drop every datagram to the management server.
    pub lw_silent: bool,
    /// Datagrams the client sent, per connection kind (bootstrap, management).
    pub sent: [u64; 2],
    /// Every datagram the client sent, when `capture` is on.
    pub captured: Vec<Vec<u8>>,
    pub capture: bool,
    pub pki: TestPki,
    pub steps: u64,
    /// Who each DTLS listener saw at the other end, in order, each change once:
    /// `(true, …)` for the bootstrap listener, `(false, …)` for the management one.
    pub peer_auths: Vec<(bool, PeerAuth)>,
    /// `Setup::CertToCert`: the factory certificate of the bootstrap account, and the one
    /// the Bootstrap-Server writes for the management account.
    pub factory_cert: Option<Issued>,
    pub management_cert: Option<Issued>,
}

pub const EPOCH: UtcTime = UtcTime::from_unix_seconds(1_767_225_600);

pub fn rig(setup: Setup, cert_validity: Duration, reenroll: ReenrollConfig) -> Rig {
    rig_with_lifetime(setup, cert_validity, reenroll, 120)
}

pub fn rig_with_lifetime(
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
        Setup::CertToCert => {}
    }
    // Certificates of Setup::CertToCert, from their own generator so the other setups'
    // randomness stays as it was.
    let (factory_cert, management_cert) = if setup == Setup::CertToCert {
        let mut crng = Drbg::from_seed(78);
        let from = UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 86_400);
        let to = UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 5 * 365 * 86_400);
        let factory = pki.issue_client(EP, from, to, &mut crng).unwrap();
        let management = pki.issue_client(EP, from, to, &mut crng).unwrap();
        account.mode = SecurityMode::Certificate;
        account.identity = management.cert.der().to_vec();
        account.secret_key = management.key.to_der().expose().to_vec();
        account.server_public_key = pki.server_cert.der().to_vec();
        (Some(factory), Some(management))
    } else {
        (None, None)
    };
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
    if let Some(f) = &factory_cert {
        b.security_mode = SecurityMode::Certificate;
        b.public_cert_or_psk_identity = f.cert.der().to_vec();
        b.private_cert_or_psk_key = f.key.to_der().expose().to_vec();
        b.server_public_key = pki.server_cert.der().to_vec();
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
        peer_auths: Vec::new(),
        factory_cert,
        management_cert,
    }
}

impl Rig {
    pub fn elapsed(&self) -> Duration {
        self.now.mono.saturating_duration_since(self.start)
    }

    /// Moves everything that can move at the current time.
    pub fn pump(&mut self) {
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
                            self.note_peer(true, &auth);
                            self.bs.set_peer_auth(from, auth);
                        }
                        self.bs.handle_datagram(self.now, from, &d);
                    }
                } else {
                    self.sent[1] += 1;
                    if self.lw_silent {
                        continue;
                    }
                    let delivered = self.lw_side.inbound(self.now, from, &t.data);
                    if let Some(auth) = self
                        .lw_side
                        .listener
                        .as_ref()
                        .and_then(|l| l.est_peer_auth(from))
                    {
                        self.note_peer(false, &auth);
                    }
                    for d in delivered {
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
    pub fn run_until(&mut self, until: Duration, stop: impl Fn(&Rig) -> bool) {
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

    fn note_peer(&mut self, bootstrap: bool, auth: &PeerAuth) {
        let last = self.peer_auths.iter().rev().find(|(b, _)| *b == bootstrap);
        if last.map(|(_, a)| a) != Some(auth) {
            self.peer_auths.push((bootstrap, auth.clone()));
        }
    }

    /// The certificate serials a listener saw, in order (`bootstrap` picks which).
    pub fn peer_serials(&self, bootstrap: bool) -> Vec<String> {
        self.peer_auths
            .iter()
            .filter(|(b, _)| *b == bootstrap)
            .filter_map(|(_, a)| match a {
                PeerAuth::Certificate(c) => Some(c.serial_hex()),
                _ => None,
            })
            .collect()
    }

    pub fn registered(&self) -> bool {
        self.lw_events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::Registered { endpoint, .. } if endpoint == EP))
    }

    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
}

pub fn start(r: &mut Rig) {
    r.client.start(r.now).unwrap();
}

impl Rig {
    /// Rebuilds the (not yet started) client with `configure` applied to its configuration;
    /// the Security instances given so far (the bootstrap account) are kept.
    pub fn reconfigure(&mut self, configure: impl FnOnce(&mut ClientConfig)) {
        let mut cfg = self.client.config().clone();
        configure(&mut cfg);
        let accounts: Vec<(u16, SecurityInstance)> = self
            .client
            .data_model()
            .security
            .iter()
            .map(|(iid, s)| (iid, s.clone()))
            .collect();
        self.client = Client::new(cfg, Box::new(SeededRng::new(3))).unwrap();
        for (iid, s) in accounts {
            self.client
                .data_model_mut()
                .security
                .insert(iid, s)
                .unwrap();
        }
    }

    /// Switches the EST CA's fault behaviour (an empty list clears it).
    pub fn set_est_faults(&mut self, faults: Vec<EstFault>) {
        self.bs.est_mut().expect("an EST CA").set_faults(faults);
    }

    /// Bootstrap-Requests the Bootstrap-Server received.
    pub fn bootstrap_requests(&self) -> usize {
        self.bs_events
            .iter()
            .filter(|(_, e)| matches!(e, BootstrapEvent::Requested { .. }))
            .count()
    }

    /// When the management server accepted a Register, in order.
    pub fn registration_times(&self) -> Vec<Duration> {
        self.lw_events
            .iter()
            .filter(|(_, e)| matches!(e, ServerEvent::Registered { .. }))
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn registrations(&self) -> usize {
        self.registration_times().len()
    }

    /// Panics if any datagram the client sent (captured) holds the private scalar of the
    /// SEC1 key `sec1`; returns how many datagrams were scanned.
    pub fn assert_no_datagram_carries_key(&self, sec1: &[u8]) -> usize {
        let scalar = private_scalar(sec1);
        for d in &self.captured {
            assert!(
                !d.windows(scalar.len()).any(|w| w == scalar),
                "a datagram carries the private key"
            );
        }
        self.captured.len()
    }

    /// What the EST CA did, in order.
    pub fn est_events(&self) -> Vec<EstEvent> {
        self.bs_events
            .iter()
            .filter_map(|(_, e)| match e {
                BootstrapEvent::Est { event, .. } => Some(event.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The 32-byte private scalar inside a SEC1 `ECPrivateKey` (the OCTET STRING after the
/// version INTEGER).
pub fn private_scalar(sec1: &[u8]) -> Vec<u8> {
    let pos = sec1
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("SEC1 private key octet string");
    sec1[pos + 2..pos + 34].to_vec()
}
