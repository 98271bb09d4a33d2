//! The `ESTUARY_ERR_*` codes and the one mapping from the crate's errors to them.
//!
//! Two ranges that cannot overlap: SDK errors are -1 to -99; errors that stand for a CoAP
//! response are the negated code `-(class * 32 + detail)`, so -128 (4.00) to -191 (5.31).
//! A firmware object handler (later) returns the latter and the response code follows.

use std::ffi::{c_char, c_int, CStr};

use super::ffi_boundary;
use crate::dm::objects::InstanceError;
use crate::dm::DmError;
use crate::Error;

/// A required pointer argument, or a required pointer field of a struct, was NULL.
pub const ESTUARY_ERR_NULL_ARGUMENT: c_int = -1;
/// An argument has a value outside its documented range (including strings that are not
/// valid UTF-8 and malformed URIs).
pub const ESTUARY_ERR_INVALID_ARGUMENT: c_int = -2;
/// The configuration passed to estuary_new(), or the objects installed, cannot work.
pub const ESTUARY_ERR_CONFIG: c_int = -3;
/// An operating-system or network operation failed.
pub const ESTUARY_ERR_IO: c_int = -4;
/// A bug in Estuary (a caught panic); the details are in the log. The client handle
/// refuses further calls with this code, except estuary_delete().
pub const ESTUARY_ERR_INTERNAL: c_int = -5;
/// The feature or the combination of values is not supported (yet).
pub const ESTUARY_ERR_NOT_SUPPORTED: c_int = -6;
/// The client is in use: the call was made from inside one of its callbacks, or from a
/// second thread while another call on the same client was running.
pub const ESTUARY_ERR_BUSY: c_int = -7;
/// The call is not valid in the client's current state, e.g. adding an instance to an
/// object that was not installed, or asking for an Update before the event loop started.
pub const ESTUARY_ERR_STATE: c_int = -8;
/// The instance ID, or the Short Server ID, is already used by another instance.
pub const ESTUARY_ERR_ALREADY_EXISTS: c_int = -9;
/// No room left, e.g. no free instance ID.
pub const ESTUARY_ERR_NO_SPACE: c_int = -10;

/// CoAP 4.00 Bad Request.
pub const ESTUARY_ERR_BAD_REQUEST: c_int = -128;
/// CoAP 4.01 Unauthorized.
pub const ESTUARY_ERR_UNAUTHORIZED: c_int = -129;
/// CoAP 4.02 Bad Option.
pub const ESTUARY_ERR_BAD_OPTION: c_int = -130;
/// CoAP 4.03 Forbidden.
pub const ESTUARY_ERR_FORBIDDEN: c_int = -131;
/// CoAP 4.04 Not Found.
pub const ESTUARY_ERR_NOT_FOUND: c_int = -132;
/// CoAP 4.05 Method Not Allowed.
pub const ESTUARY_ERR_METHOD_NOT_ALLOWED: c_int = -133;
/// CoAP 4.06 Not Acceptable.
pub const ESTUARY_ERR_NOT_ACCEPTABLE: c_int = -134;
/// CoAP 4.08 Request Entity Incomplete.
pub const ESTUARY_ERR_REQUEST_ENTITY_INCOMPLETE: c_int = -136;
/// CoAP 4.12 Precondition Failed.
pub const ESTUARY_ERR_PRECONDITION_FAILED: c_int = -140;
/// CoAP 4.13 Request Entity Too Large.
pub const ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE: c_int = -141;
/// CoAP 4.15 Unsupported Content-Format.
pub const ESTUARY_ERR_UNSUPPORTED_CONTENT_FORMAT: c_int = -143;
/// CoAP 5.00 Internal Server Error (named so as not to clash with ESTUARY_ERR_INTERNAL,
/// which a handler may also return; both answer 5.00).
pub const ESTUARY_ERR_INTERNAL_SERVER_ERROR: c_int = -160;
/// CoAP 5.01 Not Implemented.
pub const ESTUARY_ERR_NOT_IMPLEMENTED: c_int = -161;
/// CoAP 5.03 Service Unavailable.
pub const ESTUARY_ERR_SERVICE_UNAVAILABLE: c_int = -163;

const NAMES: &[(c_int, &CStr)] = &[
    (0, c"OK"),
    (ESTUARY_ERR_NULL_ARGUMENT, c"ESTUARY_ERR_NULL_ARGUMENT"),
    (
        ESTUARY_ERR_INVALID_ARGUMENT,
        c"ESTUARY_ERR_INVALID_ARGUMENT",
    ),
    (ESTUARY_ERR_CONFIG, c"ESTUARY_ERR_CONFIG"),
    (ESTUARY_ERR_IO, c"ESTUARY_ERR_IO"),
    (ESTUARY_ERR_INTERNAL, c"ESTUARY_ERR_INTERNAL"),
    (ESTUARY_ERR_NOT_SUPPORTED, c"ESTUARY_ERR_NOT_SUPPORTED"),
    (ESTUARY_ERR_BUSY, c"ESTUARY_ERR_BUSY"),
    (ESTUARY_ERR_STATE, c"ESTUARY_ERR_STATE"),
    (ESTUARY_ERR_ALREADY_EXISTS, c"ESTUARY_ERR_ALREADY_EXISTS"),
    (ESTUARY_ERR_NO_SPACE, c"ESTUARY_ERR_NO_SPACE"),
    (ESTUARY_ERR_BAD_REQUEST, c"ESTUARY_ERR_BAD_REQUEST"),
    (ESTUARY_ERR_UNAUTHORIZED, c"ESTUARY_ERR_UNAUTHORIZED"),
    (ESTUARY_ERR_BAD_OPTION, c"ESTUARY_ERR_BAD_OPTION"),
    (ESTUARY_ERR_FORBIDDEN, c"ESTUARY_ERR_FORBIDDEN"),
    (ESTUARY_ERR_NOT_FOUND, c"ESTUARY_ERR_NOT_FOUND"),
    (
        ESTUARY_ERR_METHOD_NOT_ALLOWED,
        c"ESTUARY_ERR_METHOD_NOT_ALLOWED",
    ),
    (ESTUARY_ERR_NOT_ACCEPTABLE, c"ESTUARY_ERR_NOT_ACCEPTABLE"),
    (
        ESTUARY_ERR_REQUEST_ENTITY_INCOMPLETE,
        c"ESTUARY_ERR_REQUEST_ENTITY_INCOMPLETE",
    ),
    (
        ESTUARY_ERR_PRECONDITION_FAILED,
        c"ESTUARY_ERR_PRECONDITION_FAILED",
    ),
    (
        ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE,
        c"ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE",
    ),
    (
        ESTUARY_ERR_UNSUPPORTED_CONTENT_FORMAT,
        c"ESTUARY_ERR_UNSUPPORTED_CONTENT_FORMAT",
    ),
    (
        ESTUARY_ERR_INTERNAL_SERVER_ERROR,
        c"ESTUARY_ERR_INTERNAL_SERVER_ERROR",
    ),
    (ESTUARY_ERR_NOT_IMPLEMENTED, c"ESTUARY_ERR_NOT_IMPLEMENTED"),
    (
        ESTUARY_ERR_SERVICE_UNAVAILABLE,
        c"ESTUARY_ERR_SERVICE_UNAVAILABLE",
    ),
];

/// The name of a result code, e.g. "ESTUARY_ERR_NOT_FOUND" for -132, "OK" for 0, or
/// "unknown" for a value that is not an Estuary code. The string is static: do not free it.
#[no_mangle]
pub extern "C" fn estuary_error_name(code: c_int) -> *const c_char {
    ffi_boundary!({
        Ok(NAMES
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(c"unknown", |(_, n)| *n)
            .as_ptr())
    })
}

/// The code for a CoAP response code byte (`class << 5 | detail`).
pub(crate) fn of_coap(code: u8) -> c_int {
    -c_int::from(code)
}

pub(crate) fn of_dm(e: DmError) -> c_int {
    of_coap(e.coap_code())
}

pub(crate) fn of_instance(e: &InstanceError) -> c_int {
    match e {
        InstanceError::IdTaken(_) | InstanceError::SsidTaken(_) => ESTUARY_ERR_ALREADY_EXISTS,
        InstanceError::Invalid(_) => ESTUARY_ERR_INVALID_ARGUMENT,
        InstanceError::Full => ESTUARY_ERR_NO_SPACE,
    }
}

/// The code a crate error is reported with.
pub(crate) fn code_of(e: &Error) -> c_int {
    match e {
        Error::Config(_) => ESTUARY_ERR_CONFIG,
        Error::InvalidArgument(_) | Error::Uri(_) => ESTUARY_ERR_INVALID_ARGUMENT,
        Error::Exchange(_) | Error::Io(_) => ESTUARY_ERR_IO,
        Error::DataModel(d) => of_dm(*d),
        Error::Instance(i) => of_instance(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffi_coap_codes_are_negated_class_and_detail() {
        use crate::coap::code;
        assert_eq!(of_coap(code::BAD_REQUEST), ESTUARY_ERR_BAD_REQUEST);
        assert_eq!(of_coap(code::UNAUTHORIZED), ESTUARY_ERR_UNAUTHORIZED);
        assert_eq!(of_coap(code::BAD_OPTION), ESTUARY_ERR_BAD_OPTION);
        assert_eq!(of_coap(code::FORBIDDEN), ESTUARY_ERR_FORBIDDEN);
        assert_eq!(of_dm(DmError::NotFound), ESTUARY_ERR_NOT_FOUND);
        assert_eq!(
            of_dm(DmError::MethodNotAllowed),
            ESTUARY_ERR_METHOD_NOT_ALLOWED
        );
        assert_eq!(of_dm(DmError::NotAcceptable), ESTUARY_ERR_NOT_ACCEPTABLE);
        assert_eq!(
            of_coap(code::REQUEST_ENTITY_INCOMPLETE),
            ESTUARY_ERR_REQUEST_ENTITY_INCOMPLETE
        );
        assert_eq!(
            of_coap(code::PRECONDITION_FAILED),
            ESTUARY_ERR_PRECONDITION_FAILED
        );
        assert_eq!(
            of_coap(code::REQUEST_ENTITY_TOO_LARGE),
            ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE
        );
        assert_eq!(
            of_dm(DmError::UnsupportedContentFormat),
            ESTUARY_ERR_UNSUPPORTED_CONTENT_FORMAT
        );
        assert_eq!(of_dm(DmError::Internal), ESTUARY_ERR_INTERNAL_SERVER_ERROR);
        assert_eq!(of_coap(code::NOT_IMPLEMENTED), ESTUARY_ERR_NOT_IMPLEMENTED);
        assert_eq!(
            of_coap(code::SERVICE_UNAVAILABLE),
            ESTUARY_ERR_SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn ffi_codes_are_distinct_and_named() {
        let mut codes: Vec<c_int> = NAMES.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), NAMES.len());
        assert!(codes
            .iter()
            .all(|c| *c == 0 || (-99..=-1).contains(c) || (-191..=-128).contains(c)));
        // SAFETY: estuary_error_name returns static NUL-terminated strings.
        let name = |c| unsafe { CStr::from_ptr(estuary_error_name(c)) };
        assert_eq!(name(-132), c"ESTUARY_ERR_NOT_FOUND");
        assert_eq!(name(12345), c"unknown");
    }
}
