//! PKCS#7 / CMS certs-only bundles (RFC 5652 SignedData with no signers), the
//! `application/pkcs7-mime; smime-type=certs-only` payload of EST (Content-Format 281), as
//! `openssl crl2pkcs7 -nocrl` makes them.
//!
//! Parsing walks the structure with our bounds-checked DER reader and hands each certificate
//! to [`Certificate::from_der`]; signers and CRLs, if present, are ignored, since a certs-only
//! bundle's trust comes from the channel and the chain, not from a signature. BER
//! indefinite-length encodings are not accepted (EST requires DER).

use super::der::{self, oid};
use super::{Certificate, CryptoError};

/// The certificates of a DER certs-only bundle, in the order they appear. A bundle with no
/// certificate, or with one that does not parse, is an error.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<Certificate>, CryptoError> {
    let raw = walk(der).map_err(|e| e.ctx("PKCS#7"))?;
    if raw.is_empty() {
        return Err(CryptoError::malformed("PKCS#7", "no certificates"));
    }
    raw.into_iter().map(Certificate::from_der).collect()
}

/// A DER certs-only bundle holding `certs` in the given order.
pub fn build_certs_only(certs: &[Certificate]) -> Vec<u8> {
    let empty_set = der::tlv(der::SET, &[]);
    let encap = der::sequence(&[&der::tlv(der::OID, oid::PKCS7_DATA)]);
    // `[0] IMPLICIT` certificates. Kept in the caller's order rather than sorted as DER's
    // SET OF would be: OpenSSL does the same, and the order (leaf first) is useful to readers.
    let cert_ders: Vec<&[u8]> = certs.iter().map(Certificate::der).collect();
    let certificates = der::constructed(der::context(0), &cert_ders);
    let signed_data = der::sequence(&[
        &[der::INTEGER, 1, 1],
        &empty_set,
        &encap,
        &certificates,
        &empty_set,
    ]);
    der::sequence(&[
        &der::tlv(der::OID, oid::PKCS7_SIGNED_DATA),
        &der::tlv(der::context(0), &signed_data),
    ])
}

/// The raw certificate elements of a certs-only ContentInfo.
fn walk(data: &[u8]) -> der::DerResult<Vec<&[u8]>> {
    // ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY }
    let mut content_info = der::single(data, der::SEQUENCE)?.reader();
    if content_info.expect(der::OID)?.value != oid::PKCS7_SIGNED_DATA {
        return Err(der::DerError("not a SignedData"));
    }
    let explicit = content_info.expect(der::context(0))?;
    content_info.finish()?;

    // SignedData ::= SEQUENCE { version, digestAlgorithms SET, encapContentInfo SEQUENCE,
    //   certificates [0] IMPLICIT OPTIONAL, crls [1] IMPLICIT OPTIONAL, signerInfos SET }
    let mut signed = der::single(explicit.value, der::SEQUENCE)?.reader();
    signed.expect(der::INTEGER)?;
    signed.expect(der::SET)?;
    signed.expect(der::SEQUENCE)?;
    let certificates = signed.optional(der::context(0))?;
    signed.optional(der::context(1))?;
    signed.expect(der::SET)?;
    signed.finish()?;

    let mut out = Vec::new();
    if let Some(certs) = certificates {
        let mut r = certs.reader();
        while !r.is_empty() {
            let choice = r.read()?;
            // Other CertificateChoices (attribute certificates, ...) are not X.509 certificates.
            if choice.tag == der::SEQUENCE {
                out.push(choice.raw);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::*;
    use crate::crypto::{Drbg, KeyPair};

    fn pki_pair(seed: u64) -> (Certificate, Certificate) {
        let mut rng = Drbg::from_seed(seed);
        let pki = TestPki::new(&mut rng);
        let key = KeyPair::generate(&mut rng).unwrap();
        (pki.client(&key, "CN=dev1", &mut rng), pki.ca)
    }

    #[test]
    fn build_then_parse_keeps_certificates_and_order() {
        let (leaf, ca) = pki_pair(50);
        let p7 = build_certs_only(&[leaf.clone(), ca.clone()]);
        assert_eq!(
            parse_certs_only(&p7).unwrap(),
            vec![leaf.clone(), ca.clone()]
        );
        assert_eq!(
            Certificate::parse_any(&p7).unwrap(),
            vec![leaf.clone(), ca.clone()]
        );
        assert!(parse_certs_only(&build_certs_only(&[])).is_err());
    }

    #[test]
    fn openssl_reads_ours_and_we_read_openssls() {
        let (leaf, ca) = pki_pair(51);
        let dir = scratch_dir("pkcs7");
        let ours = dir.join("ours.p7b");
        std::fs::write(&ours, build_certs_only(&[leaf.clone(), ca.clone()])).unwrap();
        let printed = openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            ours.to_str().unwrap(),
            "-print_certs",
        ]);
        let printed_certs = Certificate::from_pem_bundle(&printed).unwrap();
        assert_eq!(printed_certs, vec![leaf.clone(), ca.clone()]);

        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", leaf.to_pem(), ca.to_pem())).unwrap();
        let theirs = openssl(&[
            "crl2pkcs7",
            "-nocrl",
            "-certfile",
            bundle.to_str().unwrap(),
            "-outform",
            "DER",
        ]);
        assert_eq!(
            parse_certs_only(&theirs).unwrap(),
            vec![leaf.clone(), ca.clone()]
        );
        let theirs_pem = openssl(&["crl2pkcs7", "-nocrl", "-certfile", bundle.to_str().unwrap()]);
        assert_eq!(Certificate::parse_any(&theirs_pem).unwrap(), vec![leaf, ca]);
    }

    #[test]
    fn truncated_mutated_and_foreign_bundles_are_rejected_without_panic() {
        let (leaf, ca) = pki_pair(52);
        let p7 = build_certs_only(&[leaf, ca]);
        for n in 0..p7.len() {
            assert!(parse_certs_only(&p7[..n]).is_err(), "truncated at {n}");
        }
        let mut trailing = p7.clone();
        trailing.push(0);
        assert!(parse_certs_only(&trailing).is_err());

        // Seeded random corruption: any outcome but a panic is fine, and whatever parses
        // is a list of real certificates.
        let mut rng = Drbg::from_seed(53);
        let mut noise = [0u8; 4];
        for _ in 0..3000 {
            rng.fill_bytes(&mut noise).unwrap();
            let mut bad = p7.clone();
            let i = usize::from(u16::from_le_bytes([noise[0], noise[1]])) % bad.len();
            bad[i] = noise[2];
            if noise[3] & 1 == 1 {
                let j = usize::from(noise[3]) % bad.len();
                bad[j] ^= 0x80;
            }
            if let Ok(certs) = parse_certs_only(&bad) {
                assert!(!certs.is_empty());
            }
        }
        // Something that is DER but not SignedData.
        let data = der::sequence(&[
            &der::tlv(der::OID, oid::PKCS7_DATA),
            &der::tlv(0xA0, &[0x04, 0]),
        ]);
        assert!(parse_certs_only(&data).is_err());
        assert!(parse_certs_only(b"").is_err());
    }
}
