//! The EST state as a persisted part: the key pair (PKCS#8 DER), the certificate and its
//! chain, the CA certificates from `/est/crts`, and the provisioning time. Restoring checks
//! that the key and certificate belong together.

use ciborium::Value;

use super::cbor::{self, Fields};
use super::frame::{self, Part};
use super::PersistError;
use crate::crypto::{Certificate, KeyPair};
use crate::est::EstState;
use crate::time::UtcTime;

pub const EST_VERSION: u16 = 1;

fn certs(list: &[Certificate]) -> Value {
    Value::Array(
        list.iter()
            .map(|c| Value::Bytes(c.der().to_vec()))
            .collect(),
    )
}

fn parse_certs(items: &[Value]) -> Result<Vec<Certificate>, PersistError> {
    items
        .iter()
        .map(|v| match v {
            Value::Bytes(b) => Certificate::from_der(b)
                .map_err(|e| PersistError::malformed(format!("certificate: {e}"))),
            _ => Err(PersistError::malformed("certificate is not bytes")),
        })
        .collect()
}

/// The EST state as a part.
pub fn est_persist(s: &EstState) -> Result<Vec<u8>, PersistError> {
    let mut m = vec![(3, certs(&s.chain)), (4, certs(&s.cacerts))];
    if let Some(k) = &s.key {
        m.push((1, Value::Bytes(k.to_der().expose().to_vec())));
    }
    if let Some(c) = &s.certificate {
        m.push((2, Value::Bytes(c.der().to_vec())));
    }
    if let Some(t) = s.provisioned_at {
        m.push((5, Value::from(t.unix_millis())));
    }
    frame::write(Part::Est, EST_VERSION, &cbor::to_bytes(&cbor::map(m)))
}

/// Decodes an EST part into a new state. Returns the state and the bytes consumed.
pub fn est_restore(input: &[u8]) -> Result<(EstState, usize), PersistError> {
    let (_v, payload, used) = frame::read(input, Part::Est, EST_VERSION)?;
    let v = cbor::from_bytes(payload)?;
    let f = Fields::of(&v, "EST state")?;
    let key = match f.opt_bytes(1)? {
        Some(der) => Some(
            KeyPair::from_der(&der).map_err(|e| PersistError::malformed(format!("key: {e}")))?,
        ),
        None => None,
    };
    let certificate = match f.opt_bytes(2)? {
        Some(der) => Some(
            Certificate::from_der(&der)
                .map_err(|e| PersistError::malformed(format!("certificate: {e}")))?,
        ),
        None => None,
    };
    if let (Some(k), Some(c)) = (&key, &certificate) {
        if !c.matches_key(k) {
            return Err(PersistError::malformed(
                "certificate does not match the key",
            ));
        }
    }
    let state = EstState {
        key,
        certificate,
        chain: parse_certs(f.array(3)?)?,
        cacerts: parse_certs(f.array(4)?)?,
        provisioned_at: f.opt_int(5)?.map(UtcTime::from_unix_millis),
    };
    Ok((state, used))
}

/// An enrolled EST state (a CA, a key and a one-day certificate for "CN=dev1" from
/// 2023-11-14), for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn enrolled_for_tests(seed: u64) -> EstState {
    use crate::crypto::{CertificateIssuer, CertificateProfile, CertificateTemplate, Drbg};
    let mut rng = Drbg::from_seed(seed);
    let ca = CertificateIssuer::new_root_ca(
        KeyPair::generate(&mut rng).unwrap(),
        "CN=EST CA",
        UtcTime::from_unix_seconds(1_700_000_000),
        UtcTime::from_unix_seconds(1_800_000_000),
        &mut rng,
    )
    .unwrap();
    let key = KeyPair::generate(&mut rng).unwrap();
    let t = CertificateTemplate {
        subject: "CN=dev1".into(),
        serial: CertificateTemplate::random_serial(&mut rng).unwrap(),
        not_before: UtcTime::from_unix_seconds(1_700_000_000),
        not_after: UtcTime::from_unix_seconds(1_700_086_400),
        profile: CertificateProfile::Client,
    };
    let cert = ca.issue(key.public_key_der(), &t, &mut rng).unwrap();
    EstState {
        key: Some(key),
        certificate: Some(cert),
        chain: vec![],
        cacerts: vec![ca.certificate().clone()],
        provisioned_at: Some(UtcTime::from_unix_millis(1_700_000_123_456)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Drbg;

    fn enrolled() -> EstState {
        enrolled_for_tests(5)
    }

    #[test]
    fn round_trip_keeps_everything() {
        let s = enrolled();
        let bytes = est_persist(&s).unwrap();
        let (back, used) = est_restore(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back.key, s.key);
        assert_eq!(back.certificate, s.certificate);
        assert_eq!(back.cacerts, s.cacerts);
        assert_eq!(back.provisioned_at, s.provisioned_at);
        let empty = est_persist(&EstState::default()).unwrap();
        let (e, _) = est_restore(&empty).unwrap();
        assert!(!e.is_enrolled());
    }

    #[test]
    fn key_and_certificate_must_match() {
        let mut s = enrolled();
        let mut rng = Drbg::from_seed(99);
        s.key = Some(KeyPair::generate(&mut rng).unwrap());
        let bytes = est_persist(&s).unwrap();
        assert!(est_restore(&bytes)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
    }

    #[test]
    fn every_truncation_and_single_bit_flip_is_refused() {
        let bytes = est_persist(&enrolled()).unwrap();
        for cut in 0..bytes.len() {
            assert!(est_restore(&bytes[..cut]).is_err(), "cut {cut}");
        }
        // Every bit of a part this size would take a while in debug: flip one bit in each
        // byte, cycling through bit positions.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1 << (i % 8);
            assert!(est_restore(&b).is_err(), "byte {i}");
        }
    }
}
