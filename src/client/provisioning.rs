//! How the client gets and keeps its configuration and credentials: the Bootstrap-Server
//! connection ([`BootstrapLink`]: bootstrap session, its secure channel and the EST client on
//! the same CoAP endpoint), enrollment after Bootstrap-Finish when an account is in mode 4,
//! re-enrollment on the schedule of `est_reenroll`, and the fall-back to bootstrap when no
//! management server can be reached.
//!
//! Mode-4 accounts connect as Certificate accounts with the enrolled key and certificate;
//! this module makes that substitution ([`Client::effective_security`]).

use core::time::Duration;

use log::{info, warn};

use super::{Client, ConnectionId, Event};
use crate::coap::{self, code, Endpoint, EndpointEvent};
use crate::crypto::{Csr, KeyPair, TrustStore};
use crate::dm::objects::{SecurityInstance, SecurityMode};
use crate::est::{ConnectionRole, EstClient, EstOperation, EstOutcome, EstState};
use crate::lwm2m::bootstrap::{BootstrapEvent, BootstrapParams, BootstrapSession};
use crate::lwm2m::bootstrap_ops;
use crate::lwm2m::transport::{ChannelSecurity, SecureChannel};
use crate::lwm2m::ServerUri;
use crate::time::{Instant, Now, UtcTime};

/// Wait before the first fall-back bootstrap; doubles with each one in a row.
const FALLBACK_BASE: Duration = Duration::from_secs(60);
/// Longest wait before a fall-back bootstrap.
const FALLBACK_MAX: Duration = Duration::from_secs(3600);

/// What the bootstrap connection is doing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Bootstrap-Request / provisioning until Bootstrap-Finish.
    Bootstrapping,
    /// `/est/crts` after Finish.
    CaCerts,
    /// `/est/sen` after Finish (or after `/crts`).
    Enrolling,
    /// `/est/sren` with the current certificate.
    Reenrolling,
    /// Nothing in flight.
    Idle,
}

/// The Bootstrap-Server connection.
pub(super) struct BootstrapLink {
    pub(super) session: BootstrapSession,
    pub(super) channel: SecureChannel,
    pub(super) est: EstClient,
    pub(super) stage: Stage,
}

impl BootstrapLink {
    /// Hands what the CoAP endpoint still has queued (the ACK of a separate EST response,
    /// say) to the current DTLS session, so closing it does not leave that for a new
    /// handshake.
    fn flush_before_close(&mut self, now: Now) {
        while let Some(coap) = self.session.endpoint.poll_transmit() {
            self.channel.send(now, coap);
        }
    }
}

/// EST bookkeeping of the client.
#[derive(Default)]
pub(super) struct EstRuntime {
    pub(super) state: EstState,
    /// The key a pending enrollment is for (committed when the certificate arrives).
    pub(super) pending_key: Option<KeyPair>,
    /// Failed `/est/sren` attempts of the current schedule.
    pub(super) sren_failures: u32,
    /// Fall-backs to bootstrap since the last successful registration: each waits longer.
    pub(super) fallbacks: u32,
}

impl Client {
    /// The bootstrap account: its instance ID and data.
    fn bootstrap_account(&self) -> Option<(u16, SecurityInstance)> {
        self.dm
            .security
            .iter()
            .find(|(_, s)| s.bootstrap_server)
            .map(|(iid, s)| (iid, s.clone()))
    }

    /// True when a Bootstrap-Server account exists.
    pub fn has_bootstrap_account(&self) -> bool {
        self.bootstrap_account().is_some()
    }

    /// The account as the DTLS layer must see it: a mode-4 account becomes a Certificate
    /// account with the EST key and certificate (for the bootstrap account, the factory
    /// credentials of /0/x/3 and /0/x/5 until EST has enrolled). `None` when a mode-4
    /// management account has no enrolled certificate yet.
    pub(super) fn effective_security(&self, sec: &SecurityInstance) -> Option<SecurityInstance> {
        if sec.security_mode != SecurityMode::CertificateWithEst {
            return Some(sec.clone());
        }
        let mut s = sec.clone();
        s.security_mode = SecurityMode::Certificate;
        match (&self.est.state.key, &self.est.state.certificate) {
            (Some(k), Some(c)) => {
                s.public_cert_or_psk_identity = c.der().to_vec();
                s.private_cert_or_psk_key = k.to_der().expose().to_vec();
            }
            _ if sec.bootstrap_server && !sec.public_cert_or_psk_identity.is_empty() => {}
            _ => return None,
        }
        Some(s)
    }

    /// The trust anchors for a connection: `trust_store_certs`, plus the CA certificates from
    /// `/est/crts` where the cacerts policy allows them for this kind of connection.
    pub(super) fn trust_for(&self, sec: &SecurityInstance) -> TrustStore {
        let mut trust = self.cfg.trust_store_certs.clone();
        let role = match (sec.bootstrap_server, sec.security_mode) {
            (true, SecurityMode::Certificate | SecurityMode::CertificateWithEst) => {
                ConnectionRole::Bootstrap
            }
            (false, SecurityMode::CertificateWithEst) => ConnectionRole::EstAccount,
            _ => ConnectionRole::Other,
        };
        if self.cfg.est_cacerts_policy.trusts_cacerts_for(role) {
            for c in &self.est.state.cacerts {
                trust.add(c.clone());
            }
        }
        trust
    }

    /// The secure channel for an account, or why it cannot be used.
    pub(super) fn channel_for(
        &self,
        sec: &SecurityInstance,
        uri: &ServerUri,
    ) -> Result<SecureChannel, String> {
        let eff = self
            .effective_security(sec)
            .ok_or_else(|| "mode 4 (EST) account without an enrolled certificate".to_string())?;
        let trust = self.trust_for(sec);
        ChannelSecurity::from_instance(
            &eff,
            uri,
            &trust,
            self.cfg.udp_dtls_hs_tx_params,
            &self.drbg,
        )
        .map(SecureChannel::new)
        .map_err(|e| e.to_string())
    }

    /// A CoAP endpoint for a connection over `channel`: datagrams no larger than the
    /// configured buffers, and sent ones no larger than one DTLS record on a secure channel
    /// (larger messages go block-wise).
    pub(super) fn new_endpoint(&mut self, channel: &SecureChannel) -> Endpoint {
        let record = channel.max_coap_datagram().unwrap_or(usize::MAX);
        let mut ep = Endpoint::new(
            self.cfg.udp_tx_params,
            self.cfg.out_buffer_size.min(record),
            self.cfg.msg_cache_size,
            self.rng.as_mut(),
        );
        ep.set_in_buffer_size(self.cfg.in_buffer_size);
        ep
    }

    /// Opens the Bootstrap-Server connection and starts a bootstrap: after the Client Hold
    /// Off Time, or at once when `immediately`. Management sessions are closed first.
    pub(super) fn begin_bootstrap(&mut self, now: Now, immediately: bool) -> Result<(), String> {
        self.begin_bootstrap_after(now, immediately, Duration::ZERO)
    }

    /// As [`Client::begin_bootstrap`], waiting at least `at_least` before the request.
    fn begin_bootstrap_after(
        &mut self,
        now: Now,
        immediately: bool,
        at_least: Duration,
    ) -> Result<(), String> {
        let (_, sec) = self
            .bootstrap_account()
            .ok_or_else(|| "no Bootstrap-Server account".to_string())?;
        let uri = ServerUri::parse(&sec.server_uri).map_err(|e| e.to_string())?;
        let channel = self.channel_for(&sec, &uri)?;
        self.close_management_sessions();
        if let Some(old) = self.bootstrap.take() {
            if old.session.uri != uri {
                self.events.push_back(Event::ConnectionClosed {
                    conn: ConnectionId::BOOTSTRAP,
                });
            }
        }
        let hold_off = if immediately {
            Duration::ZERO
        } else {
            Duration::from_secs(sec.client_holdoff_time.unwrap_or(0).clamp(0, 3600) as u64)
        }
        .max(at_least);
        let endpoint = self.new_endpoint(&channel);
        info!("bootstrap from {uri} in {}s", hold_off.as_secs());
        self.bootstrap = Some(BootstrapLink {
            session: BootstrapSession::new(uri, endpoint, now.mono, hold_off),
            channel,
            est: EstClient::new("/est"),
            stage: Stage::Bootstrapping,
        });
        Ok(())
    }

    /// Drops every management session (before a bootstrap rewrites the accounts).
    fn close_management_sessions(&mut self) {
        for s in self.sessions.drain(..) {
            self.events.push_back(Event::ConnectionClosed {
                conn: Self::conn_of(s.ssid),
            });
        }
        self.channels.clear();
        self.server_dm.clear();
    }

    /// The application asks for a bootstrap now (`estuary_schedule_bootstrap_request`), or
    /// a management server executed /1/x/9.
    pub fn schedule_bootstrap_request(&mut self, now: Now) -> Result<(), crate::Error> {
        self.last_now = now;
        self.begin_bootstrap(now, true)
            .map_err(crate::Error::Config)?;
        self.started = true;
        self.drive(now);
        Ok(())
    }

    /// True while a bootstrap or an EST exchange is under way (the EST state must not be
    /// persisted then).
    pub fn est_in_progress(&self) -> bool {
        self.bootstrap
            .as_ref()
            .is_some_and(|b| b.est.in_progress() || b.stage != Stage::Idle)
    }

    /// The EST state (for persistence and the status call).
    pub fn est_state(&self) -> &EstState {
        &self.est.state
    }

    /// Replaces the EST state (restored from persistence) before [`Client::start`].
    pub fn restore_est_state(&mut self, state: EstState) {
        self.est.state = state;
        self.est.sren_failures = 0;
    }

    /// When the next `/est/sren` attempt is due, if a certificate is enrolled.
    pub fn next_reenrollment(&self) -> Option<UtcTime> {
        self.est
            .state
            .reenroll_schedule(&self.cfg.est_reenroll)?
            .attempt_after_failures(self.est.sren_failures)
    }

    fn est_account_count(&self) -> usize {
        self.dm
            .security
            .iter()
            .filter(|(_, s)| {
                !s.bootstrap_server && s.security_mode == SecurityMode::CertificateWithEst
            })
            .count()
    }

    /// One pass over the bootstrap connection: timers, answers, requests, EST.
    pub(super) fn drive_bootstrap(&mut self, now: Now) {
        let Some(mut b) = self.bootstrap.take() else {
            self.check_reenrollment(now);
            return;
        };
        let params = BootstrapParams {
            endpoint_name: self.cfg.endpoint_name.clone(),
            preferred_content_format: None,
        };
        let mut outcomes = Vec::new();
        let mut bevents = Vec::new();
        if b.stage == Stage::Bootstrapping {
            bevents.extend(b.session.on_timeout(now.mono, &params));
        } else {
            b.session.endpoint.handle_timeout(now.mono);
        }
        outcomes.extend(b.est.on_timeout(now.mono, &mut b.session.endpoint));
        while let Some(ev) = b.session.endpoint.poll_event() {
            match &ev {
                EndpointEvent::Response { handle, packet } => {
                    let key = self
                        .est
                        .pending_key
                        .as_ref()
                        .or(self.est.state.key.as_ref());
                    // Our own certificate may chain to `trust_store_certs` or to the CA
                    // certificates this EST server gave us from /est/crts.
                    let mut trust = self.cfg.trust_store_certs.clone();
                    if !trust.is_empty() {
                        for c in &self.est.state.cacerts {
                            trust.add(c.clone());
                        }
                    }
                    outcomes.extend(
                        b.est
                            .on_response(now.mono, now.utc, *handle, packet, key, &trust),
                    );
                }
                EndpointEvent::Failed { handle, error } => {
                    outcomes.extend(b.est.on_failure(*handle, *error));
                }
                _ => {}
            }
            let (bev, req) = b.session.on_endpoint_event(now.mono, ev);
            bevents.extend(bev);
            if let Some((req, active)) = req {
                let response = if active {
                    let reply = bootstrap_ops::handle_bootstrap_request(&mut self.dm, &req);
                    for p in &reply.changed {
                        self.mark_changed(p);
                    }
                    if let Some(accepted) = reply.finish {
                        bevents.extend(b.session.on_finish(now.mono, accepted));
                    }
                    reply.response
                } else {
                    coap::new_response(code::UNAUTHORIZED)
                };
                b.session.endpoint.respond(now.mono, &req, response);
            }
        }
        self.bootstrap = Some(b);
        for ev in bevents {
            self.on_bootstrap_event(now, ev);
        }
        for o in outcomes {
            self.on_est_outcome(now, o);
        }
        self.check_reenrollment(now);
    }

    fn on_bootstrap_event(&mut self, now: Now, ev: BootstrapEvent) {
        match ev {
            BootstrapEvent::Requested => {}
            BootstrapEvent::Failed { reason, .. } => {
                self.events.push_back(Event::BootstrapFailed { reason });
            }
            BootstrapEvent::Finished => {
                self.events.push_back(Event::BootstrapFinished);
                let est_accounts = self.est_account_count();
                let policy = self.cfg.est_cacerts_policy;
                if policy.requests_cacerts(est_accounts) {
                    self.start_est(now, Stage::CaCerts);
                } else if est_accounts > 0 {
                    self.start_est(now, Stage::Enrolling);
                } else {
                    self.provisioning_done(now);
                }
            }
        }
    }

    /// RFC 9148 wants EST over a certificate-authenticated session; over a PSK (or plain)
    /// bootstrap connection the client still tries, since some servers allow it.
    fn warn_if_est_without_certificate(&self) {
        if let Some((_, sec)) = self.bootstrap_account() {
            if !matches!(
                sec.security_mode,
                SecurityMode::Certificate | SecurityMode::CertificateWithEst
            ) {
                warn!(
                    "EST over a {:?} bootstrap connection: RFC 9148 requires certificate \
                     authentication, the server may refuse",
                    sec.security_mode
                );
            }
        }
    }

    /// Sends the EST request of `stage` over the bootstrap connection.
    fn start_est(&mut self, now: Now, stage: Stage) {
        if stage != Stage::Reenrolling {
            self.warn_if_est_without_certificate();
        }
        let csr = match stage {
            Stage::Enrolling | Stage::Reenrolling => {
                let key = if stage == Stage::Reenrolling && !self.cfg.est_reenroll.rekey {
                    self.est.state.key.clone()
                } else {
                    match KeyPair::generate(&mut self.drbg) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            warn!("EST: key generation failed: {e}");
                            None
                        }
                    }
                };
                let operation = if stage == Stage::Reenrolling {
                    EstOperation::Reenroll
                } else {
                    EstOperation::Enroll
                };
                let Some(key) = key else {
                    return self.on_est_outcome(
                        now,
                        EstOutcome::Failed {
                            operation,
                            reason: "no key pair".into(),
                        },
                    );
                };
                let subject = format!("CN={}", self.cfg.endpoint_name);
                let csr = match Csr::build(&key, &subject, &mut self.drbg) {
                    Ok(c) => c,
                    Err(e) => {
                        return self.on_est_outcome(
                            now,
                            EstOutcome::Failed {
                                operation,
                                reason: format!("CSR: {e}"),
                            },
                        )
                    }
                };
                self.est.pending_key = Some(key);
                Some(csr)
            }
            _ => None,
        };
        let Some(b) = self.bootstrap.as_mut() else {
            return;
        };
        b.stage = stage;
        let ep = &mut b.session.endpoint;
        let sent = match (stage, csr) {
            (Stage::CaCerts, _) => b.est.request_cacerts(now.mono, ep),
            (Stage::Enrolling, Some(csr)) => {
                b.est
                    .request_enrollment(now.mono, ep, EstOperation::Enroll, csr)
            }
            (Stage::Reenrolling, Some(csr)) => {
                b.est
                    .request_enrollment(now.mono, ep, EstOperation::Reenroll, csr)
            }
            _ => None,
        };
        if let Some(o) = sent {
            self.on_est_outcome(now, o);
        }
    }

    fn on_est_outcome(&mut self, now: Now, o: EstOutcome) {
        let stage = self.bootstrap.as_ref().map_or(Stage::Idle, |b| b.stage);
        match o {
            EstOutcome::CaCerts(certs) => {
                self.est.state.cacerts = certs;
                if self.est_account_count() > 0 {
                    self.start_est(now, Stage::Enrolling);
                } else {
                    self.provisioning_done(now);
                }
            }
            EstOutcome::Enrolled(e) => {
                let key = self.est.pending_key.take().or(self.est.state.key.take());
                let reenroll = stage == Stage::Reenrolling;
                self.events.push_back(Event::EstEnrolled {
                    reenrollment: reenroll,
                    serial: e.certificate.serial_hex(),
                    not_after: e.certificate.not_after(),
                });
                self.est.state.key = key;
                self.est.state.certificate = Some(e.certificate);
                self.est.state.chain = e.chain;
                self.est.state.provisioned_at = Some(now.utc);
                self.est.sren_failures = 0;
                if reenroll {
                    if let Some(b) = self.bootstrap.as_mut() {
                        b.stage = Stage::Idle;
                    }
                    self.reconnect_est_sessions(now);
                } else {
                    self.provisioning_done(now);
                }
            }
            EstOutcome::Failed { operation, reason } => {
                self.est.pending_key = None;
                self.events.push_back(Event::EstFailed {
                    operation: format!("{operation:?}"),
                    reason: reason.clone(),
                });
                if stage == Stage::Reenrolling || operation == EstOperation::Reenroll {
                    self.est.sren_failures += 1;
                    if let Some(b) = self.bootstrap.as_mut() {
                        b.stage = Stage::Idle;
                    }
                } else if let Some(b) = self.bootstrap.as_mut() {
                    // Enrollment after bootstrap failed: bootstrap again after the back-off.
                    b.stage = Stage::Bootstrapping;
                    let ev = b.session.report_failure(now.mono, format!("EST: {reason}"));
                    self.on_bootstrap_event(now, ev);
                }
            }
        }
    }

    /// Bootstrap (and EST) is complete: register with the servers it gave us.
    fn provisioning_done(&mut self, now: Now) {
        if let Some(b) = self.bootstrap.as_mut() {
            b.stage = Stage::Idle;
            b.flush_before_close(now);
            b.session.endpoint.cancel_all();
            b.channel.close(now);
        }
        if let Err(e) = self.open_sessions(now) {
            warn!("after bootstrap: {e}");
            if let Some(b) = self.bootstrap.as_mut() {
                b.stage = Stage::Bootstrapping;
                let ev = b.session.report_failure(now.mono, e);
                self.on_bootstrap_event(now, ev);
            }
        }
    }

    /// After re-enrollment every connection that uses the EST certificate starts again: a
    /// new DTLS handshake with the new certificate, then Register.
    fn reconnect_est_sessions(&mut self, now: Now) {
        for i in 0..self.sessions.len() {
            let ssid = self.sessions[i].ssid;
            let Some((_, sec)) = self
                .dm
                .security
                .management_accounts()
                .find(|(_, s)| s.ssid == Some(ssid))
                .map(|(i, s)| (i, s.clone()))
            else {
                continue;
            };
            if sec.security_mode != SecurityMode::CertificateWithEst {
                continue;
            }
            match self.channel_for(&sec, &self.sessions[i].uri.clone()) {
                Ok(ch) => {
                    self.channels[i].close(now);
                    // The old channel's close_notify goes out before the new handshake.
                    while let Some(d) = self.channels[i].poll_transmit() {
                        self.pending_raw.push_back((Self::conn_of(ssid), d));
                    }
                    self.channels[i] = ch;
                    self.sessions[i].restart(now.mono);
                    info!("ssid={ssid}: reconnecting with the re-enrolled certificate");
                }
                Err(e) => warn!("ssid={ssid}: cannot reconnect after re-enrollment: {e}"),
            }
        }
        // The bootstrap connection authenticates with the EST certificate too.
        if let Some((_, sec)) = self.bootstrap_account() {
            if sec.security_mode == SecurityMode::CertificateWithEst {
                if let Some(uri) = self.bootstrap.as_ref().map(|b| b.session.uri.clone()) {
                    if let Ok(ch) = self.channel_for(&sec, &uri) {
                        if let Some(b) = self.bootstrap.as_mut() {
                            b.flush_before_close(now);
                            b.channel.close(now);
                            while let Some(d) = b.channel.poll_transmit() {
                                self.pending_raw.push_back((ConnectionId::BOOTSTRAP, d));
                            }
                            b.channel = ch;
                        }
                    }
                }
            }
        }
    }

    /// Starts `/est/sren` when the schedule says so; falls back to bootstrap and `/est/sen`
    /// when every attempt failed or the certificate expired.
    fn check_reenrollment(&mut self, now: Now) {
        if self.shutting_down || !self.est.state.is_enrolled() {
            return;
        }
        let expired = self
            .est
            .state
            .certificate
            .as_ref()
            .is_some_and(|c| c.not_after() <= now.utc);
        let stage = self
            .bootstrap
            .as_ref()
            .map(|b| (b.stage, b.stage != Stage::Idle || b.est.in_progress()));
        match stage {
            // A /sren still waiting at expiry (told 5.03 with a long Max-Age, say) is given
            // up: the device must not keep an expired credential while it waits.
            Some((Stage::Reenrolling, true)) if expired => {
                if let Some(b) = self.bootstrap.as_mut() {
                    b.est.cancel(now.mono, &mut b.session.endpoint);
                    b.stage = Stage::Idle;
                }
                return self.est_fallback(now, "the EST certificate expired during /est/sren");
            }
            Some((_, true)) => return,
            _ => {}
        }
        let Some(sched) = self.est.state.reenroll_schedule(&self.cfg.est_reenroll) else {
            if expired {
                self.est_fallback(now, "the EST certificate expired");
            }
            return;
        };
        match sched.attempt_after_failures(self.est.sren_failures) {
            _ if expired => self.est_fallback(now, "the EST certificate expired"),
            None => self.est_fallback(now, "every re-enrollment attempt failed"),
            Some(at) if at <= now.utc => self.begin_reenrollment(now),
            Some(_) => {}
        }
    }

    fn est_fallback(&mut self, now: Now, why: &str) {
        warn!("EST: {why}; the credential is purged and the client bootstraps again");
        self.est.state.purge();
        self.est.pending_key = None;
        self.est.sren_failures = 0;
        if let Err(e) = self.begin_bootstrap(now, true) {
            warn!("cannot bootstrap: {e}");
        }
    }

    /// Opens the bootstrap connection with the current EST certificate and sends `/sren`.
    fn begin_reenrollment(&mut self, now: Now) {
        let Some((_, sec)) = self.bootstrap_account() else {
            return;
        };
        let uri = match ServerUri::parse(&sec.server_uri) {
            Ok(u) => u,
            Err(e) => return warn!("EST re-enrollment: bootstrap URI: {e}"),
        };
        // /sren is authenticated by the certificate being renewed, whatever the bootstrap
        // account's own mode.
        let mut as_est = sec.clone();
        as_est.security_mode = SecurityMode::CertificateWithEst;
        let mut as_est = SecurityInstance {
            bootstrap_server: false,
            ..as_est
        };
        // A PSK bootstrap account names no server certificate: verify the bootstrap server
        // against the EST CA certificates from /est/crts instead (trust anchor assertion).
        if as_est.server_public_key.is_empty() {
            if let Some(ca) = self.est.state.cacerts.first() {
                as_est.server_public_key = ca.der().to_vec();
                as_est.certificate_usage = Some(2);
            }
        }
        let channel = match self.channel_for(&as_est, &uri) {
            Ok(c) => c,
            Err(e) => {
                // Counted as a failed attempt, so the schedule moves on (never a busy loop).
                return self.on_est_outcome(
                    now,
                    EstOutcome::Failed {
                        operation: EstOperation::Reenroll,
                        reason: format!("cannot open the connection: {e}"),
                    },
                );
            }
        };
        if self.bootstrap.is_none() {
            let endpoint = self.new_endpoint(&channel);
            let mut session = BootstrapSession::new(uri, endpoint, now.mono, Duration::ZERO);
            session.mark_finished();
            self.bootstrap = Some(BootstrapLink {
                session,
                channel,
                est: EstClient::new("/est"),
                stage: Stage::Idle,
            });
        } else if let Some(b) = self.bootstrap.as_mut() {
            b.flush_before_close(now);
            b.channel.close(now);
            while let Some(d) = b.channel.poll_transmit() {
                self.pending_raw.push_back((ConnectionId::BOOTSTRAP, d));
            }
            b.channel = channel;
        }
        info!("EST: re-enrolling");
        self.start_est(now, Stage::Reenrolling);
    }

    /// When the bootstrap side next needs a call: its session and channel timers, a 5.03
    /// wait, or the next re-enrollment attempt (wall-clock time mapped onto `now`).
    pub(super) fn bootstrap_deadline(&self) -> Option<Instant> {
        let now = self.last_now;
        let link = self.bootstrap.as_ref().and_then(|b| {
            [
                b.session.poll_timeout(),
                b.channel.poll_timeout(),
                b.est.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
        });
        let sren = if self.est.state.is_enrolled() && !self.shutting_down {
            // While an exchange is under way (a 5.03 wait, say) its own timers count, and a
            // past attempt time must not make the caller spin; only expiry interrupts it.
            let busy = self
                .bootstrap
                .as_ref()
                .is_some_and(|b| b.stage != Stage::Idle || b.est.in_progress());
            let next = if busy { None } else { self.next_reenrollment() };
            let expiry = self
                .est
                .state
                .certificate
                .as_ref()
                .map(|c| c.not_after())
                .filter(|t| !busy || *t > now.utc);
            let at = next.into_iter().chain(expiry);
            at.min().map(|t| {
                let ms = t.unix_millis().saturating_sub(now.utc.unix_millis()).max(0) as u64;
                now.mono + Duration::from_millis(ms)
            })
        } else {
            None
        };
        [link, sren].into_iter().flatten().min()
    }

    /// Registration has failed on every server (the Server object's retry resources,
    /// `RetryPolicy`): go back to the Bootstrap-Server, if there is one.
    pub(super) fn check_bootstrap_fallback(&mut self, now: Now) {
        if self.shutting_down
            || self.sessions.is_empty()
            || self
                .bootstrap
                .as_ref()
                .is_some_and(|b| b.stage == Stage::Bootstrapping)
            || !self.has_bootstrap_account()
        {
            return;
        }
        // Every server's registration failed (all its communication sequences, /1/x/17..20)
        // and each allows bootstrap on registration failure (/1/x/16).
        if self
            .sessions
            .iter()
            .all(|s| s.registration_failed() && s.retry_policy().bootstrap_on_failure)
        {
            // Each fall-back in a row waits longer (1 min doubling to 1 h), so a dead
            // network never cycles bootstrap and registration quickly.
            let wait = (FALLBACK_BASE * (1u32 << self.est.fallbacks.min(6))).min(FALLBACK_MAX);
            self.est.fallbacks = self.est.fallbacks.saturating_add(1);
            warn!(
                "no management server reachable; bootstrapping again in {}s",
                wait.as_secs()
            );
            if let Err(e) = self.begin_bootstrap_after(now, false, wait) {
                warn!("cannot bootstrap: {e}");
            }
        }
    }
}
