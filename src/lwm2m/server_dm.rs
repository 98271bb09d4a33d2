//! Device management as one server sees it: turns its CoAP requests into data-model
//! operations (Read, Discover, Write, Write-Attributes, Execute, Create, Delete, Observe)
//! and produces its notifications. Holds that server's attributes and observations.
//!
//! The client routes requests here and sends what comes back; no transport or clock.

use log::debug;

use super::attributes::{AttributeStore, Attributes};
use super::observe::{Notification, ObserveRegistry, Periods, Reading};
use crate::coap::{self, code, content_format as cf, CoapOption, InboundRequest, Packet};
use crate::dm::ops::{self, Requester, WriteMode};
use crate::dm::{DataModel, DmError, Path, ValueKind};
use crate::time::Instant;

/// The outcome of one request.
#[derive(Debug)]
pub struct Handled {
    pub response: Packet,
    /// Resource paths whose values the request changed (observers must hear of them).
    pub changed: Vec<Path>,
    /// An instance the request deleted (every server's attributes and observations on it end).
    pub deleted: Option<Path>,
}

/// One management server's device-management state.
#[derive(Debug)]
pub struct ServerDm {
    pub ssid: u16,
    pub attributes: AttributeStore,
    pub observe: ObserveRegistry,
}

/// The periods and value conditions in force at `path` for server `ssid`: its attributes,
/// else the default periods of its Server instance (/1/x/2, /1/x/3).
fn periods(
    attrs: &AttributeStore,
    ssid: u16,
    dm: &DataModel,
    path: &Path,
) -> (Periods, Attributes) {
    let srv = dm.server.by_ssid(ssid);
    let period = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let a = attrs.effective(path);
    let p = Periods::of(
        &a,
        srv.and_then(|s| period(s.default_min_period)),
        srv.and_then(|s| period(s.default_max_period)),
    );
    (p, a)
}

fn response(c: u8) -> Packet {
    coap::new_response(c)
}

fn content(format: u16, payload: Vec<u8>) -> Packet {
    let mut r = response(code::CONTENT);
    coap::set_content_format(&mut r, format);
    r.payload = payload;
    r
}

impl ServerDm {
    pub fn new(ssid: u16) -> Self {
        ServerDm {
            ssid,
            attributes: AttributeStore::default(),
            observe: ObserveRegistry::default(),
        }
    }

    fn reading(dm: &DataModel, path: &Path, accept: Option<u16>) -> Result<Reading, DmError> {
        let (format, payload) = ops::read(dm, path, accept, Requester::Management)?;
        Ok(Reading {
            content_format: format,
            payload,
            numeric: ops::numeric_value(dm, path),
        })
    }

    /// Answers one request.
    pub fn handle_request(
        &mut self,
        dm: &mut DataModel,
        now: Instant,
        req: &InboundRequest,
    ) -> Handled {
        let mut out = Handled {
            response: response(code::CHANGED),
            changed: Vec::new(),
            deleted: None,
        };
        let p = &req.packet;
        let path = match coap::uri_path(p).map(|segs| Path::from_segments(&segs)) {
            Some(Ok(path)) => path,
            _ => {
                debug!("ssid={}: request with an invalid path", self.ssid);
                out.response = response(code::BAD_REQUEST);
                return out;
            }
        };
        let Some(query) = coap::uri_query(p) else {
            out.response = response(code::BAD_REQUEST);
            return out;
        };
        let method = coap::raw_code(p);
        let format = coap::content_format_of(p);
        let who = Requester::Management;
        let result: Result<Packet, DmError> = match method {
            code::GET => self.get(dm, now, req, &path),
            code::PUT if format.is_none() && p.payload.is_empty() && !query.is_empty() => {
                self.write_attributes(dm, &path, &query)
            }
            code::PUT => {
                ops::write(dm, &path, format, &p.payload, WriteMode::Replace, who).map(|changed| {
                    out.changed = changed;
                    response(code::CHANGED)
                })
            }
            code::POST => match path.depth() {
                1 => ops::create(dm, &path, format, &p.payload, who).map(|(iid, changed)| {
                    out.changed = changed;
                    out.changed
                        .push(Path::instance(path.oid().unwrap_or(0), iid));
                    let mut r = response(code::CREATED);
                    for seg in path.to_string().trim_start_matches('/').split('/') {
                        r.add_option(CoapOption::LocationPath, seg.as_bytes().to_vec());
                    }
                    r.add_option(CoapOption::LocationPath, iid.to_string().into_bytes());
                    r
                }),
                2 => ops::write(dm, &path, format, &p.payload, WriteMode::Update, who).map(
                    |changed| {
                        out.changed = changed;
                        response(code::CHANGED)
                    },
                ),
                3 => ops::execute(dm, &path, &p.payload, who).map(|()| response(code::CHANGED)),
                _ => Err(DmError::MethodNotAllowed),
            },
            code::DELETE => ops::delete(dm, &path, who).map(|()| {
                out.deleted = Some(path);
                response(code::DELETED)
            }),
            _ => Err(DmError::MethodNotAllowed),
        };
        out.response = match result {
            Ok(r) => r,
            Err(e) => {
                debug!("ssid={} {} {path}: {e}", self.ssid, code::to_string(method));
                out.changed.clear();
                out.deleted = None;
                response(e.coap_code())
            }
        };
        out
    }

    fn get(
        &mut self,
        dm: &DataModel,
        now: Instant,
        req: &InboundRequest,
        path: &Path,
    ) -> Result<Packet, DmError> {
        let p = &req.packet;
        let accept = coap::accept_of(p);
        if accept == Some(cf::LINK_FORMAT) {
            let text = ops::discover(dm, path, Requester::Management, &|lp| {
                self.attributes.at(lp).link_params()
            })?;
            return Ok(content(cf::LINK_FORMAT, text.into_bytes()));
        }
        match coap::uint_option(p, CoapOption::Observe) {
            Some(0) => {
                let r = Self::reading(dm, path, accept)?;
                let mut resp = content(r.content_format, r.payload.clone());
                let seq = self
                    .observe
                    .register(now, req.token.clone(), *path, accept, r);
                coap::set_uint_option(&mut resp, CoapOption::Observe, seq);
                debug!("ssid={}: observing {path}", self.ssid);
                Ok(resp)
            }
            obs => {
                if obs == Some(1) && self.observe.cancel_token(&req.token) {
                    debug!("ssid={}: observation of {path} cancelled by GET", self.ssid);
                }
                let (format, payload) = ops::read(dm, path, accept, Requester::Management)?;
                Ok(content(format, payload))
            }
        }
    }

    fn write_attributes(
        &mut self,
        dm: &DataModel,
        path: &Path,
        query: &[String],
    ) -> Result<Packet, DmError> {
        let kind = ops::kind_at(dm, path, Requester::Management)?;
        let numeric = matches!(
            kind,
            Some(ValueKind::Integer | ValueKind::Unsigned | ValueKind::Float | ValueKind::Time)
        );
        self.attributes.write(path, query, numeric)?;
        Ok(response(code::CHANGED))
    }

    /// Notifications due now, as (token, packet) to send.
    pub fn poll_notifications(&mut self, dm: &DataModel, now: Instant) -> Vec<(Vec<u8>, Packet)> {
        if self.observe.is_empty() {
            return Vec::new();
        }
        let (attrs, ssid) = (&self.attributes, self.ssid);
        let notes: Vec<Notification> = self.observe.poll(
            now,
            &|p: &Path| periods(attrs, ssid, dm, p),
            &mut |p: &Path, accept: Option<u16>| Self::reading(dm, p, accept),
        );
        notes
            .into_iter()
            .map(|n| {
                let packet = match n.result {
                    Ok(r) => {
                        let mut p = content(r.content_format, r.payload);
                        coap::set_uint_option(&mut p, CoapOption::Observe, n.observe);
                        p
                    }
                    // A non-2.xx notification ends the observation (RFC 7641 §3.2).
                    Err(e) => response(e.coap_code()),
                };
                (n.token, packet)
            })
            .collect()
    }

    /// When notifications may next be due.
    pub fn next_deadline(&self, dm: &DataModel) -> Option<Instant> {
        self.observe
            .next_deadline(&|p: &Path| periods(&self.attributes, self.ssid, dm, p))
    }
}
