//! The message-ID deduplication cache (RFC 7252 §4.5): remembers recently seen inbound
//! message IDs from one peer with the response we sent, so a retransmitted request is
//! answered again with the same bytes instead of being executed twice.
//!
//! Entries are keyed by message ID *and* token: a stray datagram that happened to use a
//! message ID the peer later uses for a real request (with its own token) must not make
//! that request look like a duplicate and get the stray's cached answer.
//!
//! Bounded in bytes by `msg_cache_size`; entries expire after EXCHANGE_LIFETIME.

use std::collections::VecDeque;

use crate::time::Instant;

/// Bookkeeping cost charged per entry on top of the cached response bytes.
const ENTRY_OVERHEAD: usize = 16;

#[derive(Debug)]
struct Entry {
    mid: u16,
    token: Vec<u8>,
    expires: Instant,
    response: Option<Vec<u8>>,
}

/// What the cache knows about an inbound message ID.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Not seen within EXCHANGE_LIFETIME: process it.
    New,
    /// Seen and answered: send these bytes again.
    Answered(&'a [u8]),
    /// Seen, no answer recorded (a NON request, or one still being processed): drop it.
    Pending,
}

/// Per-peer cache of inbound message IDs and their responses.
#[derive(Debug)]
pub struct MessageCache {
    entries: VecDeque<Entry>,
    capacity: usize,
    used: usize,
}

impl MessageCache {
    /// A cache holding at most `capacity_bytes` of responses and bookkeeping.
    pub fn new(capacity_bytes: usize) -> Self {
        MessageCache {
            entries: VecDeque::new(),
            capacity: capacity_bytes,
            used: 0,
        }
    }

    fn cost(e: &Entry) -> usize {
        ENTRY_OVERHEAD + e.token.len() + e.response.as_ref().map_or(0, Vec::len)
    }

    fn expire(&mut self, now: Instant) {
        // Entries are pushed in arrival order with equal lifetimes, so the front is oldest.
        while self.entries.front().is_some_and(|e| e.expires <= now) {
            if let Some(e) = self.entries.pop_front() {
                self.used -= Self::cost(&e);
            }
        }
    }

    fn evict_to_fit(&mut self, extra: usize) {
        while self.used + extra > self.capacity {
            match self.entries.pop_front() {
                Some(e) => self.used -= Self::cost(&e),
                None => break,
            }
        }
    }

    /// Looks up `mid` with `token`; a new pair is recorded as pending until
    /// `record_response`.
    pub fn check(
        &mut self,
        now: Instant,
        mid: u16,
        token: &[u8],
        lifetime: core::time::Duration,
    ) -> Seen<'_> {
        self.expire(now);
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.mid == mid && e.token == token)
        {
            return match &self.entries[i].response {
                Some(r) => Seen::Answered(r),
                None => Seen::Pending,
            };
        }
        let cost = ENTRY_OVERHEAD + token.len();
        self.evict_to_fit(cost);
        if self.used + cost <= self.capacity {
            self.entries.push_back(Entry {
                mid,
                token: token.to_vec(),
                expires: now + lifetime,
                response: None,
            });
            self.used += cost;
        }
        Seen::New
    }

    /// Stores the response sent for `mid`, evicting the oldest entries if needed; a response
    /// larger than the whole cache is not kept (the request would then run again).
    pub fn record_response(&mut self, mid: u16, token: &[u8], bytes: &[u8]) {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.mid == mid && e.token == token)
        else {
            return;
        };
        if ENTRY_OVERHEAD + token.len() + bytes.len() > self.capacity {
            return;
        }
        let old = Self::cost(&self.entries[i]);
        self.used -= old;
        let mut entry = match self.entries.remove(i) {
            Some(e) => e,
            None => return,
        };
        entry.response = Some(bytes.to_vec());
        let cost = Self::cost(&entry);
        self.evict_to_fit(cost);
        self.used += cost;
        // Re-inserting at the back keeps eviction order by recency of use; expiry order can
        // differ slightly, which `expire` tolerates by stopping at the first live entry.
        self.entries.push_back(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes_used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    const LIFE: Duration = Duration::from_secs(247);

    #[test]
    fn duplicate_is_answered_with_recorded_bytes() {
        let mut c = MessageCache::new(1024);
        let t = Instant::from_millis(0);
        assert_eq!(c.check(t, 7, b"tk", LIFE), Seen::New);
        assert_eq!(c.check(t, 7, b"tk", LIFE), Seen::Pending);
        c.record_response(7, b"tk", b"resp");
        assert_eq!(c.check(t, 7, b"tk", LIFE), Seen::Answered(b"resp"));
    }

    #[test]
    fn entries_expire_after_lifetime() {
        let mut c = MessageCache::new(1024);
        c.check(Instant::from_millis(0), 1, b"", LIFE);
        c.record_response(1, b"", b"x");
        let later = Instant::from_millis(0) + LIFE;
        assert_eq!(c.check(later, 1, b"", LIFE), Seen::New);
    }

    #[test]
    fn stays_within_byte_bound_evicting_oldest() {
        let mut c = MessageCache::new(200);
        let t = Instant::from_millis(0);
        for mid in 0..20u16 {
            assert_eq!(c.check(t, mid, b"", LIFE), Seen::New);
            c.record_response(mid, b"", &[0u8; 40]);
            assert!(c.bytes_used() <= 200, "used {}", c.bytes_used());
        }
        assert_eq!(c.check(t, 19, b"", LIFE), Seen::Answered(&[0u8; 40][..]));
        assert_eq!(c.check(t, 0, b"", LIFE), Seen::New);
    }

    #[test]
    fn oversized_response_is_not_cached() {
        let mut c = MessageCache::new(64);
        let t = Instant::from_millis(0);
        c.check(t, 3, b"", LIFE);
        c.record_response(3, b"", &[1u8; 100]);
        assert_eq!(c.check(t, 3, b"", LIFE), Seen::Pending);
        assert!(c.bytes_used() <= 64);
    }

    #[test]
    fn same_mid_with_another_token_is_new() {
        let mut c = MessageCache::new(1024);
        let t = Instant::from_millis(0);
        // A stray message claims MID 9 first ...
        assert_eq!(c.check(t, 9, b"junk", LIFE), Seen::New);
        c.record_response(9, b"junk", b"rst");
        // ... the real request with the same MID but its own token is still processed.
        assert_eq!(c.check(t, 9, b"real", LIFE), Seen::New);
        c.record_response(9, b"real", b"2.05");
        assert_eq!(c.check(t, 9, b"real", LIFE), Seen::Answered(b"2.05"));
        assert_eq!(c.check(t, 9, b"junk", LIFE), Seen::Answered(b"rst"));
    }
}
