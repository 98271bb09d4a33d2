//! Estuary: an LwM2M client SDK with Certificate mode with EST.
//!
//! The crate is a sans-IO protocol core with thin edges (see `DESIGN.md` in the shared docs):
//! everything below [`client`] is deterministic — time and randomness are passed in and
//! datagrams go in and out through `handle_datagram` / `poll_transmit` — while [`io`] owns
//! sockets and clocks and [`ffi`] exposes the C API of `include/estuary.h`.

pub mod client;
pub mod coap;
pub mod crypto;
pub mod dm;
pub mod dtls;
pub mod error;
pub mod est;
pub mod ffi;
pub mod io;
pub mod lwm2m;
pub mod persist;
pub mod rng;
pub mod time;

pub use client::{Client, ClientConfig, ConnectionId, Event, Transmit};
pub use error::Error;
pub use rng::{RandomSource, SeededRng};
pub use time::{Instant, Now, UtcTime};
