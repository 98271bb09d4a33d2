//! Logging for C firmware: a `log::Log` implementation, installed once for the process on
//! the first call into the C API, that hands every record to the firmware's handler
//! (`estuary_set_log_handler`) or, by default, writes one line to stderr.
//!
//! If the process already has a `log` logger (a Rust application using the crate directly),
//! that logger stays and the C handler receives nothing.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Write;
use std::sync::{Mutex, Once};

use ::log::{Level, LevelFilter, Log, Metadata, Record};

use super::{ffi_boundary, Refusal};

/// A log level: one of the ESTUARY_LOG_* constants, from the most to the least verbose.
pub type estuary_log_level_t = c_int;
/// Step-by-step detail (datagrams, timers).
pub const ESTUARY_LOG_TRACE: estuary_log_level_t = 0;
/// Diagnostics useful while developing.
pub const ESTUARY_LOG_DEBUG: estuary_log_level_t = 1;
/// Normal operation: registered, de-registered, ... The default level.
pub const ESTUARY_LOG_INFO: estuary_log_level_t = 2;
/// Something unexpected that Estuary recovered from.
pub const ESTUARY_LOG_WARN: estuary_log_level_t = 3;
/// A failed operation, including every call refused by the C API.
pub const ESTUARY_LOG_ERROR: estuary_log_level_t = 4;
/// For estuary_set_log_level() only: no logging at all.
pub const ESTUARY_LOG_OFF: estuary_log_level_t = 5;

/// Receives one log line: its level (ESTUARY_LOG_TRACE to ESTUARY_LOG_ERROR), the Estuary
/// module it comes from (e.g. "estuary::ffi") and the message, both NUL-terminated and valid
/// only during the call, and the `arg` given to estuary_set_log_handler(). It may be called
/// from any thread that calls into Estuary, and must not call Estuary functions itself.
pub type estuary_log_handler_t = Option<
    unsafe extern "C" fn(
        level: estuary_log_level_t,
        module: *const c_char,
        message: *const c_char,
        arg: *mut c_void,
    ),
>;

/// The installed handler; `arg` is kept as an address so the slot is `Send`.
#[derive(Copy, Clone)]
struct Sink {
    handler: estuary_log_handler_t,
    arg: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    handler: None,
    arg: 0,
});
static INSTALL: Once = Once::new();
static LOGGER: CLogger = CLogger;

struct CLogger;

impl Log for CLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= ::log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Copy the handler out so it is not called with the lock held (it may log again or
        // replace itself).
        let sink = *SINK.lock().unwrap_or_else(|p| p.into_inner());
        let level = match record.level() {
            Level::Trace => ESTUARY_LOG_TRACE,
            Level::Debug => ESTUARY_LOG_DEBUG,
            Level::Info => ESTUARY_LOG_INFO,
            Level::Warn => ESTUARY_LOG_WARN,
            Level::Error => ESTUARY_LOG_ERROR,
        };
        let message = record.args().to_string();
        match sink.handler {
            Some(handler) => {
                let module = c_string(record.target());
                let message = c_string(&message);
                // SAFETY: the firmware registered `handler` for exactly this call shape; the
                // strings live until it returns.
                unsafe {
                    handler(
                        level,
                        module.as_ptr(),
                        message.as_ptr(),
                        sink.arg as *mut c_void,
                    )
                };
            }
            None => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{:<5} {}: {}",
                    record.level(),
                    record.target(),
                    message
                );
            }
        }
    }

    fn flush(&self) {}
}

/// `s` as a C string; an interior NUL (never expected) becomes "\0" text.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// Installs the forwarding logger (at ESTUARY_LOG_INFO) unless a logger exists already.
pub(crate) fn ensure_installed() {
    INSTALL.call_once(|| {
        if ::log::set_logger(&LOGGER).is_ok() {
            ::log::set_max_level(LevelFilter::Info);
        }
    });
}

/// Sends Estuary's log lines to `handler` (called with `arg`); NULL restores the default,
/// which writes "LEVEL module: message" lines to stderr. The setting is global to the
/// process (shared by every estuary_t) and may be changed at any time, also before
/// estuary_new().
#[no_mangle]
pub extern "C" fn estuary_set_log_handler(handler: estuary_log_handler_t, arg: *mut c_void) {
    ffi_boundary!({
        let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        *sink = Sink {
            handler,
            arg: arg as usize,
        };
        Ok(())
    })
}

/// Sets the least severe level that is logged (ESTUARY_LOG_TRACE to ESTUARY_LOG_ERROR), or
/// ESTUARY_LOG_OFF for none. Global to the process; the default is ESTUARY_LOG_INFO.
/// Returns 0, or ESTUARY_ERR_INVALID_ARGUMENT for an unknown level (the level is unchanged).
#[no_mangle]
pub extern "C" fn estuary_set_log_level(level: estuary_log_level_t) -> c_int {
    ffi_boundary!({
        let filter = match level {
            ESTUARY_LOG_TRACE => LevelFilter::Trace,
            ESTUARY_LOG_DEBUG => LevelFilter::Debug,
            ESTUARY_LOG_INFO => LevelFilter::Info,
            ESTUARY_LOG_WARN => LevelFilter::Warn,
            ESTUARY_LOG_ERROR => LevelFilter::Error,
            ESTUARY_LOG_OFF => LevelFilter::Off,
            other => return Err(Refusal::invalid(format!("unknown log level {other}"))),
        };
        ::log::set_max_level(filter);
        Ok(0)
    })
}
