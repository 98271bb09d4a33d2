//! The HTTP + JSON control API on loopback, in the style of Leshan's REST API:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/clients` | JSON array of registered clients |
//! | `GET /api/clients/{ep}` | one client, or 404 |
//! | `GET /api/clients/{ep}/{path}?format=text\|tlv\|opaque&timeout=S` | Read through the server core: `{"code":"2.05","content_format":0,"value":"..."}`, a TLV tree for TLV (see `render.rs`); 404 unknown endpoint, 400 bad path or query, 504 when the client does not answer, 502 on RST |
//! | `GET /api/events` | the event ring as JSON lines |
//!
//! Errors are `{"error":"..."}`. Unknown routes are 404, other methods 405 (Write, Execute,
//! Create, Delete and Observe on a client path are 501 until they are implemented).
//! Routing ([`route`]) is a pure function; each request is answered on its own thread so a
//! slow Read does not hold up other requests.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use estuary::dm::Path;
use log::{debug, warn};
use serde_json::json;

use crate::events::EventLog;
use crate::lwm2m_server::format_from_name;
use crate::render::read_answer;
use crate::run::{ReadError, ServerCtl};

/// Requests answered at the same time; more get 503 (Reads can each wait ~100 s).
const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Bounds of `?timeout=` in seconds.
const MAX_READ_TIMEOUT_S: u64 = 300;

/// A request the API understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Clients,
    Client(String),
    Read {
        ep: String,
        /// Normalised, e.g. "/3/0/0".
        path: String,
        /// The `format=` name, if given.
        format: Option<String>,
        timeout: Option<Duration>,
    },
    Events,
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply::json_text(status, v.to_string())
    }

    /// A body serialised from a typed value (keeps its field order, which a JSON map would
    /// sort).
    fn json_text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
        Reply::json(status, &json!({ "error": msg.to_string() }))
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3)?;
            if !h.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Maps a method and request target to a [`Route`], or the error reply to give.
pub fn route(method: &str, target: &str) -> Result<Route, Reply> {
    let Some(rest) = target.strip_prefix('/') else {
        return Err(Reply::error(400, "the request target must be a path"));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut segs = Vec::new();
    for s in path.split('/') {
        segs.push(
            percent_decode(s)
                .ok_or_else(|| Reply::error(400, format!("bad percent-encoding in {s:?}")))?,
        );
    }
    // A trailing slash names the same resource.
    if segs.len() > 1 && segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get_only = |r: Route| -> Result<Route, Reply> {
        if method == "GET" {
            Ok(r)
        } else {
            Err(Reply::error(405, format!("{method} is not allowed here")))
        }
    };
    let params = parse_query(query)?;
    match segs.as_slice() {
        ["api", "clients"] => {
            no_params(&params)?;
            get_only(Route::Clients)
        }
        ["api", "events"] => {
            no_params(&params)?;
            get_only(Route::Events)
        }
        ["api", "clients", ""] => Err(Reply::error(400, "empty endpoint name")),
        ["api", "clients", ep] => {
            no_params(&params)?;
            get_only(Route::Client(ep.to_string()))
        }
        ["api", "clients", ep, lwm2m @ ..] => {
            if matches!(method, "PUT" | "POST" | "DELETE") || lwm2m.last() == Some(&"observe") {
                return Err(Reply::error(
                    501,
                    "only Read (GET) is implemented; Write, Execute, Create, Delete and Observe come later",
                ));
            }
            if ep.is_empty() {
                return Err(Reply::error(400, "empty endpoint name"));
            }
            let path = Path::from_segments(lwm2m)
                .ok()
                .filter(|p| !p.is_root() && lwm2m.iter().all(|s| !s.is_empty()))
                .ok_or_else(|| {
                    Reply::error(400, format!("invalid LwM2M path /{}", lwm2m.join("/")))
                })?;
            let mut format = None;
            let mut timeout = None;
            for (k, v) in &params {
                match k.as_str() {
                    "format" => {
                        if format_from_name(v).is_none() {
                            return Err(Reply::error(
                                400,
                                format!("unknown format {v:?} (text, tlv, opaque, senml-json, senml-cbor, lwm2m-cbor, link)"),
                            ));
                        }
                        format = Some(v.clone());
                    }
                    "timeout" => {
                        let s = v
                            .parse::<u64>()
                            .ok()
                            .filter(|s| (1..=MAX_READ_TIMEOUT_S).contains(s))
                            .ok_or_else(|| {
                                Reply::error(
                                    400,
                                    format!("timeout must be 1 to {MAX_READ_TIMEOUT_S} seconds"),
                                )
                            })?;
                        timeout = Some(Duration::from_secs(s));
                    }
                    other => {
                        return Err(Reply::error(
                            400,
                            format!("unknown query parameter {other:?}"),
                        ))
                    }
                }
            }
            get_only(Route::Read {
                ep: ep.to_string(),
                path: path.to_string(),
                format,
                timeout,
            })
        }
        _ => Err(Reply::error(404, format!("no such resource: /{path}"))),
    }
}

fn parse_query(q: &str) -> Result<Vec<(String, String)>, Reply> {
    let mut out = Vec::new();
    for item in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        let dec = |s: &str| {
            percent_decode(&s.replace('+', " "))
                .ok_or_else(|| Reply::error(400, format!("bad percent-encoding in {s:?}")))
        };
        out.push((dec(k)?, dec(v)?));
    }
    Ok(out)
}

fn no_params(p: &[(String, String)]) -> Result<(), Reply> {
    match p.first() {
        Some((k, _)) => Err(Reply::error(400, format!("unknown query parameter {k:?}"))),
        None => Ok(()),
    }
}

/// Answers a routed request.
pub fn answer(r: Route, ctl: &ServerCtl, events: &EventLog) -> Reply {
    match r {
        Route::Clients => Reply::json_text(
            200,
            serde_json::to_string(&ctl.clients()).unwrap_or_default(),
        ),
        Route::Client(ep) => match ctl.client(&ep) {
            Some(c) => Reply::json_text(200, serde_json::to_string(&c).unwrap_or_default()),
            None => Reply::error(404, format!("no client registered as {ep:?}")),
        },
        Route::Events => Reply {
            status: 200,
            content_type: "application/x-ndjson",
            body: events.json_lines(),
        },
        Route::Read {
            ep,
            path,
            format,
            timeout,
        } => {
            let accept = format.as_deref().and_then(format_from_name);
            match ctl.read(&ep, &path, accept, timeout) {
                Ok(res) => {
                    // `route` only lets valid paths through.
                    let p = Path::parse(&path).unwrap_or_default();
                    Reply::json_text(200, read_answer(&p, &res).to_json())
                }
                Err(e) => {
                    let status = match &e {
                        ReadError::UnknownEndpoint(_) => 404,
                        ReadError::BadPath(_) => 400,
                        ReadError::Send(_) | ReadError::Stopped => 503,
                        ReadError::Exchange(msg)
                            if *msg == estuary::coap::ExchangeError::Reset.to_string() =>
                        {
                            502
                        }
                        ReadError::Exchange(_) | ReadError::TimedOut(_) => 504,
                    };
                    Reply::error(status, e)
                }
            }
        }
    }
}

/// A bound control API, not yet serving.
pub struct ControlServer {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    ctl: ServerCtl,
    events: Arc<EventLog>,
}

/// A serving control API.
pub struct RunningControl {
    http: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ControlServer {
    pub fn bind(addr: SocketAddr, ctl: ServerCtl, events: Arc<EventLog>) -> io::Result<Self> {
        if !addr.ip().is_loopback() {
            warn!("control API on non-loopback address {addr}: anyone who can reach it can read devices");
        }
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let http = tiny_http::Server::from_listener(listener, None).map_err(io::Error::other)?;
        Ok(ControlServer {
            http: Arc::new(http),
            addr,
            ctl,
            events,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn spawn(self) -> io::Result<RunningControl> {
        let stopping = Arc::new(AtomicBool::new(false));
        let http = self.http.clone();
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("control-api".into())
            .spawn(move || self.serve(&stop))?;
        Ok(RunningControl {
            http,
            stopping,
            thread,
        })
    }

    fn serve(self, stopping: &AtomicBool) {
        let busy = Arc::new(AtomicUsize::new(0));
        loop {
            let req = match self.http.recv() {
                Ok(r) => r,
                Err(_) if stopping.load(Ordering::SeqCst) => return,
                Err(e) => {
                    debug!("control API: {e}");
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if stopping.load(Ordering::SeqCst) {
                respond(req, Reply::error(503, "the server is stopping"));
                return;
            }
            if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_REQUESTS {
                busy.fetch_sub(1, Ordering::SeqCst);
                respond(req, Reply::error(503, "too many requests at once"));
                continue;
            }
            let (ctl, events, busy2) = (self.ctl.clone(), self.events.clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("control-request".into())
                .spawn(move || {
                    handle(req, &ctl, &events);
                    busy2.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                // The request went down with the closure; the client sees the connection close.
                warn!("control API: no thread for a request: {e}");
                busy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn handle(req: tiny_http::Request, ctl: &ServerCtl, events: &EventLog) {
    let method = req.method().as_str().to_string();
    let reply = match route(&method, req.url()) {
        Ok(r) => answer(r, ctl, events),
        Err(reply) => reply,
    };
    debug!("control API: {method} {} -> {}", req.url(), reply.status);
    respond(req, reply);
}

fn respond(req: tiny_http::Request, reply: Reply) {
    let mut resp = tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
    if let Ok(h) =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
    {
        resp.add_header(h);
    }
    if let Err(e) = req.respond(resp) {
        debug!("control API: writing a response: {e}");
    }
}

impl RunningControl {
    /// Stops accepting requests and waits for the accept loop (not for Reads in flight,
    /// which end when the server thread stops).
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.http.unblock();
        if self.thread.join().is_err() {
            warn!("the control API thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ep: &str, path: &str, format: Option<&str>) -> Route {
        Route::Read {
            ep: ep.into(),
            path: path.into(),
            format: format.map(Into::into),
            timeout: None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/api/clients"), Ok(Route::Clients));
        assert_eq!(route("GET", "/api/clients/"), Ok(Route::Clients));
        assert_eq!(route("GET", "/api/events"), Ok(Route::Events));
        assert_eq!(
            route("GET", "/api/clients/dev1"),
            Ok(Route::Client("dev1".into()))
        );
        assert_eq!(
            route("GET", "/api/clients/dev%201"),
            Ok(Route::Client("dev 1".into()))
        );
        assert_eq!(
            route("GET", "/api/clients/dev1/3/0/0?format=text"),
            Ok(read("dev1", "/3/0/0", Some("text")))
        );
        assert_eq!(
            route("GET", "/api/clients/dev1/3/0/"),
            Ok(read("dev1", "/3/0", None))
        );
        assert_eq!(
            route("GET", "/api/clients/dev1/3?format=tlv&timeout=5"),
            Ok(Route::Read {
                ep: "dev1".into(),
                path: "/3".into(),
                format: Some("tlv".into()),
                timeout: Some(Duration::from_secs(5)),
            })
        );
    }

    fn status(method: &str, target: &str) -> u16 {
        match route(method, target) {
            Ok(r) => panic!("{method} {target} routed to {r:?}"),
            Err(reply) => {
                let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                assert!(v["error"].is_string(), "{}", reply.body);
                assert_eq!(reply.content_type, "application/json");
                reply.status
            }
        }
    }

    #[test]
    fn unknown_routes_are_404() {
        for t in [
            "/",
            "/api",
            "/api/client",
            "/api/clientsx",
            "/foo/bar",
            "/api/events/1",
        ] {
            assert_eq!(status("GET", t), 404, "{t}");
        }
    }

    #[test]
    fn malformed_requests_are_400() {
        for t in [
            "api/clients",
            "*",
            "http://127.0.0.1/api/clients",
            "/api/clients/dev1/abc",
            "/api/clients/dev1/3/0/0/0/0",
            "/api/clients/dev1/3//0",
            "/api/clients/dev1/65535",
            "/api/clients/dev1/-1",
            "/api/clients/dev1/3/0/0?format=xml",
            "/api/clients/dev1/3/0/0?format=text&bogus=1",
            "/api/clients/dev1/3/0/0?timeout=0",
            "/api/clients/dev1/3/0/0?timeout=abc",
            "/api/clients/%zz",
            "/api/clients/%c3%28",
            "/api/clients/%",
            "/api/clients/%4",
            "/api/clients?x=1",
            "/api/clients//3/0",
            "/api/events?since=%",
        ] {
            assert_eq!(status("GET", t), 400, "{t}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(status("POST", "/api/clients"), 405);
        assert_eq!(status("DELETE", "/api/events"), 405);
        assert_eq!(status("HEAD", "/api/clients/dev1/3/0/0"), 405);
        assert_eq!(status("PUT", "/api/clients/dev1/3/0/0"), 501);
        assert_eq!(status("POST", "/api/clients/dev1/3/0/4"), 501);
        assert_eq!(status("GET", "/api/clients/dev1/3/0/0/observe"), 501);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        for bad in ["%", "%1", "%g0", "%ff", "%+1"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = estuary::SeededRng::new(7);
        let alphabet = b"/%?&=ac0123456789xAPIclientsevt+. ";
        for _ in 0..20_000 {
            let n = (estuary::RandomSource::next_u32(&mut rng) % 40) as usize;
            let s: String = (0..n)
                .map(|_| {
                    let i = estuary::RandomSource::next_u32(&mut rng) as usize % alphabet.len();
                    alphabet[i] as char
                })
                .collect();
            let _ = route("GET", &s);
            let _ = route("GET", &format!("/api/clients/{s}"));
        }
    }
}
