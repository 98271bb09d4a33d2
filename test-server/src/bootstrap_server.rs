//! The sans-IO LwM2M Bootstrap Server: answers `POST /bs?ep=` and then provisions the
//! client with the operations configured for its endpoint name (Bootstrap-Delete, -Write,
//! -Read, -Discover), ending with Bootstrap-Finish and checking the client's answer.
//!
//! One operation is in flight per client; each answer becomes a [`BootstrapEvent::Step`],
//! so tests and the event log see every step. The same endpoint serves EST
//! ([`crate::est_server::EstCa`]) when one is configured. Sockets and DTLS live in `run.rs`;
//! the DTLS layer says who a peer is through [`BootstrapServer::set_peer_auth`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use log::{debug, info, warn};

use estuary::coap::{
    self, code, content_format, Endpoint, EndpointEvent, InboundRequest, RequestHandle, TxParams,
};
use estuary::dm::objects::SecurityMode;
use estuary::dm::tlv::{self, Tlv, TlvType};
use estuary::dm::Value;
use estuary::rng::SeededRng;
use estuary::time::{Instant, Now};

use crate::est_server::{EstCa, EstEvent, PeerAuth};

/// A management-server account the bootstrap server writes into the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedAccount {
    pub security_iid: u16,
    pub server_iid: u16,
    pub ssid: u16,
    pub server_uri: String,
    pub mode: SecurityMode,
    /// /0/x/3: PSK identity or client certificate (DER).
    pub identity: Vec<u8>,
    /// /0/x/5: PSK key or private key (DER).
    pub secret_key: Vec<u8>,
    /// /0/x/4: the server's certificate or trust anchor (DER).
    pub server_public_key: Vec<u8>,
    pub lifetime: u32,
    pub binding: String,
}

impl ProvisionedAccount {
    /// A NoSec account for the management server at `server_uri`.
    pub fn nosec(server_uri: &str, ssid: u16, lifetime: u32) -> Self {
        ProvisionedAccount {
            security_iid: 1,
            server_iid: 0,
            ssid,
            server_uri: server_uri.to_string(),
            mode: SecurityMode::NoSec,
            identity: Vec::new(),
            secret_key: Vec::new(),
            server_public_key: Vec::new(),
            lifetime,
            binding: "U".to_string(),
        }
    }

    /// The Security instance as resource TLVs (a Bootstrap-Write to /0/iid).
    pub fn security_tlv(&self) -> Vec<u8> {
        let r = |rid, v: Value| Tlv::value(TlvType::Resource, rid, &v);
        tlv::encode(&[
            r(0, Value::String(self.server_uri.clone())),
            r(1, Value::Boolean(false)),
            r(2, Value::Integer(self.mode.as_i64())),
            r(3, Value::Opaque(self.identity.clone())),
            r(4, Value::Opaque(self.server_public_key.clone())),
            r(5, Value::Opaque(self.secret_key.clone())),
            r(10, Value::Integer(i64::from(self.ssid))),
        ])
    }

    /// The Server instance as resource TLVs (a Bootstrap-Write to /1/iid).
    pub fn server_tlv(&self) -> Vec<u8> {
        let r = |rid, v: Value| Tlv::value(TlvType::Resource, rid, &v);
        tlv::encode(&[
            r(0, Value::Integer(i64::from(self.ssid))),
            r(1, Value::Integer(i64::from(self.lifetime))),
            r(6, Value::Boolean(false)),
            r(7, Value::String(self.binding.clone())),
        ])
    }
}

/// One bootstrap operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapOp {
    Delete(String),
    Write {
        path: String,
        content_format: u16,
        payload: Vec<u8>,
    },
    Read(String),
    Discover(String),
    Finish,
}

impl BootstrapOp {
    /// "write /0/1" and the like, for events and logs.
    pub fn describe(&self) -> String {
        match self {
            BootstrapOp::Delete(p) => format!("delete {p}"),
            BootstrapOp::Write { path, .. } => format!("write {path}"),
            BootstrapOp::Read(p) => format!("read {p}"),
            BootstrapOp::Discover(p) => format!("discover {p}"),
            BootstrapOp::Finish => "finish".to_string(),
        }
    }

    fn request(&self) -> coap::Packet {
        match self {
            BootstrapOp::Delete(p) => coap::new_request(code::DELETE, p),
            BootstrapOp::Write {
                path,
                content_format,
                payload,
            } => {
                let mut r = coap::new_request(code::PUT, path);
                coap::set_content_format(&mut r, *content_format);
                r.payload = payload.clone();
                r
            }
            BootstrapOp::Read(p) => {
                let mut r = coap::new_request(code::GET, p);
                coap::set_uint_option(
                    &mut r,
                    coap::CoapOption::Accept,
                    u32::from(content_format::LWM2M_TLV),
                );
                r
            }
            BootstrapOp::Discover(p) => {
                let mut r = coap::new_request(code::GET, p);
                coap::set_uint_option(
                    &mut r,
                    coap::CoapOption::Accept,
                    u32::from(content_format::LINK_FORMAT),
                );
                r
            }
            BootstrapOp::Finish => coap::new_request(code::POST, "/bs"),
        }
    }

    /// Reads and Discovers are informational; anything else failing ends the bootstrap.
    fn must_succeed(&self) -> bool {
        !matches!(self, BootstrapOp::Read(_) | BootstrapOp::Discover(_))
    }
}

/// What the server does for one endpoint name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    pub ops: Vec<BootstrapOp>,
}

impl Provisioning {
    /// The usual sequence: delete everything deletable, write each account's Security and
    /// Server instances as TLV, then Finish.
    pub fn accounts(accounts: &[ProvisionedAccount]) -> Self {
        let mut ops = vec![BootstrapOp::Delete("/".to_string())];
        for a in accounts {
            ops.push(BootstrapOp::Write {
                path: format!("/0/{}", a.security_iid),
                content_format: content_format::LWM2M_TLV,
                payload: a.security_tlv(),
            });
            ops.push(BootstrapOp::Write {
                path: format!("/1/{}", a.server_iid),
                content_format: content_format::LWM2M_TLV,
                payload: a.server_tlv(),
            });
        }
        ops.push(BootstrapOp::Finish);
        Provisioning { ops }
    }
}

/// What happened on the bootstrap server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapEvent {
    Requested {
        endpoint: String,
        peer: SocketAddr,
    },
    /// One operation was answered.
    Step {
        endpoint: String,
        op: String,
        code: String,
        content_format: Option<u16>,
        payload: Vec<u8>,
    },
    /// The client answered Bootstrap-Finish with 2.04.
    Finished {
        endpoint: String,
    },
    Failed {
        endpoint: String,
        reason: String,
    },
    /// The EST CA answered a request (`endpoint` as known from bootstrap or the peer's
    /// certificate, else the peer address).
    Est {
        endpoint: String,
        event: EstEvent,
    },
}

/// A provisioning run for one client.
struct Run {
    endpoint: String,
    ops: VecDeque<BootstrapOp>,
    in_flight: Option<(RequestHandle, BootstrapOp)>,
}

/// The Bootstrap Server core.
pub struct BootstrapServer {
    params: TxParams,
    max_message_size: usize,
    rng: SeededRng,
    provisioning: HashMap<String, Provisioning>,
    peers: HashMap<SocketAddr, Endpoint>,
    runs: HashMap<SocketAddr, Run>,
    est: Option<EstCa>,
    auth: HashMap<SocketAddr, PeerAuth>,
    /// Endpoint names of peers that sent a Bootstrap-Request.
    names: HashMap<SocketAddr, String>,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<BootstrapEvent>,
    /// EST requests acknowledged with an empty ACK, answered when due (`est-delay`).
    delayed: Vec<(Instant, SocketAddr, InboundRequest)>,
}

impl BootstrapServer {
    pub fn new(params: TxParams, seed: u64) -> Self {
        BootstrapServer {
            params,
            max_message_size: 4096,
            rng: SeededRng::new(seed),
            provisioning: HashMap::new(),
            peers: HashMap::new(),
            runs: HashMap::new(),
            est: None,
            auth: HashMap::new(),
            names: HashMap::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            delayed: Vec::new(),
        }
    }

    /// Caps every CoAP message the server sends (default 4096 bytes), for peers behind a
    /// small MTU: larger Bootstrap-Writes then go as Block1 and larger EST answers as Block2.
    /// Applies to peers that first talk to the server afterwards.
    pub fn set_max_message_size(&mut self, bytes: usize) {
        self.max_message_size = bytes;
    }

    /// Sets what the server does when `endpoint` asks to be bootstrapped.
    pub fn provision(&mut self, endpoint: &str, p: Provisioning) {
        self.provisioning.insert(endpoint.to_string(), p);
    }

    /// Serves EST on this endpoint.
    pub fn set_est(&mut self, ca: EstCa) {
        self.est = Some(ca);
    }

    pub fn est_mut(&mut self) -> Option<&mut EstCa> {
        self.est.as_mut()
    }

    /// Records how the DTLS layer authenticated `peer` (plain CoAP peers are `None`).
    pub fn set_peer_auth(&mut self, peer: SocketAddr, auth: PeerAuth) {
        self.auth.insert(peer, auth);
    }

    /// Forgets a peer whose connection closed.
    pub fn forget_peer(&mut self, peer: SocketAddr) {
        self.auth.remove(&peer);
        self.names.remove(&peer);
        self.runs.remove(&peer);
        self.peers.remove(&peer);
        self.delayed.retain(|(_, p, _)| *p != peer);
    }

    /// True while a provisioning run for `endpoint` is under way.
    pub fn is_running(&self, endpoint: &str) -> bool {
        self.runs.values().any(|r| r.endpoint == endpoint)
    }

    /// Starts provisioning `endpoint` at `peer` without a Bootstrap-Request (server-initiated
    /// bootstrap, LwM2M 1.1 §5.2.5).
    pub fn start(&mut self, now: Now, endpoint: &str, peer: SocketAddr) -> bool {
        let Some(p) = self.provisioning.get(endpoint).cloned() else {
            return false;
        };
        self.begin(now, endpoint, peer, p);
        true
    }

    fn endpoint(&mut self, peer: SocketAddr) -> &mut Endpoint {
        let (params, max, rng) = (self.params, self.max_message_size, &mut self.rng);
        self.peers
            .entry(peer)
            .or_insert_with(|| Endpoint::new(params, max, 16 * 1024, rng))
    }

    /// Feeds a datagram from `peer`; malformed ones are dropped.
    pub fn handle_datagram(&mut self, now: Now, peer: SocketAddr, data: &[u8]) {
        if self.endpoint(peer).handle_datagram(now.mono, data).is_err() {
            return;
        }
        self.drain(now, peer);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        let (due, later) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _, _)| *at <= now.mono);
        self.delayed = later;
        for (_, peer, req) in due {
            let (resp, _) = self.handle_request(now, peer, &req);
            if let Some(ep) = self.peers.get_mut(&peer) {
                ep.respond(now.mono, &req, resp);
            }
        }
        let peers: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for peer in peers {
            if let Some(ep) = self.peers.get_mut(&peer) {
                ep.handle_timeout(now.mono);
            }
            self.drain(now, peer);
        }
    }

    fn drain(&mut self, now: Now, peer: SocketAddr) {
        loop {
            let Some(ep) = self.peers.get_mut(&peer) else {
                return;
            };
            let ev = ep.poll_event();
            while let Some(d) = ep.poll_transmit() {
                self.tx.push_back((peer, d));
            }
            let Some(ev) = ev else { return };
            match ev {
                EndpointEvent::Request(req) => {
                    let delay = self
                        .est
                        .as_ref()
                        .and_then(|e| e.response_delay(&req.packet, req.confirmable));
                    if let (Some(d), Some(ep)) = (delay, self.peers.get_mut(&peer)) {
                        ep.accept_later(&req);
                        self.delayed.push((now.mono + d, peer, req));
                        continue;
                    }
                    let (resp, start) = self.handle_request(now, peer, &req);
                    if let Some(ep) = self.peers.get_mut(&peer) {
                        ep.respond(now.mono, &req, resp);
                    }
                    if let Some((endpoint, p)) = start {
                        self.begin(now, &endpoint, peer, p);
                    }
                }
                EndpointEvent::Response { handle, packet } => {
                    self.on_answer(now, peer, handle, Ok(packet));
                }
                EndpointEvent::Failed { handle, error } => {
                    self.on_answer(now, peer, handle, Err(error.to_string()));
                }
                _ => {}
            }
        }
    }

    /// Answers a Bootstrap-Request; returns the provisioning to start when accepted.
    fn handle_request(
        &mut self,
        now: Now,
        peer: SocketAddr,
        req: &InboundRequest,
    ) -> (coap::Packet, Option<(String, Provisioning)>) {
        let p = &req.packet;
        let path = coap::uri_path(p).unwrap_or_default();
        if EstCa::serves(&path) {
            return (self.handle_est(now, peer, p), None);
        }
        if coap::raw_code(p) != code::POST || path != ["bs"] {
            return (coap::new_response(code::NOT_FOUND), None);
        }
        let ep = coap::uri_query(p)
            .unwrap_or_default()
            .iter()
            .find_map(|q| q.strip_prefix("ep=").map(str::to_string))
            .filter(|e| !e.is_empty());
        let Some(ep) = ep else {
            debug!("Bootstrap-Request without ep= from {peer}");
            return (coap::new_response(code::BAD_REQUEST), None);
        };
        self.names.insert(peer, ep.clone());
        match self.provisioning.get(&ep) {
            Some(prov) => {
                self.events.push_back(BootstrapEvent::Requested {
                    endpoint: ep.clone(),
                    peer,
                });
                info!("ep={ep} bootstrap requested from {peer}");
                (coap::new_response(code::CHANGED), Some((ep, prov.clone())))
            }
            None => {
                warn!("ep={ep} bootstrap refused: no provisioning for this endpoint");
                self.events.push_back(BootstrapEvent::Failed {
                    endpoint: ep,
                    reason: "no provisioning for this endpoint".to_string(),
                });
                (coap::new_response(code::BAD_REQUEST), None)
            }
        }
    }

    fn handle_est(&mut self, now: Now, peer: SocketAddr, p: &coap::Packet) -> coap::Packet {
        let auth = self.auth.get(&peer).cloned().unwrap_or(PeerAuth::None);
        let Some(est) = self.est.as_mut() else {
            return coap::new_response(code::NOT_FOUND);
        };
        let (resp, event) = est.handle(now.utc, p, &auth);
        if let Some(event) = event {
            let endpoint = match (&auth, self.names.get(&peer)) {
                (_, Some(name)) => name.clone(),
                (PeerAuth::Certificate(c), None) => c
                    .subject_common_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| peer.to_string()),
                _ => peer.to_string(),
            };
            self.events
                .push_back(BootstrapEvent::Est { endpoint, event });
        }
        resp
    }

    /// (Re)starts provisioning for a client: a repeated Bootstrap-Request starts over.
    fn begin(&mut self, now: Now, endpoint: &str, peer: SocketAddr, p: Provisioning) {
        if let Some(old) = self.runs.remove(&peer) {
            if let (Some((h, _)), Some(ep)) = (old.in_flight, self.peers.get_mut(&peer)) {
                ep.cancel(now.mono, h);
            }
        }
        self.runs.insert(
            peer,
            Run {
                endpoint: endpoint.to_string(),
                ops: p.ops.into(),
                in_flight: None,
            },
        );
        self.next_op(now, peer);
    }

    fn next_op(&mut self, now: Now, peer: SocketAddr) {
        let Some(run) = self.runs.get_mut(&peer) else {
            return;
        };
        let Some(op) = run.ops.pop_front() else {
            self.runs.remove(&peer);
            return;
        };
        let endpoint = run.endpoint.clone();
        let sent = self
            .endpoint(peer)
            .send_request(now.mono, op.request(), true);
        match sent {
            Ok(h) => {
                debug!("ep={endpoint} bootstrap {}", op.describe());
                if let Some(run) = self.runs.get_mut(&peer) {
                    run.in_flight = Some((h, op));
                }
                // The request may already be in the endpoint's transmit queue.
                if let Some(ep) = self.peers.get_mut(&peer) {
                    while let Some(d) = ep.poll_transmit() {
                        self.tx.push_back((peer, d));
                    }
                }
            }
            Err(e) => self.fail(peer, format!("{} could not be sent: {e}", op.describe())),
        }
    }

    fn fail(&mut self, peer: SocketAddr, reason: String) {
        if let Some(run) = self.runs.remove(&peer) {
            warn!("ep={} bootstrap failed: {reason}", run.endpoint);
            self.events.push_back(BootstrapEvent::Failed {
                endpoint: run.endpoint,
                reason,
            });
        }
    }

    fn on_answer(
        &mut self,
        now: Now,
        peer: SocketAddr,
        handle: RequestHandle,
        answer: Result<coap::Packet, String>,
    ) {
        let Some(run) = self.runs.get_mut(&peer) else {
            return;
        };
        let Some((h, op)) = run.in_flight.take() else {
            return;
        };
        if h != handle {
            run.in_flight = Some((h, op));
            return;
        }
        let endpoint = run.endpoint.clone();
        let packet = match answer {
            Ok(p) => p,
            Err(e) => return self.fail(peer, format!("{}: {e}", op.describe())),
        };
        let rc = coap::raw_code(&packet);
        self.events.push_back(BootstrapEvent::Step {
            endpoint: endpoint.clone(),
            op: op.describe(),
            code: code::to_string(rc),
            content_format: coap::content_format_of(&packet),
            payload: packet.payload.clone(),
        });
        if !code::is_success(rc) && op.must_succeed() {
            return self.fail(
                peer,
                format!("{} answered {}", op.describe(), code::to_string(rc)),
            );
        }
        if op == BootstrapOp::Finish {
            self.runs.remove(&peer);
            info!("ep={endpoint} bootstrap finished");
            self.events.push_back(BootstrapEvent::Finished { endpoint });
            return;
        }
        self.next_op(now, peer);
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.tx.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let delayed = self.delayed.iter().map(|(at, _, _)| *at);
        self.peers
            .values()
            .filter_map(|e| e.poll_timeout())
            .chain(delayed)
            .min()
    }

    pub fn poll_event(&mut self) -> Option<BootstrapEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary::time::UtcTime;

    fn now(ms: u64) -> Now {
        Now {
            mono: Instant::from_millis(ms),
            utc: UtcTime::from_unix_millis(1_700_000_000_000 + ms as i64),
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    /// A client-side endpoint that answers every bootstrap operation with `answer(op)`.
    struct FakeClient {
        ep: Endpoint,
        seen: Vec<(u8, String, Vec<u8>)>,
    }

    impl FakeClient {
        fn new() -> Self {
            let mut rng = SeededRng::new(5);
            FakeClient {
                ep: Endpoint::new(TxParams::default(), 4096, 4096, &mut rng),
                seen: Vec::new(),
            }
        }

        fn exchange(
            &mut self,
            s: &mut BootstrapServer,
            t: Now,
            answer: &dyn Fn(u8, &str) -> u8,
        ) -> Vec<BootstrapEvent> {
            for _ in 0..50 {
                let mut moved = false;
                while let Some(d) = self.ep.poll_transmit() {
                    s.handle_datagram(t, peer(), &d);
                    moved = true;
                }
                while let Some((_, d)) = s.poll_transmit() {
                    self.ep.handle_datagram(t.mono, &d).unwrap();
                    moved = true;
                }
                while let Some(ev) = self.ep.poll_event() {
                    if let EndpointEvent::Request(req) = ev {
                        let m = coap::raw_code(&req.packet);
                        let path = format!(
                            "/{}",
                            coap::uri_path(&req.packet).unwrap_or_default().join("/")
                        );
                        self.seen
                            .push((m, path.clone(), req.packet.payload.clone()));
                        let mut resp = coap::new_response(answer(m, &path));
                        if m == code::GET {
                            coap::set_content_format(&mut resp, content_format::LINK_FORMAT);
                            resp.payload = b"</1/0>".to_vec();
                        }
                        self.ep.respond(t.mono, &req, resp);
                    }
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            std::iter::from_fn(|| s.poll_event()).collect()
        }

        fn request(&mut self, t: Now, ep_name: &str) {
            let mut req = coap::new_request(code::POST, "/bs");
            coap::add_uri_query(&mut req, &format!("ep={ep_name}"));
            self.ep.send_request(t.mono, req, true).unwrap();
        }
    }

    fn server_with(ep: &str, p: Provisioning) -> BootstrapServer {
        let mut s = BootstrapServer::new(TxParams::default(), 9);
        s.provision(ep, p);
        s
    }

    #[test]
    fn provisions_accounts_in_order_then_finishes() {
        let acct = ProvisionedAccount::nosec("coap://127.0.0.1:5683", 5, 120);
        let mut s = server_with("dev1", Provisioning::accounts(&[acct]));
        let mut c = FakeClient::new();
        c.request(now(0), "dev1");
        let evs = c.exchange(&mut s, now(0), &|m, _| match m {
            code::DELETE => code::DELETED,
            _ => code::CHANGED,
        });
        let ops: Vec<_> = c.seen.iter().map(|(m, p, _)| (*m, p.as_str())).collect();
        assert_eq!(
            ops,
            vec![
                (code::DELETE, "/"),
                (code::PUT, "/0/1"),
                (code::PUT, "/1/0"),
                (code::POST, "/bs"),
            ]
        );
        // The Security write decodes to the account's URI, mode and SSID.
        let sec = tlv::decode(&c.seen[1].2).unwrap();
        let uri = sec.iter().find(|t| t.id == 0).unwrap();
        assert_eq!(
            uri.body,
            tlv::TlvBody::Value(b"coap://127.0.0.1:5683".to_vec())
        );
        let ssid = sec.iter().find(|t| t.id == 10).unwrap();
        assert_eq!(ssid.body, tlv::TlvBody::Value(vec![5]));
        assert!(matches!(evs[0], BootstrapEvent::Requested { .. }));
        let steps: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                BootstrapEvent::Step { op, code, .. } => Some(format!("{op} {code}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                "delete / 2.02",
                "write /0/1 2.04",
                "write /1/0 2.04",
                "finish 2.04"
            ]
        );
        assert_eq!(
            evs.last(),
            Some(&BootstrapEvent::Finished {
                endpoint: "dev1".into()
            })
        );
        assert!(!s.is_running("dev1"));
    }

    #[test]
    fn finish_refused_is_reported_as_failure() {
        let acct = ProvisionedAccount::nosec("coap://127.0.0.1:5683", 5, 120);
        let mut s = server_with("dev1", Provisioning::accounts(&[acct]));
        let mut c = FakeClient::new();
        c.request(now(0), "dev1");
        let evs = c.exchange(&mut s, now(0), &|m, p| match (m, p) {
            (code::POST, "/bs") => code::NOT_ACCEPTABLE,
            (code::DELETE, _) => code::DELETED,
            _ => code::CHANGED,
        });
        assert_eq!(
            evs.last(),
            Some(&BootstrapEvent::Failed {
                endpoint: "dev1".into(),
                reason: "finish answered 4.06".into()
            })
        );
    }

    #[test]
    fn failed_write_stops_before_finish() {
        let acct = ProvisionedAccount::nosec("coap://127.0.0.1:5683", 5, 120);
        let mut s = server_with("dev1", Provisioning::accounts(&[acct]));
        let mut c = FakeClient::new();
        c.request(now(0), "dev1");
        let evs = c.exchange(&mut s, now(0), &|m, p| match (m, p) {
            (code::PUT, "/0/1") => code::BAD_REQUEST,
            (code::DELETE, _) => code::DELETED,
            _ => code::CHANGED,
        });
        assert_eq!(c.seen.len(), 2, "no writes after the refused one");
        assert!(matches!(
            evs.last(),
            Some(BootstrapEvent::Failed { reason, .. }) if reason == "write /0/1 answered 4.00"
        ));
    }

    #[test]
    fn unknown_endpoint_is_refused() {
        let mut s = server_with("dev1", Provisioning::default());
        let mut c = FakeClient::new();
        c.request(now(0), "intruder");
        let evs = c.exchange(&mut s, now(0), &|_, _| code::CHANGED);
        assert!(c.seen.is_empty());
        assert_eq!(
            evs,
            vec![BootstrapEvent::Failed {
                endpoint: "intruder".into(),
                reason: "no provisioning for this endpoint".into()
            }]
        );
    }

    #[test]
    fn read_and_discover_results_are_reported_and_do_not_stop_the_run() {
        let p = Provisioning {
            ops: vec![
                BootstrapOp::Discover("/".into()),
                BootstrapOp::Read("/1".into()),
                BootstrapOp::Finish,
            ],
        };
        let mut s = server_with("dev1", p);
        let mut c = FakeClient::new();
        c.request(now(0), "dev1");
        let evs = c.exchange(&mut s, now(0), &|m, p| match (m, p) {
            (code::GET, "/1") => code::NOT_FOUND,
            (code::GET, _) => code::CONTENT,
            _ => code::CHANGED,
        });
        let discover = evs
            .iter()
            .find_map(|e| match e {
                BootstrapEvent::Step { op, payload, .. } if op == "discover /" => Some(payload),
                _ => None,
            })
            .unwrap();
        assert_eq!(discover, b"</1/0>");
        assert!(matches!(evs.last(), Some(BootstrapEvent::Finished { .. })));
    }

    #[test]
    fn silent_client_fails_the_run_within_the_retransmission_window() {
        let acct = ProvisionedAccount::nosec("coap://127.0.0.1:5683", 5, 120);
        let mut s = server_with("dev1", Provisioning::accounts(&[acct]));
        let mut c = FakeClient::new();
        c.request(now(0), "dev1");
        // Deliver the request and the 2.04; then the client goes silent.
        while let Some(d) = c.ep.poll_transmit() {
            s.handle_datagram(now(0), peer(), &d);
        }
        while s.poll_transmit().is_some() {}
        let mut t = 0;
        let mut failed = None;
        while t < 300_000 && failed.is_none() {
            let Some(next) = s.poll_timeout() else { break };
            t = next.as_millis();
            s.handle_timeout(now(t));
            while s.poll_transmit().is_some() {}
            failed = std::iter::from_fn(|| s.poll_event())
                .find(|e| matches!(e, BootstrapEvent::Failed { .. }));
        }
        let Some(BootstrapEvent::Failed { reason, .. }) = failed else {
            panic!("no failure")
        };
        assert!(reason.starts_with("delete /:"), "{reason}");
        assert!(t <= 93_000, "gave up at {t} ms");
    }

    #[test]
    fn est_requests_are_served_on_the_same_endpoint_with_the_peer_identity() {
        use estuary::crypto::{CertificateIssuer, Drbg, KeyPair, TrustStore};
        let mut rng = Drbg::from_seed(1);
        let ca = CertificateIssuer::new_root_ca(
            KeyPair::generate(&mut rng).unwrap(),
            "CN=EST CA",
            UtcTime::from_unix_seconds(1_600_000_000),
            UtcTime::from_unix_seconds(1_900_000_000),
            &mut rng,
        )
        .unwrap();
        let ca_der = ca.certificate().der().to_vec();
        let mut s = server_with("dev1", Provisioning::default());
        s.set_est(EstCa::new(
            ca,
            TrustStore::new(),
            std::time::Duration::from_secs(60),
            rng,
        ));
        s.set_peer_auth(peer(), PeerAuth::Psk(b"dev1".to_vec()));
        let mut c = FakeClient::new();
        let mut req = coap::new_request(code::GET, "/est/crts");
        coap::set_uint_option(&mut req, coap::CoapOption::Accept, 287);
        c.ep.send_request(now(0).mono, req, true).unwrap();
        while let Some(d) = c.ep.poll_transmit() {
            s.handle_datagram(now(0), peer(), &d);
        }
        while let Some((_, d)) = s.poll_transmit() {
            c.ep.handle_datagram(now(0).mono, &d).unwrap();
        }
        let Some(EndpointEvent::Response { packet, .. }) = c.ep.poll_event() else {
            panic!("no response")
        };
        assert_eq!(coap::raw_code(&packet), code::CONTENT);
        assert_eq!(packet.payload, ca_der);
        assert_eq!(
            s.poll_event(),
            Some(BootstrapEvent::Est {
                endpoint: "127.0.0.1:40000".into(),
                event: EstEvent::CaCerts { format: 287 }
            })
        );
        // A malformed CSR is refused, and the refusal is an event.
        let mut req = coap::new_request(code::POST, "/est/sen");
        coap::set_content_format(&mut req, content_format::PKCS10);
        req.payload = vec![0x30, 0x00];
        c.ep.send_request(now(0).mono, req, true).unwrap();
        while let Some(d) = c.ep.poll_transmit() {
            s.handle_datagram(now(0), peer(), &d);
        }
        assert!(matches!(
            s.poll_event(),
            Some(BootstrapEvent::Est {
                event: EstEvent::Refused {
                    operation: "sen",
                    ..
                },
                ..
            })
        ));
    }
}
