//! The HTTP + JSON control API on loopback, in the style of Leshan's REST API (SPEC §8):
//!
//! | request | LwM2M operation |
//! |---|---|
//! | `GET /api/clients`, `GET /api/clients/{ep}` | registered clients (404 if unknown) |
//! | `GET /api/clients/{ep}/{path}?format=F` | Read (Accept F) |
//! | `GET /api/clients/{ep}/{path}?discover=1` | Discover |
//! | `PUT /api/clients/{ep}/{path}?format=F` | Write (replace) |
//! | `POST /api/clients/{ep}/{o}/{i}?format=F` | Write (partial update) |
//! | `POST /api/clients/{ep}/{o}/{i}/{r}` | Execute, the body as arguments |
//! | `POST /api/clients/{ep}/{o}?format=F` | Create |
//! | `DELETE /api/clients/{ep}/{path}` | Delete |
//! | `PUT /api/clients/{ep}/{path}/attributes?pmin=5&pmax=30&gt=..&lt=..&st=..` | Write-Attributes |
//! | `POST /api/clients/{ep}/{path}/observe?format=F` | Observe; the answer adds `"op"` |
//! | `DELETE /api/clients/{ep}/{path}/observe` | cancel the observation |
//! | `GET /api/events` | the event ring as JSON lines; notifications included |
//!
//! F is text, tlv, opaque, senml-json, senml-cbor, lwm2m-cbor or link. Write bodies are
//! JSON, `{"value": ...}` for a resource or `{"resources": {"5700": 1.5, "5701": "Cel"}}`
//! for an instance (see [`write_payload`]), encoded in F; `?raw=1` sends the body as is.
//! Every `?timeout=S` bounds the wait.
//!
//! Any CoAP answer is HTTP 200 with the client's code in the body (`render.rs`); 404 for an
//! unknown endpoint or observation, 400 for a bad request, 504 when the client does not
//! answer, 502 on RST, 405 for other methods. Errors are `{"error":"..."}`. Routing
//! ([`route`]) and payload building ([`op_request`]) are pure functions; each request is
//! answered on its own thread so a slow operation does not hold up others.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use estuary::coap::content_format;
use estuary::dm::content::base64::{self, Alphabet};
use estuary::dm::content::{self, Entry};
use estuary::dm::{Path, Value};
use log::{debug, warn};
use serde_json::{json, Value as Json};

use crate::events::EventLog;
use crate::lwm2m_server::{format_from_name, OpMethod, OpRequest};
use crate::render::{format_name, read_answer};
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
    /// An LwM2M operation on a client.
    Op(OpRoute),
    Events,
}

/// An LwM2M operation as routed: what to do, where, and the query's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRoute {
    pub ep: String,
    /// Normalised, e.g. "/3/0/0".
    pub path: String,
    pub op: Op,
    /// The `format=` name, if given.
    pub format: Option<String>,
    pub timeout: Option<Duration>,
    /// `raw=1`: the request body is the CoAP payload as is.
    pub raw: bool,
}

/// The LwM2M operation of a control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Discover,
    /// PUT: replace; POST on an instance: partial update.
    Write {
        replace: bool,
    },
    Execute,
    Create,
    Delete,
    /// Uri-Query items, e.g. `["pmin=5", "pmax=30"]`; `"gt"` alone unsets `gt`.
    WriteAttributes(Vec<String>),
    Observe,
    CancelObserve,
}

impl Op {
    /// The operation's name in events and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Discover => "discover",
            Op::Write { .. } => "write",
            Op::Execute => "execute",
            Op::Create => "create",
            Op::Delete => "delete",
            Op::WriteAttributes(_) => "write-attributes",
            Op::Observe => "observe",
            Op::CancelObserve => "cancel-observe",
        }
    }
}

/// The notification attributes of Write-Attributes: periods are unsigned integers,
/// thresholds and steps numbers.
const ATTRIBUTES: &[(&str, bool)] = &[
    ("pmin", true),
    ("pmax", true),
    ("epmin", true),
    ("epmax", true),
    ("gt", false),
    ("lt", false),
    ("st", false),
];

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
            if ep.is_empty() {
                return Err(Reply::error(400, "empty endpoint name"));
            }
            op_route(method, ep, lwm2m, &params).map(Route::Op)
        }
        _ => Err(Reply::error(404, format!("no such resource: /{path}"))),
    }
}

fn not_allowed(method: &str, what: &str) -> Reply {
    Reply::error(405, format!("{method} is not allowed on {what}"))
}

/// Routes `/api/clients/{ep}/{lwm2m...}`.
fn op_route(
    method: &str,
    ep: &str,
    lwm2m: &[&str],
    params: &[(String, String)],
) -> Result<OpRoute, Reply> {
    let (lwm2m, suffix) = match lwm2m.split_last() {
        Some((&last, rest)) if last == "attributes" || last == "observe" => (rest, Some(last)),
        _ => (lwm2m, None),
    };
    let path = Path::from_segments(lwm2m)
        .ok()
        .filter(|p| !p.is_root() && lwm2m.iter().all(|s| !s.is_empty()))
        .ok_or_else(|| Reply::error(400, format!("invalid LwM2M path /{}", lwm2m.join("/"))))?;
    let mut r = OpRoute {
        ep: ep.to_string(),
        path: path.to_string(),
        op: Op::Read,
        format: None,
        timeout: None,
        raw: false,
    };
    let mut discover = false;
    let mut attributes = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "format" => {
                if format_from_name(v).is_none() {
                    return Err(Reply::error(
                        400,
                        format!("unknown format {v:?} (text, tlv, opaque, senml-json, senml-cbor, lwm2m-cbor, link)"),
                    ));
                }
                r.format = Some(v.clone());
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
                r.timeout = Some(Duration::from_secs(s));
            }
            "discover" | "raw" => {
                let on = match v.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(Reply::error(400, format!("{k} must be 1 or 0"))),
                };
                if k == "raw" {
                    r.raw = on;
                } else {
                    discover = on;
                }
            }
            name if suffix == Some("attributes") => {
                let Some((_, integer)) = ATTRIBUTES.iter().find(|(a, _)| *a == name) else {
                    return Err(Reply::error(400, format!("unknown attribute {name:?}")));
                };
                let valid = v.is_empty()
                    || if *integer {
                        v.parse::<u32>().is_ok()
                    } else {
                        v.parse::<f64>().is_ok_and(f64::is_finite)
                    };
                if !valid {
                    return Err(Reply::error(
                        400,
                        format!("bad value {v:?} for attribute {name}"),
                    ));
                }
                // An attribute without a value is removed.
                attributes.push(if v.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}={v}")
                });
            }
            other => {
                return Err(Reply::error(
                    400,
                    format!("unknown query parameter {other:?}"),
                ))
            }
        }
    }
    let depth = path.depth();
    r.op = match (suffix, method) {
        (Some("attributes"), "PUT") => {
            if attributes.is_empty() {
                return Err(Reply::error(
                    400,
                    "no attributes given (pmin, pmax, gt, lt, st, epmin, epmax)",
                ));
            }
            Op::WriteAttributes(attributes)
        }
        (Some("attributes"), _) => return Err(not_allowed(method, "attributes (PUT only)")),
        (Some(_), "POST") => Op::Observe,
        (Some(_), "DELETE") => Op::CancelObserve,
        (Some(_), _) => return Err(not_allowed(method, "observe (POST or DELETE)")),
        (None, "GET") if discover => Op::Discover,
        (None, "GET") => Op::Read,
        (None, "PUT") => Op::Write { replace: true },
        (None, "POST") if depth == 1 => Op::Create,
        (None, "POST") if depth == 2 => Op::Write { replace: false },
        (None, "POST") if depth == 3 => Op::Execute,
        (None, "POST") => {
            return Err(Reply::error(
                400,
                "POST on a resource instance is no LwM2M operation",
            ))
        }
        (None, "DELETE") => Op::Delete,
        (None, _) => return Err(not_allowed(method, "a client path")),
    };
    let takes_body = matches!(r.op, Op::Write { .. } | Op::Create);
    if r.raw && !takes_body {
        return Err(Reply::error(400, "raw=1 is for Write and Create"));
    }
    let takes_format = matches!(r.op, Op::Read | Op::Observe) || takes_body;
    if r.format.is_some() && !takes_format {
        return Err(Reply::error(
            400,
            format!("format= does not apply to {}", r.op.name()),
        ));
    }
    if discover && r.op != Op::Discover {
        return Err(Reply::error(400, "discover=1 is for GET"));
    }
    Ok(r)
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

/// The HTTP status for a request that got no CoAP answer.
fn failure(e: &ReadError) -> u16 {
    match e {
        ReadError::UnknownEndpoint(_) | ReadError::NotObserved(_) => 404,
        ReadError::BadPath(_) => 400,
        ReadError::Send(_) | ReadError::Stopped => 503,
        ReadError::Exchange(msg) if *msg == estuary::coap::ExchangeError::Reset.to_string() => 502,
        ReadError::Exchange(_) | ReadError::TimedOut(_) => 504,
    }
}

/// Answers a routed request; `body` is the HTTP request body (Write, Create, Execute).
pub fn answer(r: Route, body: &[u8], ctl: &ServerCtl, events: &EventLog) -> Reply {
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
        Route::Op(r) => answer_op(r, body, ctl),
    }
}

fn answer_op(r: OpRoute, body: &[u8], ctl: &ServerCtl) -> Reply {
    // `route` only lets valid paths through.
    let path = Path::parse(&r.path).unwrap_or_default();
    if r.op == Op::CancelObserve {
        return match ctl.cancel_observation(&r.ep, &r.path) {
            Ok(op) => Reply::json(200, &json!({ "op": op.0, "cancelled": true })),
            Err(e) => Reply::error(failure(&e), e),
        };
    }
    let result = if r.op == Op::Read {
        let accept = r.format.as_deref().and_then(format_from_name);
        ctl.read(&r.ep, &r.path, accept, r.timeout)
            .map(|res| (None, res))
    } else {
        let req = match op_request(&r, &path, body) {
            Ok(req) => req,
            Err(msg) => return Reply::error(400, msg),
        };
        ctl.request(&r.ep, r.op.name(), req, r.timeout)
            .map(|(op, res)| (Some(op), res))
    };
    match result {
        Ok((op, res)) => {
            let text = read_answer(&path, &res).to_json();
            match op.filter(|_| r.op == Op::Observe) {
                // The observation's id first, so it can be cancelled or matched to events.
                Some(op) => Reply::json_text(200, format!("{{\"op\":{},{}", op.0, &text[1..])),
                None => Reply::json_text(200, text),
            }
        }
        Err(e) => Reply::error(failure(&e), e),
    }
}

/// The CoAP request for a routed operation (not Read, not cancel), with its payload built
/// from the HTTP body.
pub fn op_request(r: &OpRoute, path: &Path, body: &[u8]) -> Result<OpRequest, String> {
    let mut req = OpRequest::get(&r.path);
    let format = r.format.as_deref().and_then(format_from_name);
    match &r.op {
        Op::Read | Op::CancelObserve => {}
        Op::Discover => req.accept = Some(content_format::LINK_FORMAT),
        Op::Observe => {
            req.observe = Some(0);
            req.accept = format;
        }
        Op::Write { replace } => {
            req.method = if *replace {
                OpMethod::Put
            } else {
                OpMethod::Post
            };
            let (cf, payload) = write_payload(path, format, r.raw, body, false)?;
            req.content_format = Some(cf);
            req.payload = payload;
        }
        Op::Create => {
            req.method = OpMethod::Post;
            let (cf, payload) = write_payload(path, format, r.raw, body, true)?;
            req.content_format = Some(cf);
            req.payload = payload;
        }
        Op::Execute => {
            req.method = OpMethod::Post;
            // Execute arguments go as they are, e.g. `0='x',1`.
            req.payload = body.to_vec();
        }
        Op::Delete => req.method = OpMethod::Delete,
        Op::WriteAttributes(q) => {
            req.method = OpMethod::Put;
            req.query = q.clone();
        }
    }
    Ok(req)
}

/// The Content-Format and payload of a Write (or Create with `create`): the body as is with
/// `raw`, else a JSON body `{"value": ...}` (resource) or `{"resources": {...}}` (instance;
/// Create may add `"id"`) encoded in `format` (default text for a single value, opaque for
/// an opaque one, TLV otherwise).
pub fn write_payload(
    path: &Path,
    format: Option<u16>,
    raw: bool,
    body: &[u8],
    create: bool,
) -> Result<(u16, Vec<u8>), String> {
    let single = path.depth() >= 3;
    if raw {
        let cf = format.unwrap_or(if single {
            content_format::TEXT_PLAIN
        } else {
            content_format::LWM2M_TLV
        });
        return Ok((cf, body.to_vec()));
    }
    let doc: Json =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Json::Object(doc) = doc else {
        return Err("the body must be a JSON object".into());
    };
    for k in doc.keys() {
        let ok = match k.as_str() {
            "value" => single,
            "resources" => !single,
            "id" => create,
            _ => false,
        };
        if !ok {
            return Err(format!("unexpected key {k:?} in the body for {path}"));
        }
    }
    let (base, entries) = if single {
        let v = doc.get("value").ok_or("the body needs \"value\"")?;
        let rid = path.rid().unwrap_or_default();
        (*path, value_entries(path, rid, v, format)?)
    } else {
        let res = doc
            .get("resources")
            .and_then(Json::as_object)
            .ok_or("the body needs \"resources\": {\"ID\": value, ...}")?;
        let oid = path.oid().unwrap_or_default();
        let iid = match (create, doc.get("id")) {
            (false, _) => path.iid().unwrap_or_default(),
            (true, Some(id)) => id
                .as_u64()
                .and_then(|i| u16::try_from(i).ok())
                .filter(|i| *i != u16::MAX)
                .ok_or("\"id\" must be an instance ID, 0 to 65534")?,
            // The client picks the ID: resources without their instance (TLV only).
            (true, None) if matches!(format, None | Some(content_format::LWM2M_TLV)) => 0,
            (true, None) => return Err("Create in this format needs \"id\"".into()),
        };
        let inst = Path::instance(oid, iid);
        let mut entries = Vec::new();
        for (rid, v) in res {
            let rid = rid
                .parse::<u16>()
                .ok()
                .filter(|r| *r != u16::MAX)
                .ok_or_else(|| format!("resource ID {rid:?} is not a number"))?;
            entries.extend(value_entries(
                &Path::resource(oid, iid, rid),
                rid,
                v,
                format,
            )?);
        }
        entries.sort_by_key(|e| e.path);
        let base = if create && doc.get("id").is_some() {
            *path
        } else {
            inst
        };
        (base, entries)
    };
    let cf = format.unwrap_or(match entries.as_slice() {
        [e] if single && e.path == base && matches!(e.value, Value::Opaque(_)) => {
            content_format::OCTET_STREAM
        }
        [e] if single && e.path == base => content_format::TEXT_PLAIN,
        _ => content_format::LWM2M_TLV,
    });
    let entries = if cf == content_format::OCTET_STREAM {
        // Opaque carries bytes: a string is sent as its UTF-8.
        entries
            .into_iter()
            .map(|e| match e.value {
                Value::String(s) => Entry::new(e.path, Value::Opaque(s.into_bytes())),
                _ => e,
            })
            .collect()
    } else {
        entries
    };
    let payload = content::encode(cf, &base, &entries).map_err(|e| {
        format!(
            "cannot encode that as {}: {e}",
            format_name(cf).unwrap_or("?")
        )
    })?;
    Ok((cf, payload))
}

/// The entries of one JSON value at a resource (or resource instance) `path`: an array or
/// an object with numeric keys is a multiple resource's instances.
fn value_entries(
    path: &Path,
    rid: u16,
    v: &Json,
    format: Option<u16>,
) -> Result<Vec<Entry>, String> {
    let instances: Option<Vec<(u16, &Json)>> = match v {
        Json::Array(items) if path.riid().is_none() => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (u16::try_from(i).unwrap_or(u16::MAX - 1), v))
                .collect(),
        ),
        Json::Object(m)
            if path.riid().is_none()
                && !m.is_empty()
                && m.keys().all(|k| k.parse::<u16>().is_ok()) =>
        {
            Some(
                m.iter()
                    .map(|(k, v)| (k.parse().unwrap_or_default(), v))
                    .collect(),
            )
        }
        _ => None,
    };
    let (o, i) = (
        path.oid().unwrap_or_default(),
        path.iid().unwrap_or_default(),
    );
    match instances {
        Some(list) => list
            .into_iter()
            .map(|(ri, v)| {
                let p = Path::resource_instance(o, i, rid, ri);
                Ok(Entry::new(
                    p,
                    json_value(v, format).map_err(|e| format!("{p}: {e}"))?,
                ))
            })
            .collect(),
        None => Ok(vec![Entry::new(
            *path,
            json_value(v, format).map_err(|e| format!("{path}: {e}"))?,
        )]),
    }
}

/// One JSON value as a typed LwM2M value. Plain JSON gives string, integer, float or
/// boolean; `{"TYPE": ...}` names another type: opaque (`base64`/`hex`), `objlnk` ("3:0"),
/// `time`, `unsigned`, `corelnk`, `float` (for an integral float).
pub fn json_value(v: &Json, format: Option<u16>) -> Result<Value, String> {
    Ok(match v {
        Json::String(s) if format == Some(content_format::OCTET_STREAM) => {
            Value::Opaque(s.as_bytes().to_vec())
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if let Some(u) = n.as_u64() {
                Value::Unsigned(u)
            } else {
                Value::Float(n.as_f64().ok_or("number out of range")?)
            }
        }
        Json::Object(m) if m.len() == 1 => {
            let (k, x) = m.iter().next().ok_or("empty object")?;
            let text = || x.as_str().ok_or(format!("{k} needs a string"));
            match k.as_str() {
                "base64" => Value::Opaque(
                    base64::decode(text()?, Alphabet::Standard)
                        .or_else(|| base64::decode(text().unwrap_or_default(), Alphabet::UrlSafe))
                        .ok_or("not base64")?,
                ),
                "hex" => Value::Opaque(unhex(text()?).ok_or("not hex")?),
                "objlnk" => {
                    let (a, b) = text()?.split_once(':').ok_or("objlnk is \"OID:IID\"")?;
                    Value::Objlnk(
                        a.parse().map_err(|_| "bad OID")?,
                        b.parse().map_err(|_| "bad IID")?,
                    )
                }
                "corelnk" => Value::Corelnk(text()?.to_string()),
                "time" => Value::Time(x.as_i64().ok_or("time needs an integer")?),
                "unsigned" => {
                    Value::Unsigned(x.as_u64().ok_or("unsigned needs a non-negative integer")?)
                }
                "float" => Value::Float(x.as_f64().ok_or("float needs a number")?),
                other => return Err(format!("unknown value type {other:?}")),
            }
        }
        other => return Err(format!("{other} is not a value")),
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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

/// The largest request body taken (a Write of a big opaque value fits, a flood does not).
const MAX_BODY: u64 = 1 << 20;

fn handle(mut req: tiny_http::Request, ctl: &ServerCtl, events: &EventLog) {
    let method = req.method().as_str().to_string();
    let mut body = Vec::new();
    let read = std::io::Read::read_to_end(
        &mut std::io::Read::take(req.as_reader(), MAX_BODY + 1),
        &mut body,
    );
    let reply = match (read, route(&method, req.url())) {
        (Err(e), _) => Reply::error(400, format!("reading the request body: {e}")),
        _ if body.len() as u64 > MAX_BODY => {
            Reply::error(413, format!("request body over {MAX_BODY} bytes"))
        }
        (Ok(_), Ok(r)) => answer(r, &body, ctl, events),
        (Ok(_), Err(reply)) => reply,
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
    use estuary::dm::ValueKind;

    fn op(ep: &str, path: &str, op: Op, format: Option<&str>) -> Route {
        Route::Op(OpRoute {
            ep: ep.into(),
            path: path.into(),
            op,
            format: format.map(Into::into),
            timeout: None,
            raw: false,
        })
    }

    fn read(ep: &str, path: &str, format: Option<&str>) -> Route {
        op(ep, path, Op::Read, format)
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
            Ok(Route::Op(OpRoute {
                ep: "dev1".into(),
                path: "/3".into(),
                op: Op::Read,
                format: Some("tlv".into()),
                timeout: Some(Duration::from_secs(5)),
                raw: false,
            }))
        );
    }

    #[test]
    fn every_operation_routes() {
        let cases = [
            ("GET", "/api/clients/d/3/0?discover=1", op("d", "/3/0", Op::Discover, None)),
            (
                "PUT",
                "/api/clients/d/1/0/1?format=text",
                op("d", "/1/0/1", Op::Write { replace: true }, Some("text")),
            ),
            (
                "PUT",
                "/api/clients/d/1/0?format=senml-json",
                op("d", "/1/0", Op::Write { replace: true }, Some("senml-json")),
            ),
            (
                "POST",
                "/api/clients/d/1/0",
                op("d", "/1/0", Op::Write { replace: false }, None),
            ),
            ("POST", "/api/clients/d/3/0/4", op("d", "/3/0/4", Op::Execute, None)),
            (
                "POST",
                "/api/clients/d/3303?format=tlv",
                op("d", "/3303", Op::Create, Some("tlv")),
            ),
            ("DELETE", "/api/clients/d/3303/1", op("d", "/3303/1", Op::Delete, None)),
            (
                "PUT",
                "/api/clients/d/3303/0/5700/attributes?pmin=5&pmax=30&gt=20.5&lt=-1&st=0.5&epmin=1&epmax=60",
                op(
                    "d",
                    "/3303/0/5700",
                    Op::WriteAttributes(
                        ["pmin=5", "pmax=30", "gt=20.5", "lt=-1", "st=0.5", "epmin=1", "epmax=60"]
                            .map(String::from)
                            .to_vec(),
                    ),
                    None,
                ),
            ),
            (
                "PUT",
                "/api/clients/d/3303/0/attributes?gt=",
                op("d", "/3303/0", Op::WriteAttributes(vec!["gt".into()]), None),
            ),
            (
                "POST",
                "/api/clients/d/3303/0/5700/observe?format=senml-cbor",
                op("d", "/3303/0/5700", Op::Observe, Some("senml-cbor")),
            ),
            (
                "DELETE",
                "/api/clients/d/3303/0/5700/observe",
                op("d", "/3303/0/5700", Op::CancelObserve, None),
            ),
        ];
        for (m, t, want) in cases {
            assert_eq!(route(m, t), Ok(want), "{m} {t}");
        }
        match route("PUT", "/api/clients/d/1/0/1?raw=1&format=opaque") {
            Ok(Route::Op(r)) => assert!(r.raw && r.format.as_deref() == Some("opaque")),
            other => panic!("{other:?}"),
        }
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
            "/api/clients/dev1/3/0/0?discover=yes",
            "/api/clients/dev1/3/0?discover=1&format=tlv",
            "/api/clients/dev1/3/0/0?raw=1",
            "/api/clients/dev1/attributes",
            "/api/clients/dev1/observe",
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
        for (m, t) in [
            ("PUT", "/api/clients/d/3/0/0/attributes"),
            ("PUT", "/api/clients/d/3/0/0/attributes?pmin=-1"),
            ("PUT", "/api/clients/d/3/0/0/attributes?gt=abc"),
            ("PUT", "/api/clients/d/3/0/0/attributes?gt=inf"),
            ("PUT", "/api/clients/d/3/0/0/attributes?foo=1"),
            ("PUT", "/api/clients/d/3/0/0/attributes?format=tlv"),
            ("POST", "/api/clients/d/3/0/4/0"),
            ("POST", "/api/clients/d/3/0/4?format=text"),
            ("DELETE", "/api/clients/d/3/0?raw=1"),
        ] {
            assert_eq!(status(m, t), 400, "{m} {t}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(status("POST", "/api/clients"), 405);
        assert_eq!(status("DELETE", "/api/events"), 405);
        assert_eq!(status("HEAD", "/api/clients/dev1/3/0/0"), 405);
        assert_eq!(status("PATCH", "/api/clients/dev1/3/0/0"), 405);
        assert_eq!(status("GET", "/api/clients/dev1/3/0/0/observe"), 405);
        assert_eq!(
            status("POST", "/api/clients/dev1/3/0/0/attributes?pmin=1"),
            405
        );
    }

    fn write_route(method: &str, target: &str) -> OpRoute {
        match route(method, target) {
            Ok(Route::Op(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Builds the CoAP request and decodes its payload back with the content codecs.
    fn written(method: &str, target: &str, body: &str) -> Result<(OpRequest, Vec<Entry>), String> {
        let r = write_route(method, target);
        let path = Path::parse(&r.path).unwrap();
        let req = op_request(&r, &path, body.as_bytes())?;
        let base = if r.op == Op::Create {
            Path::parse(&r.path).unwrap()
        } else {
            path
        };
        let entries = match req.content_format {
            Some(cf) if cf != content_format::LINK_FORMAT => {
                let inst;
                let base = if r.op == Op::Create && req.payload.first().is_some_and(|b| b >> 6 == 3)
                {
                    // Bare resources of a Create without "id" decode under an instance.
                    inst = Path::instance(path.oid().unwrap(), 0);
                    &inst
                } else {
                    &base
                };
                content::decode(cf, base, &req.payload, &|_| None).map_err(|e| e.to_string())?
            }
            _ => Vec::new(),
        };
        Ok((req, entries))
    }

    #[test]
    fn write_bodies_become_payloads() {
        // A resource in text by default.
        let (req, _) = written("PUT", "/api/clients/d/1/0/1", r#"{"value": 60}"#).unwrap();
        assert_eq!(req.method, OpMethod::Put);
        assert_eq!(
            (req.content_format, req.payload.as_slice()),
            (Some(0), &b"60"[..])
        );
        let (req, _) = written("PUT", "/api/clients/d/1/0/7", r#"{"value": "UQ"}"#).unwrap();
        assert_eq!(req.payload, b"UQ");
        let (req, _) = written("PUT", "/api/clients/d/1/0/6", r#"{"value": true}"#).unwrap();
        assert_eq!(req.payload, b"1");
        // Opaque by default for an opaque value; a string as bytes with format=opaque.
        let (req, _) = written(
            "PUT",
            "/api/clients/d/5/0/0",
            r#"{"value": {"base64": "AQI="}}"#,
        )
        .unwrap();
        assert_eq!((req.content_format, req.payload), (Some(42), vec![1, 2]));
        let (req, _) = written(
            "PUT",
            "/api/clients/d/5/0/0?format=opaque",
            r#"{"value": "hi"}"#,
        )
        .unwrap();
        assert_eq!(req.payload, b"hi");
        let (req, _) = written(
            "PUT",
            "/api/clients/d/5/0/0",
            r#"{"value": {"hex": "0aff"}}"#,
        )
        .unwrap();
        assert_eq!(req.payload, [0x0A, 0xFF]);
        // An instance in TLV by default, and in every typed format.
        let body = r#"{"resources": {"5700": 1.5, "5701": "Cel", "5750": {"objlnk": "3:0"}}}"#;
        let want = vec![
            Entry::new(Path::resource(3303, 0, 5700), Value::Float(1.5)),
            Entry::new(Path::resource(3303, 0, 5701), Value::String("Cel".into())),
            Entry::new(Path::resource(3303, 0, 5750), Value::Objlnk(3, 0)),
        ];
        let (req, got) = written("POST", "/api/clients/d/3303/0", body).unwrap();
        assert_eq!(
            (req.method, req.content_format),
            (OpMethod::Post, Some(11542))
        );
        // TLV without declared types: raw bytes, checked by re-decoding with types.
        assert_eq!(got.len(), 3);
        let kinds = |p: &Path| match p.rid() {
            Some(5700) => Some(ValueKind::Float),
            Some(5701) => Some(ValueKind::String),
            _ => Some(ValueKind::Objlnk),
        };
        assert_eq!(
            content::decode(11542, &Path::instance(3303, 0), &req.payload, &kinds).unwrap(),
            want
        );
        for f in ["senml-json", "senml-cbor", "lwm2m-cbor"] {
            let (req, got) =
                written("PUT", &format!("/api/clients/d/3303/0?format={f}"), body).unwrap();
            assert_eq!(req.content_format, format_from_name(f));
            // LwM2M CBOR writes an object link as text; typeless decoding gives a string.
            let link = &got[2].value;
            assert!(matches!(link, Value::Objlnk(3, 0)) || *link == Value::String("3:0".into()));
            assert_eq!(got[..2], want[..2], "{f}");
        }
        // A multiple resource as an array or an object of instance IDs.
        let (_, got) = written(
            "PUT",
            "/api/clients/d/3/0/6?format=senml-json",
            r#"{"value": [1, 5]}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Entry::new(Path::resource_instance(3, 0, 6, 0), Value::Integer(1)),
                Entry::new(Path::resource_instance(3, 0, 6, 1), Value::Integer(5)),
            ]
        );
        let (_, got) = written(
            "PUT",
            "/api/clients/d/3/0/6?format=tlv",
            r#"{"value": {"7": {"time": 5}}}"#,
        )
        .unwrap();
        assert_eq!(got[0].path, Path::resource_instance(3, 0, 6, 7));
        // raw=1: the body as it is.
        let r = write_route("PUT", "/api/clients/d/1/0?raw=1");
        let req = op_request(&r, &Path::instance(1, 0), &[1, 2]).unwrap();
        assert_eq!((req.content_format, req.payload), (Some(11542), vec![1, 2]));
    }

    #[test]
    fn create_execute_attributes_observe_requests() {
        let (req, got) = written(
            "POST",
            "/api/clients/d/3303",
            r#"{"id": 2, "resources": {"5700": 20}}"#,
        )
        .unwrap();
        assert_eq!((req.method, req.path.as_str()), (OpMethod::Post, "/3303"));
        assert_eq!(got[0].path, Path::resource(3303, 2, 5700));
        assert_eq!(req.payload[0] >> 6, 0, "an Object Instance TLV");
        let (req, got) = written(
            "POST",
            "/api/clients/d/3303",
            r#"{"resources": {"5700": 20}}"#,
        )
        .unwrap();
        assert_eq!(req.payload[0] >> 6, 3, "bare Resource TLVs");
        assert_eq!(got.len(), 1);
        assert!(written(
            "POST",
            "/api/clients/d/3303?format=senml-json",
            r#"{"resources": {"5700": 20}}"#
        )
        .is_err());

        let (req, _) = written("POST", "/api/clients/d/3/0/4", "0='x'").unwrap();
        assert_eq!((req.method, req.content_format), (OpMethod::Post, None));
        assert_eq!(req.payload, b"0='x'");
        let (req, _) = written("PUT", "/api/clients/d/3/0/9/attributes?pmin=5&st=1", "").unwrap();
        assert_eq!((req.method, req.payload.len()), (OpMethod::Put, 0));
        assert_eq!(req.query, ["pmin=5", "st=1"]);
        let (req, _) = written("POST", "/api/clients/d/3/0/9/observe?format=tlv", "").unwrap();
        assert_eq!(
            (req.method, req.observe, req.accept),
            (OpMethod::Get, Some(0), Some(11542))
        );
        let (req, _) = written("GET", "/api/clients/d/3/0?discover=1", "").unwrap();
        assert_eq!(req.accept, Some(content_format::LINK_FORMAT));
        let (req, _) = written("DELETE", "/api/clients/d/3303/2", "").unwrap();
        assert_eq!(req.method, OpMethod::Delete);
    }

    #[test]
    fn bad_write_bodies_are_refused() {
        for (m, t, body) in [
            ("PUT", "/api/clients/d/1/0/1", "60"),
            ("PUT", "/api/clients/d/1/0/1", "{"),
            ("PUT", "/api/clients/d/1/0/1", r#"{"resources": {}}"#),
            ("PUT", "/api/clients/d/1/0", r#"{"value": 1}"#),
            ("PUT", "/api/clients/d/1/0", r#"{"resources": {"x": 1}}"#),
            ("PUT", "/api/clients/d/1/0", r#"{"resources": {"1": null}}"#),
            ("PUT", "/api/clients/d/1/0", r#"{"id": 1, "resources": {}}"#),
            (
                "PUT",
                "/api/clients/d/1/0/1",
                r#"{"value": {"base64": "***"}}"#,
            ),
            (
                "PUT",
                "/api/clients/d/1/0/1",
                r#"{"value": {"objlnk": "3"}}"#,
            ),
            ("PUT", "/api/clients/d/1/0/1", r#"{"value": {"nope": 1}}"#),
            (
                "PUT",
                "/api/clients/d/1/0/1?format=opaque",
                r#"{"value": 5}"#,
            ),
            (
                "PUT",
                "/api/clients/d/1/0/1?format=text",
                r#"{"value": [1, 2]}"#,
            ),
            ("PUT", "/api/clients/d/1/0/1?format=link", r#"{"value": 1}"#),
            (
                "POST",
                "/api/clients/d/1",
                r#"{"id": 65535, "resources": {"1": 1}}"#,
            ),
        ] {
            assert!(written(m, t, body).is_err(), "{m} {t} {body}");
        }
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
        let methods = ["GET", "PUT", "POST", "DELETE"];
        for k in 0..20_000 {
            let n = (estuary::RandomSource::next_u32(&mut rng) % 40) as usize;
            let s: String = (0..n)
                .map(|_| {
                    let i = estuary::RandomSource::next_u32(&mut rng) as usize % alphabet.len();
                    alphabet[i] as char
                })
                .collect();
            let m = methods[k % methods.len()];
            let _ = route(m, &s);
            if let Ok(Route::Op(r)) = route(m, &format!("/api/clients/{s}")) {
                let path = Path::parse(&r.path).unwrap();
                let _ = op_request(&r, &path, s.as_bytes());
            }
        }
    }
}
