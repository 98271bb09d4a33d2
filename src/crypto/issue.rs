//! [`CertificateIssuer`]: a certificate authority for the test server — self-signed root CAs,
//! and certificates it signs for a public key (from a parsed CSR): EST client certificates,
//! DTLS server certificates, intermediate CAs.
//!
//! mbedtls' certificate writer does the encoding and signing; we add the extensions it cannot
//! write (basicConstraints without a path length limit, extendedKeyUsage, subjectAltName, key
//! identifiers) as raw DER. What a profile contains:
//!
//! | profile | basicConstraints | keyUsage | extKeyUsage | subjectAltName |
//! |---|---|---|---|---|
//! | `Ca` | CA:true (critical) | keyCertSign, cRLSign, digitalSignature | – | – |
//! | `Client` | CA:false (critical) | digitalSignature, keyAgreement | clientAuth | – |
//! | `Server` | CA:false (critical) | digitalSignature, keyAgreement | serverAuth | DNS / IP |
//!
//! keyAgreement is there for the static-ECDH cipher suites some LwM2M servers still offer; the
//! ECDHE-ECDSA suites need only digitalSignature. The issuer's name is written from its
//! certificate's subject text, so names whose values contain commas are not supported.

use core::net::IpAddr;

use mbedtls::hash::Type as MdType;
use mbedtls::x509::KeyUsage;

use super::der::{self, oid};
use super::key::{digest, parse_public_key};
use super::{mbed, x509_from_utc, Certificate, CryptoError, Drbg, KeyPair};
use crate::time::UtcTime;

/// What kind of certificate to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateProfile {
    /// A CA certificate; `path_len` limits how many intermediate CAs may follow it.
    Ca {
        /// The pathLenConstraint; `None` for no limit.
        path_len: Option<u32>,
    },
    /// A TLS/DTLS client certificate (an EST-enrolled device).
    Client,
    /// A TLS/DTLS server certificate, named by subjectAltName DNS names and IP addresses
    /// (clients that check names look there first, and only at the CN when there are none).
    Server {
        /// subjectAltName dNSName entries (`*.example.com` wildcards allowed).
        dns_names: Vec<String>,
        /// subjectAltName iPAddress entries.
        ip_addresses: Vec<IpAddr>,
    },
}

/// The per-certificate choices of the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateTemplate {
    /// Subject as text: `"CN=dev1"`, `"CN=Estuary EST CA, O=Estuary"`.
    pub subject: String,
    /// Serial number, big-endian, 1 to 20 octets, not zero.
    pub serial: Vec<u8>,
    /// Start of validity (whole seconds; milliseconds are dropped).
    pub not_before: UtcTime,
    /// End of validity, the last valid second; not before `not_before`.
    pub not_after: UtcTime,
    /// The kind of certificate, which decides its extensions.
    pub profile: CertificateProfile,
}

impl CertificateTemplate {
    /// A random positive 16-byte serial number (RFC 5280 asks for unpredictable serials).
    pub fn random_serial(rng: &mut Drbg) -> Result<Vec<u8>, CryptoError> {
        let mut serial = vec![0u8; 16];
        rng.fill_bytes(&mut serial)?;
        // Top bit clear keeps the INTEGER positive without a padding byte; top byte non-zero
        // keeps the length fixed.
        serial[0] = (serial[0] & 0x7F) | 0x40;
        Ok(serial)
    }
}

/// A CA: its key and certificate.
#[derive(Clone, Debug)]
pub struct CertificateIssuer {
    key: KeyPair,
    cert: Certificate,
}

impl CertificateIssuer {
    /// An issuer from an existing CA certificate and its key (e.g. loaded from the test
    /// server's state directory). Fails if they do not belong together or the certificate is
    /// not a CA.
    pub fn new(key: KeyPair, cert: Certificate) -> Result<Self, CryptoError> {
        if !cert.matches_key(&key) {
            return Err(CryptoError::KeyMismatch(cert.subject().to_string()));
        }
        if !cert.is_ca() {
            return Err(CryptoError::InvalidArgument(format!(
                "{} is not a CA certificate",
                cert.subject()
            )));
        }
        Ok(CertificateIssuer { key, cert })
    }

    /// A new root CA: a self-signed CA certificate for `key` with a random serial.
    pub fn new_root_ca(
        key: KeyPair,
        subject: &str,
        not_before: UtcTime,
        not_after: UtcTime,
        rng: &mut Drbg,
    ) -> Result<Self, CryptoError> {
        let template = CertificateTemplate {
            subject: subject.to_string(),
            serial: CertificateTemplate::random_serial(rng)?,
            not_before,
            not_after,
            profile: CertificateProfile::Ca { path_len: None },
        };
        let cert = Self::self_signed(&key, &template, rng)?;
        Ok(CertificateIssuer { key, cert })
    }

    /// A self-signed certificate for `key` with any profile (a root CA, or a server
    /// certificate to pin).
    pub fn self_signed(
        key: &KeyPair,
        template: &CertificateTemplate,
        rng: &mut Drbg,
    ) -> Result<Certificate, CryptoError> {
        let own_id = key_identifier(key.public_key_der())?;
        write_certificate(
            key,
            &template.subject,
            Some(&own_id),
            key.public_key_der(),
            template,
            rng,
        )
    }

    /// Signs a certificate for `subject_public_key_der` (SubjectPublicKeyInfo, e.g.
    /// [`super::Csr::public_key_der`]) as the template says.
    pub fn issue(
        &self,
        subject_public_key_der: &[u8],
        template: &CertificateTemplate,
        rng: &mut Drbg,
    ) -> Result<Certificate, CryptoError> {
        write_certificate(
            &self.key,
            self.cert.subject(),
            self.cert.subject_key_id(),
            subject_public_key_der,
            template,
            rng,
        )
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The CA's key pair.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }
}

fn write_certificate(
    issuer_key: &KeyPair,
    issuer_name: &str,
    authority_key_id: Option<&[u8]>,
    subject_public_key_der: &[u8],
    t: &CertificateTemplate,
    rng: &mut Drbg,
) -> Result<Certificate, CryptoError> {
    check_template(t)?;
    let mut subject_pk = parse_public_key(subject_public_key_der)?;
    let mut issuer_pk = issuer_key.to_mbedtls()?;
    let not_before = x509_from_utc(t.not_before)?;
    let not_after = x509_from_utc(t.not_after)?;

    let (ca, usage, ext_usage) = match &t.profile {
        CertificateProfile::Ca { .. } => (
            true,
            KeyUsage::KEY_CERT_SIGN | KeyUsage::CRL_SIGN | KeyUsage::DIGITAL_SIGNATURE,
            None,
        ),
        CertificateProfile::Client => (
            false,
            KeyUsage::DIGITAL_SIGNATURE | KeyUsage::KEY_AGREEMENT,
            Some(oid::KP_CLIENT_AUTH),
        ),
        CertificateProfile::Server { .. } => (
            false,
            KeyUsage::DIGITAL_SIGNATURE | KeyUsage::KEY_AGREEMENT,
            Some(oid::KP_SERVER_AUTH),
        ),
    };
    let path_len = match t.profile {
        CertificateProfile::Ca { path_len } => path_len,
        _ => None,
    };
    let subject_key_id = key_identifier(subject_public_key_der)?;

    let mut b = mbedtls::x509::certificate::Builder::new();
    b.subject(&t.subject)
        .map_err(mbed("setting the certificate subject"))?
        .issuer(issuer_name)
        .map_err(mbed("setting the certificate issuer"))?
        .validity(not_before, not_after)
        .map_err(mbed("setting the validity"))?
        .serial(&t.serial)
        .map_err(mbed("setting the serial number"))?
        .key_usage(usage)
        .map_err(mbed("setting keyUsage"))?;
    b.subject_key(&mut subject_pk)
        .issuer_key(&mut issuer_pk)
        .signature_hash(issuer_key.signature_hash());

    // mbedtls' own basic_constraints() cannot say "no path length limit".
    b.extension(
        oid::BASIC_CONSTRAINTS,
        &basic_constraints(ca, path_len),
        true,
    )
    .map_err(mbed("adding basicConstraints"))?;
    b.extension(
        oid::SUBJECT_KEY_ID,
        &der::tlv(der::OCTET_STRING, &subject_key_id),
        false,
    )
    .map_err(mbed("adding subjectKeyIdentifier"))?;
    if let Some(id) = authority_key_id {
        let aki = der::sequence(&[&der::tlv(0x80, id)]);
        b.extension(oid::AUTHORITY_KEY_ID, &aki, false)
            .map_err(mbed("adding authorityKeyIdentifier"))?;
    }
    if let Some(purpose) = ext_usage {
        let eku = der::sequence(&[&der::tlv(der::OID, purpose)]);
        b.extension(oid::EXT_KEY_USAGE, &eku, false)
            .map_err(mbed("adding extKeyUsage"))?;
    }
    if let CertificateProfile::Server {
        dns_names,
        ip_addresses,
    } = &t.profile
    {
        if let Some(san) = subject_alt_name(dns_names, ip_addresses)? {
            b.extension(oid::SUBJECT_ALT_NAME, &san, false)
                .map_err(mbed("adding subjectAltName"))?;
        }
    }
    let der = b
        .write_der_vec(rng.mbedtls())
        .map_err(mbed("writing a certificate"))?;
    Certificate::from_der(&der)
}

fn check_template(t: &CertificateTemplate) -> Result<(), CryptoError> {
    let bad = |what: String| Err(CryptoError::InvalidArgument(what));
    if t.subject.trim().is_empty() || t.subject.contains('\0') {
        return bad(format!("certificate subject {:?}", t.subject));
    }
    if t.serial.is_empty() || t.serial.len() > 20 || t.serial.iter().all(|&b| b == 0) {
        return bad("serial number must be 1 to 20 octets and not zero".into());
    }
    if t.not_after < t.not_before {
        return bad("notAfter is before notBefore".into());
    }
    Ok(())
}

/// `BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }`
fn basic_constraints(ca: bool, path_len: Option<u32>) -> Vec<u8> {
    if !ca {
        // DER leaves out a BOOLEAN equal to its default.
        return der::sequence(&[]);
    }
    let mut parts = vec![der::tlv(der::BOOLEAN, &[0xFF])];
    if let Some(n) = path_len {
        parts.push(der::tlv(der::INTEGER, &unsigned_integer(n)));
    }
    der::sequence(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Minimal two's-complement contents of a non-negative INTEGER.
fn unsigned_integer(n: u32) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(3);
    let mut out = bytes[skip..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}

/// `GeneralNames` with `[2] dNSName` and `[7] iPAddress` entries, or `None` if both are empty.
fn subject_alt_name(dns: &[String], ips: &[IpAddr]) -> Result<Option<Vec<u8>>, CryptoError> {
    let mut names = Vec::new();
    for name in dns {
        if name.is_empty() || !name.is_ascii() || name.contains('\0') {
            return Err(CryptoError::InvalidArgument(format!("DNS name {name:?}")));
        }
        names.push(der::tlv(0x82, name.as_bytes()));
    }
    for ip in ips {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(der::tlv(0x87, &octets));
    }
    if names.is_empty() {
        return Ok(None);
    }
    Ok(Some(der::sequence(
        &names.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    )))
}

/// RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier(spki: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut r = der::single(spki, der::SEQUENCE)
        .map_err(|e| e.ctx("public key"))?
        .reader();
    let bits = r
        .expect(der::SEQUENCE)
        .and_then(|_| r.expect(der::BIT_STRING))
        .and_then(|b| der::bit_string_bytes(&b).map(<[u8]>::to_vec))
        .map_err(|e| e.ctx("public key"))?;
    digest(MdType::Sha1, &bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::*;
    use crate::crypto::{Csr, TrustStore};

    fn at(s: i64) -> UtcTime {
        UtcTime::from_unix_seconds(s)
    }

    #[test]
    fn openssl_verifies_a_leaf_we_issued() {
        let mut rng = Drbg::from_seed(40);
        let ca_key = KeyPair::generate(&mut rng).unwrap();
        // OpenSSL checks validity against the real clock: make it cover now for decades.
        let ca = CertificateIssuer::new_root_ca(
            ca_key,
            "CN=Estuary Test CA, O=Estuary",
            at(1_600_000_000),
            at(4_000_000_000),
            &mut rng,
        )
        .unwrap();
        let device_key = KeyPair::generate(&mut rng).unwrap();
        let csr = Csr::parse(&Csr::build(&device_key, "CN=dev1", &mut rng).unwrap()).unwrap();
        let template = CertificateTemplate {
            subject: csr.subject().to_string(),
            serial: CertificateTemplate::random_serial(&mut rng).unwrap(),
            not_before: at(1_600_000_000),
            not_after: at(3_900_000_000),
            profile: CertificateProfile::Client,
        };
        let client = ca.issue(csr.public_key_der(), &template, &mut rng).unwrap();
        assert!(client.matches_key(&device_key));

        let server_key = KeyPair::generate(&mut rng).unwrap();
        let server = ca
            .issue(
                server_key.public_key_der(),
                &CertificateTemplate {
                    subject: "CN=localhost".into(),
                    serial: vec![0x42],
                    not_before: at(1_600_000_000),
                    not_after: at(3_900_000_000),
                    profile: CertificateProfile::Server {
                        dns_names: vec!["localhost".into()],
                        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                    },
                },
                &mut rng,
            )
            .unwrap();

        let dir = scratch_dir("issue-verify");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.certificate().to_pem()).unwrap();
        for (name, cert, purpose) in [
            ("client", &client, "sslclient"),
            ("server", &server, "sslserver"),
        ] {
            let leaf = dir.join(&format!("{name}.pem"));
            std::fs::write(&leaf, cert.to_pem()).unwrap();
            let out = openssl(&[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                p(&ca_pem),
                p(&leaf),
            ]);
            let out = String::from_utf8_lossy(&out);
            assert!(out.trim_end().ends_with(": OK"), "{out}");
        }
        // The plain command the brief names, too.
        let leaf = dir.join("client.pem");
        let out = openssl(&["verify", "-CAfile", p(&ca_pem), p(&leaf)]);
        assert!(String::from_utf8_lossy(&out).contains("OK"));

        // And OpenSSL sees the extensions we meant.
        let text = String::from_utf8_lossy(&openssl(&[
            "x509",
            "-noout",
            "-text",
            "-in",
            p(&dir.join("server.pem")),
        ]))
        .to_string();
        for expected in [
            "CA:FALSE",
            "Digital Signature, Key Agreement",
            "TLS Web Server Authentication",
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "Subject Key Identifier",
            "Authority Key Identifier",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let ca_text =
            String::from_utf8_lossy(&openssl(&["x509", "-noout", "-text", "-in", p(&ca_pem)]))
                .to_string();
        assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
        assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
    }

    #[test]
    fn issued_certificates_carry_the_template() {
        let mut rng = Drbg::from_seed(41);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let cert = pki.issue(
            &key,
            "CN=dev1",
            at(T0),
            at(T0 + 30 * DAY),
            CertificateProfile::Client,
            &mut rng,
        );
        assert_eq!(cert.subject(), "CN=dev1");
        assert_eq!(cert.issuer(), pki.ca.subject());
        assert_eq!(
            (cert.not_before(), cert.not_after()),
            (at(T0), at(T0 + 30 * DAY))
        );
        assert!(!cert.is_ca());
        assert!(cert.dns_names().is_empty());
        assert_eq!(cert.subject_key_id().map(<[u8]>::len), Some(20));
        TrustStore::from_bytes(pki.ca.der())
            .unwrap()
            .verify_chain(&[cert], at(T0 + DAY))
            .unwrap();
    }

    #[test]
    fn a_ca_with_path_length_zero_cannot_sign_another_ca() {
        let mut rng = Drbg::from_seed(42);
        let root_key = KeyPair::generate(&mut rng).unwrap();
        let root = CertificateIssuer::self_signed(
            &root_key,
            &CertificateTemplate {
                subject: "CN=Root".into(),
                serial: vec![1],
                not_before: at(T0),
                not_after: at(T0 + 365 * DAY),
                profile: CertificateProfile::Ca { path_len: Some(0) },
            },
            &mut rng,
        )
        .unwrap();
        let root = CertificateIssuer::new(root_key, root).unwrap();
        let mid_key = KeyPair::generate(&mut rng).unwrap();
        let mid_template = CertificateTemplate {
            subject: "CN=Mid".into(),
            serial: vec![2],
            not_before: at(T0),
            not_after: at(T0 + 365 * DAY),
            profile: CertificateProfile::Ca { path_len: None },
        };
        let mid_cert = root
            .issue(mid_key.public_key_der(), &mid_template, &mut rng)
            .unwrap();
        let mid = CertificateIssuer::new(mid_key, mid_cert.clone()).unwrap();
        let leaf_key = KeyPair::generate(&mut rng).unwrap();
        let leaf = mid
            .issue(
                leaf_key.public_key_der(),
                &CertificateTemplate {
                    subject: "CN=leaf".into(),
                    serial: vec![3],
                    not_before: at(T0),
                    not_after: at(T0 + DAY),
                    profile: CertificateProfile::Client,
                },
                &mut rng,
            )
            .unwrap();
        let store = TrustStore::from_bytes(root.certificate().der()).unwrap();
        assert!(store.verify_chain(&[leaf, mid_cert], at(T0 + 1)).is_err());
    }

    #[test]
    fn bad_templates_and_mismatched_issuers_are_refused() {
        let mut rng = Drbg::from_seed(43);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        let issuer = CertificateIssuer::new(pki.ca_key.clone(), pki.ca.clone()).unwrap();
        let good = CertificateTemplate {
            subject: "CN=x".into(),
            serial: vec![1],
            not_before: at(T0),
            not_after: at(T0 + 1),
            profile: CertificateProfile::Client,
        };
        issuer.issue(key.public_key_der(), &good, &mut rng).unwrap();
        for bad in [
            CertificateTemplate {
                subject: "".into(),
                ..good.clone()
            },
            CertificateTemplate {
                subject: "BOGUS=x".into(),
                ..good.clone()
            },
            CertificateTemplate {
                serial: vec![],
                ..good.clone()
            },
            CertificateTemplate {
                serial: vec![0, 0],
                ..good.clone()
            },
            CertificateTemplate {
                serial: vec![1; 21],
                ..good.clone()
            },
            CertificateTemplate {
                not_after: at(T0 - 1),
                ..good.clone()
            },
            CertificateTemplate {
                not_after: at(300_000_000_000),
                ..good.clone()
            },
            CertificateTemplate {
                profile: CertificateProfile::Server {
                    dns_names: vec!["".into()],
                    ip_addresses: vec![],
                },
                ..good.clone()
            },
        ] {
            assert!(
                issuer.issue(key.public_key_der(), &bad, &mut rng).is_err(),
                "{bad:?}"
            );
        }
        assert!(issuer.issue(b"\x30\x00", &good, &mut rng).is_err());
        assert!(matches!(
            CertificateIssuer::new(key.clone(), pki.ca.clone()),
            Err(CryptoError::KeyMismatch(_))
        ));
        let leaf = pki.client(&key, "CN=leaf", &mut rng);
        assert!(CertificateIssuer::new(key, leaf).is_err());
    }

    #[test]
    fn integer_and_constraint_encodings() {
        assert_eq!(unsigned_integer(0), vec![0]);
        assert_eq!(unsigned_integer(127), vec![127]);
        assert_eq!(unsigned_integer(128), vec![0, 128]);
        assert_eq!(unsigned_integer(0x0102), vec![1, 2]);
        assert_eq!(basic_constraints(false, Some(3)), vec![0x30, 0]);
        assert_eq!(basic_constraints(true, None), vec![0x30, 3, 1, 1, 0xFF]);
        assert_eq!(
            basic_constraints(true, Some(0)),
            vec![0x30, 6, 1, 1, 0xFF, 2, 1, 0]
        );
    }

    fn p(path: &std::path::Path) -> &str {
        path.to_str().unwrap()
    }
}
