//! [`TrustStore`]: the certificates a device or server trusts, the certificate revocation
//! lists (CRLs) that apply to them, and chain verification against them at a time the caller
//! passes.
//!
//! mbedtls checks signatures, CA flags, key usage and path length; it would also check validity
//! against the system clock, which a sans-IO core must not read. So the verify callback clears
//! mbedtls' time flags and applies our own check with the passed time to every certificate in
//! the chain ([`apply_time_policy`], which `dtls/` reuses for handshakes). Which store applies
//! to which connection (the `est_cacerts_policy`) is decided elsewhere; callers pass bytes, this
//! module reads no files.
//!
//! CRLs: mbedtls checks each CRL's signature against the CA that issued it and marks a
//! certificate whose serial it lists as revoked. It would also judge the CRL's thisUpdate /
//! nextUpdate by the system clock; that verdict is dropped, so a CRL past its nextUpdate still
//! revokes what it lists (a revocation is permanent) and a missing fresher CRL is not an error.

use std::sync::{Arc, Mutex};

use mbedtls::x509::{Certificate as MbedCert, Crl as MbedCrl, VerifyError};

use super::{fmt_utc, pem, utc_from_x509, Certificate, CryptoError};
use crate::time::UtcTime;

/// A set of trusted certificates (trust anchors), without duplicates, and the CRLs applied
/// when verifying against them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustStore {
    certs: Vec<Certificate>,
    /// DER CRLs, each parsed by mbedtls once when added.
    crls: Vec<Vec<u8>>,
}

impl TrustStore {
    /// An empty store: nothing verifies against it.
    pub fn new() -> Self {
        TrustStore::default()
    }

    /// A store holding every certificate in `bytes` (see [`TrustStore::add_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut store = TrustStore::new();
        store.add_bytes(bytes)?;
        Ok(store)
    }

    /// The same CRLs with no trust anchor: for a connection that trusts one given anchor
    /// only (Certificate Usage 2) yet must still honour revocations.
    pub fn crls_only(&self) -> TrustStore {
        TrustStore {
            certs: Vec::new(),
            crls: self.crls.clone(),
        }
    }

    /// Adds a certificate; returns false if it was already trusted.
    pub fn add(&mut self, cert: Certificate) -> bool {
        if self.contains(&cert) {
            return false;
        }
        self.certs.push(cert);
        true
    }

    /// Adds one DER certificate.
    pub fn add_der(&mut self, der: &[u8]) -> Result<(), CryptoError> {
        self.add(Certificate::from_der(der)?);
        Ok(())
    }

    /// Adds every certificate of a PEM bundle; returns how many were new. Nothing is added if
    /// any certificate in the bundle is bad.
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<usize, CryptoError> {
        let certs = Certificate::from_pem_bundle(pem)?;
        Ok(certs.into_iter().filter(|c| self.add(c.clone())).count())
    }

    /// Adds every certificate in a file's contents or an EST `/crts` response: DER, PEM bundle
    /// or PKCS#7 certs-only. Returns how many were new; nothing is added on error.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<usize, CryptoError> {
        let certs = Certificate::parse_any(bytes)?;
        Ok(certs.into_iter().filter(|c| self.add(c.clone())).count())
    }

    /// Removes a certificate; returns false if it was not there.
    pub fn remove(&mut self, cert: &Certificate) -> bool {
        let before = self.certs.len();
        self.certs.retain(|c| c.der() != cert.der());
        self.certs.len() != before
    }

    /// True if `cert` (byte for byte) is trusted.
    pub fn contains(&self, cert: &Certificate) -> bool {
        self.certs.iter().any(|c| c.der() == cert.der())
    }

    /// The trusted certificates, in the order they were added.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certs
    }

    /// Adds every CRL in `bytes`: one DER CRL, or PEM `X509 CRL` blocks. Returns how many
    /// were new; nothing is added if any CRL is malformed.
    pub fn add_crl_bytes(&mut self, bytes: &[u8]) -> Result<usize, CryptoError> {
        let ders: Vec<Vec<u8>> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let blocks = pem::decode_all(bytes)?;
            let ders: Vec<Vec<u8>> = blocks
                .iter()
                .filter(|b| b.label == "X509 CRL")
                .map(|b| b.der.clone())
                .collect();
            if ders.is_empty() {
                return Err(CryptoError::malformed(
                    "CRL",
                    "no X509 CRL block in the PEM text",
                ));
            }
            ders
        } else {
            vec![bytes.to_vec()]
        };
        for der in &ders {
            MbedCrl::new()
                .push_from_der(der)
                .map_err(|e| CryptoError::mbedtls("parsing a CRL", e))?;
        }
        let mut added = 0;
        for der in ders {
            if !self.crls.contains(&der) {
                self.crls.push(der);
                added += 1;
            }
        }
        Ok(added)
    }

    /// Number of CRLs.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// The CRLs as one mbedtls list (`None` when there are none), for verification here and
    /// for DTLS handshakes in `dtls/`.
    pub(crate) fn to_mbedtls_crl(&self) -> Result<Option<MbedCrl>, CryptoError> {
        if self.crls.is_empty() {
            return Ok(None);
        }
        let mut list = MbedCrl::new();
        for der in &self.crls {
            list.push_from_der(der)
                .map_err(|e| CryptoError::mbedtls("loading a CRL", e))?;
        }
        Ok(Some(list))
    }

    /// Number of trusted certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True if nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Checks that `chain[0]` (the end-entity certificate), helped by the intermediates in the
    /// rest of `chain` (any order), chains to a certificate in this store with valid
    /// signatures, and that every certificate on the path is valid at `at`.
    pub fn verify_chain(&self, chain: &[Certificate], at: UtcTime) -> Result<(), CryptoError> {
        if self.certs.is_empty() {
            return Err(CryptoError::NoTrustAnchors);
        }
        let Some(leaf) = chain.first() else {
            return Err(CryptoError::ChainRejected {
                reason: "no certificate presented".into(),
            });
        };
        let ordered = order_chain(leaf, &chain[1..]);
        let chain_list = Certificate::mbedtls_list(ordered)?;
        let anchors = Certificate::mbedtls_list(&self.certs)?;
        let mut crl = self.to_mbedtls_crl()?;

        let notes = Arc::new(Mutex::new(Vec::<String>::new()));
        let cb_notes = Arc::clone(&notes);
        let callback = move |crt: &MbedCert, depth: i32, flags: &mut VerifyError| {
            if let Some(note) = apply_time_policy(crt, at, flags) {
                push_note(&cb_notes, crt, depth, note);
            }
            // CRL freshness by the system clock: not ours to judge (see the module header).
            flags.remove(VerifyError::CRL_EXPIRED | VerifyError::CRL_FUTURE);
            let others = *flags - (VerifyError::CERT_EXPIRED | VerifyError::CERT_FUTURE);
            if !others.is_empty() {
                push_note(&cb_notes, crt, depth, others.error_info().join(" "));
            }
            Ok(())
        };
        let mut info = String::new();
        let result = MbedCert::verify_with_callback(
            &chain_list,
            &anchors,
            crl.as_mut(),
            Some(&mut info),
            callback,
        );
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let notes = notes.lock().map(|n| n.join("; ")).unwrap_or_default();
                let reason = if !notes.is_empty() {
                    notes
                } else if !info.trim().is_empty() {
                    info.trim().replace('\n', "; ")
                } else {
                    CryptoError::mbedtls("verifying a certificate chain", e).to_string()
                };
                Err(CryptoError::ChainRejected { reason })
            }
        }
    }

    /// [`TrustStore::verify_chain`], then checks that the end-entity certificate names
    /// `expected_name` (a server's host name or IP literal, or a client's endpoint name; see
    /// [`Certificate::matches_name`]).
    pub fn verify_chain_for_name(
        &self,
        chain: &[Certificate],
        at: UtcTime,
        expected_name: &str,
    ) -> Result<(), CryptoError> {
        self.verify_chain(chain, at)?;
        match chain.first() {
            Some(leaf) => check_name(leaf, expected_name),
            None => Err(CryptoError::ChainRejected {
                reason: "no certificate presented".into(),
            }),
        }
    }

    /// The store as an mbedtls CA list, for `dtls/`.
    #[allow(dead_code)] // used by dtls/
    pub(crate) fn to_mbedtls(&self) -> Result<mbedtls::alloc::List<MbedCert>, CryptoError> {
        Certificate::mbedtls_list(&self.certs)
    }
}

/// Fails with [`CryptoError::NameMismatch`] unless `cert` names `expected_name`.
pub(crate) fn check_name(cert: &Certificate, expected_name: &str) -> Result<(), CryptoError> {
    if cert.matches_name(expected_name) {
        Ok(())
    } else {
        Err(CryptoError::NameMismatch {
            subject: cert.subject().to_string(),
            expected: expected_name.to_string(),
        })
    }
}

/// Replaces mbedtls' system-clock validity verdict on `crt` with one at `at`: clears the
/// expired/future flags, sets them again from `at`, and returns a note saying why if so.
/// Call it from every mbedtls verify callback (chain verification here, handshakes in `dtls/`).
pub(crate) fn apply_time_policy(
    crt: &MbedCert,
    at: UtcTime,
    flags: &mut VerifyError,
) -> Option<String> {
    flags.remove(VerifyError::CERT_EXPIRED | VerifyError::CERT_FUTURE);
    let not_before = crt.not_before().ok().and_then(|t| utc_from_x509(t).ok());
    let not_after = crt.not_after().ok().and_then(|t| utc_from_x509(t).ok());
    let (Some(nb), Some(na)) = (not_before, not_after) else {
        flags.insert(VerifyError::CERT_OTHER);
        return Some("unreadable validity dates".into());
    };
    let t = at.unix_seconds();
    if t < nb.unix_seconds() {
        flags.insert(VerifyError::CERT_FUTURE);
        Some(format!(
            "not valid before {} (checked at {})",
            fmt_utc(nb),
            fmt_utc(at)
        ))
    } else if t > na.unix_seconds() {
        flags.insert(VerifyError::CERT_EXPIRED);
        Some(format!(
            "expired at {} (checked at {})",
            fmt_utc(na),
            fmt_utc(at)
        ))
    } else {
        None
    }
}

fn push_note(notes: &Mutex<Vec<String>>, crt: &MbedCert, depth: i32, note: String) {
    let subject = crt.subject().unwrap_or_else(|_| "?".into());
    if let Ok(mut n) = notes.lock() {
        n.push(format!("{subject} (depth {depth}): {note}"));
    }
}

/// The leaf, then each issuer found among `rest` by name, then whatever is left. mbedtls
/// looks for a parent only after the child in the list, so order matters to it.
fn order_chain<'a>(leaf: &'a Certificate, rest: &'a [Certificate]) -> Vec<&'a Certificate> {
    let mut ordered = vec![leaf];
    let mut pool: Vec<&Certificate> = rest.iter().collect();
    let mut current = leaf;
    while current.subject_raw() != current.issuer_raw() {
        let Some(i) = pool
            .iter()
            .position(|c| c.subject_raw() == current.issuer_raw())
        else {
            break;
        };
        current = pool.remove(i);
        ordered.push(current);
    }
    ordered.extend(pool);
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::*;
    use crate::crypto::{
        CertificateIssuer, CertificateProfile, CertificateTemplate, Drbg, KeyPair,
    };

    fn at(s: i64) -> UtcTime {
        UtcTime::from_unix_seconds(s)
    }

    #[test]
    fn a_leaf_issued_by_a_trusted_ca_verifies_within_its_validity() {
        let mut rng = Drbg::from_seed(20);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = pki.issue(
            &key,
            "CN=dev1",
            at(T0),
            at(T0 + DAY),
            CertificateProfile::Client,
            &mut rng,
        );
        let store = TrustStore::from_bytes(pki.ca.to_pem().as_bytes()).unwrap();

        store
            .verify_chain(std::slice::from_ref(&leaf), at(T0))
            .unwrap();
        store
            .verify_chain(std::slice::from_ref(&leaf), at(T0 + DAY))
            .unwrap();
        // The trust anchor may be sent along too.
        store
            .verify_chain(&[leaf.clone(), pki.ca.clone()], at(T0 + 60))
            .unwrap();
        store
            .verify_chain_for_name(std::slice::from_ref(&leaf), at(T0), "dev1")
            .unwrap();
        assert!(matches!(
            store.verify_chain_for_name(&[leaf], at(T0), "dev2"),
            Err(CryptoError::NameMismatch { .. })
        ));
    }

    #[test]
    fn time_is_the_passed_time_not_the_system_clock() {
        let mut rng = Drbg::from_seed(21);
        // Long ago: mbedtls on its own would call all of this expired.
        let pki = TestPki::with_validity(&mut rng, at(1_000_000_000), at(1_100_000_000));
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = pki.issue(
            &key,
            "CN=old",
            at(1_000_000_000),
            at(1_000_086_400),
            CertificateProfile::Client,
            &mut rng,
        );
        let store = TrustStore::from_bytes(pki.ca.der()).unwrap();
        store
            .verify_chain(std::slice::from_ref(&leaf), at(1_000_000_100))
            .unwrap();

        let expired = store
            .verify_chain(std::slice::from_ref(&leaf), at(1_000_086_401))
            .unwrap_err();
        let CryptoError::ChainRejected { reason } = expired else {
            panic!("{expired:?}")
        };
        assert!(
            reason.contains("CN=old (depth 0): expired at 2001-09-10T01:46:40Z"),
            "{reason}"
        );

        let early = store.verify_chain(&[leaf], at(999_999_999)).unwrap_err();
        let CryptoError::ChainRejected { reason } = early else {
            panic!("{early:?}")
        };
        assert!(reason.contains("not valid before"), "{reason}");
        // Both the leaf and the CA are not yet valid.
        assert!(reason.contains("depth 1"), "{reason}");
    }

    #[test]
    fn an_expired_ca_fails_even_when_the_leaf_is_valid() {
        let mut rng = Drbg::from_seed(22);
        let pki = TestPki::with_validity(&mut rng, at(T0), at(T0 + DAY));
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = pki.issue(
            &key,
            "CN=dev",
            at(T0),
            at(T0 + 10 * DAY),
            CertificateProfile::Client,
            &mut rng,
        );
        let store = TrustStore::from_bytes(pki.ca.der()).unwrap();
        store
            .verify_chain(std::slice::from_ref(&leaf), at(T0 + 100))
            .unwrap();
        let err = store.verify_chain(&[leaf], at(T0 + 2 * DAY)).unwrap_err();
        assert!(
            format!("{err}").contains("CN=Estuary Test CA (depth 1): expired"),
            "{err}"
        );
    }

    #[test]
    fn a_leaf_from_another_ca_is_rejected() {
        let mut rng = Drbg::from_seed(23);
        let trusted = TestPki::new(&mut rng);
        let other = TestPki::new(&mut rng); // same name, different key
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = other.client(&key, "CN=dev", &mut rng);
        let store = TrustStore::from_bytes(trusted.ca.der()).unwrap();
        let err = store
            .verify_chain(std::slice::from_ref(&leaf), at(T0 + 100))
            .unwrap_err();
        let CryptoError::ChainRejected { reason } = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.contains("not correctly signed by the trusted CA"),
            "{reason}"
        );
        // Sending the other CA along does not help: it is not trusted.
        assert!(store
            .verify_chain(&[leaf, other.ca.clone()], at(T0 + 100))
            .is_err());
        assert_eq!(
            TrustStore::new().verify_chain(std::slice::from_ref(&other.ca), at(T0)),
            Err(CryptoError::NoTrustAnchors)
        );
        assert!(store.verify_chain(&[], at(T0)).is_err());
    }

    #[test]
    fn intermediates_are_found_in_any_order() {
        let mut rng = Drbg::from_seed(24);
        let root = TestPki::new(&mut rng);
        let mid_key = KeyPair::generate(&mut rng).unwrap();
        let mid_cert = root.issue(
            &mid_key,
            "CN=Estuary Intermediate",
            at(T0),
            at(T0 + 365 * DAY),
            CertificateProfile::Ca { path_len: Some(0) },
            &mut rng,
        );
        let mid = CertificateIssuer::new(mid_key, mid_cert.clone()).unwrap();
        let key = KeyPair::generate(&mut rng).unwrap();
        let template = CertificateTemplate {
            subject: "CN=dev9".into(),
            serial: vec![9],
            not_before: at(T0),
            not_after: at(T0 + DAY),
            profile: CertificateProfile::Client,
        };
        let leaf = mid
            .issue(key.public_key_der(), &template, &mut rng)
            .unwrap();
        let store = TrustStore::from_bytes(root.ca.der()).unwrap();
        store
            .verify_chain(&[leaf.clone(), mid_cert.clone()], at(T0 + 1))
            .unwrap();
        store
            .verify_chain(
                &[leaf.clone(), root.ca.clone(), mid_cert.clone()],
                at(T0 + 1),
            )
            .unwrap();
        // Without the intermediate the leaf does not chain.
        assert!(store
            .verify_chain(std::slice::from_ref(&leaf), at(T0 + 1))
            .is_err());
        // The intermediate itself is checked against the time too.
        let mut store2 = store.clone();
        store2.add(mid_cert.clone());
        store2.verify_chain(&[leaf], at(T0 + 1)).unwrap();
    }

    #[test]
    fn a_pinned_self_signed_server_certificate_verifies() {
        let mut rng = Drbg::from_seed(26);
        let key = KeyPair::generate(&mut rng).unwrap();
        let template = CertificateTemplate {
            subject: "CN=lwm2m.example".into(),
            serial: vec![7],
            not_before: at(T0),
            not_after: at(T0 + DAY),
            profile: CertificateProfile::Server {
                dns_names: vec!["lwm2m.example".into()],
                ip_addresses: vec![],
            },
        };
        let cert = CertificateIssuer::self_signed(&key, &template, &mut rng).unwrap();
        let store = TrustStore::from_bytes(cert.to_pem().as_bytes()).unwrap();
        store
            .verify_chain_for_name(std::slice::from_ref(&cert), at(T0 + 5), "lwm2m.example")
            .unwrap();
        assert!(store
            .verify_chain(std::slice::from_ref(&cert), at(T0 + 2 * DAY))
            .is_err());
        // Not trusted when it is not in the store.
        let other = TestPki::new(&mut rng);
        let store = TrustStore::from_bytes(other.ca.der()).unwrap();
        assert!(store.verify_chain(&[cert], at(T0 + 5)).is_err());
    }

    #[test]
    fn store_management() {
        let mut rng = Drbg::from_seed(25);
        let a = TestPki::new(&mut rng);
        let b = TestPki::new(&mut rng);
        let mut store = TrustStore::new();
        assert!(store.is_empty());
        let bundle = format!("{}{}", a.ca.to_pem(), b.ca.to_pem());
        assert_eq!(store.add_pem(bundle.as_bytes()).unwrap(), 2);
        assert_eq!(store.add_pem(bundle.as_bytes()).unwrap(), 0);
        assert_eq!(store.len(), 2);
        assert!(store.contains(&a.ca));
        assert!(store.remove(&a.ca));
        assert!(!store.remove(&a.ca));
        assert_eq!(store.certificates(), std::slice::from_ref(&b.ca));
        store.add_der(a.ca.der()).unwrap();
        assert_eq!(store.len(), 2);
        // A bundle with one bad certificate adds nothing.
        let broken = format!(
            "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            a.ca.to_pem()
        );
        let mut empty = TrustStore::new();
        assert!(empty.add_pem(broken.as_bytes()).is_err());
        assert!(empty.is_empty());
    }

    // Made with OpenSSL 3.0 (`openssl ca`): an EC P-256 CA with keyCertSign + cRLSign, two
    // server certificates for lwm2m.example valid 2020..2120 (serials 0x1001 and 0x1002), and
    // a CRL from that CA revoking 0x1001 (thisUpdate 2026-11-23, nextUpdate 2126).
    const CRL_CA: &str = "\
-----BEGIN CERTIFICATE-----
MIIBczCCARigAwIBAgIUQmG9SOmx/bSnstl91ox/PuScc40wCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLQ1JMIFRlc3QgQ0EwIBcNMjYxMTIzMTEzMDQ2WhgPMjEyNjEw
MzAxMTMwNDZaMBYxFDASBgNVBAMMC0NSTCBUZXN0IENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAErXIR0oxcuReZIMh2xbMNu53dkDJsw9oIlDQyMXiaxe+LoWaO
FDuNeMsIPmm4ZfQfbuReVrZpp6aPwds2meaE0aNCMEAwDwYDVR0TAQH/BAUwAwEB
/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFIMNek3lyGiXkRPjASsLLwMTHiLM
MAoGCCqGSM49BAMCA0kAMEYCIQDLeApP1uVmZdB+kkykWXfgcTFmHD2E1HpOByH/
J1X2MAIhAP3UI4PIODgAGdb5wtWfI6VaT4xyxg9ASIPG9u8aVR1I
-----END CERTIFICATE-----
";
    const CRL_GOOD: &str = "\
-----BEGIN CERTIFICATE-----
MIIBrjCCAVSgAwIBAgICEAIwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLQ1JMIFRl
c3QgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBgxFjAUBgNV
BAMMDWx3bTJtLmV4YW1wbGUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATjWoak
ykGyD0ImffTQpnqyorH6wlw6dcGPKFI8SDJddfvUK/QsC1aHaBmSnsy1zLTRg5My
vTw7DSJdYio4nIMqo4GNMIGKMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMG
A1UdJQQMMAoGCCsGAQUFBwMBMBgGA1UdEQQRMA+CDWx3bTJtLmV4YW1wbGUwHwYD
VR0jBBgwFoAUgw16TeXIaJeRE+MBKwsvAxMeIswwHQYDVR0OBBYEFCE9TuPY3H0m
N/Ok/bq4HM+LUdWgMAoGCCqGSM49BAMCA0gAMEUCIAt+TZ3zk/h92WokP33QE7N7
WD0xkeQvEBEVE0fVv09cAiEAgLGo7mEvN0M7CFuo+aXKo9adM+6rnzOsV5VVg+aB
b6s=
-----END CERTIFICATE-----
";
    const CRL_REVOKED: &str = "\
-----BEGIN CERTIFICATE-----
MIIBrjCCAVSgAwIBAgICEAEwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLQ1JMIFRl
c3QgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBgxFjAUBgNV
BAMMDWx3bTJtLmV4YW1wbGUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQOv2L6
SvPuUHAEeifFkAt+Glur0d+y10v6YVHJyCx0j0vKMezqlUQt1dbeu7P8eMzPmUKV
fny4StbpzcNML9XXo4GNMIGKMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMG
A1UdJQQMMAoGCCsGAQUFBwMBMBgGA1UdEQQRMA+CDWx3bTJtLmV4YW1wbGUwHwYD
VR0jBBgwFoAUgw16TeXIaJeRE+MBKwsvAxMeIswwHQYDVR0OBBYEFPbSCQNZJE3A
1vG+LaBX+VJNBL02MAoGCCqGSM49BAMCA0gAMEUCIAN4rsHFmFCCps24os9hwORA
5+pCp1WKp7CuYg9o+zLhAiEAtf+BeRxgFJoA2dH8zS+JWnBmyQ8Na+rYTqox8HU5
evQ=
-----END CERTIFICATE-----
";
    const CRL: &str = "\
-----BEGIN X509 CRL-----
MIHEMGwCAQEwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLQ1JMIFRlc3QgQ0EXDTI2
MTEyMzExMzA0NloYDzIxMjYxMDMwMTEzMDQ2WjAjMCECAhABFw0yNjExMjMxMTMw
NDZaMAwwCgYDVR0VBAMKAQEwCgYIKoZIzj0EAwIDSAAwRQIhAOc5JAqJ+IfvUxTO
miQO+fipzdhw6kKiphNwS99DuyZaAiB0tKFNgStb02paB1MbHKxN4wNeUMhwvFjY
4a0t3omC8A==
-----END X509 CRL-----
";

    #[test]
    fn a_crl_from_the_ca_revokes_the_certificate_it_lists() {
        let good = Certificate::from_pem(CRL_GOOD.as_bytes()).unwrap();
        let revoked = Certificate::from_pem(CRL_REVOKED.as_bytes()).unwrap();
        // A time the whole fixture is valid at (the CA starts on 2026-11-23).
        let when = at(1_798_761_600); // 2027-01-01
        let mut store = TrustStore::from_bytes(CRL_CA.as_bytes()).unwrap();
        for leaf in [&good, &revoked] {
            store
                .verify_chain_for_name(std::slice::from_ref(leaf), when, "lwm2m.example")
                .unwrap();
        }
        assert_eq!(store.add_crl_bytes(CRL.as_bytes()).unwrap(), 1);
        assert_eq!(store.crl_count(), 1);
        store
            .verify_chain_for_name(std::slice::from_ref(&good), when, "lwm2m.example")
            .unwrap();
        let err = store
            .verify_chain(std::slice::from_ref(&revoked), when)
            .unwrap_err();
        let CryptoError::ChainRejected { reason } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.contains("revoked"), "{reason}");
        // The CRL's own dates are not judged by the system clock: long after its nextUpdate
        // (2126) the revocation still holds, and the good certificate is unaffected by it
        // until the certificate itself expires.
        assert!(store
            .verify_chain(std::slice::from_ref(&revoked), at(4_000_000_000))
            .is_err());
        store
            .verify_chain(std::slice::from_ref(&good), at(4_000_000_000))
            .unwrap();
    }

    #[test]
    fn a_store_keeping_only_the_crls_still_revokes_under_a_new_anchor() {
        let revoked = Certificate::from_pem(CRL_REVOKED.as_bytes()).unwrap();
        let ca = Certificate::from_pem(CRL_CA.as_bytes()).unwrap();
        let mut store = TrustStore::from_bytes(CRL_CA.as_bytes()).unwrap();
        store.add_crl_bytes(CRL.as_bytes()).unwrap();
        let mut pinned = store.crls_only();
        assert!(pinned.is_empty());
        assert_eq!(pinned.crl_count(), 1);
        pinned.add(ca);
        let err = pinned
            .verify_chain(std::slice::from_ref(&revoked), at(1_798_761_600))
            .unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }

    #[test]
    fn crls_are_parsed_when_added_and_kept_without_duplicates() {
        let pem_blocks = pem::decode_all(CRL.as_bytes()).unwrap();
        let der = pem_blocks[0].der.clone();
        let mut store = TrustStore::new();
        assert_eq!(store.add_crl_bytes(&der).unwrap(), 1);
        assert_eq!(
            store.add_crl_bytes(CRL.as_bytes()).unwrap(),
            0,
            "same CRL as PEM"
        );
        let two = format!("{CRL}{CRL}");
        assert_eq!(store.add_crl_bytes(two.as_bytes()).unwrap(), 0);
        // Junk, a certificate instead of a CRL, and a truncated CRL add nothing.
        let mut truncated = der.clone();
        truncated.truncate(der.len() - 10);
        for bad in [&b"junk"[..], CRL_CA.as_bytes(), &truncated] {
            let mut s = TrustStore::new();
            assert!(s.add_crl_bytes(bad).is_err());
            assert_eq!(s.crl_count(), 0);
        }
        assert_eq!(store.crl_count(), 1);
        assert!(store.to_mbedtls_crl().unwrap().is_some());
        assert!(TrustStore::new().to_mbedtls_crl().unwrap().is_none());
    }
}
