//! [`KeyPair`]: an EC private key with its public half — generated on the device (P-256, the
//! EST default), loaded from DER or PEM (PKCS#8 or SEC1), written back out, and used to sign.
//!
//! The private key is held as SEC1 DER in [`SecretBytes`] (wiped on drop, never printed) and
//! turned into an mbedtls context only for the moment an operation needs it. RSA and
//! encrypted keys are rejected: LwM2M devices and this SDK use EC keys. Key storage in an
//! engine (PKCS#11) is not handled here.

use core::fmt;

use mbedtls::hash::{Md, Type as MdType};
use mbedtls::pk::{EcGroupId, Pk, Type as PkType, ECDSA_MAX_LEN};

use super::der::{self, Reader};
use super::{mbed, pem, CryptoError, Drbg, SecretBytes};

/// An EC key pair (P-256, P-384 or P-521).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// SEC1 `ECPrivateKey` DER, as mbedtls writes it (parameters and public key included).
    sec1: SecretBytes,
    /// SubjectPublicKeyInfo DER.
    public_der: Vec<u8>,
    /// The SPKI's AlgorithmIdentifier element, reused when wrapping the key in PKCS#8.
    algorithm: Vec<u8>,
    curve: Curve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn from_mbedtls(id: EcGroupId) -> Option<Self> {
        match id {
            EcGroupId::SecP256R1 => Some(Curve::P256),
            EcGroupId::SecP384R1 => Some(Curve::P384),
            EcGroupId::SecP521R1 => Some(Curve::P521),
            _ => None,
        }
    }

    /// The hash that matches the curve's strength (RFC 5480 section 4).
    fn hash(self) -> MdType {
        match self {
            Curve::P256 => MdType::Sha256,
            Curve::P384 => MdType::Sha384,
            Curve::P521 => MdType::Sha512,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

impl KeyPair {
    /// Generates a fresh P-256 key pair.
    pub fn generate(rng: &mut Drbg) -> Result<Self, CryptoError> {
        let mut pk = Pk::generate_ec(rng.mbedtls(), EcGroupId::SecP256R1)
            .map_err(mbed("generating an EC P-256 key"))?;
        Self::from_mbedtls(&mut pk)
    }

    /// Loads a private key from DER: PKCS#8 `PrivateKeyInfo` (unencrypted) or SEC1
    /// `ECPrivateKey`.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        // mbedtls ignores bytes after the key; we do not accept them.
        der::single(der, der::SEQUENCE).map_err(|e| e.ctx("private key"))?;
        let mut pk = Pk::from_private_key(der, None).map_err(mbed("parsing a private key"))?;
        Self::from_mbedtls(&mut pk)
    }

    /// Loads the first private key in a PEM text: `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY`
    /// (SEC1). Other blocks, such as `EC PARAMETERS` from `openssl ecparam`, are skipped.
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, CryptoError> {
        for block in pem::decode_all(pem_text)? {
            match block.label.as_str() {
                "PRIVATE KEY" | "EC PRIVATE KEY" => return Self::from_der(&block.der),
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(CryptoError::UnsupportedKey("encrypted private key".into()))
                }
                "RSA PRIVATE KEY" => return Err(CryptoError::UnsupportedKey("RSA key".into())),
                _ => {}
            }
        }
        Err(CryptoError::malformed("PEM", "no private key block"))
    }

    /// Loads DER or PEM, whichever `bytes` is (a file's contents, say).
    pub fn from_der_or_pem(bytes: &[u8]) -> Result<Self, CryptoError> {
        if looks_like_pem(bytes) {
            Self::from_pem(bytes)
        } else {
            Self::from_der(bytes)
        }
    }

    /// The private key as PKCS#8 `PrivateKeyInfo` DER (what OpenSSL 3 writes by default).
    pub fn to_der(&self) -> SecretBytes {
        // PrivateKeyInfo ::= SEQUENCE { version 0, algorithm (same as in the SPKI),
        //                               privateKey OCTET STRING (the SEC1 structure) }
        let mut octets = der::tlv(der::OCTET_STRING, self.sec1.expose());
        let out = der::sequence(&[&[der::INTEGER, 1, 0], &self.algorithm, &octets]);
        mbedtls::zeroize(&mut octets);
        SecretBytes::new(out)
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> SecretBytes {
        SecretBytes::from(pem::encode("PRIVATE KEY", self.to_der().expose()))
    }

    /// The private key as SEC1 `ECPrivateKey` DER.
    pub fn to_sec1_der(&self) -> SecretBytes {
        self.sec1.clone()
    }

    /// The private key as SEC1 PEM (`-----BEGIN EC PRIVATE KEY-----`).
    pub fn to_sec1_pem(&self) -> SecretBytes {
        SecretBytes::from(pem::encode("EC PRIVATE KEY", self.sec1.expose()))
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> String {
        pem::encode("PUBLIC KEY", &self.public_der)
    }

    /// The curve's name: "P-256", "P-384" or "P-521".
    pub fn curve_name(&self) -> &'static str {
        self.curve.name()
    }

    /// An ECDSA signature (DER `Ecdsa-Sig-Value`) over `message`, hashed with SHA-256 for
    /// P-256 (SHA-384 for P-384, SHA-512 for P-521).
    pub fn sign(&self, message: &[u8], rng: &mut Drbg) -> Result<Vec<u8>, CryptoError> {
        let md = self.curve.hash();
        let hash = digest(md, message)?;
        let mut pk = self.to_mbedtls()?;
        let mut sig = vec![0u8; ECDSA_MAX_LEN];
        let n = pk
            .sign(md, &hash, &mut sig, rng.mbedtls())
            .map_err(mbed("signing"))?;
        sig.truncate(n);
        Ok(sig)
    }

    /// A fresh mbedtls context for this key (for `dtls/` and the X.509 writers).
    pub(crate) fn to_mbedtls(&self) -> Result<Pk, CryptoError> {
        Pk::from_private_key(self.sec1.expose(), None).map_err(mbed("loading a private key"))
    }

    /// The signature hash to use when this key signs certificates and CSRs.
    pub(crate) fn signature_hash(&self) -> MdType {
        self.curve.hash()
    }

    fn from_mbedtls(pk: &mut Pk) -> Result<Self, CryptoError> {
        match pk.pk_type() {
            PkType::Eckey | PkType::EckeyDh | PkType::Ecdsa => {}
            PkType::Rsa | PkType::RsassaPss | PkType::RsaAlt => {
                return Err(CryptoError::UnsupportedKey("RSA key".into()))
            }
            other => return Err(CryptoError::UnsupportedKey(format!("{other:?} key"))),
        }
        let id = pk.curve().map_err(mbed("reading the key's curve"))?;
        let curve = Curve::from_mbedtls(id)
            .ok_or_else(|| CryptoError::UnsupportedKey(format!("curve {id:?}")))?;
        let sec1 = SecretBytes::new(
            pk.write_private_der_vec()
                .map_err(mbed("writing a private key"))?,
        );
        let public_der = pk
            .write_public_der_vec()
            .map_err(mbed("writing a public key"))?;
        let algorithm = spki_algorithm(&public_der)
            .ok_or_else(|| CryptoError::malformed("public key", "no AlgorithmIdentifier"))?
            .to_vec();
        Ok(KeyPair {
            sec1,
            public_der,
            algorithm,
            curve,
        })
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("curve", &self.curve.name())
            .field("private", &"[REDACTED]")
            .finish()
    }
}

/// Checks an ECDSA (or RSA PKCS#1 v1.5) signature over `message` with a SubjectPublicKeyInfo
/// public key, hashing as [`KeyPair::sign`] does for the key's curve (SHA-256 for RSA).
pub fn verify_signature(
    public_key_der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let mut pk = parse_public_key(public_key_der)?;
    let md = match pk.curve().ok().and_then(Curve::from_mbedtls) {
        Some(curve) => curve.hash(),
        None => MdType::Sha256,
    };
    verify_with(&mut pk, md, message, signature)
}

/// Parses a SubjectPublicKeyInfo, rejecting trailing bytes.
pub(crate) fn parse_public_key(spki: &[u8]) -> Result<Pk, CryptoError> {
    der::single(spki, der::SEQUENCE).map_err(|e| e.ctx("public key"))?;
    Pk::from_public_key(spki).map_err(mbed("parsing a public key"))
}

/// Verifies `signature` over `message` hashed with `md`.
pub(crate) fn verify_with(
    pk: &mut Pk,
    md: MdType,
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    if signature.is_empty() {
        return Err(CryptoError::BadSignature("empty signature".into()));
    }
    let hash = digest(md, message)?;
    pk.verify(md, &hash, signature)
        .map_err(|e| CryptoError::BadSignature(CryptoError::mbedtls("verifying", e).to_string()))
}

pub(crate) fn digest(md: MdType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = vec![0u8; 64];
    let n = Md::hash(md, data, &mut out).map_err(mbed("hashing"))?;
    out.truncate(n);
    Ok(out)
}

/// The raw AlgorithmIdentifier element of a SubjectPublicKeyInfo.
fn spki_algorithm(spki: &[u8]) -> Option<&[u8]> {
    let seq = der::single(spki, der::SEQUENCE).ok()?;
    let mut r: Reader<'_> = seq.reader();
    r.expect(der::SEQUENCE).ok().map(|t| t.raw)
}

/// True if `bytes` should be read as PEM text: everything we read as DER is a SEQUENCE, and a
/// text never starts with that byte (0x30 is '0', which no PEM file starts with either).
pub(crate) fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.first() != Some(&der::SEQUENCE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::{openssl, scratch_dir};

    #[test]
    fn generated_keys_round_trip_through_every_format() {
        let mut rng = Drbg::from_seed(1);
        let key = KeyPair::generate(&mut rng).unwrap();
        assert_eq!(key.curve_name(), "P-256");
        for bytes in [
            key.to_der().expose().to_vec(),
            key.to_sec1_der().expose().to_vec(),
            key.to_pem().expose().to_vec(),
            key.to_sec1_pem().expose().to_vec(),
        ] {
            assert_eq!(KeyPair::from_der_or_pem(&bytes).unwrap(), key);
        }
        assert!(key
            .to_pem()
            .expose()
            .starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        assert!(key
            .to_sec1_pem()
            .expose()
            .starts_with(b"-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(key
            .public_key_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn same_seed_same_key_different_seed_different_key() {
        let a = KeyPair::generate(&mut Drbg::from_seed(42)).unwrap();
        let b = KeyPair::generate(&mut Drbg::from_seed(42)).unwrap();
        let c = KeyPair::generate(&mut Drbg::from_seed(43)).unwrap();
        assert_eq!(a.to_der(), b.to_der());
        assert_eq!(a.public_key_der(), b.public_key_der());
        assert_ne!(a.public_key_der(), c.public_key_der());
        // Two keys from one generator differ.
        let mut rng = Drbg::from_seed(42);
        let first = KeyPair::generate(&mut rng).unwrap();
        let second = KeyPair::generate(&mut rng).unwrap();
        assert_ne!(first.public_key_der(), second.public_key_der());
    }

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let mut rng = Drbg::from_seed(2);
        let key = KeyPair::generate(&mut rng).unwrap();
        let other = KeyPair::generate(&mut rng).unwrap();
        let sig = key.sign(b"hello", &mut rng).unwrap();
        verify_signature(key.public_key_der(), b"hello", &sig).unwrap();
        assert!(matches!(
            verify_signature(key.public_key_der(), b"hellO", &sig),
            Err(CryptoError::BadSignature(_))
        ));
        assert!(verify_signature(other.public_key_der(), b"hello", &sig).is_err());
        assert!(verify_signature(key.public_key_der(), b"hello", &[]).is_err());
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let key = KeyPair::generate(&mut Drbg::from_seed(3)).unwrap();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, r#"KeyPair { curve: "P-256", private: "[REDACTED]" }"#);
    }

    #[test]
    fn loads_keys_openssl_wrote() {
        let dir = scratch_dir("key-openssl");
        let sec1 = dir.join("sec1.pem");
        let pkcs8 = dir.join("pkcs8.pem");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            path(&sec1),
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            path(&sec1),
            "-out",
            path(&pkcs8),
        ]);
        let a = KeyPair::from_pem(&std::fs::read(&sec1).unwrap()).unwrap();
        let b = KeyPair::from_pem(&std::fs::read(&pkcs8).unwrap()).unwrap();
        assert_eq!(a.public_key_der(), b.public_key_der());

        // And OpenSSL reads what we write, seeing the same public key.
        let ours = dir.join("ours.pem");
        std::fs::write(&ours, a.to_pem().expose()).unwrap();
        let out = openssl(&["pkey", "-in", path(&ours), "-pubout", "-outform", "DER"]);
        assert_eq!(out, a.public_key_der());
    }

    #[test]
    fn rejects_rsa_encrypted_and_garbage_keys() {
        let dir = scratch_dir("key-reject");
        let rsa = dir.join("rsa.pem");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            path(&rsa),
        ]);
        assert!(matches!(
            KeyPair::from_pem(&std::fs::read(&rsa).unwrap()),
            Err(CryptoError::UnsupportedKey(_))
        ));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            KeyPair::from_pem(enc.as_bytes()),
            Err(CryptoError::UnsupportedKey(_))
        ));

        let key = KeyPair::generate(&mut Drbg::from_seed(4)).unwrap();
        for der in [key.to_der(), key.to_sec1_der()] {
            let der = der.expose();
            for n in 0..der.len() {
                assert!(KeyPair::from_der(&der[..n]).is_err(), "truncated at {n}");
            }
            let mut trailing = der.to_vec();
            trailing.push(0);
            assert!(KeyPair::from_der(&trailing).is_err());
        }
        assert!(KeyPair::from_der(b"\x30\x03\x02\x01\x00").is_err());
    }

    fn path(p: &std::path::Path) -> &str {
        p.to_str().unwrap()
    }
}
