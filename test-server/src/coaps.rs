//! [`SecureListener`]: the test server's coaps side, sans-IO — one DTLS server session per
//! peer address in front of the plaintext `Lwm2mServer`. Datagrams from a peer go through its
//! session and come out as CoAP datagrams; the server's CoAP datagrams to that peer go back
//! through it. PSK clients are looked up by identity (one key per identity); certificate
//! clients must present a certificate that chains to the configured CAs. Both the run loop
//! (`run.rs`) and the simulator use it. It owns no socket and no clock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use estuary::crypto::{Certificate, Drbg, KeyPair, SecretBytes, TrustStore};
use estuary::dtls::{DtlsConfig, DtlsError, DtlsSession, DtlsState, HandshakeTimers, PskLookup};
use estuary::time::{Instant, Now};
use log::{debug, info, warn};

/// Peers with a session beyond this: the oldest one that is not established is dropped
/// first (a flood of ClientHellos must not grow the map without bound).
pub const MAX_PEERS: usize = 1024;

/// How the server authenticates clients.
#[derive(Clone, Debug, Default)]
pub struct SecureListenerConfig {
    /// PSK identity → key.
    pub psk: Vec<(Vec<u8>, SecretBytes)>,
    /// The server certificate chain (end-entity first) and key, and the CAs client
    /// certificates must chain to.
    pub certificate: Option<(Vec<Certificate>, KeyPair, TrustStore)>,
    pub timers: Option<HandshakeTimers>,
}

/// Who a peer authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    Psk {
        identity: String,
    },
    Certificate {
        subject: String,
        not_after: i64,
    },
    /// A certificate the EST CA issued (not the factory CA).
    Est {
        subject: String,
        not_after: i64,
    },
}

impl PeerAuth {
    /// "psk" or "certificate", as the control API shows the security mode.
    pub fn mode(&self) -> &'static str {
        match self {
            PeerAuth::Psk { .. } => "psk",
            PeerAuth::Certificate { .. } => "certificate",
            PeerAuth::Est { .. } => "est",
        }
    }
}

/// What the listener reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecureEvent {
    Established {
        peer: SocketAddr,
        auth: PeerAuth,
        cipher_suite: String,
    },
    /// A handshake failed; `reason` names what was refused.
    HandshakeFailed { peer: SocketAddr, reason: String },
}

/// The coaps side of the server.
pub struct SecureListener {
    config: DtlsConfig,
    sessions: HashMap<SocketAddr, DtlsSession>,
    /// Peer addresses in the order their sessions were created.
    order: VecDeque<SocketAddr>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<SecureEvent>,
    /// How each peer last authenticated; kept after its session closes (a client that
    /// closes after registering is still known by how it registered).
    auth: HashMap<SocketAddr, PeerAuth>,
    /// Subject of the EST CA: certificates it issued count as mode "est".
    est_issuer: Option<String>,
}

impl SecureListener {
    pub fn new(cfg: SecureListenerConfig, rng: &Drbg) -> Result<Self, DtlsError> {
        let mut config = DtlsConfig::server(rng)?;
        if !cfg.psk.is_empty() {
            config = config.with_psk_lookup(PskLookup::from_table(cfg.psk));
        }
        if let Some((chain, key, cas)) = cfg.certificate {
            config = config.with_certificate(chain, key, cas);
        }
        if let Some(t) = cfg.timers {
            config = config.with_handshake_timers(t);
        }
        Ok(SecureListener {
            config,
            sessions: HashMap::new(),
            order: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            auth: HashMap::new(),
            est_issuer: None,
        })
    }

    /// Certificates issued by `subject` (the EST CA) are reported as mode "est".
    pub fn set_est_issuer(&mut self, subject: &str) {
        self.est_issuer = Some(subject.to_string());
    }

    /// True if `peer` talks to us over DTLS (its CoAP datagrams must be encrypted).
    pub fn has_peer(&self, peer: SocketAddr) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// Who `peer` authenticated as in its last established session.
    pub fn peer_auth(&self, peer: SocketAddr) -> Option<PeerAuth> {
        self.auth.get(&peer).cloned()
    }

    /// The DTLS identity of `peer`'s established session as the EST CA needs it: the
    /// verified certificate, or the PSK identity.
    pub fn est_peer_auth(&self, peer: SocketAddr) -> Option<crate::est_server::PeerAuth> {
        let s = self.sessions.get(&peer).filter(|s| s.is_established())?;
        if let Some(cert) = s.peer_certificate() {
            return Some(crate::est_server::PeerAuth::Certificate(Box::new(
                cert.clone(),
            )));
        }
        s.psk_identity()
            .map(|id| crate::est_server::PeerAuth::Psk(id.to_vec()))
    }

    fn session_auth(&self, peer: SocketAddr) -> Option<PeerAuth> {
        let s = self.sessions.get(&peer).filter(|s| s.is_established())?;
        if let Some(cert) = s.peer_certificate() {
            let (subject, not_after) =
                (cert.subject().to_string(), cert.not_after().unix_seconds());
            return Some(if self.est_issuer.as_deref() == Some(cert.issuer()) {
                PeerAuth::Est { subject, not_after }
            } else {
                PeerAuth::Certificate { subject, not_after }
            });
        }
        // mbedtls does not keep the identity of a resumed PSK session.
        Some(PeerAuth::Psk {
            identity: s.psk_identity().map_or_else(
                || "(resumed session)".to_string(),
                |id| String::from_utf8_lossy(id).into_owned(),
            ),
        })
    }

    /// A datagram from `peer`; returns the CoAP datagrams it carried.
    pub fn handle_datagram(&mut self, now: Now, peer: SocketAddr, data: &[u8]) -> Vec<Vec<u8>> {
        let usable = self
            .sessions
            .get(&peer)
            .is_some_and(|s| matches!(s.state(), DtlsState::Handshaking | DtlsState::Established));
        if !usable {
            self.sessions.remove(&peer);
            self.order.retain(|p| *p != peer);
            let mut config = self.config.clone();
            config.set_verification_time(now.utc);
            let id = peer.to_string();
            match DtlsSession::accept(&config, now.mono, id.as_bytes()) {
                Ok(s) => {
                    self.make_room();
                    self.sessions.insert(peer, s);
                    self.order.push_back(peer);
                }
                Err(e) => {
                    warn!("coaps {peer}: cannot start a DTLS session: {e}");
                    return Vec::new();
                }
            }
        }
        let Some(session) = self.sessions.get_mut(&peer) else {
            return Vec::new();
        };
        let was_up = session.is_established();
        let result = session.handle_datagram(now.mono, data);
        self.after_io(peer, was_up, result)
    }

    /// Encrypts a CoAP datagram to `peer`; false if it has no established session.
    pub fn send(&mut self, now: Now, peer: SocketAddr, coap: &[u8]) -> bool {
        let Some(s) = self.sessions.get_mut(&peer).filter(|s| s.is_established()) else {
            debug!("coaps {peer}: no established DTLS session; datagram dropped");
            return false;
        };
        if let Err(e) = s.send(now.mono, coap) {
            warn!("coaps {peer}: datagram not sent: {e}");
            return false;
        }
        self.collect(peer);
        true
    }

    pub fn handle_timeout(&mut self, now: Now) {
        let due: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.poll_timeout().is_some_and(|t| t <= now.mono))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(s) = self.sessions.get_mut(&peer) {
                let was_up = s.is_established();
                let result = s.handle_timeout(now.mono);
                let _ = self.after_io(peer, was_up, result);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(DtlsSession::poll_timeout)
            .min()
    }

    pub fn poll_event(&mut self) -> Option<SecureEvent> {
        self.events.pop_front()
    }

    fn collect(&mut self, peer: SocketAddr) {
        if let Some(s) = self.sessions.get_mut(&peer) {
            while let Some(d) = s.poll_transmit() {
                self.out.push_back((peer, d));
            }
        }
    }

    fn after_io(
        &mut self,
        peer: SocketAddr,
        was_up: bool,
        result: Result<(), DtlsError>,
    ) -> Vec<Vec<u8>> {
        self.collect(peer);
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Vec::new();
        };
        let mut plain = Vec::new();
        while let Some(p) = s.recv() {
            plain.push(p);
        }
        match result {
            Err(e) if !was_up && !s.is_established() => {
                warn!("coaps {peer}: DTLS handshake failed: {e}");
                self.events.push_back(SecureEvent::HandshakeFailed {
                    peer,
                    reason: e.to_string(),
                });
            }
            Err(e) => info!("coaps {peer}: DTLS session ended: {e}"),
            Ok(()) if !was_up && s.is_established() => {
                let suite = s.cipher_suite().unwrap_or("?").to_string();
                if let Some(auth) = self.session_auth(peer) {
                    self.auth.insert(peer, auth.clone());
                    info!("coaps {peer}: DTLS session established ({suite}, {auth:?})");
                    self.events.push_back(SecureEvent::Established {
                        peer,
                        auth,
                        cipher_suite: suite,
                    });
                }
            }
            Ok(()) => {}
        }
        plain
    }

    fn make_room(&mut self) {
        while self.sessions.len() >= MAX_PEERS {
            let victim = self
                .order
                .iter()
                .position(|p| self.sessions.get(p).is_none_or(|s| !s.is_established()))
                .unwrap_or(0);
            if let Some(p) = self.order.remove(victim) {
                self.sessions.remove(&p);
                self.auth.remove(&p);
            } else {
                break;
            }
        }
    }
}
