//! LwM2M server URIs (`coap://host:port`, `coaps://host:port`) as the Security object holds
//! them. Resolving the host is the driver's job.

use core::fmt;

/// A parsed server URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerUri {
    pub secure: bool,
    /// Host name or address literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI scheme must be coap or coaps")]
    Scheme,
    #[error("URI has no host")]
    Host,
    #[error("URI port is not a number in 1..=65535")]
    Port,
    #[error("URI has a path, query or fragment, which LwM2M server URIs do not use")]
    Path,
}

impl ServerUri {
    pub fn parse(s: &str) -> Result<ServerUri, UriError> {
        let (secure, rest) = if let Some(r) = s.strip_prefix("coaps://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("coap://") {
            (false, r)
        } else {
            return Err(UriError::Scheme);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(UriError::Path);
        }
        let default_port = if secure { 5684 } else { 5683 };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or(UriError::Host)?;
            let port = match after {
                "" => default_port,
                p => parse_port(p.strip_prefix(':').ok_or(UriError::Port)?)?,
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p)?),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(UriError::Host);
        }
        Ok(ServerUri { secure, host, port })
    }
}

fn parse_port(p: &str) -> Result<u16, UriError> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(UriError::Port)
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "coaps" } else { "coap" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = ServerUri::parse("coap://127.0.0.1:5683").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port),
            (false, "127.0.0.1", 5683)
        );
        assert_eq!(ServerUri::parse("coaps://example.com").unwrap().port, 5684);
        let v6 = ServerUri::parse("coap://[::1]:5700").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5700));
        assert_eq!(v6.to_string(), "coap://[::1]:5700");
    }

    #[test]
    fn refuses_malformed() {
        for s in [
            "http://h",
            "coap://",
            "coap://h:0",
            "coap://h:99999",
            "coap://h/rd",
            "coap://[::1",
            "coap://h x",
        ] {
            assert!(ServerUri::parse(s).is_err(), "{s}");
        }
    }
}
