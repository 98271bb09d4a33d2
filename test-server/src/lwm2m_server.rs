//! The LwM2M Server side of the test server, sans-IO: a registration table fed by Register,
//! Update and De-register, and device-management requests (Read) sent to registered
//! clients. Uses the client's own CoAP [`Endpoint`], one per peer address.
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
use log::debug;

/// Identifies a device-management operation started through [`Lwm2mServer::read`].
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
    /// A Read (or other operation) finished, with the response or why it failed.
    OpFinished {
        op: OpId,
        endpoint: String,
        result: Result<OpResult, String>,
    },
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
    ops: HashMap<(SocketAddr, RequestHandle), (OpId, String)>,
    next_op: u64,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ServerEvent>,
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
            next_op: 1,
            tx: VecDeque::new(),
            events: VecDeque::new(),
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
                    if let Some((op, endpoint)) = self.ops.remove(&(peer, handle)) {
                        let result = Ok(OpResult {
                            code: code::to_string(coap::raw_code(&packet)),
                            content_format: coap::content_format_of(&packet),
                            payload: packet.payload,
                        });
                        self.events.push_back(ServerEvent::OpFinished {
                            op,
                            endpoint,
                            result,
                        });
                    }
                }
                EndpointEvent::Failed { handle, error } => {
                    if let Some((op, endpoint)) = self.ops.remove(&(peer, handle)) {
                        self.events.push_back(ServerEvent::OpFinished {
                            op,
                            endpoint,
                            result: Err(error.to_string()),
                        });
                    }
                }
                EndpointEvent::Delivered { .. } => {}
                // Placeholder until C3's notification routing merges (C4 added the variant).
                EndpointEvent::Notification { .. } => {}
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
        let parsed =
            estuary::dm::Path::parse(path).map_err(|_| OpError::BadPath(path.to_string()))?;
        let peer = self
            .registration(endpoint)
            .map(|r| r.peer)
            .ok_or_else(|| OpError::UnknownEndpoint(endpoint.to_string()))?;
        let mut req = coap::new_request(code::GET, &parsed.to_string());
        if let Some(cf) = accept {
            coap::set_uint_option(&mut req, coap::CoapOption::Accept, u32::from(cf));
        }
        let handle = self
            .endpoint(peer)
            .send_request(now.mono, req, true)
            .map_err(|e| OpError::Send(e.to_string()))?;
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert((peer, handle), (op, endpoint.to_string()));
        self.drain(now, peer);
        Ok(op)
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
