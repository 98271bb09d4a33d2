//! One management-server session: its CoAP [`Endpoint`] and the registration state machine
//! (RFC-style explicit states: Idle → Registering → Registered ⇄ Updating → Deregistering).
//!
//! The session decides *when* to Register, Update and De-register; the client feeds it
//! endpoint events and answers inbound requests from the data model.

use core::time::Duration;

use log::{debug, info, warn};

use crate::coap::{
    self, code, content_format, Endpoint, EndpointEvent, ExchangeError, InboundRequest,
    RequestHandle,
};
use crate::time::Instant;

use super::uri::ServerUri;
use crate::dm::objects::ServerInstance;

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not registered; the next attempt is due at `retry_at`.
    Idle {
        retry_at: Instant,
    },
    Registering {
        handle: RequestHandle,
    },
    Registered {
        location: Vec<String>,
        update_at: Instant,
        expires_at: Instant,
    },
    Updating {
        handle: RequestHandle,
        location: Vec<String>,
        expires_at: Instant,
    },
    Deregistering {
        handle: RequestHandle,
    },
    Deregistered,
}

/// What the session reports to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    Registered { location: String },
    Updated,
    RegistrationFailed { reason: String },
    Deregistered,
}

/// Registration parameters that an Update must carry when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationParams {
    pub endpoint_name: String,
    pub lifetime: u32,
    pub binding: String,
    pub lwm2m_version: &'static str,
    pub object_links: String,
}

/// Shortest wait between two registration attempts, whatever the Server object says, so a
/// server that refuses at once never gets a tight loop.
const MIN_RETRY_WAIT: Duration = Duration::from_secs(1);
/// Shortest wait between two communication sequences (a Communication Sequence Delay
/// Timer of 0 would otherwise restart the sequence at once, forever).
const MIN_SEQUENCE_DELAY: Duration = Duration::from_secs(60);
/// Largest exponent of the retry back-off (2^16 × the timer is far beyond any sane wait).
const MAX_BACKOFF_EXPONENT: u32 = 16;

/// How registration attempts to one server are retried: the Server object's /1/x/16..20
/// (LwM2M 1.1 TS §6.2.1.1 and Appendix E.2), with the specification's defaults for
/// resources that are not set.
///
/// A *communication sequence* is `retry_count` attempts; after the n-th failed attempt of a
/// sequence the next one waits `retry_timer × 2^(n−1)`. After a failed sequence the next
/// one starts `sequence_delay` later; after `sequence_retry_count` failed sequences the
/// registration has failed, and the client bootstraps again if `bootstrap_on_failure`
/// (and every other server failed too). Otherwise sequences go on, `sequence_delay` apart.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// /1/x/17 Communication Retry Count (default 5, at least 1).
    pub retry_count: u32,
    /// /1/x/18 Communication Retry Timer (default 60 s).
    pub retry_timer: Duration,
    /// /1/x/19 Communication Sequence Delay Timer (default 86400 s); `None` for its
    /// MAX_VALUE, "do not perform another communication sequence".
    pub sequence_delay: Option<Duration>,
    /// /1/x/20 Communication Sequence Retry Count (default 1, at least 1).
    pub sequence_retry_count: u32,
    /// /1/x/16 Bootstrap on Registration Failure (default true).
    pub bootstrap_on_failure: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_count: 5,
            retry_timer: Duration::from_secs(60),
            sequence_delay: Some(Duration::from_secs(86_400)),
            sequence_retry_count: 1,
            bootstrap_on_failure: true,
        }
    }
}

impl RetryPolicy {
    /// The policy of a Server instance: its /1/x/16..20, defaults for what is unset.
    pub fn from_server(srv: &ServerInstance) -> Self {
        let d = RetryPolicy::default();
        let secs = |s: u64| Duration::from_secs(s.min(u64::from(u32::MAX)));
        let count = |n: Option<u64>, default: u32| {
            n.map_or(default, |n| u32::try_from(n).unwrap_or(u32::MAX).max(1))
        };
        RetryPolicy {
            retry_count: count(srv.communication_retry_count, d.retry_count),
            retry_timer: srv.communication_retry_timer.map_or(d.retry_timer, secs),
            sequence_delay: match srv.communication_sequence_delay_timer {
                None => d.sequence_delay,
                Some(s) if s >= u64::from(u32::MAX) => None,
                Some(s) => Some(secs(s)),
            },
            sequence_retry_count: count(
                srv.communication_sequence_retry_count,
                d.sequence_retry_count,
            ),
            bootstrap_on_failure: srv
                .bootstrap_on_registration_failure
                .unwrap_or(d.bootstrap_on_failure),
        }
    }

    /// The wait after the `n`-th failed attempt of a sequence (n ≥ 1) when another attempt
    /// of the same sequence follows.
    pub fn retry_wait(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(MAX_BACKOFF_EXPONENT);
        self.retry_timer
            .saturating_mul(1u32 << exp)
            .max(MIN_RETRY_WAIT)
    }

    /// The wait before the next sequence, or `None` when no further sequence is allowed.
    pub fn sequence_wait(&self) -> Option<Duration> {
        self.sequence_delay.map(|d| d.max(MIN_SEQUENCE_DELAY))
    }
}

/// One management server.
#[derive(Debug)]
pub struct ServerSession {
    pub ssid: u16,
    pub uri: ServerUri,
    pub endpoint: Endpoint,
    state: RegistrationState,
    /// The parameters the server currently has (as last registered or updated).
    registered: Option<RegistrationParams>,
    /// Parameters in flight with an Update.
    pending: Option<RegistrationParams>,
    failures: u32,
    /// Failed attempts in the current communication sequence.
    seq_attempts: u32,
    /// Failed sequences of the current registration attempt.
    sequences: u32,
    /// Every sequence of a registration attempt failed (until the next success).
    registration_failed: bool,
    /// No further attempt: the sequences are exhausted and the Sequence Delay Timer says
    /// never again.
    stopped: bool,
    retry: RetryPolicy,
    update_requested: bool,
    /// When the Register or Update in flight was sent: the server starts the lifetime when
    /// it receives it, which is no earlier, so the lifetime is counted from here.
    sent_at: Instant,
    /// Set by Disable (/1/x/4): once deregistered, register again at this time.
    reenable_at: Option<Instant>,
}

impl ServerSession {
    pub fn new(ssid: u16, uri: ServerUri, endpoint: Endpoint, now: Instant) -> Self {
        ServerSession {
            ssid,
            uri,
            endpoint,
            state: RegistrationState::Idle { retry_at: now },
            registered: None,
            pending: None,
            failures: 0,
            seq_attempts: 0,
            sequences: 0,
            registration_failed: false,
            stopped: false,
            retry: RetryPolicy::default(),
            update_requested: false,
            sent_at: now,
            reenable_at: None,
        }
    }

    pub fn state(&self) -> &RegistrationState {
        &self.state
    }

    pub fn is_registered(&self) -> bool {
        matches!(
            self.state,
            RegistrationState::Registered { .. } | RegistrationState::Updating { .. }
        )
    }

    /// Starts over: forgets the registration (the connection under it is new) and sends a
    /// Register at once.
    pub fn restart(&mut self, now: Instant) {
        self.endpoint.cancel_all();
        self.registered = None;
        self.pending = None;
        self.reset_retries();
        self.update_requested = false;
        self.state = RegistrationState::Idle { retry_at: now };
    }

    fn reset_retries(&mut self) {
        self.failures = 0;
        self.seq_attempts = 0;
        self.sequences = 0;
        self.registration_failed = false;
        self.stopped = false;
    }

    /// Registration attempts that failed in a row (0 once registered).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Sets how failed attempts are retried (from the Server object; takes effect at the
    /// next failure).
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        self.retry = policy;
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// True once every communication sequence of the registration failed (until the next
    /// successful registration): the moment to fall back to bootstrap, if allowed.
    pub fn registration_failed(&self) -> bool {
        self.registration_failed
    }

    /// True when the session makes no further attempt (sequences exhausted, no next one).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// How long before expiry an Update is sent: half the lifetime for short lifetimes,
    /// otherwise MAX_TRANSMIT_WAIT, so even a fully retransmitted Update lands in time.
    pub fn update_margin(&self, lifetime: u32) -> Duration {
        let half = Duration::from_secs(u64::from(lifetime)) / 2;
        half.min(self.endpoint.params().max_transmit_wait())
    }

    /// Asks for an Update at the next opportunity (Registration Update Trigger, API call).
    pub fn request_update(&mut self) {
        self.update_requested = true;
    }

    fn send_register(&mut self, now: Instant, p: &RegistrationParams) {
        let mut req = coap::new_request(code::POST, "/rd");
        coap::add_uri_query(&mut req, &format!("ep={}", p.endpoint_name));
        coap::add_uri_query(&mut req, &format!("lt={}", p.lifetime));
        coap::add_uri_query(&mut req, &format!("lwm2m={}", p.lwm2m_version));
        coap::add_uri_query(&mut req, &format!("b={}", p.binding));
        coap::set_content_format(&mut req, content_format::LINK_FORMAT);
        req.payload = p.object_links.as_bytes().to_vec();
        match self.endpoint.send_request(now, req, true) {
            Ok(handle) => {
                debug!("ssid={} Register sent to {}", self.ssid, self.uri);
                self.pending = Some(p.clone());
                self.sent_at = now;
                self.state = RegistrationState::Registering { handle };
            }
            Err(e) => {
                self.fail(now, format!("Register could not be sent: {e}"));
            }
        }
    }

    fn send_update(
        &mut self,
        now: Instant,
        location: Vec<String>,
        expires_at: Instant,
        p: &RegistrationParams,
    ) {
        let mut req = coap::new_request(code::POST, &location.join("/"));
        let old = self.registered.as_ref();
        if old.is_none_or(|o| o.lifetime != p.lifetime) {
            coap::add_uri_query(&mut req, &format!("lt={}", p.lifetime));
        }
        if old.is_none_or(|o| o.binding != p.binding) {
            coap::add_uri_query(&mut req, &format!("b={}", p.binding));
        }
        if old.is_none_or(|o| o.object_links != p.object_links) {
            coap::set_content_format(&mut req, content_format::LINK_FORMAT);
            req.payload = p.object_links.as_bytes().to_vec();
        }
        match self.endpoint.send_request(now, req, true) {
            Ok(handle) => {
                debug!("ssid={} Update sent", self.ssid);
                self.pending = Some(p.clone());
                self.sent_at = now;
                self.state = RegistrationState::Updating {
                    handle,
                    location,
                    expires_at,
                };
            }
            Err(e) => {
                self.fail(now, format!("Update could not be sent: {e}"));
            }
        }
    }

    fn fail(&mut self, now: Instant, reason: String) -> Option<SessionEvent> {
        self.failures = self.failures.saturating_add(1);
        self.seq_attempts = self.seq_attempts.saturating_add(1);
        self.registered = None;
        self.pending = None;
        let policy = self.retry;
        let wait = if self.seq_attempts < policy.retry_count.max(1) {
            Some(policy.retry_wait(self.seq_attempts))
        } else {
            // This communication sequence failed.
            self.seq_attempts = 0;
            self.sequences = self.sequences.saturating_add(1);
            if self.sequences >= policy.sequence_retry_count.max(1) {
                self.sequences = 0;
                self.registration_failed = true;
                warn!(
                    "ssid={}: registration failed after {} communication sequence(s)",
                    self.ssid,
                    policy.sequence_retry_count.max(1)
                );
            }
            policy.sequence_wait()
        };
        match wait {
            Some(wait) => {
                warn!(
                    "ssid={} registration failed ({reason}); retrying in {}s",
                    self.ssid,
                    wait.as_secs()
                );
                self.state = RegistrationState::Idle {
                    retry_at: now + wait,
                };
            }
            None => {
                warn!(
                    "ssid={} registration failed ({reason}); the Communication Sequence \
                     Delay Timer allows no further sequence",
                    self.ssid
                );
                self.stopped = true;
                self.state = RegistrationState::Idle { retry_at: now };
            }
        }
        Some(SessionEvent::RegistrationFailed { reason })
    }

    /// Disable (/1/x/4): de-register now, and register again `timeout_s` seconds later.
    pub fn disable(&mut self, now: Instant, timeout_s: u32) {
        info!("ssid={} disabled for {timeout_s}s", self.ssid);
        self.deregister(now);
        self.reenable_at = Some(now + Duration::from_secs(u64::from(timeout_s)));
    }

    /// True while a Disable keeps this session deregistered.
    pub fn is_disabled(&self) -> bool {
        self.reenable_at.is_some()
    }

    /// Drives timers: first/retried Register, and Update when due or requested or when the
    /// parameters changed.
    pub fn on_timeout(&mut self, now: Instant, params: &RegistrationParams) {
        self.endpoint.handle_timeout(now);
        if let Some(at) = self.reenable_at {
            if at > now || !matches!(self.state, RegistrationState::Deregistered) {
                return;
            }
            self.reenable_at = None;
            self.reset_retries();
            self.registered = None;
            self.pending = None;
            self.state = RegistrationState::Idle { retry_at: now };
        }
        match self.state.clone() {
            RegistrationState::Idle { retry_at } if retry_at <= now && !self.stopped => {
                self.send_register(now, params)
            }
            RegistrationState::Registered {
                location,
                update_at,
                expires_at,
            } => {
                let changed = self.registered.as_ref() != Some(params);
                if update_at <= now || changed || self.update_requested {
                    self.update_requested = false;
                    self.send_update(now, location, expires_at, params);
                }
            }
            _ => {}
        }
    }

    /// Handles one endpoint event; inbound requests are handed back to the caller.
    pub fn on_endpoint_event(
        &mut self,
        now: Instant,
        ev: EndpointEvent,
    ) -> (Option<SessionEvent>, Option<InboundRequest>) {
        match ev {
            EndpointEvent::Request(r) => (None, Some(r)),
            EndpointEvent::Delivered { .. } => (None, None),
            // The client never observes; nothing to route (C4 added the variant).
            EndpointEvent::Notification { .. } => (None, None),
            EndpointEvent::Response { handle, packet } => {
                (self.on_response(now, handle, &packet), None)
            }
            EndpointEvent::Failed { handle, error } => (self.on_failure(now, handle, error), None),
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        packet: &coap::Packet,
    ) -> Option<SessionEvent> {
        let rc = coap::raw_code(packet);
        match self.state.clone() {
            RegistrationState::Registering { handle: h } if h == handle => {
                if rc != code::CREATED {
                    return self.fail(
                        now,
                        format!("server answered Register with {}", code::to_string(rc)),
                    );
                }
                let location = match coap::location_path(packet) {
                    Some(l) if !l.is_empty() => l,
                    _ => return self.fail(now, "Register response has no Location-Path".into()),
                };
                let params = self.pending.take()?;
                self.enter_registered(self.sent_at, location.clone(), &params);
                self.registered = Some(params);
                self.reset_retries();
                info!("ssid={} registered at /{}", self.ssid, location.join("/"));
                Some(SessionEvent::Registered {
                    location: format!("/{}", location.join("/")),
                })
            }
            RegistrationState::Updating {
                handle: h,
                location,
                ..
            } if h == handle => {
                if code::is_success(rc) {
                    let params = self.pending.take()?;
                    self.enter_registered(self.sent_at, location, &params);
                    self.registered = Some(params);
                    debug!("ssid={} registration updated", self.ssid);
                    Some(SessionEvent::Updated)
                } else {
                    // 4.04 means the server forgot us: register afresh (as for any other error).
                    info!(
                        "ssid={} Update answered {}; registering again",
                        self.ssid,
                        code::to_string(rc)
                    );
                    self.registered = None;
                    self.pending = None;
                    self.state = RegistrationState::Idle { retry_at: now };
                    None
                }
            }
            RegistrationState::Deregistering { handle: h } if h == handle => {
                self.state = RegistrationState::Deregistered;
                info!("ssid={} deregistered ({})", self.ssid, code::to_string(rc));
                Some(SessionEvent::Deregistered)
            }
            _ => None,
        }
    }

    fn on_failure(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        error: ExchangeError,
    ) -> Option<SessionEvent> {
        match self.state.clone() {
            RegistrationState::Registering { handle: h } if h == handle => {
                self.fail(now, format!("Register: {error}"))
            }
            RegistrationState::Updating { handle: h, .. } if h == handle => {
                // Re-register rather than give up: the registration may still be alive.
                self.fail(now, format!("Update: {error}"))
            }
            RegistrationState::Deregistering { handle: h } if h == handle => {
                self.state = RegistrationState::Deregistered;
                Some(SessionEvent::Deregistered)
            }
            _ => None,
        }
    }

    fn enter_registered(&mut self, now: Instant, location: Vec<String>, p: &RegistrationParams) {
        let lifetime = Duration::from_secs(u64::from(p.lifetime));
        self.state = RegistrationState::Registered {
            location,
            update_at: now + lifetime - self.update_margin(p.lifetime),
            expires_at: now + lifetime,
        };
    }

    /// Sends De-register if registered; otherwise ends the session at once.
    pub fn deregister(&mut self, now: Instant) {
        let location = match &self.state {
            RegistrationState::Registered { location, .. }
            | RegistrationState::Updating { location, .. } => location.clone(),
            _ => {
                self.endpoint.cancel_all();
                self.state = RegistrationState::Deregistered;
                return;
            }
        };
        self.endpoint.cancel_all();
        match self.endpoint.send_request(
            now,
            coap::new_request(code::DELETE, &location.join("/")),
            true,
        ) {
            Ok(handle) => self.state = RegistrationState::Deregistering { handle },
            Err(_) => self.state = RegistrationState::Deregistered,
        }
    }

    /// When this session next needs `on_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match &self.state {
            RegistrationState::Idle { .. } if self.stopped => None,
            RegistrationState::Idle { retry_at } => Some(*retry_at),
            RegistrationState::Registered { update_at, .. } => Some(*update_at),
            RegistrationState::Deregistered => self.reenable_at,
            _ => None,
        };
        [own, self.endpoint.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_from_the_server_object() {
        let mut srv = ServerInstance::new(1, 60);
        assert_eq!(RetryPolicy::from_server(&srv), RetryPolicy::default());
        let d = RetryPolicy::default();
        assert_eq!(d.retry_wait(1), Duration::from_secs(60));
        assert_eq!(d.retry_wait(4), Duration::from_secs(480));
        assert_eq!(d.sequence_wait(), Some(Duration::from_secs(86_400)));
        srv.communication_retry_timer = Some(0);
        srv.communication_sequence_delay_timer = Some(0);
        srv.bootstrap_on_registration_failure = Some(false);
        let p = RetryPolicy::from_server(&srv);
        // Never a tight loop: at least 1 s between attempts, 60 s between sequences.
        assert_eq!(p.retry_wait(1), MIN_RETRY_WAIT);
        assert_eq!(p.sequence_wait(), Some(MIN_SEQUENCE_DELAY));
        assert!(!p.bootstrap_on_failure);
        srv.communication_sequence_delay_timer = Some(u64::from(u32::MAX));
        assert_eq!(RetryPolicy::from_server(&srv).sequence_wait(), None);
        srv.communication_retry_timer = Some(u64::MAX);
        assert!(RetryPolicy::from_server(&srv).retry_wait(40) > Duration::from_secs(1 << 40));
    }
}
