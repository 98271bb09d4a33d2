//! UDP sockets for server connections (resolved with the system resolver, bound, connected,
//! non-blocking) and the `poll(2)` wait over them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use crate::lwm2m::ServerUri;

/// A UDP socket connected to `uri`, bound to `local_port` (0 = ephemeral). Tries each
/// address the host resolves to until one works. Resolution blocks (getaddrinfo).
pub(crate) fn connect(uri: &ServerUri, local_port: u16) -> io::Result<UdpSocket> {
    let mut last_err = None;
    for addr in (uri.host.as_str(), uri.port).to_socket_addrs()? {
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, local_port).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, local_port).into(),
        };
        let attempt = UdpSocket::bind(local).and_then(|s| {
            s.connect(addr)?;
            s.set_nonblocking(true)?;
            Ok(s)
        });
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")))
}

/// `poll(2)` for at most `timeout` (rounded up to whole milliseconds). A signal that
/// interrupts the wait counts as a wake-up, not an error.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = timeout
        .as_micros()
        .div_ceil(1000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `n` pollfd structures.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_loopback_and_binds_the_requested_port() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uri = ServerUri::parse(&format!(
            "coap://127.0.0.1:{}",
            peer.local_addr().unwrap().port()
        ))
        .unwrap();
        let s = connect(&uri, 0).unwrap();
        s.send(b"hi").unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from, s.local_addr().unwrap());
    }

    #[test]
    fn unresolvable_host_is_an_error() {
        let uri = ServerUri::parse("coap://no-such-host.invalid:5683").unwrap();
        assert!(connect(&uri, 0).is_err());
    }
}
