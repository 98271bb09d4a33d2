//! Block-wise transfers (RFC 7959) inside [`Endpoint`], invisible to its callers.
//!
//! Client role: a request body too large for one datagram goes out as Block1 blocks (2.31
//! Continue between them, smaller blocks after a 4.13); a response carrying Block2 with more
//! blocks is fetched block by block and delivered as one `Response` (or `Notification`).
//! Server role: Block1 blocks are reassembled and surface as one `Request`; a response too
//! large for one datagram goes out as Block2 block 0 with Size2 and an ETag, and later
//! blocks are served from a bounded cache without surfacing again.
//!
//! The pure option logic and every consistency check live in [`crate::coap::block`]; this
//! module copies options and payloads between packets and those structs and decides what
//! to send. All state is bounded in number, in bytes and in time (EXCHANGE_LIFETIME).

use coap_lite::{CoapOption, MessageType, Packet};
use log::debug;

use super::{Endpoint, EndpointEvent, ExchangeError, InboundRequest, RequestHandle};
use crate::coap::block::{
    block_size, szx_for_buffer, BlockError, BlockOption, BlockSender, Progress, Reassembler,
};
use crate::coap::{code, raw_code, set_uint_option, uint_option};
use crate::time::Instant;

/// Why a block-wise transfer was refused; the detail goes to the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockFailure {
    #[error("the block size changed mid-transfer")]
    SizeChanged,
    #[error("a block is missing")]
    Gap,
    #[error("a block overlaps received data with different content")]
    Overlap,
    #[error("the body exceeds the configured reassembly bound")]
    TooLarge,
    #[error("the ETag changed mid-transfer")]
    EtagChanged,
    #[error("the peer broke the block-wise protocol")]
    Protocol,
}

impl From<&BlockError> for BlockFailure {
    fn from(e: &BlockError) -> Self {
        match e {
            BlockError::SizeChanged { .. } | BlockError::SizeIncrease { .. } => {
                BlockFailure::SizeChanged
            }
            BlockError::Gap { .. } => BlockFailure::Gap,
            BlockError::Conflict { .. } => BlockFailure::Overlap,
            BlockError::TooLarge { .. } | BlockError::SizeHintTooLarge { .. } => {
                BlockFailure::TooLarge
            }
            BlockError::EtagChanged => BlockFailure::EtagChanged,
            _ => BlockFailure::Protocol,
        }
    }
}

/// Bytes reserved for the Block, Size and ETag options when sizing a block.
const BLOCK_OPTION_SLACK: usize = 24;
/// The smallest block (SZX 0): a body no larger cannot be split.
const MIN_BLOCK_BYTES: usize = 16;

/// A 4.13 makes a Block1 sender shrink at most this often (one step per SZX).
const MAX_SHRINKS: u32 = 7;
/// Concurrent Block1 uploads a server keeps state for.
const MAX_BLOCK1_RX: usize = 4;
/// Block2 representations a server keeps for follow-up requests.
const MAX_BLOCK2_CACHE: usize = 8;
/// Tokens of Observe registrations remembered to find a notification's resource.
const MAX_OBSERVED_KEYS: usize = 32;

/// One request of ours with everything needed to send its follow-up blocks.
#[derive(Debug)]
pub(super) struct ClientTransfer {
    pub(super) handle: RequestHandle,
    /// The caller's request without payload: options for follow-up requests.
    template: Packet,
    confirmable: bool,
    block1: Option<Block1Tx>,
    block2: Option<Reassembler>,
    /// Early negotiation: the Block2 SZX our in-buffer can take, if below 1024 bytes.
    block2_cap: Option<u8>,
    /// The first Block2 response, whose options the delivered packet carries.
    first: Option<Packet>,
    /// Delivered as `Notification` (a notification's remaining blocks) instead of `Response`.
    notification: bool,
    /// Set once the transfer spans several exchanges: it ends by then, whatever happens.
    pub(super) deadline: Option<Instant>,
    started: Instant,
    /// The body of a request sent in one piece, kept until its answer: a 4.13 carrying a
    /// Block1 size hint (RFC 7959 §2.9.3) restarts it block-wise.
    whole_body: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Block1Tx {
    sender: BlockSender,
    sent: BlockOption,
    shrinks: u32,
    done: bool,
}

/// A Block1 upload being reassembled (server role).
#[derive(Debug)]
pub(super) struct Block1Rx {
    key: Vec<u8>,
    reassembler: Reassembler,
    expires: Instant,
}

/// A large representation being served block by block (server role).
#[derive(Debug)]
pub(super) struct Block2Cache {
    key: Vec<u8>,
    sender: BlockSender,
    /// The response without payload, Block2 or Size2.
    template: Packet,
    expires: Instant,
}

fn block_option(p: &Packet, opt: CoapOption) -> Option<Result<BlockOption, BlockError>> {
    p.get_first_option(opt).map(|v| BlockOption::decode(v))
}

fn set_block_option(p: &mut Packet, opt: CoapOption, b: BlockOption) {
    p.clear_option(opt);
    p.add_option(opt, b.encode());
}

/// Identifies "the same resource" across the requests of one block-wise transfer: method,
/// Uri-Path, Uri-Query and Accept (RFC 7959 §2.4: the other options stay the same).
fn resource_key(p: &Packet) -> Vec<u8> {
    let mut key = vec![raw_code(p)];
    for opt in [
        CoapOption::UriPath,
        CoapOption::UriQuery,
        CoapOption::Accept,
    ] {
        key.push(0xFF);
        for v in p.get_option(opt).into_iter().flatten() {
            key.extend_from_slice(&(v.len() as u16).to_be_bytes());
            key.extend_from_slice(v);
        }
    }
    key
}

/// A 4-byte ETag derived from the body (FNV-1a), so re-rendering an unchanged
/// representation after a cache miss keeps the same ETag and a changed one does not.
fn body_etag(body: &[u8]) -> Vec<u8> {
    let mut h: u32 = 0x811c_9dc5;
    for b in body {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes().to_vec()
}

/// Encoded size of a packet without its payload (header, token, options).
fn header_len(p: &Packet) -> usize {
    let mut q = p.clone();
    q.payload.clear();
    q.to_bytes_unlimited().map_or(usize::MAX / 2, |b| b.len())
}

impl Endpoint {
    /// Largest datagram we accept; smaller than 1024 bytes of payload asks peers for
    /// smaller blocks (early negotiation, RFC 7959 §2.4). Defaults to `max_message_size`.
    pub fn set_in_buffer_size(&mut self, bytes: usize) -> &mut Self {
        self.in_buffer_size = bytes.max(64);
        self
    }

    /// Largest body reassembled from blocks, either direction; larger uploads get 4.13 with
    /// Size1, larger downloads fail with [`BlockFailure::TooLarge`].
    pub fn set_max_reassembly(&mut self, bytes: usize) -> &mut Self {
        self.max_reassembly = bytes;
        self
    }

    /// Bytes of large representations kept to answer Block2 follow-up requests.
    pub fn set_block_cache_bytes(&mut self, bytes: usize) -> &mut Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// The SZX our in-buffer can take for a message with `overhead` header bytes.
    fn in_szx(&self, overhead: usize) -> u8 {
        szx_for_buffer(self.in_buffer_size, overhead + BLOCK_OPTION_SLACK)
    }

    fn out_szx(&self, overhead: usize) -> u8 {
        szx_for_buffer(self.max_message_size, overhead + BLOCK_OPTION_SLACK)
    }

    // ---------------------------------------------------------------- client role

    /// Plans a request: the first packet to send, and the transfer state for the rest.
    pub(super) fn begin_transfer(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        mut packet: Packet,
        confirmable: bool,
    ) -> Result<(ClientTransfer, Packet), ExchangeError> {
        // Our token is not known yet: count a full-length one.
        let mut probe = packet.clone();
        probe.set_token(vec![0; super::TOKEN_LEN]);
        let overhead = header_len(&probe);
        let fits = probe
            .to_bytes_with_limit(self.max_message_size)
            .map(|b| b.len() <= self.max_message_size)
            .unwrap_or(false);
        let body = core::mem::take(&mut packet.payload);
        let mut template = packet;
        let mut block2_cap = None;
        let in_szx = self.in_szx(overhead);
        if in_szx < crate::coap::block::MAX_SZX
            && block_option(&template, CoapOption::Block2).is_none()
        {
            block2_cap = Some(in_szx);
        }
        let mut t = ClientTransfer {
            handle,
            template: template.clone(),
            confirmable,
            block1: None,
            block2: None,
            block2_cap,
            first: None,
            notification: false,
            deadline: None,
            started: now,
            whole_body: None,
        };
        let first = if fits {
            // A body that could still be split (more than one minimal block) is kept for
            // a peer whose in-buffer turns out smaller.
            if body.len() > MIN_BLOCK_BYTES {
                t.whole_body = Some(body.clone());
            }
            template.payload = body;
            if let Some(szx) = block2_cap {
                set_block_option(
                    &mut template,
                    CoapOption::Block2,
                    BlockOption {
                        num: 0,
                        more: false,
                        szx,
                    },
                );
            }
            template
        } else {
            if overhead + BLOCK_OPTION_SLACK + 16 > self.max_message_size {
                return Err(ExchangeError::TooLarge);
            }
            let total = body.len();
            let sender = BlockSender::new(body, self.out_szx(overhead))
                .map_err(|_| ExchangeError::TooLarge)?;
            let (opt, payload) = sender.block(0).ok_or(ExchangeError::Encode)?;
            let mut p = t.template.clone();
            set_block_option(&mut p, CoapOption::Block1, opt);
            set_uint_option(&mut p, CoapOption::Size1, total as u32);
            p.payload = payload.to_vec();
            t.block1 = Some(Block1Tx {
                sender,
                sent: opt,
                shrinks: 0,
                done: false,
            });
            t.deadline = Some(now + self.params.exchange_lifetime());
            p
        };
        Ok((t, first))
    }

    /// The options of the request behind `handle` (for an observation's later fetches).
    pub(super) fn transfer_template(&self, handle: RequestHandle) -> Packet {
        self.transfers
            .iter()
            .find(|t| t.handle == handle)
            .map(|t| t.template.clone())
            .unwrap_or_default()
    }

    /// Queues a follow-up request of a transfer ahead of new requests, with a fresh token.
    fn send_follow_up(&mut self, now: Instant, handle: RequestHandle, mut packet: Packet) {
        let confirmable = self
            .transfers
            .iter()
            .find(|t| t.handle == handle)
            .is_none_or(|t| t.confirmable);
        packet.set_token(self.new_token());
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        self.queued.push_front(super::Queued {
            handle,
            packet,
            confirmable,
        });
        self.start_queued(now);
    }

    /// Ends a request of ours with `error`. The remaining blocks of a notification are not
    /// a request of the caller's: failing to fetch them is logged and the observation stays
    /// (the next notification brings a fresh value).
    pub(super) fn fail_transfer(&mut self, handle: RequestHandle, error: ExchangeError) {
        let notification = match self.transfers.iter().position(|t| t.handle == handle) {
            Some(i) => self.transfers.swap_remove(i).notification,
            None => false,
        };
        if notification {
            debug!("coap: fetching the rest of a notification failed: {error}");
        } else {
            self.events
                .push_back(EndpointEvent::Failed { handle, error });
        }
    }

    /// A request sent in one piece was answered 4.13 with a Block1 size hint: sends its
    /// body again as Block1 blocks of (at most) that size. False when that does not apply
    /// (then the 4.13 goes to the caller).
    fn restart_as_block1(&mut self, now: Instant, ti: usize, packet: &Packet) -> bool {
        let Some(Ok(hint)) = block_option(packet, CoapOption::Block1) else {
            return false;
        };
        if self.transfers[ti].block1.is_some() {
            return false;
        }
        let Some(body) = self.transfers[ti].whole_body.take() else {
            return false;
        };
        let overhead = header_len(&self.transfers[ti].template) + super::TOKEN_LEN;
        let szx = hint.szx.min(self.out_szx(overhead));
        let total = body.len();
        let Ok(sender) = BlockSender::new(body, szx) else {
            return false;
        };
        let Some((opt, payload)) = sender.block(0) else {
            return false;
        };
        let mut p = self.transfers[ti].template.clone();
        set_block_option(&mut p, CoapOption::Block1, opt);
        set_uint_option(&mut p, CoapOption::Size1, total as u32);
        p.payload = payload.to_vec();
        debug!(
            "coap: 4.13 with a Block1 hint: sending the {total}-byte body in {}-byte blocks",
            16 << opt.szx
        );
        let lifetime = self.params.exchange_lifetime();
        let t = &mut self.transfers[ti];
        t.block1 = Some(Block1Tx {
            sender,
            sent: opt,
            shrinks: 0,
            done: false,
        });
        t.deadline = Some(now + lifetime);
        let handle = t.handle;
        self.send_follow_up(now, handle, p);
        true
    }

    /// Routes the response to one request of ours: the next block, or the caller's event.
    pub(super) fn on_response(&mut self, now: Instant, handle: RequestHandle, packet: Packet) {
        let Some(ti) = self.transfers.iter().position(|t| t.handle == handle) else {
            self.events
                .push_back(EndpointEvent::Response { handle, packet });
            return;
        };
        let rc = raw_code(&packet);
        if rc == code::REQUEST_ENTITY_TOO_LARGE && self.restart_as_block1(now, ti, &packet) {
            return;
        }
        let max_total = self.max_reassembly;
        let t = &mut self.transfers[ti];

        // Block1: more of our body to send?
        if let Some(b1) = t.block1.as_mut().filter(|b| !b.done) {
            let ack = block_option(&packet, CoapOption::Block1);
            if rc == code::CONTINUE {
                let next = match ack {
                    Some(Ok(ack)) => b1.sender.next_after_continue(b1.sent, ack),
                    Some(Err(e)) => Err(e),
                    None => Err(BlockError::AckMismatch {
                        sent: b1.sent.num,
                        acked: u32::MAX,
                    }),
                };
                match next {
                    Ok(Some((opt, payload))) => {
                        let mut p = t.template.clone();
                        set_block_option(&mut p, CoapOption::Block1, opt);
                        p.payload = payload.to_vec();
                        b1.sent = opt;
                        if !opt.more {
                            if let Some(szx) = t.block2_cap {
                                set_block_option(
                                    &mut p,
                                    CoapOption::Block2,
                                    BlockOption {
                                        num: 0,
                                        more: false,
                                        szx,
                                    },
                                );
                            }
                        }
                        self.send_follow_up(now, handle, p);
                    }
                    Ok(None) => {
                        debug!("coap: 2.31 Continue after our last Block1 block");
                        self.fail_transfer(handle, ExchangeError::Block(BlockFailure::Protocol));
                    }
                    Err(e) => {
                        debug!("coap: Block1 upload refused by our checks: {e}");
                        self.fail_transfer(handle, ExchangeError::Block((&e).into()));
                    }
                }
                return;
            }
            if rc == code::REQUEST_ENTITY_TOO_LARGE && b1.shrinks < MAX_SHRINKS {
                let suggested = ack.and_then(Result::ok).map(|a| a.szx);
                // Size1 alone (no Block1) states the largest body the server takes; a
                // smaller block cannot help then.
                let body_too_big = uint_option(&packet, CoapOption::Size1)
                    .is_some_and(|max| (max as usize) < b1.sender.total_len());
                if !body_too_big {
                    if let Ok((opt, payload)) = b1.sender.retry_smaller(b1.sent, suggested) {
                        debug!(
                            "coap: 4.13, resending block {} at {} bytes",
                            opt.num,
                            16 << opt.szx
                        );
                        b1.shrinks += 1;
                        b1.sent = opt;
                        let payload = payload.to_vec();
                        let total = b1.sender.total_len();
                        let mut p = t.template.clone();
                        set_block_option(&mut p, CoapOption::Block1, opt);
                        if opt.num == 0 {
                            set_uint_option(&mut p, CoapOption::Size1, total as u32);
                        }
                        p.payload = payload;
                        self.send_follow_up(now, handle, p);
                        return;
                    }
                }
            }
            b1.done = true;
        }

        // Block2: more of the response to fetch?
        let b2 = block_option(&packet, CoapOption::Block2);
        let in_progress = t.block2.is_some();
        let b2 = match b2 {
            Some(Ok(b)) if b.more || b.num > 0 || in_progress => b,
            Some(Err(e)) if code::is_success(rc) => {
                debug!("coap: malformed Block2 in response: {e}");
                self.fail_transfer(handle, ExchangeError::Block(BlockFailure::Protocol));
                return;
            }
            _ => {
                if in_progress && code::is_success(rc) {
                    debug!("coap: block-wise response lost its Block2 option");
                    self.fail_transfer(handle, ExchangeError::Block(BlockFailure::Protocol));
                } else {
                    self.finish(handle, packet);
                }
                return;
            }
        };
        if !code::is_success(rc) {
            self.finish(handle, packet);
            return;
        }
        let cap = t.block2_cap;
        let r = t.block2.get_or_insert_with(|| {
            let mut r = Reassembler::new(max_total);
            if let Some(szx) = cap {
                let _ = r.first_request_block(szx);
            }
            r
        });
        let etag = packet.get_first_option(CoapOption::ETag).cloned();
        let size2 = uint_option(&packet, CoapOption::Size2);
        match r.push(b2, &packet.payload, etag.as_deref(), size2) {
            Ok(Progress::NeedMore { next }) => {
                if t.first.is_none() {
                    t.first = Some(packet);
                }
                if t.deadline.is_none() {
                    t.deadline = Some(t.started + self.params.exchange_lifetime());
                }
                let mut p = t.template.clone();
                p.clear_option(CoapOption::Block1);
                p.clear_option(CoapOption::Size1);
                // Follow-ups of an Observe GET do not register again (RFC 7959 §2.6).
                p.clear_option(CoapOption::Observe);
                set_block_option(&mut p, CoapOption::Block2, next);
                self.send_follow_up(now, handle, p);
            }
            Ok(Progress::Complete(body)) => {
                let mut p = t.first.take().unwrap_or(packet);
                p.clear_option(CoapOption::Block2);
                p.clear_option(CoapOption::Size2);
                p.payload = body;
                self.finish(handle, p);
            }
            Ok(Progress::Duplicate) => {
                debug!("coap: peer answered a block request with a block we had");
                self.fail_transfer(handle, ExchangeError::Block(BlockFailure::Protocol));
            }
            Err(e) => {
                debug!("coap: Block2 response refused: {e}");
                self.fail_transfer(handle, ExchangeError::Block((&e).into()));
            }
        }
    }

    fn finish(&mut self, handle: RequestHandle, packet: Packet) {
        let notification = match self.transfers.iter().position(|t| t.handle == handle) {
            Some(i) => self.transfers.swap_remove(i).notification,
            None => false,
        };
        self.events.push_back(if notification {
            EndpointEvent::Notification { handle, packet }
        } else {
            EndpointEvent::Response { handle, packet }
        });
    }

    /// A notification whose body continues in more blocks: fetch them with the observe
    /// request's options (a newer notification replaces an unfinished fetch). Returns the
    /// packet back if it is complete as it is.
    pub(super) fn fetch_notification_rest(
        &mut self,
        now: Instant,
        handle: RequestHandle,
        request: &Packet,
        packet: Packet,
    ) -> Option<Packet> {
        let more = matches!(block_option(&packet, CoapOption::Block2), Some(Ok(b)) if b.more);
        if !more {
            return Some(packet);
        }
        self.active.retain(|o| o.handle != handle);
        self.queued.retain(|q| q.handle != handle);
        self.transfers.retain(|t| t.handle != handle);
        let mut template = request.clone();
        template.payload.clear();
        template.clear_option(CoapOption::Block2);
        self.transfers.push(ClientTransfer {
            handle,
            template,
            confirmable: true,
            block1: None,
            block2: None,
            block2_cap: None,
            first: None,
            notification: true,
            deadline: None,
            started: now,
            whole_body: None,
        });
        // The notification itself is block 0: continue as if it answered a request.
        self.on_response(now, handle, packet);
        None
    }

    // ---------------------------------------------------------------- server role

    /// Remembers which resource an Observe registration's token refers to, so a large
    /// notification for it can be served block-wise.
    fn remember_observed(&mut self, token: &[u8], key: Vec<u8>) {
        self.observed_keys.retain(|(t, _)| t != token);
        if self.observed_keys.len() >= MAX_OBSERVED_KEYS {
            self.observed_keys.pop_front();
        }
        self.observed_keys.push_back((token.to_vec(), key));
    }

    /// Handles a new inbound request before it surfaces: Block1 blocks are collected and
    /// acknowledged here, Block2 follow-ups answered from the cache. Returns the request to
    /// surface, if any.
    pub(super) fn on_inbound_request(
        &mut self,
        now: Instant,
        req: InboundRequest,
    ) -> Option<InboundRequest> {
        let key = resource_key(&req.packet);
        if crate::coap::uint_option(&req.packet, CoapOption::Observe) == Some(0) {
            self.remember_observed(&req.token, key.clone());
        }
        match block_option(&req.packet, CoapOption::Block1) {
            Some(Err(e)) => {
                debug!("coap: malformed Block1 option: {e}");
                self.respond_error(now, &req, code::BAD_OPTION);
                return None;
            }
            Some(Ok(b1)) => return self.on_block1(now, req, key, b1),
            None => {
                let overhead = header_len(&req.packet);
                if overhead + 1 + req.packet.payload.len() > self.in_buffer_size {
                    // Too large for our buffer: ask for Block1 blocks we can take
                    // (RFC 7959 §2.9.3) instead of dropping it unanswered.
                    let szx = self.in_szx(overhead);
                    debug!(
                        "coap: {}-byte request body over the {}-byte in-buffer: 4.13, blocks of {}",
                        req.packet.payload.len(),
                        self.in_buffer_size,
                        16 << szx
                    );
                    let mut resp = crate::coap::new_response(code::REQUEST_ENTITY_TOO_LARGE);
                    set_block_option(
                        &mut resp,
                        CoapOption::Block1,
                        BlockOption {
                            num: 0,
                            more: false,
                            szx,
                        },
                    );
                    self.respond_plain(now, &req, resp);
                    return None;
                }
            }
        }
        match block_option(&req.packet, CoapOption::Block2) {
            Some(Err(e)) => {
                debug!("coap: malformed Block2 option: {e}");
                self.respond_error(now, &req, code::BAD_OPTION);
                None
            }
            Some(Ok(b2)) if b2.num > 0 => {
                self.tx_block2.retain(|c| c.expires > now);
                let Some(ci) = self.tx_block2.iter().position(|c| c.key == key) else {
                    // Not cached (any more): the application renders it again and
                    // `respond` slices out the block asked for.
                    return Some(req);
                };
                let c = &mut self.tx_block2[ci];
                let mut resp = c.template.clone();
                resp.clear_option(CoapOption::Observe);
                match c.sender.serve(Some(b2)) {
                    Ok((opt, payload)) => {
                        set_block_option(&mut resp, CoapOption::Block2, opt);
                        resp.payload = payload.to_vec();
                        self.respond_plain(now, &req, resp);
                    }
                    Err(e) => {
                        debug!("coap: Block2 request refused: {e}");
                        self.respond_error(now, &req, e.response_code());
                    }
                }
                None
            }
            _ => Some(req),
        }
    }

    fn on_block1(
        &mut self,
        now: Instant,
        mut req: InboundRequest,
        key: Vec<u8>,
        b1: BlockOption,
    ) -> Option<InboundRequest> {
        self.rx_block1.retain(|r| r.expires > now);
        let lifetime = self.params.exchange_lifetime();
        let pos = self.rx_block1.iter().position(|r| r.key == key);
        let idx = match (pos, b1.num) {
            (Some(i), 0) => {
                // A block 0 that is not a repeat of ours restarts the upload (the client
                // gave up on the last one).
                let mut probe = self.rx_block1[i].reassembler.clone();
                let repeat = matches!(
                    probe.push(b1, &req.packet.payload, None, None),
                    Ok(Progress::Duplicate)
                );
                if !repeat {
                    let cap = self.in_szx(header_len(&req.packet));
                    let r = &mut self.rx_block1[i].reassembler;
                    r.reset();
                    let _ = r.first_request_block(cap);
                }
                i
            }
            (Some(i), _) => i,
            (None, 0) => {
                if self.rx_block1.len() >= MAX_BLOCK1_RX {
                    self.rx_block1.remove(0);
                }
                let mut reassembler = Reassembler::new(self.max_reassembly);
                let cap = self.in_szx(header_len(&req.packet));
                let _ = reassembler.first_request_block(cap);
                self.rx_block1.push(Block1Rx {
                    key,
                    reassembler,
                    expires: now + lifetime,
                });
                self.rx_block1.len() - 1
            }
            (None, _) => {
                debug!(
                    "coap: Block1 block {} without a transfer in progress",
                    b1.num
                );
                self.respond_error(now, &req, code::REQUEST_ENTITY_INCOMPLETE);
                return None;
            }
        };
        let size1 = uint_option(&req.packet, CoapOption::Size1);
        let rx = &mut self.rx_block1[idx];
        rx.expires = now + lifetime;
        let ack = rx.reassembler.block1_ack(b1);
        match rx.reassembler.push(b1, &req.packet.payload, None, size1) {
            Ok(Progress::NeedMore { .. }) => {
                let mut resp = crate::coap::new_response(code::CONTINUE);
                set_block_option(&mut resp, CoapOption::Block1, ack);
                self.respond_plain(now, &req, resp);
                None
            }
            Ok(Progress::Duplicate) => {
                if b1.more {
                    let mut resp = crate::coap::new_response(code::CONTINUE);
                    set_block_option(&mut resp, CoapOption::Block1, ack);
                    self.respond_plain(now, &req, resp);
                }
                None
            }
            Ok(Progress::Complete(body)) => {
                self.rx_block1.remove(idx);
                req.packet.clear_option(CoapOption::Block1);
                req.packet.clear_option(CoapOption::Size1);
                req.packet.payload = body;
                self.block1_final
                    .retain(|(m, t, _)| !(*m == req.mid && *t == req.token));
                if self.block1_final.len() >= MAX_BLOCK1_RX {
                    self.block1_final.remove(0);
                }
                self.block1_final.push((req.mid, req.token.clone(), ack));
                Some(req)
            }
            Err(e) => {
                debug!("coap: Block1 block {} refused: {e}", b1.num);
                let nothing_yet = rx.reassembler.received_len() == 0;
                match e {
                    BlockError::TooLarge { .. } | BlockError::SizeHintTooLarge { .. } => {
                        let max = self.max_reassembly as u32;
                        self.rx_block1.remove(idx);
                        let mut resp = crate::coap::new_response(code::REQUEST_ENTITY_TOO_LARGE);
                        set_uint_option(&mut resp, CoapOption::Size1, max);
                        self.respond_plain(now, &req, resp);
                    }
                    BlockError::SizeChanged { .. } if nothing_yet => {
                        // The first block is larger than we take: ask for smaller ones.
                        let mut resp = crate::coap::new_response(code::REQUEST_ENTITY_TOO_LARGE);
                        set_block_option(&mut resp, CoapOption::Block1, ack);
                        self.respond_plain(now, &req, resp);
                    }
                    BlockError::Gap { .. }
                    | BlockError::SizeChanged { .. }
                    | BlockError::Conflict { .. } => {
                        self.respond_error(now, &req, code::REQUEST_ENTITY_INCOMPLETE);
                    }
                    _ => self.respond_error(now, &req, code::BAD_REQUEST),
                }
                None
            }
        }
    }

    fn respond_error(&mut self, now: Instant, req: &InboundRequest, c: u8) {
        self.respond_plain(now, req, crate::coap::new_response(c));
    }

    /// Slices a response or notification for block-wise sending when needed: block
    /// `requested` (or 0) of the body, with Block2, Size2 and ETag; the rest is cached under
    /// `key` for follow-up requests. Small responses come back unchanged.
    pub(super) fn slice_response(
        &mut self,
        now: Instant,
        key: Option<Vec<u8>>,
        requested: Option<BlockOption>,
        mut response: Packet,
    ) -> Packet {
        let overhead = header_len(&response);
        let out_szx = self.out_szx(overhead);
        let fits = overhead + response.payload.len() <= self.max_message_size;
        let asked_smaller =
            requested.is_some_and(|b| response.payload.len() > block_size(b.szx).unwrap_or(0));
        let asked_later = requested.is_some_and(|b| b.num > 0);
        // Error answers are never sliced: their (diagnostic) payload is short, and a Block2
        // follow-up for a vanished resource must get the 4.04, not a range error.
        if (fits && !asked_smaller && !asked_later)
            || response.get_first_option(CoapOption::Block2).is_some()
            || (!code::is_success(raw_code(&response)) && fits)
        {
            return response;
        }
        let body = core::mem::take(&mut response.payload);
        if response.get_first_option(CoapOption::ETag).is_none() {
            response.add_option(CoapOption::ETag, body_etag(&body));
        }
        let total = body.len();
        let mut sender = match BlockSender::new(body, out_szx) {
            Ok(s) => s,
            Err(e) => {
                debug!("coap: response body cannot be sent block-wise: {e}");
                let mut p = crate::coap::new_response(code::INTERNAL_SERVER_ERROR);
                p.set_token(response.get_token().to_vec());
                return p;
            }
        };
        let mut p = response.clone();
        match sender.serve(requested.map(|b| BlockOption { more: false, ..b })) {
            Ok((opt, payload)) => {
                set_block_option(&mut p, CoapOption::Block2, opt);
                if opt.num == 0 {
                    set_uint_option(&mut p, CoapOption::Size2, total as u32);
                }
                p.payload = payload.to_vec();
            }
            Err(e) => {
                debug!("coap: Block2 request out of range: {e}");
                let mut p = crate::coap::new_response(e.response_code());
                p.set_token(response.get_token().to_vec());
                return p;
            }
        }
        if let Some(key) = key {
            self.cache_block2(now, key, sender, response);
        }
        p
    }

    fn cache_block2(&mut self, now: Instant, key: Vec<u8>, sender: BlockSender, template: Packet) {
        self.tx_block2.retain(|c| c.expires > now && c.key != key);
        let cost = |c: &Block2Cache| c.sender.total_len() + c.key.len();
        if sender.total_len() + key.len() > self.block_cache_bytes {
            return;
        }
        let mut used: usize = self.tx_block2.iter().map(cost).sum();
        while (used + sender.total_len() + key.len() > self.block_cache_bytes
            || self.tx_block2.len() >= MAX_BLOCK2_CACHE)
            && !self.tx_block2.is_empty()
        {
            if let Some(c) = self.tx_block2.pop_front() {
                used -= cost(&c);
            }
        }
        self.tx_block2.push_back(Block2Cache {
            key,
            sender,
            template,
            expires: now + self.params.exchange_lifetime(),
        });
    }

    /// The resource key and requested Block2 for a response to `req`; also the Block1
    /// option a completed upload's final response must carry.
    pub(super) fn prepare_response(
        &mut self,
        now: Instant,
        req: &InboundRequest,
        mut response: Packet,
    ) -> Packet {
        if let Some(i) = self
            .block1_final
            .iter()
            .position(|(m, t, _)| *m == req.mid && *t == req.token)
        {
            let (_, _, ack) = self.block1_final.swap_remove(i);
            set_block_option(&mut response, CoapOption::Block1, ack);
        }
        let requested = match block_option(&req.packet, CoapOption::Block2) {
            Some(Ok(b)) => Some(b),
            _ => None,
        };
        let key = resource_key(&req.packet);
        self.slice_response(now, Some(key), requested, response)
    }

    /// For `send_message`: the resource an Observe registration with this token refers to.
    pub(super) fn observed_key(&self, token: &[u8]) -> Option<Vec<u8>> {
        self.observed_keys
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, k)| k.clone())
    }
}
