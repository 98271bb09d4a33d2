//! Waking the event loop: an atomic "interrupted" flag plus a self-pipe whose read end sits in
//! the loop's `poll(2)` set. [`InterruptHandle::interrupt`] only stores to an atomic and
//! calls `write(2)`, so it is safe from another thread and from a signal handler.
//!
//! The flag is the truth (it stays set until the loop takes it); the pipe only makes a
//! sleeping `poll` return.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The pipe and the flag, shared by the driver and every [`InterruptHandle`]; the pipe is
/// closed when the last of them is dropped, so a handle never writes to a recycled fd.
#[derive(Debug)]
struct Shared {
    interrupted: AtomicBool,
    read_fd: RawFd,
    write_fd: RawFd,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: both descriptors were opened by `Wake::new` and are owned by `Shared`.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}

/// The driver's side: the read end to poll, and taking the flag.
#[derive(Debug)]
pub(crate) struct Wake {
    shared: Arc<Shared>,
}

impl Wake {
    pub(crate) fn new() -> io::Result<Wake> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            interrupted: AtomicBool::new(false),
            read_fd: fds[0],
            write_fd: fds[1],
        });
        for fd in fds {
            set_nonblocking_cloexec(fd)?;
        }
        Ok(Wake { shared })
    }

    pub(crate) fn handle(&self) -> InterruptHandle {
        InterruptHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    pub(crate) fn read_fd(&self) -> RawFd {
        self.shared.read_fd
    }

    /// Empties the pipe after `poll` reported it readable.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a local buffer of the stated length.
            let n = unsafe {
                libc::read(
                    self.shared.read_fd,
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
    }

    /// True (once) if an interrupt arrived since the last call.
    pub(crate) fn take_interrupt(&self) -> bool {
        self.shared.interrupted.swap(false, Ordering::AcqRel)
    }
}

fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd_flags = libc::fcntl(fd, libc::F_GETFD);
        if fd_flags < 0 || libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Stops a running [`super::Driver::run`] from anywhere: another thread or a signal handler.
///
/// An interrupt that arrives while the loop is not running is kept, and the next `run`
/// returns at once; so a signal that lands just before the loop starts is not lost.
#[derive(Clone, Debug)]
pub struct InterruptHandle {
    shared: Arc<Shared>,
}

impl InterruptHandle {
    /// Sets the flag and wakes the loop. Async-signal-safe: an atomic store and one
    /// `write(2)`, no allocation, no lock, and `errno` is preserved.
    pub fn interrupt(&self) {
        self.shared.interrupted.store(true, Ordering::Release);
        let saved = errno::get();
        let byte = 1u8;
        // A full pipe already holds a wake-up, so a failed write needs no retry.
        // SAFETY: writing one byte from a local to a descriptor owned by `Shared`.
        unsafe {
            libc::write(
                self.shared.write_fd,
                (&byte as *const u8).cast::<libc::c_void>(),
                1,
            );
        }
        errno::set(saved);
    }
}

/// `errno` save/restore, so an interrupt from a signal handler does not clobber the
/// interrupted code's `errno`. On targets not listed, it is a no-op.
mod errno {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "emscripten"))]
    fn location() -> Option<*mut libc::c_int> {
        // SAFETY: returns the calling thread's errno slot; always valid.
        Some(unsafe { libc::__errno_location() })
    }

    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly"
    ))]
    fn location() -> Option<*mut libc::c_int> {
        // SAFETY: as above.
        Some(unsafe { libc::__error() })
    }

    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "emscripten",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly"
    )))]
    fn location() -> Option<*mut libc::c_int> {
        None
    }

    pub(super) fn get() -> libc::c_int {
        // SAFETY: the thread's own errno slot.
        location().map_or(0, |p| unsafe { *p })
    }

    pub(super) fn set(v: libc::c_int) {
        if let Some(p) = location() {
            // SAFETY: as above.
            unsafe { *p = v }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_sets_the_flag_once_and_makes_the_pipe_readable() {
        let w = Wake::new().unwrap();
        let h = w.handle();
        assert!(!w.take_interrupt());
        h.clone().interrupt();
        let mut fds = [libc::pollfd {
            fd: w.read_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        assert_eq!(n, 1);
        w.drain();
        // SAFETY: as above.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        assert_eq!(n, 0, "drained");
        assert!(w.take_interrupt());
        assert!(!w.take_interrupt());
    }

    #[test]
    fn handles_outlive_the_driver_side() {
        let w = Wake::new().unwrap();
        let h = w.handle();
        drop(w);
        h.interrupt(); // the pipe is still open: no write to a closed or recycled fd
    }
}
