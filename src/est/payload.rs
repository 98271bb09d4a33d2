//! EST-coaps payloads (RFC 9148 / draft-ietf-ace-coap-est): certificates come back as one DER
//! certificate (Content-Format 287) or a PKCS#7 certs-only bundle (281). This module turns a
//! response body into certificates and decides whether an enrolled certificate may be used.

use crate::coap::content_format;
use crate::crypto::{parse_certs_only, Certificate, CryptoError, KeyPair, TrustStore};
use crate::time::UtcTime;

/// Why an EST response was not accepted. The previous credential stays in use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EstError {
    #[error("EST response has Content-Format {0:?}, expected 287 or 281")]
    UnsupportedContentFormat(Option<u16>),
    #[error("EST response body is malformed: {0}")]
    Malformed(CryptoError),
    #[error("EST response holds no certificate")]
    Empty,
    #[error("no certificate in the EST response matches our key")]
    KeyMismatch,
    #[error("enrolled certificate {subject} is not valid now (valid {not_before} to {not_after} s since the epoch)")]
    NotValidNow {
        subject: String,
        not_before: i64,
        not_after: i64,
    },
    #[error("enrolled certificate does not chain to the trust store: {0}")]
    Untrusted(CryptoError),
}

/// Certificates from a `/est/crts`, `/est/sen` or `/est/sren` response body.
pub fn certificates(cf: Option<u16>, body: &[u8]) -> Result<Vec<Certificate>, EstError> {
    let certs = match cf {
        Some(content_format::PKIX_CERT) => {
            vec![Certificate::from_der(body).map_err(EstError::Malformed)?]
        }
        Some(content_format::PKCS7_CERTS_ONLY) => {
            parse_certs_only(body).map_err(EstError::Malformed)?
        }
        other => return Err(EstError::UnsupportedContentFormat(other)),
    };
    if certs.is_empty() {
        return Err(EstError::Empty);
    }
    Ok(certs)
}

/// An enrolled certificate that passed every check, with the rest of the response (which
/// may hold intermediate CAs) kept as its chain.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub certificate: Certificate,
    pub chain: Vec<Certificate>,
}

/// Picks our certificate out of an enrollment response and checks it: it must carry our
/// public key (found by key, not position — bundles come sorted), be valid at `now`, and
/// chain to `trust` when the store is not empty.
pub fn accept_enrolled(
    certs: Vec<Certificate>,
    key: &KeyPair,
    now: UtcTime,
    trust: &TrustStore,
) -> Result<Enrolled, EstError> {
    let pos = certs
        .iter()
        .position(|c| c.matches_key(key))
        .ok_or(EstError::KeyMismatch)?;
    let mut chain = certs;
    let certificate = chain.remove(pos);
    if !certificate.is_valid_at(now) {
        return Err(EstError::NotValidNow {
            subject: certificate.subject().to_string(),
            not_before: certificate.not_before().unix_seconds(),
            not_after: certificate.not_after().unix_seconds(),
        });
    }
    if !trust.is_empty() {
        let mut full = vec![certificate.clone()];
        full.extend(chain.iter().cloned());
        trust
            .verify_chain(&full, now)
            .map_err(EstError::Untrusted)?;
    }
    Ok(Enrolled { certificate, chain })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{
        build_certs_only, CertificateIssuer, CertificateProfile, CertificateTemplate, Drbg,
    };

    const T0: i64 = 1_700_000_000;

    fn t(s: i64) -> UtcTime {
        UtcTime::from_unix_seconds(T0 + s)
    }

    struct Pki {
        rng: Drbg,
        ca: CertificateIssuer,
        device: KeyPair,
    }

    fn pki() -> Pki {
        pki_seeded(42)
    }

    fn pki_seeded(seed: u64) -> Pki {
        let mut rng = Drbg::from_seed(seed);
        let ca_key = KeyPair::generate(&mut rng).unwrap();
        let ca = CertificateIssuer::new_root_ca(ca_key, "CN=EST CA", t(-10), t(10_000), &mut rng)
            .unwrap();
        let device = KeyPair::generate(&mut rng).unwrap();
        Pki { rng, ca, device }
    }

    fn issue(p: &mut Pki, key: &KeyPair, from: i64, to: i64) -> Certificate {
        let template = CertificateTemplate {
            subject: "CN=dev1".into(),
            serial: CertificateTemplate::random_serial(&mut p.rng).unwrap(),
            not_before: t(from),
            not_after: t(to),
            profile: CertificateProfile::Client,
        };
        p.ca.issue(key.public_key_der(), &template, &mut p.rng)
            .unwrap()
    }

    #[test]
    fn single_der_and_pkcs7_bundles_are_accepted_and_the_leaf_found_by_key() {
        let mut p = pki();
        let device = p.device.clone();
        let leaf = issue(&mut p, &device, 0, 100);
        let one = certificates(Some(287), leaf.der()).unwrap();
        assert_eq!(one.len(), 1);
        let mut trust = TrustStore::new();
        trust.add(p.ca.certificate().clone());
        let e = accept_enrolled(one, &device, t(1), &trust).unwrap();
        assert_eq!(e.certificate.der(), leaf.der());

        // The bundle puts the CA first: the leaf is still found.
        let bundle = build_certs_only(&[p.ca.certificate().clone(), leaf.clone()]);
        let certs = certificates(Some(281), &bundle).unwrap();
        let e = accept_enrolled(certs, &device, t(1), &trust).unwrap();
        assert_eq!(e.certificate.der(), leaf.der());
        assert_eq!(e.chain.len(), 1);
    }

    #[test]
    fn refusals() {
        let mut p = pki();
        let device = p.device.clone();
        let other = KeyPair::generate(&mut p.rng).unwrap();
        let trust = {
            let mut s = TrustStore::new();
            s.add(p.ca.certificate().clone());
            s
        };
        let wrong_key = issue(&mut p, &other, 0, 100);
        assert_eq!(
            accept_enrolled(vec![wrong_key], &device, t(1), &trust).unwrap_err(),
            EstError::KeyMismatch
        );
        let expired = issue(&mut p, &device, 0, 100);
        assert!(matches!(
            accept_enrolled(vec![expired.clone()], &device, t(200), &trust),
            Err(EstError::NotValidNow { .. })
        ));
        assert!(matches!(
            accept_enrolled(vec![expired], &device, t(-5), &trust),
            Err(EstError::NotValidNow { .. })
        ));
        // Issued by a CA we do not trust.
        let mut rogue = pki_seeded(43);
        let rogue_leaf = issue(&mut rogue, &device, 0, 100);
        assert!(matches!(
            accept_enrolled(vec![rogue_leaf.clone()], &device, t(1), &trust),
            Err(EstError::Untrusted(_))
        ));
        // With no trust store configured, only key and validity are checked.
        assert!(accept_enrolled(vec![rogue_leaf], &device, t(1), &TrustStore::new()).is_ok());

        assert_eq!(
            certificates(Some(0), b"x").unwrap_err(),
            EstError::UnsupportedContentFormat(Some(0))
        );
        assert_eq!(
            certificates(None, b"x").unwrap_err(),
            EstError::UnsupportedContentFormat(None)
        );
    }

    #[test]
    fn truncated_and_random_bodies_are_refused_without_panicking() {
        let mut p = pki();
        let device = p.device.clone();
        let leaf = issue(&mut p, &device, 0, 100);
        let bundle = build_certs_only(std::slice::from_ref(&leaf));
        for cut in 0..bundle.len() {
            assert!(
                certificates(Some(281), &bundle[..cut]).is_err(),
                "cut {cut}"
            );
        }
        for cut in 0..leaf.der().len() {
            assert!(
                certificates(Some(287), &leaf.der()[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut x = 0x1234_5678u32;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(certificates(Some(281), &body).is_err());
            assert!(certificates(Some(287), &body).is_err());
        }
    }
}
