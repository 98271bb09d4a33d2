//! Streams for persistence (SPEC 5, 7.5): where the persisted parts go and come from.
//! A file, a growable memory buffer, or the firmware's own read/write callbacks (flash).
//! Parts are written and read whole: a write that fails part-way reports the error, and a
//! read that runs out of bytes is a truncated stream.

use std::ffi::{c_char, c_int, c_void};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::{ESTUARY_ERR_INVALID_ARGUMENT, ESTUARY_ERR_IO};
use super::{arg_mut, bytes_arg, ffi_boundary, str_arg, Refusal};

/// A persistence stream; create it with one of the estuary_stream_*_create() functions and
/// free it with estuary_stream_delete().
pub struct estuary_stream_t {
    pub(crate) inner: StreamKind,
}

pub(crate) enum StreamKind {
    File(File),
    MemBuf { data: Vec<u8>, read_pos: usize },
    Callbacks(Callbacks),
}

/// How estuary_stream_file_create() opens the file: one of ESTUARY_STREAM_FILE_*.
pub type estuary_stream_file_mode_t = c_int;
/// Open an existing file for reading.
pub const ESTUARY_STREAM_FILE_READ: estuary_stream_file_mode_t = 1;
/// Create or truncate a file for writing, with mode 0600 (it may hold keys; an existing
/// file with a wider mode is narrowed to 0600).
pub const ESTUARY_STREAM_FILE_WRITE: estuary_stream_file_mode_t = 2;

/// Reads up to `size` bytes into `buf`; returns how many (0 at the end of the data) or a
/// negative value on error.
pub type estuary_stream_read_cb_t =
    Option<unsafe extern "C" fn(arg: *mut c_void, buf: *mut u8, size: usize) -> isize>;
/// Writes all `size` bytes of `data`; returns 0 on success or a negative value on error.
pub type estuary_stream_write_cb_t =
    Option<unsafe extern "C" fn(arg: *mut c_void, data: *const u8, size: usize) -> c_int>;

pub(crate) struct Callbacks {
    read: estuary_stream_read_cb_t,
    write: estuary_stream_write_cb_t,
    arg: *mut c_void,
}

impl StreamKind {
    /// Writes all of `data`.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> Result<(), Refusal> {
        match self {
            StreamKind::File(f) => f
                .write_all(data)
                .and_then(|()| f.flush())
                .map_err(|e| Refusal::new(ESTUARY_ERR_IO, format!("file write failed: {e}"))),
            StreamKind::MemBuf { data: buf, .. } => {
                buf.extend_from_slice(data);
                Ok(())
            }
            StreamKind::Callbacks(cb) => {
                let Some(write) = cb.write else {
                    return Err(Refusal::new(
                        ESTUARY_ERR_INVALID_ARGUMENT,
                        "stream has no write callback",
                    ));
                };
                // SAFETY: the firmware registered this callback for this argument and
                // promised it reads `size` bytes from `data`.
                let rc = unsafe { write(cb.arg, data.as_ptr(), data.len()) };
                if rc < 0 {
                    return Err(Refusal::new(
                        ESTUARY_ERR_IO,
                        format!("write callback failed ({rc})"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Fills `buf` completely, or fails with a "truncated" refusal.
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Refusal> {
        let truncated = || Refusal::new(ESTUARY_ERR_IO, "stream ends before the part does");
        match self {
            StreamKind::File(f) => f.read_exact(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => truncated(),
                _ => Refusal::new(ESTUARY_ERR_IO, format!("file read failed: {e}")),
            }),
            StreamKind::MemBuf { data, read_pos } => {
                let end = read_pos.checked_add(buf.len()).ok_or_else(truncated)?;
                let src = data.get(*read_pos..end).ok_or_else(truncated)?;
                buf.copy_from_slice(src);
                *read_pos = end;
                Ok(())
            }
            StreamKind::Callbacks(cb) => {
                let Some(read) = cb.read else {
                    return Err(Refusal::new(
                        ESTUARY_ERR_INVALID_ARGUMENT,
                        "stream has no read callback",
                    ));
                };
                let mut filled = 0;
                while filled < buf.len() {
                    let rest = &mut buf[filled..];
                    // SAFETY: the callback writes at most `rest.len()` bytes into `rest`.
                    let n = unsafe { read(cb.arg, rest.as_mut_ptr(), rest.len()) };
                    if n < 0 {
                        return Err(Refusal::new(
                            ESTUARY_ERR_IO,
                            format!("read callback failed ({n})"),
                        ));
                    }
                    if n == 0 {
                        return Err(truncated());
                    }
                    filled += (n as usize).min(rest.len());
                }
                Ok(())
            }
        }
    }
}

/// Creates or truncates `path` for writing with mode 0600. `mode()` applies only when the
/// file is created, so an existing file is narrowed to 0600 explicitly: what is written may
/// be a private key.
fn create_private(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Replaces `path` with `data` so that a crash at any moment leaves either the old or the
/// new content: `path`.tmp (0600) is written and fsync'ed, renamed over `path`, and the
/// directory is fsync'ed so the rename itself is durable.
pub(crate) fn write_file_atomically(path: &Path, data: &[u8]) -> Result<(), Refusal> {
    let io = |what: &str, e: std::io::Error| {
        Refusal::new(ESTUARY_ERR_IO, format!("{what} {}: {e}", path.display()))
    };
    let Some(name) = path.file_name() else {
        return Err(Refusal::invalid(format!(
            "{} does not name a file",
            path.display()
        )));
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = create_private(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: a stale temporary file is harmless, it is truncated next time.
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot write", e));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("renamed, but cannot sync the directory of", e))
}

fn boxed(inner: StreamKind) -> *mut estuary_stream_t {
    Box::into_raw(Box::new(estuary_stream_t { inner }))
}

/// Opens `path` as a stream: ESTUARY_STREAM_FILE_READ for an existing file, or
/// ESTUARY_STREAM_FILE_WRITE to create or truncate one with mode 0600. Returns NULL (and
/// logs why) on failure.
#[no_mangle]
pub unsafe extern "C" fn estuary_stream_file_create(
    path: *const c_char,
    mode: estuary_stream_file_mode_t,
) -> *mut estuary_stream_t {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let path = unsafe { str_arg(path, "path") }?;
        let file = match mode {
            ESTUARY_STREAM_FILE_READ => File::open(&path),
            ESTUARY_STREAM_FILE_WRITE => create_private(Path::new(&path)),
            other => return Err(Refusal::invalid(format!("unknown file mode {other}"))),
        }
        .map_err(|e| Refusal::new(ESTUARY_ERR_IO, format!("cannot open {path}: {e}")))?;
        Ok(boxed(StreamKind::File(file)))
    })
}

/// A stream over a growable memory buffer: writes append, reads consume from the start.
#[no_mangle]
pub extern "C" fn estuary_stream_membuf_create() -> *mut estuary_stream_t {
    ffi_boundary!({
        Ok(boxed(StreamKind::MemBuf {
            data: Vec::new(),
            read_pos: 0,
        }))
    })
}

/// A stream over the firmware's own storage (e.g. a flash region): `read_cb` is used when
/// restoring and `write_cb` when persisting; either may be NULL if the stream is used only
/// one way. `arg` is passed to both.
#[no_mangle]
pub extern "C" fn estuary_stream_from_callbacks(
    read_cb: estuary_stream_read_cb_t,
    write_cb: estuary_stream_write_cb_t,
    arg: *mut c_void,
) -> *mut estuary_stream_t {
    ffi_boundary!({
        if read_cb.is_none() && write_cb.is_none() {
            return Err(Refusal::null("read_cb and write_cb"));
        }
        Ok(boxed(StreamKind::Callbacks(Callbacks {
            read: read_cb,
            write: write_cb,
            arg,
        })))
    })
}

/// The bytes a memory stream holds that have not been read yet: writes `*out_size` and
/// returns a pointer valid until the stream is next used or deleted. NULL for other
/// streams.
#[no_mangle]
pub unsafe extern "C" fn estuary_stream_membuf_data(
    stream: *mut estuary_stream_t,
    out_size: *mut usize,
) -> *const u8 {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let s = unsafe { arg_mut(stream, "stream") }?;
        // SAFETY: forwarded from the caller.
        let out = unsafe { arg_mut(out_size, "out_size") }?;
        match &s.inner {
            StreamKind::MemBuf { data, read_pos } => {
                *out = data.len() - read_pos;
                Ok(data[*read_pos..].as_ptr())
            }
            _ => Err(Refusal::invalid("not a memory stream")),
        }
    })
}

/// Appends `size` bytes to a memory stream (to restore from bytes kept elsewhere).
#[no_mangle]
pub unsafe extern "C" fn estuary_stream_membuf_write(
    stream: *mut estuary_stream_t,
    data: *const u8,
    size: usize,
) -> c_int {
    ffi_boundary!({
        // SAFETY: forwarded from the caller.
        let s = unsafe { arg_mut(stream, "stream") }?;
        // SAFETY: forwarded from the caller.
        let bytes = unsafe { bytes_arg(data, size, "data") }?;
        match &mut s.inner {
            StreamKind::MemBuf { .. } => s.inner.write_all(&bytes).map(|()| 0),
            _ => Err(Refusal::invalid("not a memory stream")),
        }
    })
}

/// Closes and frees a stream (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn estuary_stream_delete(stream: *mut estuary_stream_t) {
    ffi_boundary!({
        if !stream.is_null() {
            // SAFETY: a non-NULL stream came from Box::into_raw in a create function and
            // is deleted once, as documented.
            drop(unsafe { Box::from_raw(stream) });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(s: *mut estuary_stream_t) -> &'static mut StreamKind {
        // SAFETY: tests pass live streams from the create functions.
        unsafe { &mut (*s).inner }
    }

    #[test]
    fn membuf_writes_then_reads_in_order_and_reports_truncation() {
        let s = estuary_stream_membuf_create();
        rw(s).write_all(b"hello ").unwrap();
        rw(s).write_all(b"world").unwrap();
        let mut a = [0u8; 6];
        rw(s).read_exact(&mut a).unwrap();
        assert_eq!(&a, b"hello ");
        let mut n = 0usize;
        // SAFETY: live stream, valid out pointer.
        let p = unsafe { estuary_stream_membuf_data(s, &mut n) };
        // SAFETY: `n` bytes at `p` stay valid until the stream is used again.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, n) }, b"world");
        let mut b = [0u8; 6];
        assert!(rw(s).read_exact(&mut b).is_err());
        // SAFETY: created above, deleted once.
        unsafe { estuary_stream_delete(s) };
    }

    #[test]
    fn file_stream_is_created_0600_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("estuary-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.bin");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        let w = unsafe { estuary_stream_file_create(c.as_ptr(), ESTUARY_STREAM_FILE_WRITE) };
        assert!(!w.is_null());
        rw(w).write_all(b"abc").unwrap();
        // SAFETY: created above.
        unsafe { estuary_stream_delete(w) };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // An existing file with a wider mode is narrowed when opened for writing.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // SAFETY: valid C string.
        let w = unsafe { estuary_stream_file_create(c.as_ptr(), ESTUARY_STREAM_FILE_WRITE) };
        rw(w).write_all(b"abc").unwrap();
        // SAFETY: created above.
        unsafe { estuary_stream_delete(w) };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // SAFETY: valid C string.
        let r = unsafe { estuary_stream_file_create(c.as_ptr(), ESTUARY_STREAM_FILE_READ) };
        let mut buf = [0u8; 3];
        rw(r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        assert!(rw(r).read_exact(&mut buf).is_err());
        // SAFETY: created above.
        unsafe { estuary_stream_delete(r) };
        // Bad mode, missing file, NULL path.
        // SAFETY: valid C string / NULL.
        unsafe {
            assert!(estuary_stream_file_create(c.as_ptr(), 9).is_null());
            let missing = std::ffi::CString::new(dir.join("nope").to_str().unwrap()).unwrap();
            assert!(
                estuary_stream_file_create(missing.as_ptr(), ESTUARY_STREAM_FILE_READ).is_null()
            );
            assert!(
                estuary_stream_file_create(std::ptr::null(), ESTUARY_STREAM_FILE_READ).is_null()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct Flash {
        data: Vec<u8>,
        pos: usize,
        fail_after: usize,
    }

    unsafe extern "C" fn flash_write(arg: *mut c_void, data: *const u8, size: usize) -> c_int {
        // SAFETY: `arg` is the test's Flash, `data` has `size` bytes.
        let f = unsafe { &mut *(arg as *mut Flash) };
        if f.data.len() + size > f.fail_after {
            return -5;
        }
        // SAFETY: as above.
        f.data
            .extend_from_slice(unsafe { std::slice::from_raw_parts(data, size) });
        0
    }

    unsafe extern "C" fn flash_read(arg: *mut c_void, buf: *mut u8, size: usize) -> isize {
        // SAFETY: `arg` is the test's Flash, `buf` has room for `size` bytes.
        let f = unsafe { &mut *(arg as *mut Flash) };
        // Hand out at most 3 bytes per call, like a driver with a small page.
        let n = size.min(3).min(f.data.len() - f.pos);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(f.data[f.pos..].as_ptr(), buf, n) };
        f.pos += n;
        n as isize
    }

    #[test]
    fn callback_stream_reads_in_pieces_and_reports_write_failure() {
        let mut flash = Flash {
            data: Vec::new(),
            pos: 0,
            fail_after: 8,
        };
        let arg = (&mut flash as *mut Flash).cast();
        let s = estuary_stream_from_callbacks(Some(flash_read), Some(flash_write), arg);
        rw(s).write_all(b"12345").unwrap();
        let err = rw(s).write_all(b"6789").unwrap_err();
        assert_eq!(err.code, ESTUARY_ERR_IO);
        let mut buf = [0u8; 5];
        rw(s).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"12345");
        assert!(rw(s).read_exact(&mut buf[..1]).is_err(), "end of data");
        // SAFETY: created above.
        unsafe { estuary_stream_delete(s) };
        assert!(estuary_stream_from_callbacks(None, None, std::ptr::null_mut()).is_null());
    }
}
