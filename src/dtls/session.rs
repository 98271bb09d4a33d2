//! [`DtlsSession`]: one DTLS 1.2 association with one peer, driven entirely by its caller —
//! datagrams in and out through queues, time passed in, nothing read from a clock or socket.
//!
//! A client session starts its handshake when created ([`DtlsSession::new`]); a server session
//! is created per client address ([`DtlsSession::accept`], the caller keeps the map) and
//! answers a first ClientHello with a HelloVerifyRequest cookie bound to that address. Each
//! entry point stores `now` for the virtual timer and then lets mbedtls run until it wants more
//! input. The session is a small state machine ([`DtlsState`]); a handshake failure is kept
//! and says why ([`DtlsError`]). It does not retry or pick credentials: that is the caller's
//! policy. One thing mbedtls decides for a server: a ClientHello with a valid cookie arriving
//! on an established session is a client reconnect (RFC 6347 section 4.2.8) — the old
//! association is dropped and a new handshake runs in the same session.

use core::ffi::c_void;
use core::fmt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use mbedtls::error::codes;
use mbedtls::ssl::{Config, Context};
use mbedtls::x509::VerifyError;

use super::config::{suite_name, Built, PskSlot, VerifyState};
use super::io::{lock, MemIo, TimerState, VirtualTimer};
use super::record::{self, Plaintext};
use super::{ffi, identity_text, mbedtls_parts, CertificateProblem, DtlsConfig, DtlsError, Role};
use crate::crypto::{Certificate, SecretBytes};
use crate::time::Instant;

/// Largest plaintext mbedtls hands back per record (`MBEDTLS_SSL_IN_CONTENT_LEN`).
const READ_BUFFER: usize = 16384;
/// Datagrams waiting for mbedtls beyond this are dropped, oldest first.
const MAX_QUEUED_INBOUND: usize = 32;
/// Decrypted datagrams not yet taken with `recv` beyond this are dropped, oldest first.
const MAX_QUEUED_RECEIVED: usize = 64;
/// Bound on how often one entry point re-enters mbedtls (it normally needs one or two).
const MAX_STEPS: usize = 64;

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtlsState {
    /// Handshake in progress (including a server waiting for a ClientHello or its cookie).
    Handshaking,
    /// Application data can flow.
    Established,
    /// Closed by us or by the peer's close_notify.
    Closed,
    /// The handshake or the session failed; [`DtlsSession::error`] says why.
    Failed,
}

enum Phase {
    Handshaking,
    Established(Established),
    Closed,
    Failed(DtlsError),
}

/// What is known about an established session, for logs and for the caller's checks.
struct Established {
    suite: u16,
    peer_chain: Vec<Certificate>,
    psk_identity: Option<Vec<u8>>,
    resumed: bool,
}

/// A client's session state after a handshake (master secret, cipher suite, session ID or
/// ticket, the server's certificate), to offer for resumption with
/// [`DtlsConfig::resume_from`]. Secret: the bytes are wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SavedSession(SecretBytes);

impl SavedSession {
    /// The serialized session (mbedtls' `mbedtls_ssl_session_save` format, which carries the
    /// mbedtls version and build options and is refused by a different build).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.expose()
    }

    /// A session from [`SavedSession::as_bytes`] (from persistence, say). Checked when a
    /// session is created from a config holding it: unusable bytes mean a full handshake.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SavedSession(SecretBytes::new(bytes))
    }
}

impl fmt::Debug for SavedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SavedSession({} bytes)", self.0.len())
    }
}

/// One DTLS session with one peer.
pub struct DtlsSession {
    // Field order is drop order: the mbedtls context goes first, while the config, queues,
    // timer and callback state it points to are still alive.
    ctx: Context<()>,
    _config: Arc<Config>,
    io: Arc<MemIo>,
    timer: Arc<TimerState>,
    verify: Arc<Mutex<VerifyState>>,
    psk: Option<Arc<PskSlot>>,
    role: Role,
    own_identity: Option<Vec<u8>>,
    phase: Phase,
    started: Instant,
    retransmissions: u32,
    received: VecDeque<Vec<u8>>,
    /// How many datagrams at the back of the outbound queue were already inspected.
    outbound_scanned: usize,
    /// The last plaintext alert the peer sent: (level, description).
    peer_alert: Option<(u8, u8)>,
    offered_session_id: Option<Vec<u8>>,
    accepted_session_id: Option<Vec<u8>>,
    discarded: u64,
}

impl DtlsSession {
    /// A client session; its ClientHello is ready in [`DtlsSession::poll_transmit`].
    pub fn new(config: &DtlsConfig, now: Instant) -> Result<Self, DtlsError> {
        if config.role() != Role::Client {
            return Err(DtlsError::InvalidConfig(
                "a server session is created with DtlsSession::accept".into(),
            ));
        }
        let mut session = Self::start(config, now, None)?;
        session.drive()?;
        Ok(session)
    }

    /// A server session for the client at `client_transport_id` (its address as bytes, e.g.
    /// IP and port): HelloVerifyRequest cookies are bound to it. Feed it every datagram from
    /// that address, starting with the ClientHello; once it is closed or failed, make a new
    /// one for the next ClientHello from that address.
    pub fn accept(
        config: &DtlsConfig,
        now: Instant,
        client_transport_id: &[u8],
    ) -> Result<Self, DtlsError> {
        if config.role() != Role::Server {
            return Err(DtlsError::InvalidConfig(
                "a client session is created with DtlsSession::new".into(),
            ));
        }
        if client_transport_id.is_empty() {
            return Err(DtlsError::InvalidConfig(
                "a server session needs the client's transport address for its cookie".into(),
            ));
        }
        Self::start(config, now, Some(client_transport_id))
    }

    fn start(
        config: &DtlsConfig,
        now: Instant,
        client_transport_id: Option<&[u8]>,
    ) -> Result<Self, DtlsError> {
        let Built {
            config: mbed_config,
            verify,
            psk,
        } = config.build()?;
        let mut ctx = Context::<()>::new(Arc::clone(&mbed_config));
        let io = Arc::new(MemIo::default());
        let timer = Arc::new(TimerState::default());
        timer.set_now(now);
        ctx.set_timer_callback(Box::new(VirtualTimer(Arc::clone(&timer))));
        let ssl = ssl_mut(&mut ctx);
        // SAFETY: `ssl` is a set-up context; `io` lives in the session as long as `ctx`.
        unsafe {
            ffi::mbedtls_ssl_set_bio(
                ssl,
                Arc::as_ptr(&io) as *mut c_void,
                Some(MemIo::send),
                Some(MemIo::recv),
                None,
            );
            ffi::mbedtls_ssl_set_mtu(ssl, config.mtu());
        }
        if let Some(name) = config.sni() {
            let name = std::ffi::CString::new(name)
                .map_err(|_| DtlsError::InvalidConfig("server name contains a NUL byte".into()))?;
            // SAFETY: mbedtls copies the NUL-terminated name.
            let rc = unsafe { ffi::mbedtls_ssl_set_hostname(ssl, name.as_ptr()) };
            if rc != 0 {
                return Err(DtlsError::mbedtls("setting the server name", rc.into()));
            }
        }
        if let Some(id) = client_transport_id {
            // SAFETY: mbedtls copies the ID.
            let rc =
                unsafe { ffi::mbedtls_ssl_set_client_transport_id(ssl, id.as_ptr(), id.len()) };
            if rc != 0 {
                return Err(DtlsError::mbedtls(
                    "setting the client transport ID",
                    rc.into(),
                ));
            }
        }
        if let Some(saved) = config.resume() {
            if let Err(e) = load_session(ssl, saved) {
                warn!("DTLS: saved session not usable, full handshake instead: {e}");
            }
        }
        Ok(DtlsSession {
            ctx,
            _config: mbed_config,
            io,
            timer,
            verify,
            psk,
            role: config.role(),
            own_identity: config.own_psk_identity().map(<[u8]>::to_vec),
            phase: Phase::Handshaking,
            started: now,
            retransmissions: 0,
            received: VecDeque::new(),
            outbound_scanned: 0,
            peer_alert: None,
            offered_session_id: None,
            accepted_session_id: None,
            discarded: 0,
        })
    }

    /// Feeds one datagram from the peer. Records that do not parse, fail authentication or
    /// are replayed are dropped silently (RFC 6347 section 4.1.2.7) and leave the session as
    /// it was (so are bytes after the last whole record, which mbedtls would choke on); an error means the session just failed or was closed by the peer, or was
    /// already over.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), DtlsError> {
        self.check_open()?;
        self.timer.set_now(now);
        let whole = record::well_formed_len(datagram);
        if whole == 0 {
            self.discarded += 1;
            debug!(
                "DTLS: dropped a {}-byte datagram holding no DTLS record",
                datagram.len()
            );
            return Ok(());
        }
        if whole < datagram.len() {
            debug!(
                "DTLS: dropped {} trailing bytes that are not a whole record",
                datagram.len() - whole
            );
        }
        let datagram = &datagram[..whole];
        let seen = record::inspect(datagram);
        if seen.alert.is_some() {
            self.peer_alert = seen.alert;
        }
        self.note_hellos(seen);
        {
            let mut inbound = lock(&self.io.inbound);
            if inbound.len() >= MAX_QUEUED_INBOUND {
                inbound.pop_front();
            }
            inbound.push_back(datagram.to_vec());
        }
        self.drive()
    }

    /// Runs the timer: retransmits the last flight when its deadline has passed, and fails
    /// the handshake with [`DtlsError::Timeout`] once the retransmissions are used up.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        if !matches!(self.phase, Phase::Handshaking) {
            return Ok(());
        }
        self.timer.set_now(now);
        if self.timer.expired() {
            self.drive()
        } else {
            Ok(())
        }
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let datagram = lock(&self.io.outbound).pop_front();
        if datagram.is_some() {
            self.outbound_scanned = self.outbound_scanned.saturating_sub(1);
        }
        datagram
    }

    /// When [`DtlsSession::handle_timeout`] should next be called, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking => self.timer.deadline(),
            _ => None,
        }
    }

    /// Encrypts one application datagram; it is then ready in
    /// [`DtlsSession::poll_transmit`].
    pub fn send(&mut self, now: Instant, plaintext: &[u8]) -> Result<(), DtlsError> {
        match &self.phase {
            Phase::Established(_) => {}
            Phase::Handshaking => return Err(DtlsError::NotEstablished),
            Phase::Closed => return Err(DtlsError::Closed),
            Phase::Failed(e) => return Err(e.clone()),
        }
        self.timer.set_now(now);
        if let Some(max) = self.max_payload() {
            if plaintext.len() > max {
                return Err(DtlsError::PayloadTooLarge {
                    len: plaintext.len(),
                    max,
                });
            }
        }
        let ssl = ssl_mut(&mut self.ctx);
        // SAFETY: mbedtls reads `len` bytes of `plaintext`.
        let rc = unsafe { ffi::mbedtls_ssl_write(ssl, plaintext.as_ptr(), plaintext.len()) };
        if rc < 0 {
            return Err(DtlsError::mbedtls("encrypting a record", rc.into()));
        }
        Ok(())
    }

    /// The next decrypted application datagram from the peer (at most 64 wait; beyond that
    /// the oldest are dropped, as a full socket buffer would).
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// Closes the session, sending close_notify if it was established.
    pub fn close(&mut self, now: Instant) {
        self.timer.set_now(now);
        if matches!(self.phase, Phase::Established(_)) {
            // SAFETY: a set-up context with its bio in place.
            let rc = unsafe { ffi::mbedtls_ssl_close_notify(ssl_mut(&mut self.ctx)) };
            if rc != 0 {
                debug!(
                    "DTLS: close_notify not sent: {}",
                    mbedtls_parts(&rc.into()).1
                );
            }
        }
        if !matches!(self.phase, Phase::Failed(_)) {
            self.phase = Phase::Closed;
        }
        lock(&self.io.inbound).clear();
    }

    /// Where the session is.
    pub fn state(&self) -> DtlsState {
        match self.phase {
            Phase::Handshaking => DtlsState::Handshaking,
            Phase::Established(_) => DtlsState::Established,
            Phase::Closed => DtlsState::Closed,
            Phase::Failed(_) => DtlsState::Failed,
        }
    }

    /// True once application data can flow.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established(_))
    }

    /// Why the session failed, if it did.
    pub fn error(&self) -> Option<&DtlsError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The role this session plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The negotiated cipher suite's IANA name, once established.
    pub fn cipher_suite(&self) -> Option<&'static str> {
        self.established().and_then(|e| suite_name(e.suite))
    }

    /// The negotiated cipher suite's wire value, once established.
    pub fn cipher_suite_id(&self) -> Option<u16> {
        self.established().map(|e| e.suite)
    }

    /// The certificate chain the peer presented (end-entity first), once established with
    /// a certificate suite; also after a resumption (it is part of the saved session).
    pub fn peer_certificates(&self) -> &[Certificate] {
        self.established().map_or(&[], |e| &e.peer_chain)
    }

    /// The peer's end-entity certificate, once established with a certificate suite.
    pub fn peer_certificate(&self) -> Option<&Certificate> {
        self.peer_certificates().first()
    }

    /// The PSK identity of an established PSK session: on a server, the one the client
    /// presented; on a client, its own. `None` on a server for a resumed session, whose
    /// state (mbedtls' `ssl_session`) does not record the identity.
    pub fn psk_identity(&self) -> Option<&[u8]> {
        self.established().and_then(|e| e.psk_identity.as_deref())
    }

    /// True if the handshake resumed an earlier session (the server echoed the session ID
    /// the client offered) rather than running a full one.
    pub fn resumed(&self) -> bool {
        self.established().is_some_and(|e| e.resumed)
    }

    /// Client: the established session's state, to resume it later with
    /// [`DtlsConfig::resume_from`]. `None` on a server or before the handshake finished.
    pub fn saved_session(&self) -> Option<SavedSession> {
        if self.role != Role::Client || !self.is_established() {
            return None;
        }
        let mut session = ffi::OpaqueSession::new();
        // SAFETY: a set-up context and an initialised session; mbedtls copies into it.
        let rc =
            unsafe { ffi::mbedtls_ssl_get_session(ssl_const(&self.ctx), session.as_mut_ptr()) };
        if rc != 0 {
            warn!(
                "DTLS: cannot read the session: {}",
                mbedtls_parts(&rc.into()).1
            );
            return None;
        }
        let mut len = 0usize;
        // SAFETY: a NULL buffer of length 0 only asks for the size.
        unsafe {
            ffi::mbedtls_ssl_session_save(session.as_ptr(), core::ptr::null_mut(), 0, &mut len)
        };
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` holds `len` writable bytes.
        let rc = unsafe {
            ffi::mbedtls_ssl_session_save(session.as_ptr(), buf.as_mut_ptr(), buf.len(), &mut len)
        };
        if rc != 0 {
            warn!(
                "DTLS: cannot save the session: {}",
                mbedtls_parts(&rc.into()).1
            );
            return None;
        }
        buf.truncate(len);
        Some(SavedSession(SecretBytes::new(buf)))
    }

    /// The largest application datagram one record can carry now (it depends on the MTU
    /// and, once established, on the cipher suite's overhead).
    pub fn max_payload(&self) -> Option<usize> {
        // SAFETY: a set-up context; the call only reads it.
        let n = unsafe { ffi::mbedtls_ssl_get_max_out_record_payload(ssl_const(&self.ctx)) };
        usize::try_from(n).ok()
    }

    /// How many datagrams were dropped because they held no well-formed DTLS record.
    pub fn discarded_datagrams(&self) -> u64 {
        self.discarded
    }

    fn established(&self) -> Option<&Established> {
        match &self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    fn check_open(&self) -> Result<(), DtlsError> {
        match &self.phase {
            Phase::Failed(e) => Err(e.clone()),
            Phase::Closed => Err(DtlsError::Closed),
            _ => Ok(()),
        }
    }

    fn inbound_len(&self) -> usize {
        lock(&self.io.inbound).len()
    }

    /// Lets mbedtls run until it needs more input or time.
    fn drive(&mut self) -> Result<(), DtlsError> {
        for _ in 0..MAX_STEPS {
            let again = match self.phase {
                Phase::Handshaking => self.handshake_step()?,
                Phase::Established(_) => self.read_step()?,
                Phase::Closed | Phase::Failed(_) => false,
            };
            if !again {
                break;
            }
        }
        Ok(())
    }

    /// One call into the handshake; true if there is more to do now.
    fn handshake_step(&mut self) -> Result<bool, DtlsError> {
        let timer_expired = self.timer.expired();
        let result = self.ctx.handshake();
        self.scan_outbound();
        match result {
            Ok(()) => {
                self.on_established();
                Ok(true)
            }
            Err(e) if is_want(&e) => {
                if timer_expired {
                    self.retransmissions += 1;
                    debug!(
                        "DTLS {:?}: retransmitted the last flight ({})",
                        self.role, self.retransmissions
                    );
                }
                // An expired timer is answered (by retransmitting) before input is read, so
                // datagrams may still be waiting.
                Ok(self.inbound_len() > 0)
            }
            Err(e) if e.high_level() == Some(codes::SslHelloVerifyRequired) => {
                debug!("DTLS server: sent a HelloVerifyRequest");
                Ok(self.inbound_len() > 0)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Reads application records; true if there is more to do now.
    fn read_step(&mut self) -> Result<bool, DtlsError> {
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let ssl = ssl_mut(&mut self.ctx);
            // SAFETY: `buf` holds `len` writable bytes.
            let n = unsafe { ffi::mbedtls_ssl_read(ssl, buf.as_mut_ptr(), buf.len()) };
            if n > 0 {
                if self.received.len() >= MAX_QUEUED_RECEIVED {
                    debug!("DTLS: receive queue full, dropped the oldest datagram");
                    self.received.pop_front();
                }
                self.received.push_back(buf[..n as usize].to_vec());
                continue;
            }
            if n == 0 {
                return Ok(false);
            }
            let err = mbedtls::Error::from(n);
            return match err.high_level() {
                Some(codes::SslWantRead | codes::SslWantWrite) => Ok(false),
                Some(codes::SslPeerCloseNotify) => {
                    info!("DTLS {:?}: peer closed the session", self.role);
                    self.phase = Phase::Closed;
                    lock(&self.io.inbound).clear();
                    Err(DtlsError::PeerClosed)
                }
                Some(codes::SslClientReconnect) => {
                    // The same address sent a fresh ClientHello with a valid cookie: the
                    // peer restarted. mbedtls has reset the context and kept the hello.
                    info!("DTLS server: client reconnected from the same address, new handshake");
                    self.phase = Phase::Handshaking;
                    self.peer_alert = None;
                    lock(&self.verify).reset();
                    self.retransmissions = 0;
                    self.started = self.timer.now();
                    Ok(true)
                }
                _ => Err(self.fail(err)),
            };
        }
    }

    fn on_established(&mut self) {
        let suite = self.ctx.ciphersuite().unwrap_or(0);
        let peer_chain = match self.ctx.peer_cert() {
            Ok(Some(list)) => list
                .iter()
                .filter_map(|c| Certificate::from_der(c.as_der()).ok())
                .collect(),
            _ => Vec::new(),
        };
        let name = suite_name(suite).unwrap_or("unknown suite");
        let psk_identity = if name.starts_with("TLS_PSK") {
            match self.role {
                Role::Client => self.own_identity.clone(),
                Role::Server => self.psk.as_ref().and_then(|slot| lock(&slot.seen).clone()),
            }
        } else {
            None
        };
        let resumed = matches!(
            (&self.offered_session_id, &self.accepted_session_id),
            (Some(offered), Some(accepted)) if !offered.is_empty() && offered == accepted
        );
        let peer = match (peer_chain.first(), &psk_identity) {
            (Some(cert), _) => format!(" peer={}", cert.subject()),
            (None, Some(id)) => format!(" identity={}", identity_text(id)),
            _ => String::new(),
        };
        info!(
            "DTLS {:?} session established: {name}{}{peer}",
            self.role,
            if resumed { " (resumed)" } else { "" }
        );
        self.phase = Phase::Established(Established {
            suite,
            peer_chain,
            psk_identity,
            resumed,
        });
    }

    /// Records the failure, logs it with mbedtls' reason and drops pending input.
    fn fail(&mut self, err: mbedtls::Error) -> DtlsError {
        let error = self.classify(err);
        warn!("DTLS {:?} session failed: {error}", self.role);
        self.phase = Phase::Failed(error.clone());
        lock(&self.io.inbound).clear();
        error
    }

    fn classify(&self, err: mbedtls::Error) -> DtlsError {
        let (code, reason) = mbedtls_parts(&err);
        let identity = || {
            let seen = self.psk.as_ref().and_then(|slot| lock(&slot.seen).clone());
            identity_text(
                seen.as_deref()
                    .or(self.own_identity.as_deref())
                    .unwrap_or(b""),
            )
        };
        match err.high_level() {
            Some(codes::SslTimeout) => DtlsError::Timeout {
                elapsed: self.timer.now().saturating_duration_since(self.started),
                retransmissions: self.retransmissions,
            },
            Some(codes::SslUnknownIdentity) => DtlsError::UnknownPskIdentity {
                identity: identity(),
            },
            Some(codes::SslInvalidMac) if self.uses_psk() => DtlsError::PskMismatch {
                identity: identity(),
                reason: format!("the client's Finished did not authenticate ({reason})"),
            },
            Some(codes::X509CertVerifyFailed) => self.certificate_rejected(&reason),
            Some(codes::SslNoClientCertificate | codes::SslCertificateRequired) => {
                DtlsError::CertificateRejected {
                    problem: CertificateProblem::Missing,
                    reason,
                }
            }
            Some(codes::SslFatalAlertMessage) => self.classify_alert(identity(), reason),
            Some(codes::SslPeerCloseNotify) => DtlsError::PeerClosed,
            Some(
                codes::SslBadHsCertificate
                | codes::SslBadHsCertificateRequest
                | codes::SslBadHsCertificateVerify
                | codes::SslBadHsChangeCipherSpec
                | codes::SslBadHsClientHello
                | codes::SslBadHsClientKeyExchange
                | codes::SslBadHsClientKeyExchangeCs
                | codes::SslBadHsClientKeyExchangeRp
                | codes::SslBadHsFinished
                | codes::SslBadHsNewSessionTicket
                | codes::SslBadHsServerHello
                | codes::SslBadHsServerHelloDone
                | codes::SslBadHsServerKeyExchange
                | codes::SslInvalidRecord
                | codes::SslUnexpectedMessage
                | codes::SslUnexpectedRecord,
            ) => DtlsError::MalformedRecord { code, reason },
            _ if matches!(self.phase, Phase::Established(_)) => DtlsError::Mbedtls {
                op: "processing a record",
                code,
                reason,
            },
            _ => DtlsError::HandshakeFailed { code, reason },
        }
    }

    /// True if this handshake is a PSK one: a PSK client, or a server that was handed an
    /// identity (a server may accept certificates too).
    fn uses_psk(&self) -> bool {
        self.own_identity.is_some()
            || self
                .psk
                .as_ref()
                .is_some_and(|slot| lock(&slot.seen).is_some())
    }

    fn classify_alert(&self, identity: String, reason: String) -> DtlsError {
        match self.peer_alert.map(|(_, description)| description) {
            Some(115) => DtlsError::UnknownPskIdentity { identity },
            Some(20 | 51) if self.own_identity.is_some() => DtlsError::PskMismatch {
                identity,
                reason: "the server could not authenticate our Finished (bad_record_mac alert)"
                    .into(),
            },
            Some(alert @ (42..=46 | 48)) => DtlsError::CertificateRefusedByPeer { alert },
            Some(0) => DtlsError::PeerClosed,
            Some(alert) => DtlsError::PeerAlert { alert, reason },
            None => DtlsError::PeerAlert { alert: 255, reason },
        }
    }

    fn certificate_rejected(&self, mbedtls_reason: &str) -> DtlsError {
        let state = lock(&self.verify);
        let flags = state
            .flags
            .or_else(|| self.ctx.verify_result().err())
            .unwrap_or(VerifyError::empty());
        let problem = if flags.contains(VerifyError::CERT_MISSING) {
            CertificateProblem::Missing
        } else if flags.contains(VerifyError::CERT_NOT_TRUSTED) {
            CertificateProblem::Untrusted
        } else if flags.contains(VerifyError::CERT_EXPIRED) {
            CertificateProblem::Expired
        } else if flags.contains(VerifyError::CERT_FUTURE) {
            CertificateProblem::NotYetValid
        } else if flags.contains(VerifyError::CERT_CN_MISMATCH) {
            CertificateProblem::NameMismatch
        } else {
            CertificateProblem::Other
        };
        let mut reason = state.notes.join("; ");
        if reason.is_empty() {
            reason = flags.error_info().join(" ");
        }
        reason.push_str(&format!(" [{mbedtls_reason}]"));
        DtlsError::CertificateRejected { problem, reason }
    }

    /// Inspects datagrams mbedtls queued since the last look (for the hellos' session IDs).
    fn scan_outbound(&mut self) {
        let seen: Vec<Plaintext> = {
            let out = lock(&self.io.outbound);
            let fresh = out
                .iter()
                .skip(self.outbound_scanned)
                .map(|d| record::inspect(d))
                .collect();
            self.outbound_scanned = out.len();
            fresh
        };
        for s in seen {
            self.note_hellos(s);
        }
    }

    fn note_hellos(&mut self, seen: Plaintext) {
        if let Some(id) = seen.client_hello_session_id {
            self.offered_session_id = Some(id);
        }
        if let Some(id) = seen.server_hello_session_id {
            self.accepted_session_id = Some(id);
        }
    }
}

impl fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsSession")
            .field("role", &self.role)
            .field("state", &self.state())
            .field("cipher_suite", &self.cipher_suite())
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

fn is_want(e: &mbedtls::Error) -> bool {
    matches!(
        e.high_level(),
        Some(codes::SslWantRead | codes::SslWantWrite)
    )
}

/// Restores a saved session into a client context before its handshake starts.
fn load_session(ssl: *mut c_void, saved: &SavedSession) -> Result<(), DtlsError> {
    let mut session = ffi::OpaqueSession::new();
    let bytes = saved.as_bytes();
    // SAFETY: an initialised session and a readable buffer.
    let rc =
        unsafe { ffi::mbedtls_ssl_session_load(session.as_mut_ptr(), bytes.as_ptr(), bytes.len()) };
    if rc != 0 {
        return Err(DtlsError::mbedtls("loading a saved session", rc.into()));
    }
    // SAFETY: mbedtls copies the session into the context.
    let rc = unsafe { ffi::mbedtls_ssl_set_session(ssl, session.as_ptr()) };
    if rc != 0 {
        return Err(DtlsError::mbedtls("offering a saved session", rc.into()));
    }
    Ok(())
}

/// The `mbedtls_ssl_context *` of a context, for the functions the wrapper lacks.
fn ssl_mut(ctx: &mut Context<()>) -> *mut c_void {
    let p: *mut _ = ctx.into();
    p.cast()
}

fn ssl_const(ctx: &Context<()>) -> *const c_void {
    let p: *const _ = ctx.into();
    p.cast()
}
