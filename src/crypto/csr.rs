//! [`Csr`]: PKCS#10 certificate signing requests (RFC 2986) — built by the device for EST
//! `/sen` and `/sren`, and parsed with their signature checked by the test server's EST CA.
//!
//! mbedtls writes requests; reading uses mbedtls for the subject and our DER walker for the
//! signed part, since mbedtls neither exposes it nor checks a request's signature.
//! Requested extensions (attributes) are neither written nor read: the issuer decides them.

use super::der::{self, oid};
use super::key::{parse_public_key, verify_with};
use super::{cert::common_name, mbed, CryptoError, Drbg, KeyPair};

use mbedtls::hash::Type as MdType;

/// A parsed certificate signing request whose signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    der: Vec<u8>,
    subject: String,
    common_name: Option<String>,
    public_key_der: Vec<u8>,
}

impl Csr {
    /// A DER PKCS#10 request for `subject` (e.g. `"CN=dev1"`, or `"CN=dev1, O=Acme"`) with
    /// `key`'s public key, signed with `key` (ECDSA with SHA-256 for P-256).
    pub fn build(key: &KeyPair, subject: &str, rng: &mut Drbg) -> Result<Vec<u8>, CryptoError> {
        if subject.trim().is_empty() || subject.contains('\0') {
            return Err(CryptoError::InvalidArgument(format!(
                "CSR subject {subject:?}"
            )));
        }
        let mut pk = key.to_mbedtls()?;
        let mut builder = mbedtls::x509::csr::Builder::new();
        builder
            .subject(subject)
            .map_err(mbed("setting the CSR subject"))?
            .key(&mut pk)
            .signature_hash(key.signature_hash());
        builder
            .write_der_vec(rng.mbedtls())
            .map_err(mbed("writing a CSR"))
    }

    /// Parses a DER request and checks its self-signature; trailing bytes are an error.
    pub fn parse(der: &[u8]) -> Result<Self, CryptoError> {
        let signed = SignedRequest::walk(der).map_err(|e| e.ctx("CSR"))?;
        let parsed = mbedtls::x509::Csr::from_der(der).map_err(mbed("parsing a CSR"))?;
        let subject = parsed.subject().map_err(mbed("reading the CSR subject"))?;
        let common_name = common_name(signed.subject).map_err(|e| e.ctx("CSR subject"))?;
        let md = signature_hash(signed.algorithm)?;
        let mut pk = parse_public_key(signed.spki)?;
        verify_with(&mut pk, md, signed.info, signed.signature)?;
        let public_key_der = pk
            .write_public_der_vec()
            .map_err(mbed("writing the CSR's public key"))?;
        Ok(Csr {
            der: der.to_vec(),
            subject,
            common_name,
            public_key_der,
        })
    }

    /// The request's DER encoding, as parsed.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The requested subject as text, e.g. `"CN=dev1"`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The requested subject's commonName (the EST client's endpoint name).
    pub fn subject_common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The requester's public key as SubjectPublicKeyInfo DER (to issue a certificate for).
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }
}

/// `CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm,
/// signature BIT STRING }`, with the pieces a signature check needs.
struct SignedRequest<'a> {
    /// The whole CertificationRequestInfo element: what the signature covers.
    info: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
    algorithm: &'a [u8],
    signature: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    fn walk(der: &'a [u8]) -> der::DerResult<Self> {
        let mut outer = der::single(der, der::SEQUENCE)?.reader();
        let info = outer.expect(der::SEQUENCE)?;
        let mut alg = outer.expect(der::SEQUENCE)?.reader();
        let signature = outer.expect(der::BIT_STRING)?;
        outer.finish()?;

        let mut fields = info.reader();
        if fields.expect(der::INTEGER)?.value != [0] {
            return Err(der::DerError("unsupported CSR version"));
        }
        let subject = fields.expect(der::SEQUENCE)?.raw;
        let spki = fields.expect(der::SEQUENCE)?.raw;
        fields.expect(der::context(0))?; // attributes
        fields.finish()?;

        Ok(SignedRequest {
            info: info.raw,
            subject,
            spki,
            algorithm: alg.expect(der::OID)?.value,
            signature: der::bit_string_bytes(&signature)?,
        })
    }
}

fn signature_hash(algorithm: &[u8]) -> Result<MdType, CryptoError> {
    Ok(match algorithm {
        oid::ECDSA_SHA256 | oid::RSA_SHA256 => MdType::Sha256,
        oid::ECDSA_SHA384 | oid::RSA_SHA384 => MdType::Sha384,
        oid::ECDSA_SHA512 | oid::RSA_SHA512 => MdType::Sha512,
        _ => {
            return Err(CryptoError::BadSignature(
                "unsupported CSR signature algorithm".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::{openssl, openssl_with_stderr, scratch_dir};

    #[test]
    fn build_then_parse_round_trips() {
        let mut rng = Drbg::from_seed(30);
        let key = KeyPair::generate(&mut rng).unwrap();
        let der = Csr::build(&key, "CN=urn:imei:123456789012345, O=Estuary", &mut rng).unwrap();
        let csr = Csr::parse(&der).unwrap();
        assert_eq!(csr.subject(), "CN=urn:imei:123456789012345, O=Estuary");
        assert_eq!(csr.subject_common_name(), Some("urn:imei:123456789012345"));
        assert_eq!(csr.public_key_der(), key.public_key_der());
        assert_eq!(csr.der(), &der[..]);
        // Deterministic with a seeded generator.
        let mut rng2 = Drbg::from_seed(30);
        let key2 = KeyPair::generate(&mut rng2).unwrap();
        assert_eq!(
            Csr::build(&key2, "CN=urn:imei:123456789012345, O=Estuary", &mut rng2).unwrap(),
            der
        );
    }

    #[test]
    fn openssl_verifies_our_csr() {
        let mut rng = Drbg::from_seed(31);
        let key = KeyPair::generate(&mut rng).unwrap();
        let der = Csr::build(&key, "CN=dev1", &mut rng).unwrap();
        let dir = scratch_dir("csr-verify");
        let good = dir.join("req.der");
        std::fs::write(&good, &der).unwrap();
        let verify = |path: &std::path::Path| {
            openssl_with_stderr(&[
                "req",
                "-verify",
                "-noout",
                "-in",
                path.to_str().unwrap(),
                "-inform",
                "DER",
            ])
            .1
        };
        let verdict = verify(&good);
        assert!(verdict.contains("verify OK"), "{verdict}");
        let subject = openssl(&[
            "req",
            "-noout",
            "-subject",
            "-in",
            good.to_str().unwrap(),
            "-inform",
            "DER",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&subject).trim(),
            "subject=CN = dev1"
        );

        // The check above means something: OpenSSL does notice a tampered request.
        let mut tampered = der.clone();
        let pos = der.windows(4).position(|w| w == b"dev1").unwrap() + 3;
        tampered[pos] = b'2';
        let bad = dir.join("bad.der");
        std::fs::write(&bad, &tampered).unwrap();
        assert!(!verify(&bad).contains("verify OK"));
    }

    #[test]
    fn parses_a_csr_openssl_made() {
        let dir = scratch_dir("csr-openssl");
        let key = dir.join("k.pem");
        let req = dir.join("r.der");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key.to_str().unwrap(),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=from-openssl/O=X",
            "-outform",
            "DER",
            "-out",
            req.to_str().unwrap(),
        ]);
        let csr = Csr::parse(&std::fs::read(&req).unwrap()).unwrap();
        assert_eq!(csr.subject_common_name(), Some("from-openssl"));
        let kp = KeyPair::from_pem(&std::fs::read(&key).unwrap()).unwrap();
        assert_eq!(csr.public_key_der(), kp.public_key_der());
    }

    #[test]
    fn tampered_truncated_and_garbage_requests_are_rejected() {
        let mut rng = Drbg::from_seed(32);
        let key = KeyPair::generate(&mut rng).unwrap();
        let der = Csr::build(&key, "CN=dev1", &mut rng).unwrap();
        for n in 0..der.len() {
            assert!(Csr::parse(&der[..n]).is_err(), "truncated at {n}");
        }
        // Change the subject's last letter: still well-formed, but the signature fails.
        let pos = der.windows(4).position(|w| w == b"dev1").unwrap() + 3;
        let mut tampered = der.clone();
        tampered[pos] = b'2';
        assert!(matches!(
            Csr::parse(&tampered),
            Err(CryptoError::BadSignature(_))
        ));
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            assert!(Csr::parse(&bad).is_err(), "bit flip at {i} accepted");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(Csr::parse(&trailing).is_err());
        assert!(Csr::parse(b"").is_err());
        assert!(Csr::build(&key, "", &mut rng).is_err());
        assert!(Csr::build(&key, "CN=a\0b", &mut rng).is_err());
        assert!(Csr::build(&key, "XX=nonsense", &mut rng).is_err());
    }
}
