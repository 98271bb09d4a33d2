//! [`Client`]: the sans-IO LwM2M client. It owns the data model and one session per
//! management server, and is driven entirely from outside: datagrams in through
//! [`Client::handle_datagram`], time through [`Client::handle_timeout`], datagrams out
//! through [`Client::poll_transmit`], the next deadline from [`Client::poll_timeout`],
//! and what happened from [`Client::poll_event`] (quinn-proto's shape).
//!
//! It never reads a clock or touches a socket; `io::Driver` and the simulator do.

mod provisioning;

use std::collections::{BTreeMap, VecDeque};

use log::{debug, info, warn};

use crate::coap::{self, EndpointEvent, InboundRequest, TxParams};
use crate::crypto::{Drbg, TrustStore};
use crate::dm::{link, DataModel, Object, Path};
use crate::dtls::HandshakeTimers;
use crate::error::Error;
use crate::est::{CacertsPolicy, ReenrollConfig};
use crate::lwm2m::registration::{RegistrationParams, RetryPolicy, SessionEvent};
use crate::lwm2m::server_dm::ServerDm;
use crate::lwm2m::transport::{ChannelEvent, SecureChannel};
use crate::lwm2m::{RegistrationState, ServerSession, ServerUri};
use crate::rng::RandomSource;
use crate::time::UtcTime;
use crate::time::{Instant, Now};

/// The largest datagram a DTLS connection takes: a full 16 KiB record plus its header and
/// the largest expansion of our cipher suites.
pub(crate) const MAX_DTLS_DATAGRAM: usize = 16384 + 13 + 256;

/// Identifies the connection a datagram belongs to (one per server account): the SSID for
/// a management server, [`ConnectionId::BOOTSTRAP`] for the Bootstrap-Server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl ConnectionId {
    /// The Bootstrap-Server's connection (SSID 0 is never a management server's).
    pub const BOOTSTRAP: ConnectionId = ConnectionId(0);
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub conn: ConnectionId,
    pub data: Vec<u8>,
}

/// Something the application may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered {
        ssid: u16,
        location: String,
    },
    RegistrationUpdated {
        ssid: u16,
    },
    RegistrationFailed {
        ssid: u16,
        reason: String,
    },
    Deregistered {
        ssid: u16,
    },
    /// The server executed Reboot (/3/0/4).
    RebootRequested,
    /// The Bootstrap-Server's configuration was accepted (Bootstrap-Finish answered 2.04).
    BootstrapFinished,
    /// A bootstrap attempt failed; another follows after the back-off.
    BootstrapFailed {
        reason: String,
    },
    /// EST gave us a certificate (`reenrollment`: through `/est/sren`).
    EstEnrolled {
        reenrollment: bool,
        serial: String,
        not_after: UtcTime,
    },
    /// An EST exchange failed; the previous credential (if any) stays in use.
    EstFailed {
        operation: String,
        reason: String,
    },
    /// A connection is no longer used; the driver may close its socket.
    ConnectionClosed {
        conn: ConnectionId,
    },
    /// A DTLS session with the server is up.
    SecureConnectionEstablished {
        ssid: u16,
        cipher_suite: String,
        resumed: bool,
    },
    /// A DTLS handshake failed (the reason names what was refused); the registration attempt
    /// it carried fails and is retried with the usual back-off.
    SecureConnectionFailed {
        ssid: u16,
        reason: String,
    },
}

/// Client configuration (the Rust counterpart of `estuary_configuration_t`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    pub endpoint_name: String,
    /// Largest datagram accepted; bigger ones are dropped.
    pub in_buffer_size: usize,
    /// Largest datagram sent.
    pub out_buffer_size: usize,
    /// Bytes of responses kept for answering retransmitted requests.
    pub msg_cache_size: usize,
    pub udp_tx_params: TxParams,
    /// DTLS handshake retransmission timers (RFC 6347: 1 s doubling to 60 s).
    pub udp_dtls_hs_tx_params: HandshakeTimers,
    /// Trust anchors for server certificates besides the Security object's /0/x/4 (used
    /// by Certificate Usage 0 and 1, and added to the /0/x/4 anchor otherwise).
    pub trust_store_certs: TrustStore,
    /// Send Observe notifications as confirmable messages (default: non-confirmable).
    pub confirmable_notifications: bool,
    /// When and how the EST certificate is renewed.
    pub est_reenroll: ReenrollConfig,
    /// When `/est/crts` is fetched and what its certificates are trusted for.
    pub est_cacerts_policy: CacertsPolicy,
}

impl ClientConfig {
    pub const DEFAULT_IN_BUFFER_SIZE: usize = 4000;
    pub const DEFAULT_OUT_BUFFER_SIZE: usize = 4000;
    pub const DEFAULT_MSG_CACHE_SIZE: usize = 4000;
    /// Smallest buffer that holds a CoAP header, options and a 16-byte block.
    pub const MIN_BUFFER_SIZE: usize = 128;

    pub fn new(endpoint_name: &str) -> Self {
        ClientConfig {
            endpoint_name: endpoint_name.to_string(),
            in_buffer_size: Self::DEFAULT_IN_BUFFER_SIZE,
            out_buffer_size: Self::DEFAULT_OUT_BUFFER_SIZE,
            msg_cache_size: Self::DEFAULT_MSG_CACHE_SIZE,
            udp_tx_params: TxParams::default(),
            udp_dtls_hs_tx_params: HandshakeTimers::default(),
            trust_store_certs: TrustStore::new(),
            confirmable_notifications: false,
            est_reenroll: ReenrollConfig::default(),
            est_cacerts_policy: CacertsPolicy::default(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let ep = &self.endpoint_name;
        if ep.is_empty() || ep.len() > 255 {
            return Err(Error::Config("endpoint_name must be 1 to 255 bytes".into()));
        }
        if !ep
            .chars()
            .all(|c| c.is_ascii_graphic() && !"&?#/\"\\".contains(c))
        {
            return Err(Error::Config(
                "endpoint_name must be printable ASCII without spaces or & ? # / \" \\".into(),
            ));
        }
        if self.in_buffer_size < Self::MIN_BUFFER_SIZE
            || self.out_buffer_size < Self::MIN_BUFFER_SIZE
        {
            return Err(Error::Config(format!(
                "in_buffer_size and out_buffer_size must be at least {}",
                Self::MIN_BUFFER_SIZE
            )));
        }
        Ok(())
    }
}

/// The LwM2M client core.
pub struct Client {
    cfg: ClientConfig,
    rng: Box<dyn RandomSource>,
    dm: DataModel,
    sessions: Vec<ServerSession>,
    /// The security layer of each session's connection (same index as `sessions`).
    channels: Vec<SecureChannel>,
    /// Randomness for DTLS handshakes: seeded from `rng` unless replaced
    /// ([`Client::set_dtls_rng`]).
    drbg: Drbg,
    /// The time of the last call that passed one, for work done in `poll_transmit`.
    last_now: Now,
    events: VecDeque<Event>,
    started: bool,
    shutting_down: bool,
    next_conn_poll: usize,
    /// Attributes and observations per server (SSID).
    server_dm: BTreeMap<u16, ServerDm>,
    /// The Bootstrap-Server connection, while bootstrap or EST needs it.
    bootstrap: Option<provisioning::BootstrapLink>,
    est: provisioning::EstRuntime,
    /// Datagrams of connections being replaced (their close_notify), sent before others.
    pending_raw: VecDeque<(ConnectionId, Vec<u8>)>,
}

impl Client {
    /// A client with an empty data model (Device object defaults, no servers).
    pub fn new(cfg: ClientConfig, rng: Box<dyn RandomSource>) -> Result<Client, Error> {
        let mut cfg = cfg;
        cfg.udp_tx_params = cfg.udp_tx_params.sanitized();
        cfg.validate()?;
        let dtls = &cfg.udp_dtls_hs_tx_params;
        if dtls.min.is_zero() || dtls.min > dtls.max || dtls.max.as_millis() > u128::from(u32::MAX)
        {
            return Err(Error::Config(format!(
                "udp_dtls_hs_tx_params needs 0 < min <= max < 2^32 ms, got min {:?} max {:?}",
                dtls.min, dtls.max
            )));
        }
        let mut rng = rng;
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Ok(Client {
            cfg,
            rng,
            dm: DataModel::new(),
            sessions: Vec::new(),
            channels: Vec::new(),
            drbg: Drbg::from_seed_bytes(&seed),
            last_now: Now::default(),
            events: VecDeque::new(),
            started: false,
            shutting_down: false,
            next_conn_poll: 0,
            server_dm: BTreeMap::new(),
            bootstrap: None,
            est: provisioning::EstRuntime::default(),
            pending_raw: VecDeque::new(),
        })
    }

    /// The generator for DTLS handshakes (keys, nonces, randoms). [`Client::new`] seeds one
    /// from its `RandomSource`, which suits the simulator; production passes one seeded by
    /// the OS (`io::Driver` does). Takes effect for connections opened by
    /// [`Client::start`].
    pub fn set_dtls_rng(&mut self, drbg: Drbg) {
        self.drbg = drbg;
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub fn data_model(&self) -> &DataModel {
        &self.dm
    }

    /// The data model, for installing objects and instances before [`Client::start`].
    pub fn data_model_mut(&mut self) -> &mut DataModel {
        &mut self.dm
    }

    /// Registers an application object.
    pub fn register_object(&mut self, obj: Box<dyn Object>) -> Result<(), Error> {
        self.dm.register(obj).map_err(|o| {
            Error::InvalidArgument(format!("object {} is already registered", o.oid()))
        })
    }

    /// Starts the client: registers with every management server whose account is usable,
    /// or, when there is none and a Bootstrap-Server account exists, bootstraps first.
    pub fn start(&mut self, now: Now) -> Result<(), Error> {
        if self.started {
            return Ok(());
        }
        self.last_now = now;
        if let Err(why) = self.open_sessions(now) {
            if !self.has_bootstrap_account() {
                return Err(Error::Config(why));
            }
            info!("{why}; bootstrapping");
            self.begin_bootstrap(now, false).map_err(Error::Config)?;
        }
        self.started = true;
        self.drive(now);
        Ok(())
    }

    /// Opens a session for every management-server account of the Security object that has
    /// a matching Server instance. Accounts that cannot be used are logged and skipped; it
    /// is an error when none is left.
    fn open_sessions(&mut self, now: Now) -> Result<(), String> {
        let mut sessions = Vec::new();
        let mut channels = Vec::new();
        let mut refused = Vec::new();
        let accounts: Vec<(u16, crate::dm::objects::SecurityInstance)> = self
            .dm
            .security
            .management_accounts()
            .map(|(i, s)| (i, s.clone()))
            .collect();
        for (iid, sec) in accounts {
            let Some(ssid) = sec.ssid else { continue };
            if self.dm.server.by_ssid(ssid).is_none() {
                warn!("security instance {iid} (ssid={ssid}) has no Server instance; skipped");
                continue;
            }
            let uri = match ServerUri::parse(&sec.server_uri) {
                Ok(u) => u,
                Err(e) => {
                    refused.push(format!("ssid={ssid}: {e}"));
                    continue;
                }
            };
            let channel = match self.channel_for(&sec, &uri) {
                Ok(c) => c,
                Err(e) => {
                    warn!(
                        "ssid={ssid}: security instance {iid} cannot be used: {e}; account skipped"
                    );
                    refused.push(format!("ssid={ssid}: {e}"));
                    continue;
                }
            };
            let endpoint = self.new_endpoint(&channel);
            channels.push(channel);
            sessions.push(ServerSession::new(ssid, uri, endpoint, now.mono));
        }
        if sessions.is_empty() {
            let why = if refused.is_empty() {
                String::new()
            } else {
                format!(": {}", refused.join("; "))
            };
            return Err(format!(
                "no usable management-server account (Security + Server instances){why}"
            ));
        }
        for old in self.sessions.drain(..) {
            if !sessions
                .iter()
                .any(|s: &ServerSession| s.ssid == old.ssid && s.uri == old.uri)
            {
                self.events.push_back(Event::ConnectionClosed {
                    conn: Self::conn_of(old.ssid),
                });
            }
        }
        self.sessions = sessions;
        self.channels = channels;
        Ok(())
    }

    /// What a Register or Update to `ssid` must carry; `object_links` is computed once per
    /// drive by the caller since it is the same for every server.
    fn registration_params(&self, ssid: u16, object_links: &str) -> Option<RegistrationParams> {
        let srv = self.dm.server.by_ssid(ssid)?;
        Some(RegistrationParams {
            endpoint_name: self.cfg.endpoint_name.clone(),
            lifetime: u32::try_from(srv.lifetime).unwrap_or(u32::MAX),
            binding: srv.binding.clone(),
            lwm2m_version: "1.1",
            object_links: object_links.to_string(),
        })
    }

    fn conn_of(ssid: u16) -> ConnectionId {
        ConnectionId(u32::from(ssid))
    }

    /// The server a connection talks to (for the driver to resolve and open a socket).
    pub fn connection_uri(&self, conn: ConnectionId) -> Option<&ServerUri> {
        if conn == ConnectionId::BOOTSTRAP {
            return self.bootstrap.as_ref().map(|b| &b.session.uri);
        }
        self.sessions
            .iter()
            .find(|s| Self::conn_of(s.ssid) == conn)
            .map(|s| &s.uri)
    }

    /// All open connections.
    pub fn connections(&self) -> Vec<ConnectionId> {
        let boot = self.bootstrap.as_ref().map(|_| ConnectionId::BOOTSTRAP);
        boot.into_iter()
            .chain(self.sessions.iter().map(|s| Self::conn_of(s.ssid)))
            .collect()
    }

    /// Registration state of a server, if it has a session.
    pub fn registration_state(&self, ssid: u16) -> Option<&RegistrationState> {
        self.sessions
            .iter()
            .find(|s| s.ssid == ssid)
            .map(|s| s.state())
    }

    /// True when every session is registered.
    pub fn is_registered(&self) -> bool {
        !self.sessions.is_empty() && self.sessions.iter().all(|s| s.is_registered())
    }

    /// Sends an Update to `ssid` (or every server when `None`) at once.
    pub fn schedule_registration_update(
        &mut self,
        now: Now,
        ssid: Option<u16>,
    ) -> Result<(), Error> {
        self.last_now = now;
        let mut found = false;
        for s in self
            .sessions
            .iter_mut()
            .filter(|s| ssid.is_none_or(|x| x == s.ssid))
        {
            s.request_update();
            found = true;
        }
        if !found {
            return Err(Error::InvalidArgument("no such server".into()));
        }
        self.drive(now);
        Ok(())
    }

    /// Feeds a datagram received on `conn`. Malformed or oversized datagrams are dropped
    /// with a debug log line and change nothing.
    pub fn handle_datagram(&mut self, now: Now, conn: ConnectionId, data: &[u8]) {
        self.last_now = now;
        if conn == ConnectionId::BOOTSTRAP {
            return self.handle_bootstrap_datagram(now, data);
        }
        let Some(i) = self
            .sessions
            .iter()
            .position(|s| Self::conn_of(s.ssid) == conn)
        else {
            debug!("dropping datagram for unknown connection {conn:?}");
            return;
        };
        // in_buffer_size bounds CoAP messages (checked below, after DTLS); the record around
        // one (and a handshake flight) may be larger, up to one maximal DTLS record.
        let limit = max_datagram(&self.cfg);
        if data.len() > limit {
            debug!("dropping {}-byte datagram larger than {limit}", data.len());
            return;
        }
        let coap_datagrams = self.channels[i].handle_datagram(now, data);
        let mut accepted = false;
        for d in coap_datagrams {
            if !fits_in_buffer(&d, self.cfg.in_buffer_size) {
                continue;
            }
            accepted |= self.sessions[i]
                .endpoint
                .handle_datagram(now.mono, &d)
                .is_ok();
        }
        let changed = self.take_channel_events();
        if accepted || changed {
            self.drive(now);
        }
    }

    fn handle_bootstrap_datagram(&mut self, now: Now, data: &[u8]) {
        let in_limit = self.cfg.in_buffer_size;
        let Some(b) = self.bootstrap.as_mut() else {
            debug!("dropping datagram for the closed bootstrap connection");
            return;
        };
        let limit = max_datagram(&self.cfg);
        if data.len() > limit {
            debug!("dropping {}-byte datagram larger than {limit}", data.len());
            return;
        }
        for d in b.channel.handle_datagram(now, data) {
            if fits_in_buffer(&d, in_limit) {
                let _ = b.session.endpoint.handle_datagram(now.mono, &d);
            }
        }
        self.take_channel_events();
        self.drive(now);
    }

    /// Runs timers that are due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.last_now = now;
        for c in &mut self.channels {
            c.handle_timeout(now);
        }
        if let Some(b) = self.bootstrap.as_mut() {
            b.channel.handle_timeout(now);
        }
        self.take_channel_events();
        self.drive(now);
    }

    /// Turns what the connections' security layers report into events; a failed handshake
    /// fails the exchanges waiting for it (the Register, say), so the registration session
    /// applies its retry and back-off. True if anything happened.
    fn take_channel_events(&mut self) -> bool {
        let mut any = false;
        if let Some(b) = self.bootstrap.as_mut() {
            while let Some(ev) = b.channel.poll_event() {
                any = true;
                match ev {
                    ChannelEvent::Established { suite, .. } => {
                        info!("bootstrap: DTLS session established ({suite})");
                    }
                    ChannelEvent::HandshakeFailed(e) => {
                        warn!(
                            "bootstrap: DTLS handshake with {} failed: {e}",
                            b.session.uri
                        );
                        // The exchanges waiting for it fail, so their retries apply.
                        b.session.endpoint.cancel_all();
                        let ev = b.session.report_failure(
                            self.last_now.mono,
                            format!("DTLS handshake failed: {e}"),
                        );
                        if let crate::lwm2m::BootstrapEvent::Failed { reason, .. } = ev {
                            self.events.push_back(Event::BootstrapFailed { reason });
                        }
                    }
                    ChannelEvent::Closed(reason) => debug!("bootstrap: DTLS closed ({reason})"),
                }
            }
        }
        for i in 0..self.channels.len() {
            let ssid = self.sessions[i].ssid;
            while let Some(ev) = self.channels[i].poll_event() {
                any = true;
                match ev {
                    ChannelEvent::Established {
                        suite: cipher_suite,
                        resumed,
                    } => {
                        info!("ssid={ssid}: DTLS session established ({cipher_suite})");
                        self.events.push_back(Event::SecureConnectionEstablished {
                            ssid,
                            cipher_suite,
                            resumed,
                        });
                    }
                    ChannelEvent::HandshakeFailed(e) => {
                        let reason = e.to_string();
                        warn!(
                            "ssid={ssid}: DTLS handshake with {} failed: {reason}",
                            self.sessions[i].uri
                        );
                        self.events
                            .push_back(Event::SecureConnectionFailed { ssid, reason });
                        self.sessions[i].endpoint.cancel_all();
                    }
                    ChannelEvent::Closed(reason) => {
                        debug!("ssid={ssid}: DTLS session closed ({reason})");
                    }
                }
            }
        }
        any
    }

    /// Starts De-registration from every server; `poll_event` reports each one.
    pub fn shutdown(&mut self, now: Now) {
        self.last_now = now;
        self.shutting_down = true;
        for s in &mut self.sessions {
            s.deregister(now.mono);
        }
        self.drive(now);
    }

    /// True once a [`Client::shutdown`] has finished (every server deregistered or given up).
    pub fn is_shut_down(&self) -> bool {
        self.shutting_down
            && self.sessions.iter().all(|s| {
                matches!(s.state(), RegistrationState::Deregistered) && s.endpoint.is_idle()
            })
    }

    fn drive(&mut self, now: Now) {
        self.apply_server_actions(now);
        if !self.shutting_down {
            self.drive_bootstrap(now);
        }
        let links = link::registration_payload(&self.dm);
        let mut handled_requests = false;
        for i in 0..self.sessions.len() {
            let ssid = self.sessions[i].ssid;
            let params = self.registration_params(ssid, &links);
            if let Some(srv) = self.dm.server.by_ssid(ssid) {
                self.sessions[i].set_retry_policy(RetryPolicy::from_server(srv));
            }
            if !self.shutting_down {
                if let Some(params) = &params {
                    self.sessions[i].on_timeout(now.mono, params);
                }
            } else {
                self.sessions[i].endpoint.handle_timeout(now.mono);
            }
            while let Some(ev) = self.sessions[i].endpoint.poll_event() {
                let Some(ev) = self.notification_event(ssid, ev) else {
                    continue;
                };
                let (sev, req) = self.sessions[i].on_endpoint_event(now.mono, ev);
                if let Some(req) = req {
                    handled_requests = true;
                    let resp = self.handle_request(now, ssid, &req);
                    self.sessions[i].endpoint.respond(now.mono, &req, resp);
                }
                if matches!(
                    sev,
                    Some(SessionEvent::Registered { .. } | SessionEvent::Deregistered)
                ) {
                    // A new registration starts without observations (LwM2M 1.1 §6.4.1).
                    self.server_dm_mut(ssid).observe.clear();
                }
                if let Some(sev) = sev {
                    self.events.push_back(match sev {
                        SessionEvent::Registered { location } => {
                            self.est.fallbacks = 0;
                            Event::Registered { ssid, location }
                        }
                        SessionEvent::Updated => Event::RegistrationUpdated { ssid },
                        SessionEvent::RegistrationFailed { reason } => {
                            Event::RegistrationFailed { ssid, reason }
                        }
                        SessionEvent::Deregistered => Event::Deregistered { ssid },
                    });
                }
            }
            // A state change (e.g. Update answered 4.04) may make more work due now.
            if !self.shutting_down {
                if let Some(params) = &params {
                    self.sessions[i].on_timeout(now.mono, params);
                }
                self.send_notifications(now, i);
            }
        }
        // Executes above (Disable, Update Trigger) act at once, after their responses.
        self.apply_server_actions(now);
        // A Write or Create may have changed what the servers must know (lifetime, binding,
        // object list): Update now rather than at the next timer.
        if handled_requests && !self.shutting_down {
            let links = link::registration_payload(&self.dm);
            for i in 0..self.sessions.len() {
                if let Some(params) = self.registration_params(self.sessions[i].ssid, &links) {
                    self.sessions[i].on_timeout(now.mono, &params);
                }
            }
        }
        if self.dm.device.take_reboot_request() {
            self.events.push_back(Event::RebootRequested);
        }
        self.check_bootstrap_fallback(now);
    }

    fn server_dm_mut(&mut self, ssid: u16) -> &mut ServerDm {
        self.server_dm
            .entry(ssid)
            .or_insert_with(|| ServerDm::new(ssid))
    }

    /// Answers a request from a management server out of the data model, and tells every
    /// server's observations what it changed.
    fn handle_request(&mut self, now: Now, ssid: u16, req: &InboundRequest) -> coap::Packet {
        let has_bootstrap = self.has_bootstrap_account();
        self.dm.server.set_bootstrap_account_present(has_bootstrap);
        let dm = &mut self.dm;
        let state = self
            .server_dm
            .entry(ssid)
            .or_insert_with(|| ServerDm::new(ssid));
        let handled = state.handle_request(dm, now.mono, req);
        if let Some(gone) = handled.deleted {
            // Observers of the instance hear 4.04 in their next notification, which ends them.
            for s in self.server_dm.values_mut() {
                s.attributes.remove_under(&gone);
                s.observe.mark_changed(&gone);
            }
        }
        for p in &handled.changed {
            self.mark_changed(p);
        }
        handled.response
    }

    fn mark_changed(&mut self, path: &Path) {
        for s in self.server_dm.values_mut() {
            s.observe.mark_changed(path);
        }
    }

    /// Announces that the value at `path` (or anything below it) changed; observers are
    /// notified as their attributes allow.
    pub fn notify_changed(&mut self, now: Now, path: &Path) {
        self.mark_changed(path);
        self.drive(now);
    }

    /// Sends later notifications as confirmable (true) or non-confirmable messages.
    pub fn set_confirmable_notifications(&mut self, confirmable: bool) {
        self.cfg.confirmable_notifications = confirmable;
    }

    /// Number of observations `ssid` holds on this client.
    pub fn observation_count(&self, ssid: u16) -> usize {
        self.server_dm.get(&ssid).map_or(0, |s| s.observe.len())
    }

    /// Takes endpoint events that concern our notifications; passes the others on.
    fn notification_event(&mut self, ssid: u16, ev: EndpointEvent) -> Option<EndpointEvent> {
        let Some(state) = self.server_dm.get_mut(&ssid) else {
            return Some(ev);
        };
        match ev {
            EndpointEvent::Delivered { handle } if state.observe.owns(handle) => {
                state.observe.on_delivered(handle);
                None
            }
            EndpointEvent::Failed { handle, error } if state.observe.owns(handle) => {
                if state.observe.on_failed(handle) {
                    debug!("ssid={ssid}: observation ended, notification {error}");
                }
                None
            }
            ev => Some(ev),
        }
    }

    fn send_notifications(&mut self, now: Now, i: usize) {
        let ssid = self.sessions[i].ssid;
        if !self.sessions[i].is_registered() {
            return;
        }
        let Some(state) = self.server_dm.get_mut(&ssid) else {
            return;
        };
        let confirmable = self.cfg.confirmable_notifications;
        for (token, packet) in state.poll_notifications(&self.dm, now.mono) {
            let handle = self.sessions[i].endpoint.send_message(
                now.mono,
                token.clone(),
                packet,
                confirmable,
            );
            state.observe.sent(handle, token);
        }
    }

    /// Registration Update Triggers, Disables and Bootstrap-Request Triggers executed on
    /// the Server object.
    fn apply_server_actions(&mut self, now: Now) {
        let bootstrap_triggers = self.dm.server.take_bootstrap_triggers();
        if let Some(ssid) = bootstrap_triggers.first() {
            info!("ssid={ssid} executed the Bootstrap-Request Trigger; bootstrapping");
            // The Execute's 2.04 is queued on the session about to be closed: send it first.
            self.flush_and_close_management_channels(now);
            match self.begin_bootstrap(now, true) {
                Ok(()) => self.drive_bootstrap(now),
                Err(e) => warn!("Bootstrap-Request Trigger: cannot bootstrap: {e}"),
            }
            return;
        }
        for ssid in self.dm.server.take_update_triggers() {
            if let Some(s) = self.sessions.iter_mut().find(|s| s.ssid == ssid) {
                s.request_update();
            }
        }
        for (ssid, timeout) in self.dm.server.take_disable_requests() {
            if let Some(s) = self.sessions.iter_mut().find(|s| s.ssid == ssid) {
                s.disable(now.mono, timeout);
            }
        }
    }

    /// Moves what the management sessions have queued (responses) through their channels
    /// into `pending_raw`, followed by each DTLS session's close_notify, so it still goes
    /// out when the sessions are dropped.
    fn flush_and_close_management_channels(&mut self, now: Now) {
        for i in 0..self.sessions.len() {
            let conn = Self::conn_of(self.sessions[i].ssid);
            while let Some(coap) = self.sessions[i].endpoint.poll_transmit() {
                self.channels[i].send(now, coap);
            }
            if self.channels[i].is_secure() && self.channels[i].is_established() {
                self.channels[i].close(now);
            }
            while let Some(d) = self.channels[i].poll_transmit() {
                self.pending_raw.push_back((conn, d));
            }
        }
    }

    /// The next datagram to send, taking connections in turn.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some((conn, data)) = self.pending_raw.pop_front() {
            return Some(Transmit { conn, data });
        }
        let now = self.last_now;
        if let Some(b) = self.bootstrap.as_mut() {
            while let Some(coap) = b.session.endpoint.poll_transmit() {
                b.channel.send(now, coap);
            }
            if let Some(data) = b.channel.poll_transmit() {
                return Some(Transmit {
                    conn: ConnectionId::BOOTSTRAP,
                    data,
                });
            }
        }
        let n = self.sessions.len();
        for k in 0..n {
            let i = (self.next_conn_poll + k) % n;
            while let Some(coap) = self.sessions[i].endpoint.poll_transmit() {
                self.channels[i].send(now, coap);
            }
            // A failed registration attempt over an established DTLS session may mean the
            // server lost the session (it restarted): the retry starts a new handshake.
            if !self.shutting_down
                && matches!(self.sessions[i].state(), RegistrationState::Idle { .. })
                && self.channels[i].is_secure()
                && self.channels[i].is_established()
            {
                debug!(
                    "ssid={}: registration failed over DTLS; the retry starts a new handshake",
                    self.sessions[i].ssid
                );
                self.channels[i].close(now);
            }
            // After De-register, end the DTLS session properly (close_notify).
            if self.shutting_down
                && matches!(self.sessions[i].state(), RegistrationState::Deregistered)
                && self.sessions[i].endpoint.is_idle()
                && self.channels[i].is_established()
                && self.channels[i].is_secure()
            {
                self.channels[i].close(now);
            }
            if let Some(data) = self.channels[i].poll_transmit() {
                self.next_conn_poll = (i + 1) % n;
                return Some(Transmit {
                    conn: Self::conn_of(self.sessions[i].ssid),
                    data,
                });
            }
        }
        None
    }

    /// The earliest time [`Client::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let notify = self
            .sessions
            .iter()
            .filter(|s| s.is_registered())
            .filter_map(|s| self.server_dm.get(&s.ssid)?.next_deadline(&self.dm));
        self.sessions
            .iter()
            .filter_map(|s| s.poll_timeout())
            .chain(self.channels.iter().filter_map(SecureChannel::poll_timeout))
            .chain(notify)
            .chain(self.bootstrap_deadline())
            .min()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// Accessors for persistence (`persist::Snapshot`, the C persistence API).
impl Client {
    /// The attributes each server (by SSID) has set with Write-Attributes; servers that set
    /// none are left out.
    pub fn attribute_storage(
        &self,
    ) -> impl Iterator<Item = (u16, &crate::lwm2m::attributes::AttributeStore)> {
        self.server_dm
            .iter()
            .filter(|(_, s)| !s.attributes.is_empty())
            .map(|(ssid, s)| (*ssid, &s.attributes))
    }

    /// Replaces every server's attributes (restored from persistence) before
    /// [`Client::start`]; a server missing from `stores` is left with none.
    pub fn restore_attribute_storage(
        &mut self,
        stores: BTreeMap<u16, crate::lwm2m::attributes::AttributeStore>,
    ) {
        for s in self.server_dm.values_mut() {
            s.attributes = Default::default();
        }
        for (ssid, store) in stores {
            self.server_dm_mut(ssid).attributes = store;
        }
    }

    /// True once [`Client::start`] (or a bootstrap request) has run.
    pub fn is_started(&self) -> bool {
        self.started
    }
}

/// The largest datagram taken at all: a maximal DTLS record, or a CoAP message of
/// `in_buffer_size` if that is larger.
pub(crate) fn max_datagram(cfg: &ClientConfig) -> usize {
    cfg.in_buffer_size.max(MAX_DTLS_DATAGRAM)
}

/// Whether a CoAP message (plain, or from a DTLS record) may go on to the endpoint: anything within
/// `in_buffer_size`, and requests of any size, which the endpoint answers with 4.13 and the
/// Block1 size it takes (RFC 7959 §2.9.3) so the peer can send them block-wise. Larger
/// responses are dropped (we asked for blocks that fit).
fn fits_in_buffer(d: &[u8], in_buffer_size: usize) -> bool {
    // Byte 1 is the code: class 0 with a non-zero detail is a request.
    let request = d.len() >= 4 && d[1] != 0 && d[1] >> 5 == 0;
    if d.len() <= in_buffer_size || request {
        return true;
    }
    debug!(
        "dropping {}-byte CoAP message larger than in_buffer_size",
        d.len()
    );
    false
}
