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

/// Back-off for failed registrations: first retry after this, doubling.
const RETRY_BASE: Duration = Duration::from_secs(30);
/// Upper bound of the back-off, so a dead network never leads to a tight loop.
const RETRY_MAX: Duration = Duration::from_secs(3600);

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
        let backoff = RETRY_BASE
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(RETRY_MAX);
        warn!(
            "ssid={} registration failed ({reason}); retrying in {}s",
            self.ssid,
            backoff.as_secs()
        );
        self.registered = None;
        self.pending = None;
        self.state = RegistrationState::Idle {
            retry_at: now + backoff,
        };
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
            self.registered = None;
            self.pending = None;
            self.state = RegistrationState::Idle { retry_at: now };
        }
        match self.state.clone() {
            RegistrationState::Idle { retry_at } if retry_at <= now => {
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
                self.failures = 0;
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
