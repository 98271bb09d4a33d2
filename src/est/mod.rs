//! EST-coaps (Certificate mode with EST, SPEC section 4): the client's view of enrollment.
//! [`policy`] decides when to re-enroll, [`payload`] turns EST responses into an accepted
//! certificate, and [`CacertsPolicy`] says when `/est/crts` is fetched and what it is for.
//! Sans-IO like the rest of the core.

pub mod enroll;
pub mod payload;
pub mod policy;
pub mod state;

pub use enroll::{EstClient, EstOperation, EstOutcome};
pub use payload::{accept_enrolled, certificates, Enrolled, EstError};
pub use policy::{schedule, ReenrollConfig, ReenrollSchedule};
pub use state::EstState;

/// `est_cacerts_policy`: when `/est/crts` is requested and what its certificates are trusted
/// for (SPEC 4.3).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CacertsPolicy {
    /// Never requested; trust comes from /0/x/4 and `trust_store_certs`.
    Disabled,
    /// Requested when an account is in mode 4; verifies the servers of mode-4 accounts.
    ForEstSecurity,
    /// As above, and the bootstrap server's connection in Certificate or EST mode.
    #[default]
    ForEstSecurityAndBootstrap,
    /// Requested when an account is in mode 4; trusted for every certificate connection.
    IfEstConfigured,
    /// Requested after every successful bootstrap; trusted for every certificate connection.
    Always,
}

/// What a connection is, for deciding whether EST CA certificates may verify its server.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConnectionRole {
    /// A management server in mode 4.
    EstAccount,
    /// The bootstrap server in Certificate or EST mode.
    Bootstrap,
    /// Any other certificate-based connection.
    Other,
}

impl CacertsPolicy {
    /// Whether `/est/crts` is requested after a bootstrap that left `est_accounts` mode-4
    /// accounts.
    pub fn requests_cacerts(self, est_accounts: usize) -> bool {
        match self {
            CacertsPolicy::Disabled => false,
            CacertsPolicy::Always => true,
            _ => est_accounts > 0,
        }
    }

    /// Whether the certificates from `/est/crts` are trusted for a connection of `role`.
    pub fn trusts_cacerts_for(self, role: ConnectionRole) -> bool {
        match self {
            CacertsPolicy::Disabled => false,
            CacertsPolicy::ForEstSecurity => role == ConnectionRole::EstAccount,
            CacertsPolicy::ForEstSecurityAndBootstrap => {
                matches!(role, ConnectionRole::EstAccount | ConnectionRole::Bootstrap)
            }
            CacertsPolicy::IfEstConfigured | CacertsPolicy::Always => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionRole::*;

    #[test]
    fn cacerts_policy_table() {
        use CacertsPolicy::*;
        // (policy, requested with 0 / 1 mode-4 accounts, trusted for EstAccount/Bootstrap/Other)
        let table = [
            (Disabled, [false, false], [false, false, false]),
            (ForEstSecurity, [false, true], [true, false, false]),
            (
                ForEstSecurityAndBootstrap,
                [false, true],
                [true, true, false],
            ),
            (IfEstConfigured, [false, true], [true, true, true]),
            (Always, [true, true], [true, true, true]),
        ];
        for (p, req, trust) in table {
            assert_eq!([p.requests_cacerts(0), p.requests_cacerts(1)], req, "{p:?}");
            assert_eq!(
                [
                    p.trusts_cacerts_for(EstAccount),
                    p.trusts_cacerts_for(Bootstrap),
                    p.trusts_cacerts_for(Other)
                ],
                trust,
                "{p:?}"
            );
        }
        assert_eq!(CacertsPolicy::default(), ForEstSecurityAndBootstrap);
    }
}
