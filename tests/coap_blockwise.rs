//! Block-wise transfers (RFC 7959) between two `Endpoint`s over a deterministic lossy link:
//! loss, duplication and reordering from a seeded RNG on a virtual clock. Sweeps show a
//! 16 KiB Block2 response and a 4 KiB Block1 request either arrive with the exact bytes or
//! fail with a clear error within EXCHANGE_LIFETIME, inside the RFC's retransmission bound;
//! exchange-level reassembly attacks are refused; a table of datagrams and bytes per
//! transfer is printed for 1, 4 and 16 KiB.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use estuary::coap::block::BlockOption;
use estuary::coap::endpoint::{BlockFailure, Stats};
use estuary::coap::{
    self, code, new_request, new_response, raw_code, CoapOption, Endpoint, EndpointEvent,
    ExchangeError, InboundRequest, MessageType, Packet, RequestHandle, TxParams,
};
use estuary::rng::RandomSource;
use estuary::{Instant, SeededRng};

const MTU: usize = 1152;
const CACHE: usize = 4096;

fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed ^ 0xB0D7);
    let mut b = vec![0u8; len];
    rng.fill_bytes(&mut b);
    b
}

/// Which endpoint a datagram goes to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Client,
    Server,
}

/// A datagram in flight: delivery time (ms), sequence number (ties), destination, bytes.
type InFlight = Reverse<(u64, u64, To, Vec<u8>)>;

/// A lossy, duplicating, reordering datagram link on virtual time.
struct Link {
    rng: SeededRng,
    loss: f64,
    dup: f64,
    /// Extra random delay (ms) on top of 5 ms, which reorders datagrams.
    jitter_ms: u32,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// After this many datagrams the link goes dead (a peer that disappears).
    cut_after: Option<u64>,
}

impl Link {
    fn new(seed: u64, loss: f64, dup: f64, jitter_ms: u32) -> Self {
        Link {
            rng: SeededRng::new(seed),
            loss,
            dup,
            jitter_ms,
            queue: BinaryHeap::new(),
            seq: 0,
            cut_after: None,
        }
    }

    fn send(&mut self, now: Instant, to: To, bytes: Vec<u8>) {
        if let Some(n) = self.cut_after.as_mut() {
            if *n == 0 {
                return;
            }
            *n -= 1;
        }
        if self.rng.next_f64() < self.loss {
            return;
        }
        let copies = if self.rng.next_f64() < self.dup { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 5 + u64::from(self.rng.next_u32() % (self.jitter_ms + 1));
            self.seq += 1;
            self.queue.push(Reverse((
                now.as_millis() + delay,
                self.seq,
                to,
                bytes.clone(),
            )));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue
            .peek()
            .map(|Reverse((at, ..))| Instant::from_millis(*at))
    }

    fn pop_due(&mut self, now: Instant) -> Option<(To, Vec<u8>)> {
        if self.next_at()? <= now {
            self.queue.pop().map(|Reverse((_, _, to, b))| (to, b))
        } else {
            None
        }
    }
}

/// The server application: GET /big returns `big`, PUT /up stores the body.
struct App {
    big: Vec<u8>,
    uploads: Vec<Vec<u8>>,
    /// Requests that surfaced, with their Block2 option if any.
    surfaced: Vec<Option<BlockOption>>,
    /// Answer later with a separate response instead of piggybacking.
    separate: bool,
}

impl App {
    fn new(big: Vec<u8>) -> Self {
        App {
            big,
            uploads: Vec::new(),
            surfaced: Vec::new(),
            separate: false,
        }
    }

    fn handle(&mut self, now: Instant, ep: &mut Endpoint, req: InboundRequest) {
        self.surfaced.push(
            req.packet
                .get_first_option(CoapOption::Block2)
                .and_then(|v| BlockOption::decode(v).ok()),
        );
        let path = coap::uri_path(&req.packet).unwrap_or_default().join("/");
        let resp = match (raw_code(&req.packet), path.as_str()) {
            (code::GET, "big") => {
                let mut r = new_response(code::CONTENT);
                coap::set_content_format(&mut r, coap::content_format::OCTET_STREAM);
                r.payload = self.big.clone();
                r
            }
            (code::PUT, "up") => {
                self.uploads.push(req.packet.payload.clone());
                new_response(code::CHANGED)
            }
            _ => new_response(code::NOT_FOUND),
        };
        if self.separate {
            ep.accept_later(&req);
        }
        ep.respond(now, &req, resp);
    }
}

struct Outcome {
    result: Result<Packet, ExchangeError>,
    elapsed: Duration,
    client_sent: u64,
    client_bytes: u64,
    server_sent: u64,
    server_bytes: u64,
    server_received: u64,
}

struct Pair {
    now: Instant,
    c: Endpoint,
    s: Endpoint,
    link: Link,
    app: App,
}

impl Pair {
    fn new(seed: u64, loss: f64, dup: f64, jitter_ms: u32, big: Vec<u8>) -> Self {
        let mut r = SeededRng::new(seed.wrapping_mul(7919));
        Pair {
            now: Instant::ZERO,
            c: Endpoint::new(TxParams::default(), MTU, CACHE, &mut r),
            s: Endpoint::new(TxParams::default(), MTU, CACHE, &mut r),
            link: Link::new(seed, loss, dup, jitter_ms),
            app: App::new(big),
        }
    }

    fn flush(&mut self) {
        while let Some(d) = self.c.poll_transmit() {
            self.link.send(self.now, To::Server, d);
        }
        while let Some(d) = self.s.poll_transmit() {
            self.link.send(self.now, To::Client, d);
        }
    }

    /// Runs until the request `h` ends; panics if nothing is scheduled before it does.
    fn run(&mut self, h: RequestHandle, c0: Stats, s0: Stats) -> Outcome {
        let start = self.now;
        let result = loop {
            self.flush();
            while let Some(ev) = self.s.poll_event() {
                if let EndpointEvent::Request(req) = ev {
                    self.app.handle(self.now, &mut self.s, req);
                }
            }
            self.flush();
            let mut done = None;
            while let Some(ev) = self.c.poll_event() {
                match ev {
                    EndpointEvent::Response { handle, packet } if handle == h => {
                        done = Some(Ok(packet))
                    }
                    EndpointEvent::Failed { handle, error } if handle == h => {
                        done = Some(Err(error))
                    }
                    other => panic!("unexpected client event {other:?}"),
                }
            }
            if let Some(d) = done {
                break d;
            }
            let next = [
                self.link.next_at(),
                self.c.poll_timeout(),
                self.s.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("exchange hangs: nothing scheduled and no outcome");
            self.now = self.now.max(next);
            if let Some((to, d)) = self.link.pop_due(self.now) {
                let ep = if to == To::Client {
                    &mut self.c
                } else {
                    &mut self.s
                };
                ep.handle_datagram(self.now, &d)
                    .expect("well-formed datagram");
            }
            self.c.handle_timeout(self.now);
            self.s.handle_timeout(self.now);
        };
        let (c1, s1) = (self.c.stats(), self.s.stats());
        Outcome {
            result,
            elapsed: self.now.saturating_duration_since(start),
            client_sent: c1.datagrams_sent - c0.datagrams_sent,
            client_bytes: c1.bytes_sent - c0.bytes_sent,
            server_sent: s1.datagrams_sent - s0.datagrams_sent,
            server_bytes: s1.bytes_sent - s0.bytes_sent,
            server_received: s1.datagrams_received - s0.datagrams_received,
        }
    }

    fn get_big(&mut self) -> Outcome {
        let (c0, s0) = (self.c.stats(), self.s.stats());
        let h = self
            .c
            .send_request(self.now, new_request(code::GET, "/big"), true)
            .unwrap();
        self.run(h, c0, s0)
    }

    fn put_up(&mut self, data: &[u8]) -> Outcome {
        let (c0, s0) = (self.c.stats(), self.s.stats());
        let mut p = new_request(code::PUT, "/up");
        p.payload = data.to_vec();
        let h = self.c.send_request(self.now, p, true).unwrap();
        self.run(h, c0, s0)
    }
}

/// RFC 7252 bound on what one block-wise transfer may send, for `blocks` block exchanges.
///
/// Client: every block is one confirmable request, sent at most 1 + MAX_RETRANSMIT times
/// (RFC 7252 §4.2); it sends nothing else here (the server piggybacks, so there are no
/// separate responses to ACK or RST), hence `client <= blocks * (MAX_RETRANSMIT + 1)`.
/// Server: it only answers, once per request datagram it receives (duplicates from the
/// link or from retransmission are answered again from the dedup or block cache), hence
/// `server <= server_received <= 2 * client` (the link duplicates each datagram at most once).
fn assert_within_rfc_bound(o: &Outcome, blocks: u64, what: &str) {
    let per_message = u64::from(TxParams::default().max_transmissions());
    assert!(
        o.client_sent <= blocks * per_message,
        "{what}: client sent {} datagrams, bound {}",
        o.client_sent,
        blocks * per_message
    );
    assert!(
        o.server_sent <= o.server_received,
        "{what}: server sent {} for {} received",
        o.server_sent,
        o.server_received
    );
    assert!(o.server_received <= 2 * o.client_sent);
}

#[test]
fn sweeps_over_loss_duplication_and_reordering() {
    let lifetime = TxParams::default().exchange_lifetime();
    let big = body(16 * 1024, 1);
    let up = body(4 * 1024, 2);
    eprintln!("loss  transfer  ok/30  failed(errors)  max client datagrams  max elapsed");
    for loss in [0.0, 0.10, 0.30, 0.50] {
        for (what, blocks) in [("block2 16K", 16u64), ("block1 4K", 4)] {
            let mut ok = 0;
            let mut errors = Vec::new();
            let mut max_sent = 0;
            let mut max_elapsed = Duration::ZERO;
            for seed in 0..30u64 {
                let mut pair = Pair::new(seed * 31 + 7, loss, 0.10, 400, big.clone());
                let o = if blocks == 16 {
                    pair.get_big()
                } else {
                    pair.put_up(&up)
                };
                assert!(
                    o.elapsed <= lifetime,
                    "{what} loss {loss} seed {seed}: ended after {:?}",
                    o.elapsed
                );
                assert_within_rfc_bound(&o, blocks, what);
                // Whatever surfaced at the server is the exact upload, never a mix.
                for u in &pair.app.uploads {
                    assert_eq!(u, &up, "{what} seed {seed}: corrupted upload");
                }
                max_sent = max_sent.max(o.client_sent);
                max_elapsed = max_elapsed.max(o.elapsed);
                match o.result {
                    Ok(p) if blocks == 16 => {
                        assert_eq!(raw_code(&p), code::CONTENT);
                        assert!(p.payload == big, "{what} seed {seed}: corrupted body");
                        assert!(p.get_first_option(CoapOption::Block2).is_none());
                        ok += 1;
                    }
                    Ok(p) => {
                        assert_eq!(raw_code(&p), code::CHANGED);
                        assert_eq!(pair.app.uploads.last(), Some(&up));
                        ok += 1;
                    }
                    Err(e) => {
                        // Only clear outcomes: the peer went silent for too long.
                        assert_eq!(e, ExchangeError::Timeout, "{what} seed {seed}");
                        errors.push(e);
                    }
                }
            }
            eprintln!(
                "{:>4.0}%  {what:<10} {ok:>2}/30  {:>2} (timeout)     {max_sent:>3} (bound {})  {:?}",
                loss * 100.0,
                errors.len(),
                blocks * 5,
                max_elapsed
            );
            if loss == 0.0 {
                assert_eq!(ok, 30, "{what}: a clean link must always complete");
            }
            if loss <= 0.10 {
                assert!(ok >= 27, "{what} at {loss}: only {ok}/30 completed");
            }
        }
    }
}

fn blocks_of(len: usize) -> u64 {
    len.div_ceil(1024).max(1) as u64
}

#[test]
fn datagrams_and_bytes_per_transfer_on_a_clean_link() {
    eprintln!("transfer  body   client dgrams  client bytes  server dgrams  server bytes");
    for kib in [1usize, 4, 16] {
        let len = kib * 1024;
        let data = body(len, kib as u64);
        let mut pair = Pair::new(kib as u64, 0.0, 0.0, 0, data.clone());
        let g = pair.get_big();
        assert_eq!(g.result.as_ref().unwrap().payload, data);
        let mut pair = Pair::new(kib as u64, 0.0, 0.0, 0, Vec::new());
        let p = pair.put_up(&data);
        assert_eq!(raw_code(p.result.as_ref().unwrap()), code::CHANGED);
        assert_eq!(pair.app.uploads, vec![data.clone()]);
        for (what, o) in [("Block2", &g), ("Block1", &p)] {
            eprintln!(
                "{what}   {kib:>2} KiB  {:>13}  {:>12}  {:>13}  {:>12}",
                o.client_sent, o.client_bytes, o.server_sent, o.server_bytes
            );
            // One request and one response per 1024-byte block, nothing retransmitted.
            let n = blocks_of(len);
            assert_eq!(o.client_sent, n, "{what} {kib} KiB");
            assert_eq!(o.server_sent, n, "{what} {kib} KiB");
            let (payload_side, other) = if what == "Block2" {
                (o.server_bytes, o.client_bytes)
            } else {
                (o.client_bytes, o.server_bytes)
            };
            // Headers and options cost well under 10% on top of the body.
            assert!(payload_side >= len as u64 && payload_side <= len as u64 + n * 64);
            assert!(other <= n * 64);
        }
    }
}

// ------------------------------------------------------------ exchange-level attacks

/// A client endpoint and its first GET /big as a datagram, answered by hand below.
fn client_with_request() -> (Endpoint, RequestHandle, Packet) {
    let mut r = SeededRng::new(3);
    let mut c = Endpoint::new(TxParams::default(), MTU, CACHE, &mut r);
    let h = c
        .send_request(Instant::ZERO, new_request(code::GET, "/big"), true)
        .unwrap();
    let req = Packet::from_bytes(&c.poll_transmit().unwrap()).unwrap();
    (c, h, req)
}

/// A piggybacked Block2 response to `req`.
fn block2_ack(req: &Packet, b: BlockOption, payload: Vec<u8>, etag: &[u8]) -> Vec<u8> {
    let mut p = new_response(code::CONTENT);
    p.header.set_type(MessageType::Acknowledgement);
    p.header.message_id = req.header.message_id;
    p.set_token(req.get_token().to_vec());
    p.add_option(CoapOption::Block2, b.encode());
    p.add_option(CoapOption::ETag, etag.to_vec());
    p.payload = payload;
    p.to_bytes_with_limit(4096).unwrap()
}

fn opt(num: u32, more: bool, szx: u8) -> BlockOption {
    BlockOption::new(num, more, szx).unwrap()
}

/// Feeds block 0, then `second(req)` for the follow-up request; returns the outcome.
fn attack(
    set_up: impl FnOnce(&mut Endpoint),
    second: impl FnOnce(&Packet) -> Vec<u8>,
) -> Option<EndpointEvent> {
    let (mut c, _, req) = client_with_request();
    set_up(&mut c);
    let t = Instant::ZERO;
    c.handle_datagram(t, &block2_ack(&req, opt(0, true, 6), vec![1; 1024], b"e1"))
        .unwrap();
    let follow = Packet::from_bytes(&c.poll_transmit().expect("follow-up request")).unwrap();
    let b2 = BlockOption::decode(follow.get_first_option(CoapOption::Block2).unwrap()).unwrap();
    assert_eq!(b2, opt(1, false, 6));
    assert!(
        follow.get_token() != req.get_token(),
        "fresh token per block"
    );
    c.handle_datagram(t, &second(&follow)).unwrap();
    c.poll_event()
}

fn refused_with(ev: Option<EndpointEvent>, want: BlockFailure) {
    match ev {
        Some(EndpointEvent::Failed { error, .. }) => {
            assert_eq!(error, ExchangeError::Block(want));
            eprintln!("refused: {error}");
        }
        other => panic!("expected refusal {want:?}, got {other:?}"),
    }
}

#[test]
fn block2_client_refuses_reassembly_attacks() {
    // Block size change mid-transfer (1024 then 512).
    refused_with(
        attack(
            |_| {},
            |f| block2_ack(f, opt(2, true, 5), vec![2; 512], b"e1"),
        ),
        BlockFailure::SizeChanged,
    );
    // A gap: block 2 where block 1 was asked for.
    refused_with(
        attack(
            |_| {},
            |f| block2_ack(f, opt(2, false, 6), vec![2; 10], b"e1"),
        ),
        BlockFailure::Gap,
    );
    // An overlap: block 0 again with other content.
    refused_with(
        attack(
            |_| {},
            |f| block2_ack(f, opt(0, true, 6), vec![9; 1024], b"e1"),
        ),
        BlockFailure::Overlap,
    );
    // Over the configured bound.
    refused_with(
        attack(
            |c| {
                c.set_max_reassembly(1500);
            },
            |f| block2_ack(f, opt(1, true, 6), vec![2; 1024], b"e1"),
        ),
        BlockFailure::TooLarge,
    );
    // The representation changed: another ETag.
    refused_with(
        attack(
            |_| {},
            |f| block2_ack(f, opt(1, false, 6), vec![2; 10], b"e2"),
        ),
        BlockFailure::EtagChanged,
    );
    // The honest continuation completes with the exact bytes.
    match attack(
        |_| {},
        |f| block2_ack(f, opt(1, false, 6), vec![2; 10], b"e1"),
    ) {
        Some(EndpointEvent::Response { packet, .. }) => {
            let mut want = vec![1u8; 1024];
            want.extend_from_slice(&[2; 10]);
            assert_eq!(packet.payload, want);
        }
        other => panic!("{other:?}"),
    }
}

/// A server endpoint fed hand-made Block1 requests; returns each answer's code and
/// Block1/Size1 options, and the requests that surfaced.
struct RawUpload {
    s: Endpoint,
    mid: u16,
}

impl RawUpload {
    fn new() -> Self {
        let mut r = SeededRng::new(4);
        RawUpload {
            s: Endpoint::new(TxParams::default(), MTU, CACHE, &mut r),
            mid: 100,
        }
    }

    fn block(&mut self, b: BlockOption, payload: Vec<u8>, size1: Option<u32>) -> Packet {
        let mut p = new_request(code::PUT, "/up");
        p.header.set_type(MessageType::Confirmable);
        self.mid += 1;
        p.header.message_id = self.mid;
        p.set_token(vec![self.mid as u8; 4]);
        p.add_option(CoapOption::Block1, b.encode());
        if let Some(s) = size1 {
            coap::set_uint_option(&mut p, CoapOption::Size1, s);
        }
        p.payload = payload;
        self.s
            .handle_datagram(Instant::ZERO, &p.to_bytes_with_limit(4096).unwrap())
            .unwrap();
        if let Some(EndpointEvent::Request(req)) = self.s.poll_event() {
            let mut ok = new_response(code::CHANGED);
            ok.payload = req.packet.payload.clone();
            self.s.respond(Instant::ZERO, &req, ok);
        }
        Packet::from_bytes(&self.s.poll_transmit().expect("an answer")).unwrap()
    }
}

fn block1_of(p: &Packet) -> Option<BlockOption> {
    p.get_first_option(CoapOption::Block1)
        .and_then(|v| BlockOption::decode(v).ok())
}

#[test]
fn block1_server_refuses_reassembly_attacks() {
    // Honest upload: 2.31 per block, one surfaced request with the whole body, final
    // response echoing Block1.
    let mut u = RawUpload::new();
    let a = u.block(opt(0, true, 6), vec![1; 1024], Some(1030));
    assert_eq!(raw_code(&a), code::CONTINUE);
    assert_eq!(block1_of(&a), Some(opt(0, true, 6)));
    let a = u.block(opt(1, false, 6), vec![2; 6], None);
    assert_eq!(raw_code(&a), code::CHANGED);
    assert_eq!(block1_of(&a), Some(opt(1, false, 6)));
    assert_eq!(a.payload.len(), 1030, "the handler saw the whole body");

    // Gap.
    let mut u = RawUpload::new();
    u.block(opt(0, true, 6), vec![1; 1024], None);
    assert_eq!(
        raw_code(&u.block(opt(2, true, 6), vec![3; 1024], None)),
        code::REQUEST_ENTITY_INCOMPLETE
    );
    // Size change mid-transfer.
    let mut u = RawUpload::new();
    u.block(opt(0, true, 6), vec![1; 1024], None);
    assert_eq!(
        raw_code(&u.block(opt(2, true, 5), vec![3; 512], None)),
        code::REQUEST_ENTITY_INCOMPLETE
    );
    // Overlap with other content.
    let mut u = RawUpload::new();
    u.block(opt(0, true, 5), vec![1; 512], None);
    u.block(opt(1, true, 5), vec![1; 512], None);
    assert_eq!(
        raw_code(&u.block(opt(1, true, 5), vec![7; 512], None)),
        code::REQUEST_ENTITY_INCOMPLETE
    );
    // The refused blocks changed nothing: the honest next block still continues.
    assert_eq!(
        raw_code(&u.block(opt(2, false, 5), vec![1; 5], None)),
        code::CHANGED
    );
    // Over the bound, announced or actual: 4.13 with Size1.
    let mut u = RawUpload::new();
    u.s.set_max_reassembly(2048);
    let a = u.block(opt(0, true, 6), vec![1; 1024], Some(5000));
    assert_eq!(raw_code(&a), code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(coap::uint_option(&a, CoapOption::Size1), Some(2048));
    let mut u = RawUpload::new();
    u.s.set_max_reassembly(2048);
    u.block(opt(0, true, 6), vec![1; 1024], None);
    u.block(opt(1, true, 6), vec![1; 1024], None);
    let a = u.block(opt(2, false, 6), vec![1; 1], None);
    assert_eq!(raw_code(&a), code::REQUEST_ENTITY_TOO_LARGE);
    // A block without a transfer in progress.
    let mut u = RawUpload::new();
    assert_eq!(
        raw_code(&u.block(opt(3, true, 6), vec![1; 1024], None)),
        code::REQUEST_ENTITY_INCOMPLETE
    );
}

// ------------------------------------------------------------ negotiation and variants

#[test]
fn small_in_buffer_negotiates_small_blocks_early() {
    let data = body(5000, 9);
    let mut pair = Pair::new(1, 0.0, 0.0, 0, data.clone());
    pair.c.set_in_buffer_size(300);
    let o = pair.get_big();
    assert_eq!(o.result.unwrap().payload, data);
    // 256-byte blocks from the first response on: 20 exchanges.
    assert_eq!(o.server_sent, 5000u64.div_ceil(256));
    assert!(pair.app.surfaced[0].is_some_and(|b| b.szx == 4));
}

#[test]
fn block1_retries_smaller_after_4_13() {
    let data = body(3000, 10);
    let mut pair = Pair::new(2, 0.0, 0.0, 0, Vec::new());
    pair.s.set_in_buffer_size(400);
    let o = pair.put_up(&data);
    assert_eq!(raw_code(&o.result.unwrap()), code::CHANGED);
    assert_eq!(pair.app.uploads, vec![data]);
    // One 1024-byte block refused with 4.13, then 256-byte blocks: 1 + ceil(3000/256).
    assert_eq!(o.client_sent, 1 + 3000u64.div_ceil(256));
}

#[test]
fn whole_request_over_the_peers_in_buffer_is_resent_block_wise_after_4_13() {
    // 1000 bytes fit our datagrams, so they go in one piece; the server takes 400-byte
    // messages, answers 4.13 with a Block1 hint, and gets the body in 256-byte blocks.
    let data = body(1000, 12);
    let mut pair = Pair::new(4, 0.0, 0.0, 0, Vec::new());
    pair.s.set_in_buffer_size(400);
    let o = pair.put_up(&data);
    assert_eq!(raw_code(&o.result.unwrap()), code::CHANGED);
    assert_eq!(pair.app.uploads, vec![data]);
    assert_eq!(o.client_sent, 1 + 1000u64.div_ceil(256));
    // A body within the server's buffer is not affected.
    let small = body(300, 13);
    let o = pair.put_up(&small);
    assert_eq!(raw_code(&o.result.unwrap()), code::CHANGED);
    assert_eq!(o.client_sent, 1);
}

#[test]
fn block2_cache_miss_surfaces_and_is_sliced_from_the_new_rendering() {
    let data = body(3000, 11);
    let mut pair = Pair::new(3, 0.0, 0.0, 0, data.clone());
    pair.s.set_block_cache_bytes(0);
    let o = pair.get_big();
    assert_eq!(o.result.unwrap().payload, data);
    let nums: Vec<u32> = pair
        .app
        .surfaced
        .iter()
        .map(|b| b.map_or(0, |b| b.num))
        .collect();
    assert_eq!(nums, vec![0, 1, 2]);
    // With the cache, only the first request surfaces.
    let mut pair = Pair::new(3, 0.0, 0.0, 0, data.clone());
    pair.get_big().result.unwrap();
    assert_eq!(pair.app.surfaced.len(), 1);
}

#[test]
fn large_separate_response_is_block_wise_too() {
    let data = body(2500, 12);
    let mut pair = Pair::new(4, 0.10, 0.10, 300, data.clone());
    pair.app.separate = true;
    let o = pair.get_big();
    assert_eq!(o.result.unwrap().payload, data);
}

#[test]
fn large_notification_is_fetched_and_delivered_whole() {
    let mut r = SeededRng::new(5);
    let mut obs = Endpoint::new(TxParams::default(), MTU, CACHE, &mut r);
    let mut dev = Endpoint::new(TxParams::default(), MTU, CACHE, &mut r);
    let t = Instant::ZERO;
    let pump = |a: &mut Endpoint, b: &mut Endpoint| {
        while let Some(d) = a.poll_transmit() {
            b.handle_datagram(t, &d).unwrap();
        }
    };
    let mut get = new_request(code::GET, "/3/0/9");
    get.add_option(CoapOption::Observe, Vec::new());
    let h = obs.send_request(t, get, true).unwrap();
    pump(&mut obs, &mut dev);
    let Some(EndpointEvent::Request(req)) = dev.poll_event() else {
        panic!("no request")
    };
    let first = body(1800, 13);
    let mut resp = new_response(code::CONTENT);
    resp.add_option(CoapOption::Observe, vec![1]);
    resp.payload = first.clone();
    dev.respond(t, &req, resp);
    // Block-wise first response: fetched through the device's block cache.
    for _ in 0..4 {
        pump(&mut dev, &mut obs);
        pump(&mut obs, &mut dev);
        assert!(dev.poll_event().is_none(), "follow-ups must not surface");
    }
    match obs.poll_event() {
        Some(EndpointEvent::Response { handle, packet }) => {
            assert_eq!(handle, h);
            assert_eq!(packet.payload, first);
            assert!(packet.get_first_option(CoapOption::Observe).is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(obs.is_observing(h));
    // A large notification: block 0 in the notification, the rest fetched.
    let second = body(2600, 14);
    let mut n = new_response(code::CONTENT);
    n.add_option(CoapOption::Observe, vec![2]);
    n.payload = second.clone();
    dev.send_message(t, req.token.clone(), n, true);
    for _ in 0..5 {
        pump(&mut dev, &mut obs);
        pump(&mut obs, &mut dev);
    }
    let mut got = None;
    while let Some(ev) = obs.poll_event() {
        if let EndpointEvent::Notification { handle, packet } = ev {
            assert_eq!(handle, h);
            got = Some(packet);
        }
    }
    let got = got.expect("notification delivered");
    assert_eq!(got.payload, second);
    assert_eq!(coap::uint_option(&got, CoapOption::Observe), Some(2));
    assert!(obs.is_observing(h));
}

#[test]
fn peer_vanishing_mid_transfer_fails_within_the_exchange_lifetime() {
    let lifetime = TxParams::default().exchange_lifetime();
    for cut in [1u64, 5, 9] {
        let mut pair = Pair::new(6, 0.0, 0.0, 0, body(16 * 1024, 15));
        pair.link.cut_after = Some(cut);
        let o = pair.get_big();
        assert_eq!(
            o.result.unwrap_err(),
            ExchangeError::Timeout,
            "cut after {cut}"
        );
        assert!(o.elapsed <= lifetime);
        // The block that got no answer was sent 1 + MAX_RETRANSMIT times, no more.
        assert!(
            o.client_sent <= cut.div_ceil(2) + 5,
            "cut {cut}: {}",
            o.client_sent
        );
        assert!(pair.c.is_idle());
        assert_eq!(pair.c.poll_timeout(), None, "nothing left scheduled");
    }
    let mut pair = Pair::new(7, 0.0, 0.0, 0, Vec::new());
    pair.link.cut_after = Some(3);
    let o = pair.put_up(&body(4096, 16));
    assert_eq!(o.result.unwrap_err(), ExchangeError::Timeout);
    assert!(o.elapsed <= lifetime);
    assert!(
        pair.app.uploads.is_empty(),
        "a partial upload never surfaces"
    );
}

#[test]
fn unanswered_notification_fetch_is_dropped_and_the_observation_stays() {
    let mut r = SeededRng::new(8);
    let mut obs = Endpoint::new(TxParams::default(), MTU, CACHE, &mut r);
    let t = Instant::ZERO;
    let mut get = new_request(code::GET, "/3/0/9");
    get.add_option(CoapOption::Observe, Vec::new());
    let h = obs.send_request(t, get, true).unwrap();
    let req = Packet::from_bytes(&obs.poll_transmit().unwrap()).unwrap();
    let mut first = new_response(code::CONTENT);
    first.header.set_type(MessageType::Acknowledgement);
    first.header.message_id = req.header.message_id;
    first.set_token(req.get_token().to_vec());
    first.add_option(CoapOption::Observe, vec![1]);
    first.payload = b"1".to_vec();
    obs.handle_datagram(t, &first.to_bytes().unwrap()).unwrap();
    assert!(matches!(
        obs.poll_event(),
        Some(EndpointEvent::Response { .. })
    ));
    // Block 0 of a large notification; the device then never answers the fetch.
    let mut n = new_response(code::CONTENT);
    n.header.set_type(MessageType::NonConfirmable);
    n.header.message_id = 500;
    n.set_token(req.get_token().to_vec());
    n.add_option(CoapOption::Observe, vec![2]);
    n.add_option(CoapOption::Block2, opt(0, true, 6).encode());
    n.payload = vec![5; 1024];
    obs.handle_datagram(t, &n.to_bytes_with_limit(2000).unwrap())
        .unwrap();
    let mut sent = 0;
    while obs.poll_transmit().is_some() {
        sent += 1;
    }
    while let Some(next) = obs.poll_timeout() {
        obs.handle_timeout(next);
        while obs.poll_transmit().is_some() {
            sent += 1;
        }
    }
    assert_eq!(
        sent, 5,
        "the block 1 request, retransmitted up to MAX_RETRANSMIT"
    );
    assert!(
        obs.poll_event().is_none(),
        "no event for a fetch the caller never made"
    );
    assert!(obs.is_observing(h));
}

#[test]
fn block2_follow_up_for_a_vanished_resource_gets_the_error_code() {
    let mut r = SeededRng::new(9);
    let mut s = Endpoint::new(TxParams::default(), MTU, CACHE, &mut r);
    s.set_block_cache_bytes(0);
    let mut p = new_request(code::GET, "/big");
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = 7;
    p.set_token(vec![1, 2]);
    p.add_option(CoapOption::Block2, opt(3, false, 6).encode());
    s.handle_datagram(Instant::ZERO, &p.to_bytes().unwrap())
        .unwrap();
    let Some(EndpointEvent::Request(req)) = s.poll_event() else {
        panic!("a cache miss surfaces")
    };
    s.respond(Instant::ZERO, &req, new_response(code::NOT_FOUND));
    let a = Packet::from_bytes(&s.poll_transmit().unwrap()).unwrap();
    assert_eq!(raw_code(&a), code::NOT_FOUND);
    assert!(a.get_first_option(CoapOption::Block2).is_none());
}
