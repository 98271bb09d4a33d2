//! CoAP transmission parameters (RFC 7252 §4.8) and the times derived from them.
//!
//! Configurable per client as `udp_tx_params`; the defaults are the RFC's.

use core::time::Duration;

/// RFC 7252 transmission parameters.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct TxParams {
    /// Initial acknowledgement timeout (ACK_TIMEOUT).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR, at least 1.0.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a confirmable message before giving up.
    pub max_retransmit: u32,
    /// NSTART: outstanding interactions with one peer.
    pub nstart: u32,
}

impl Default for TxParams {
    fn default() -> Self {
        TxParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
        }
    }
}

/// MAX_LATENCY of RFC 7252: the longest a datagram is assumed to be in flight.
pub const MAX_LATENCY: Duration = Duration::from_secs(100);
/// PROCESSING_DELAY of RFC 7252 (equal to ACK_TIMEOUT by default).
const PROCESSING_DELAY: Duration = Duration::from_secs(2);

impl TxParams {
    /// Replaces values that cannot work (zero timeouts, a factor below one, NSTART zero)
    /// with the defaults, so a half-filled configuration still behaves.
    pub fn sanitized(self) -> Self {
        let d = TxParams::default();
        TxParams {
            ack_timeout: if self.ack_timeout.is_zero() {
                d.ack_timeout
            } else {
                self.ack_timeout
            },
            ack_random_factor: if self.ack_random_factor.is_finite()
                && self.ack_random_factor >= 1.0
            {
                self.ack_random_factor
            } else {
                d.ack_random_factor
            },
            max_retransmit: self.max_retransmit.min(20),
            nstart: self.nstart.max(1),
        }
    }

    /// MAX_TRANSMIT_SPAN: first to last transmission of a confirmable message.
    pub fn max_transmit_span(&self) -> Duration {
        let factor = (1u64 << self.max_retransmit.min(30)) - 1;
        self.ack_timeout
            .mul_f64(factor as f64 * self.ack_random_factor)
    }

    /// MAX_TRANSMIT_WAIT: first transmission to giving up on an acknowledgement.
    pub fn max_transmit_wait(&self) -> Duration {
        let factor = (1u64 << (self.max_retransmit.min(30) + 1)) - 1;
        self.ack_timeout
            .mul_f64(factor as f64 * self.ack_random_factor)
    }

    /// EXCHANGE_LIFETIME: how long a message ID stays in use (and in the dedup cache).
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + 2 * MAX_LATENCY + PROCESSING_DELAY
    }

    /// The most datagrams one confirmable message may cost: the first plus retransmissions.
    pub fn max_transmissions(&self) -> u32 {
        self.max_retransmit + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_default_derived_times() {
        let p = TxParams::default();
        assert_eq!(p.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(p.exchange_lifetime(), Duration::from_secs(247));
    }

    #[test]
    fn nonsense_values_fall_back_to_defaults() {
        let p = TxParams {
            ack_timeout: Duration::ZERO,
            ack_random_factor: f64::NAN,
            max_retransmit: 99,
            nstart: 0,
        }
        .sanitized();
        assert_eq!(p.ack_timeout, Duration::from_secs(2));
        assert_eq!(p.ack_random_factor, 1.5);
        assert_eq!(p.max_retransmit, 20);
        assert_eq!(p.nstart, 1);
    }
}
