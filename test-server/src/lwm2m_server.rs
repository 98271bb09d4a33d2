//! The LwM2M Server side of the test server, sans-IO: a registration table fed by Register,
//! Update and De-register, device-management requests (Read, Write, Execute, Create, Delete,
//! Discover, Write-Attributes) sent to registered clients, and Observe with its
//! notifications and cancellation. Uses the client's own CoAP [`Endpoint`], one per peer.
//!
//! Sockets, clocks, the control API and logging of events live in `run.rs` and `events.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use estuary::coap::{
    self, code, content_format, Endpoint, EndpointEvent, InboundRequest, RequestHandle, TxParams,
};
use estuary::dm::link;
use estuary::rng::{RandomSource, SeededRng};
use estuary::time::{Instant, Now, UtcTime};
use log::{debug, warn};

/// Identifies a device-management operation started through [`Lwm2mServer::request`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// One registered client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub endpoint: String,
    /// Location path given to the client, e.g. "/rd/3".
    pub location: String,
    pub lifetime: u32,
    pub lwm2m_version: String,
    pub binding: String,
    /// The object links from the registration payload.
    pub objects: Vec<String>,
    pub peer: SocketAddr,
    pub registered_at: UtcTime,
    pub last_update: UtcTime,
    expires_at: Instant,
}

/// The answer to a device-management operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// CoAP response code, e.g. "2.05".
    pub code: String,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
}

/// What happened on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    Registered {
        endpoint: String,
        location: String,
        lifetime: u32,
        peer: SocketAddr,
    },
    Updated {
        endpoint: String,
    },
    Deregistered {
        endpoint: String,
    },
    /// The registration lifetime ran out without an Update.
    Expired {
        endpoint: String,
    },
    /// A Register refused with 4.03: the peer did not authenticate as its endpoint must
    /// (see [`Lwm2mServer::require_authentication`]).
    RegisterRefused {
        endpoint: String,
        reason: String,
    },
    /// A Read (or other operation) finished, with the response or why it failed. For an
    /// Observe GET this is the first response; later values arrive as `Notification`.
    OpFinished {
        op: OpId,
        endpoint: String,
        result: Result<OpResult, String>,
    },
    /// A notification for the observation started by `op`.
    Notification {
        op: OpId,
        endpoint: String,
        /// The Observe option's sequence number.
        observe: u32,
        result: OpResult,
    },
}

/// The CoAP method of a device-management request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpMethod {
    Get,
    Put,
    Post,
    Delete,
}

impl OpMethod {
    fn code(self) -> u8 {
        match self {
            OpMethod::Get => code::GET,
            OpMethod::Put => code::PUT,
            OpMethod::Post => code::POST,
            OpMethod::Delete => code::DELETE,
        }
    }
}

/// A device-management request as the server's user describes it; the LwM2M operation
/// follows from method, path and options (e.g. PUT with a query = Write-Attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRequest {
    pub method: OpMethod,
    /// "/3303/0/5700"
    pub path: String,
    pub content_format: Option<u16>,
    pub accept: Option<u16>,
    /// Uri-Query items, e.g. `["pmin=5", "pmax=30"]` for Write-Attributes.
    pub query: Vec<String>,
    pub payload: Vec<u8>,
    /// `Some(0)` registers an observation, `Some(1)` deregisters one.
    pub observe: Option<u32>,
}

impl OpRequest {
    /// A GET (Read, or Discover with an Accept of link format).
    pub fn get(path: &str) -> Self {
        OpRequest {
            method: OpMethod::Get,
            path: path.to_string(),
            content_format: None,
            accept: None,
            query: Vec::new(),
            payload: Vec::new(),
            observe: None,
        }
    }

    /// A request with a body in the given Content-Format.
    pub fn with_body(method: OpMethod, path: &str, cf: u16, payload: Vec<u8>) -> Self {
        OpRequest {
            method,
            content_format: Some(cf),
            payload,
            ..OpRequest::get(path)
        }
    }
}

/// What the server remembers of a request in flight.
#[derive(Clone, Debug)]
struct PendingOp {
    op: OpId,
    endpoint: String,
    /// The request registered an observation (GET with Observe=0).
    observe: bool,
}

/// Why an operation could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no client registered as {0:?}")]
    UnknownEndpoint(String),
    #[error("invalid path {0:?}")]
    BadPath(String),
    #[error("request could not be sent: {0}")]
    Send(String),
    #[error("no active observation {0:?}")]
    UnknownObservation(OpId),
}

/// Grace period after a lifetime before a registration is dropped.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// The LwM2M Server core.
pub struct Lwm2mServer {
    params: TxParams,
    max_message_size: usize,
    rng: SeededRng,
    peers: HashMap<SocketAddr, Endpoint>,
    /// Registrations by location ID.
    registrations: BTreeMap<u32, Registration>,
    next_location: u32,
    ops: HashMap<(SocketAddr, RequestHandle), PendingOp>,
    /// Live observations: the request handle whose token the notifications carry.
    observations: HashMap<(SocketAddr, RequestHandle), PendingOp>,
    next_op: u64,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ServerEvent>,
    /// How endpoints must have authenticated to register ("est", ...), from provisioning.
    required_auth: HashMap<String, String>,
    /// How each peer authenticated ("nosec", "psk", "certificate", "est"), told by the
    /// transport that decrypted its datagrams.
    peer_auth: HashMap<SocketAddr, String>,
}

impl Lwm2mServer {
    pub fn new(params: TxParams, seed: u64) -> Self {
        Lwm2mServer {
            params,
            max_message_size: 4096,
            rng: SeededRng::new(seed),
            peers: HashMap::new(),
            registrations: BTreeMap::new(),
            next_location: 1,
            ops: HashMap::new(),
            observations: HashMap::new(),
            next_op: 1,
            tx: VecDeque::new(),
            events: VecDeque::new(),
            required_auth: HashMap::new(),
            peer_auth: HashMap::new(),
        }
    }

    /// Accepts a Register from `endpoint` only from a peer that authenticated as `mode`
    /// ("est": with a certificate from the EST CA); others get 4.03.
    pub fn require_authentication(&mut self, endpoint: &str, mode: &str) {
        self.required_auth
            .insert(endpoint.to_string(), mode.to_string());
    }

    /// Records how `peer` authenticated (its DTLS session's mode, or "nosec").
    pub fn set_peer_auth(&mut self, peer: SocketAddr, mode: &str) {
        if self.peer_auth.get(&peer).map(String::as_str) != Some(mode) {
            self.peer_auth.insert(peer, mode.to_string());
        }
    }

    fn endpoint(&mut self, peer: SocketAddr) -> &mut Endpoint {
        let (params, max, rng) = (self.params, self.max_message_size, &mut self.rng);
        self.peers
            .entry(peer)
            .or_insert_with(|| Endpoint::new(params, max, 16 * 1024, rng))
    }

    /// All current registrations.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    pub fn registration(&self, endpoint: &str) -> Option<&Registration> {
        self.registrations.values().find(|r| r.endpoint == endpoint)
    }

    /// Feeds a datagram from `peer`; malformed ones are dropped.
    pub fn handle_datagram(&mut self, now: Now, peer: SocketAddr, data: &[u8]) {
        if self.endpoint(peer).handle_datagram(now.mono, data).is_err() {
            return;
        }
        self.drain(now, peer);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        let peers: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for peer in peers {
            if let Some(ep) = self.peers.get_mut(&peer) {
                ep.handle_timeout(now.mono);
            }
            self.drain(now, peer);
        }
        let expired: Vec<u32> = self
            .registrations
            .iter()
            .filter(|(_, r)| r.expires_at + EXPIRY_GRACE <= now.mono)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(r) = self.registrations.remove(&k) {
                self.events.push_back(ServerEvent::Expired {
                    endpoint: r.endpoint,
                });
            }
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
                    let resp = self.handle_request(now, peer, &req);
                    if let Some(ep) = self.peers.get_mut(&peer) {
                        ep.respond(now.mono, &req, resp);
                    }
                }
                EndpointEvent::Response { handle, packet } => {
                    if let Some(p) = self.ops.remove(&(peer, handle)) {
                        // The observation lives on only if the client accepted it (2.05 with
                        // an Observe option, RFC 7641 §3.1).
                        let accepted = coap::code::is_success(coap::raw_code(&packet))
                            && coap::uint_option(&packet, coap::CoapOption::Observe).is_some();
                        if p.observe && accepted {
                            self.observations.insert((peer, handle), p.clone());
                        } else if p.observe {
                            if let Some(ep) = self.peers.get_mut(&peer) {
                                ep.forget_observation(handle);
                            }
                        }
                        self.events.push_back(ServerEvent::OpFinished {
                            op: p.op,
                            endpoint: p.endpoint,
                            result: Ok(op_result(packet)),
                        });
                    }
                }
                EndpointEvent::Failed { handle, error } => {
                    if let Some(p) = self.ops.remove(&(peer, handle)) {
                        self.events.push_back(ServerEvent::OpFinished {
                            op: p.op,
                            endpoint: p.endpoint,
                            result: Err(error.to_string()),
                        });
                    }
                }
                EndpointEvent::Notification { handle, packet } => {
                    let key = (peer, handle);
                    let Some(p) = self.observations.get(&key).cloned() else {
                        continue;
                    };
                    let observe = coap::uint_option(&packet, coap::CoapOption::Observe);
                    // A notification without Observe (e.g. 4.04) ends it (RFC 7641 §3.2).
                    if observe.is_none() || !coap::code::is_success(coap::raw_code(&packet)) {
                        self.observations.remove(&key);
                        if let Some(ep) = self.peers.get_mut(&peer) {
                            ep.forget_observation(handle);
                        }
                    }
                    self.events.push_back(ServerEvent::Notification {
                        op: p.op,
                        endpoint: p.endpoint,
                        observe: observe.unwrap_or(0),
                        result: op_result(packet),
                    });
                }
                EndpointEvent::Delivered { .. } => {}
            }
        }
    }

    fn handle_request(&mut self, now: Now, peer: SocketAddr, req: &InboundRequest) -> coap::Packet {
        let p = &req.packet;
        let (Some(path), Some(query)) = (coap::uri_path(p), coap::uri_query(p)) else {
            return coap::new_response(code::BAD_REQUEST);
        };
        let method = coap::raw_code(p);
        match (method, path.as_slice()) {
            (code::POST, [rd]) if rd == "rd" => self.register(now, peer, &query, &p.payload),
            (code::POST, [rd, id]) if rd == "rd" => self.update(now, peer, id, &query, &p.payload),
            (code::DELETE, [rd, id]) if rd == "rd" => self.deregister(id),
            _ => coap::new_response(code::NOT_FOUND),
        }
    }

    fn register(
        &mut self,
        now: Now,
        peer: SocketAddr,
        query: &[String],
        payload: &[u8],
    ) -> coap::Packet {
        let q = |k: &str| {
            query
                .iter()
                .find_map(|s| s.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let Some(ep) = q("ep").filter(|e| !e.is_empty()) else {
            debug!("Register without ep= from {peer}");
            return coap::new_response(code::BAD_REQUEST);
        };
        let lifetime = match q("lt").map(str::parse::<u32>) {
            None => 86400,
            Some(Ok(lt)) if lt > 0 => lt,
            Some(_) => return coap::new_response(code::BAD_REQUEST),
        };
        let version = q("lwm2m").unwrap_or("1.0").to_string();
        if !matches!(version.as_str(), "1.0" | "1.1") {
            return coap::new_response(code::PRECONDITION_FAILED);
        }
        let Some(objects) = parse_objects(payload) else {
            return coap::new_response(code::BAD_REQUEST);
        };
        let ep = ep.to_string();
        if let Some(required) = self.required_auth.get(&ep) {
            let got = self.peer_auth.get(&peer).map_or("nosec", String::as_str);
            if got != required {
                let reason = format!("registered over {got}, but must authenticate as {required}");
                warn!("Register from ep={ep} at {peer} refused: {reason}");
                self.events.push_back(ServerEvent::RegisterRefused {
                    endpoint: ep,
                    reason,
                });
                return coap::new_response(code::FORBIDDEN);
            }
        }
        // A new registration replaces any older one of the same endpoint.
        self.registrations.retain(|_, r| r.endpoint != ep);
        let id = self.next_location;
        self.next_location += 1;
        let location = format!("/rd/{id}");
        self.registrations.insert(
            id,
            Registration {
                endpoint: ep.clone(),
                location: location.clone(),
                lifetime,
                lwm2m_version: version,
                binding: q("b").unwrap_or("U").to_string(),
                objects,
                peer,
                registered_at: now.utc,
                last_update: now.utc,
                expires_at: now.mono + Duration::from_secs(u64::from(lifetime)),
            },
        );
        self.events.push_back(ServerEvent::Registered {
            endpoint: ep,
            location,
            lifetime,
            peer,
        });
        let mut r = coap::new_response(code::CREATED);
        r.add_option(coap::CoapOption::LocationPath, b"rd".to_vec());
        r.add_option(coap::CoapOption::LocationPath, id.to_string().into_bytes());
        r
    }

    fn update(
        &mut self,
        now: Now,
        peer: SocketAddr,
        id: &str,
        query: &[String],
        payload: &[u8],
    ) -> coap::Packet {
        let Some(reg) = id
            .parse::<u32>()
            .ok()
            .and_then(|id| self.registrations.get_mut(&id))
        else {
            return coap::new_response(code::NOT_FOUND);
        };
        for item in query {
            match item.split_once('=') {
                Some(("lt", v)) => match v.parse::<u32>() {
                    Ok(lt) if lt > 0 => reg.lifetime = lt,
                    _ => return coap::new_response(code::BAD_REQUEST),
                },
                Some(("b", v)) => reg.binding = v.to_string(),
                _ => {}
            }
        }
        if !payload.is_empty() {
            match parse_objects(payload) {
                Some(objects) => reg.objects = objects,
                None => return coap::new_response(code::BAD_REQUEST),
            }
        }
        reg.peer = peer;
        reg.last_update = now.utc;
        reg.expires_at = now.mono + Duration::from_secs(u64::from(reg.lifetime));
        self.events.push_back(ServerEvent::Updated {
            endpoint: reg.endpoint.clone(),
        });
        coap::new_response(code::CHANGED)
    }

    fn deregister(&mut self, id: &str) -> coap::Packet {
        match id
            .parse::<u32>()
            .ok()
            .and_then(|id| self.registrations.remove(&id))
        {
            Some(r) => {
                self.events.push_back(ServerEvent::Deregistered {
                    endpoint: r.endpoint,
                });
                coap::new_response(code::DELETED)
            }
            None => coap::new_response(code::NOT_FOUND),
        }
    }

    /// Sends a Read of `path` (e.g. "/3/0/0") to a registered client, with an optional
    /// Accept content format; the answer arrives as [`ServerEvent::OpFinished`].
    pub fn read(
        &mut self,
        now: Now,
        endpoint: &str,
        path: &str,
        accept: Option<u16>,
    ) -> Result<OpId, OpError> {
        let req = OpRequest {
            accept,
            ..OpRequest::get(path)
        };
        self.request(now, endpoint, req)
    }

    /// Sends a device-management request to a registered client; the answer arrives as
    /// [`ServerEvent::OpFinished`], and for an accepted Observe every later value as
    /// [`ServerEvent::Notification`] with the same [`OpId`].
    pub fn request(&mut self, now: Now, endpoint: &str, req: OpRequest) -> Result<OpId, OpError> {
        let parsed =
            estuary::dm::Path::parse(&req.path).map_err(|_| OpError::BadPath(req.path.clone()))?;
        let peer = self
            .registration(endpoint)
            .map(|r| r.peer)
            .ok_or_else(|| OpError::UnknownEndpoint(endpoint.to_string()))?;
        let mut packet = coap::new_request(req.method.code(), &parsed.to_string());
        if let Some(obs) = req.observe {
            // Observe precedes Uri-Path in option order; coap-lite sorts options itself.
            coap::set_uint_option(&mut packet, coap::CoapOption::Observe, obs);
        }
        if let Some(cf) = req.content_format {
            coap::set_content_format(&mut packet, cf);
        }
        for q in &req.query {
            packet.add_option(coap::CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(cf) = req.accept {
            coap::set_uint_option(&mut packet, coap::CoapOption::Accept, u32::from(cf));
        }
        packet.payload = req.payload;
        let handle = self
            .endpoint(peer)
            .send_request(now.mono, packet, true)
            .map_err(|e| OpError::Send(e.to_string()))?;
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(
            (peer, handle),
            PendingOp {
                op,
                endpoint: endpoint.to_string(),
                observe: req.method == OpMethod::Get && req.observe == Some(0),
            },
        );
        self.drain(now, peer);
        Ok(op)
    }

    /// Stops an observation: its token is forgotten, so the client's next notification is
    /// answered with RST (RFC 7641 §3.6) and no further `Notification` events appear.
    pub fn cancel_observation(
        &mut self,
        now: Now,
        endpoint: &str,
        op: OpId,
    ) -> Result<(), OpError> {
        let key = self
            .observations
            .iter()
            .find(|(_, p)| p.op == op && p.endpoint == endpoint)
            .map(|(k, _)| *k)
            .ok_or(OpError::UnknownObservation(op))?;
        self.observations.remove(&key);
        let (peer, handle) = key;
        if let Some(ep) = self.peers.get_mut(&peer) {
            ep.forget_observation(handle);
        }
        self.drain(now, peer);
        Ok(())
    }

    /// The observations currently live, as (operation, endpoint).
    pub fn observations(&self) -> Vec<(OpId, String)> {
        let mut v: Vec<(OpId, String)> = self
            .observations
            .values()
            .map(|p| (p.op, p.endpoint.clone()))
            .collect();
        v.sort();
        v
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.tx.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let reg = self
            .registrations
            .values()
            .map(|r| r.expires_at + EXPIRY_GRACE)
            .min();
        self.peers
            .values()
            .filter_map(|e| e.poll_timeout())
            .chain(reg)
            .min()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// A random value from the server's generator (for tests wanting reproducible jitter).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

fn op_result(packet: coap::Packet) -> OpResult {
    OpResult {
        code: code::to_string(coap::raw_code(&packet)),
        content_format: coap::content_format_of(&packet),
        payload: packet.payload,
    }
}

/// Object links from a Register/Update payload, as their target paths.
fn parse_objects(payload: &[u8]) -> Option<Vec<String>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    let text = std::str::from_utf8(payload).ok()?;
    Some(link::parse(text)?.into_iter().map(|l| l.target).collect())
}

/// The text/plain or TLV Content-Format numbers accepted by `format=` in the control API.
pub fn format_from_name(name: &str) -> Option<u16> {
    Some(match name {
        "text" => content_format::TEXT_PLAIN,
        "tlv" => content_format::LWM2M_TLV,
        "opaque" => content_format::OCTET_STREAM,
        "link" => content_format::LINK_FORMAT,
        "senml-json" => content_format::SENML_JSON,
        "senml-cbor" => content_format::SENML_CBOR,
        "lwm2m-cbor" => content_format::LWM2M_CBOR,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary::coap::CoapOption;

    const CLIENT: &str = "127.0.0.1:56830";

    fn now0() -> Now {
        Now::new(
            Instant::from_millis(1_000),
            UtcTime::from_unix_seconds(1_700_000_000),
        )
    }

    /// A server with one client "ep1" registered from [`CLIENT`], plus that client's endpoint.
    fn registered() -> (Lwm2mServer, Endpoint) {
        let mut server = Lwm2mServer::new(TxParams::default(), 7);
        let mut rng = SeededRng::new(3);
        let mut client = Endpoint::new(TxParams::default(), 1152, 4096, &mut rng);
        let mut reg = coap::new_request(code::POST, "/rd");
        reg.add_option(CoapOption::UriQuery, b"ep=ep1".to_vec());
        client.send_request(now0().mono, reg, true).unwrap();
        pump(&mut server, &mut client);
        assert!(server.registration("ep1").is_some());
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
        (server, client)
    }

    #[test]
    fn an_est_endpoint_registers_only_with_an_est_certificate() {
        let peer: SocketAddr = CLIENT.parse().unwrap();
        let mut server = Lwm2mServer::new(TxParams::default(), 7);
        server.require_authentication("ep1", "est");
        let mut rng = SeededRng::new(3);
        let mut client = Endpoint::new(TxParams::default(), 1152, 4096, &mut rng);
        let register = |client: &mut Endpoint| {
            let mut reg = coap::new_request(code::POST, "/rd");
            reg.add_option(CoapOption::UriQuery, b"ep=ep1".to_vec());
            client.send_request(now0().mono, reg, true).unwrap();
        };
        let answer = |client: &mut Endpoint| loop {
            match client.poll_event() {
                Some(EndpointEvent::Response { packet, .. }) => return coap::raw_code(&packet),
                Some(_) => continue,
                None => panic!("no response"),
            }
        };
        // The factory certificate (mode "certificate") and plain CoAP are refused.
        for mode in ["certificate", "nosec"] {
            server.set_peer_auth(peer, mode);
            register(&mut client);
            pump(&mut server, &mut client);
            assert_eq!(answer(&mut client), code::FORBIDDEN, "{mode}");
            assert!(server.registration("ep1").is_none());
            match server.poll_event() {
                Some(ServerEvent::RegisterRefused { endpoint, reason }) => {
                    assert_eq!(endpoint, "ep1");
                    assert!(reason.contains(mode) && reason.contains("est"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Other endpoints are not affected; ep1 with its EST certificate registers.
        server.set_peer_auth(peer, "est");
        register(&mut client);
        pump(&mut server, &mut client);
        assert_eq!(answer(&mut client), code::CREATED);
        assert!(server.registration("ep1").is_some());
    }

    /// Moves every queued datagram between the two sides until both are quiet.
    fn pump(server: &mut Lwm2mServer, client: &mut Endpoint) {
        let peer: SocketAddr = CLIENT.parse().unwrap();
        loop {
            let mut moved = false;
            while let Some(d) = client.poll_transmit() {
                server.handle_datagram(now0(), peer, &d);
                moved = true;
            }
            while let Some((_, d)) = server.poll_transmit() {
                client.handle_datagram(now0().mono, &d).unwrap();
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn next_request(client: &mut Endpoint) -> coap::InboundRequest {
        loop {
            match client.poll_event() {
                Some(EndpointEvent::Request(r)) => return r,
                Some(_) => continue,
                None => panic!("no request reached the client"),
            }
        }
    }

    #[test]
    fn request_carries_method_options_and_body() {
        let (mut server, mut client) = registered();
        let req = OpRequest {
            query: vec!["pmin=5".into(), "pmax=30".into()],
            ..OpRequest::with_body(OpMethod::Put, "/3303/0/5700", 0, b"21.5".to_vec())
        };
        let op = server.request(now0(), "ep1", req).unwrap();
        pump(&mut server, &mut client);
        let r = next_request(&mut client);
        assert_eq!(coap::raw_code(&r.packet), code::PUT);
        assert_eq!(coap::uri_path(&r.packet).unwrap(), ["3303", "0", "5700"]);
        assert_eq!(coap::uri_query(&r.packet).unwrap(), ["pmin=5", "pmax=30"]);
        assert_eq!(coap::content_format_of(&r.packet), Some(0));
        assert_eq!(r.packet.payload, b"21.5");
        client.respond(now0().mono, &r, coap::new_response(code::CHANGED));
        pump(&mut server, &mut client);
        match server.poll_event() {
            Some(ServerEvent::OpFinished {
                op: o,
                result: Ok(res),
                ..
            }) => {
                assert_eq!(o, op);
                assert_eq!(res.code, "2.04");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Not an observation: nothing to cancel.
        assert_eq!(
            server.cancel_observation(now0(), "ep1", op),
            Err(OpError::UnknownObservation(op))
        );
    }

    #[test]
    fn bad_path_and_unknown_endpoint_send_nothing() {
        let (mut server, _client) = registered();
        assert!(matches!(
            server.request(now0(), "ep1", OpRequest::get("/3/x")),
            Err(OpError::BadPath(_))
        ));
        assert!(matches!(
            server.request(now0(), "nobody", OpRequest::get("/3/0")),
            Err(OpError::UnknownEndpoint(_))
        ));
        assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn observe_is_live_only_when_the_client_accepts_it() {
        let (mut server, mut client) = registered();
        let req = OpRequest {
            observe: Some(0),
            accept: Some(content_format::TEXT_PLAIN),
            ..OpRequest::get("/3/0/9")
        };
        let accepted = server.request(now0(), "ep1", req.clone()).unwrap();
        pump(&mut server, &mut client);
        let r = next_request(&mut client);
        let observe_token = r.token.clone();
        assert_eq!(coap::uint_option(&r.packet, CoapOption::Observe), Some(0));
        assert_eq!(coap::accept_of(&r.packet), Some(content_format::TEXT_PLAIN));
        let mut resp = coap::new_response(code::CONTENT);
        coap::set_uint_option(&mut resp, CoapOption::Observe, 2);
        resp.payload = b"88".to_vec();
        client.respond(now0().mono, &r, resp);
        pump(&mut server, &mut client);
        assert!(matches!(
            server.poll_event(),
            Some(ServerEvent::OpFinished { op, result: Ok(_), .. }) if op == accepted
        ));

        // A 2.05 without Observe means the client declined: no observation remains.
        let declined = server.request(now0(), "ep1", req).unwrap();
        pump(&mut server, &mut client);
        let r = next_request(&mut client);
        client.respond(now0().mono, &r, coap::new_response(code::CONTENT));
        pump(&mut server, &mut client);
        assert_eq!(server.observations(), vec![(accepted, "ep1".to_string())]);
        assert_eq!(
            server.cancel_observation(now0(), "ep1", declined),
            Err(OpError::UnknownObservation(declined))
        );
        assert_eq!(
            server.cancel_observation(now0(), "other", accepted),
            Err(OpError::UnknownObservation(accepted))
        );
        while server.poll_event().is_some() {}
        // A notification with the observation's token becomes a Notification event.
        let notify = |client: &mut Endpoint, seq: u32, body: &[u8]| {
            let mut n = coap::new_response(code::CONTENT);
            coap::set_uint_option(&mut n, CoapOption::Observe, seq);
            n.payload = body.to_vec();
            client.send_message(now0().mono, observe_token.clone(), n, false)
        };
        notify(&mut client, 3, b"77");
        pump(&mut server, &mut client);
        match server.poll_event() {
            Some(ServerEvent::Notification {
                op,
                observe,
                result,
                ..
            }) => {
                assert_eq!((op, observe), (accepted, 3));
                assert_eq!(result.payload, b"77");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.cancel_observation(now0(), "ep1", accepted).unwrap();
        assert!(server.observations().is_empty());
        // After cancelling, the next notification is answered with RST and reported no more.
        let h = notify(&mut client, 4, b"78");
        pump(&mut server, &mut client);
        assert!(server.poll_event().is_none());
        let mut reset = false;
        while let Some(ev) = client.poll_event() {
            if let EndpointEvent::Failed { handle, error } = ev {
                reset |= handle == h && error == coap::ExchangeError::Reset;
            }
        }
        assert!(
            reset,
            "the cancelled notification was not answered with RST"
        );
    }
}
