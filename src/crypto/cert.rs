//! [`Certificate`]: one parsed X.509 certificate — its DER, and the fields the SDK and the
//! test server read (names, serial, validity, public key, CA flag, subjectAltName).
//!
//! mbedtls does the parsing (so what we accept is what a DTLS handshake accepts); our DER
//! walker reads what mbedtls does not expose. A `Certificate` is plain data, cheap to clone and
//! share between threads; chain verification lives in `trust.rs`, issuance in `issue.rs`.
//! Validity is judged against a time the caller passes, never the system clock.

use core::fmt;
use core::net::IpAddr;

use mbedtls::alloc::{Box as MbedtlsBox, List as MbedtlsList};
use mbedtls::x509::Certificate as MbedCert;

use super::der::{self, oid, Reader, Tlv};
use super::key::looks_like_pem;
use super::{fmt_utc, mbed, pem, utc_from_x509, CryptoError, KeyPair};
use crate::time::UtcTime;

/// A parsed X.509 certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    subject: String,
    issuer: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    common_name: Option<String>,
    serial: Vec<u8>,
    not_before: UtcTime,
    not_after: UtcTime,
    public_key_der: Vec<u8>,
    is_ca: bool,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    subject_key_id: Option<Vec<u8>>,
}

impl Certificate {
    /// Parses one DER certificate; trailing bytes are an error.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        let fields = TbsFields::walk(der).map_err(|e| e.ctx("certificate"))?;
        let mut parsed = MbedCert::from_der(der).map_err(mbed("parsing a certificate"))?;
        let subject = parsed.subject().map_err(mbed("reading the subject"))?;
        let issuer = parsed.issuer().map_err(mbed("reading the issuer"))?;
        let serial = parsed.serial_raw().map_err(mbed("reading the serial"))?;
        let not_before = utc_from_x509(parsed.not_before().map_err(mbed("reading notBefore"))?)?;
        let not_after = utc_from_x509(parsed.not_after().map_err(mbed("reading notAfter"))?)?;
        // Written by mbedtls, so it compares byte for byte with `KeyPair::public_key_der`.
        let public_key_der = parsed
            .public_key_mut()
            .write_public_der_vec()
            .map_err(mbed("writing the certificate's public key"))?;
        let common_name = common_name(fields.subject).map_err(|e| e.ctx("certificate subject"))?;
        let ext =
            Extensions::walk(fields.extensions).map_err(|e| e.ctx("certificate extensions"))?;
        Ok(Certificate {
            der: der.to_vec(),
            subject,
            issuer,
            subject_raw: fields.subject.to_vec(),
            issuer_raw: fields.issuer.to_vec(),
            common_name,
            serial,
            not_before,
            not_after,
            public_key_der,
            is_ca: ext.is_ca,
            dns_names: ext.dns_names,
            ip_addresses: ext.ip_addresses,
            subject_key_id: ext.subject_key_id,
        })
    }

    /// Parses a PEM text holding exactly one certificate (other kinds of block are ignored).
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, CryptoError> {
        let mut certs = Self::from_pem_bundle(pem_text)?;
        match certs.len() {
            1 => Ok(certs.remove(0)),
            n => Err(CryptoError::malformed(
                "PEM",
                format!("expected one certificate, found {n} (use from_pem_bundle)"),
            )),
        }
    }

    /// Parses every `CERTIFICATE` block in a PEM text, in order; at least one is required and
    /// one bad certificate fails the whole bundle.
    pub fn from_pem_bundle(pem_text: &[u8]) -> Result<Vec<Self>, CryptoError> {
        let certs = pem::decode_all(pem_text)?
            .iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| Self::from_der(&b.der))
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(CryptoError::malformed("PEM", "no CERTIFICATE block"));
        }
        Ok(certs)
    }

    /// Parses whatever a file or an EST response may hold: one DER certificate, a PEM bundle,
    /// or a PKCS#7 certs-only bundle (DER, or PEM labelled `PKCS7`).
    pub fn parse_any(bytes: &[u8]) -> Result<Vec<Self>, CryptoError> {
        if looks_like_pem(bytes) {
            let blocks = pem::decode_all(bytes)?;
            if let Some(p7) = blocks.iter().find(|b| b.label == "PKCS7") {
                return super::parse_certs_only(&p7.der);
            }
            return Self::from_pem_bundle(bytes);
        }
        match Self::from_der(bytes) {
            Ok(cert) => Ok(vec![cert]),
            Err(cert_err) => super::parse_certs_only(bytes).map_err(|_| cert_err),
        }
    }

    /// The certificate's DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as PEM (`-----BEGIN CERTIFICATE-----`).
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// The subject as text, e.g. `"CN=dev1, O=Estuary"`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer as text, e.g. `"CN=Estuary EST CA"`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The subject's (first) commonName, e.g. the LwM2M endpoint name.
    pub fn subject_common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The serial number's big-endian bytes.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The serial number in upper-case hex without separators, as `openssl x509 -serial`
    /// prints it.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02X}")).collect()
    }

    /// The start of the validity period.
    pub fn not_before(&self) -> UtcTime {
        self.not_before
    }

    /// The end of the validity period (the last valid second).
    pub fn not_after(&self) -> UtcTime {
        self.not_after
    }

    /// True if `at` lies within [notBefore, notAfter], both ends included (RFC 5280 4.1.2.5),
    /// compared in whole seconds as certificates state them.
    pub fn is_valid_at(&self, at: UtcTime) -> bool {
        let t = at.unix_seconds();
        self.not_before.unix_seconds() <= t && t <= self.not_after.unix_seconds()
    }

    /// The subject public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// True if this certificate is for `key`'s public key (the EST response check).
    pub fn matches_key(&self, key: &KeyPair) -> bool {
        self.public_key_der == key.public_key_der()
    }

    /// True if basicConstraints says this is a CA certificate.
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// The subjectAltName DNS names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The subjectAltName IP addresses.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// True if the certificate names `name`, a host name, IP address literal or endpoint name:
    /// RFC 6125 rules — an IP literal against subjectAltName IP addresses; otherwise the
    /// subjectAltName DNS names if there are any (case-insensitive, `*` as the whole leftmost
    /// label matches one label), and the subject commonName only if there are none.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.ip_addresses.contains(&ip);
        }
        if !self.dns_names.is_empty() {
            return self
                .dns_names
                .iter()
                .any(|pattern| dns_name_matches(pattern, name));
        }
        self.common_name
            .as_deref()
            .is_some_and(|cn| cn.eq_ignore_ascii_case(name))
    }

    /// The subjectKeyIdentifier, if the certificate has one.
    pub(crate) fn subject_key_id(&self) -> Option<&[u8]> {
        self.subject_key_id.as_deref()
    }

    pub(crate) fn subject_raw(&self) -> &[u8] {
        &self.subject_raw
    }

    pub(crate) fn issuer_raw(&self) -> &[u8] {
        &self.issuer_raw
    }

    /// A one-line description for logs: subject, serial and validity.
    pub fn summary(&self) -> String {
        format!(
            "{} serial={} notBefore={} notAfter={}",
            self.subject,
            self.serial_hex(),
            fmt_utc(self.not_before),
            fmt_utc(self.not_after)
        )
    }

    /// An mbedtls copy of this certificate, for `trust.rs` and `dtls/`.
    pub(crate) fn to_mbedtls(&self) -> Result<MbedtlsBox<MbedCert>, CryptoError> {
        MbedCert::from_der(&self.der).map_err(mbed("loading a certificate"))
    }

    /// An mbedtls certificate list in the given order (a chain or a set of trust anchors).
    pub(crate) fn mbedtls_list<'a>(
        certs: impl IntoIterator<Item = &'a Certificate>,
    ) -> Result<MbedtlsList<MbedCert>, CryptoError> {
        let mut list = MbedtlsList::new();
        for c in certs {
            list.push(c.to_mbedtls()?);
        }
        Ok(list)
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("serial", &self.serial_hex())
            .field("not_before", &fmt_utc(self.not_before))
            .field("not_after", &fmt_utc(self.not_after))
            .finish()
    }
}

fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        // The wildcard stands for exactly one non-empty label.
        return match name.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        };
    }
    pattern.eq_ignore_ascii_case(name)
}

/// The parts of a TBSCertificate we read ourselves.
struct TbsFields<'a> {
    issuer: &'a [u8],
    subject: &'a [u8],
    /// The contents of `[3] EXPLICIT Extensions`, empty if absent.
    extensions: &'a [u8],
}

impl<'a> TbsFields<'a> {
    fn walk(cert: &'a [u8]) -> der::DerResult<Self> {
        let mut outer = der::single(cert, der::SEQUENCE)?.reader();
        let mut tbs = outer.expect(der::SEQUENCE)?.reader();
        tbs.optional(der::context(0))?; // version
        tbs.expect(der::INTEGER)?; // serialNumber
        tbs.expect(der::SEQUENCE)?; // signature algorithm
        let issuer = tbs.expect(der::SEQUENCE)?.raw;
        tbs.expect(der::SEQUENCE)?; // validity
        let subject = tbs.expect(der::SEQUENCE)?.raw;
        tbs.expect(der::SEQUENCE)?; // subjectPublicKeyInfo
        tbs.optional(0x81)?; // issuerUniqueID
        tbs.optional(0x82)?; // subjectUniqueID
        let extensions = match tbs.optional(der::context(3))? {
            Some(t) => t.value,
            None => &[],
        };
        tbs.finish()?;
        Ok(TbsFields {
            issuer,
            subject,
            extensions,
        })
    }
}

/// The first commonName in a Name (`SEQUENCE OF SET OF AttributeTypeAndValue`).
pub(crate) fn common_name(name: &[u8]) -> der::DerResult<Option<String>> {
    let mut rdns = der::single(name, der::SEQUENCE)?.reader();
    while !rdns.is_empty() {
        let mut set = rdns.expect(der::SET)?.reader();
        while !set.is_empty() {
            let mut atv = set.expect(der::SEQUENCE)?.reader();
            let ty = atv.expect(der::OID)?;
            let value = atv.read()?;
            if ty.value == oid::COMMON_NAME {
                return der::directory_string(&value).map(Some);
            }
        }
    }
    Ok(None)
}

#[derive(Default)]
struct Extensions {
    is_ca: bool,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    subject_key_id: Option<Vec<u8>>,
}

impl Extensions {
    fn walk(explicit: &[u8]) -> der::DerResult<Self> {
        let mut out = Extensions::default();
        if explicit.is_empty() {
            return Ok(out);
        }
        let mut list = der::single(explicit, der::SEQUENCE)?.reader();
        while !list.is_empty() {
            let mut ext = list.expect(der::SEQUENCE)?.reader();
            let id = ext.expect(der::OID)?;
            ext.optional(der::BOOLEAN)?; // critical
            let value = ext.expect(der::OCTET_STRING)?;
            ext.finish()?;
            match id.value {
                oid::BASIC_CONSTRAINTS => out.is_ca = basic_constraints_ca(&value)?,
                oid::SUBJECT_ALT_NAME => out.read_san(&value)?,
                oid::SUBJECT_KEY_ID => {
                    out.subject_key_id =
                        Some(der::single(value.value, der::OCTET_STRING)?.value.to_vec())
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn read_san(&mut self, value: &Tlv<'_>) -> der::DerResult<()> {
        let mut names: Reader<'_> = der::single(value.value, der::SEQUENCE)?.reader();
        while !names.is_empty() {
            let name = names.read()?;
            match name.tag {
                // [2] dNSName IA5String
                0x82 => self.dns_names.push(
                    core::str::from_utf8(name.value)
                        .map_err(|_| der::DerError("non-ASCII dNSName"))?
                        .to_string(),
                ),
                // [7] iPAddress OCTET STRING
                0x87 => match name.value.len() {
                    4 => self.ip_addresses.push(IpAddr::from(
                        <[u8; 4]>::try_from(name.value)
                            .map_err(|_| der::DerError("bad iPAddress"))?,
                    )),
                    16 => self.ip_addresses.push(IpAddr::from(
                        <[u8; 16]>::try_from(name.value)
                            .map_err(|_| der::DerError("bad iPAddress"))?,
                    )),
                    _ => return Err(der::DerError("bad iPAddress length")),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

fn basic_constraints_ca(value: &Tlv<'_>) -> der::DerResult<bool> {
    let mut bc = der::single(value.value, der::SEQUENCE)?.reader();
    Ok(bc
        .optional(der::BOOLEAN)?
        .is_some_and(|b| b.value.first().is_some_and(|&v| v != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::*;
    use crate::crypto::{CertificateProfile, Drbg};

    #[test]
    fn reads_the_fields_of_an_issued_certificate() {
        let mut rng = Drbg::from_seed(10);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let nb = UtcTime::from_unix_seconds(T0);
        let na = UtcTime::from_unix_seconds(T0 + DAY);
        let cert = pki.issue(
            &key,
            "CN=dev1, O=Estuary",
            nb,
            na,
            CertificateProfile::Client,
            &mut rng,
        );

        assert_eq!(cert.subject(), "CN=dev1, O=Estuary");
        assert_eq!(cert.issuer(), "CN=Estuary Test CA");
        assert_eq!(cert.subject_common_name(), Some("dev1"));
        assert_eq!(cert.serial(), &[0x01, 0x02, 0x03]);
        assert_eq!(cert.serial_hex(), "010203");
        assert_eq!(cert.not_before(), nb);
        assert_eq!(cert.not_after(), na);
        assert!(!cert.is_ca());
        assert!(pki.ca.is_ca());
        assert!(cert.matches_key(&key));
        assert!(!cert.matches_key(&pki.ca_key));
        assert!(pki.ca.matches_key(&pki.ca_key));
        assert_eq!(cert.public_key_der(), key.public_key_der());
        assert!(cert
            .summary()
            .starts_with("CN=dev1, O=Estuary serial=010203 notBefore="));

        assert!(cert.is_valid_at(nb));
        assert!(cert.is_valid_at(na));
        assert!(cert.is_valid_at(UtcTime::from_unix_millis(na.unix_millis() + 999)));
        assert!(!cert.is_valid_at(UtcTime::from_unix_millis(nb.unix_millis() - 1)));
        assert!(!cert.is_valid_at(UtcTime::from_unix_seconds(T0 + DAY + 1)));
    }

    #[test]
    fn der_and_pem_round_trip_and_bundles_keep_order() {
        let mut rng = Drbg::from_seed(11);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let leaf = pki.client(&key, "CN=dev2", &mut rng);
        assert_eq!(Certificate::from_der(leaf.der()).unwrap(), leaf);
        assert_eq!(
            Certificate::from_pem(leaf.to_pem().as_bytes()).unwrap(),
            leaf
        );

        let bundle = format!("# chain\n{}{}", leaf.to_pem(), pki.ca.to_pem());
        let certs = Certificate::from_pem_bundle(bundle.as_bytes()).unwrap();
        assert_eq!(certs, vec![leaf.clone(), pki.ca.clone()]);
        assert!(Certificate::from_pem(bundle.as_bytes()).is_err());
        assert_eq!(Certificate::parse_any(bundle.as_bytes()).unwrap().len(), 2);
        assert_eq!(
            Certificate::parse_any(leaf.der()).unwrap(),
            vec![leaf.clone()]
        );
        let key_pem = key.to_pem();
        assert!(Certificate::from_pem_bundle(key_pem.expose()).is_err());
    }

    #[test]
    fn every_truncation_and_corruption_is_rejected_without_panic() {
        let mut rng = Drbg::from_seed(12);
        let pki = TestPki::new(&mut rng);
        let der = pki.ca.der().to_vec();
        for n in 0..der.len() {
            assert!(
                Certificate::from_der(&der[..n]).is_err(),
                "truncated at {n}"
            );
            assert!(
                Certificate::parse_any(&der[..n]).is_err(),
                "truncated at {n}"
            );
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(Certificate::from_der(&trailing).is_err());
        // Flip each byte: either rejected or (for bytes in values mbedtls does not check,
        // like the signature) parsed into something different. Never a panic.
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0xFF;
            if let Ok(c) = Certificate::from_der(&bad) {
                assert_ne!(c, pki.ca);
            }
        }
        for garbage in [&b""[..], b"\x30", b"\x30\x00", b"hello world", &[0xFF; 64]] {
            assert!(Certificate::from_der(garbage).is_err());
            assert!(Certificate::parse_any(garbage).is_err());
        }
    }

    #[test]
    fn names_match_san_first_then_common_name() {
        let mut rng = Drbg::from_seed(13);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let server = pki.issue(
            &key,
            "CN=ignored.example",
            UtcTime::from_unix_seconds(T0),
            UtcTime::from_unix_seconds(T0 + DAY),
            CertificateProfile::Server {
                dns_names: vec!["lwm2m.example.com".into(), "*.est.example".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            },
            &mut rng,
        );
        assert_eq!(server.dns_names(), &["lwm2m.example.com", "*.est.example"]);
        assert_eq!(server.ip_addresses().len(), 2);
        assert!(server.matches_name("LWM2M.example.com"));
        assert!(server.matches_name("lwm2m.example.com."));
        assert!(server.matches_name("a.est.example"));
        assert!(!server.matches_name("a.b.est.example"));
        assert!(!server.matches_name("est.example"));
        assert!(!server.matches_name("ignored.example"));
        assert!(server.matches_name("127.0.0.1"));
        assert!(server.matches_name("::1"));
        assert!(!server.matches_name("127.0.0.2"));

        let client = pki.client(&key, "CN=dev3", &mut rng);
        assert!(client.matches_name("dev3"));
        assert!(!client.matches_name("dev4"));
    }
}
