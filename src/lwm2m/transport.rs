//! [`SecureChannel`]: what sits between one server connection's CoAP endpoint and its
//! datagrams — nothing for NoSec, a DTLS session for PSK and Certificate mode.
//!
//! It turns a Security instance into a DTLS configuration ([`ChannelSecurity::from_instance`]:
//! credentials, Certificate Usage, SNI), starts a handshake when the endpoint has something to
//! send and no session is up, holds the endpoint's datagrams until the handshake is done, and
//! reports a failed handshake with its reason ([`ChannelEvent::HandshakeFailed`]); deciding
//! that this fails the registration is the client's business. The server certificate is
//! verified at the UTC time of the call that starts the handshake. Sans-IO: time comes in with
//! every call.

use std::collections::VecDeque;

use log::{debug, info, warn};

use crate::crypto::{Certificate, Drbg, KeyPair, SecretBytes, TrustStore};
use crate::dm::objects::{SecurityInstance, SecurityMode};
use crate::dtls::{
    Credentials, DtlsConfig, DtlsError, DtlsSession, DtlsState, HandshakeTimers, SavedSession,
    ServerCertificatePin,
};
use crate::time::{Instant, Now};

use super::uri::ServerUri;

/// CoAP datagrams held while a handshake runs; older ones (retransmissions, mostly) are
/// dropped beyond this.
const MAX_PENDING: usize = 8;

/// Certificate Usage when /0/x/15 is absent: domain-issued certificate.
pub const DEFAULT_CERTIFICATE_USAGE: u8 = 3;

/// Why a Security instance cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityConfigError {
    #[error("security mode 1 (raw public key) is not supported; use PSK (0), Certificate (2) or NoSec (3)")]
    RpkUnsupported,
    #[error("security mode 4 (certificate with EST) has no enrolled certificate to connect with")]
    EstUnsupported,
    #[error("{mode} mode needs a coaps:// server URI, got {uri}")]
    NeedsCoaps { mode: &'static str, uri: String },
    #[error("NoSec mode needs a coap:// server URI, got {uri}")]
    NeedsCoap { uri: String },
    #[error("PSK mode: {0}")]
    Psk(String),
    #[error("Certificate mode: {0}")]
    Certificate(String),
}

/// The security of one connection, checked once when the client starts.
#[derive(Clone, Debug)]
pub enum ChannelSecurity {
    NoSec,
    Dtls(Box<DtlsConfig>),
}

impl ChannelSecurity {
    /// The security a Security instance asks for. `trust_store` is the client-wide
    /// `trust_store_certs`, used with Certificate Usage 0 and 1 (and as extra anchors for 2).
    pub fn from_instance(
        sec: &SecurityInstance,
        uri: &ServerUri,
        trust_store: &TrustStore,
        timers: HandshakeTimers,
        rng: &Drbg,
    ) -> Result<Self, SecurityConfigError> {
        let mode = match sec.security_mode {
            SecurityMode::NoSec => {
                if uri.secure {
                    return Err(SecurityConfigError::NeedsCoap {
                        uri: sec.server_uri.clone(),
                    });
                }
                return Ok(ChannelSecurity::NoSec);
            }
            SecurityMode::Rpk => return Err(SecurityConfigError::RpkUnsupported),
            SecurityMode::CertificateWithEst => return Err(SecurityConfigError::EstUnsupported),
            SecurityMode::Psk => "PSK",
            SecurityMode::Certificate => "Certificate",
        };
        if !uri.secure {
            return Err(SecurityConfigError::NeedsCoaps {
                mode,
                uri: sec.server_uri.clone(),
            });
        }
        let config = match sec.security_mode {
            SecurityMode::Psk => psk_config(sec, rng)?,
            _ => certificate_config(sec, uri, trust_store, rng)?,
        };
        Ok(ChannelSecurity::Dtls(Box::new(
            config.with_handshake_timers(timers),
        )))
    }
}

fn psk_config(sec: &SecurityInstance, rng: &Drbg) -> Result<DtlsConfig, SecurityConfigError> {
    let identity = &sec.public_cert_or_psk_identity;
    let key = &sec.private_cert_or_psk_key;
    if identity.is_empty() || identity.len() > usize::from(u16::MAX) {
        return Err(SecurityConfigError::Psk(format!(
            "the identity (/0/x/3) must be 1 to 65535 bytes, got {}",
            identity.len()
        )));
    }
    if key.is_empty() || key.len() > 32 {
        return Err(SecurityConfigError::Psk(format!(
            "the key (/0/x/5) must be 1 to 32 bytes, got {}",
            key.len()
        )));
    }
    let creds = Credentials::Psk {
        identity: identity.clone(),
        key: SecretBytes::new(key.clone()),
    };
    Ok(DtlsConfig::client(creds, rng))
}

fn certificate_config(
    sec: &SecurityInstance,
    uri: &ServerUri,
    trust_store: &TrustStore,
    rng: &Drbg,
) -> Result<DtlsConfig, SecurityConfigError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        SecurityConfigError::Certificate(format!("{what}: {e}"))
    };
    let chain = Certificate::parse_any(&sec.public_cert_or_psk_identity)
        .map_err(|e| err("our certificate (/0/x/3)", &e))?;
    if chain.is_empty() {
        return Err(SecurityConfigError::Certificate(
            "our certificate (/0/x/3) is empty".into(),
        ));
    }
    let key = KeyPair::from_der_or_pem(&sec.private_cert_or_psk_key)
        .map_err(|e| err("our private key (/0/x/5)", &e))?;
    if !chain[0].matches_key(&key) {
        return Err(SecurityConfigError::Certificate(format!(
            "the private key (/0/x/5) does not belong to the certificate {} (/0/x/3)",
            chain[0].subject()
        )));
    }
    let given = if sec.server_public_key.is_empty() {
        None
    } else {
        let certs = Certificate::parse_any(&sec.server_public_key)
            .map_err(|e| err("the server certificate or trust anchor (/0/x/4)", &e))?;
        certs.into_iter().next()
    };
    let usage = sec.certificate_usage.unwrap_or(DEFAULT_CERTIFICATE_USAGE);
    let need_given = |usage: u8| {
        given.clone().ok_or_else(|| {
            SecurityConfigError::Certificate(format!(
                "Certificate Usage {usage} needs the server certificate or trust anchor in /0/x/4"
            ))
        })
    };
    let mut trust = trust_store.clone();
    let pin = match usage {
        0 => {
            let ca = need_given(0)?;
            if trust.is_empty() {
                trust.add(ca.clone());
            }
            ServerCertificatePin::InChain(ca)
        }
        1 => {
            let cert = need_given(1)?;
            if trust.is_empty() {
                return Err(SecurityConfigError::Certificate(
                    "Certificate Usage 1 needs trust_store_certs to verify the server's chain"
                        .into(),
                ));
            }
            ServerCertificatePin::EndEntity(cert)
        }
        2 => {
            let anchor = need_given(2)?;
            // Only the given anchor is trusted; the configured CRLs still apply.
            trust = trust_store.crls_only();
            trust.add(anchor);
            ServerCertificatePin::None
        }
        3 => ServerCertificatePin::EndEntityOnly(need_given(3)?),
        other => {
            return Err(SecurityConfigError::Certificate(format!(
                "Certificate Usage (/0/x/15) must be 0 to 3, got {other}"
            )))
        }
    };
    let name = sec
        .server_name_indication
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| uri.host.clone());
    let mut config = DtlsConfig::client(Credentials::Certificate { chain, key }, rng)
        .with_server_certificate_pin(pin)
        .with_server_name(name);
    if !trust.is_empty() {
        config = config.with_trust(trust);
    }
    Ok(config)
}

/// What a channel reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A DTLS session is up (`suite` is the IANA cipher suite name).
    Established { suite: String, resumed: bool },
    /// The handshake failed; datagrams waiting for it were dropped.
    HandshakeFailed(DtlsError),
    /// An established session ended (close_notify or an error); the next datagram starts a
    /// new handshake.
    Closed(String),
}

/// One connection's security layer.
pub struct SecureChannel {
    dtls: Option<DtlsChannel>,
    /// NoSec: datagrams pass straight through this queue.
    plain_out: VecDeque<Vec<u8>>,
    events: VecDeque<ChannelEvent>,
}

struct DtlsChannel {
    config: DtlsConfig,
    session: Option<DtlsSession>,
    pending: VecDeque<Vec<u8>>,
    /// The last established session, offered for resumption.
    saved: Option<SavedSession>,
    /// Whether the current session was reported established.
    up: bool,
    last_now: Now,
}

/// Worst-case DTLS 1.2 record expansion of our cipher suites: the 13-byte record header,
/// and for the CBC-SHA256 suites a 16-byte IV, a 32-byte MAC and up to 16 bytes of padding
/// (the CCM_8 suites need only 16 bytes more).
const DTLS_RECORD_OVERHEAD_MAX: usize = 13 + 16 + 32 + 16;

impl SecureChannel {
    pub fn new(security: ChannelSecurity) -> Self {
        let dtls = match security {
            ChannelSecurity::NoSec => None,
            ChannelSecurity::Dtls(config) => Some(DtlsChannel {
                config: *config,
                session: None,
                pending: VecDeque::new(),
                saved: None,
                up: false,
                last_now: Now::default(),
            }),
        };
        SecureChannel {
            dtls,
            plain_out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_secure(&self) -> bool {
        self.dtls.is_some()
    }

    /// The largest CoAP datagram one DTLS record can carry within the configured MTU, so
    /// bigger messages go block-wise instead of being refused by the record layer; `None`
    /// for NoSec (the UDP payload limit is the caller's buffer size).
    pub fn max_coap_datagram(&self) -> Option<usize> {
        self.dtls
            .as_ref()
            .map(|d| usize::from(d.config.mtu()).saturating_sub(DTLS_RECORD_OVERHEAD_MAX))
    }

    /// True while a DTLS session is established (always true for NoSec).
    pub fn is_established(&self) -> bool {
        match &self.dtls {
            None => true,
            Some(d) => d.session.as_ref().is_some_and(DtlsSession::is_established),
        }
    }

    /// The DTLS session, if one exists.
    pub fn session(&self) -> Option<&DtlsSession> {
        self.dtls.as_ref().and_then(|d| d.session.as_ref())
    }

    /// Hands a CoAP datagram to the channel; a DTLS channel without a session starts a
    /// handshake and holds the datagram until it completes.
    pub fn send(&mut self, now: Now, datagram: Vec<u8>) {
        let Some(d) = self.dtls.as_mut() else {
            self.plain_out.push_back(datagram);
            return;
        };
        d.last_now = now;
        let state = d.session.as_ref().map(DtlsSession::state);
        match state {
            Some(DtlsState::Established) => {
                d.encrypt(now, datagram, &mut self.events);
                return;
            }
            Some(DtlsState::Handshaking) => {}
            // No session, or one that failed or closed: start afresh.
            _ => d.start(now, &mut self.events),
        }
        if d.session.is_some() {
            if d.pending.len() >= MAX_PENDING {
                d.pending.pop_front();
            }
            d.pending.push_back(datagram);
        }
    }

    /// Feeds a datagram from the server; returns the CoAP datagrams it carried.
    pub fn handle_datagram(&mut self, now: Now, data: &[u8]) -> Vec<Vec<u8>> {
        let Some(d) = self.dtls.as_mut() else {
            return vec![data.to_vec()];
        };
        d.last_now = now;
        let Some(session) = d
            .session
            .as_mut()
            .filter(|s| matches!(s.state(), DtlsState::Handshaking | DtlsState::Established))
        else {
            debug!("DTLS: datagram with no session in progress dropped");
            return Vec::new();
        };
        let result = session.handle_datagram(now.mono, data);
        d.after_io(now, result, &mut self.events)
    }

    /// Runs the handshake timer.
    pub fn handle_timeout(&mut self, now: Now) {
        let Some(d) = self.dtls.as_mut() else { return };
        d.last_now = now;
        let Some(session) = d.session.as_mut() else {
            return;
        };
        if session.poll_timeout().is_some_and(|t| t <= now.mono) {
            let result = session.handle_timeout(now.mono);
            let _ = d.after_io(now, result, &mut self.events);
        }
    }

    /// Closes the DTLS session (close_notify), e.g. after De-register.
    pub fn close(&mut self, now: Now) {
        if let Some(d) = self.dtls.as_mut() {
            if let Some(s) = d.session.as_mut() {
                s.close(now.mono);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self.dtls.as_mut() {
            None => self.plain_out.pop_front(),
            Some(d) => d.session.as_mut().and_then(DtlsSession::poll_transmit),
        }
    }

    /// The handshake timer's deadline; "now" while events wait to be taken.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let d = self.dtls.as_ref()?;
        if !self.events.is_empty() {
            return Some(d.last_now.mono);
        }
        d.session.as_ref().and_then(DtlsSession::poll_timeout)
    }

    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }
}

impl DtlsChannel {
    fn start(&mut self, now: Now, events: &mut VecDeque<ChannelEvent>) {
        let mut config = self.config.clone();
        // Certificates are judged at the time the handshake starts.
        config.set_verification_time(now.utc);
        if let Some(saved) = self.saved.clone() {
            config = config.resume_from(saved);
        }
        self.up = false;
        match DtlsSession::new(&config, now.mono) {
            Ok(s) => {
                debug!("DTLS handshake started");
                self.session = Some(s);
            }
            Err(e) => {
                warn!("DTLS handshake could not start: {e}");
                self.session = None;
                self.pending.clear();
                events.push_back(ChannelEvent::HandshakeFailed(e));
            }
        }
    }

    fn encrypt(&mut self, now: Now, datagram: Vec<u8>, events: &mut VecDeque<ChannelEvent>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.send(now.mono, &datagram) {
            Ok(()) => {}
            Err(e @ DtlsError::PayloadTooLarge { .. }) => warn!("DTLS: datagram not sent: {e}"),
            Err(e) => {
                info!("DTLS session lost ({e}); the next datagram starts a new handshake");
                self.up = false;
                events.push_back(ChannelEvent::Closed(e.to_string()));
            }
        }
    }

    /// Collects what a session call produced: plaintext, establishment or failure. A failed
    /// session stays in place until the next datagram to send, so its final alert still
    /// goes out.
    fn after_io(
        &mut self,
        now: Now,
        result: Result<(), DtlsError>,
        events: &mut VecDeque<ChannelEvent>,
    ) -> Vec<Vec<u8>> {
        let Some(session) = self.session.as_mut() else {
            return Vec::new();
        };
        let mut plaintext = Vec::new();
        while let Some(p) = session.recv() {
            plaintext.push(p);
        }
        match result {
            Err(e) if self.up => {
                info!("DTLS session ended: {e}");
                self.up = false;
                events.push_back(ChannelEvent::Closed(e.to_string()));
            }
            Err(e) => {
                // A handshake that never completed: the client counts it as a failed
                // registration. The datagrams it held are dropped; CoAP retries.
                warn!("DTLS handshake failed: {e}");
                self.pending.clear();
                events.push_back(ChannelEvent::HandshakeFailed(e));
            }
            Ok(()) if !self.up && session.is_established() => {
                self.up = true;
                let suite = session.cipher_suite().unwrap_or("?").to_string();
                let resumed = session.resumed();
                self.saved = session.saved_session();
                events.push_back(ChannelEvent::Established { suite, resumed });
                while let Some(d) = self.pending.pop_front() {
                    self.encrypt(now, d, events);
                }
            }
            Ok(()) => {}
        }
        plaintext
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{CertificateIssuer, CertificateProfile, CertificateTemplate};
    use crate::time::UtcTime;

    fn uri(s: &str) -> ServerUri {
        ServerUri::parse(s).unwrap()
    }

    fn security(
        sec: &SecurityInstance,
        trust: &TrustStore,
    ) -> Result<ChannelSecurity, SecurityConfigError> {
        let rng = Drbg::from_seed(1);
        ChannelSecurity::from_instance(
            sec,
            &uri(&sec.server_uri),
            trust,
            HandshakeTimers::default(),
            &rng,
        )
    }

    /// A CA, and a client certificate with its key (DER).
    fn client_creds() -> (Certificate, Vec<u8>, Vec<u8>) {
        let mut rng = Drbg::from_seed(3);
        let (from, to) = (
            UtcTime::from_unix_seconds(0),
            UtcTime::from_unix_seconds(1 << 31),
        );
        let ca = CertificateIssuer::new_root_ca(
            KeyPair::generate(&mut rng).unwrap(),
            "CN=ca",
            from,
            to,
            &mut rng,
        )
        .unwrap();
        let key = KeyPair::generate(&mut rng).unwrap();
        let t = CertificateTemplate {
            subject: "CN=dev".into(),
            serial: vec![0x42],
            not_before: from,
            not_after: to,
            profile: CertificateProfile::Client,
        };
        let cert = ca.issue(key.public_key_der(), &t, &mut rng).unwrap();
        (
            ca.certificate().clone(),
            cert.der().to_vec(),
            key.to_der().expose().to_vec(),
        )
    }

    #[test]
    fn schemes_must_match_the_mode() {
        let none = TrustStore::new();
        let nosec = SecurityInstance::nosec("coaps://h", 1);
        assert!(matches!(
            security(&nosec, &none),
            Err(SecurityConfigError::NeedsCoap { .. })
        ));
        let psk = SecurityInstance::psk("coap://h", 1, b"id", b"key");
        let err = security(&psk, &none).err().unwrap();
        assert!(
            err.to_string().contains("PSK mode needs a coaps://"),
            "{err}"
        );
        let mut rpk = SecurityInstance::psk("coaps://h", 1, b"id", b"key");
        rpk.security_mode = SecurityMode::Rpk;
        assert_eq!(
            security(&rpk, &none).err(),
            Some(SecurityConfigError::RpkUnsupported)
        );
        assert!(matches!(
            security(&SecurityInstance::nosec("coap://h", 1), &none),
            Ok(ChannelSecurity::NoSec)
        ));
    }

    #[test]
    fn psk_lengths_are_checked() {
        let none = TrustStore::new();
        let long = SecurityInstance::psk("coaps://h", 1, b"id", &[1; 33]);
        let err = security(&long, &none).err().unwrap();
        assert!(err.to_string().contains("1 to 32 bytes, got 33"), "{err}");
        let empty = SecurityInstance::psk("coaps://h", 1, b"", b"k");
        assert!(security(&empty, &none).is_err());
        assert!(matches!(
            security(&SecurityInstance::psk("coaps://h", 1, b"id", b"k"), &none),
            Ok(ChannelSecurity::Dtls(_))
        ));
    }

    #[test]
    fn certificate_usage_needs_what_it_constrains() {
        let (ca, cert, key) = client_creds();
        let none = TrustStore::new();
        let base = SecurityInstance::certificate("coaps://h", 1, &cert, &key, ca.der());
        for usage in [None, Some(0), Some(2)] {
            let mut s = base.clone();
            s.certificate_usage = usage;
            assert!(security(&s, &none).is_ok(), "usage {usage:?}");
        }
        let mut one = base.clone();
        one.certificate_usage = Some(1);
        let err = security(&one, &none).err().unwrap();
        assert!(err.to_string().contains("trust_store_certs"), "{err}");
        let mut store = TrustStore::new();
        store.add(ca.clone());
        assert!(security(&one, &store).is_ok());

        let mut missing = base.clone();
        missing.server_public_key.clear();
        let err = security(&missing, &none).err().unwrap();
        assert!(err.to_string().contains("/0/x/4"), "{err}");

        let (_, _, other_key) = client_creds_other();
        let mut wrong_key = base.clone();
        wrong_key.private_cert_or_psk_key = other_key;
        let err = security(&wrong_key, &none).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");

        let mut garbage = base;
        garbage.public_cert_or_psk_identity = b"not a certificate".to_vec();
        let err = security(&garbage, &none).err().unwrap();
        assert!(err.to_string().contains("/0/x/3"), "{err}");
    }

    fn client_creds_other() -> (Certificate, Vec<u8>, Vec<u8>) {
        let mut rng = Drbg::from_seed(9);
        let key = KeyPair::generate(&mut rng).unwrap();
        let (ca, cert, _) = client_creds();
        (ca, cert, key.to_der().expose().to_vec())
    }

    #[test]
    fn nosec_channel_passes_datagrams_through() {
        let mut ch = SecureChannel::new(ChannelSecurity::NoSec);
        assert!(ch.is_established() && !ch.is_secure());
        ch.send(Now::default(), vec![1, 2, 3]);
        assert_eq!(ch.poll_transmit(), Some(vec![1, 2, 3]));
        assert_eq!(ch.handle_datagram(Now::default(), &[4]), vec![vec![4]]);
        assert_eq!(ch.poll_timeout(), None);
    }

    #[test]
    fn dtls_channel_holds_datagrams_until_the_handshake_and_bounds_them() {
        let sec = SecurityInstance::psk("coaps://h", 1, b"id", b"key");
        let Ok(ChannelSecurity::Dtls(cfg)) = security(&sec, &TrustStore::new()) else {
            panic!("PSK config refused");
        };
        let mut ch = SecureChannel::new(ChannelSecurity::Dtls(cfg));
        for i in 0..20u8 {
            ch.send(Now::default(), vec![i]);
        }
        // Only the ClientHello goes out; the CoAP datagrams wait (at most MAX_PENDING).
        let hello = ch.poll_transmit().unwrap();
        assert_eq!(hello[0], 22);
        assert_eq!(ch.poll_transmit(), None);
        let pending = ch.dtls.as_ref().unwrap().pending.len();
        assert_eq!(pending, MAX_PENDING);
        assert!(ch.poll_timeout().is_some());
        // Garbage from the network changes nothing.
        assert!(ch.handle_datagram(Now::default(), &[0xFF; 5]).is_empty());
        assert_eq!(ch.poll_event(), None);
    }
}
