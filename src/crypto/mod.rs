//! Estuary's crypto layer: EC key pairs, X.509 certificates, PKCS#10 CSRs, PKCS#7 certs-only
//! bundles, a trust store with chain verification, a certificate issuer for the test server's
//! CAs, and the CTR-DRBG every one of them draws randomness from.
//!
//! It owns every use of mbedtls outside `dtls/`: the rest of the crate sees only the small
//! types re-exported here, so a move to another Mbed TLS line or to an HSM engine stays inside
//! this folder. Time and randomness are passed in ([`UtcTime`], [`Drbg`]): nothing here reads a
//! clock, a file or a socket. Parsers return [`CryptoError`] on any input and never panic.
//! It does not do DTLS (that is `dtls/`) nor decide policy (which CA to trust for which
//! account, when to re-enroll: that is `est/` and `lwm2m/`).

#![warn(missing_docs)]

mod cert;
mod csr;
mod der;
mod drbg;
mod issue;
mod key;
mod pem;
mod pkcs7;
mod secret;
mod trust;

#[cfg(test)]
pub(crate) mod test_support;

pub use cert::Certificate;
pub use csr::Csr;
pub use drbg::Drbg;
pub use issue::{CertificateIssuer, CertificateProfile, CertificateTemplate};
pub use key::{verify_signature, KeyPair};
pub use pkcs7::{build_certs_only, parse_certs_only};
pub use secret::SecretBytes;
pub use trust::TrustStore;

// For `dtls/`, the one other folder that talks to mbedtls: the handshake's verify callback must
// apply the same time and name policy as `TrustStore::verify_chain`. The mbedtls handles it
// needs are `pub(crate)` methods: `Drbg::shared`, `KeyPair::to_mbedtls`,
// `Certificate::to_mbedtls`/`mbedtls_list` and `TrustStore::to_mbedtls`.
#[allow(unused_imports)] // until dtls/ lands
pub(crate) use trust::{apply_time_policy, check_name};

use crate::time::UtcTime;

/// Everything that can go wrong in the crypto layer.
///
/// Variants coming from mbedtls carry its numeric code and its own reason text, so a log line
/// says why a handshake or a verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Input that is not what it claims to be: bad DER, bad PEM, wrong structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed ("certificate", "PEM", "CSR", ...).
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// An mbedtls call failed; `reason` is mbedtls' own description of `code`.
    #[error("{op}: {reason} (mbedtls error -0x{code:04X})")]
    Mbedtls {
        /// What we asked mbedtls to do.
        op: &'static str,
        /// mbedtls' error code, without its minus sign.
        code: u32,
        /// mbedtls' description of the code.
        reason: String,
    },
    /// A well-formed key of a kind we do not handle (RSA, an encrypted key, ...).
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// An argument the caller passed makes no sense (empty subject, serial too long, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A signature that does not verify against the given public key.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// A certificate chain that does not lead to a trusted certificate or is not valid at the
    /// given time; `reason` lists every problem found, one per certificate.
    #[error("certificate chain rejected: {reason}")]
    ChainRejected {
        /// Every problem found, `subject (depth n): problem`, separated by `; `.
        reason: String,
    },
    /// Chain verification was asked of an empty trust store.
    #[error("trust store is empty")]
    NoTrustAnchors,
    /// The certificate is not issued for the expected host or endpoint name.
    #[error("certificate {subject} is not valid for name {expected:?}")]
    NameMismatch {
        /// The certificate's subject.
        subject: String,
        /// The name it was checked against.
        expected: String,
    },
    /// A key pair and certificate (or issuer key and CA certificate) that do not belong
    /// together.
    #[error("key does not match certificate {0}")]
    KeyMismatch(String),
}

impl CryptoError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        CryptoError::Malformed {
            what,
            reason: reason.into(),
        }
    }

    /// Wraps an mbedtls error with what we were doing when it happened.
    pub(crate) fn mbedtls(op: &'static str, err: mbedtls::Error) -> Self {
        let code = err.to_int();
        CryptoError::Mbedtls {
            op,
            code: code.unsigned_abs(),
            reason: mbedtls_reason(code).unwrap_or_else(|| err.to_string()),
        }
    }
}

/// Shorthand used by every mbedtls call site: `pk.sign(..).map_err(mbed("signing"))?`.
pub(crate) fn mbed(op: &'static str) -> impl Fn(mbedtls::Error) -> CryptoError {
    move |e| CryptoError::mbedtls(op, e)
}

// The Rust wrapper only offers the variant name ("X509CertVerifyFailed"); mbedtls' own
// `mbedtls_strerror` gives the sentence a log reader wants. It is part of mbedtls' public C API
// and compiled in by mbedtls-sys-auto (MBEDTLS_ERROR_C), but the wrapper does not expose it.
extern "C" {
    fn mbedtls_strerror(errnum: core::ffi::c_int, buffer: *mut core::ffi::c_char, buflen: usize);
}

fn mbedtls_reason(code: i32) -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: mbedtls_strerror writes at most `buflen` bytes, always NUL-terminated.
    unsafe { mbedtls_strerror(code, buf.as_mut_ptr().cast(), buf.len()) };
    let text = core::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    let text = text.to_string_lossy().trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Converts an X.509 time to our UTC time (whole seconds).
pub(crate) fn utc_from_x509(t: mbedtls::x509::Time) -> Result<UtcTime, CryptoError> {
    let naive = chrono::NaiveDateTime::try_from(t)
        .map_err(|_| CryptoError::malformed("certificate", "invalid validity date"))?;
    Ok(UtcTime::from_unix_seconds(naive.and_utc().timestamp()))
}

/// Converts our UTC time to an X.509 time, truncating to whole seconds; years outside
/// 0000..=9999 cannot be written in a certificate.
pub(crate) fn x509_from_utc(t: UtcTime) -> Result<mbedtls::x509::Time, CryptoError> {
    let bad = || {
        CryptoError::InvalidArgument(format!(
            "time {} not representable in X.509",
            t.unix_millis()
        ))
    };
    let dt = chrono::DateTime::from_timestamp(t.unix_seconds(), 0).ok_or_else(bad)?;
    mbedtls::x509::Time::try_from(dt.naive_utc()).map_err(|_| bad())
}

/// An RFC 3339 rendering of `t` for log lines and error messages.
pub(crate) fn fmt_utc(t: UtcTime) -> String {
    match chrono::DateTime::from_timestamp(t.unix_seconds(), 0) {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => format!("{}ms", t.unix_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbedtls_errors_carry_the_reason_text() {
        let e = CryptoError::mbedtls("parsing", mbedtls::Error::from(-0x2700));
        let text = e.to_string();
        assert!(text.contains("X509"), "{text}");
        assert!(text.contains("-0x2700"), "{text}");
    }

    /// Every parser on seeded mutations of real inputs: errors are fine, panics are not, and
    /// whatever a parser accepts it accepts consistently.
    #[test]
    fn parsers_survive_mutated_input() {
        use test_support::{TestPki, DAY, T0};
        let mut rng = Drbg::from_seed(60);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = pki.client(&key, "CN=fuzz", &mut rng);
        let csr = Csr::build(&key, "CN=fuzz", &mut rng).unwrap();
        let inputs: Vec<Vec<u8>> = vec![
            leaf.der().to_vec(),
            leaf.to_pem().into_bytes(),
            csr,
            key.to_der().expose().to_vec(),
            key.to_sec1_pem().expose().to_vec(),
            build_certs_only(&[leaf.clone(), pki.ca.clone()]),
        ];
        let store = TrustStore::from_bytes(pki.ca.der()).unwrap();
        let mut noise = [0u8; 6];
        for input in &inputs {
            for _ in 0..400 {
                rng.fill_bytes(&mut noise).unwrap();
                let mut bad = input.clone();
                for pair in noise.chunks(3) {
                    let i = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % bad.len();
                    bad[i] = pair[2];
                }
                let cut = usize::from(noise[0]) % 4;
                bad.truncate(bad.len() - cut);
                if let Ok(c) = Certificate::from_der(&bad) {
                    assert_eq!(Certificate::from_der(c.der()).as_ref(), Ok(&c));
                    let _ = store.verify_chain(&[c], UtcTime::from_unix_seconds(T0 + DAY / 2));
                }
                let _ = Certificate::parse_any(&bad);
                let _ = Csr::parse(&bad);
                let _ = KeyPair::from_der_or_pem(&bad);
                let _ = parse_certs_only(&bad);
                let _ = TrustStore::new().add_bytes(&bad);
            }
        }
    }

    #[test]
    fn utc_x509_round_trip() {
        let t = UtcTime::from_unix_seconds(1_700_000_000);
        assert_eq!(utc_from_x509(x509_from_utc(t).unwrap()).unwrap(), t);
        assert_eq!(fmt_utc(t), "2023-11-14T22:13:20Z");
        assert!(x509_from_utc(UtcTime::from_unix_seconds(300_000_000_000)).is_err());
    }
}
