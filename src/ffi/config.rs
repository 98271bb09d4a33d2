//! `estuary_configuration_t` (mirrors Anjay's `anjay_configuration_t`) and its conversion to
//! the driver's and client's Rust configuration. Zero or NULL fields take the documented
//! defaults; fields are only ever appended, so the order below is the ABI.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::time::Duration;

use super::error::ESTUARY_ERR_NOT_SUPPORTED;
use super::time::estuary_time_duration_t;
use super::{arg_ref, bytes_arg, ffi_boundary, str_arg, Refusal, Refused};
use crate::client::ClientConfig;
use crate::coap::TxParams;
use crate::crypto::{Certificate, TrustStore};
use crate::dtls::HandshakeTimers;
use crate::est::{CacertsPolicy, ReenrollConfig};
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

/// DTLS handshake retransmission timers (RFC 6347 section 4.2.4.1): the first
/// retransmission after `min`, doubling up to `max`; a flight unanswered after the wait at
/// `max` fails the handshake. Both more than zero, min <= max. RFC default: 1 s and 60 s.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct estuary_dtls_handshake_timeouts_t {
    /// Wait before the first retransmission of a handshake flight.
    pub min: estuary_time_duration_t,
    /// The longest wait; a flight still unanswered after it fails the handshake.
    pub max: estuary_time_duration_t,
}

/// Where a certificate chain info points: one of the ESTUARY_CHAIN_SOURCE_* constants.
pub type estuary_certificate_chain_source_t = c_int;
/// Empty (a zeroed estuary_certificate_chain_info_t).
pub const ESTUARY_CHAIN_SOURCE_EMPTY: estuary_certificate_chain_source_t = 0;
/// A file with one DER certificate, or PEM certificates.
pub const ESTUARY_CHAIN_SOURCE_FILE: estuary_certificate_chain_source_t = 1;
/// A directory: every file in it that holds certificates.
pub const ESTUARY_CHAIN_SOURCE_PATH: estuary_certificate_chain_source_t = 2;
/// A buffer with one DER certificate, or PEM certificates.
pub const ESTUARY_CHAIN_SOURCE_BUFFER: estuary_certificate_chain_source_t = 3;

/// Certificates to load (as Anjay's avs_crypto_certificate_chain_info_t): make it with an
/// estuary_certificate_chain_info_from_*() helper. It only points at the file name or buffer;
/// estuary_new() reads them, so they must stay valid until then.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_certificate_chain_info_t {
    /// One of the ESTUARY_CHAIN_SOURCE_* constants.
    pub source: estuary_certificate_chain_source_t,
    /// The file or directory name (FILE, PATH).
    pub path: *const c_char,
    /// The certificates (BUFFER).
    pub data: *const c_void,
    /// Size in bytes of data.
    pub size: usize,
}

impl estuary_certificate_chain_info_t {
    pub(crate) const EMPTY: Self = estuary_certificate_chain_info_t {
        source: ESTUARY_CHAIN_SOURCE_EMPTY,
        path: std::ptr::null(),
        data: std::ptr::null(),
        size: 0,
    };

    /// The trust anchors this points at.
    ///
    /// # Safety
    /// `path` / `data` must be NULL or valid as documented on the fields.
    unsafe fn load(&self, what: &'static str) -> Result<TrustStore, Refusal> {
        let mut store = TrustStore::new();
        // SAFETY: forwarded from the caller.
        unsafe {
            self.read_each(what, "certificate", |bytes| {
                for c in Certificate::parse_any(bytes)? {
                    store.add(c);
                }
                Ok(())
            })
        }?;
        Ok(store)
    }

    /// Adds the CRLs this points at to `store`.
    ///
    /// # Safety
    /// As [`Self::load`].
    unsafe fn load_crls(&self, what: &'static str, store: &mut TrustStore) -> Result<(), Refusal> {
        // SAFETY: forwarded from the caller.
        unsafe { self.read_each(what, "CRL", |bytes| store.add_crl_bytes(bytes).map(|_| ())) }
    }

    /// Hands the bytes of the file, of each file in the directory, or of the buffer to
    /// `add`. A file or buffer `add` refuses is an error; in a directory such files are
    /// skipped (certificate directories hold other files too: hash links, CRLs,
    /// certificates), but at least one must be taken.
    ///
    /// # Safety
    /// As [`Self::load`].
    unsafe fn read_each(
        &self,
        what: &'static str,
        kind: &str,
        mut add: impl FnMut(&[u8]) -> Result<(), crate::crypto::CryptoError>,
    ) -> Result<(), Refusal> {
        match self.source {
            ESTUARY_CHAIN_SOURCE_EMPTY => {}
            ESTUARY_CHAIN_SOURCE_FILE => {
                // SAFETY: forwarded from the caller.
                let path = unsafe { str_arg(self.path, what) }?;
                let bytes = std::fs::read(&path)
                    .map_err(|e| Refusal::invalid(format!("{what}: reading {path}: {e}")))?;
                add(&bytes).map_err(|e| Refusal::invalid(format!("{what}: {path}: {e}")))?;
            }
            ESTUARY_CHAIN_SOURCE_PATH => {
                // SAFETY: forwarded from the caller.
                let dir = unsafe { str_arg(self.path, what) }?;
                let entries = std::fs::read_dir(Path::new(&dir))
                    .map_err(|e| Refusal::invalid(format!("{what}: reading {dir}: {e}")))?;
                let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                let mut taken = 0usize;
                for p in names.iter().filter(|p| p.is_file()) {
                    match std::fs::read(p).map(|b| add(&b)) {
                        Ok(Ok(())) => taken += 1,
                        _ => ::log::debug!("{what}: {} holds no {kind}; skipped", p.display()),
                    }
                }
                if taken == 0 {
                    return Err(Refusal::invalid(format!(
                        "{what}: no {kind} in directory {dir}"
                    )));
                }
            }
            ESTUARY_CHAIN_SOURCE_BUFFER => {
                // SAFETY: forwarded from the caller.
                let bytes = unsafe { bytes_arg(self.data.cast(), self.size, what) }?;
                if !bytes.is_empty() {
                    add(&bytes).map_err(|e| Refusal::invalid(format!("{what}: buffer: {e}")))?;
                }
            }
            other => {
                return Err(Refusal::invalid(format!(
                    "{what}: source {other} is not an ESTUARY_CHAIN_SOURCE_* value"
                )))
            }
        }
        Ok(())
    }
}

impl Refused for estuary_certificate_chain_info_t {
    fn refused(_: c_int) -> Self {
        Self::EMPTY
    }
}

fn info_from_file(filename: *const c_char) -> Result<estuary_certificate_chain_info_t, Refusal> {
    if filename.is_null() {
        return Err(Refusal::null("filename"));
    }
    Ok(estuary_certificate_chain_info_t {
        source: ESTUARY_CHAIN_SOURCE_FILE,
        path: filename,
        ..estuary_certificate_chain_info_t::EMPTY
    })
}

fn info_from_path(path: *const c_char) -> Result<estuary_certificate_chain_info_t, Refusal> {
    if path.is_null() {
        return Err(Refusal::null("path"));
    }
    Ok(estuary_certificate_chain_info_t {
        source: ESTUARY_CHAIN_SOURCE_PATH,
        path,
        ..estuary_certificate_chain_info_t::EMPTY
    })
}

fn info_from_buffer(
    data: *const c_void,
    size: usize,
) -> Result<estuary_certificate_chain_info_t, Refusal> {
    if data.is_null() && size != 0 {
        return Err(Refusal::null("data"));
    }
    Ok(estuary_certificate_chain_info_t {
        source: ESTUARY_CHAIN_SOURCE_BUFFER,
        data,
        size,
        ..estuary_certificate_chain_info_t::EMPTY
    })
}

/// Certificates from a file (one DER certificate or PEM certificates), e.g. for
/// estuary_configuration_t.trust_store_certs. The name is read by estuary_new(). NULL gives
/// the empty chain (and a log line).
#[no_mangle]
pub extern "C" fn estuary_certificate_chain_info_from_file(
    filename: *const c_char,
) -> estuary_certificate_chain_info_t {
    ffi_boundary!({ info_from_file(filename) })
}

/// Certificates from every file in a directory that holds any (e.g. /etc/ssl/certs).
/// NULL gives the empty chain (and a log line).
#[no_mangle]
pub extern "C" fn estuary_certificate_chain_info_from_path(
    path: *const c_char,
) -> estuary_certificate_chain_info_t {
    ffi_boundary!({ info_from_path(path) })
}

/// Certificates from a buffer (one DER certificate or PEM certificates), which must stay
/// valid until estuary_new() returns. NULL with a non-zero size gives the empty chain.
#[no_mangle]
pub extern "C" fn estuary_certificate_chain_info_from_buffer(
    data: *const c_void,
    size: usize,
) -> estuary_certificate_chain_info_t {
    ffi_boundary!({ info_from_buffer(data, size) })
}

/// The name a port from Anjay gets for avs_crypto_certificate_chain_info_t (its `avs_`
/// prefix replaced): the same type as estuary_certificate_chain_info_t.
pub type estuary_crypto_certificate_chain_info_t = estuary_certificate_chain_info_t;

/// The same as estuary_certificate_chain_info_from_file(), under the name a port of
/// avs_crypto_certificate_chain_info_from_file() gets when its `avs_` prefix is replaced.
#[no_mangle]
pub extern "C" fn estuary_crypto_certificate_chain_info_from_file(
    filename: *const c_char,
) -> estuary_crypto_certificate_chain_info_t {
    ffi_boundary!({ info_from_file(filename) })
}

/// The same as estuary_certificate_chain_info_from_path() (the port of
/// avs_crypto_certificate_chain_info_from_path()).
#[no_mangle]
pub extern "C" fn estuary_crypto_certificate_chain_info_from_path(
    path: *const c_char,
) -> estuary_crypto_certificate_chain_info_t {
    ffi_boundary!({ info_from_path(path) })
}

/// The same as estuary_certificate_chain_info_from_buffer() (the port of
/// avs_crypto_certificate_chain_info_from_buffer()).
#[no_mangle]
pub extern "C" fn estuary_crypto_certificate_chain_info_from_buffer(
    data: *const c_void,
    size: usize,
) -> estuary_crypto_certificate_chain_info_t {
    ffi_boundary!({ info_from_buffer(data, size) })
}

/// EST certificate renewal (SPEC 4.4). Re-enrollment starts at
/// max(P + nominal_usage * (E - P), E - max_margin), where P is when the certificate was
/// provisioned and E its notAfter; failed attempts are retried sren_attempts_count times,
/// spread evenly up to E. When all fail or the certificate expires, the client purges the
/// EST credential and bootstraps again.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_est_reenroll_config_t {
    /// Re-enroll at all.
    pub enable: bool,
    /// Fraction of the validity after which re-enrollment starts; clamped to [0, 1], NaN
    /// counts as 0.
    pub nominal_usage: f64,
    /// Start at the latest this long before expiry; zero or negative: no limit.
    pub max_margin: estuary_time_duration_t,
    /// Retries after a failed first attempt; 0 means the default (10), so a configuration
    /// written for Anjay's struct, which lacks this field, keeps retrying.
    pub sren_attempts_count: u32,
    /// Make a new key pair for each re-enrollment (committed only when the new certificate
    /// arrives).
    pub rekey: bool,
}

/// When `/est/crts` is requested and what its certificates are trusted for: one of the
/// ESTUARY_EST_CACERTS_* constants (SPEC 4.3).
pub type estuary_est_cacerts_policy_t = c_int;
/// 0: the default, ESTUARY_EST_CACERTS_FOR_EST_SECURITY_AND_BOOTSTRAP.
pub const ESTUARY_EST_CACERTS_DEFAULT: estuary_est_cacerts_policy_t = 0;
/// Never requested; trust comes from /0/x/4 and trust_store_certs.
pub const ESTUARY_EST_CACERTS_DISABLED: estuary_est_cacerts_policy_t = 1;
/// Requested when an account is in mode 4; used to verify the servers of mode-4 accounts.
pub const ESTUARY_EST_CACERTS_FOR_EST_SECURITY: estuary_est_cacerts_policy_t = 2;
/// As above, and for the bootstrap server's connection in Certificate or EST mode.
pub const ESTUARY_EST_CACERTS_FOR_EST_SECURITY_AND_BOOTSTRAP: estuary_est_cacerts_policy_t = 3;
/// Requested when an account is in mode 4; trusted for every certificate-based connection.
pub const ESTUARY_EST_CACERTS_IF_EST_CONFIGURED: estuary_est_cacerts_policy_t = 4;
/// Requested after every successful bootstrap; trusted for every certificate connection.
pub const ESTUARY_EST_CACERTS_ALWAYS: estuary_est_cacerts_policy_t = 5;

impl estuary_est_reenroll_config_t {
    fn to_config(self) -> Result<ReenrollConfig, Refusal> {
        if !self.max_margin.is_valid() {
            return Err(Refusal::invalid(
                "est_reenroll_config->max_margin is not a valid duration",
            ));
        }
        let m = self.max_margin;
        let positive = m.seconds > 0 || (m.seconds == 0 && m.nanoseconds > 0);
        let max_margin = if positive {
            Some(m.to_duration("est_reenroll_config->max_margin")?)
        } else {
            None
        };
        Ok(ReenrollConfig {
            enable: self.enable,
            nominal_usage: self.nominal_usage,
            max_margin,
            sren_attempts_count: match self.sren_attempts_count {
                0 => ReenrollConfig::default().sren_attempts_count,
                n => n,
            },
            rekey: self.rekey,
        })
    }
}

fn cacerts_policy(v: estuary_est_cacerts_policy_t) -> Result<CacertsPolicy, Refusal> {
    Ok(match v {
        ESTUARY_EST_CACERTS_DEFAULT => CacertsPolicy::default(),
        ESTUARY_EST_CACERTS_DISABLED => CacertsPolicy::Disabled,
        ESTUARY_EST_CACERTS_FOR_EST_SECURITY => CacertsPolicy::ForEstSecurity,
        ESTUARY_EST_CACERTS_FOR_EST_SECURITY_AND_BOOTSTRAP => {
            CacertsPolicy::ForEstSecurityAndBootstrap
        }
        ESTUARY_EST_CACERTS_IF_EST_CONFIGURED => CacertsPolicy::IfEstConfigured,
        ESTUARY_EST_CACERTS_ALWAYS => CacertsPolicy::Always,
        other => {
            return Err(Refusal::invalid(format!(
                "est_cacerts_policy {other} is not an ESTUARY_EST_CACERTS_* value"
            )))
        }
    })
}

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
    /// DTLS handshake retransmission timers. NULL (default): 1 s doubling to 60 s.
    pub udp_dtls_hs_tx_params: *const estuary_dtls_handshake_timeouts_t,
    /// Trust anchors for server certificates besides the Security object's /0/x/4 (used with
    /// Certificate Usage 0 and 1). Zeroed (default): none. Read by estuary_new().
    pub trust_store_certs: estuary_certificate_chain_info_t,
    /// Send Observe notifications as confirmable messages. false (default): non-confirmable.
    pub confirmable_notifications: bool,
    /// EST re-enrollment. NULL (default): {true, 0.9, 30 days, 10, false}.
    pub est_reenroll_config: *const estuary_est_reenroll_config_t,
    /// One of ESTUARY_EST_CACERTS_*. 0 (default):
    /// ESTUARY_EST_CACERTS_FOR_EST_SECURITY_AND_BOOTSTRAP.
    pub est_cacerts_policy: estuary_est_cacerts_policy_t,
    /// Certificate revocation lists (DER, or PEM "X509 CRL" blocks; a directory: every file
    /// holding CRLs), kept with trust_store_certs and applied wherever a chain is verified:
    /// the peer's certificate in DTLS handshakes (Certificate Usage 0, 1 and 2) and the
    /// certificate an EST server issues. A certificate a CRL lists is refused; a CRL counts
    /// only if the CA it names signed it; a CRL past its nextUpdate still revokes what it
    /// lists. Make it with
    /// estuary_cert_revocation_list_info_from_*(). Zeroed (default): none. Read by
    /// estuary_new(); malformed CRLs make it return NULL with a log line.
    pub trust_store_crls: estuary_cert_revocation_list_info_t,
    /// The LwM2M versions the client may use. This build speaks LwM2M 1.1 (its Register
    /// says lwm2m=1.1), so the range must include ESTUARY_LWM2M_VERSION_1_1: estuary_new()
    /// refuses any other range with a log line. NULL (default): 1.0 to 1.1.
    pub lwm2m_version_config: *const estuary_lwm2m_version_config_t,
    /// Hardware security engine address (e.g. a PKCS#11 URI) where EST generates the key
    /// pair. Engines are not in this build: a non-NULL value makes estuary_new() return NULL
    /// with a log line saying so. NULL (default): keys in memory, persisted with the EST state.
    pub est_engine_key_address: *const c_char,
    /// Engine address where the EST certificate is stored. Not in this build: non-NULL makes
    /// estuary_new() return NULL with a log line. NULL (default): in memory, persisted.
    pub est_engine_cert_address: *const c_char,
    /// Gives the engine address for each CA certificate from /est/crts. Not in this build:
    /// non-NULL makes estuary_new() return NULL with a log line. NULL (default): in memory.
    pub est_engine_cacerts_address_gen_cb: estuary_est_engine_cacert_address_gen_t,
    /// The argument passed to est_engine_cacerts_address_gen_cb. Not in this build: non-NULL
    /// makes estuary_new() return NULL with a log line. NULL (default).
    pub est_engine_cacerts_address_gen_cb_arg: *mut c_void,
}

/// Certificate revocation lists to load (as Anjay's avs_crypto_cert_revocation_list_info_t),
/// made with an estuary_cert_revocation_list_info_from_*() helper; same shape and lifetime
/// rules as estuary_certificate_chain_info_t, whose `source` constants it uses.
pub type estuary_cert_revocation_list_info_t = estuary_certificate_chain_info_t;

/// An LwM2M protocol version: one of the ESTUARY_LWM2M_VERSION_* constants.
pub type estuary_lwm2m_version_t = c_int;
/// LwM2M 1.0.
pub const ESTUARY_LWM2M_VERSION_1_0: estuary_lwm2m_version_t = 0;
/// LwM2M 1.1, the version this build speaks.
pub const ESTUARY_LWM2M_VERSION_1_1: estuary_lwm2m_version_t = 1;
/// LwM2M 1.2.
pub const ESTUARY_LWM2M_VERSION_1_2: estuary_lwm2m_version_t = 2;

/// The range of LwM2M versions the client may use (as Anjay's anjay_lwm2m_version_config_t).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_lwm2m_version_config_t {
    /// The oldest version allowed; one of ESTUARY_LWM2M_VERSION_*.
    pub minimum_version: estuary_lwm2m_version_t,
    /// The newest version allowed; one of ESTUARY_LWM2M_VERSION_*, not older than
    /// minimum_version.
    pub maximum_version: estuary_lwm2m_version_t,
}

/// Returns the hardware-engine address at which the CA certificate `x509_der_data` (DER,
/// `x509_der_data_size` bytes) from /est/crts is to be stored, or NULL to refuse it; `arg` is
/// estuary_configuration_t.est_engine_cacerts_address_gen_cb_arg. The string is copied, so a
/// buffer may be reused between calls. (Engines are not in this build; see the
/// configuration field.)
pub type estuary_est_engine_cacert_address_gen_t = Option<
    unsafe extern "C" fn(
        arg: *mut c_void,
        x509_der_data: *const c_void,
        x509_der_data_size: usize,
    ) -> *const c_char,
>;

/// The version this build speaks.
const SPOKEN_LWM2M_VERSION: estuary_lwm2m_version_t = ESTUARY_LWM2M_VERSION_1_1;

fn version_name(v: estuary_lwm2m_version_t) -> Option<&'static str> {
    match v {
        ESTUARY_LWM2M_VERSION_1_0 => Some("1.0"),
        ESTUARY_LWM2M_VERSION_1_1 => Some("1.1"),
        ESTUARY_LWM2M_VERSION_1_2 => Some("1.2"),
        _ => None,
    }
}

impl estuary_lwm2m_version_config_t {
    /// Refuses a range that is malformed or leaves out the version this build speaks.
    fn check(self) -> Result<(), Refusal> {
        let (Some(min), Some(max)) = (
            version_name(self.minimum_version),
            version_name(self.maximum_version),
        ) else {
            return Err(Refusal::invalid(format!(
                "lwm2m_version_config {{{}, {}}} holds a value that is not an \
                 ESTUARY_LWM2M_VERSION_* constant",
                self.minimum_version, self.maximum_version
            )));
        };
        if self.minimum_version > self.maximum_version {
            return Err(Refusal::invalid(format!(
                "lwm2m_version_config: minimum_version {min} is newer than maximum_version {max}"
            )));
        }
        if !(self.minimum_version..=self.maximum_version).contains(&SPOKEN_LWM2M_VERSION) {
            return Err(Refusal::new(
                ESTUARY_ERR_NOT_SUPPORTED,
                format!(
                    "lwm2m_version_config allows LwM2M {min} to {max}, but this build speaks \
                     LwM2M 1.1 only"
                ),
            ));
        }
        Ok(())
    }
}

/// CRLs from a file (one DER CRL, or PEM "X509 CRL" blocks), for
/// estuary_configuration_t.trust_store_crls. The name is read by estuary_new(). NULL gives
/// the empty list (and a log line).
#[no_mangle]
pub extern "C" fn estuary_cert_revocation_list_info_from_file(
    filename: *const c_char,
) -> estuary_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_file(filename) })
}

/// CRLs from every file in a directory that holds any. NULL gives the empty list (and a log
/// line).
#[no_mangle]
pub extern "C" fn estuary_cert_revocation_list_info_from_path(
    path: *const c_char,
) -> estuary_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_path(path) })
}

/// CRLs from a buffer (one DER CRL, or PEM "X509 CRL" blocks), which must stay valid until
/// estuary_new() returns. NULL with a non-zero size gives the empty list (and a log line).
#[no_mangle]
pub extern "C" fn estuary_cert_revocation_list_info_from_buffer(
    data: *const c_void,
    size: usize,
) -> estuary_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_buffer(data, size) })
}

/// The name a port from Anjay gets for avs_crypto_cert_revocation_list_info_t: the same type
/// as estuary_cert_revocation_list_info_t.
pub type estuary_crypto_cert_revocation_list_info_t = estuary_cert_revocation_list_info_t;

/// The same as estuary_cert_revocation_list_info_from_file() (the port of
/// avs_crypto_cert_revocation_list_info_from_file()).
#[no_mangle]
pub extern "C" fn estuary_crypto_cert_revocation_list_info_from_file(
    filename: *const c_char,
) -> estuary_crypto_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_file(filename) })
}

/// The same as estuary_cert_revocation_list_info_from_path() (the port of
/// avs_crypto_cert_revocation_list_info_from_path()).
#[no_mangle]
pub extern "C" fn estuary_crypto_cert_revocation_list_info_from_path(
    path: *const c_char,
) -> estuary_crypto_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_path(path) })
}

/// The same as estuary_cert_revocation_list_info_from_buffer() (the port of
/// avs_crypto_cert_revocation_list_info_from_buffer()).
#[no_mangle]
pub extern "C" fn estuary_crypto_cert_revocation_list_info_from_buffer(
    data: *const c_void,
    size: usize,
) -> estuary_crypto_cert_revocation_list_info_t {
    ffi_boundary!({ info_from_buffer(data, size) })
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
        let udp_dtls_hs_tx_params = if self.udp_dtls_hs_tx_params.is_null() {
            HandshakeTimers::default()
        } else {
            // SAFETY: non-NULL, valid per the caller.
            let t =
                unsafe { arg_ref(self.udp_dtls_hs_tx_params, "config->udp_dtls_hs_tx_params") }?;
            let min = t.min.to_duration("udp_dtls_hs_tx_params->min")?;
            let max = t.max.to_duration("udp_dtls_hs_tx_params->max")?;
            if min < Duration::from_millis(1) || min > max || max.as_millis() > u128::from(u32::MAX)
            {
                return Err(Refusal::invalid(
                    "udp_dtls_hs_tx_params needs 1 ms <= min <= max < 2^32 ms",
                ));
            }
            HandshakeTimers { min, max }
        };
        // Engines are a later feature: refuse clearly rather than ignore the addresses.
        let engine_fields = [
            (
                "est_engine_key_address",
                self.est_engine_key_address.is_null(),
            ),
            (
                "est_engine_cert_address",
                self.est_engine_cert_address.is_null(),
            ),
            (
                "est_engine_cacerts_address_gen_cb",
                self.est_engine_cacerts_address_gen_cb.is_none(),
            ),
            (
                "est_engine_cacerts_address_gen_cb_arg",
                self.est_engine_cacerts_address_gen_cb_arg.is_null(),
            ),
        ];
        let set: Vec<&str> = engine_fields
            .iter()
            .filter(|(_, null)| !null)
            .map(|(name, _)| *name)
            .collect();
        if !set.is_empty() {
            return Err(Refusal::new(
                ESTUARY_ERR_NOT_SUPPORTED,
                format!(
                    "config->{} set, but hardware security engines are not in this build \
                     (leave the est_engine_* fields NULL for keys and certificates in memory)",
                    set.join(", config->")
                ),
            ));
        }
        if !self.lwm2m_version_config.is_null() {
            // SAFETY: non-NULL, valid per the caller.
            unsafe { arg_ref(self.lwm2m_version_config, "config->lwm2m_version_config") }?
                .check()?;
        }
        // SAFETY: forwarded from the caller.
        let mut trust_store_certs =
            unsafe { self.trust_store_certs.load("config->trust_store_certs") }?;
        // SAFETY: forwarded from the caller.
        unsafe {
            self.trust_store_crls
                .load_crls("config->trust_store_crls", &mut trust_store_certs)
        }?;
        let est_reenroll = if self.est_reenroll_config.is_null() {
            ReenrollConfig::default()
        } else {
            // SAFETY: non-NULL, valid per the caller.
            unsafe { arg_ref(self.est_reenroll_config, "config->est_reenroll_config") }?
                .to_config()?
        };
        let est_cacerts_policy = cacerts_policy(self.est_cacerts_policy)?;
        let client = ClientConfig {
            endpoint_name,
            in_buffer_size: or_default(self.in_buffer_size, ClientConfig::DEFAULT_IN_BUFFER_SIZE),
            out_buffer_size: or_default(
                self.out_buffer_size,
                ClientConfig::DEFAULT_OUT_BUFFER_SIZE,
            ),
            msg_cache_size: or_default(self.msg_cache_size, ClientConfig::DEFAULT_MSG_CACHE_SIZE),
            udp_tx_params,
            udp_dtls_hs_tx_params,
            trust_store_certs,
            confirmable_notifications: self.confirmable_notifications,
            est_reenroll,
            est_cacerts_policy,
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
            udp_dtls_hs_tx_params: std::ptr::null(),
            trust_store_certs: estuary_certificate_chain_info_t::EMPTY,
            confirmable_notifications: false,
            est_reenroll_config: std::ptr::null(),
            est_cacerts_policy: 0,
            trust_store_crls: estuary_certificate_chain_info_t::EMPTY,
            lwm2m_version_config: std::ptr::null(),
            est_engine_key_address: std::ptr::null(),
            est_engine_cert_address: std::ptr::null(),
            est_engine_cacerts_address_gen_cb: None,
            est_engine_cacerts_address_gen_cb_arg: std::ptr::null_mut(),
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

    #[test]
    fn ffi_dtls_timers_and_trust_store_are_loaded_and_checked() {
        let mut rng = crate::crypto::Drbg::from_seed(4);
        let ca = crate::crypto::CertificateIssuer::new_root_ca(
            crate::crypto::KeyPair::generate(&mut rng).unwrap(),
            "CN=trust",
            crate::time::UtcTime::from_unix_seconds(0),
            crate::time::UtcTime::from_unix_seconds(1 << 31),
            &mut rng,
        )
        .unwrap();
        let pem = ca.certificate().to_pem();
        let der = ca.certificate().der().to_vec();
        let dir = std::env::temp_dir().join(format!("estuary-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &pem).unwrap();
        std::fs::write(dir.join("README"), "not a certificate").unwrap();
        let file = std::ffi::CString::new(dir.join("ca.pem").to_str().unwrap()).unwrap();
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let missing = c"/nonexistent/estuary-ca.pem";

        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        let load = |c: &estuary_configuration_t| {
            // SAFETY: pointers to live locals and literals.
            unsafe { c.to_driver_config() }.map(|d| d.client)
        };
        for info in [
            estuary_certificate_chain_info_from_file(file.as_ptr()),
            estuary_certificate_chain_info_from_path(path.as_ptr()),
            estuary_certificate_chain_info_from_buffer(der.as_ptr().cast(), der.len()),
            estuary_certificate_chain_info_from_buffer(pem.as_ptr().cast(), pem.len()),
        ] {
            c.trust_store_certs = info;
            let client = load(&c).map_err(|r| r.message).unwrap();
            assert_eq!(
                client.trust_store_certs.certificates(),
                [ca.certificate().clone()]
            );
        }
        for bad in [
            estuary_certificate_chain_info_from_file(missing.as_ptr()),
            estuary_certificate_chain_info_from_buffer(b"junk".as_ptr().cast(), 4),
            estuary_certificate_chain_info_t {
                source: 9,
                ..estuary_certificate_chain_info_t::EMPTY
            },
        ] {
            c.trust_store_certs = bad;
            assert_eq!(
                load(&c).map_err(|r| r.code).err(),
                Some(ESTUARY_ERR_INVALID_ARGUMENT)
            );
        }
        // NULL names give the empty chain, which loads as no trust anchors.
        c.trust_store_certs = estuary_certificate_chain_info_from_file(std::ptr::null());
        assert!(load(&c).unwrap().trust_store_certs.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();

        let secs = |s| estuary_time_duration_t {
            seconds: s,
            nanoseconds: 0,
        };
        let timers = estuary_dtls_handshake_timeouts_t {
            min: secs(2),
            max: secs(8),
        };
        c.trust_store_certs = estuary_certificate_chain_info_t::EMPTY;
        c.udp_dtls_hs_tx_params = &timers;
        assert_eq!(
            load(&c).unwrap().udp_dtls_hs_tx_params,
            HandshakeTimers {
                min: Duration::from_secs(2),
                max: Duration::from_secs(8)
            }
        );
        let inverted = estuary_dtls_handshake_timeouts_t {
            min: secs(9),
            max: secs(8),
        };
        c.udp_dtls_hs_tx_params = &inverted;
        assert_eq!(
            load(&c).map_err(|r| r.code).err(),
            Some(ESTUARY_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn ffi_config_est_fields() {
        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        // SAFETY: all pointers are NULL or live locals.
        let d = unsafe { c.to_driver_config() }.map_err(|r| r.code).unwrap();
        assert_eq!(d.client.est_reenroll, ReenrollConfig::default());
        assert_eq!(
            d.client.est_cacerts_policy,
            CacertsPolicy::ForEstSecurityAndBootstrap
        );

        let re = estuary_est_reenroll_config_t {
            enable: true,
            nominal_usage: 0.8,
            max_margin: estuary_time_duration_t {
                seconds: 7 * 86_400,
                nanoseconds: 0,
            },
            sren_attempts_count: 3,
            rekey: true,
        };
        c.est_reenroll_config = &re;
        c.est_cacerts_policy = ESTUARY_EST_CACERTS_FOR_EST_SECURITY;
        // SAFETY: as above.
        let d = unsafe { c.to_driver_config() }.map_err(|r| r.code).unwrap();
        assert_eq!(
            d.client.est_reenroll.max_margin,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert!(d.client.est_reenroll.rekey);
        assert_eq!(d.client.est_reenroll.sren_attempts_count, 3);
        assert_eq!(d.client.est_cacerts_policy, CacertsPolicy::ForEstSecurity);

        // The seed's block (Anjay's struct has no sren_attempts_count) leaves it 0: default.
        let seed = estuary_est_reenroll_config_t {
            sren_attempts_count: 0,
            ..re
        };
        c.est_reenroll_config = &seed;
        // SAFETY: as above.
        let d = unsafe { c.to_driver_config() }.map_err(|r| r.code).unwrap();
        assert_eq!(
            d.client.est_reenroll.sren_attempts_count,
            ReenrollConfig::default().sren_attempts_count
        );

        // A zero or negative margin means "no limit"; a broken duration is refused.
        let mut no_limit = re;
        no_limit.max_margin.seconds = -5;
        c.est_reenroll_config = &no_limit;
        // SAFETY: as above.
        let d = unsafe { c.to_driver_config() }.map_err(|r| r.code).unwrap();
        assert_eq!(d.client.est_reenroll.max_margin, None);
        let mut broken = re;
        broken.max_margin.nanoseconds = -1;
        c.est_reenroll_config = &broken;
        // SAFETY: as above.
        assert_eq!(
            unsafe { c.to_driver_config() }
                .map(|_| ())
                .map_err(|r| r.code),
            Err(ESTUARY_ERR_INVALID_ARGUMENT)
        );
        c.est_reenroll_config = std::ptr::null();
        c.est_cacerts_policy = 6;
        // SAFETY: as above.
        assert_eq!(
            unsafe { c.to_driver_config() }
                .map(|_| ())
                .map_err(|r| r.code),
            Err(ESTUARY_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn ffi_engine_addresses_are_refused_not_ignored() {
        unsafe extern "C" fn gen(_: *mut c_void, _: *const c_void, _: usize) -> *const c_char {
            std::ptr::null()
        }
        let mut buf = [0u8; 8];
        let base = {
            let mut c = zeroed();
            c.endpoint_name = c"dev".as_ptr();
            c
        };
        let key = c"pkcs11:token=MyToken;object=EstClientKey;pin-value=1234";
        let variants: [(&str, estuary_configuration_t); 4] = [
            (
                "est_engine_key_address",
                estuary_configuration_t {
                    est_engine_key_address: key.as_ptr(),
                    ..base
                },
            ),
            (
                "est_engine_cert_address",
                estuary_configuration_t {
                    est_engine_cert_address: key.as_ptr(),
                    ..base
                },
            ),
            (
                "est_engine_cacerts_address_gen_cb",
                estuary_configuration_t {
                    est_engine_cacerts_address_gen_cb: Some(gen),
                    ..base
                },
            ),
            (
                "est_engine_cacerts_address_gen_cb_arg",
                estuary_configuration_t {
                    est_engine_cacerts_address_gen_cb_arg: buf.as_mut_ptr().cast(),
                    ..base
                },
            ),
        ];
        for (field, c) in variants {
            // SAFETY: pointers to live locals and literals.
            let r = unsafe { c.to_driver_config() }.map(|_| ());
            let Err(refusal) = r else {
                panic!("{field} was accepted")
            };
            assert_eq!(refusal.code, ESTUARY_ERR_NOT_SUPPORTED, "{field}");
            assert!(
                refusal.message.contains(field)
                    && refusal.message.contains("engines are not in this build"),
                "{}",
                refusal.message
            );
        }
    }

    #[test]
    fn ffi_lwm2m_version_range_must_include_1_1() {
        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        let v = |min, max| estuary_lwm2m_version_config_t {
            minimum_version: min,
            maximum_version: max,
        };
        let (v10, v11, v12) = (
            ESTUARY_LWM2M_VERSION_1_0,
            ESTUARY_LWM2M_VERSION_1_1,
            ESTUARY_LWM2M_VERSION_1_2,
        );
        for (range, expected) in [
            (v(v10, v11), Ok(())),
            (v(v11, v11), Ok(())),
            (v(v10, v12), Ok(())),
            (v(v10, v10), Err(ESTUARY_ERR_NOT_SUPPORTED)),
            (v(v12, v12), Err(ESTUARY_ERR_NOT_SUPPORTED)),
            (v(v12, v10), Err(ESTUARY_ERR_INVALID_ARGUMENT)),
            (v(v10, 3), Err(ESTUARY_ERR_INVALID_ARGUMENT)),
            (v(-1, v11), Err(ESTUARY_ERR_INVALID_ARGUMENT)),
        ] {
            c.lwm2m_version_config = &range;
            // SAFETY: pointers to live locals and literals.
            let got = unsafe { c.to_driver_config() }
                .map(|_| ())
                .map_err(|r| r.code);
            assert_eq!(got, expected, "{range:?}");
        }
    }

    #[test]
    fn ffi_trust_store_crls_are_loaded_into_the_trust_store() {
        let mut rng = crate::crypto::Drbg::from_seed(5);
        let ca = crate::crypto::CertificateIssuer::new_root_ca(
            crate::crypto::KeyPair::generate(&mut rng).unwrap(),
            "CN=trust",
            crate::time::UtcTime::from_unix_seconds(0),
            crate::time::UtcTime::from_unix_seconds(1 << 31),
            &mut rng,
        )
        .unwrap();
        let pem = ca.certificate().to_pem();
        // A CRL made by OpenSSL (see crypto::trust's tests), as PEM.
        let crl = "-----BEGIN X509 CRL-----\n\
MIHEMGwCAQEwCgYIKoZIzj0EAwIwFjEUMBIGA1UEAwwLQ1JMIFRlc3QgQ0EXDTI2\n\
MTEyMzExMzA0NloYDzIxMjYxMDMwMTEzMDQ2WjAjMCECAhABFw0yNjExMjMxMTMw\n\
NDZaMAwwCgYDVR0VBAMKAQEwCgYIKoZIzj0EAwIDSAAwRQIhAOc5JAqJ+IfvUxTO\n\
miQO+fipzdhw6kKiphNwS99DuyZaAiB0tKFNgStb02paB1MbHKxN4wNeUMhwvFjY\n\
4a0t3omC8A==\n\
-----END X509 CRL-----\n";
        let dir = std::env::temp_dir().join(format!("estuary-crls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.crl"), crl).unwrap();
        std::fs::write(dir.join("ca.pem"), &pem).unwrap();
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let file = std::ffi::CString::new(dir.join("a.crl").to_str().unwrap()).unwrap();

        let mut c = zeroed();
        c.endpoint_name = c"dev".as_ptr();
        c.trust_store_certs =
            estuary_certificate_chain_info_from_buffer(pem.as_ptr().cast(), pem.len());
        let load = |c: &estuary_configuration_t| {
            // SAFETY: pointers to live locals and literals.
            unsafe { c.to_driver_config() }.map(|d| d.client.trust_store_certs)
        };
        assert_eq!(load(&c).map(|t| t.crl_count()).ok(), Some(0));
        for info in [
            estuary_cert_revocation_list_info_from_buffer(crl.as_ptr().cast(), crl.len()),
            estuary_cert_revocation_list_info_from_file(file.as_ptr()),
            // The directory also holds a certificate, which is skipped.
            estuary_cert_revocation_list_info_from_path(path.as_ptr()),
        ] {
            c.trust_store_crls = info;
            let store = load(&c).map_err(|r| r.message).unwrap();
            assert_eq!((store.len(), store.crl_count()), (1, 1));
        }
        // A certificate where a CRL is expected, and a directory without CRLs, are refused.
        c.trust_store_crls =
            estuary_cert_revocation_list_info_from_buffer(pem.as_ptr().cast(), pem.len());
        assert_eq!(
            load(&c).map(|_| ()).map_err(|r| r.code),
            Err(ESTUARY_ERR_INVALID_ARGUMENT)
        );
        std::fs::remove_file(dir.join("a.crl")).unwrap();
        c.trust_store_crls = estuary_cert_revocation_list_info_from_path(path.as_ptr());
        let err = load(&c).map(|_| ()).map_err(|r| r.message.into_owned());
        assert!(
            err.as_ref()
                .is_err_and(|m| m.contains("no CRL in directory")),
            "{err:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
