//! [`TestPki`]: the certificates the test server works with — a root CA, the DTLS server
//! certificate it issues (subjectAltName `localhost` and 127.0.0.1), and client certificates
//! for endpoints. `init` writes them to the state directory; tests and the simulator make them
//! in memory from a seed, at a chosen validity period.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use estuary::crypto::{
    Certificate, CertificateIssuer, CertificateProfile, CertificateTemplate, CryptoError, Drbg,
    KeyPair,
};
use estuary::time::UtcTime;

/// Subject of the root CA `init` creates.
pub const CA_SUBJECT: &str = "CN=Estuary Test Server Root CA,O=Estuary";
/// Subject of the DTLS server certificate.
pub const SERVER_SUBJECT: &str = "CN=localhost,O=Estuary Test Server";

/// A CA and the server certificate it issued.
#[derive(Clone, Debug)]
pub struct TestPki {
    pub ca: CertificateIssuer,
    pub server_cert: Certificate,
    pub server_key: KeyPair,
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl TestPki {
    /// A root CA and a server certificate for `localhost`/127.0.0.1/::1, both valid from
    /// `not_before` to `not_after`.
    pub fn generate(
        rng: &mut Drbg,
        not_before: UtcTime,
        not_after: UtcTime,
    ) -> Result<TestPki, CryptoError> {
        let ca_key = KeyPair::generate(rng)?;
        let ca = CertificateIssuer::new_root_ca(ca_key, CA_SUBJECT, not_before, not_after, rng)?;
        let server = issue(
            &ca,
            SERVER_SUBJECT,
            server_profile(&["localhost"]),
            not_before,
            not_after,
            rng,
        )?;
        Ok(TestPki {
            ca,
            server_cert: server.cert,
            server_key: server.key,
        })
    }

    /// From a CA and server credentials loaded from disk.
    pub fn from_parts(
        ca: CertificateIssuer,
        server_cert: Certificate,
        server_key: KeyPair,
    ) -> Self {
        TestPki {
            ca,
            server_cert,
            server_key,
        }
    }

    /// The server's chain as it is presented: its certificate, then the CA.
    pub fn server_chain(&self) -> Vec<Certificate> {
        vec![self.server_cert.clone(), self.ca.certificate().clone()]
    }

    /// A client certificate `CN=<endpoint>` with a fresh key.
    pub fn issue_client(
        &self,
        endpoint: &str,
        not_before: UtcTime,
        not_after: UtcTime,
        rng: &mut Drbg,
    ) -> Result<Issued, CryptoError> {
        issue(
            &self.ca,
            &format!("CN={endpoint}"),
            CertificateProfile::Client,
            not_before,
            not_after,
            rng,
        )
    }
}

/// A server profile for `names` plus the loopback addresses.
pub fn server_profile(names: &[&str]) -> CertificateProfile {
    CertificateProfile::Server {
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    }
}

/// A fresh key and a certificate for it from `ca`.
pub fn issue(
    ca: &CertificateIssuer,
    subject: &str,
    profile: CertificateProfile,
    not_before: UtcTime,
    not_after: UtcTime,
    rng: &mut Drbg,
) -> Result<Issued, CryptoError> {
    let key = KeyPair::generate(rng)?;
    let template = CertificateTemplate {
        subject: subject.to_string(),
        serial: CertificateTemplate::random_serial(rng)?,
        not_before,
        not_after,
        profile,
    };
    let cert = ca.issue(key.public_key_der(), &template, rng)?;
    Ok(Issued { cert, key })
}
