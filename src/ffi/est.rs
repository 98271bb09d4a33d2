//! The read-only EST status call (SPEC 7.5): what the enrolled certificate is, when it was
//! provisioned, and when it will be renewed, for the firmware's diagnostics.

use std::ffi::{c_char, c_int};

use super::lifecycle::{estuary_t, with_estuary};
use super::{arg_mut, ffi_boundary};

/// The EST credential as estuary_est_status_get() reports it. Times are Unix seconds (UTC);
/// the certificate fields are zero or empty when `enrolled` is false.
#[repr(C)]
pub struct estuary_est_status_t {
    /// A key pair and its certificate are installed.
    pub enrolled: bool,
    /// The certificate's subject, e.g. "CN=dev1"; NUL-terminated, cut with "..." if longer.
    pub subject: [c_char; 256],
    /// The certificate's serial number in hex; NUL-terminated.
    pub serial: [c_char; 64],
    /// The certificate's notBefore.
    pub not_before: i64,
    /// The certificate's notAfter.
    pub not_after: i64,
    /// When the certificate was installed (the start of the re-enrollment schedule).
    pub provisioned_at: i64,
    /// A re-enrollment (/est/sren) is scheduled.
    pub reenrollment_scheduled: bool,
    /// When the next re-enrollment attempt is due; valid when `reenrollment_scheduled`.
    pub next_reenrollment: i64,
    /// A bootstrap or EST exchange is in flight.
    pub operation_in_progress: bool,
}

/// Copies `s` into `out` NUL-terminated; a string that does not fit is cut at a character
/// boundary and ends in "...".
fn copy_c_string(s: &str, out: &mut [c_char]) {
    let room = out.len() - 1;
    let text = if s.len() <= room {
        s.to_string()
    } else {
        let mut cut = room - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    };
    for (o, b) in out.iter_mut().zip(text.bytes().chain(std::iter::repeat(0))) {
        *o = b as c_char;
    }
}

/// Fills `*out_status` with the current EST credential, its schedule and whether an EST
/// exchange is in flight. Returns 0, or ESTUARY_ERR_NULL_ARGUMENT (with `*out_status`
/// untouched) for a NULL argument.
#[no_mangle]
pub unsafe extern "C" fn estuary_est_status_get(
    estuary: *mut estuary_t,
    out_status: *mut estuary_est_status_t,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let out = unsafe { arg_mut(out_status, "out_status") }?;
        // SAFETY: forwarded from the caller.
        let status = unsafe {
            with_estuary(estuary, |inner| {
                let client = inner.driver.client();
                let state = client.est_state();
                let mut st = estuary_est_status_t {
                    enrolled: state.is_enrolled(),
                    subject: [0; 256],
                    serial: [0; 64],
                    not_before: 0,
                    not_after: 0,
                    provisioned_at: state.provisioned_at.map_or(0, |t| t.unix_seconds()),
                    reenrollment_scheduled: false,
                    next_reenrollment: 0,
                    operation_in_progress: client.est_in_progress(),
                };
                if let Some(c) = &state.certificate {
                    copy_c_string(c.subject(), &mut st.subject);
                    copy_c_string(&c.serial_hex(), &mut st.serial);
                    st.not_before = c.not_before().unix_seconds();
                    st.not_after = c.not_after().unix_seconds();
                }
                if let Some(t) = client.next_reenrollment() {
                    st.reenrollment_scheduled = true;
                    st.next_reenrollment = t.unix_seconds();
                }
                Ok(st)
            })
        }?;
        *out = status;
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buf: &[c_char]) -> String {
        let bytes: Vec<u8> = buf
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn strings_are_cut_at_a_character_boundary_with_an_ellipsis() {
        let mut buf = [1 as c_char; 8];
        copy_c_string("CN=dev1", &mut buf);
        assert_eq!(text(&buf), "CN=dev1");
        copy_c_string("CN=device", &mut buf);
        assert_eq!(text(&buf), "CN=d...");
        assert_eq!(buf[7], 0);
        // "é" is two bytes: a cut inside it backs off to the boundary.
        copy_c_string("CN=ééé", &mut buf);
        assert_eq!(text(&buf), "CN=...");
        copy_c_string("", &mut buf);
        assert!(buf.iter().all(|c| *c == 0));
    }

    #[test]
    fn null_arguments_are_refused_and_output_untouched() {
        let mut st = std::mem::MaybeUninit::<estuary_est_status_t>::zeroed();
        // SAFETY: NULL handle; a valid output pointer.
        let rc = unsafe { estuary_est_status_get(std::ptr::null_mut(), st.as_mut_ptr()) };
        assert_eq!(rc, super::super::error::ESTUARY_ERR_NULL_ARGUMENT);
        // SAFETY: zeroed is valid for this plain struct.
        let st = unsafe { st.assume_init() };
        assert!(!st.enrolled && st.subject[0] == 0);
    }
}
