//! [`DtlsConfig`]: what a DTLS session needs to know before its first record — its role, its
//! credentials (a PSK, or a certificate chain and key), whom it trusts and at what UTC time,
//! the handshake retransmission timers (`udp_dtls_hs_tx_params`) and the MTU.
//!
//! A config is plain data, cheap to clone; each session turns it into its own mbedtls
//! `ssl_config` ([`DtlsConfig::build`]), so the verification time and the callbacks' state are
//! per session. What a server shares between its sessions — the HelloVerifyRequest cookie key
//! and the session-ticket key — lives behind `Arc`s created once in [`DtlsConfig::server`].
//! Cipher suites are fixed to the LwM2M ones: TLS_PSK_WITH_AES_128_CCM_8 and
//! TLS_PSK_WITH_AES_128_CBC_SHA256 for PSK, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 and
//! TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 (on P-256) for certificates, DTLS 1.2 only.

use core::ffi::{c_int, c_uchar, c_void};
use core::fmt;
use core::time::Duration;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use mbedtls::cipher::raw::CipherType;
use mbedtls::pk::EcGroupId;
use mbedtls::rng::CtrDrbg;
use mbedtls::ssl::config::{AuthMode, Endpoint, Preset, Transport};
use mbedtls::ssl::{CipherSuite, Config, CookieContext, TicketContext, UseSessionTickets, Version};
use mbedtls::x509::{Certificate as MbedCert, VerifyError};

use super::io::lock;
use super::session::SavedSession;
use super::{ffi, DtlsError};
use crate::crypto::{
    apply_time_policy, check_name, Certificate, CryptoError, Drbg, KeyPair, SecretBytes, TrustStore,
};
use crate::time::UtcTime;

/// The default datagram size limit: the IPv6 minimum MTU (1280) less the IPv6 and UDP
/// headers, so a handshake flight is fragmented rather than relying on IP fragmentation.
pub const DEFAULT_MTU: u16 = 1232;

/// mbedtls' `MBEDTLS_PSK_MAX_LEN` in the configuration `mbedtls-sys-auto` builds.
const PSK_MAX_LEN: usize = 32;

/// How long session tickets issued by a server stay valid (mbedtls checks this against the
/// system clock, see [`DtlsConfig::server`]).
const TICKET_LIFETIME_SECS: u32 = 24 * 3600;

/// Which side of the handshake a session plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the ClientHello (the LwM2M client).
    Client,
    /// Answers ClientHellos from one peer address (the test server).
    Server,
}

/// A session's own credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A pre-shared key and its identity (Security object resources 3 and 5 in PSK mode).
    Psk {
        /// The PSK identity, opaque bytes (usually UTF-8 text).
        identity: Vec<u8>,
        /// The key, 1 to 32 bytes.
        key: SecretBytes,
    },
    /// A certificate chain (end-entity first, then any intermediates) and its private key.
    Certificate {
        /// The chain to present, end-entity certificate first.
        chain: Vec<Certificate>,
        /// The end-entity certificate's private key.
        key: KeyPair,
    },
}

/// The handshake retransmission timers of RFC 6347 section 4.2.4.1: the first retransmission
/// after `min`, doubling up to `max`; a flight still unanswered after the wait at `max` fails
/// the handshake with [`DtlsError::Timeout`] (see [`HandshakeTimers::give_up_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeTimers {
    /// Initial retransmission timeout.
    pub min: Duration,
    /// Largest retransmission timeout.
    pub max: Duration,
}

impl Default for HandshakeTimers {
    /// RFC 6347's values: 1 s doubling to 60 s.
    fn default() -> Self {
        HandshakeTimers {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl HandshakeTimers {
    /// How long one flight may go unanswered, retransmissions included, before the
    /// handshake fails: min + 2·min + 4·min + … up to and including one wait of `max`
    /// (123 s for the defaults: 1+2+4+8+16+32+60). This is mbedtls' doubling rule.
    pub fn give_up_after(&self) -> Duration {
        let (min, max) = self.millis().unwrap_or((1000, 60_000));
        let (mut wait, mut total) = (u64::from(min), 0u64);
        loop {
            total += wait;
            if wait >= u64::from(max) {
                return Duration::from_millis(total);
            }
            wait = (wait * 2).min(u64::from(max));
        }
    }

    /// How many retransmissions happen before that (6 for the defaults).
    pub fn retransmissions(&self) -> u32 {
        let (min, max) = self.millis().unwrap_or((1000, 60_000));
        let (mut wait, mut n) = (u64::from(min), 0);
        while wait < u64::from(max) {
            n += 1;
            wait = (wait * 2).min(u64::from(max));
        }
        n
    }

    fn millis(&self) -> Result<(u32, u32), DtlsError> {
        let ms = |d: Duration| u32::try_from(d.as_millis()).ok().filter(|&v| v > 0);
        match (ms(self.min), ms(self.max)) {
            (Some(min), Some(max)) if min <= max => Ok((min, max)),
            _ => Err(DtlsError::InvalidConfig(format!(
                "handshake timers need 0 < min <= max < 2^32 ms, got min {:?} max {:?}",
                self.min, self.max
            ))),
        }
    }
}

/// How a client ties the server's certificate to one it was given (the Security object's
/// /0/x/4), beyond the chain to the trust anchors: LwM2M's Certificate Usage (RFC 6698).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServerCertificatePin {
    /// Only the chain to the trust anchors counts (usage 2, with /0/x/4 as the anchor).
    #[default]
    None,
    /// The verified chain must pass through this CA certificate (usage 0).
    InChain(Certificate),
    /// The end-entity certificate must be this one and chain to the anchors (usage 1).
    EndEntity(Certificate),
    /// The end-entity certificate must be this one; no chain to an anchor is needed, but its
    /// validity period and name are still checked (usage 3).
    EndEntityOnly(Certificate),
}

impl ServerCertificatePin {
    fn certificate(&self) -> Option<&Certificate> {
        match self {
            ServerCertificatePin::None => None,
            ServerCertificatePin::InChain(c)
            | ServerCertificatePin::EndEntity(c)
            | ServerCertificatePin::EndEntityOnly(c) => Some(c),
        }
    }
}

/// A server's PSK lookup: the key for an identity, `None` if the identity is unknown.
/// Called during the handshake; a panic inside it counts as "unknown".
#[derive(Clone)]
pub struct PskLookup(Arc<LookupFn>);

type LookupFn = dyn Fn(&[u8]) -> Option<SecretBytes> + Send + Sync;

impl PskLookup {
    /// A lookup backed by a function.
    pub fn new(f: impl Fn(&[u8]) -> Option<SecretBytes> + Send + Sync + 'static) -> Self {
        PskLookup(Arc::new(f))
    }

    /// A lookup over a fixed table of (identity, key).
    pub fn from_table(entries: Vec<(Vec<u8>, SecretBytes)>) -> Self {
        PskLookup::new(move |identity| {
            entries
                .iter()
                .find(|(id, _)| id.as_slice() == identity)
                .map(|(_, key)| key.clone())
        })
    }

    fn lookup(&self, identity: &[u8]) -> Option<SecretBytes> {
        (self.0)(identity)
    }
}

impl fmt::Debug for PskLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PskLookup(..)")
    }
}

/// What a server's sessions share: the cookie key (so a ClientHello's cookie verifies in
/// whichever session gets it) and the ticket key (so a client can resume later).
#[derive(Clone)]
struct ServerKeys {
    cookies: Arc<CookieContext>,
    tickets: Arc<TicketContext>,
}

/// The configuration of a DTLS session, client or server.
#[derive(Clone)]
pub struct DtlsConfig {
    role: Role,
    /// The client's credentials, or the server's certificate.
    credentials: Option<Credentials>,
    /// Client: the anchors for the server's certificate. Server: for client certificates.
    trust: Option<TrustStore>,
    server_name: Option<String>,
    pin: ServerCertificatePin,
    verify_at: Option<UtcTime>,
    psk_lookup: Option<PskLookup>,
    timers: HandshakeTimers,
    mtu: u16,
    rng: Arc<CtrDrbg>,
    server_keys: Option<ServerKeys>,
    resume: Option<SavedSession>,
}

impl DtlsConfig {
    /// A client presenting `credentials`. Certificate credentials also need
    /// [`DtlsConfig::with_trust`] and [`DtlsConfig::with_verification_time`]: the server's
    /// certificate is always verified.
    pub fn client(credentials: Credentials, rng: &Drbg) -> Self {
        DtlsConfig {
            role: Role::Client,
            credentials: Some(credentials),
            trust: None,
            server_name: None,
            pin: ServerCertificatePin::None,
            verify_at: None,
            psk_lookup: None,
            timers: HandshakeTimers::default(),
            mtu: DEFAULT_MTU,
            rng: rng.shared(),
            server_keys: None,
            resume: None,
        }
    }

    /// A server, to be given a PSK lookup ([`DtlsConfig::with_psk_lookup`]) and/or a
    /// certificate ([`DtlsConfig::with_certificate`]). Creates the HelloVerifyRequest cookie
    /// key and the session-ticket key its sessions share.
    ///
    /// mbedtls judges the age of cookies (60 s) and tickets (a day) against the system clock,
    /// not the caller's (see the module documentation of `dtls` for every such read).
    pub fn server(rng: &Drbg) -> Result<Self, DtlsError> {
        let shared = rng.shared();
        let cookies = CookieContext::new(Arc::clone(&shared))
            .map_err(|e| DtlsError::mbedtls("setting up DTLS cookies", e))?;
        let tickets = TicketContext::new(
            Arc::clone(&shared),
            CipherType::Aes256Gcm,
            TICKET_LIFETIME_SECS,
        )
        .map_err(|e| DtlsError::mbedtls("setting up session tickets", e))?;
        Ok(DtlsConfig {
            role: Role::Server,
            credentials: None,
            trust: None,
            server_name: None,
            pin: ServerCertificatePin::None,
            verify_at: None,
            psk_lookup: None,
            timers: HandshakeTimers::default(),
            mtu: DEFAULT_MTU,
            rng: shared,
            server_keys: Some(ServerKeys {
                cookies: Arc::new(cookies),
                tickets: Arc::new(tickets),
            }),
            resume: None,
        })
    }

    /// Client: the trust anchors for the server's certificate (Security object resource 4:
    /// a CA or the server's own certificate).
    pub fn with_trust(mut self, trust: TrustStore) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Client: the server's host name (Security object resource 14, SNI). It is sent as SNI
    /// unless it is an IP literal, and the server certificate must name it (subjectAltName
    /// first, the CN only without one, as `Certificate::matches_name`).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Client: ties the server's certificate to a given one (Certificate Usage). With
    /// [`ServerCertificatePin::EndEntityOnly`] no trust store is needed.
    pub fn with_server_certificate_pin(mut self, pin: ServerCertificatePin) -> Self {
        self.pin = pin;
        self
    }

    /// The UTC time at which certificates are checked for validity (never the system clock).
    pub fn with_verification_time(mut self, at: UtcTime) -> Self {
        self.verify_at = Some(at);
        self
    }

    /// Sets the verification time for sessions created from now on.
    pub fn set_verification_time(&mut self, at: UtcTime) {
        self.verify_at = Some(at);
    }

    /// Server: accept PSK handshakes, with keys from `lookup` (one key per identity).
    pub fn with_psk_lookup(mut self, lookup: PskLookup) -> Self {
        self.psk_lookup = Some(lookup);
        self
    }

    /// Server: accept certificate handshakes presenting `chain` (end-entity first), and
    /// require a client certificate that chains to `client_trust` at the verification time.
    pub fn with_certificate(
        mut self,
        chain: Vec<Certificate>,
        key: KeyPair,
        client_trust: TrustStore,
    ) -> Self {
        self.credentials = Some(Credentials::Certificate { chain, key });
        self.trust = Some(client_trust);
        self
    }

    /// The handshake retransmission timers (default 1 s → 60 s).
    pub fn with_handshake_timers(mut self, timers: HandshakeTimers) -> Self {
        self.timers = timers;
        self
    }

    /// The largest datagram to send (default [`DEFAULT_MTU`]); handshake messages are
    /// fragmented to fit and application data must fit in one record.
    pub fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Client: offer to resume `session` (from [`super::DtlsSession::saved_session`] of an
    /// earlier session with the same server). If the server declines, a full handshake
    /// follows.
    pub fn resume_from(mut self, session: SavedSession) -> Self {
        self.resume = Some(session);
        self
    }

    /// The role sessions made from this config play.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The handshake retransmission timers.
    pub fn handshake_timers(&self) -> HandshakeTimers {
        self.timers
    }

    /// The largest datagram sessions send.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub(super) fn resume(&self) -> Option<&SavedSession> {
        self.resume.as_ref()
    }

    /// Client: the name sent as SNI (none for an IP literal).
    pub(super) fn sni(&self) -> Option<&str> {
        self.server_name
            .as_deref()
            .filter(|name| name.parse::<core::net::IpAddr>().is_err())
    }

    /// The client's own PSK identity, for messages.
    pub(super) fn own_psk_identity(&self) -> Option<&[u8]> {
        match &self.credentials {
            Some(Credentials::Psk { identity, .. }) if self.role == Role::Client => Some(identity),
            _ => None,
        }
    }

    /// A fresh mbedtls configuration for one session, with the state its callbacks share
    /// with that session.
    pub(super) fn build(&self) -> Result<Built, DtlsError> {
        let (min_ms, max_ms) = self.timers.millis()?;
        if self.mtu < 256 {
            return Err(DtlsError::InvalidConfig(format!(
                "MTU of {} bytes is too small for DTLS",
                self.mtu
            )));
        }
        let endpoint = match self.role {
            Role::Client => Endpoint::Client,
            Role::Server => Endpoint::Server,
        };
        let mut conf = Config::new(endpoint, Transport::Datagram, Preset::Default);
        conf.set_rng(Arc::clone(&self.rng));
        conf.set_min_version(Version::Tls1_2)
            .and_then(|()| conf.set_max_version(Version::Tls1_2))
            .map_err(|e| DtlsError::mbedtls("selecting DTLS 1.2", e))?;
        conf.set_curves(Arc::new(vec![
            EcGroupId::SecP256R1.into(),
            EcGroupId::None.into(),
        ]));
        // SAFETY: `conf` is a valid, set-up ssl_config.
        unsafe { ffi::mbedtls_ssl_conf_handshake_timeout(config_ptr(&mut conf), min_ms, max_ms) };

        let verify = Arc::new(Mutex::new(VerifyState::default()));
        let (mut suites, psk) = match self.role {
            Role::Client => (self.configure_client(&mut conf, &verify)?, None),
            Role::Server => self.configure_server(&mut conf, &verify)?,
        };
        suites.push(0);
        conf.set_ciphersuites(Arc::new(suites));
        Ok(Built {
            config: Arc::new(conf),
            verify,
            psk,
        })
    }

    /// Client credentials and verification; returns the cipher suites to offer.
    fn configure_client(
        &self,
        conf: &mut Config,
        verify: &Arc<Mutex<VerifyState>>,
    ) -> Result<Vec<c_int>, DtlsError> {
        conf.set_session_tickets(UseSessionTickets::Enabled);
        match &self.credentials {
            Some(Credentials::Psk { identity, key }) => {
                check_psk(identity, key)?;
                // SAFETY: mbedtls copies both buffers.
                let rc = unsafe {
                    ffi::mbedtls_ssl_conf_psk(
                        config_ptr(conf),
                        key.expose().as_ptr(),
                        key.len(),
                        identity.as_ptr(),
                        identity.len(),
                    )
                };
                if rc != 0 {
                    return Err(DtlsError::mbedtls("setting the PSK", rc.into()));
                }
                Ok(psk_suites().iter().map(|(s, _)| suite_id(s)).collect())
            }
            Some(Credentials::Certificate { chain, key }) => {
                self.add_certificate(conf, chain, key)?;
                let at = self.require_time()?;
                let pinned_only;
                let trust = match &self.pin {
                    // The pinned certificate is the only anchor mbedtls needs to see; the
                    // verify callback accepts exactly that end-entity certificate.
                    ServerCertificatePin::EndEntityOnly(cert) => {
                        let mut t = TrustStore::new();
                        t.add(cert.clone());
                        pinned_only = t;
                        &pinned_only
                    }
                    _ => self.require_trust("the server's certificate")?,
                };
                conf.set_ca_list(Arc::new(trust.to_mbedtls()?), crl_list(trust)?);
                conf.set_authmode(AuthMode::Required);
                let mut state = VerifyState::new(at, self.server_name.clone());
                state.pin = self.pin.clone();
                *lock(verify) = state;
                conf.set_verify_callback(verify_callback(Arc::clone(verify)));
                Ok(cert_suites().iter().map(|(s, _)| suite_id(s)).collect())
            }
            None => Err(DtlsError::InvalidConfig(
                "a client needs credentials".into(),
            )),
        }
    }

    /// Server credentials, client verification, cookies and tickets; returns the cipher
    /// suites to accept and the PSK callback's state.
    fn configure_server(
        &self,
        conf: &mut Config,
        verify: &Arc<Mutex<VerifyState>>,
    ) -> Result<(Vec<c_int>, Option<Arc<PskSlot>>), DtlsError> {
        let mut suites = Vec::new();
        let mut psk = None;
        if let Some(lookup) = &self.psk_lookup {
            let slot = Arc::new(PskSlot {
                lookup: lookup.clone(),
                seen: Mutex::new(None),
            });
            // SAFETY: the slot outlives the config: the session keeps `Built::psk` and drops
            // it after its mbedtls context and config.
            unsafe {
                ffi::mbedtls_ssl_conf_psk_cb(
                    config_ptr(conf),
                    Some(psk_callback),
                    Arc::as_ptr(&slot) as *mut c_void,
                )
            };
            psk = Some(slot);
            suites.extend(psk_suites().iter().map(|(s, _)| suite_id(s)));
        }
        if let Some(Credentials::Certificate { chain, key }) = &self.credentials {
            self.add_certificate(conf, chain, key)?;
            let at = self.require_time()?;
            let trust = self.require_trust("client certificates")?;
            conf.set_ca_list(Arc::new(trust.to_mbedtls()?), crl_list(trust)?);
            conf.set_authmode(AuthMode::Required);
            *lock(verify) = VerifyState::new(at, None);
            conf.set_verify_callback(verify_callback(Arc::clone(verify)));
            suites.extend(cert_suites().iter().map(|(s, _)| suite_id(s)));
        } else {
            conf.set_authmode(AuthMode::None);
        }
        if suites.is_empty() {
            return Err(DtlsError::InvalidConfig(
                "a server needs a PSK lookup or a certificate".into(),
            ));
        }
        let keys = self
            .server_keys
            .as_ref()
            .ok_or_else(|| DtlsError::InvalidConfig("server keys missing".into()))?;
        conf.set_dtls_cookies(Arc::clone(&keys.cookies));
        conf.set_session_tickets_callback(Arc::clone(&keys.tickets));
        Ok((suites, psk))
    }

    fn add_certificate(
        &self,
        conf: &mut Config,
        chain: &[Certificate],
        key: &KeyPair,
    ) -> Result<(), DtlsError> {
        let leaf = chain.first().ok_or_else(|| {
            DtlsError::InvalidConfig("certificate credentials need a certificate".into())
        })?;
        if !leaf.matches_key(key) {
            return Err(CryptoError::KeyMismatch(leaf.subject().to_string()).into());
        }
        let list = Certificate::mbedtls_list(chain)?;
        conf.push_cert(Arc::new(list), Arc::new(key.to_mbedtls()?))
            .map_err(|e| DtlsError::mbedtls("loading our certificate", e))
    }

    fn require_time(&self) -> Result<UtcTime, DtlsError> {
        self.verify_at.ok_or_else(|| {
            DtlsError::InvalidConfig(
                "certificate verification needs the UTC time (DtlsConfig::with_verification_time)"
                    .into(),
            )
        })
    }

    fn require_trust(&self, what: &str) -> Result<&TrustStore, DtlsError> {
        match &self.trust {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(DtlsError::InvalidConfig(format!(
                "no trust anchors for {what}: certificates are always verified"
            ))),
        }
    }
}

impl fmt::Debug for DtlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match &self.credentials {
            Some(Credentials::Psk { identity, .. }) => {
                format!("PSK identity {:?}", super::identity_text(identity))
            }
            Some(Credentials::Certificate { chain, .. }) => match chain.first() {
                Some(c) => format!("certificate {}", c.subject()),
                None => "certificate (empty chain)".into(),
            },
            None => "none".into(),
        };
        f.debug_struct("DtlsConfig")
            .field("role", &self.role)
            .field("credentials", &credentials)
            .field("psk_lookup", &self.psk_lookup.is_some())
            .field(
                "trust_anchors",
                &self.trust.as_ref().map_or(0, TrustStore::len),
            )
            .field("server_name", &self.server_name)
            .field("pin", &self.pin.certificate().map(Certificate::subject))
            .field("verify_at", &self.verify_at)
            .field("timers", &self.timers)
            .field("mtu", &self.mtu)
            .field("resume", &self.resume.is_some())
            .finish()
    }
}

fn check_psk(identity: &[u8], key: &SecretBytes) -> Result<(), DtlsError> {
    if identity.is_empty() || identity.len() > usize::from(u16::MAX) {
        return Err(DtlsError::InvalidConfig(format!(
            "PSK identity of {} bytes: it must be 1 to 65535 bytes",
            identity.len()
        )));
    }
    if key.is_empty() || key.len() > PSK_MAX_LEN {
        return Err(DtlsError::InvalidConfig(format!(
            "PSK of {} bytes: mbedtls takes 1 to {PSK_MAX_LEN} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// What [`DtlsConfig::build`] makes: the mbedtls config and the state its callbacks point to,
/// which must live at least as long as the config.
pub(super) struct Built {
    pub(super) config: Arc<Config>,
    pub(super) verify: Arc<Mutex<VerifyState>>,
    pub(super) psk: Option<Arc<PskSlot>>,
}

/// The verification policy and findings of one session's certificate checks.
#[derive(Default)]
pub(super) struct VerifyState {
    at: UtcTime,
    expected_name: Option<String>,
    pin: ServerCertificatePin,
    /// Whether the pinned CA ([`ServerCertificatePin::InChain`]) was on the chain so far.
    pin_seen: bool,
    /// `subject (depth n): problem`, one per problem found.
    pub(super) notes: Vec<String>,
    /// Every flag set on any certificate of the chain, after our time and name policy.
    pub(super) flags: Option<VerifyError>,
}

impl VerifyState {
    fn new(at: UtcTime, expected_name: Option<String>) -> Self {
        VerifyState {
            at,
            expected_name,
            pin: ServerCertificatePin::None,
            pin_seen: false,
            notes: Vec::new(),
            flags: None,
        }
    }

    /// Forgets the findings of an earlier handshake (a client reconnect), keeping the policy.
    pub(super) fn reset(&mut self) {
        self.notes.clear();
        self.flags = None;
        self.pin_seen = false;
    }

    fn note(&mut self, crt: &MbedCert, depth: i32, note: String) {
        let subject = crt.subject().unwrap_or_else(|_| "?".into());
        self.notes
            .push(format!("{subject} (depth {depth}): {note}"));
    }
}

/// The trust store's CRLs for mbedtls, so a revoked peer certificate fails the handshake.
fn crl_list(trust: &TrustStore) -> Result<Option<Arc<mbedtls::x509::Crl>>, DtlsError> {
    Ok(trust.to_mbedtls_crl()?.map(Arc::new))
}

/// mbedtls' verify callback: our validity time instead of the system clock's (as
/// `TrustStore::verify_chain`), and our name rules instead of mbedtls' for the end-entity
/// certificate. Problems are recorded as flags, never as callback errors (which would abort
/// the handshake without an alert).
fn verify_callback(
    state: Arc<Mutex<VerifyState>>,
) -> impl Fn(&MbedCert, i32, &mut VerifyError) -> mbedtls::Result<()> + Send + Sync + 'static {
    move |crt, depth, flags| {
        let mut st = lock(&state);
        // mbedtls judges a CRL's own dates by the system clock; as in
        // `TrustStore::verify_chain`, a listed revocation holds whatever those dates say.
        flags.remove(VerifyError::CRL_EXPIRED | VerifyError::CRL_FUTURE);
        if let Some(note) = apply_time_policy(crt, st.at, flags) {
            st.note(crt, depth, note);
        }
        apply_pin(&mut st, crt, depth, flags);
        if depth == 0 {
            flags.remove(VerifyError::CERT_CN_MISMATCH);
            if let Some(name) = st.expected_name.clone() {
                let verdict =
                    Certificate::from_der(crt.as_der()).and_then(|c| check_name(&c, &name));
                if let Err(e) = verdict {
                    flags.insert(VerifyError::CERT_CN_MISMATCH);
                    let note = match e {
                        CryptoError::NameMismatch { .. } => format!("not valid for name {name:?}"),
                        other => other.to_string(),
                    };
                    st.note(crt, depth, note);
                }
            }
        }
        let others = *flags
            - (VerifyError::CERT_EXPIRED
                | VerifyError::CERT_FUTURE
                | VerifyError::CERT_CN_MISMATCH);
        if !others.is_empty() {
            let info = others.error_info().join(" ");
            st.note(crt, depth, info);
        }
        let union = st.flags.unwrap_or(VerifyError::empty()) | *flags;
        st.flags = Some(union);
        Ok(())
    }
}

/// The Certificate Usage rules. mbedtls calls the verify callback from the top of the chain
/// down to the end entity (depth 0), so the end entity's verdict comes last and decides.
fn apply_pin(st: &mut VerifyState, crt: &MbedCert, depth: i32, flags: &mut VerifyError) {
    let is = |c: &Certificate| crt.as_der() == c.der();
    match st.pin.clone() {
        ServerCertificatePin::None => {}
        ServerCertificatePin::InChain(ca) => {
            st.pin_seen |= is(&ca);
            if depth == 0 && !st.pin_seen {
                flags.insert(VerifyError::CERT_NOT_TRUSTED);
                st.note(
                    crt,
                    depth,
                    format!("chain does not pass through the given CA {}", ca.subject()),
                );
            }
        }
        ServerCertificatePin::EndEntity(cert) => {
            if depth == 0 && !is(&cert) {
                flags.insert(VerifyError::CERT_NOT_TRUSTED);
                st.note(crt, depth, "is not the given server certificate".into());
            }
        }
        ServerCertificatePin::EndEntityOnly(cert) => {
            // No chain to an anchor is required: only the end entity's identity counts.
            flags.remove(VerifyError::CERT_NOT_TRUSTED);
            if depth == 0 && !is(&cert) {
                flags.insert(VerifyError::CERT_NOT_TRUSTED);
                st.note(crt, depth, "is not the given server certificate".into());
            }
        }
    }
}

/// What the server's PSK callback shares with its session.
pub(super) struct PskSlot {
    lookup: PskLookup,
    /// The identity the client presented.
    pub(super) seen: Mutex<Option<Vec<u8>>>,
}

/// `f_psk` for `mbedtls_ssl_conf_psk_cb`: looks the identity up and hands mbedtls the key.
/// A non-zero return makes mbedtls send an `unknown_psk_identity` alert.
unsafe extern "C" fn psk_callback(
    p_psk: *mut c_void,
    ssl: *mut c_void,
    identity: *const c_uchar,
    identity_len: usize,
) -> c_int {
    if p_psk.is_null() || ssl.is_null() || identity.is_null() {
        return -1;
    }
    // SAFETY: `p_psk` is the `Arc<PskSlot>` registered in `build`, alive while the config
    // is; mbedtls passes the identity as a readable buffer.
    let slot = unsafe { &*(p_psk as *const PskSlot) };
    let identity = unsafe { core::slice::from_raw_parts(identity, identity_len) }.to_vec();
    let key = catch_unwind(AssertUnwindSafe(|| slot.lookup.lookup(&identity)))
        .ok()
        .flatten();
    *lock(&slot.seen) = Some(identity);
    match key {
        Some(key) if !key.is_empty() && key.len() <= PSK_MAX_LEN => {
            // SAFETY: mbedtls copies the key into the handshake.
            unsafe { ffi::mbedtls_ssl_set_hs_psk(ssl, key.expose().as_ptr(), key.len()) }
        }
        _ => -1,
    }
}

/// The PSK suites in preference order (CCM_8 is LwM2M's mandatory one), with their names.
fn psk_suites() -> [(CipherSuite, &'static str); 2] {
    [
        (CipherSuite::PskWithAes128Ccm8, "TLS_PSK_WITH_AES_128_CCM_8"),
        (
            CipherSuite::PskWithAes128CbcSha256,
            "TLS_PSK_WITH_AES_128_CBC_SHA256",
        ),
    ]
}

/// The certificate suites in preference order, with their names.
fn cert_suites() -> [(CipherSuite, &'static str); 2] {
    [
        (
            CipherSuite::EcdheEcdsaWithAes128Ccm8,
            "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
        ),
        (
            CipherSuite::EcdheEcdsaWithAes128CbcSha256,
            "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        ),
    ]
}

/// The IANA value of a suite. `as i32` would give the enum's position, not the wire value.
fn suite_id(suite: &CipherSuite) -> c_int {
    match suite {
        CipherSuite::PskWithAes128Ccm8 => CipherSuite::PskWithAes128Ccm8.into(),
        CipherSuite::PskWithAes128CbcSha256 => CipherSuite::PskWithAes128CbcSha256.into(),
        CipherSuite::EcdheEcdsaWithAes128Ccm8 => CipherSuite::EcdheEcdsaWithAes128Ccm8.into(),
        CipherSuite::EcdheEcdsaWithAes128CbcSha256 => {
            CipherSuite::EcdheEcdsaWithAes128CbcSha256.into()
        }
        _ => 0,
    }
}

/// The IANA name of one of our four suites, from its wire value.
pub(super) fn suite_name(id: u16) -> Option<&'static str> {
    psk_suites()
        .into_iter()
        .chain(cert_suites())
        .find(|(suite, _)| suite_id(suite) == c_int::from(id))
        .map(|(_, name)| name)
}

/// The `mbedtls_ssl_config *` of a config, for the functions the wrapper lacks.
fn config_ptr(conf: &mut Config) -> *mut c_void {
    let p: *mut _ = conf.into();
    p.cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_ids_are_the_iana_values() {
        let ids: Vec<c_int> = psk_suites()
            .iter()
            .chain(cert_suites().iter())
            .map(|(s, _)| suite_id(s))
            .collect();
        assert_eq!(ids, [0xC0A8, 0x00AE, 0xC0AE, 0xC023]);
        assert_eq!(suite_name(0xC0A8), Some("TLS_PSK_WITH_AES_128_CCM_8"));
        assert_eq!(suite_name(0x1301), None);
    }

    #[test]
    fn timers_follow_the_doubling_rule() {
        let t = HandshakeTimers::default();
        assert_eq!(t.give_up_after(), Duration::from_secs(123));
        assert_eq!(t.retransmissions(), 6);
        let short = HandshakeTimers {
            min: Duration::from_secs(2),
            max: Duration::from_secs(8),
        };
        assert_eq!(short.give_up_after(), Duration::from_secs(14));
        assert_eq!(short.retransmissions(), 2);
        let bad = HandshakeTimers {
            min: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert!(matches!(bad.millis(), Err(DtlsError::InvalidConfig(_))));
    }

    #[test]
    fn incomplete_configs_are_refused_with_a_reason() {
        let rng = Drbg::from_seed(1);
        let big_key = Credentials::Psk {
            identity: b"id".to_vec(),
            key: SecretBytes::new(vec![1; 33]),
        };
        let err = DtlsConfig::client(big_key, &rng).build().err().unwrap();
        assert!(err.to_string().contains("1 to 32 bytes"), "{err}");

        let err = DtlsConfig::server(&rng).unwrap().build().err().unwrap();
        assert!(
            err.to_string().contains("PSK lookup or a certificate"),
            "{err}"
        );

        let mut drbg = Drbg::from_seed(2);
        let key = KeyPair::generate(&mut drbg).unwrap();
        let cert = crate::crypto::CertificateIssuer::new_root_ca(
            key.clone(),
            "CN=self",
            UtcTime::from_unix_seconds(0),
            UtcTime::from_unix_seconds(1 << 31),
            &mut drbg,
        )
        .unwrap()
        .certificate()
        .clone();
        let creds = Credentials::Certificate {
            chain: vec![cert.clone()],
            key: key.clone(),
        };
        let no_trust = DtlsConfig::client(creds.clone(), &rng)
            .with_verification_time(UtcTime::from_unix_seconds(5));
        let err = no_trust.build().err().unwrap();
        assert!(err.to_string().contains("always verified"), "{err}");
        let no_time =
            DtlsConfig::client(creds, &rng).with_trust(TrustStore::from_bytes(cert.der()).unwrap());
        let err = no_time.build().err().unwrap();
        assert!(err.to_string().contains("UTC time"), "{err}");

        let other = KeyPair::generate(&mut drbg).unwrap();
        let mismatched = Credentials::Certificate {
            chain: vec![cert.clone()],
            key: other,
        };
        let err = DtlsConfig::client(mismatched, &rng)
            .with_trust(TrustStore::from_bytes(cert.der()).unwrap())
            .with_verification_time(UtcTime::from_unix_seconds(5))
            .build()
            .err()
            .unwrap();
        assert!(
            matches!(err, DtlsError::Crypto(CryptoError::KeyMismatch(_))),
            "{err}"
        );
    }
}
