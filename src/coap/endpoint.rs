//! [`Endpoint`]: the CoAP messaging layer towards one peer, sans-IO.
//!
//! It owns message IDs and tokens, retransmits confirmable messages with exponential
//! back-off (RFC 7252 §4.2), matches responses to requests (piggybacked in the ACK or
//! separate, after an empty ACK), answers duplicates from the [`MessageCache`], rejects
//! what it cannot match with RST, and enforces NSTART. It keeps Observe (RFC 7641) tokens
//! live on the observer side and reports RSTs to notifications on the notifier side.
//! Block-wise transfers (RFC 7959, submodule `blockwise`) happen underneath, so callers
//! only ever see whole bodies. It does not know LwM2M paths or sockets: callers feed
//! datagrams in and take datagrams out.

use core::time::Duration;
use std::collections::VecDeque;

use coap_lite::{MessageClass, MessageType, Packet};
use log::{debug, trace};

mod blockwise;

pub use blockwise::BlockFailure;

use super::block::BlockOption;
use super::dedup::{MessageCache, Seen};
use super::params::TxParams;
use super::{code, decode_uint, empty_message, raw_code, set_raw_code, CoapOption};
use crate::rng::{RandomSource, SeededRng};
use crate::time::Instant;

/// Identifies one outgoing request (or confirmable response) for its events.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHandle(pub u64);

/// Why an outgoing exchange ended without a response.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("no response within the retransmission window")]
    Timeout,
    #[error("the peer answered with RST")]
    Reset,
    #[error("the message does not fit the configured buffer size")]
    TooLarge,
    #[error("the message could not be encoded")]
    Encode,
    #[error("the exchange was cancelled")]
    Cancelled,
    #[error("block-wise transfer refused: {0}")]
    Block(BlockFailure),
}

/// A request from the peer, new (duplicates never surface).
#[derive(Clone, Debug)]
pub struct InboundRequest {
    pub mid: u16,
    pub token: Vec<u8>,
    pub confirmable: bool,
    pub packet: Packet,
}

/// What happened on this endpoint.
#[derive(Debug)]
pub enum EndpointEvent {
    /// A new request from the peer; answer it with [`Endpoint::respond`].
    Request(InboundRequest),
    /// The response to one of our requests.
    Response {
        handle: RequestHandle,
        packet: Packet,
    },
    /// A confirmable response or notification we sent was acknowledged.
    Delivered { handle: RequestHandle },
    /// An exchange of ours ended without success.
    Failed {
        handle: RequestHandle,
        error: ExchangeError,
    },
    /// A later notification for an Observe GET sent with [`Endpoint::send_request`]
    /// (the first response came as `Response` with the same handle).
    Notification {
        handle: RequestHandle,
        packet: Packet,
    },
}

/// Datagram and byte counters, for tests and benchmarks.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub retransmissions: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A request awaiting its response.
    Request,
    /// A response or notification that only needs acknowledging.
    Message,
}

#[derive(Debug)]
enum State {
    AwaitingAck {
        retransmits: u32,
        interval: Duration,
        next: Instant,
    },
    AwaitingResponse {
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Outgoing {
    handle: RequestHandle,
    kind: Kind,
    mid: u16,
    token: Vec<u8>,
    bytes: Vec<u8>,
    state: State,
    /// A GET carrying Observe=0: a successful response with Observe starts an observation.
    observe: bool,
}

#[derive(Debug)]
struct Queued {
    handle: RequestHandle,
    packet: Packet,
    confirmable: bool,
}

/// An observation we (the observer) hold: its token stays live until forgotten.
#[derive(Debug)]
struct Observation {
    handle: RequestHandle,
    token: Vec<u8>,
    /// The registering request, for fetching the rest of large notifications.
    request: Packet,
    /// The freshest Observe value seen and when (RFC 7641 §3.4 ordering).
    last: Option<(u32, Instant)>,
}

/// A non-confirmable message we sent, remembered so an RST to it can be reported.
#[derive(Debug)]
struct NonSent {
    handle: RequestHandle,
    mid: u16,
    expires: Instant,
}

/// At most this many NON messages are remembered for RST matching; the oldest go first.
const MAX_NON_REMEMBERED: usize = 64;

/// Observe option values are 24-bit sequence numbers (RFC 7641 §3.4).
const OBSERVE_WRAP: u32 = 1 << 23;
/// After this long, any notification counts as fresher than the last (RFC 7641 §3.4).
const OBSERVE_REORDER_WINDOW: Duration = Duration::from_secs(128);

/// Whether notification `(v2, t2)` is fresher than `(v1, t1)` (RFC 7641 §3.4).
fn fresher(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    (v1 < v2 && v2 - v1 < OBSERVE_WRAP)
        || (v1 > v2 && v1 - v2 > OBSERVE_WRAP)
        || t2 >= t1 + OBSERVE_REORDER_WINDOW
}

fn observe_value(p: &Packet) -> Option<u32> {
    p.get_first_option(CoapOption::Observe)
        .and_then(|v| decode_uint(v))
}

/// The messaging layer towards one peer.
#[derive(Debug)]
pub struct Endpoint {
    params: TxParams,
    max_message_size: usize,
    next_mid: u16,
    next_handle: u64,
    rng: SeededRng,
    active: Vec<Outgoing>,
    queued: VecDeque<Queued>,
    /// Requests we acknowledged with an empty ACK and will answer separately.
    deferred: Vec<(u16, Vec<u8>)>,
    observations: Vec<Observation>,
    non_sent: VecDeque<NonSent>,
    cache: MessageCache,
    in_buffer_size: usize,
    max_reassembly: usize,
    block_cache_bytes: usize,
    transfers: Vec<blockwise::ClientTransfer>,
    rx_block1: Vec<blockwise::Block1Rx>,
    tx_block2: VecDeque<blockwise::Block2Cache>,
    /// Completed Block1 uploads by (MID, token): their final response carries this Block1.
    block1_final: Vec<(u16, Vec<u8>, BlockOption)>,
    /// Observe registrations' tokens and resource keys, for large notifications.
    observed_keys: VecDeque<(Vec<u8>, Vec<u8>)>,
    tx: VecDeque<Vec<u8>>,
    events: VecDeque<EndpointEvent>,
    stats: Stats,
}

/// Length of the tokens we generate: long enough to make off-path spoofing impractical.
const TOKEN_LEN: usize = 8;
/// Default bound on a body reassembled from blocks (an EST certificate chain fits).
pub const DEFAULT_MAX_REASSEMBLY: usize = 64 * 1024;
/// Default bytes of large representations kept for Block2 follow-up requests.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 32 * 1024;

impl Endpoint {
    /// A new endpoint. `rng` seeds message IDs, tokens and retransmission jitter;
    /// `max_message_size` bounds every datagram we send; `cache_bytes` bounds dedup.
    pub fn new(
        params: TxParams,
        max_message_size: usize,
        cache_bytes: usize,
        rng: &mut dyn RandomSource,
    ) -> Self {
        let mut rng = SeededRng::new(rng.next_u64());
        Endpoint {
            params: params.sanitized(),
            max_message_size,
            next_mid: rng.next_u32() as u16,
            next_handle: 1,
            rng,
            active: Vec::new(),
            queued: VecDeque::new(),
            deferred: Vec::new(),
            observations: Vec::new(),
            non_sent: VecDeque::new(),
            cache: MessageCache::new(cache_bytes),
            in_buffer_size: max_message_size,
            max_reassembly: DEFAULT_MAX_REASSEMBLY,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            transfers: Vec::new(),
            rx_block1: Vec::new(),
            tx_block2: VecDeque::new(),
            block1_final: Vec::new(),
            observed_keys: VecDeque::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn params(&self) -> &TxParams {
        &self.params
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn alloc_mid(&mut self) -> u16 {
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        mid
    }

    fn alloc_handle(&mut self) -> RequestHandle {
        let h = RequestHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    fn new_token(&mut self) -> Vec<u8> {
        let mut t = vec![0u8; TOKEN_LEN];
        self.rng.fill_bytes(&mut t);
        t
    }

    fn encode(&self, p: &Packet) -> Result<Vec<u8>, ExchangeError> {
        match p.to_bytes_with_limit(self.max_message_size) {
            Ok(b) => Ok(b),
            Err(coap_lite::error::MessageError::InvalidPacketLength) => {
                Err(ExchangeError::TooLarge)
            }
            Err(_) => Err(ExchangeError::Encode),
        }
    }

    fn push_tx(&mut self, bytes: Vec<u8>) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.tx.push_back(bytes);
    }

    fn initial_interval(&mut self) -> Duration {
        let spread = self.params.ack_random_factor - 1.0;
        self.params
            .ack_timeout
            .mul_f64(1.0 + spread * self.rng.next_f64())
    }

    fn outstanding_requests(&self) -> usize {
        self.active
            .iter()
            .filter(|o| o.kind == Kind::Request)
            .count()
    }

    /// Queues a request (code and options set by the caller); the endpoint sets type, MID and
    /// token. A body too large for one datagram goes out block-wise (Block1), and a
    /// block-wise response arrives as one `Response` with the whole body. Fails at once if
    /// even the smallest block cannot fit the buffer.
    pub fn send_request(
        &mut self,
        now: Instant,
        packet: Packet,
        confirmable: bool,
    ) -> Result<RequestHandle, ExchangeError> {
        let handle = RequestHandle(self.next_handle);
        let (transfer, mut packet) = self.begin_transfer(now, handle, packet, confirmable)?;
        packet.set_token(self.new_token());
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        self.encode(&packet)?;
        let handle = self.alloc_handle();
        self.transfers.push(transfer);
        self.queued.push_back(Queued {
            handle,
            packet,
            confirmable,
        });
        self.start_queued(now);
        Ok(handle)
    }

    /// The token given to a request, while it is queued or active.
    pub fn token_of(&self, handle: RequestHandle) -> Option<&[u8]> {
        self.active
            .iter()
            .find(|o| o.handle == handle)
            .map(|o| o.token.as_slice())
            .or_else(|| {
                self.queued
                    .iter()
                    .find(|q| q.handle == handle)
                    .map(|q| q.packet.get_token())
            })
    }

    fn start_queued(&mut self, now: Instant) {
        while self.outstanding_requests() < self.params.nstart as usize {
            let Some(q) = self.queued.pop_front() else {
                return;
            };
            let mut packet = q.packet;
            packet.header.message_id = self.alloc_mid();
            let bytes = match self.encode(&packet) {
                Ok(b) => b,
                Err(error) => {
                    self.fail_transfer(q.handle, error);
                    continue;
                }
            };
            let state = if q.confirmable {
                let interval = self.initial_interval();
                State::AwaitingAck {
                    retransmits: 0,
                    interval,
                    next: now + interval,
                }
            } else {
                State::AwaitingResponse {
                    deadline: now + self.params.max_transmit_wait(),
                }
            };
            trace!(
                "coap: send request mid={} {}",
                packet.header.message_id,
                code::to_string(raw_code(&packet))
            );
            self.active.push(Outgoing {
                handle: q.handle,
                kind: Kind::Request,
                mid: packet.header.message_id,
                token: packet.get_token().to_vec(),
                bytes: bytes.clone(),
                state,
                observe: raw_code(&packet) == code::GET && observe_value(&packet) == Some(0),
            });
            self.push_tx(bytes);
        }
    }

    /// Answers an inbound request: piggybacked in the ACK for a confirmable request, as a
    /// NON for a non-confirmable one, or as a confirmable separate response if the request
    /// was acknowledged earlier with [`Endpoint::accept_later`]. A response that does not
    /// fit the buffer is replaced by 5.00 and logged.
    pub fn respond(&mut self, now: Instant, req: &InboundRequest, mut response: Packet) {
        response.set_token(req.token.clone());
        let response = self.prepare_response(now, req, response);
        if let Some(i) = self
            .deferred
            .iter()
            .position(|(mid, tok)| *mid == req.mid && *tok == req.token)
        {
            self.deferred.swap_remove(i);
            self.send_message_inner(now, req.token.clone(), response, true);
            return;
        }
        self.respond_plain(now, req, response);
    }

    /// Sends `response` piggybacked (CON request) or as NON, recorded for duplicates; no
    /// block-wise slicing.
    fn respond_plain(&mut self, _now: Instant, req: &InboundRequest, mut response: Packet) {
        response.set_token(req.token.clone());
        if req.confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = req.mid;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.alloc_mid();
        }
        let bytes = match self.encode(&response) {
            Ok(b) => b,
            Err(e) => {
                debug!(
                    "coap: response to mid={} not sendable ({e}); answering 5.00",
                    req.mid
                );
                let mut fallback = Packet::new();
                set_raw_code(&mut fallback, code::INTERNAL_SERVER_ERROR);
                fallback.header.set_type(response.header.get_type());
                fallback.header.message_id = response.header.message_id;
                fallback.set_token(req.token.clone());
                match self.encode(&fallback) {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
        };
        self.cache.record_response(req.mid, &req.token, &bytes);
        self.push_tx(bytes);
    }

    /// Acknowledges a confirmable request now with an empty ACK; the response follows later
    /// through [`Endpoint::respond`] as a separate confirmable message.
    pub fn accept_later(&mut self, req: &InboundRequest) {
        if !req.confirmable {
            return;
        }
        let ack = empty_message(MessageType::Acknowledgement, req.mid);
        if let Ok(bytes) = self.encode(&ack) {
            self.cache.record_response(req.mid, &req.token, &bytes);
            self.push_tx(bytes);
        }
        self.deferred.push((req.mid, req.token.clone()));
    }

    /// Sends a response-class message outside a piggybacked ACK (a separate response or an
    /// Observe notification) for `token`; confirmable ones are retransmitted until ACKed.
    pub fn send_message(
        &mut self,
        now: Instant,
        token: Vec<u8>,
        mut packet: Packet,
        confirmable: bool,
    ) -> RequestHandle {
        packet.set_token(token.clone());
        let key = self.observed_key(&token);
        let packet = self.slice_response(now, key, None, packet);
        self.send_message_inner(now, token, packet, confirmable)
    }

    fn send_message_inner(
        &mut self,
        now: Instant,
        token: Vec<u8>,
        mut packet: Packet,
        confirmable: bool,
    ) -> RequestHandle {
        let handle = self.alloc_handle();
        packet.set_token(token.clone());
        packet.header.message_id = self.alloc_mid();
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        let bytes = match self.encode(&packet) {
            Ok(b) => b,
            Err(error) => {
                self.events
                    .push_back(EndpointEvent::Failed { handle, error });
                return handle;
            }
        };
        if confirmable {
            let interval = self.initial_interval();
            self.active.push(Outgoing {
                handle,
                kind: Kind::Message,
                mid: packet.header.message_id,
                token,
                bytes: bytes.clone(),
                state: State::AwaitingAck {
                    retransmits: 0,
                    interval,
                    next: now + interval,
                },
                observe: false,
            });
        } else {
            // Remembered only so that an RST to it (an observer cancelling) is reported.
            self.non_sent.retain(|n| n.expires > now);
            if self.non_sent.len() >= MAX_NON_REMEMBERED {
                self.non_sent.pop_front();
            }
            self.non_sent.push_back(NonSent {
                handle,
                mid: packet.header.message_id,
                expires: now + self.params.exchange_lifetime(),
            });
        }
        self.push_tx(bytes);
        handle
    }

    /// Stops retransmitting and forgets an exchange; no event is produced for it.
    pub fn cancel(&mut self, now: Instant, handle: RequestHandle) {
        self.transfers.retain(|t| t.handle != handle);
        self.active.retain(|o| o.handle != handle);
        self.queued.retain(|q| q.handle != handle);
        self.start_queued(now);
    }

    /// Drops every exchange in flight, reporting each as cancelled.
    pub fn cancel_all(&mut self) {
        self.transfers.clear();
        let handles: Vec<_> = self
            .active
            .drain(..)
            .map(|o| o.handle)
            .chain(self.queued.drain(..).map(|q| q.handle))
            .collect();
        for handle in handles {
            self.events.push_back(EndpointEvent::Failed {
                handle,
                error: ExchangeError::Cancelled,
            });
        }
    }

    fn send_empty(&mut self, ty: MessageType, mid: u16) -> Vec<u8> {
        let bytes = empty_message(ty, mid).to_bytes().unwrap_or_default();
        if !bytes.is_empty() {
            self.push_tx(bytes.clone());
        }
        bytes
    }

    /// Stops an observation started with an Observe GET: its later notifications are
    /// answered with RST (RFC 7641 §3.6). Unknown handles are ignored.
    pub fn forget_observation(&mut self, handle: RequestHandle) {
        self.observations.retain(|o| o.handle != handle);
    }

    /// Whether an observation with this handle is live.
    pub fn is_observing(&self, handle: RequestHandle) -> bool {
        self.observations.iter().any(|o| o.handle == handle)
    }

    fn complete(&mut self, now: Instant, idx: usize, packet: Option<Packet>) {
        let o = self.active.swap_remove(idx);
        match (o.kind, packet) {
            (Kind::Request, Some(packet)) => {
                if o.observe && code::is_success(raw_code(&packet)) {
                    if let Some(seq) = observe_value(&packet) {
                        debug!("coap: observation started (handle {})", o.handle.0);
                        let request = self.transfer_template(o.handle);
                        self.observations.push(Observation {
                            handle: o.handle,
                            token: o.token,
                            request,
                            last: Some((seq, now)),
                        });
                    }
                }
                self.on_response(now, o.handle, packet);
            }
            (Kind::Message, _) => self
                .events
                .push_back(EndpointEvent::Delivered { handle: o.handle }),
            (Kind::Request, None) => {}
        }
        self.start_queued(now);
    }

    fn fail(&mut self, now: Instant, idx: usize, error: ExchangeError) {
        let o = self.active.swap_remove(idx);
        match o.kind {
            Kind::Request => self.fail_transfer(o.handle, error),
            Kind::Message => self.events.push_back(EndpointEvent::Failed {
                handle: o.handle,
                error,
            }),
        }
        self.start_queued(now);
    }

    /// Feeds one datagram from the peer. Malformed input is dropped (with a debug log) and
    /// changes nothing; the error says why.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> Result<(), coap_lite::error::MessageError> {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let packet = match Packet::from_bytes(bytes) {
            Ok(p) => p,
            Err(e) => {
                debug!(
                    "coap: dropping malformed datagram ({} bytes): {e:?}",
                    bytes.len()
                );
                return Err(e);
            }
        };
        if packet.header.get_version() != 1 {
            debug!(
                "coap: dropping datagram with version {}",
                packet.header.get_version()
            );
            return Err(coap_lite::error::MessageError::InvalidHeader);
        }
        let mid = packet.header.message_id;
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Reset, _) => {
                if let Some(i) = self.active.iter().position(|o| o.mid == mid) {
                    debug!("coap: RST for mid={mid}");
                    self.fail(now, i, ExchangeError::Reset);
                } else if let Some(i) = self
                    .non_sent
                    .iter()
                    .position(|n| n.mid == mid && n.expires > now)
                {
                    debug!("coap: RST for NON mid={mid}");
                    if let Some(n) = self.non_sent.remove(i) {
                        self.events.push_back(EndpointEvent::Failed {
                            handle: n.handle,
                            error: ExchangeError::Reset,
                        });
                    }
                }
            }
            (MessageType::Acknowledgement, MessageClass::Empty) => {
                if let Some(i) = self.active.iter().position(|o| o.mid == mid) {
                    if self.active[i].kind == Kind::Message {
                        self.complete(now, i, None);
                    } else if matches!(self.active[i].state, State::AwaitingAck { .. }) {
                        // Separate response will follow; keep the exchange open for it.
                        self.active[i].state = State::AwaitingResponse {
                            deadline: now + self.params.exchange_lifetime(),
                        };
                    }
                }
            }
            (
                MessageType::Acknowledgement,
                MessageClass::Response(_) | MessageClass::Reserved(_),
            ) => {
                if let Some(i) = self.active.iter().position(|o| {
                    o.mid == mid && o.kind == Kind::Request && o.token == packet.get_token()
                }) {
                    self.complete(now, i, Some(packet));
                } else {
                    trace!("coap: ignoring unmatched ACK mid={mid}");
                }
            }
            (MessageType::Acknowledgement, MessageClass::Request(_)) => {
                debug!("coap: ignoring ACK carrying a request code");
            }
            (
                ty @ (MessageType::Confirmable | MessageType::NonConfirmable),
                MessageClass::Empty,
            ) => {
                if ty == MessageType::Confirmable {
                    // CoAP ping: answered with RST (RFC 7252 §4.3).
                    self.send_empty(MessageType::Reset, mid);
                }
            }
            (
                ty @ (MessageType::Confirmable | MessageType::NonConfirmable),
                MessageClass::Request(_),
            ) => {
                let confirmable = ty == MessageType::Confirmable;
                let lifetime = self.params.exchange_lifetime();
                match self.cache.check(now, mid, packet.get_token(), lifetime) {
                    Seen::Answered(resp) => {
                        let resp = resp.to_vec();
                        trace!("coap: duplicate mid={mid}, resending cached response");
                        self.push_tx(resp);
                    }
                    Seen::Pending => trace!("coap: duplicate mid={mid} still pending, dropped"),
                    Seen::New => {
                        let req = InboundRequest {
                            mid,
                            token: packet.get_token().to_vec(),
                            confirmable,
                            packet,
                        };
                        if let Some(req) = self.on_inbound_request(now, req) {
                            self.events.push_back(EndpointEvent::Request(req));
                        }
                    }
                }
            }
            (ty @ (MessageType::Confirmable | MessageType::NonConfirmable), _) => {
                let confirmable = ty == MessageType::Confirmable;
                let lifetime = self.params.exchange_lifetime();
                match self.cache.check(now, mid, packet.get_token(), lifetime) {
                    Seen::Answered(resp) => {
                        let resp = resp.to_vec();
                        self.push_tx(resp);
                        return Ok(());
                    }
                    Seen::Pending => return Ok(()),
                    Seen::New => {}
                }
                let matched = self
                    .active
                    .iter()
                    .position(|o| o.kind == Kind::Request && o.token == packet.get_token());
                let token = packet.get_token().to_vec();
                if let Some(i) = matched {
                    if confirmable {
                        let ack = self.send_empty(MessageType::Acknowledgement, mid);
                        self.cache.record_response(mid, &token, &ack);
                    }
                    self.complete(now, i, Some(packet));
                } else if let Some(i) = self.observations.iter().position(|o| o.token == token) {
                    if confirmable {
                        let ack = self.send_empty(MessageType::Acknowledgement, mid);
                        self.cache.record_response(mid, &token, &ack);
                    }
                    self.on_notification(now, i, packet);
                } else {
                    // A late separate response, or a notification for an observation we
                    // dropped: RST tells the peer to stop (RFC 7252 §4.2, RFC 7641 §3.6).
                    debug!("coap: unmatched response-class message mid={mid}, answering RST");
                    let rst = self.send_empty(MessageType::Reset, mid);
                    self.cache.record_response(mid, &token, &rst);
                }
            }
        }
        Ok(())
    }

    fn on_notification(&mut self, now: Instant, i: usize, packet: Packet) {
        let obs = &mut self.observations[i];
        if !code::is_success(raw_code(&packet)) {
            // An error code ends the observation on the notifier's side (RFC 7641 §3.2).
            let handle = obs.handle;
            self.observations.swap_remove(i);
            self.events
                .push_back(EndpointEvent::Notification { handle, packet });
            return;
        }
        if let (Some((v1, t1)), Some(v2)) = (obs.last, observe_value(&packet)) {
            if !fresher(v1, t1, v2, now) {
                trace!("coap: dropping stale notification {v2} (have {v1})");
                return;
            }
        }
        if let Some(v2) = observe_value(&packet) {
            obs.last = Some((v2, now));
        }
        let handle = obs.handle;
        let request = obs.request.clone();
        if let Some(packet) = self.fetch_notification_rest(now, handle, &request, packet) {
            self.events
                .push_back(EndpointEvent::Notification { handle, packet });
        }
    }

    /// Retransmits what is due and gives up on exchanges past their limits.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<RequestHandle> = self
            .transfers
            .iter()
            .filter(|t| t.deadline.is_some_and(|d| d <= now))
            .map(|t| t.handle)
            .collect();
        for handle in expired {
            debug!("coap: block-wise transfer {} ran out of time", handle.0);
            self.active.retain(|o| o.handle != handle);
            self.queued.retain(|q| q.handle != handle);
            self.fail_transfer(handle, ExchangeError::Timeout);
        }
        self.start_queued(now);
        let mut i = 0;
        while i < self.active.len() {
            match self.active[i].state {
                State::AwaitingAck {
                    retransmits,
                    interval,
                    next,
                } if next <= now => {
                    if retransmits < self.params.max_retransmit {
                        let interval = interval * 2;
                        self.active[i].state = State::AwaitingAck {
                            retransmits: retransmits + 1,
                            interval,
                            next: now + interval,
                        };
                        let bytes = self.active[i].bytes.clone();
                        self.stats.retransmissions += 1;
                        trace!(
                            "coap: retransmit mid={} ({})",
                            self.active[i].mid,
                            retransmits + 1
                        );
                        self.push_tx(bytes);
                        i += 1;
                    } else {
                        // The last interval has run out with no ACK: give up.
                        self.fail(now, i, ExchangeError::Timeout);
                    }
                }
                State::AwaitingResponse { deadline } if deadline <= now => {
                    self.fail(now, i, ExchangeError::Timeout);
                }
                _ => i += 1,
            }
        }
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active
            .iter()
            .map(|o| match o.state {
                State::AwaitingAck { next, .. } => next,
                State::AwaitingResponse { deadline } => deadline,
            })
            .chain(self.transfers.iter().filter_map(|t| t.deadline))
            .min()
    }

    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// True when nothing is in flight or queued.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{new_request, new_response};
    use super::*;

    fn pair() -> (Endpoint, Endpoint) {
        let mut r = SeededRng::new(1);
        let a = Endpoint::new(TxParams::default(), 1152, 4096, &mut r);
        let b = Endpoint::new(TxParams::default(), 1152, 4096, &mut r);
        (a, b)
    }

    fn deliver(from: &mut Endpoint, to: &mut Endpoint, now: Instant) -> usize {
        let mut n = 0;
        while let Some(d) = from.poll_transmit() {
            to.handle_datagram(now, &d).unwrap();
            n += 1;
        }
        n
    }

    fn take_request(e: &mut Endpoint) -> InboundRequest {
        match e.poll_event() {
            Some(EndpointEvent::Request(r)) => r,
            other => panic!("expected request, got {other:?}"),
        }
    }

    #[test]
    fn piggybacked_response_is_matched() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        let h = c
            .send_request(t, new_request(code::GET, "/3/0"), true)
            .unwrap();
        deliver(&mut c, &mut s, t);
        let req = take_request(&mut s);
        let mut resp = new_response(code::CONTENT);
        resp.payload = b"hi".to_vec();
        s.respond(t, &req, resp);
        deliver(&mut s, &mut c, t);
        match c.poll_event() {
            Some(EndpointEvent::Response { handle, packet }) => {
                assert_eq!(handle, h);
                assert_eq!(packet.payload, b"hi");
            }
            other => panic!("{other:?}"),
        }
        assert!(c.is_idle());
    }

    #[test]
    fn retransmits_with_doubling_then_times_out() {
        let (mut c, _) = pair();
        let t0 = Instant::ZERO;
        let h = c
            .send_request(t0, new_request(code::GET, "/x"), true)
            .unwrap();
        assert!(c.poll_transmit().is_some());
        let mut sends = 1;
        let mut last = t0;
        let mut gaps = Vec::new();
        while let Some(next) = c.poll_timeout() {
            c.handle_timeout(next);
            while c.poll_transmit().is_some() {
                sends += 1;
                gaps.push(next.saturating_duration_since(last));
                last = next;
            }
            if let Some(EndpointEvent::Failed { handle, error }) = c.poll_event() {
                assert_eq!(handle, h);
                assert_eq!(error, ExchangeError::Timeout);
                assert!(next.saturating_duration_since(t0) <= c.params().max_transmit_wait());
                assert!(next.saturating_duration_since(t0) >= Duration::from_secs(62));
                break;
            }
        }
        assert_eq!(sends, 5);
        for w in gaps.windows(2) {
            assert_eq!(w[1], w[0] * 2);
        }
    }

    #[test]
    fn separate_response_after_empty_ack() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        let h = c
            .send_request(t, new_request(code::POST, "/est/sen"), true)
            .unwrap();
        deliver(&mut c, &mut s, t);
        let req = take_request(&mut s);
        s.accept_later(&req);
        deliver(&mut s, &mut c, t);
        assert!(c.poll_event().is_none());
        // The client no longer retransmits after the empty ACK.
        let t1 = Instant::from_millis(10_000);
        c.handle_timeout(t1);
        assert!(c.poll_transmit().is_none());
        s.respond(t1, &req, new_response(code::CHANGED));
        deliver(&mut s, &mut c, t1);
        assert!(
            matches!(c.poll_event(), Some(EndpointEvent::Response { handle, .. }) if handle == h)
        );
        // The client acknowledged the CON response; the server stops retransmitting.
        deliver(&mut c, &mut s, t1);
        assert!(matches!(
            s.poll_event(),
            Some(EndpointEvent::Delivered { .. })
        ));
        assert!(s.is_idle());
    }

    #[test]
    fn duplicate_request_surfaces_once_and_is_answered_twice() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        c.send_request(t, new_request(code::GET, "/3/0/0"), true)
            .unwrap();
        let d = c.poll_transmit().unwrap();
        s.handle_datagram(t, &d).unwrap();
        let req = take_request(&mut s);
        s.respond(t, &req, new_response(code::CONTENT));
        let first = s.poll_transmit().unwrap();
        s.handle_datagram(t, &d).unwrap();
        assert!(s.poll_event().is_none());
        assert_eq!(s.poll_transmit().unwrap(), first);
    }

    #[test]
    fn rst_fails_the_request_and_ping_gets_rst() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        let h = c
            .send_request(t, new_request(code::GET, "/x"), true)
            .unwrap();
        let d = c.poll_transmit().unwrap();
        let p = Packet::from_bytes(&d).unwrap();
        let rst = empty_message(MessageType::Reset, p.header.message_id);
        c.handle_datagram(t, &rst.to_bytes().unwrap()).unwrap();
        assert!(
            matches!(c.poll_event(), Some(EndpointEvent::Failed { handle, error: ExchangeError::Reset }) if handle == h)
        );

        let ping = empty_message(MessageType::Confirmable, 99);
        s.handle_datagram(t, &ping.to_bytes().unwrap()).unwrap();
        let r = Packet::from_bytes(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(r.header.get_type(), MessageType::Reset);
        assert_eq!(r.header.message_id, 99);
    }

    #[test]
    fn nstart_one_queues_the_second_request() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        c.send_request(t, new_request(code::GET, "/a"), true)
            .unwrap();
        c.send_request(t, new_request(code::GET, "/b"), true)
            .unwrap();
        assert_eq!(deliver(&mut c, &mut s, t), 1);
        let req = take_request(&mut s);
        s.respond(t, &req, new_response(code::CONTENT));
        deliver(&mut s, &mut c, t);
        assert!(matches!(
            c.poll_event(),
            Some(EndpointEvent::Response { .. })
        ));
        assert_eq!(deliver(&mut c, &mut s, t), 1);
    }

    #[test]
    fn garbage_and_truncations_change_nothing() {
        let (mut c, _) = pair();
        let t = Instant::ZERO;
        c.send_request(t, new_request(code::GET, "/3/0"), true)
            .unwrap();
        let d = c.poll_transmit().unwrap();
        let mut rng = SeededRng::new(5);
        for len in 0..d.len() {
            let _ = c.handle_datagram(t, &d[..len]);
        }
        for _ in 0..2000 {
            let n = (rng.next_u32() % 64) as usize;
            let mut buf = vec![0u8; n];
            rng.fill_bytes(&mut buf);
            let _ = c.handle_datagram(t, &buf);
        }
        // The original request is still in flight and nothing surfaced as a response.
        while let Some(ev) = c.poll_event() {
            assert!(matches!(ev, EndpointEvent::Request(_)), "unexpected {ev:?}");
        }
        assert!(!c.is_idle());
    }

    #[test]
    fn oversized_request_is_refused_up_front() {
        let (mut c, _) = pair();
        // Options alone larger than the buffer: not even a 16-byte block fits.
        let mut p = new_request(code::POST, "/big");
        super::super::add_uri_query(&mut p, &"q".repeat(1200));
        p.payload = vec![0u8; 4000];
        assert_eq!(
            c.send_request(Instant::ZERO, p, true),
            Err(ExchangeError::TooLarge)
        );
    }

    fn observe_get(path: &str) -> Packet {
        let mut p = new_request(code::GET, path);
        p.add_option(CoapOption::Observe, Vec::new());
        p
    }

    fn notification(seq: u32, body: &[u8]) -> Packet {
        let mut p = new_response(code::CONTENT);
        p.add_option(CoapOption::Observe, super::super::encode_uint(seq));
        p.payload = body.to_vec();
        p
    }

    /// The test server observes (client role here), the device notifies (server role).
    fn start_observation(obs: &mut Endpoint, dev: &mut Endpoint) -> (RequestHandle, Vec<u8>) {
        let t = Instant::ZERO;
        let h = obs.send_request(t, observe_get("/3/0/9"), true).unwrap();
        deliver(obs, dev, t);
        let req = take_request(dev);
        dev.respond(t, &req, notification(1, b"80"));
        deliver(dev, obs, t);
        match obs.poll_event() {
            Some(EndpointEvent::Response { handle, packet }) => {
                assert_eq!(handle, h);
                assert_eq!(packet.payload, b"80");
            }
            other => panic!("{other:?}"),
        }
        assert!(obs.is_observing(h));
        (h, req.token)
    }

    #[test]
    fn observe_notifications_arrive_acked_and_deduplicated() {
        let (mut obs, mut dev) = pair();
        let (h, token) = start_observation(&mut obs, &mut dev);
        let t = Instant::from_millis(5_000);
        let n = dev.send_message(t, token.clone(), notification(2, b"79"), true);
        let d = dev.poll_transmit().unwrap();
        obs.handle_datagram(t, &d).unwrap();
        obs.handle_datagram(t, &d).unwrap(); // duplicated by the network
        match obs.poll_event() {
            Some(EndpointEvent::Notification { handle, packet }) => {
                assert_eq!(handle, h);
                assert_eq!(packet.payload, b"79");
            }
            other => panic!("{other:?}"),
        }
        assert!(obs.poll_event().is_none(), "duplicate must not surface");
        // Both copies were ACKed with the same bytes; the notifier sees delivery once.
        assert_eq!(deliver(&mut obs, &mut dev, t), 2);
        assert!(
            matches!(dev.poll_event(), Some(EndpointEvent::Delivered { handle }) if handle == n)
        );
        assert!(dev.poll_event().is_none());
        // A NON notification surfaces too, without an ACK.
        dev.send_message(t, token.clone(), notification(3, b"78"), false);
        assert_eq!(deliver(&mut dev, &mut obs, t), 1);
        assert!(matches!(
            obs.poll_event(),
            Some(EndpointEvent::Notification { handle, .. }) if handle == h
        ));
        assert!(obs.poll_transmit().is_none());
        // A reordered older one (sequence 2 after 3) is dropped.
        dev.send_message(t, token, notification(2, b"old"), false);
        deliver(&mut dev, &mut obs, t);
        assert!(obs.poll_event().is_none());
    }

    #[test]
    fn forgotten_observation_answers_rst_and_notifier_sees_reset() {
        let (mut obs, mut dev) = pair();
        let (h, token) = start_observation(&mut obs, &mut dev);
        obs.forget_observation(h);
        assert!(!obs.is_observing(h));
        let t = Instant::from_millis(1_000);
        for confirmable in [true, false] {
            let n = dev.send_message(t, token.clone(), notification(5, b"x"), confirmable);
            deliver(&mut dev, &mut obs, t);
            assert!(obs.poll_event().is_none());
            let rst = Packet::from_bytes(&obs.poll_transmit().unwrap()).unwrap();
            assert_eq!(rst.header.get_type(), MessageType::Reset);
            dev.handle_datagram(t, &rst.to_bytes().unwrap()).unwrap();
            match dev.poll_event() {
                Some(EndpointEvent::Failed { handle, error }) => {
                    assert_eq!(handle, n);
                    assert_eq!(error, ExchangeError::Reset);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(dev.is_idle());
    }

    #[test]
    fn get_without_observe_keeps_no_token_live() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        let h = c
            .send_request(t, new_request(code::GET, "/3/0/9"), true)
            .unwrap();
        deliver(&mut c, &mut s, t);
        let req = take_request(&mut s);
        // Even a response carrying Observe does not start one for a plain GET.
        s.respond(t, &req, notification(1, b"1"));
        deliver(&mut s, &mut c, t);
        assert!(matches!(
            c.poll_event(),
            Some(EndpointEvent::Response { .. })
        ));
        assert!(!c.is_observing(h));
        s.send_message(t, req.token, notification(2, b"2"), true);
        deliver(&mut s, &mut c, t);
        assert!(c.poll_event().is_none());
        let rst = Packet::from_bytes(&c.poll_transmit().unwrap()).unwrap();
        assert_eq!(rst.header.get_type(), MessageType::Reset);
    }

    #[test]
    fn error_notification_ends_the_observation() {
        let (mut obs, mut dev) = pair();
        let (h, token) = start_observation(&mut obs, &mut dev);
        let t = Instant::ZERO;
        dev.send_message(t, token, new_response(code::NOT_FOUND), false);
        deliver(&mut dev, &mut obs, t);
        assert!(matches!(
            obs.poll_event(),
            Some(EndpointEvent::Notification { handle, .. }) if handle == h
        ));
        assert!(!obs.is_observing(h));
    }

    #[test]
    fn stray_message_id_does_not_shadow_a_later_request() {
        let (mut c, mut s) = pair();
        let t = Instant::ZERO;
        c.send_request(t, new_request(code::GET, "/3/0/0"), true)
            .unwrap();
        let real = c.poll_transmit().unwrap();
        let real_pkt = Packet::from_bytes(&real).unwrap();
        // A stray request with the same MID but another token arrives first and is answered.
        let mut stray = new_request(code::DELETE, "/3/0");
        stray.header.set_type(MessageType::Confirmable);
        stray.header.message_id = real_pkt.header.message_id;
        stray.set_token(vec![0xEE; 4]);
        s.handle_datagram(t, &stray.to_bytes().unwrap()).unwrap();
        let sreq = take_request(&mut s);
        s.respond(t, &sreq, new_response(code::METHOD_NOT_ALLOWED));
        s.poll_transmit().unwrap();
        // The real request still surfaces as new rather than getting the stray's answer.
        s.handle_datagram(t, &real).unwrap();
        let req = take_request(&mut s);
        assert_eq!(req.token, real_pkt.get_token());
    }
}
