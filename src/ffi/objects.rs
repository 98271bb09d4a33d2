//! The built-in objects from C: Security (/0) and Server (/1) instances in Anjay's struct
//! shapes, and the Device object (/3) identity plus the reboot callback.
//!
//! An instance is converted and validated completely before anything is stored: a refused
//! instance leaves the object as it was. The objects can be changed until the event loop
//! starts (changing them while the client runs comes with bootstrap).

use std::ffi::{c_char, c_int, c_void};

use super::error::{ESTUARY_ERR_NOT_SUPPORTED, ESTUARY_ERR_STATE};
use super::lifecycle::{default_event_handler, estuary_t, with_estuary, Inner, RebootCallback};
use super::{arg_mut, arg_ref, bytes_arg, ffi_boundary, opt_str_arg, str_arg, Refusal};
use crate::dm::objects::{SecurityInstance, SecurityMode, ServerInstance};
use crate::Error;

/// An Object Instance ID.
pub type estuary_iid_t = u16;
/// A Short Server ID (1 to 65534).
pub type estuary_ssid_t = u16;

/// "No ID": as the input of an *_add_instance() call, "choose the lowest free ID".
pub const ESTUARY_ID_INVALID: estuary_iid_t = 65535;
/// For estuary_schedule_registration_update(): every server.
pub const ESTUARY_SSID_ANY: estuary_ssid_t = 65535;

/// Security Mode (resource /0/x/2): one of the ESTUARY_SECURITY_* constants.
pub type estuary_security_mode_t = c_int;
/// Pre-Shared Key mode.
pub const ESTUARY_SECURITY_PSK: estuary_security_mode_t = 0;
/// Raw Public Key mode.
pub const ESTUARY_SECURITY_RPK: estuary_security_mode_t = 1;
/// Certificate mode.
pub const ESTUARY_SECURITY_CERTIFICATE: estuary_security_mode_t = 2;
/// No security (plain CoAP).
pub const ESTUARY_SECURITY_NOSEC: estuary_security_mode_t = 3;
/// Certificate mode with EST: the certificate is enrolled over EST-coaps.
pub const ESTUARY_SECURITY_EST: estuary_security_mode_t = 4;

/// One Security object instance: how to reach one server and how to authenticate.
/// Strings and buffers are copied by estuary_security_object_add_instance().
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_security_instance_t {
    /// Short Server ID (1 to 65534) of a management server; ignored for the bootstrap
    /// server. Must match the `ssid` of a Server object instance.
    pub ssid: estuary_ssid_t,
    /// Server URI, `coap://host[:port]` or `coaps://host[:port]`. Required.
    pub server_uri: *const c_char,
    /// True for the LwM2M Bootstrap-Server account (at most one).
    pub bootstrap_server: bool,
    /// One of the ESTUARY_SECURITY_* modes.
    pub security_mode: estuary_security_mode_t,
    /// Client Hold Off Time in seconds (bootstrap account only; negative = absent).
    pub client_holdoff_s: i32,
    /// Bootstrap-Server Account Timeout in seconds (bootstrap account only; negative =
    /// absent).
    pub bootstrap_timeout_s: i32,
    /// PSK identity (PSK mode), or the client certificate, DER or PEM (Certificate mode).
    /// NULL with size 0 = empty.
    pub public_cert_or_psk_identity: *const u8,
    /// Size in bytes of public_cert_or_psk_identity.
    pub public_cert_or_psk_identity_size: usize,
    /// PSK key, 1 to 32 bytes (PSK mode), or the client's private key, DER or PEM
    /// (Certificate mode). NULL with size 0 = empty.
    pub private_cert_or_psk_key: *const u8,
    /// Size in bytes of private_cert_or_psk_key.
    pub private_cert_or_psk_key_size: usize,
    /// Certificate mode: the server's certificate or trust anchor, DER or PEM, as
    /// certificate_usage says. NULL with size 0 = empty.
    pub server_public_key: *const u8,
    /// Size in bytes of server_public_key.
    pub server_public_key_size: usize,
    /// Server Name Indication (/0/x/14): the name sent in the handshake and required in the
    /// server certificate. NULL (default): the host of server_uri.
    pub server_name_indication: *const c_char,
    /// Certificate Usage (/0/x/15, RFC 6698): points at 0 (CA constraint: the chain passes
    /// through the CA in server_public_key and ends at trust_store_certs), 1 (service
    /// certificate: the server's certificate is server_public_key and chains to
    /// trust_store_certs), 2 (trust anchor: server_public_key is the CA to chain to) or 3
    /// (domain-issued: the server's certificate is server_public_key). NULL (default): 3.
    pub certificate_usage: *const u8,
}

/// One Server object instance: registration parameters for one management server.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_server_instance_t {
    /// Short Server ID (1 to 65534), the same as in the server's Security instance.
    pub ssid: estuary_ssid_t,
    /// Registration lifetime in seconds; more than 0.
    pub lifetime: i32,
    /// Default Minimum Period in seconds; negative = absent.
    pub default_min_period: i32,
    /// Default Maximum Period in seconds; negative = absent.
    pub default_max_period: i32,
    /// Disable Timeout in seconds; negative = absent (use -1, as in Anjay).
    pub disable_timeout: i32,
    /// Binding: letters from "UTSNQ". NULL = "U" (UDP).
    pub binding: *const c_char,
    /// Notification Storing When Disabled or Offline.
    pub notification_storing: bool,
}

/// The Device object's identity and the reboot hook. NULL strings are reported as empty.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct estuary_device_object_config_t {
    /// Manufacturer (/3/0/0).
    pub manufacturer: *const c_char,
    /// Model Number (/3/0/1).
    pub model_number: *const c_char,
    /// Serial Number (/3/0/2).
    pub serial_number: *const c_char,
    /// Firmware Version (/3/0/3).
    pub firmware_version: *const c_char,
    /// Called with reboot_cb_arg, from inside estuary_event_loop_run(), when a server
    /// executes Reboot (/3/0/4). Typically it records the request and calls
    /// estuary_event_loop_interrupt(); other Estuary calls from inside it return
    /// ESTUARY_ERR_BUSY. NULL: the request is only logged.
    pub reboot_cb: Option<unsafe extern "C" fn(arg: *mut c_void)>,
    /// Passed to reboot_cb.
    pub reboot_cb_arg: *mut c_void,
}

fn check_changeable(inner: &Inner, installed: bool, object: &str) -> Result<(), Refusal> {
    if !installed {
        return Err(Refusal::new(
            ESTUARY_ERR_STATE,
            format!("the {object} object is not installed; call estuary_{object}_object_install() first"),
        ));
    }
    if inner.driver.is_started() {
        return Err(Refusal::new(
            ESTUARY_ERR_NOT_SUPPORTED,
            format!("the {object} object cannot be changed once the event loop has started"),
        ));
    }
    Ok(())
}

/// The requested instance ID: `None` for ESTUARY_ID_INVALID (choose one).
fn requested_iid(iid: estuary_iid_t) -> Option<u16> {
    (iid != ESTUARY_ID_INVALID).then_some(iid)
}

impl estuary_security_instance_t {
    /// # Safety
    /// The pointers must be NULL or valid as documented on the fields.
    unsafe fn to_instance(self) -> Result<SecurityInstance, Refusal> {
        // SAFETY (all blocks): forwarded from the caller.
        let uri = unsafe { str_arg(self.server_uri, "instance->server_uri") }?;
        let mode = SecurityMode::from_i64(i64::from(self.security_mode)).ok_or_else(|| {
            Refusal::invalid(format!(
                "instance->security_mode {} is not an ESTUARY_SECURITY_* value",
                self.security_mode
            ))
        })?;
        if mode == SecurityMode::Rpk {
            return Err(Refusal::new(
                ESTUARY_ERR_NOT_SUPPORTED,
                "security mode ESTUARY_SECURITY_RPK (raw public keys) is not supported; use PSK, \
                 Certificate or NoSec",
            ));
        }
        let identity = unsafe {
            bytes_arg(
                self.public_cert_or_psk_identity,
                self.public_cert_or_psk_identity_size,
                "instance->public_cert_or_psk_identity",
            )
        }?;
        let key = unsafe {
            bytes_arg(
                self.private_cert_or_psk_key,
                self.private_cert_or_psk_key_size,
                "instance->private_cert_or_psk_key",
            )
        }?;
        let server_key = unsafe {
            bytes_arg(
                self.server_public_key,
                self.server_public_key_size,
                "instance->server_public_key",
            )
        }?;
        let bootstrap_only = |v: i32| (self.bootstrap_server && v >= 0).then_some(i64::from(v));
        let mut inst = SecurityInstance::nosec(&uri, self.ssid);
        inst.bootstrap_server = self.bootstrap_server;
        inst.security_mode = mode;
        inst.public_cert_or_psk_identity = identity;
        inst.private_cert_or_psk_key = key;
        inst.server_public_key = server_key;
        inst.ssid = (!self.bootstrap_server).then_some(self.ssid);
        inst.client_holdoff_time = bootstrap_only(self.client_holdoff_s);
        inst.bootstrap_server_account_timeout = bootstrap_only(self.bootstrap_timeout_s);
        inst.server_name_indication = unsafe {
            opt_str_arg(
                self.server_name_indication,
                "instance->server_name_indication",
            )
        }?;
        if !self.certificate_usage.is_null() {
            let usage = *unsafe { arg_ref(self.certificate_usage, "instance->certificate_usage") }?;
            if usage > 3 {
                return Err(Refusal::invalid(format!(
                    "instance->certificate_usage {usage} is not 0 to 3"
                )));
            }
            inst.certificate_usage = Some(usage);
        }
        Ok(inst)
    }
}

impl estuary_server_instance_t {
    /// # Safety
    /// `binding` must be NULL or a valid string.
    unsafe fn to_instance(self) -> Result<ServerInstance, Refusal> {
        // SAFETY: forwarded from the caller.
        let binding = unsafe { opt_str_arg(self.binding, "instance->binding") }?;
        let present = |v: i32| (v >= 0).then_some(i64::from(v));
        let mut inst = ServerInstance::new(self.ssid, i64::from(self.lifetime));
        inst.default_min_period = present(self.default_min_period);
        inst.default_max_period = present(self.default_max_period);
        inst.disable_timeout = present(self.disable_timeout);
        inst.notification_storing = self.notification_storing;
        if let Some(b) = binding {
            inst.binding = b;
        }
        Ok(inst)
    }
}

/// The body of the *_add_instance() exports: `insert` checks, converts and stores `instance`
/// at the requested (or lowest free) ID; the ID used is written only on success.
///
/// # Safety
/// Pointers NULL or valid, as the exports document.
unsafe fn add_instance<C: Copy>(
    estuary: *mut estuary_t,
    instance: *const C,
    inout_iid: *mut estuary_iid_t,
    insert: impl FnOnce(&mut Inner, Option<u16>, C) -> Result<u16, Refusal>,
) -> Result<c_int, Refusal> {
    // SAFETY (all blocks): valid or NULL pointers per the C caller.
    let instance = unsafe { arg_ref(instance, "instance") }?;
    let iid_slot = unsafe { arg_mut(inout_iid, "inout_iid") }?;
    unsafe {
        with_estuary(estuary, |inner| {
            *iid_slot = insert(inner, requested_iid(*iid_slot), *instance)?;
            Ok(0)
        })
    }
}

/// Installs the Security object (/0), empty. Calling it again does nothing. Returns 0.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_install(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                inner.security_installed = true;
                Ok(0)
            })
        }
    })
}

/// Adds a Security instance, copied from `instance`. `*inout_iid` is the instance ID to use,
/// or ESTUARY_ID_INVALID to take the lowest free one; on success it receives the ID used.
/// Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT (a NULL argument, `server_uri`, or buffer with a
/// non-zero size), ESTUARY_ERR_INVALID_ARGUMENT (malformed URI, unknown security mode, SSID
/// 0 or 65535 for a management server, a second bootstrap account, invalid UTF-8),
/// ESTUARY_ERR_ALREADY_EXISTS (the instance ID or SSID is taken), ESTUARY_ERR_STATE (object
/// not installed), ESTUARY_ERR_NOT_SUPPORTED (the event loop has started). On failure
/// nothing is stored and `*inout_iid` is unchanged.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_add_instance(
    estuary: *mut estuary_t,
    instance: *const estuary_security_instance_t,
    inout_iid: *mut estuary_iid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller; covers the conversion in the closure.
        unsafe {
            add_instance(estuary, instance, inout_iid, |inner, iid, c| {
                check_changeable(inner, inner.security_installed, "security")?;
                // The struct's pointers are valid or NULL per the C caller.
                let inst = c.to_instance()?;
                let objects = inner.driver.client_mut().data_model_mut();
                Ok(objects.security.insert_at(iid, inst).map_err(Error::from)?)
            })
        }
    })
}

/// Removes every Security instance. Returns 0, ESTUARY_ERR_STATE if the object is not
/// installed, or ESTUARY_ERR_NOT_SUPPORTED once the event loop has started.
#[no_mangle]
pub unsafe extern "C" fn estuary_security_object_purge(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                check_changeable(inner, inner.security_installed, "security")?;
                inner.driver.client_mut().data_model_mut().security.purge();
                Ok(0)
            })
        }
    })
}

/// Installs the Server object (/1), empty. Calling it again does nothing. Returns 0.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_install(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                inner.server_installed = true;
                Ok(0)
            })
        }
    })
}

/// Adds a Server instance, copied from `instance`; `inout_iid` as for
/// estuary_security_object_add_instance(). Returns 0, or: ESTUARY_ERR_NULL_ARGUMENT,
/// ESTUARY_ERR_INVALID_ARGUMENT (SSID 0 or 65535, lifetime not positive, binding not made
/// of U, T, S, N, Q, invalid UTF-8), ESTUARY_ERR_ALREADY_EXISTS (instance ID or SSID
/// taken), ESTUARY_ERR_STATE (object not installed), ESTUARY_ERR_NOT_SUPPORTED (the event
/// loop has started). On failure nothing is stored and `*inout_iid` is unchanged.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_add_instance(
    estuary: *mut estuary_t,
    instance: *const estuary_server_instance_t,
    inout_iid: *mut estuary_iid_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller; covers the conversion in the closure.
        unsafe {
            add_instance(estuary, instance, inout_iid, |inner, iid, c| {
                check_changeable(inner, inner.server_installed, "server")?;
                // The struct's pointers are valid or NULL per the C caller.
                let inst = c.to_instance()?;
                let objects = inner.driver.client_mut().data_model_mut();
                Ok(objects.server.insert_at(iid, inst).map_err(Error::from)?)
            })
        }
    })
}

/// Removes every Server instance. Returns 0, ESTUARY_ERR_STATE if the object is not
/// installed, or ESTUARY_ERR_NOT_SUPPORTED once the event loop has started.
#[no_mangle]
pub unsafe extern "C" fn estuary_server_object_purge(estuary: *mut estuary_t) -> c_int {
    ffi_boundary!({
        // SAFETY: a handle from estuary_new() per the C caller.
        unsafe {
            with_estuary(estuary, |inner| {
                check_changeable(inner, inner.server_installed, "server")?;
                inner.driver.client_mut().data_model_mut().server.purge();
                Ok(0)
            })
        }
    })
}

/// Installs the Device object (/3) with the identity strings and reboot callback of
/// `config` (copied). Calling it again replaces them. Returns 0, ESTUARY_ERR_NULL_ARGUMENT,
/// or ESTUARY_ERR_INVALID_ARGUMENT for a string that is not valid UTF-8 (nothing changes).
#[no_mangle]
pub unsafe extern "C" fn estuary_device_object_install(
    estuary: *mut estuary_t,
    config: *const estuary_device_object_config_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY (all blocks): valid or NULL pointers per the C caller.
        let config = unsafe { arg_ref(config, "config") }?;
        let text = |p, what| unsafe { opt_str_arg(p, what) }.map(Option::unwrap_or_default);
        let manufacturer = text(config.manufacturer, "config->manufacturer")?;
        let model_number = text(config.model_number, "config->model_number")?;
        let serial_number = text(config.serial_number, "config->serial_number")?;
        let firmware_version = text(config.firmware_version, "config->firmware_version")?;
        let handler = match config.reboot_cb {
            Some(cb) => RebootCallback {
                cb,
                arg: config.reboot_cb_arg,
            }
            .into_event_handler(),
            None => default_event_handler(),
        };
        unsafe {
            with_estuary(estuary, |inner| {
                let device = &mut inner.driver.client_mut().data_model_mut().device;
                device.manufacturer = manufacturer;
                device.model_number = model_number;
                device.serial_number = serial_number;
                device.firmware_version = firmware_version;
                inner.driver.set_event_handler(Some(handler));
                Ok(0)
            })
        }
    })
}
