//! The client side of LwM2M bootstrap: when to send Bootstrap-Request (`POST /bs?ep=`), how
//! long to wait for the server to provision us, and how to back off when it does not.
//! Also the consistency check that decides whether Bootstrap-Finish is answered 2.04 or 4.06.
//!
//! Like [`super::ServerSession`], the session only decides *when*; the client answers the
//! bootstrap server's Write/Read/Discover/Delete requests out of the data model.

use core::time::Duration;

use log::{debug, info, warn};

use crate::coap::{
    self, code, Endpoint, EndpointEvent, ExchangeError, InboundRequest, RequestHandle,
};
use crate::dm::objects::SecurityMode;
use crate::dm::DataModel;
use crate::time::Instant;

use super::uri::ServerUri;

/// Where a bootstrap attempt stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapState {
    /// The next Bootstrap-Request is due at `request_at` (hold-off or back-off).
    Waiting { request_at: Instant },
    /// Bootstrap-Request sent; waiting for its answer.
    Requesting { handle: RequestHandle },
    /// The server is provisioning us; Bootstrap-Finish must arrive by `deadline`.
    Provisioning { deadline: Instant },
    /// Bootstrap-Finish was accepted.
    Finished,
}

/// What the session reports to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapEvent {
    /// The server accepted the Bootstrap-Request.
    Requested,
    /// Bootstrap-Finish was accepted: the data model holds the new configuration.
    Finished,
    /// This attempt failed; the next one is due at `retry_at`.
    Failed { reason: String, retry_at: Instant },
}

/// What a Bootstrap-Request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapParams {
    pub endpoint_name: String,
    /// The Content-Format the client prefers for Bootstrap-Write/Read (`pct=`).
    pub preferred_content_format: Option<u16>,
}

/// First retry after a failed attempt, doubling each time.
const RETRY_BASE: Duration = Duration::from_secs(30);
/// Longest wait between attempts, so a dead network never produces a tight loop.
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// The bootstrap server connection and its state machine.
#[derive(Debug)]
pub struct BootstrapSession {
    pub uri: ServerUri,
    pub endpoint: Endpoint,
    state: BootstrapState,
    /// Client Hold Off Time (/0/x/11): wait this long before a client-initiated request.
    hold_off: Duration,
    failures: u32,
}

impl BootstrapSession {
    /// A session whose first Bootstrap-Request goes out after `hold_off`.
    pub fn new(uri: ServerUri, endpoint: Endpoint, now: Instant, hold_off: Duration) -> Self {
        BootstrapSession {
            uri,
            endpoint,
            state: BootstrapState::Waiting {
                request_at: now + hold_off,
            },
            hold_off,
            failures: 0,
        }
    }

    pub fn state(&self) -> &BootstrapState {
        &self.state
    }

    pub fn is_finished(&self) -> bool {
        self.state == BootstrapState::Finished
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Marks the session as already bootstrapped (a connection opened only for EST
    /// re-enrollment): bootstrap-server requests on it are refused.
    pub fn mark_finished(&mut self) {
        self.state = BootstrapState::Finished;
    }

    /// Starts a new bootstrap (server-initiated trigger, fallback after registration
    /// failure, or the application's request): the request goes out after the hold-off
    /// time, or at once when `immediately`.
    pub fn restart(&mut self, now: Instant, immediately: bool) {
        self.endpoint.cancel_all();
        let wait = if immediately {
            Duration::ZERO
        } else {
            self.hold_off
        };
        self.state = BootstrapState::Waiting {
            request_at: now + wait,
        };
    }

    fn deadline_from(&self, now: Instant) -> Instant {
        now + self.endpoint.params().exchange_lifetime()
    }

    fn send_request(&mut self, now: Instant, p: &BootstrapParams) -> Option<BootstrapEvent> {
        let mut req = coap::new_request(code::POST, "/bs");
        coap::add_uri_query(&mut req, &format!("ep={}", p.endpoint_name));
        if let Some(pct) = p.preferred_content_format {
            coap::add_uri_query(&mut req, &format!("pct={pct}"));
        }
        match self.endpoint.send_request(now, req, true) {
            Ok(handle) => {
                debug!("Bootstrap-Request sent to {}", self.uri);
                self.state = BootstrapState::Requesting { handle };
                None
            }
            Err(e) => Some(self.fail(now, format!("Bootstrap-Request could not be sent: {e}"))),
        }
    }

    /// Ends the attempt as failed for a reason outside the session (EST after Finish failed,
    /// a handshake was refused): the next request goes out after the back-off.
    pub fn report_failure(&mut self, now: Instant, reason: String) -> BootstrapEvent {
        self.fail(now, reason)
    }

    fn fail(&mut self, now: Instant, reason: String) -> BootstrapEvent {
        self.failures = self.failures.saturating_add(1);
        let backoff = RETRY_BASE
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(RETRY_MAX)
            .max(self.hold_off);
        warn!(
            "bootstrap failed ({reason}); retrying in {}s",
            backoff.as_secs()
        );
        self.endpoint.cancel_all();
        let retry_at = now + backoff;
        self.state = BootstrapState::Waiting {
            request_at: retry_at,
        };
        BootstrapEvent::Failed { reason, retry_at }
    }

    /// Drives timers: the (re)sent Bootstrap-Request and the provisioning deadline.
    pub fn on_timeout(&mut self, now: Instant, params: &BootstrapParams) -> Option<BootstrapEvent> {
        self.endpoint.handle_timeout(now);
        match self.state {
            BootstrapState::Waiting { request_at } if request_at <= now => {
                self.send_request(now, params)
            }
            BootstrapState::Provisioning { deadline } if deadline <= now => Some(self.fail(
                now,
                "no Bootstrap-Finish within EXCHANGE_LIFETIME".to_string(),
            )),
            _ => None,
        }
    }

    /// Handles one endpoint event. A request from the bootstrap server is handed back to the
    /// caller with `true` when a bootstrap is in progress (it may then be served); after
    /// Finish, or before any request, the flag is `false` and the caller refuses it.
    pub fn on_endpoint_event(
        &mut self,
        now: Instant,
        ev: EndpointEvent,
    ) -> (Option<BootstrapEvent>, Option<(InboundRequest, bool)>) {
        match ev {
            EndpointEvent::Request(r) => {
                let active = self.note_request(now);
                (None, Some((r, active)))
            }
            EndpointEvent::Response { handle, packet } => {
                (self.on_response(now, handle, &packet), None)
            }
            EndpointEvent::Failed { handle, error } => (self.on_failure(now, handle, error), None),
            _ => (None, None),
        }
    }

    /// A bootstrap-server request arrived. A server may start provisioning before our
    /// request's answer arrives (it was lost, or the bootstrap is server-initiated), so any
    /// request while not finished moves us to provisioning; each one extends the deadline,
    /// so a long provisioning over a slow link is not cut off.
    fn note_request(&mut self, now: Instant) -> bool {
        match self.state {
            BootstrapState::Finished => false,
            _ => {
                if let BootstrapState::Requesting { handle } = self.state {
                    self.endpoint.cancel(now, handle);
                }
                self.state = BootstrapState::Provisioning {
                    deadline: self.deadline_from(now),
                };
                true
            }
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        packet: &coap::Packet,
    ) -> Option<BootstrapEvent> {
        let BootstrapState::Requesting { handle: h } = self.state else {
            return None;
        };
        if h != handle {
            return None;
        }
        let rc = coap::raw_code(packet);
        if rc != code::CHANGED {
            return Some(self.fail(
                now,
                format!(
                    "server answered Bootstrap-Request with {}",
                    code::to_string(rc)
                ),
            ));
        }
        info!("bootstrap requested from {}", self.uri);
        self.state = BootstrapState::Provisioning {
            deadline: self.deadline_from(now),
        };
        Some(BootstrapEvent::Requested)
    }

    fn on_failure(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        error: ExchangeError,
    ) -> Option<BootstrapEvent> {
        match self.state {
            BootstrapState::Requesting { handle: h } if h == handle => {
                Some(self.fail(now, format!("Bootstrap-Request: {error}")))
            }
            _ => None,
        }
    }

    /// The client answered Bootstrap-Finish: with 2.04 when `accepted` (the session is done),
    /// or 4.06, in which case provisioning goes on and the deadline still runs.
    pub fn on_finish(&mut self, now: Instant, accepted: bool) -> Option<BootstrapEvent> {
        if !matches!(self.state, BootstrapState::Provisioning { .. }) {
            return None;
        }
        if accepted {
            info!("bootstrap finished");
            self.failures = 0;
            self.state = BootstrapState::Finished;
            Some(BootstrapEvent::Finished)
        } else {
            self.state = BootstrapState::Provisioning {
                deadline: self.deadline_from(now),
            };
            None
        }
    }

    /// When this session next needs `on_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            BootstrapState::Waiting { request_at } => Some(request_at),
            BootstrapState::Provisioning { deadline } => Some(deadline),
            _ => None,
        };
        [own, self.endpoint.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Checks the configuration a bootstrap server left behind, before Bootstrap-Finish is
/// answered: every management account must be usable as written. Returns why not.
pub fn check_configuration(dm: &DataModel) -> Result<(), String> {
    let mut ssids = Vec::new();
    let mut accounts = 0;
    for (iid, sec) in dm.security.iter() {
        let uri = ServerUri::parse(&sec.server_uri)
            .map_err(|e| format!("/0/{iid}: server URI {:?}: {e}", sec.server_uri))?;
        check_mode(iid, sec, &uri)?;
        if sec.bootstrap_server {
            continue;
        }
        accounts += 1;
        let ssid = sec
            .ssid
            .ok_or_else(|| format!("/0/{iid}: management account without a Short Server ID"))?;
        if ssids.contains(&ssid) {
            return Err(format!("/0/{iid}: Short Server ID {ssid} is used twice"));
        }
        ssids.push(ssid);
        if dm.server.by_ssid(ssid).is_none() {
            return Err(format!(
                "/0/{iid}: no Server instance with Short Server ID {ssid}"
            ));
        }
    }
    for (iid, srv) in dm.server.iter() {
        if !ssids.contains(&srv.ssid) {
            return Err(format!(
                "/1/{iid}: no Security instance with Short Server ID {}",
                srv.ssid
            ));
        }
    }
    if accounts == 0 {
        return Err("no management-server account".to_string());
    }
    Ok(())
}

fn check_mode(
    iid: u16,
    sec: &crate::dm::objects::SecurityInstance,
    uri: &ServerUri,
) -> Result<(), String> {
    let needs_secure = sec.security_mode != SecurityMode::NoSec;
    if uri.secure != needs_secure {
        return Err(format!(
            "/0/{iid}: mode {:?} does not match the {} scheme",
            sec.security_mode,
            if uri.secure { "coaps" } else { "coap" }
        ));
    }
    let missing = |what: &str| {
        Err(format!(
            "/0/{iid}: mode {:?} needs {what}",
            sec.security_mode
        ))
    };
    match sec.security_mode {
        SecurityMode::NoSec | SecurityMode::CertificateWithEst => Ok(()),
        SecurityMode::Rpk => Err(format!(
            "/0/{iid}: raw public keys (mode 1) are not supported"
        )),
        SecurityMode::Psk => {
            if sec.public_cert_or_psk_identity.is_empty() {
                missing("a PSK identity (/0/x/3)")
            } else if sec.private_cert_or_psk_key.is_empty() {
                missing("a PSK key (/0/x/5)")
            } else {
                Ok(())
            }
        }
        SecurityMode::Certificate => {
            if sec.public_cert_or_psk_identity.is_empty() {
                missing("a client certificate (/0/x/3)")
            } else if sec.private_cert_or_psk_key.is_empty() {
                missing("a private key (/0/x/5)")
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::TxParams;
    use crate::dm::objects::{SecurityInstance, ServerInstance};
    use crate::rng::SeededRng;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn session(hold_off_s: u64) -> BootstrapSession {
        let mut rng = SeededRng::new(1);
        let ep = Endpoint::new(TxParams::default(), 1152, 4096, &mut rng);
        BootstrapSession::new(
            ServerUri::parse("coap://127.0.0.1:5693").unwrap(),
            ep,
            t(0),
            Duration::from_secs(hold_off_s),
        )
    }

    fn params() -> BootstrapParams {
        BootstrapParams {
            endpoint_name: "dev1".into(),
            preferred_content_format: Some(11542),
        }
    }

    /// A peer endpoint that plays the bootstrap server.
    fn server() -> Endpoint {
        let mut rng = SeededRng::new(2);
        Endpoint::new(TxParams::default(), 1152, 4096, &mut rng)
    }

    fn pump(c: &mut BootstrapSession, s: &mut Endpoint, now: Instant) -> Vec<BootstrapEvent> {
        let mut out = Vec::new();
        for _ in 0..10 {
            let mut moved = false;
            while let Some(d) = c.endpoint.poll_transmit() {
                s.handle_datagram(now, &d).unwrap();
                moved = true;
            }
            while let Some(d) = s.poll_transmit() {
                c.endpoint.handle_datagram(now, &d).unwrap();
                moved = true;
            }
            while let Some(ev) = c.endpoint.poll_event() {
                let (bev, _) = c.on_endpoint_event(now, ev);
                out.extend(bev);
            }
            if !moved {
                break;
            }
        }
        out
    }

    #[test]
    fn request_waits_for_hold_off_and_carries_ep_and_pct() {
        let mut c = session(10);
        let mut s = server();
        assert_eq!(c.on_timeout(t(9_999), &params()), None);
        assert!(c.endpoint.poll_transmit().is_none());
        assert_eq!(c.poll_timeout(), Some(t(10_000)));
        c.on_timeout(t(10_000), &params());
        let d = c.endpoint.poll_transmit().unwrap();
        s.handle_datagram(t(10_000), &d).unwrap();
        let Some(EndpointEvent::Request(req)) = s.poll_event() else {
            panic!("no request")
        };
        assert_eq!(coap::raw_code(&req.packet), code::POST);
        assert_eq!(coap::uri_path(&req.packet).unwrap(), vec!["bs"]);
        assert_eq!(
            coap::uri_query(&req.packet).unwrap(),
            vec!["ep=dev1", "pct=11542"]
        );
        s.respond(t(10_000), &req, coap::new_response(code::CHANGED));
        let mut out = Vec::new();
        while let Some(d) = s.poll_transmit() {
            c.endpoint.handle_datagram(t(10_000), &d).unwrap();
        }
        while let Some(ev) = c.endpoint.poll_event() {
            out.extend(c.on_endpoint_event(t(10_000), ev).0);
        }
        assert_eq!(out, vec![BootstrapEvent::Requested]);
        let deadline = t(10_000) + TxParams::default().exchange_lifetime();
        assert_eq!(c.state(), &BootstrapState::Provisioning { deadline });
    }

    #[test]
    fn refusals_back_off_doubling_to_an_hour() {
        let mut c = session(0);
        let mut s = server();
        let mut now = t(0);
        let mut waits = Vec::new();
        for _ in 0..10 {
            c.on_timeout(now, &params());
            let d = c.endpoint.poll_transmit().expect("request sent when due");
            s.handle_datagram(now, &d).unwrap();
            let Some(EndpointEvent::Request(req)) = s.poll_event() else {
                panic!()
            };
            s.respond(now, &req, coap::new_response(code::BAD_REQUEST));
            let evs = pump(&mut c, &mut s, now);
            let [BootstrapEvent::Failed { retry_at, reason }] = &evs[..] else {
                panic!("{evs:?}")
            };
            assert!(reason.contains("4.00"), "{reason}");
            waits.push(retry_at.saturating_duration_since(now).as_secs());
            now = *retry_at;
        }
        assert_eq!(
            waits,
            vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
    }

    #[test]
    fn silent_server_times_out_and_retries() {
        let mut c = session(0);
        let mut now = t(0);
        let mut sent = 0;
        let mut failed_at = None;
        // Run the virtual clock for a while; nobody answers.
        while now < t(400_000) {
            if let Some(ev) = c.on_timeout(now, &params()) {
                failed_at.get_or_insert((now, ev));
            }
            while c.endpoint.poll_transmit().is_some() {
                sent += 1;
            }
            while let Some(ev) = c.endpoint.poll_event() {
                if let (Some(ev), _) = c.on_endpoint_event(now, ev) {
                    failed_at.get_or_insert((now, ev));
                }
            }
            now = c
                .poll_timeout()
                .unwrap()
                .max(now + Duration::from_millis(1));
        }
        let (at, ev) = failed_at.expect("the attempt fails");
        assert!(matches!(ev, BootstrapEvent::Failed { .. }));
        // One request, retransmitted MAX_RETRANSMIT times, then given up within
        // MAX_TRANSMIT_WAIT (93 s): 5 datagrams for the first attempt.
        assert!(at <= t(93_000), "{at:?}");
        // The second attempt 30 s later (5 more), the third 60 s after that (5 more).
        assert_eq!(sent, 15);
    }

    #[test]
    fn provisioning_deadline_is_exchange_lifetime_after_last_request() {
        let mut c = session(0);
        let mut s = server();
        c.on_timeout(t(0), &params());
        let d = c.endpoint.poll_transmit().unwrap();
        s.handle_datagram(t(0), &d).unwrap();
        let Some(EndpointEvent::Request(req)) = s.poll_event() else {
            panic!()
        };
        s.respond(t(0), &req, coap::new_response(code::CHANGED));
        pump(&mut c, &mut s, t(0));
        // A Bootstrap-Write at 100 s extends the deadline.
        s.send_request(t(100_000), coap::new_request(code::PUT, "/1/0"), true)
            .unwrap();
        let mut handed = Vec::new();
        while let Some(d) = s.poll_transmit() {
            c.endpoint.handle_datagram(t(100_000), &d).unwrap();
        }
        while let Some(ev) = c.endpoint.poll_event() {
            handed.extend(c.on_endpoint_event(t(100_000), ev).1);
        }
        assert_eq!(handed.len(), 1);
        assert!(handed[0].1, "served while provisioning");
        let lifetime = TxParams::default().exchange_lifetime();
        assert_eq!(
            c.on_timeout(t(100_000) + lifetime - Duration::from_millis(1), &params()),
            None
        );
        let ev = c.on_timeout(t(100_000) + lifetime, &params());
        assert!(matches!(ev, Some(BootstrapEvent::Failed { .. })), "{ev:?}");
    }

    #[test]
    fn finish_accepted_or_refused() {
        let mut c = session(0);
        // A server-initiated bootstrap: a request arrives before we asked.
        c.note_request(t(5));
        assert!(matches!(c.state(), BootstrapState::Provisioning { .. }));
        assert_eq!(c.on_finish(t(6), false), None);
        assert!(matches!(c.state(), BootstrapState::Provisioning { .. }));
        assert_eq!(c.on_finish(t(7), true), Some(BootstrapEvent::Finished));
        assert!(c.is_finished());
        assert!(!c.note_request(t(8)), "no provisioning after Finish");
        assert_eq!(c.poll_timeout(), None);
        c.restart(t(9), true);
        assert_eq!(c.state(), &BootstrapState::Waiting { request_at: t(9) });
    }

    fn dm_with(sec: Vec<SecurityInstance>, srv: Vec<ServerInstance>) -> DataModel {
        let mut dm = DataModel::new();
        for (i, s) in sec.into_iter().enumerate() {
            dm.security.insert(i as u16, s).unwrap();
        }
        for (i, s) in srv.into_iter().enumerate() {
            dm.server.insert(i as u16, s).unwrap();
        }
        dm
    }

    fn bootstrap_account() -> SecurityInstance {
        let mut b = SecurityInstance::nosec("coap://127.0.0.1:5693", 1);
        b.bootstrap_server = true;
        b.ssid = None;
        b
    }

    #[test]
    fn consistency_check() {
        let ok = dm_with(
            vec![
                bootstrap_account(),
                SecurityInstance::nosec("coap://127.0.0.1:5683", 7),
            ],
            vec![ServerInstance::new(7, 60)],
        );
        assert_eq!(check_configuration(&ok), Ok(()));

        let no_server = dm_with(
            vec![SecurityInstance::nosec("coap://127.0.0.1:5683", 7)],
            vec![],
        );
        let e = check_configuration(&no_server).unwrap_err();
        assert!(e.contains("no Server instance"), "{e}");

        let orphan_server = dm_with(
            vec![SecurityInstance::nosec("coap://127.0.0.1:5683", 7)],
            vec![ServerInstance::new(7, 60), ServerInstance::new(8, 60)],
        );
        assert!(check_configuration(&orphan_server)
            .unwrap_err()
            .contains("/1/1"));

        let only_bootstrap = dm_with(vec![bootstrap_account()], vec![]);
        assert!(check_configuration(&only_bootstrap)
            .unwrap_err()
            .contains("no management-server account"));

        let mut psk = SecurityInstance::nosec("coaps://127.0.0.1:5684", 7);
        psk.security_mode = SecurityMode::Psk;
        psk.public_cert_or_psk_identity = b"id".to_vec();
        let e = check_configuration(&dm_with(
            vec![psk.clone()],
            vec![ServerInstance::new(7, 60)],
        ))
        .unwrap_err();
        assert!(e.contains("PSK key"), "{e}");
        psk.private_cert_or_psk_key = vec![1; 16];
        assert_eq!(
            check_configuration(&dm_with(
                vec![psk.clone()],
                vec![ServerInstance::new(7, 60)]
            )),
            Ok(())
        );
        let mut plain = psk.clone();
        plain.server_uri = "coap://127.0.0.1:5683".into();
        assert!(
            check_configuration(&dm_with(vec![plain], vec![ServerInstance::new(7, 60)]))
                .unwrap_err()
                .contains("scheme")
        );

        let mut cert = psk.clone();
        cert.security_mode = SecurityMode::Certificate;
        cert.private_cert_or_psk_key.clear();
        assert!(
            check_configuration(&dm_with(vec![cert], vec![ServerInstance::new(7, 60)]))
                .unwrap_err()
                .contains("private key")
        );
        let mut rpk = psk;
        rpk.security_mode = SecurityMode::Rpk;
        assert!(
            check_configuration(&dm_with(vec![rpk], vec![ServerInstance::new(7, 60)]))
                .unwrap_err()
                .contains("not supported")
        );
    }
}
