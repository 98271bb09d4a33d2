//! `estuary_configuration_t` (mirrors Anjay's `anjay_configuration_t`) and its conversion to
//! the driver's and client's Rust configuration. Zero or NULL fields take the documented
//! defaults; fields are only ever appended, so the order below is the ABI.

use std::ffi::{c_char, c_uint};
use std::time::Duration;

use super::time::estuary_time_duration_t;
use super::{arg_ref, str_arg, Refusal};
use crate::client::ClientConfig;
use crate::coap::TxParams;
use crate::io::DriverConfig;

/// CoAP transmission parameters over UDP (RFC 7252 section 4.8). Unlike the configuration
/// struct, a given parameter struct is taken as it is: every field must be valid.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct estuary_coap_udp_tx_params_t {
    /// ACK_TIMEOUT: how long to wait for the first acknowledgement; more than zero.
    /// RFC default: 2 s.
    pub ack_timeout: estuary_time_duration_t,
    /// ACK_RANDOM_FACTOR: at least 1.0. RFC default: 1.5.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a confirmable message before giving up; at most
    /// 20. RFC default: 4.
    pub max_retransmit: c_uint,
    /// NSTART: outstanding interactions with one server; at least 1. RFC default: 1.
    pub nstart: usize,
}

/// The RFC 7252 defaults, which apply when estuary_configuration_t.udp_tx_params is NULL.
pub const ESTUARY_COAP_UDP_TX_PARAMS_DEFAULT: estuary_coap_udp_tx_params_t =
    estuary_coap_udp_tx_params_t {
        ack_timeout: estuary_time_duration_t {
            seconds: 2,
            nanoseconds: 0,
        },
        ack_random_factor: 1.5,
        max_retransmit: 4,
        nstart: 1,
    };

/// Configuration for estuary_new(). Fill it with a designated initializer; every field
/// left zero or NULL takes the default stated below. estuary_new() copies what it needs,
/// so the struct and everything it points to may be freed when it returns.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_configuration_t {
    /// Endpoint Client Name sent at registration: 1 to 255 printable ASCII characters
    /// without space, `&`, `?`, `#`, `/`, `"` or `\`. Required.
    pub endpoint_name: *const c_char,
    /// Local UDP port of the first socket Estuary opens. 0 (default): an ephemeral port.
    pub udp_listen_port: u16,
    /// Largest datagram accepted, in bytes; bigger ones are dropped. At least 128.
    /// 0 (default): 4000.
    pub in_buffer_size: usize,
    /// Largest datagram sent, in bytes. At least 128. 0 (default): 4000.
    pub out_buffer_size: usize,
    /// Bytes of responses kept to answer retransmitted requests. 0 (default): 4000.
    pub msg_cache_size: usize,
    /// CoAP/UDP transmission parameters. NULL (default): ESTUARY_COAP_UDP_TX_PARAMS_DEFAULT.
    pub udp_tx_params: *const estuary_coap_udp_tx_params_t,
    /// Seed of the generator for CoAP message IDs and tokens, for reproducible tests.
    /// 0 (default): seeded from the operating system, as production should be.
    pub prng_seed: u64,
}

fn or_default(v: usize, default: usize) -> usize {
    if v == 0 {
        default
    } else {
        v
    }
}

impl estuary_coap_udp_tx_params_t {
    fn to_tx_params(self) -> Result<TxParams, Refusal> {
        let ack_timeout = self.ack_timeout.to_duration("udp_tx_params->ack_timeout")?;
        if ack_timeout < Duration::from_millis(1) {
            return Err(Refusal::invalid(
                "udp_tx_params->ack_timeout must be at least 1 ms",
            ));
        }
        if !(self.ack_random_factor.is_finite() && self.ack_random_factor >= 1.0) {
            return Err(Refusal::invalid(
                "udp_tx_params->ack_random_factor must be a number of at least 1.0",
            ));
        }
        if self.max_retransmit > 20 {
            return Err(Refusal::invalid(
                "udp_tx_params->max_retransmit must be at most 20",
            ));
        }
        let nstart = u32::try_from(self.nstart)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Refusal::invalid("udp_tx_params->nstart must be at least 1"))?;
        Ok(TxParams {
            ack_timeout,
            ack_random_factor: self.ack_random_factor,
            max_retransmit: self.max_retransmit,
            nstart,
        })
    }
}

impl estuary_configuration_t {
    /// The Rust configuration, with defaults filled in. The client checks the rest
    /// (endpoint name characters, minimum buffer sizes) when it is created.
    ///
    /// # Safety
    /// The pointers in `self` must be NULL or valid for the duration of the call.
    pub(crate) unsafe fn to_driver_config(self) -> Result<DriverConfig, Refusal> {
        // SAFETY: forwarded from the caller.
        let endpoint_name = unsafe { str_arg(self.endpoint_name, "config->endpoint_name") }?;
        let udp_tx_params = if self.udp_tx_params.is_null() {
            TxParams::default()
        } else {
            // SAFETY: non-NULL, valid per the caller.
            unsafe { arg_ref(self.udp_tx_params, "config->udp_tx_params") }?.to_tx_params()?
        };
        let client = ClientConfig {
            endpoint_name,
            in_buffer_size: or_default(self.in_buffer_size, ClientConfig::DEFAULT_IN_BUFFER_SIZE),
            out_buffer_size: or_default(
                self.out_buffer_size,
                ClientConfig::DEFAULT_OUT_BUFFER_SIZE,
            ),
            msg_cache_size: or_default(self.msg_cache_size, ClientConfig::DEFAULT_MSG_CACHE_SIZE),
            udp_tx_params,
            confirmable_notifications: false,
        };
        Ok(DriverConfig {
            client,
            udp_listen_port: self.udp_listen_port,
            prng_seed: (self.prng_seed != 0).then_some(self.prng_seed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{ESTUARY_ERR_INVALID_ARGUMENT, ESTUARY_ERR_NULL_ARGUMENT};

    fn zeroed() -> estuary_configuration_t {
        estuary_configuration_t {
            endpoint_name: std::ptr::null(),
            udp_listen_port: 0,
            in_buffer_size: 0,
            out_buffer_size: 0,
            msg_cache_size: 0,
            udp_tx_params: std::ptr::null(),
            prng_seed: 0,
        }
    }

    #[test]
    fn ffi_config_zero_fields_take_the_defaults() {
        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        // SAFETY: all pointers are NULL or live literals.
        let d = match unsafe { c.to_driver_config() } {
            Ok(d) => d,
            Err(r) => panic!("{}", r.message),
        };
        assert_eq!(d, DriverConfig::new("dev"));
        // SAFETY: as above.
        let e = unsafe { zeroed().to_driver_config() }
            .map_err(|r| r.code)
            .err();
        assert_eq!(e, Some(ESTUARY_ERR_NULL_ARGUMENT));
    }

    #[test]
    fn ffi_tx_params_are_taken_literally_and_checked() {
        let p = ESTUARY_COAP_UDP_TX_PARAMS_DEFAULT;
        assert_eq!(p.to_tx_params().ok(), Some(TxParams::default()));
        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        c.prng_seed = 9;
        let custom = estuary_coap_udp_tx_params_t {
            max_retransmit: 0,
            ..p
        };
        c.udp_tx_params = &custom;
        // SAFETY: pointers to live locals and literals.
        let d = unsafe { c.to_driver_config() }.ok();
        assert_eq!(
            d.as_ref().map(|d| d.client.udp_tx_params.max_retransmit),
            Some(0)
        );
        assert_eq!(d.and_then(|d| d.prng_seed), Some(9));
        for bad in [
            estuary_coap_udp_tx_params_t {
                ack_random_factor: 0.5,
                ..p
            },
            estuary_coap_udp_tx_params_t {
                ack_random_factor: f64::NAN,
                ..p
            },
            estuary_coap_udp_tx_params_t {
                max_retransmit: 21,
                ..p
            },
            estuary_coap_udp_tx_params_t { nstart: 0, ..p },
            estuary_coap_udp_tx_params_t {
                ack_timeout: estuary_time_duration_t {
                    seconds: 0,
                    nanoseconds: 0,
                },
                ..p
            },
            estuary_coap_udp_tx_params_t {
                ack_timeout: estuary_time_duration_t {
                    seconds: -1,
                    nanoseconds: 0,
                },
                ..p
            },
        ] {
            assert_eq!(
                bad.to_tx_params().map_err(|r| r.code).err(),
                Some(ESTUARY_ERR_INVALID_ARGUMENT),
                "{bad:?}"
            );
        }
    }
}
