//! A counting global allocator that tells the client's heap from everyone else's: every
//! block carries a small header saying whether it was allocated inside a client call (see
//! [`ClientScope`]), so a free anywhere (e.g. of a datagram the driver got from
//! `poll_transmit`) is charged to the side that allocated it. Only the Rust heap goes through
//! here: Mbed TLS allocates with the C library's `calloc`, which massif on the C example sees.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Counting;

/// Header in front of each block: the requested size and the client flag.
const TAG: usize = 16;
const CLIENT_BIT: u64 = 1 << 63;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_CLIENT: Cell<u32> = const { Cell::new(0) };
}

fn in_client() -> bool {
    IN_CLIENT.try_with(|c| c.get() > 0).unwrap_or(false)
}

fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let pad = TAG.max(layout.align());
    let l =
        Layout::from_size_align(layout.size().checked_add(pad)?, layout.align().max(TAG)).ok()?;
    Some((l, pad))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((l, pad)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(l);
        if base.is_null() {
            return base;
        }
        let user = base.add(pad);
        let size = layout.size() as u64;
        let client = in_client();
        (user.sub(TAG) as *mut u64).write(size | if client { CLIENT_BIT } else { 0 });
        if client {
            let live = LIVE.fetch_add(size, Relaxed) + size;
            PEAK.fetch_max(live, Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(size, Relaxed);
        }
        user
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (l, pad) = outer(layout).expect("layout was valid at allocation");
        let tag = (ptr.sub(TAG) as *const u64).read();
        if tag & CLIENT_BIT != 0 {
            LIVE.fetch_sub(tag & !CLIENT_BIT, Relaxed);
        }
        System.dealloc(ptr.sub(pad), l);
    }
}

/// Marks the current thread as running client code until dropped.
pub struct ClientScope;

impl ClientScope {
    pub fn enter() -> ClientScope {
        IN_CLIENT.with(|c| c.set(c.get() + 1));
        ClientScope
    }
}

impl Drop for ClientScope {
    fn drop(&mut self) {
        IN_CLIENT.with(|c| c.set(c.get() - 1));
    }
}

/// The client's heap counters.
#[derive(Copy, Clone, Debug, Default)]
pub struct HeapStats {
    /// Bytes allocated by the client and not freed yet.
    pub live: u64,
    /// Highest `live` since the last [`reset_peak`].
    pub peak: u64,
    /// Allocations (a reallocation counts as one) since the program started.
    pub allocs: u64,
    /// Bytes requested by those allocations.
    pub bytes: u64,
}

pub fn stats() -> HeapStats {
    HeapStats {
        live: LIVE.load(Relaxed),
        peak: PEAK.load(Relaxed),
        allocs: ALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

/// Starts a new peak measurement from the current live size.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}
