//! Measurement helpers of the client benchmark: the counting allocator and the driver that
//! charges every datagram to an exchange.

pub mod alloc;
pub mod driver;
