//! What EST leaves on the device: our key pair, the enrolled certificate and its chain, the
//! CA certificates from `/est/crts`, and when the certificate was provisioned (the start of
//! the re-enrollment schedule). Persisted as one part (`persist::est`).

use crate::crypto::{Certificate, KeyPair};
use crate::time::UtcTime;

use super::policy::{schedule, ReenrollConfig, ReenrollSchedule};

/// The EST credential and its bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct EstState {
    /// Our key pair; it never leaves the device.
    pub key: Option<KeyPair>,
    /// The enrolled certificate for `key`.
    pub certificate: Option<Certificate>,
    /// Intermediate certificates that came with it.
    pub chain: Vec<Certificate>,
    /// CA certificates from `/est/crts`.
    pub cacerts: Vec<Certificate>,
    /// When `certificate` was installed.
    pub provisioned_at: Option<UtcTime>,
}

impl EstState {
    /// True when a usable credential (key + certificate) is present.
    pub fn is_enrolled(&self) -> bool {
        self.key.is_some() && self.certificate.is_some()
    }

    /// The re-enrollment schedule of the current certificate.
    pub fn reenroll_schedule(&self, cfg: &ReenrollConfig) -> Option<ReenrollSchedule> {
        let cert = self.certificate.as_ref()?;
        schedule(self.provisioned_at?, cert.not_after(), cfg)
    }

    /// Forgets the credential (expired, or every re-enrollment failed).
    pub fn purge(&mut self) {
        self.key = None;
        self.certificate = None;
        self.chain.clear();
        self.provisioned_at = None;
    }
}
