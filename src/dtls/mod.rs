//! DTLS 1.2 sessions inside the sans-IO core: [`DtlsSession`] runs an mbedtls context over
//! in-memory datagram queues and a virtual timer, for both the client and the test server.
//!
//! Records go in with [`DtlsSession::handle_datagram`] and come out of
//! [`DtlsSession::poll_transmit`]; retransmissions happen in [`DtlsSession::handle_timeout`]
//! at the deadline [`DtlsSession::poll_timeout`] gives. Time is whatever the caller passed last
//! and certificate validity is judged at the UTC time in the [`DtlsConfig`], with the same
//! policy as `crypto::TrustStore`. This folder and `crypto/` are the only places that name
//! mbedtls. It does not own sockets, addresses or the per-peer session map (the caller keeps
//! one session per peer address), nor decide which credentials a server account uses
//! (`lwm2m/`).
//!
//! Inside mbedtls 2.28 (built with `MBEDTLS_HAVE_TIME`), the system clock is still read for
//! things that decide neither timers nor certificate validity: the first four bytes of the
//! hello randoms, a session's start time, the age of HelloVerifyRequest cookies (60 s) and of
//! session tickets and their keys (a day). Replacing those reads needs mbedtls' custom-time
//! hook, which this build does not enable.

#![warn(missing_docs)]

mod config;
mod ffi;
mod io;
mod record;
mod session;

#[cfg(test)]
mod tests;

use core::fmt;
use core::time::Duration;

pub use config::{
    Credentials, DtlsConfig, HandshakeTimers, PskLookup, Role, ServerCertificatePin, DEFAULT_MTU,
};
pub use session::{DtlsSession, DtlsState, SavedSession};

use crate::crypto::CryptoError;

/// Why a certificate was refused, from the X.509 verification flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateProblem {
    /// A certificate on the path is past its notAfter at the verification time.
    Expired,
    /// A certificate on the path is before its notBefore at the verification time.
    NotYetValid,
    /// The chain does not lead to a trusted certificate (or a signature does not verify).
    Untrusted,
    /// The end-entity certificate does not name the expected server.
    NameMismatch,
    /// The peer sent no certificate although one is required.
    Missing,
    /// Anything else mbedtls flagged (key usage, weak hash, bad key, ...).
    Other,
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateProblem::Expired => "expired",
            CertificateProblem::NotYetValid => "not yet valid",
            CertificateProblem::Untrusted => "not trusted",
            CertificateProblem::NameMismatch => "name mismatch",
            CertificateProblem::Missing => "missing",
            CertificateProblem::Other => "rejected",
        })
    }
}

/// Everything that can go wrong with a DTLS session. Handshake failures say why in terms a
/// log reader can act on; variants that come from mbedtls carry its own reason text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// The server does not know the PSK identity the client sent (on the client: the server
    /// answered with an `unknown_psk_identity` alert).
    #[error("PSK identity {identity:?} is unknown to the server")]
    UnknownPskIdentity {
        /// The identity, as text if it is UTF-8, hex otherwise.
        identity: String,
    },
    /// Both sides know the identity but hold different keys: the client's Finished did not
    /// authenticate (on the client: the server answered with a `bad_record_mac` alert).
    #[error("pre-shared key mismatch for identity {identity:?}: {reason}")]
    PskMismatch {
        /// The identity, as text if it is UTF-8, hex otherwise.
        identity: String,
        /// What was observed (mbedtls' reason or the alert).
        reason: String,
    },
    /// We refused the peer's certificate.
    #[error("peer certificate {problem}: {reason}")]
    CertificateRejected {
        /// The main problem, for programs.
        problem: CertificateProblem,
        /// Every problem found, `subject (depth n): problem; ...`, and mbedtls' reason.
        reason: String,
    },
    /// The peer refused our certificate (it sent this fatal alert).
    #[error("peer refused our certificate: {} alert ({alert})", record::alert_name(*alert))]
    CertificateRefusedByPeer {
        /// The TLS alert description (42 bad_certificate, 45 certificate_expired, 48
        /// unknown_ca, ...).
        alert: u8,
    },
    /// The peer aborted the handshake with another fatal alert.
    #[error("peer sent a fatal {} alert ({alert}): {reason}", record::alert_name(*alert))]
    PeerAlert {
        /// The TLS alert description, 255 if it was encrypted and so not readable here.
        alert: u8,
        /// mbedtls' reason text.
        reason: String,
    },
    /// The handshake did not complete: a flight went unanswered through every retransmission.
    #[error(
        "DTLS handshake timed out after {elapsed:?}: a flight went unanswered through every \
         retransmission ({retransmissions} in all)"
    )]
    Timeout {
        /// Time since the session started.
        elapsed: Duration,
        /// How many flights were retransmitted during the whole handshake.
        retransmissions: u32,
    },
    /// The peer closed the session (close_notify).
    #[error("peer closed the DTLS session")]
    PeerClosed,
    /// A record or handshake message that does not parse, fatal to the handshake.
    #[error("malformed DTLS record or handshake message: {reason} (mbedtls error -0x{code:04X})")]
    MalformedRecord {
        /// mbedtls' error code, without its minus sign.
        code: u32,
        /// mbedtls' reason text.
        reason: String,
    },
    /// Any other handshake failure (no common cipher suite, wrong protocol version, ...).
    #[error("DTLS handshake failed: {reason} (mbedtls error -0x{code:04X})")]
    HandshakeFailed {
        /// mbedtls' error code, without its minus sign.
        code: u32,
        /// mbedtls' reason text.
        reason: String,
    },
    /// An mbedtls call outside the handshake failed.
    #[error("{op}: {reason} (mbedtls error -0x{code:04X})")]
    Mbedtls {
        /// What we asked mbedtls to do.
        op: &'static str,
        /// mbedtls' error code, without its minus sign.
        code: u32,
        /// mbedtls' reason text.
        reason: String,
    },
    /// The configuration cannot work (missing credentials, trust store or verification time,
    /// an oversized key, ...).
    #[error("invalid DTLS configuration: {0}")]
    InvalidConfig(String),
    /// A credential could not be loaded.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Application data was offered before the handshake finished.
    #[error("DTLS session is not established yet")]
    NotEstablished,
    /// The session was closed (by [`DtlsSession::close`] or the peer) or failed earlier.
    #[error("DTLS session is closed")]
    Closed,
    /// A datagram larger than one record can carry with the configured MTU.
    #[error("payload of {len} bytes exceeds the {max} bytes one DTLS record can carry")]
    PayloadTooLarge {
        /// The payload's size.
        len: usize,
        /// The largest payload a record can carry now.
        max: usize,
    },
}

/// mbedtls' code and reason text for an error.
pub(crate) fn mbedtls_parts(err: &mbedtls::Error) -> (u32, String) {
    match CryptoError::mbedtls("", mbedtls::Error::from(err.to_int())) {
        CryptoError::Mbedtls { code, reason, .. } => (code, reason),
        other => (err.to_int().unsigned_abs(), other.to_string()),
    }
}

impl DtlsError {
    pub(crate) fn mbedtls(op: &'static str, err: mbedtls::Error) -> Self {
        let (code, reason) = mbedtls_parts(&err);
        DtlsError::Mbedtls { op, code, reason }
    }

    /// True for the failures of authentication (PSK or certificate, either side): retrying
    /// with the same credentials will fail the same way.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            DtlsError::UnknownPskIdentity { .. }
                | DtlsError::PskMismatch { .. }
                | DtlsError::CertificateRejected { .. }
                | DtlsError::CertificateRefusedByPeer { .. }
        )
    }
}

/// A PSK identity for messages: text if it is printable UTF-8, hex otherwise.
pub(crate) fn identity_text(identity: &[u8]) -> String {
    match core::str::from_utf8(identity) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => identity.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
