//! Block-wise transfer (RFC 7959) as pure data: this module owns the Block1/Block2 option
//! values (encoding, decoding, block sizes), splitting a body into blocks for sending
//! ([`BlockSender`]), reassembling received blocks into a body ([`Reassembler`]), block-size
//! negotiation in both directions, and the safety checks on what a peer sends (gaps, size
//! changes, conflicting repeats, ETag changes, size limits). It does not own retransmission,
//! message IDs, tokens, timers or sockets: the exchange layer copies options and payloads
//! between packets and these structs, and decides what to send when one of them refuses a
//! block. Nothing here reads a clock or allocates beyond the configured limits.

use super::code;

/// Largest block number a Block option can carry: NUM has at most 20 bits (RFC 7959 §2.2).
pub const MAX_NUM: u32 = (1 << 20) - 1;

/// Largest usable SZX (1024-byte blocks); SZX 7 is reserved (RFC 7959 §2.2).
pub const MAX_SZX: u8 = 6;

/// Why a block option, a block or a negotiation step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// A Block option value is 0 to 3 bytes long.
    #[error("block option value is {0} bytes long, at most 3 are allowed")]
    OptionTooLong(usize),
    /// SZX 7 is reserved, and anything above it does not fit the 3-bit field.
    #[error("block size exponent {0} is reserved or out of range (0..=6)")]
    ReservedSzx(u8),
    /// NUM has 20 bits.
    #[error("block number {0} does not fit in 20 bits")]
    NumTooLarge(u32),
    /// A requested or acknowledged block starts at or beyond the end of the body.
    #[error("block {num} of {size} bytes lies beyond the end of the {len}-byte body")]
    OutOfRange { num: u32, size: usize, len: usize },
    /// The body needs more than 2^20 blocks of the given size.
    #[error("a {len}-byte body needs more than 2^20 blocks of {size} bytes")]
    BodyNotAddressable { len: usize, size: usize },
    /// A 4.13 asked for smaller blocks than the smallest (16 bytes) already in use.
    #[error("blocks are already 16 bytes, the smallest size")]
    CannotShrink,
    /// A 2.31 Continue acknowledged another block than the one sent.
    #[error("peer acknowledged block {acked}, but block {sent} was sent")]
    AckMismatch { sent: u32, acked: u32 },
    /// The block size differs from the one in use (or exceeds the one negotiated), outside
    /// the reduction this side asked for.
    #[error("block size exponent {got} where {expected} was expected")]
    SizeChanged { expected: u8, got: u8 },
    /// `expect_szx` asked for larger blocks: RFC 7959 only lets a transfer shrink them.
    #[error("cannot raise the block size exponent from {current} to {requested}")]
    SizeIncrease { current: u8, requested: u8 },
    /// A block arrived after a missing one.
    #[error("block {got} arrived where block {expected} was expected")]
    Gap { expected: u32, got: u32 },
    /// A block overlaps data already received but does not repeat it exactly.
    #[error("block {num} overlaps received data with different content")]
    Conflict { num: u32 },
    /// The body would exceed the configured limit.
    #[error("body of at least {length} bytes exceeds the {max_total}-byte limit")]
    TooLarge { max_total: usize, length: usize },
    /// The peer announced (Size1/Size2) a body larger than the configured limit.
    #[error("announced size {hint} exceeds the {max_total}-byte limit")]
    SizeHintTooLarge { max_total: usize, hint: u32 },
    /// The announced size disagrees with the bytes actually received.
    #[error("announced size {hint} disagrees with a body of {length} bytes")]
    SizeHintMismatch { hint: u32, length: usize },
    /// Two blocks announced different sizes.
    #[error("announced size changed from {first} to {now}")]
    SizeHintChanged { first: u32, now: u32 },
    /// The ETag differs from the first block's: the representation changed mid-transfer.
    #[error("ETag changed during the transfer")]
    EtagChanged,
    /// A block with the M bit set carries exactly one block size of payload.
    #[error("non-final block carries {got} bytes instead of {expected}")]
    NonFinalLength { expected: usize, got: usize },
    /// The final block carries at most one block size of payload.
    #[error("final block carries {got} bytes, more than the block size {max}")]
    FinalTooLong { max: usize, got: usize },
    /// A new block after the body was complete.
    #[error("the transfer is already complete")]
    AlreadyComplete,
}

impl BlockError {
    /// The CoAP response code (raw `class << 5 | detail`) a server answers with when this
    /// error refuses a request: 4.08 for a missing block, 4.13 for sizes over a limit (send a
    /// Block1 option with the wanted SZX, or Size1 with the limit, along with it), 4.02 for
    /// a malformed option, 4.00 otherwise. RFC 7959 names no code for a Block2 request past
    /// the end of the body; 4.00 is used.
    pub fn response_code(&self) -> u8 {
        match self {
            BlockError::OptionTooLong(_) => code::BAD_OPTION,
            BlockError::Gap { .. } => code::REQUEST_ENTITY_INCOMPLETE,
            BlockError::TooLarge { .. } | BlockError::SizeHintTooLarge { .. } => {
                code::REQUEST_ENTITY_TOO_LARGE
            }
            BlockError::SizeChanged { expected, got } if got > expected => {
                code::REQUEST_ENTITY_TOO_LARGE
            }
            _ => code::BAD_REQUEST,
        }
    }
}

/// The block size in bytes for an SZX: `16 << szx`, for SZX 0..=6.
pub fn block_size(szx: u8) -> Result<usize, BlockError> {
    if szx > MAX_SZX {
        return Err(BlockError::ReservedSzx(szx));
    }
    Ok(size_of(szx))
}

/// `16 << szx` for an SZX already checked to be at most [`MAX_SZX`].
fn size_of(szx: u8) -> usize {
    16usize << szx
}

/// Whether `len` bytes fit in 2^20 blocks of `16 << szx` bytes.
fn addressable(len: usize, szx: u8) -> Result<(), BlockError> {
    let size = size_of(szx);
    if len as u64 > (u64::from(MAX_NUM) + 1) * size as u64 {
        return Err(BlockError::BodyNotAddressable { len, size });
    }
    Ok(())
}

/// The largest SZX whose block, plus `overhead` bytes of header, options and token, fits a
/// message buffer of `buffer_size` bytes; 0 (16-byte blocks) if none does, since no smaller
/// block exists.
pub fn szx_for_buffer(buffer_size: usize, overhead: usize) -> u8 {
    (0..=MAX_SZX)
        .rev()
        .find(|&szx| overhead.saturating_add(size_of(szx)) <= buffer_size)
        .unwrap_or(0)
}

/// The value of a Block1 or Block2 option (RFC 7959 §2.2): block number, "more blocks
/// follow" bit and size exponent. Values built with [`BlockOption::new`] or
/// [`BlockOption::decode`], or handed out by [`BlockSender`] and [`Reassembler`], are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockOption {
    /// NUM: the block's index in units of the block size.
    pub num: u32,
    /// M: in a Block2 response or Block1 request, more blocks follow; in a 2.31 Continue's
    /// Block1, the server is still collecting blocks. Zero in Block2 requests.
    pub more: bool,
    /// SZX: the block size is `16 << szx` bytes.
    pub szx: u8,
}

impl BlockOption {
    /// A checked option: NUM within 20 bits, SZX within 0..=6.
    pub fn new(num: u32, more: bool, szx: u8) -> Result<Self, BlockError> {
        let opt = BlockOption { num, more, szx };
        opt.validate()?;
        Ok(opt)
    }

    /// Checks NUM and SZX are in range.
    pub fn validate(&self) -> Result<(), BlockError> {
        if self.szx > MAX_SZX {
            return Err(BlockError::ReservedSzx(self.szx));
        }
        if self.num > MAX_NUM {
            return Err(BlockError::NumTooLarge(self.num));
        }
        Ok(())
    }

    /// The block size in bytes, `16 << szx`.
    pub fn size(&self) -> Result<usize, BlockError> {
        block_size(self.szx)
    }

    /// The byte offset of the block's first byte in the body, `num * size`.
    pub fn offset(&self) -> Result<usize, BlockError> {
        self.validate()?;
        Ok(self.num as usize * size_of(self.szx))
    }

    /// The option value as an unsigned integer `NUM << 4 | M << 3 | SZX` in as few bytes as
    /// possible (0 to 3; the value 0 is the empty option). An invalid option never encodes
    /// as a different valid one: an SZX above 6 goes out as the reserved 7 and a NUM beyond
    /// 20 bits makes the value longer than 3 bytes, both of which the peer refuses.
    pub fn encode(&self) -> Vec<u8> {
        let value =
            (u64::from(self.num) << 4) | (u64::from(self.more) << 3) | u64::from(self.szx.min(7));
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    /// Parses an option value. Leading zero bytes are accepted (RFC 7252 §3.2); more than
    /// 3 bytes and the reserved SZX 7 are refused. Three bytes leave 20 bits for NUM, so
    /// NUM is always in range.
    pub fn decode(bytes: &[u8]) -> Result<Self, BlockError> {
        if bytes.len() > 3 {
            return Err(BlockError::OptionTooLong(bytes.len()));
        }
        let value = bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        BlockOption::new(value >> 4, value & 0x8 != 0, (value & 0x7) as u8)
    }
}

/// A body to send block by block: as Block2 responses when serving a large representation,
/// or as Block1 requests when sending a large request body. It holds the body and the block
/// size in use, which only ever shrinks (RFC 7959 §2.3, §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSender {
    body: Vec<u8>,
    szx: u8,
}

impl BlockSender {
    /// Starts sending `body` in blocks of `16 << szx` bytes.
    pub fn new(body: Vec<u8>, szx: u8) -> Result<Self, BlockError> {
        block_size(szx)?;
        addressable(body.len(), szx)?;
        Ok(BlockSender { body, szx })
    }

    /// The size exponent in use.
    pub fn szx(&self) -> u8 {
        self.szx
    }

    /// The whole body's length, for a Size1 (requests) or Size2 (responses) option.
    pub fn total_len(&self) -> usize {
        self.body.len()
    }

    /// The whole body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// How many blocks the body takes at the current size; an empty body is one empty block.
    pub fn block_count(&self) -> u32 {
        let size = size_of(self.szx);
        // At most MAX_NUM + 1: the body is addressable at the current size.
        self.body.len().div_ceil(size).max(1) as u32
    }

    /// Block `num` at the current size and its payload; the option's M bit says whether
    /// another block follows. `None` past the last block.
    pub fn block(&self, num: u32) -> Option<(BlockOption, &[u8])> {
        if num > MAX_NUM {
            return None;
        }
        let size = size_of(self.szx);
        let start = (num as usize).checked_mul(size)?;
        if start >= self.body.len() && num != 0 {
            return None;
        }
        let end = start.saturating_add(size).min(self.body.len());
        let opt = BlockOption {
            num,
            more: end < self.body.len(),
            szx: self.szx,
        };
        Some((opt, &self.body[start..end]))
    }

    /// Switches to smaller blocks, as a peer asked (late negotiation, RFC 7959 §2.3, §2.4),
    /// and renumbers: `next_num` is the number, at the current size, of the next block to
    /// send; the result is the number of the block starting at the same byte at the new
    /// size, so nothing is skipped or sent twice. Asking for the same or a larger size
    /// changes nothing (a sender never grows its blocks).
    pub fn reduce_size(&mut self, new_szx: u8, next_num: u32) -> Result<u32, BlockError> {
        block_size(new_szx)?;
        if next_num > self.block_count() {
            return Err(BlockError::OutOfRange {
                num: next_num,
                size: size_of(self.szx),
                len: self.body.len(),
            });
        }
        if new_szx >= self.szx {
            return Ok(next_num);
        }
        addressable(self.body.len(), new_szx)?;
        let renumbered = next_num << (self.szx - new_szx);
        self.szx = new_szx;
        Ok(renumbered)
    }

    /// Serving Block2: the block that answers a request carrying `requested` (its Block2
    /// option, or `None` for a request without one). The request's NUM counts in the
    /// request's SZX; a smaller SZX than ours is a late (or early) negotiation and becomes
    /// the size from now on, a larger one is answered at ours (RFC 7959 §2.4: the server
    /// uses the size asked for or a smaller one). The request's M bit is ignored.
    pub fn serve(
        &mut self,
        requested: Option<BlockOption>,
    ) -> Result<(BlockOption, &[u8]), BlockError> {
        let Some(req) = requested else {
            return self.block_or_range_error(0);
        };
        let offset = req.offset()?;
        if offset >= self.body.len() && offset != 0 {
            return Err(BlockError::OutOfRange {
                num: req.num,
                size: size_of(req.szx),
                len: self.body.len(),
            });
        }
        self.shrink_to(req.szx)?;
        // Below 2^20: the body is addressable at the (possibly new) size.
        self.block_or_range_error((offset / size_of(self.szx)) as u32)
    }

    /// Sending Block1: the next block after a 2.31 Continue. `sent` is the Block1 option of
    /// the request that got it, `ack` the response's Block1 option; an `ack` with a smaller
    /// SZX is the server asking for smaller blocks, which apply from the next block on
    /// (RFC 7959 §2.3, Figure 8). `None` when the body has been sent in full.
    pub fn next_after_continue(
        &mut self,
        sent: BlockOption,
        ack: BlockOption,
    ) -> Result<Option<(BlockOption, &[u8])>, BlockError> {
        let sent_offset = self.check_sent(sent)?;
        ack.validate()?;
        // RFC 7959 echoes the NUM sent; a server that rescaled it to its own SZX points at
        // the same byte, which is accepted too.
        if ack.num != sent.num && ack.offset()? != sent_offset {
            return Err(BlockError::AckMismatch {
                sent: sent.num,
                acked: ack.num,
            });
        }
        let next_offset = sent_offset + size_of(sent.szx);
        if !sent.more || next_offset >= self.body.len() {
            return Ok(None);
        }
        self.shrink_to(ack.szx)?;
        let num = (next_offset / size_of(self.szx)) as u32;
        Ok(self.block(num))
    }

    /// Sending Block1: the block to resend after a 4.13 Request Entity Too Large for `sent`,
    /// at the SZX the response's Block1 option suggested if it is smaller, otherwise at
    /// half the current size. The same bytes are resent, renumbered.
    pub fn retry_smaller(
        &mut self,
        sent: BlockOption,
        suggested_szx: Option<u8>,
    ) -> Result<(BlockOption, &[u8]), BlockError> {
        let sent_offset = self.check_sent(sent)?;
        if self.szx == 0 {
            return Err(BlockError::CannotShrink);
        }
        let new_szx = match suggested_szx {
            Some(s) if s < self.szx => s,
            _ => self.szx - 1,
        };
        self.shrink_to(new_szx)?;
        self.block_or_range_error((sent_offset / size_of(self.szx)) as u32)
    }

    /// A block this sender handed out at its current size: its byte offset.
    fn check_sent(&self, sent: BlockOption) -> Result<usize, BlockError> {
        sent.validate()?;
        if sent.szx != self.szx {
            return Err(BlockError::SizeChanged {
                expected: self.szx,
                got: sent.szx,
            });
        }
        if sent.num >= self.block_count() {
            return Err(BlockError::OutOfRange {
                num: sent.num,
                size: size_of(sent.szx),
                len: self.body.len(),
            });
        }
        sent.offset()
    }

    /// Shrinks the block size to `szx` if that is smaller; never grows it.
    fn shrink_to(&mut self, szx: u8) -> Result<(), BlockError> {
        block_size(szx)?;
        if szx < self.szx {
            addressable(self.body.len(), szx)?;
            self.szx = szx;
        }
        Ok(())
    }

    fn block_or_range_error(&self, num: u32) -> Result<(BlockOption, &[u8]), BlockError> {
        self.block(num).ok_or(BlockError::OutOfRange {
            num,
            size: size_of(self.szx),
            len: self.body.len(),
        })
    }
}

/// What a [`Reassembler`] needs after accepting a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More blocks follow. `next` is the block expected next, M bit clear: as a Block2
    /// client, put it in the next request as it is; as a Block1 server, answer 2.31
    /// Continue with [`Reassembler::block1_ack`] of the block received.
    NeedMore { next: BlockOption },
    /// An exact repeat of data already accepted (CoAP duplicates messages): nothing
    /// changed. A Block2 client sends nothing new; a Block1 server repeats its answer.
    Duplicate,
    /// The final block arrived; the whole body.
    Complete(Vec<u8>),
}

/// Where a [`Reassembler`] is in its transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No block accepted yet; the first may be at most `cap` (early negotiation).
    Idle { cap: u8 },
    /// Blocks of `szx` accepted so far; `reduced_to` is a smaller size this side asked for,
    /// which the next block may use (or anything smaller, RFC 7959 §2.3, §2.4).
    Receiving { szx: u8, reduced_to: Option<u8> },
    /// The final block arrived; kept to recognise its duplicates.
    Complete {
        last: BlockOption,
        last_payload: Vec<u8>,
    },
}

/// Collects a body sent block by block: Block2 responses as a client, Block1 requests as a
/// server. Every block is checked against the ones before it (see [`BlockError`]), the body
/// never grows past `max_total`, and a refused block leaves the state unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembler {
    max_total: usize,
    state: State,
    body: Vec<u8>,
    /// Bit `szx` is set once a block of that size was accepted, so late duplicates from
    /// before a size reduction are still recognised.
    sizes_seen: u8,
    /// The first block's ETag, which every later block must repeat.
    etag: Option<Vec<u8>>,
    /// The first Size1/Size2 announced.
    size_hint: Option<u32>,
}

impl Reassembler {
    /// An empty reassembler accepting bodies of up to `max_total` bytes.
    pub fn new(max_total: usize) -> Self {
        Reassembler {
            max_total,
            state: State::Idle { cap: MAX_SZX },
            body: Vec::new(),
            sizes_seen: 0,
            etag: None,
            size_hint: None,
        }
    }

    /// The body limit.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Bytes accepted so far (0 once complete: the body was handed out).
    pub fn received_len(&self) -> usize {
        self.body.len()
    }

    /// Whether the final block was accepted.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete { .. })
    }

    /// Forgets the transfer (e.g. a Block1 server seeing a new block 0 after a refusal).
    pub fn reset(&mut self) {
        *self = Reassembler::new(self.max_total);
    }

    /// Early negotiation (RFC 7959 §2.4) for a Block2 client: the Block2 option of the
    /// first request, asking for blocks of at most `16 << szx` bytes; the first response
    /// may use that size or a smaller one, never a larger one. Call it before the first
    /// block; afterwards it is [`Reassembler::expect_szx`].
    pub fn first_request_block(&mut self, szx: u8) -> Result<BlockOption, BlockError> {
        self.expect_szx(szx)
    }

    /// Asks for smaller blocks from the next one on: the one size change RFC 7959 allows
    /// mid-transfer, initiated by the receiver (a Block2 client's next request, or a Block1
    /// server's 2.31 Continue through [`Reassembler::block1_ack`]). The next block may use
    /// `szx` or a smaller size; the result is the block expected next, renumbered to `szx`.
    /// Raising the size is refused.
    pub fn expect_szx(&mut self, szx: u8) -> Result<BlockOption, BlockError> {
        block_size(szx)?;
        match &mut self.state {
            State::Complete { .. } => return Err(BlockError::AlreadyComplete),
            State::Idle { cap } => {
                if szx > *cap {
                    return Err(BlockError::SizeIncrease {
                        current: *cap,
                        requested: szx,
                    });
                }
                *cap = szx;
            }
            State::Receiving {
                szx: current,
                reduced_to,
            } => {
                let limit = reduced_to.unwrap_or(*current);
                if szx > limit {
                    return Err(BlockError::SizeIncrease {
                        current: limit,
                        requested: szx,
                    });
                }
                if szx < *current {
                    *reduced_to = Some(szx);
                }
            }
        }
        self.next().ok_or(BlockError::AlreadyComplete)
    }

    /// The block expected next, M bit clear; `None` once complete.
    pub fn next(&self) -> Option<BlockOption> {
        let szx = match self.state {
            State::Idle { cap } => cap,
            State::Receiving { szx, reduced_to } => reduced_to.unwrap_or(szx),
            State::Complete { .. } => return None,
        };
        Some(BlockOption {
            num: (self.body.len() / size_of(szx)) as u32,
            more: false,
            szx,
        })
    }

    /// Serving Block1: the Block1 option answering the request that carried `received`
    /// (RFC 7959 §2.3): its NUM and M bit echoed, with the SZX this side wants from now
    /// on. Goes in a 2.31 Continue after a non-final block, in the final response after
    /// the last one, and in a 4.13 when the first block was larger than wanted.
    pub fn block1_ack(&self, received: BlockOption) -> BlockOption {
        let szx = match self.state {
            State::Idle { cap } => cap.min(received.szx),
            State::Receiving { szx, reduced_to } if received.more => reduced_to.unwrap_or(szx),
            _ => received.szx,
        };
        BlockOption {
            num: received.num,
            more: received.more,
            szx,
        }
    }

    /// Accepts one block: its Block option, payload, ETag (Block2; `None` for Block1) and
    /// announced total size (Size2 in responses, Size1 in requests), if any.
    pub fn push(
        &mut self,
        block: BlockOption,
        payload: &[u8],
        etag: Option<&[u8]>,
        size_hint: Option<u32>,
    ) -> Result<Progress, BlockError> {
        block.validate()?;
        let size = size_of(block.szx);
        if !matches!(self.state, State::Idle { .. }) && self.etag.as_deref() != etag {
            return Err(BlockError::EtagChanged);
        }
        if block.more && payload.len() != size {
            return Err(BlockError::NonFinalLength {
                expected: size,
                got: payload.len(),
            });
        }
        if !block.more && payload.len() > size {
            return Err(BlockError::FinalTooLong {
                max: size,
                got: payload.len(),
            });
        }
        if let Some(hint) = size_hint {
            if hint as usize > self.max_total {
                return Err(BlockError::SizeHintTooLarge {
                    max_total: self.max_total,
                    hint,
                });
            }
            if let Some(first) = self.size_hint.filter(|first| *first != hint) {
                return Err(BlockError::SizeHintChanged { first, now: hint });
            }
        }
        // The size the block must have (`exact`) or not exceed.
        let (limit, exact) = match &self.state {
            State::Complete { last, last_payload } => {
                return if *last == block && last_payload.as_slice() == payload {
                    Ok(Progress::Duplicate)
                } else {
                    Err(BlockError::AlreadyComplete)
                };
            }
            State::Idle { cap } => (*cap, false),
            State::Receiving {
                szx,
                reduced_to: None,
            } => (*szx, true),
            State::Receiving {
                reduced_to: Some(r),
                ..
            } => (*r, false),
        };

        let start = block.num as usize * size;
        if self.sizes_seen & (1 << block.szx) != 0 && start < self.body.len() {
            let end = start + payload.len();
            return if block.more && end <= self.body.len() && self.body[start..end] == *payload {
                Ok(Progress::Duplicate)
            } else {
                Err(BlockError::Conflict { num: block.num })
            };
        }

        if (exact && block.szx != limit) || block.szx > limit {
            return Err(BlockError::SizeChanged {
                expected: limit,
                got: block.szx,
            });
        }
        // Every accepted block but the last is full, so the length is a multiple of every
        // size still acceptable.
        let expected = (self.body.len() / size) as u32;
        if block.num != expected {
            return Err(if block.num > expected {
                BlockError::Gap {
                    expected,
                    got: block.num,
                }
            } else {
                BlockError::Conflict { num: block.num }
            });
        }

        let length = self.body.len() + payload.len();
        if length > self.max_total {
            return Err(BlockError::TooLarge {
                max_total: self.max_total,
                length,
            });
        }
        if let Some(hint) = size_hint.or(self.size_hint) {
            if length > hint as usize || (!block.more && length != hint as usize) {
                return Err(BlockError::SizeHintMismatch { hint, length });
            }
        }

        if matches!(self.state, State::Idle { .. }) {
            self.etag = etag.map(<[u8]>::to_vec);
        }
        self.size_hint = self.size_hint.or(size_hint);
        self.sizes_seen |= 1 << block.szx;
        self.body.extend_from_slice(payload);
        if block.more {
            self.state = State::Receiving {
                szx: block.szx,
                reduced_to: None,
            };
            Ok(Progress::NeedMore {
                next: BlockOption {
                    num: block.num + 1,
                    more: false,
                    szx: block.szx,
                },
            })
        } else {
            self.state = State::Complete {
                last: block,
                last_payload: payload.to_vec(),
            };
            Ok(Progress::Complete(core::mem::take(&mut self.body)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(num: u32, more: bool, szx: u8) -> BlockOption {
        BlockOption { num, more, szx }
    }

    /// Deterministic bytes (a 64-bit LCG), so tests need no extra crates.
    struct Lcg(u64);

    impl Lcg {
        fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next_u32() as u8).collect()
        }
    }

    fn body(n: usize) -> Vec<u8> {
        Lcg(n as u64).bytes(n)
    }

    /// Sends `body` as Block2 at `szx` and reassembles it as a client would, asking for
    /// each next block with the option the reassembler hands out.
    fn block2_transfer(body: &[u8], szx: u8) -> Vec<u8> {
        let mut server = BlockSender::new(body.to_vec(), szx).unwrap();
        let mut client = Reassembler::new(64 * 1024);
        let mut request = None;
        loop {
            let total = server.total_len() as u32;
            let (block, payload) = server.serve(request).unwrap();
            let payload = payload.to_vec();
            match client
                .push(block, &payload, Some(b"v1"), Some(total))
                .unwrap()
            {
                Progress::NeedMore { next } => request = Some(next),
                Progress::Complete(done) => return done,
                Progress::Duplicate => panic!("no duplicate was sent"),
            }
        }
    }

    #[test]
    fn option_round_trips_for_every_szx_and_edge_num() {
        for szx in 0..=MAX_SZX {
            for num in [0, 1, 15, 16, 4095, 4096, MAX_NUM] {
                for more in [false, true] {
                    let o = BlockOption::new(num, more, szx).unwrap();
                    let bytes = o.encode();
                    assert!(bytes.len() <= 3);
                    assert_eq!(BlockOption::decode(&bytes), Ok(o), "{o:?}");
                }
            }
        }
    }

    #[test]
    fn option_bytes_follow_rfc7959_layout() {
        // NUM << 4 | M << 3 | SZX, minimal big-endian unsigned integer.
        assert_eq!(opt(0, false, 0).encode(), Vec::<u8>::new());
        assert_eq!(opt(0, false, 6).encode(), vec![0x06]);
        assert_eq!(opt(0, true, 6).encode(), vec![0x0E]);
        assert_eq!(opt(1, false, 2).encode(), vec![0x12]);
        assert_eq!(opt(15, true, 2).encode(), vec![0xFA]);
        assert_eq!(opt(16, false, 2).encode(), vec![0x01, 0x02]);
        assert_eq!(opt(4095, true, 6).encode(), vec![0xFF, 0xFE]);
        assert_eq!(opt(4096, false, 0).encode(), vec![0x01, 0x00, 0x00]);
        assert_eq!(opt(MAX_NUM, true, 6).encode(), vec![0xFF, 0xFF, 0xFE]);
        assert_eq!(BlockOption::decode(&[]), Ok(opt(0, false, 0)));
        assert_eq!(BlockOption::decode(&[0x0E]), Ok(opt(0, true, 6)));
        // Leading zero bytes are legal on the wire (RFC 7252 §3.2).
        assert_eq!(
            BlockOption::decode(&[0x00, 0x00, 0x12]),
            Ok(opt(1, false, 2))
        );
    }

    #[test]
    fn invalid_option_values_are_refused() {
        assert_eq!(
            BlockOption::decode(&[0, 0, 0, 0x16]),
            Err(BlockError::OptionTooLong(4))
        );
        assert_eq!(
            BlockOption::decode(&[0x0F]),
            Err(BlockError::ReservedSzx(7))
        );
        assert_eq!(
            BlockOption::new(MAX_NUM + 1, false, 0),
            Err(BlockError::NumTooLarge(MAX_NUM + 1))
        );
        assert_eq!(
            BlockOption::new(0, false, 7),
            Err(BlockError::ReservedSzx(7))
        );
        assert_eq!(opt(0, false, 7).size(), Err(BlockError::ReservedSzx(7)));
        // An invalid option is never sent as a different valid one.
        assert_eq!(
            BlockOption::decode(&opt(MAX_NUM + 1, false, 0).encode()),
            Err(BlockError::OptionTooLong(4))
        );
        assert_eq!(
            BlockOption::decode(&opt(3, false, 9).encode()),
            Err(BlockError::ReservedSzx(7))
        );
    }

    #[test]
    fn block_sizes_and_buffer_fit() {
        let sizes: Vec<usize> = (0..=6).map(|s| block_size(s).unwrap()).collect();
        assert_eq!(sizes, [16, 32, 64, 128, 256, 512, 1024]);
        assert_eq!(opt(3, false, 4).offset(), Ok(768));
        assert_eq!(szx_for_buffer(1152, 64), 6);
        assert_eq!(szx_for_buffer(1088, 64), 6);
        assert_eq!(szx_for_buffer(1087, 64), 5);
        assert_eq!(szx_for_buffer(300, 40), 4);
        assert_eq!(szx_for_buffer(10, 0), 0);
        assert_eq!(szx_for_buffer(0, usize::MAX), 0);
        assert_eq!(szx_for_buffer(usize::MAX, 0), 6);
    }

    #[test]
    fn sender_splits_at_block_boundaries() {
        let data = body(100);
        let s = BlockSender::new(data.clone(), 1).unwrap();
        assert_eq!(s.block_count(), 4);
        assert_eq!(s.total_len(), 100);
        let (o, p) = s.block(0).unwrap();
        assert_eq!((o, p), (opt(0, true, 1), &data[..32]));
        let (o, p) = s.block(3).unwrap();
        assert_eq!((o, p), (opt(3, false, 1), &data[96..]));
        assert_eq!(s.block(4), None);
        assert_eq!(s.block(u32::MAX), None);

        let exact = BlockSender::new(body(64), 1).unwrap();
        assert_eq!(exact.block(1).unwrap().0, opt(1, false, 1));
        assert_eq!(exact.block(2), None);

        let empty = BlockSender::new(Vec::new(), 6).unwrap();
        assert_eq!(empty.block_count(), 1);
        assert_eq!(empty.block(0), Some((opt(0, false, 6), &[][..])));
        assert_eq!(empty.block(1), None);

        assert_eq!(
            BlockSender::new(Vec::new(), 7),
            Err(BlockError::ReservedSzx(7))
        );
    }

    #[test]
    fn body_of_16_kib_round_trips_at_every_size() {
        let data = body(16 * 1024);
        for szx in 0..=MAX_SZX {
            assert_eq!(block2_transfer(&data, szx), data, "szx {szx}");
        }
        // A body that does not end on a block boundary, and an empty one.
        let odd = body(16 * 1024 - 7);
        assert_eq!(block2_transfer(&odd, 4), odd);
        assert_eq!(block2_transfer(&[], 6), Vec::<u8>::new());
    }

    #[test]
    fn block1_round_trip_through_continue() {
        let data = body(16 * 1024 + 5);
        for szx in 0..=MAX_SZX {
            let mut client = BlockSender::new(data.clone(), szx).unwrap();
            let mut server = Reassembler::new(32 * 1024);
            let mut sent = client.block(0).map(|(o, p)| (o, p.to_vec()));
            let mut done = None;
            while let Some((o, p)) = sent.take() {
                let hint = (o.num == 0).then_some(client.total_len() as u32);
                match server.push(o, &p, None, hint).unwrap() {
                    Progress::NeedMore { .. } => {
                        let ack = server.block1_ack(o);
                        assert_eq!(ack, opt(o.num, true, szx));
                        sent = client
                            .next_after_continue(o, ack)
                            .unwrap()
                            .map(|(o, p)| (o, p.to_vec()));
                    }
                    Progress::Complete(b) => {
                        assert_eq!(server.block1_ack(o), opt(o.num, false, szx));
                        done = Some(b);
                    }
                    Progress::Duplicate => unreachable!(),
                }
            }
            assert_eq!(done.as_deref(), Some(&data[..]), "szx {szx}");
        }
    }

    #[test]
    fn block2_late_reduction_1024_to_256_reassembles_exactly() {
        let data = body(16 * 1024 + 100);
        let mut server = BlockSender::new(data.clone(), 6).unwrap();
        let mut client = Reassembler::new(64 * 1024);
        let (b0, p0) = server.serve(None).unwrap();
        assert_eq!(b0, opt(0, true, 6));
        let p0 = p0.to_vec();
        assert!(matches!(
            client.push(b0, &p0, None, None),
            Ok(Progress::NeedMore { .. })
        ));
        // 1024 bytes received: the next block at 256 bytes is number 4 (RFC 7959 Figure 5).
        let mut next = client.expect_szx(4).unwrap();
        assert_eq!(next, opt(4, false, 4));
        loop {
            let (b, p) = server.serve(Some(next)).unwrap();
            assert_eq!(b.szx, 4);
            let p = p.to_vec();
            match client.push(b, &p, None, None).unwrap() {
                Progress::NeedMore { next: n } => next = n,
                Progress::Complete(got) => {
                    assert_eq!(got, data);
                    break;
                }
                Progress::Duplicate => unreachable!(),
            }
        }
        assert_eq!(server.szx(), 4);
    }

    #[test]
    fn block1_server_reduction_1024_to_256_reassembles_exactly() {
        let data = body(5000);
        let mut client = BlockSender::new(data.clone(), 6).unwrap();
        let mut server = Reassembler::new(8192);
        let (o, p) = client.block(0).unwrap();
        let p = p.to_vec();
        server.push(o, &p, None, None).unwrap();
        assert_eq!(server.expect_szx(4), Ok(opt(4, false, 4)));
        // 2.31 Continue echoes NUM 0 with the smaller SZX (RFC 7959 Figure 8).
        let ack = server.block1_ack(o);
        assert_eq!(ack, opt(0, true, 4));
        let mut sent = client.next_after_continue(o, ack).unwrap();
        assert_eq!(sent.map(|(o, _)| o), Some(opt(4, true, 4)));
        loop {
            let (o, p) = sent.map(|(o, p)| (o, p.to_vec())).unwrap();
            match server.push(o, &p, None, None).unwrap() {
                Progress::NeedMore { next } => {
                    assert_eq!(next, opt(o.num + 1, false, 4));
                    let ack = server.block1_ack(o);
                    sent = client.next_after_continue(o, ack).unwrap();
                }
                Progress::Complete(got) => {
                    assert_eq!(got, data);
                    assert_eq!(client.next_after_continue(o, o).unwrap(), None);
                    break;
                }
                Progress::Duplicate => unreachable!(),
            }
        }
    }

    #[test]
    fn sender_renumbers_on_reduction_and_retry() {
        let data = body(5000);
        let mut s = BlockSender::new(data.clone(), 6).unwrap();
        // Next block was 3 at 1024 bytes: byte 3072 is block 12 at 256 bytes.
        assert_eq!(s.reduce_size(4, 3), Ok(12));
        assert_eq!(s.block(12).unwrap().1, &data[3072..3328]);
        // Never grows.
        assert_eq!(s.reduce_size(5, 12), Ok(12));
        assert_eq!(s.szx(), 4);
        assert_eq!(s.reduce_size(7, 0), Err(BlockError::ReservedSzx(7)));
        assert!(matches!(
            s.reduce_size(3, 100),
            Err(BlockError::OutOfRange { num: 100, .. })
        ));

        // 4.13 for block 3 at 256 bytes with a suggested 64: resend byte 768 as block 12.
        let (o, p) = s.retry_smaller(opt(3, true, 4), Some(2)).unwrap();
        assert_eq!((o, p), (opt(12, true, 2), &data[768..832]));
        // No (or no smaller) suggestion halves the size.
        let (o, _) = s.retry_smaller(opt(12, true, 2), Some(5)).unwrap();
        assert_eq!(o, opt(24, true, 1));
        let (o, _) = s.retry_smaller(opt(24, true, 1), None).unwrap();
        assert_eq!(o, opt(48, true, 0));
        assert_eq!(
            s.retry_smaller(opt(48, true, 0), None),
            Err(BlockError::CannotShrink)
        );
        // A block not sent at the current size is refused rather than misread.
        assert_eq!(
            s.next_after_continue(opt(1, true, 3), opt(1, true, 3)),
            Err(BlockError::SizeChanged {
                expected: 0,
                got: 3
            })
        );
        assert_eq!(
            s.next_after_continue(opt(1, true, 0), opt(2, true, 0)),
            Err(BlockError::AckMismatch { sent: 1, acked: 2 })
        );
    }

    #[test]
    fn serve_honours_request_size_and_range() {
        let data = body(3000);
        let mut s = BlockSender::new(data.clone(), 5).unwrap();
        // A larger requested size is answered at ours, at the same byte offset.
        let (o, p) = s.serve(Some(opt(1, false, 6))).unwrap();
        assert_eq!((o, p), (opt(2, true, 5), &data[1024..1536]));
        // The request's M bit is ignored.
        assert_eq!(s.serve(Some(opt(1, true, 5))).unwrap().0, opt(1, true, 5));
        assert_eq!(
            s.serve(Some(opt(6, false, 5))),
            Err(BlockError::OutOfRange {
                num: 6,
                size: 512,
                len: 3000
            })
        );
        assert_eq!(
            s.serve(Some(opt(0, false, 7))),
            Err(BlockError::ReservedSzx(7))
        );
        // Early negotiation: block 0 at 64 bytes, and the size sticks.
        assert_eq!(s.serve(Some(opt(0, false, 2))).unwrap().0, opt(0, true, 2));
        assert_eq!(s.szx(), 2);
    }

    #[test]
    fn early_negotiation_caps_the_first_block() {
        let mut r = Reassembler::new(4096);
        assert_eq!(r.first_request_block(3), Ok(opt(0, false, 3)));
        // The server may answer with a smaller size ...
        let mut smaller = r.clone();
        assert_eq!(
            smaller.push(opt(0, true, 2), &[0; 64], None, None),
            Ok(Progress::NeedMore {
                next: opt(1, false, 2)
            })
        );
        // ... never a larger one.
        assert_eq!(
            r.push(opt(0, true, 4), &[0; 256], None, None),
            Err(BlockError::SizeChanged {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            r.expect_szx(4),
            Err(BlockError::SizeIncrease {
                current: 3,
                requested: 4
            })
        );
        // A Block1 server refusing an oversized first block answers 4.13 with its size.
        let e = r.push(opt(0, true, 4), &[0; 256], None, None).unwrap_err();
        assert_eq!(e.response_code(), code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(r.block1_ack(opt(0, true, 4)), opt(0, true, 3));
    }

    #[test]
    fn size_change_mid_transfer_is_refused_unless_requested() {
        let mut r = Reassembler::new(8192);
        r.push(opt(0, true, 6), &[1; 1024], None, None).unwrap();
        // Unrequested: smaller and larger both refused.
        assert_eq!(
            r.push(opt(2, true, 5), &[1; 512], None, None),
            Err(BlockError::SizeChanged {
                expected: 6,
                got: 5
            })
        );
        // Requested 256: a 512 block is still refused, 256 (or smaller) accepted.
        assert_eq!(r.expect_szx(4), Ok(opt(4, false, 4)));
        assert_eq!(
            r.push(opt(2, true, 5), &[1; 512], None, None),
            Err(BlockError::SizeChanged {
                expected: 4,
                got: 5
            })
        );
        assert_eq!(
            r.push(opt(4, true, 4), &[2; 256], None, None),
            Ok(Progress::NeedMore {
                next: opt(5, false, 4)
            })
        );
        // Now fixed at 256 again.
        assert_eq!(
            r.push(opt(10, true, 3), &[2; 128], None, None),
            Err(BlockError::SizeChanged {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            r.expect_szx(5),
            Err(BlockError::SizeIncrease {
                current: 4,
                requested: 5
            })
        );
    }

    #[test]
    fn gaps_are_refused() {
        let mut r = Reassembler::new(4096);
        assert_eq!(
            r.push(opt(1, true, 4), &[0; 256], None, None),
            Err(BlockError::Gap {
                expected: 0,
                got: 1
            })
        );
        r.push(opt(0, true, 4), &[0; 256], None, None).unwrap();
        let e = r.push(opt(2, true, 4), &[0; 256], None, None).unwrap_err();
        assert_eq!(
            e,
            BlockError::Gap {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(e.response_code(), code::REQUEST_ENTITY_INCOMPLETE);
        // The refusal changed nothing: block 1 is still the one expected.
        assert_eq!(r.next(), Some(opt(1, false, 4)));
        assert!(matches!(
            r.push(opt(1, false, 4), &[0; 10], None, None),
            Ok(Progress::Complete(b)) if b.len() == 266
        ));
    }

    #[test]
    fn repeats_with_different_content_are_refused() {
        let mut r = Reassembler::new(4096);
        r.push(opt(0, true, 4), &[1; 256], None, None).unwrap();
        r.push(opt(1, true, 4), &[2; 256], None, None).unwrap();
        assert_eq!(
            r.push(opt(1, true, 4), &[9; 256], None, None),
            Err(BlockError::Conflict { num: 1 })
        );
        assert_eq!(
            r.push(opt(0, true, 4), &[9; 256], None, None),
            Err(BlockError::Conflict { num: 0 })
        );
        // Same bytes, but claiming the body ends there.
        assert_eq!(
            r.push(opt(1, false, 4), &[2; 256], None, None),
            Err(BlockError::Conflict { num: 1 })
        );
        // Overlapping at a size seen before a reduction.
        r.expect_szx(3).unwrap();
        r.push(opt(4, true, 3), &[3; 128], None, None).unwrap();
        assert_eq!(
            r.push(opt(1, true, 4), &[2; 256], None, None),
            Ok(Progress::Duplicate)
        );
        assert_eq!(
            r.push(opt(2, true, 4), &[3; 256], None, None),
            Err(BlockError::Conflict { num: 2 })
        );
    }

    #[test]
    fn exact_duplicates_are_tolerated() {
        let data = body(700);
        let s = BlockSender::new(data.clone(), 4).unwrap();
        let mut r = Reassembler::new(4096);
        let mut got = None;
        for num in 0..s.block_count() {
            let (o, p) = s.block(num).unwrap();
            let first = r.push(o, p, Some(b"e"), None).unwrap();
            assert_eq!(r.push(o, p, Some(b"e"), None), Ok(Progress::Duplicate));
            if let Progress::Complete(b) = first {
                got = Some(b);
            } else if num > 0 {
                // An older block arriving late.
                let (o0, p0) = s.block(0).unwrap();
                assert_eq!(r.push(o0, p0, Some(b"e"), None), Ok(Progress::Duplicate));
            }
        }
        assert_eq!(got, Some(data));
        // A repeat of the final block after completion is still a duplicate; anything
        // else is refused.
        let (o, p) = s.block(2).unwrap();
        assert_eq!(r.push(o, p, Some(b"e"), None), Ok(Progress::Duplicate));
        let (o, p) = s.block(1).unwrap();
        assert_eq!(
            r.push(o, p, Some(b"e"), None),
            Err(BlockError::AlreadyComplete)
        );
        assert_eq!(r.expect_szx(2), Err(BlockError::AlreadyComplete));
        assert_eq!(r.next(), None);
        r.reset();
        assert_eq!(r.next(), Some(opt(0, false, 6)));
    }

    #[test]
    fn limits_on_total_and_announced_size() {
        let mut r = Reassembler::new(1000);
        r.push(opt(0, true, 4), &[0; 256], None, None).unwrap();
        r.push(opt(1, true, 4), &[0; 256], None, None).unwrap();
        r.push(opt(2, true, 4), &[0; 256], None, None).unwrap();
        let e = r.push(opt(3, true, 4), &[0; 256], None, None).unwrap_err();
        assert_eq!(
            e,
            BlockError::TooLarge {
                max_total: 1000,
                length: 1024
            }
        );
        assert_eq!(e.response_code(), code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(
            r.push(opt(3, false, 4), &[0; 233], None, None),
            Err(BlockError::TooLarge {
                max_total: 1000,
                length: 1001
            })
        );
        assert!(matches!(
            r.push(opt(3, false, 4), &[0; 232], None, None),
            Ok(Progress::Complete(b)) if b.len() == 1000
        ));

        let mut r = Reassembler::new(1000);
        assert_eq!(
            r.push(opt(0, true, 4), &[0; 256], None, Some(1001)),
            Err(BlockError::SizeHintTooLarge {
                max_total: 1000,
                hint: 1001
            })
        );
    }

    #[test]
    fn announced_size_must_match_the_body() {
        let mut r = Reassembler::new(4096);
        r.push(opt(0, true, 4), &[0; 256], None, Some(600)).unwrap();
        assert_eq!(
            r.push(opt(1, true, 4), &[0; 256], None, Some(700)),
            Err(BlockError::SizeHintChanged {
                first: 600,
                now: 700
            })
        );
        // The final block ends short of the announced size.
        assert_eq!(
            r.push(opt(1, false, 4), &[0; 100], None, None),
            Err(BlockError::SizeHintMismatch {
                hint: 600,
                length: 356
            })
        );
        r.push(opt(1, true, 4), &[0; 256], None, None).unwrap();
        // Already 512 bytes: a non-final block would pass the announced 600.
        assert_eq!(
            r.push(opt(2, true, 4), &[0; 256], None, None),
            Err(BlockError::SizeHintMismatch {
                hint: 600,
                length: 768
            })
        );
        assert!(matches!(
            r.push(opt(2, false, 4), &[0; 88], None, Some(600)),
            Ok(Progress::Complete(b)) if b.len() == 600
        ));
    }

    #[test]
    fn etag_must_not_change() {
        let mut r = Reassembler::new(4096);
        r.push(opt(0, true, 4), &[0; 256], Some(b"a"), None)
            .unwrap();
        assert_eq!(
            r.push(opt(1, true, 4), &[0; 256], Some(b"b"), None),
            Err(BlockError::EtagChanged)
        );
        assert_eq!(
            r.push(opt(1, true, 4), &[0; 256], None, None),
            Err(BlockError::EtagChanged)
        );
        let mut r = Reassembler::new(4096);
        r.push(opt(0, true, 4), &[0; 256], None, None).unwrap();
        assert_eq!(
            r.push(opt(1, false, 4), &[0; 3], Some(b"a"), None),
            Err(BlockError::EtagChanged)
        );
    }

    #[test]
    fn block_lengths_must_match_the_size() {
        let mut r = Reassembler::new(4096);
        assert_eq!(
            r.push(opt(0, true, 4), &[0; 255], None, None),
            Err(BlockError::NonFinalLength {
                expected: 256,
                got: 255
            })
        );
        assert_eq!(
            r.push(opt(0, true, 4), &[0; 257], None, None),
            Err(BlockError::NonFinalLength {
                expected: 256,
                got: 257
            })
        );
        assert_eq!(
            r.push(opt(0, false, 4), &[0; 257], None, None),
            Err(BlockError::FinalTooLong { max: 256, got: 257 })
        );
        assert_eq!(
            r.push(opt(0, false, 7), &[], None, None),
            Err(BlockError::ReservedSzx(7))
        );
        assert_eq!(
            r.push(opt(MAX_NUM + 1, false, 0), &[], None, None),
            Err(BlockError::NumTooLarge(MAX_NUM + 1))
        );
        // A final block may be short or full.
        assert_eq!(
            r.push(opt(0, false, 4), &[5; 256], None, None),
            Ok(Progress::Complete(vec![5; 256]))
        );
    }

    #[test]
    fn error_codes_for_servers() {
        assert_eq!(
            BlockError::OptionTooLong(4).response_code(),
            code::BAD_OPTION
        );
        assert_eq!(
            BlockError::ReservedSzx(7).response_code(),
            code::BAD_REQUEST
        );
        assert_eq!(
            BlockError::SizeHintTooLarge {
                max_total: 1,
                hint: 2
            }
            .response_code(),
            code::REQUEST_ENTITY_TOO_LARGE
        );
        assert_eq!(
            BlockError::Conflict { num: 0 }.response_code(),
            code::BAD_REQUEST
        );
    }

    /// Decodes `bytes`; a decoded option re-encodes minimally to itself, and a refusal is
    /// one of the two malformed-value errors. Returns whether it decoded.
    fn decode_checked(bytes: &[u8]) -> bool {
        match BlockOption::decode(bytes) {
            Ok(o) => {
                let again = o.encode();
                assert!(again.len() <= bytes.len());
                assert_eq!(BlockOption::decode(&again), Ok(o));
                true
            }
            Err(e) => {
                assert!(
                    e == BlockError::OptionTooLong(bytes.len()) || e == BlockError::ReservedSzx(7),
                    "{bytes:?}: {e:?}"
                );
                false
            }
        }
    }

    #[test]
    fn arbitrary_option_bytes_never_panic() {
        let mut short_ok = usize::from(decode_checked(&[]));
        for a in 0..=255u8 {
            short_ok += usize::from(decode_checked(&[a]));
            for b in 0..=255u8 {
                short_ok += usize::from(decode_checked(&[a, b]));
            }
        }
        // Exactly the values with SZX 7 (one in eight) are refused.
        assert_eq!(short_ok, 1 + 224 + 57_344);
        let mut rng = Lcg(7);
        for n in [3, 3, 3, 4, 5, 8] {
            for _ in 0..20_000 {
                let bytes = rng.bytes(n);
                assert_eq!(decode_checked(&bytes), n <= 3 && bytes[n - 1] & 7 != 7);
                // Every truncation of it too.
                for cut in 0..n {
                    decode_checked(&bytes[..cut]);
                }
            }
        }
    }

    #[test]
    fn arbitrary_blocks_never_panic_and_respect_the_limit() {
        let mut rng = Lcg(42);
        let data = body(5000);
        let mut r = Reassembler::new(3000);
        let mut s = BlockSender::new(data.clone(), 6).unwrap();
        let mut completed = 0;
        for _ in 0..50_000 {
            let x = rng.next_u32();
            let o = opt(
                if x & 1 == 0 { x >> 20 } else { x >> 28 },
                x & 2 != 0,
                ((x >> 2) & 7) as u8,
            );
            let len = match (x >> 5) & 3 {
                0 => o.size().unwrap_or(16),
                _ => (rng.next_u32() % 1100) as usize,
            };
            let payload = rng.bytes(len);
            let etag = [None, Some(&b"x"[..])][((x >> 7) & 1) as usize];
            let hint = ((x >> 8) & 7 == 0).then_some(rng.next_u32() % 4000);
            match r.push(o, &payload, etag, hint) {
                Ok(Progress::Complete(b)) => {
                    assert!(b.len() <= 3000);
                    completed += 1;
                    r.reset();
                }
                Ok(_) => assert!(r.received_len() <= 3000),
                Err(BlockError::AlreadyComplete) => r.reset(),
                // Start over now and then, as a server would on a new block 0.
                Err(_) if (x >> 24) & 31 == 0 => r.reset(),
                Err(_) => {}
            }
            if (x >> 11) & 15 == 0 {
                let _ = r.expect_szx(((x >> 15) & 7) as u8);
            }
            if let Ok((b, p)) = s.serve(Some(o)) {
                let start = b.offset().unwrap();
                assert_eq!(p, &data[start..start + p.len()]);
            }
            let _ = s.next_after_continue(o, opt(o.num, true, ((x >> 18) & 7) as u8));
            if s.szx() == 0 {
                s = BlockSender::new(data.clone(), 6).unwrap();
            }
        }
        assert!(completed > 0);
    }
}
