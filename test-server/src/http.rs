//! A minimal HTTP/1.0 GET client for the command line and tests: the control API is on
//! loopback, answers small JSON bodies and closes the connection, so a request line, a read
//! to EOF and a status-line parse are all it takes (no HTTP client crate needed).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response body accepted.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {0:?}")]
    Resolve(String),
    #[error("cannot reach the control API at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("talking to the control API: {0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP response from the control API")]
    Malformed,
}

fn resolve(addr: &str) -> Result<SocketAddr, HttpError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| HttpError::Resolve(addr.to_string()))
}

/// Sends one request with an optional body. `target` is the request path with its query,
/// e.g. "/api/clients". `timeout` bounds connecting and each read and write.
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|source| HttpError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    if !body.is_empty() {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse_response(&raw).ok_or(HttpError::Malformed)
}

/// GET `target` from `addr`.
pub fn get(addr: &str, target: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
    request(addr, "GET", target, &[], timeout)
}

/// Parses a whole HTTP/1.x response (identity body; a Content-Length shorter than what
/// arrived cuts the body).
pub fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        if k.trim().eq_ignore_ascii_case("content-length") {
            let n: usize = v.trim().parse().ok()?;
            body = body.get(..n)?;
        }
    }
    Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for endpoint names in
/// paths).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 404,
                body: "{}".into()
            }
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
        assert_eq!(r.body, "hello");
        for bad in [
            &b""[..],
            b"HTTP/1.0 200 OK\r\n",
            b"SPDY 200 OK\r\n\r\n",
            b"HTTP/1.0 abc OK\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.0 200 OK\r\nbroken header\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn encodes_endpoint_names() {
        assert_eq!(percent_encode("dev-1_a.b~"), "dev-1_a.b~");
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
