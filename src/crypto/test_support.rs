//! Test helpers for the crypto tests: a throwaway PKI and the OpenSSL command line as an
//! independent checker. Compiled for tests only.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    Certificate, CertificateIssuer, CertificateProfile, CertificateTemplate, Drbg, KeyPair,
};
use crate::time::UtcTime;

/// 2023-11-14T22:13:20Z, the tests' "now".
pub(crate) const T0: i64 = 1_700_000_000;
pub(crate) const DAY: i64 = 86_400;

/// A root CA "CN=Estuary Test CA" with its key.
pub(crate) struct TestPki {
    pub(crate) ca_key: KeyPair,
    pub(crate) ca: Certificate,
    issuer: CertificateIssuer,
}

impl TestPki {
    /// Valid from T0 for ten years.
    pub(crate) fn new(rng: &mut Drbg) -> Self {
        Self::with_validity(
            rng,
            UtcTime::from_unix_seconds(T0),
            UtcTime::from_unix_seconds(T0 + 3650 * DAY),
        )
    }

    pub(crate) fn with_validity(rng: &mut Drbg, not_before: UtcTime, not_after: UtcTime) -> Self {
        let ca_key = KeyPair::generate(rng).unwrap();
        let issuer = CertificateIssuer::new_root_ca(
            ca_key.clone(),
            "CN=Estuary Test CA",
            not_before,
            not_after,
            rng,
        )
        .unwrap();
        TestPki {
            ca_key,
            ca: issuer.certificate().clone(),
            issuer,
        }
    }

    /// A certificate for `key` with serial 01 02 03.
    pub(crate) fn issue(
        &self,
        key: &KeyPair,
        subject: &str,
        not_before: UtcTime,
        not_after: UtcTime,
        profile: CertificateProfile,
        rng: &mut Drbg,
    ) -> Certificate {
        let template = CertificateTemplate {
            subject: subject.into(),
            serial: vec![1, 2, 3],
            not_before,
            not_after,
            profile,
        };
        self.issuer
            .issue(key.public_key_der(), &template, rng)
            .unwrap()
    }

    /// A client certificate valid for a day from T0.
    pub(crate) fn client(&self, key: &KeyPair, subject: &str, rng: &mut Drbg) -> Certificate {
        self.issue(
            key,
            subject,
            UtcTime::from_unix_seconds(T0),
            UtcTime::from_unix_seconds(T0 + DAY),
            CertificateProfile::Client,
            rng,
        )
    }
}

/// Runs the `openssl` command line and returns its standard output. Fails the test, with a
/// message saying what to install, if OpenSSL is missing: CI installs it, so a missing tool is
/// an environment error, not a reason to skip.
pub(crate) fn openssl(args: &[&str]) -> Vec<u8> {
    openssl_with_stderr(args).0
}

/// Like [`openssl`], also returning standard error, where some commands (`req -verify`) put
/// their verdict. OpenSSL 3.0's `req -verify` exits 0 even when the signature is bad, so
/// callers must look at that text.
pub(crate) fn openssl_with_stderr(args: &[&str]) -> (Vec<u8>, String) {
    let out = match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run the `openssl` command line ({e}); these tests use it as an independent \
             checker: install OpenSSL (e.g. `apt-get install openssl`)"
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "openssl {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
    (out.stdout, stderr)
}

/// A fresh directory under the system temp dir for one test's files, removed when dropped.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn scratch_dir(name: &str) -> ScratchDir {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("estuary-crypto-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// A DER CRL (v2, no extensions) from `issuer` revoking `serials`, valid from `this_update`
/// to `next_update`: for testing revocation where the fixture's CA key is at hand.
pub(crate) fn crl_revoking(
    issuer: &CertificateIssuer,
    serials: &[&[u8]],
    this_update: UtcTime,
    next_update: UtcTime,
    rng: &mut Drbg,
) -> Vec<u8> {
    use super::der::{self, oid, Reader, INTEGER, OID, SEQUENCE};
    let time = |t: UtcTime| {
        let s = chrono::DateTime::from_timestamp(t.unix_seconds(), 0)
            .unwrap()
            .format("%y%m%d%H%M%SZ")
            .to_string();
        der::tlv(0x17, s.as_bytes())
    };
    // The issuer's Name, as its certificate encodes its subject.
    let cert = issuer.certificate().der();
    let mut certificate = Reader::new(cert).expect(SEQUENCE).unwrap().reader();
    let mut tbs = certificate.expect(SEQUENCE).unwrap().reader();
    let _version = tbs.optional(der::context(0)).unwrap();
    for _ in 0..3 {
        tbs.read().unwrap(); // serial, signature algorithm, issuer
    }
    tbs.read().unwrap(); // validity
    let subject = tbs.read().unwrap();
    let alg = der::sequence(&[&der::tlv(OID, oid::ECDSA_SHA256)]);
    let revoked: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| der::sequence(&[&der::tlv(INTEGER, s), &time(this_update)]))
        .collect();
    let revoked_refs: Vec<&[u8]> = revoked.iter().map(|r| r.as_slice()).collect();
    let tbs_list = der::sequence(&[
        &der::tlv(INTEGER, &[1]),
        &alg,
        subject.raw,
        &time(this_update),
        &time(next_update),
        &der::sequence(&revoked_refs),
    ]);
    let sig = issuer.key().sign(&tbs_list, rng).unwrap();
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    der::sequence(&[&tbs_list, &alg, &der::tlv(der::BIT_STRING, &bits)])
}
