//! The benchmark's driver around the shared simulator rig (`tests/common/rig.rs`): the rig
//! builds the client, the Bootstrap-Server with its EST CA, the LwM2M server and both DTLS
//! listeners; this module moves datagrams between them one at a time so that each one can be
//! counted and charged to the LwM2M/EST exchange it belongs to (decided from the CoAP message
//! inside, which the listeners decrypt), and calls the client only through the
//! `bench_client_*` functions, so that the counting allocator and callgrind
//! (`--toggle-collect=*bench_client_*`) see the client's work and nothing else.

use std::collections::HashMap;

use estuary::coap::{self, content_format, MessageClass, MessageType, Packet};
use estuary::crypto::{parse_certs_only, Certificate};
use estuary::dm::Path;
use estuary::{Client, ConnectionId, Event, Instant, Now, Transmit};

use super::alloc::ClientScope;
use crate::common::rig::*;

// ---- the client, as the measurements see it --------------------------------------------

#[inline(never)]
pub fn bench_client_start(c: &mut Client, now: Now) {
    let _s = ClientScope::enter();
    c.start(now).expect("client starts");
}

#[inline(never)]
pub fn bench_client_handle_datagram(c: &mut Client, now: Now, conn: ConnectionId, data: &[u8]) {
    let _s = ClientScope::enter();
    c.handle_datagram(now, conn, data);
}

#[inline(never)]
pub fn bench_client_handle_timeout(c: &mut Client, now: Now) {
    let _s = ClientScope::enter();
    c.handle_timeout(now);
}

#[inline(never)]
pub fn bench_client_poll_transmit(c: &mut Client) -> Option<Transmit> {
    let _s = ClientScope::enter();
    c.poll_transmit()
}

#[inline(never)]
pub fn bench_client_poll_event(c: &mut Client) -> Option<Event> {
    let _s = ClientScope::enter();
    c.poll_event()
}

#[inline(never)]
pub fn bench_client_poll_timeout(c: &Client) -> Option<Instant> {
    let _s = ClientScope::enter();
    c.poll_timeout()
}

#[inline(never)]
pub fn bench_client_notify_changed(c: &mut Client, now: Now, path: &Path) {
    let _s = ClientScope::enter();
    c.notify_changed(now, path);
}

/// Called between measured phases; `callgrind --dump-before=*bench_phase_mark*` starts a
/// new profile part at each call.
#[inline(never)]
pub fn bench_phase_mark(name: &str) {
    std::hint::black_box(name);
}

// ---- what each datagram is for ----------------------------------------------------------

/// The exchange a datagram is charged to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Bootstrap,
    EstEnroll,
    Register,
    Reenroll,
    Reregister,
    Update,
    Read,
    Notify,
    Deregister,
    Other,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Bootstrap,
        Phase::EstEnroll,
        Phase::Register,
        Phase::Reenroll,
        Phase::Reregister,
        Phase::Update,
        Phase::Read,
        Phase::Notify,
        Phase::Deregister,
        Phase::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Bootstrap => "bootstrap (DTLS-PSK handshake, Request, Writes, Finish)",
            Phase::EstEnroll => "EST enrollment (/crts + /sen)",
            Phase::Register => "registration (DTLS-cert handshake + Register)",
            Phase::Reenroll => "re-enrollment (DTLS-cert handshake + /sren)",
            Phase::Reregister => "re-registration after re-enrollment",
            Phase::Update => "registration Update",
            Phase::Read => "Read of /3/0",
            Phase::Notify => "notification",
            Phase::Deregister => "de-registration",
            Phase::Other => "other",
        }
    }
}

/// Datagrams and bytes of one kind of exchange.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub up_datagrams: u64,
    pub up_bytes: u64,
    pub down_datagrams: u64,
    pub down_bytes: u64,
    /// The bytes that must be carried whatever the protocol: configuration written by the
    /// Bootstrap-Server, CSR and certificates (DER), the Register body, Read/notification
    /// payloads.
    pub lower_bound: u64,
    /// How many of these exchanges happened (counted at the request that starts one).
    pub count: u64,
}

impl Traffic {
    /// Adds datagrams, bytes and lower bound (not `count`: exchanges are counted apart).
    fn add(&mut self, o: &Traffic) {
        self.up_datagrams += o.up_datagrams;
        self.up_bytes += o.up_bytes;
        self.down_datagrams += o.down_datagrams;
        self.down_bytes += o.down_bytes;
        self.lower_bound += o.lower_bound;
    }

    pub fn bytes(&self) -> u64 {
        self.up_bytes + self.down_bytes
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Link {
    Bootstrap,
    Management,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

pub struct Driver {
    pub r: Rig,
    pub traffic: HashMap<Phase, Traffic>,
    /// Exchanges started by a request, by link and token, so answers go to the same phase.
    tokens: HashMap<(Link, Vec<u8>), Phase>,
    /// Phase of the last classified message per link (for empty ACKs).
    current: HashMap<Link, Phase>,
    /// DTLS records with no CoAP inside (handshakes, alerts) waiting for the next CoAP
    /// message on their link to say which exchange they served.
    pending: HashMap<Link, Traffic>,
    registrations: u64,
    /// Answer `/est/crts` with these certificates instead of the EST CA's own (a chain; see
    /// `cacerts_answer`).
    pub cacerts_override: Option<Vec<Certificate>>,
}

fn parse(data: &[u8]) -> Option<Packet> {
    Packet::from_bytes(data).ok()
}

fn is_request(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Request(_))
}

fn is_empty(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Empty)
}

/// DER bytes of the certificates an EST response carries (the part that must be carried).
fn est_payload_lower_bound(p: &Packet) -> u64 {
    if coap::uint_option(p, coap::CoapOption::Block2).is_some() {
        // One block of a bundle: the driver charges the whole bundle's certificates once.
        return 0;
    }
    match coap::content_format_of(p) {
        Some(content_format::PKCS7_CERTS_ONLY) => parse_certs_only(&p.payload)
            .map(|cs| cs.iter().map(|c| c.der().len() as u64).sum())
            .unwrap_or(0),
        _ => p.payload.len() as u64,
    }
}

impl Driver {
    pub fn new(r: Rig) -> Driver {
        Driver {
            r,
            traffic: HashMap::new(),
            tokens: HashMap::new(),
            current: HashMap::new(),
            pending: HashMap::new(),
            registrations: 0,
            cacerts_override: None,
        }
    }

    pub fn start(&mut self) {
        let now = self.r.now;
        bench_client_start(&mut self.r.client, now);
    }

    /// Charges one datagram to `phase` (the exchange of the CoAP message inside), or holds
    /// it for the next CoAP message on its link when it carries none (DTLS handshake).
    fn account(&mut self, link: Link, dir: Dir, len: usize, phase: Option<Phase>) {
        let mut t = Traffic::default();
        match dir {
            Dir::Up => {
                t.up_datagrams = 1;
                t.up_bytes = len as u64;
            }
            Dir::Down => {
                t.down_datagrams = 1;
                t.down_bytes = len as u64;
            }
        }
        match phase {
            Some(p) => {
                if let Some(pend) = self.pending.remove(&link) {
                    self.traffic.entry(p).or_default().add(&pend);
                }
                self.traffic.entry(p).or_default().add(&t);
            }
            None => self.pending.entry(link).or_default().add(&t),
        }
    }

    fn charge(&mut self, phase: Phase, lower_bound: u64, starts: bool) {
        let t = self.traffic.entry(phase).or_default();
        t.lower_bound += lower_bound;
        if starts {
            t.count += 1;
        }
    }

    /// The phase of a CoAP message the client sent.
    fn classify_up(&mut self, link: Link, p: &Packet) -> Phase {
        let path = coap::uri_path(p).unwrap_or_default();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let phase = if is_request(p) {
            let method = coap::raw_code(p);
            let (phase, lb) = match (link, path.as_slice()) {
                (Link::Bootstrap, ["bs", ..]) => (Phase::Bootstrap, 0),
                (Link::Bootstrap, ["est", "crts"]) => (Phase::EstEnroll, 0),
                (Link::Bootstrap, ["est", "sen"]) => (Phase::EstEnroll, p.payload.len() as u64),
                (Link::Bootstrap, ["est", "sren"]) => (Phase::Reenroll, p.payload.len() as u64),
                (Link::Management, ["rd"])
                    if coap::uint_option(p, coap::CoapOption::Block1)
                        .is_some_and(|b| b >> 4 > 0) =>
                {
                    // A later block of a block-wise Register: the same exchange.
                    let phase = *self.current.get(&link).unwrap_or(&Phase::Register);
                    self.charge(phase, p.payload.len() as u64, false);
                    self.tokens.insert((link, p.get_token().to_vec()), phase);
                    self.current.insert(link, phase);
                    return phase;
                }
                (Link::Management, ["rd"]) => {
                    self.registrations += 1;
                    let phase = if self.registrations == 1 {
                        Phase::Register
                    } else {
                        Phase::Reregister
                    };
                    (phase, p.payload.len() as u64)
                }
                (Link::Management, ["rd", _]) if method == coap::code::DELETE => {
                    (Phase::Deregister, 0)
                }
                (Link::Management, ["rd", _]) => (Phase::Update, p.payload.len() as u64),
                _ => (Phase::Other, p.payload.len() as u64),
            };
            // /crts is part of enrollment but not counted as an exchange of its own.
            let starts = path.as_slice() != ["est", "crts"];
            self.charge(phase, lb, starts);
            self.tokens.insert((link, p.get_token().to_vec()), phase);
            phase
        } else if is_empty(p) {
            *self.current.get(&link).unwrap_or(&Phase::Other)
        } else {
            // A response: to a server request, or a notification (Observe option).
            let notify = coap::uint_option(p, coap::CoapOption::Observe).is_some()
                && self.tokens.get(&(link, p.get_token().to_vec())) == Some(&Phase::Notify);
            let phase = if notify {
                self.charge(Phase::Notify, p.payload.len() as u64, true);
                Phase::Notify
            } else {
                let phase = self
                    .tokens
                    .get(&(link, p.get_token().to_vec()))
                    .copied()
                    .unwrap_or(Phase::Other);
                self.charge(phase, p.payload.len() as u64, false);
                phase
            };
            phase
        };
        self.current.insert(link, phase);
        phase
    }

    /// The phase of a CoAP message a server sent to the client.
    fn classify_down(&mut self, link: Link, p: &Packet) -> Phase {
        let phase = if is_request(p) {
            let phase = match link {
                Link::Bootstrap => Phase::Bootstrap,
                Link::Management if coap::uint_option(p, coap::CoapOption::Observe) == Some(0) => {
                    Phase::Notify
                }
                Link::Management => Phase::Read,
            };
            // The Bootstrap-Server's Writes carry the configuration.
            let lb = if link == Link::Bootstrap {
                p.payload.len() as u64
            } else {
                0
            };
            self.charge(phase, lb, link == Link::Management && phase == Phase::Read);
            self.tokens.insert((link, p.get_token().to_vec()), phase);
            phase
        } else if is_empty(p) {
            *self.current.get(&link).unwrap_or(&Phase::Other)
        } else {
            let phase = self
                .tokens
                .get(&(link, p.get_token().to_vec()))
                .copied()
                .unwrap_or(Phase::Other);
            let lb = match phase {
                Phase::EstEnroll | Phase::Reenroll => est_payload_lower_bound(p),
                _ => 0,
            };
            self.charge(phase, lb, false);
            phase
        };
        self.current.insert(link, phase);
        phase
    }

    /// The `/est/crts` answer with a chain of CA certificates, when the benchmark asks for
    /// one: the test server's EST CA serves only its own certificate, so the driver answers
    /// instead, block-wise (RFC 7959 Block2, 512-byte blocks) as a chain longer than a
    /// datagram needs. `None` when the request is not ours to answer.
    fn cacerts_answer(&self, link: Link, req: &Packet) -> Option<Vec<u8>> {
        let chain = self.cacerts_override.as_ref()?;
        let path = coap::uri_path(req).unwrap_or_default();
        if link != Link::Bootstrap || !is_request(req) || path != ["est", "crts"] {
            return None;
        }
        let bundle = estuary::crypto::build_certs_only(chain);
        let (num, szx) = match coap::uint_option(req, coap::CoapOption::Block2) {
            Some(v) => ((v >> 4) as usize, (v & 7).min(5)),
            None => (0, 5),
        };
        let size = 1usize << (szx + 4);
        let start = (num * size).min(bundle.len());
        let end = (start + size).min(bundle.len());
        let more = end < bundle.len();
        let mut p = coap::new_response(coap::code::CONTENT);
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = req.header.message_id;
        p.set_token(req.get_token().to_vec());
        coap::set_content_format(&mut p, content_format::PKCS7_CERTS_ONLY);
        coap::set_uint_option(
            &mut p,
            coap::CoapOption::Block2,
            ((num as u32) << 4) | (u32::from(more) << 3) | szx,
        );
        if num == 0 {
            coap::set_uint_option(&mut p, coap::CoapOption::Size2, bundle.len() as u32);
        }
        p.payload = bundle[start..end].to_vec();
        p.to_bytes().ok()
    }

    fn drain_events(&mut self) {
        let t = self.r.elapsed();
        while let Some(e) = bench_client_poll_event(&mut self.r.client) {
            self.r.events.push((t, e));
        }
        while let Some(e) = self.r.bs.poll_event() {
            self.r.bs_events.push((t, e));
        }
        while let Some(e) = self.r.lw.poll_event() {
            self.r.lw_events.push((t, e));
        }
    }

    /// Datagrams the listener of `link` has for the client.
    fn deliver_down(&mut self, link: Link, phase: Option<Phase>) -> bool {
        let mut moved = false;
        loop {
            let side = match link {
                Link::Bootstrap => &mut self.r.bs_side,
                Link::Management => &mut self.r.lw_side,
            };
            let Some((peer, d)) = side.listener.as_mut().and_then(|l| l.poll_transmit()) else {
                return moved;
            };
            moved = true;
            self.account(link, Dir::Down, d.len(), phase);
            let conn = match link {
                Link::Bootstrap => ConnectionId::BOOTSTRAP,
                Link::Management => conn_of(peer),
            };
            let now = self.r.now;
            bench_client_handle_datagram(&mut self.r.client, now, conn, &d);
        }
    }

    /// Moves everything that can move at the current time, one datagram at a time.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(t) = bench_client_poll_transmit(&mut self.r.client) {
                moved = true;
                let from = client_addr(t.conn);
                let now = self.r.now;
                let link = if t.conn == ConnectionId::BOOTSTRAP {
                    Link::Bootstrap
                } else {
                    Link::Management
                };
                let plains = match link {
                    Link::Bootstrap => self.r.bs_side.inbound(now, from, &t.data),
                    Link::Management => self.r.lw_side.inbound(now, from, &t.data),
                };
                let phase = plains
                    .iter()
                    .filter_map(|d| parse(d))
                    .map(|p| self.classify_up(link, &p))
                    .last();
                self.account(link, Dir::Up, t.data.len(), phase);
                drop(t);
                for d in plains {
                    if let Some(answer) = parse(&d).and_then(|p| self.cacerts_answer(link, &p)) {
                        let phase = parse(&answer).map(|p| self.classify_down(link, &p));
                        if parse(&d).is_some_and(|p| {
                            coap::uint_option(&p, coap::CoapOption::Block2).unwrap_or(0) >> 4 == 0
                        }) {
                            let der: usize = self
                                .cacerts_override
                                .iter()
                                .flatten()
                                .map(|c| c.der().len())
                                .sum();
                            self.charge(Phase::EstEnroll, der as u64, false);
                        }
                        if let Some(l) = self.r.bs_side.listener.as_mut() {
                            l.send(now, from, &answer);
                        }
                        self.deliver_down(link, phase);
                        continue;
                    }
                    match link {
                        Link::Bootstrap => {
                            if let Some(auth) = self
                                .r
                                .bs_side
                                .listener
                                .as_ref()
                                .and_then(|l| l.est_peer_auth(from))
                            {
                                self.r.bs.set_peer_auth(from, auth);
                            }
                            self.r.bs.handle_datagram(now, from, &d);
                        }
                        Link::Management => self.r.lw.handle_datagram(now, from, &d),
                    }
                }
                // Handshake answers go out before anything else.
                self.deliver_down(link, None);
            }
            while let Some((peer, d)) = self.r.bs.poll_transmit() {
                moved = true;
                let phase = parse(&d).map(|p| self.classify_down(Link::Bootstrap, &p));
                let now = self.r.now;
                if let Some(l) = self.r.bs_side.listener.as_mut() {
                    l.send(now, peer, &d);
                }
                self.deliver_down(Link::Bootstrap, phase);
            }
            while let Some((peer, d)) = self.r.lw.poll_transmit() {
                moved = true;
                let phase = parse(&d).map(|p| self.classify_down(Link::Management, &p));
                let now = self.r.now;
                if let Some(l) = self.r.lw_side.listener.as_mut() {
                    l.send(now, peer, &d);
                }
                self.deliver_down(Link::Management, phase);
            }
            moved |= self.deliver_down(Link::Bootstrap, None);
            moved |= self.deliver_down(Link::Management, None);
            self.drain_events();
            if !moved {
                return;
            }
        }
        panic!("the driver did not settle");
    }

    /// Runs the virtual clock until `until` (from the start) or `stop` holds.
    pub fn run_until(&mut self, until: std::time::Duration, stop: impl Fn(&Rig) -> bool) {
        self.pump();
        while self.r.elapsed() < until && !stop(&self.r) {
            let r = &self.r;
            let next = [
                bench_client_poll_timeout(&r.client),
                r.bs.poll_timeout(),
                r.lw.poll_timeout(),
                r.bs_side.listener.as_ref().and_then(|l| l.poll_timeout()),
                r.lw_side.listener.as_ref().and_then(|l| l.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let limit = r.start + until;
            let next = next
                .map_or(limit, |n| n.min(limit))
                .max(r.now.mono + std::time::Duration::from_millis(1));
            let step = next.saturating_duration_since(r.now.mono);
            self.r.now = self.r.now.advanced(step);
            let now = self.r.now;
            bench_client_handle_timeout(&mut self.r.client, now);
            self.r.bs.handle_timeout(now);
            self.r.lw.handle_timeout(now);
            if let Some(l) = self.r.bs_side.listener.as_mut() {
                l.handle_timeout(now);
            }
            if let Some(l) = self.r.lw_side.listener.as_mut() {
                l.handle_timeout(now);
            }
            self.pump();
        }
    }

    /// Runs until the management server has seen a Register.
    pub fn run_until_registered(&mut self, limit: std::time::Duration) -> bool {
        self.run_until(limit, Rig::registered);
        self.r.registered()
    }

    /// Sends one request from the LwM2M server and runs until its answer.
    pub fn server_request(
        &mut self,
        req: estuary_testserver::lwm2m_server::OpRequest,
    ) -> estuary_testserver::lwm2m_server::OpId {
        let now = self.r.now;
        let op = self.r.lw.request(now, EP, req).expect("request sent");
        let done = |r: &Rig| {
            r.lw_events
                .iter()
                .rev()
                .any(|(_, e)| matches!(e, ServerEvent::OpFinished { op: o, .. } if *o == op))
        };
        let deadline = self.r.elapsed() + std::time::Duration::from_secs(60);
        self.run_until(deadline, done);
        assert!(done(&self.r), "no answer to {op:?}");
        op
    }

    /// Traffic so far, then starts counting afresh.
    pub fn take_traffic(&mut self) -> HashMap<Phase, Traffic> {
        std::mem::take(&mut self.traffic)
    }
}
