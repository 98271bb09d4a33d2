//! The client's side of the Bootstrap Interface (LwM2M 1.1 TS §5.2.7): turns one request
//! from the Bootstrap-Server (Write, Delete, Read, Discover, Finish) into data-model changes
//! and the CoAP response. Writes to Security (/0) and Server (/1) are built on copies of the
//! two objects and only swapped in when every value and the whole result are valid, so a
//! refused request leaves the data model as it was.

use std::collections::BTreeMap;

use log::{debug, warn};

use crate::coap::{self, code, content_format as cf, InboundRequest};
use crate::dm::codec::{self, Entry};
use crate::dm::objects::{SecurityInstance, SecurityObject, ServerInstance, ServerObject};
use crate::dm::ops::{self, Requester, WriteMode};
use crate::dm::{oid, DataModel, DmError, Path, Value};

/// Largest single value a Bootstrap-Write may carry (certificates and keys fit easily).
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// What the client does with one request from the Bootstrap-Server.
#[derive(Debug)]
pub struct BootstrapReply {
    pub response: coap::Packet,
    /// Some(true/false) when the request was Bootstrap-Finish: whether it was accepted
    /// (2.04) or refused (4.06) by the consistency check.
    pub finish: Option<bool>,
    /// Paths whose values changed (for observers; may be empty).
    pub changed: Vec<Path>,
}

fn reply(c: u8) -> BootstrapReply {
    BootstrapReply {
        response: coap::new_response(c),
        finish: None,
        changed: Vec::new(),
    }
}

/// Handles one request from the Bootstrap-Server.
pub fn handle_bootstrap_request(dm: &mut DataModel, req: &InboundRequest) -> BootstrapReply {
    let p = &req.packet;
    let method = coap::raw_code(p);
    // A path that is not UTF-8 must not fall back to "/" (a Delete there wipes everything).
    let Some(segs) = coap::uri_path(p) else {
        debug!("bootstrap request with a non-UTF-8 path");
        return reply(code::BAD_REQUEST);
    };
    if method == code::POST && segs.len() == 1 && segs[0] == "bs" {
        return finish(dm);
    }
    let path = match Path::from_segments(&segs) {
        Ok(path) => path,
        Err(e) => {
            debug!("bootstrap request with an invalid path {segs:?}: {e:?}");
            return reply(code::BAD_REQUEST);
        }
    };
    let result = match method {
        code::GET => get(dm, &path, coap::accept_of(p)),
        code::PUT => write(dm, &path, coap::content_format_of(p), &p.payload).map(|changed| {
            let mut r = reply(code::CHANGED);
            r.changed = changed;
            r
        }),
        code::DELETE => delete(dm, &path).map(|()| reply(code::DELETED)),
        _ => Err(DmError::MethodNotAllowed),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            debug!("bootstrap {} {path}: {e}", code::to_string(method));
            reply(e.coap_code())
        }
    }
}

fn finish(dm: &DataModel) -> BootstrapReply {
    match crate::lwm2m::bootstrap::check_configuration(dm) {
        Ok(()) => BootstrapReply {
            finish: Some(true),
            ..reply(code::CHANGED)
        },
        Err(reason) => {
            warn!("Bootstrap-Finish refused: {reason}");
            BootstrapReply {
                finish: Some(false),
                ..reply(code::NOT_ACCEPTABLE)
            }
        }
    }
}

fn get(dm: &DataModel, path: &Path, accept: Option<u16>) -> Result<BootstrapReply, DmError> {
    if accept == Some(cf::LINK_FORMAT) || path.is_root() {
        if path.depth() > 1 {
            return Err(DmError::BadRequest);
        }
        let text = bootstrap_discover(dm, path)?;
        let mut r = reply(code::CONTENT);
        coap::set_content_format(&mut r.response, cf::LINK_FORMAT);
        r.response.payload = text.into_bytes();
        return Ok(r);
    }
    // Bootstrap-Read: Server and Access Control objects only (TS 1.1 §5.2.7.5).
    match path.oid() {
        Some(oid::SERVER | oid::ACCESS_CONTROL) if path.depth() <= 2 => {}
        _ => return Err(DmError::BadRequest),
    }
    let (format, payload) = ops::read(dm, path, accept, Requester::Bootstrap)?;
    let mut r = reply(code::CONTENT);
    coap::set_content_format(&mut r.response, format);
    r.response.payload = payload;
    Ok(r)
}

/// The Bootstrap-Discover payload for `path` ("/" or "/oid").
pub fn bootstrap_discover(dm: &DataModel, path: &Path) -> Result<String, DmError> {
    let ids = match (path.oid(), path.depth()) {
        (None, _) => dm.object_ids(),
        (Some(o), 1) => {
            dm.object(o).ok_or(DmError::NotFound)?;
            vec![o]
        }
        _ => return Err(DmError::BadRequest),
    };
    let mut links = Vec::new();
    if path.is_root() {
        links.push("</>;lwm2m=1.1".to_string());
    }
    for o in ids {
        let obj = dm.object(o).ok_or(DmError::NotFound)?;
        let instances = obj.instances();
        if obj.version() != "1.0" {
            links.push(format!("</{o}>;ver={}", obj.version()));
        } else if instances.is_empty() {
            links.push(format!("</{o}>"));
        }
        for i in instances {
            let mut l = format!("</{o}/{i}>");
            match o {
                oid::SECURITY => {
                    if let Some(sec) = dm.security.get(i) {
                        if let Some(ssid) = sec.ssid {
                            l.push_str(&format!(";ssid={ssid}"));
                        }
                        l.push_str(&format!(";uri=\"{}\"", sec.server_uri));
                    }
                }
                oid::SERVER => {
                    if let Some(srv) = dm.server.get(i) {
                        l.push_str(&format!(";ssid={}", srv.ssid));
                    }
                }
                _ => {}
            }
            links.push(l);
        }
    }
    Ok(links.join(","))
}

fn delete(dm: &mut DataModel, path: &Path) -> Result<(), DmError> {
    if path.rid().is_some() {
        return Err(DmError::BadRequest);
    }
    let Some(o) = path.oid() else {
        // "/": everything except the bootstrap account and the Device instance.
        delete_object(dm, oid::SECURITY);
        delete_object(dm, oid::SERVER);
        for o in dm.object_ids() {
            if o > oid::SERVER {
                delete_object(dm, o);
            }
        }
        return Ok(());
    };
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    let Some(i) = path.iid() else {
        delete_object(dm, o);
        return Ok(());
    };
    if !obj.instances().contains(&i) {
        return Err(DmError::NotFound);
    }
    match o {
        oid::SECURITY => {
            if dm.security.get(i).is_some_and(|s| s.bootstrap_server) {
                debug!("Bootstrap-Delete of the bootstrap account /0/{i} refused");
                return Err(DmError::BadRequest);
            }
            dm.security.remove(i);
        }
        oid::SERVER => {
            dm.server.remove(i);
        }
        oid::DEVICE if i == 0 => {
            debug!("Bootstrap-Delete of /3/0 refused");
            return Err(DmError::BadRequest);
        }
        _ => ops::delete(dm, path, Requester::Bootstrap)?,
    }
    Ok(())
}

/// Deletes every instance of `o` that may go: the bootstrap account and /3/0 stay, and
/// instances the object refuses to delete are left alone.
fn delete_object(dm: &mut DataModel, o: u16) {
    match o {
        oid::SECURITY => {
            let gone: Vec<u16> = dm.security.management_accounts().map(|(i, _)| i).collect();
            for i in gone {
                dm.security.remove(i);
            }
        }
        oid::SERVER => dm.server.purge(),
        _ => {
            let Some(obj) = dm.object_mut(o) else {
                return;
            };
            for i in obj.instances() {
                if o == oid::DEVICE && i == 0 {
                    continue;
                }
                if let Err(e) = obj.delete_instance(i) {
                    debug!("Bootstrap-Delete: /{o}/{i} kept: {e}");
                }
            }
        }
    }
}

/// Decodes a Bootstrap-Write payload into values per instance, checking shape and size.
fn decode_per_instance(
    path: &Path,
    format: Option<u16>,
    payload: &[u8],
    kind_of: fn(u16) -> Option<crate::dm::ValueKind>,
) -> Result<BTreeMap<u16, Vec<(u16, Value)>>, DmError> {
    let format = format.ok_or_else(|| {
        debug!("Bootstrap-Write {path} without a Content-Format");
        DmError::BadRequest
    })?;
    let entries: Vec<Entry> =
        codec::decode(format, path, payload, &|p: &Path| p.rid().and_then(kind_of))?;
    if entries.is_empty() {
        debug!("Bootstrap-Write {path}: no values");
        return Err(DmError::BadRequest);
    }
    let mut out: BTreeMap<u16, Vec<(u16, Value)>> = BTreeMap::new();
    for e in entries {
        let (Some(i), Some(r), None) = (e.path.iid(), e.path.rid(), e.path.riid()) else {
            debug!(
                "Bootstrap-Write {path}: {} is not a single resource",
                e.path
            );
            return Err(DmError::BadRequest);
        };
        if !path.contains(&e.path) {
            debug!("Bootstrap-Write {path}: {} lies outside the target", e.path);
            return Err(DmError::BadRequest);
        }
        let len = match &e.value {
            Value::Opaque(b) => b.len(),
            Value::String(s) | Value::Corelnk(s) => s.len(),
            _ => 0,
        };
        if len > MAX_VALUE_LEN {
            debug!(
                "Bootstrap-Write {}: value of {len} bytes is too large",
                e.path
            );
            return Err(DmError::BadRequest);
        }
        let list = out.entry(i).or_default();
        if list.iter().any(|(rid, _)| *rid == r) {
            debug!("Bootstrap-Write {}: written twice", e.path);
            return Err(DmError::BadRequest);
        }
        list.push((r, e.value));
    }
    Ok(out)
}

fn write(
    dm: &mut DataModel,
    path: &Path,
    format: Option<u16>,
    payload: &[u8],
) -> Result<Vec<Path>, DmError> {
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    if path.riid().is_some() {
        return Err(DmError::BadRequest);
    }
    dm.object(o).ok_or(DmError::NotFound)?;
    if payload.len() > MAX_VALUE_LEN + 1024 {
        debug!("Bootstrap-Write {path}: payload of {} bytes", payload.len());
        return Err(DmError::BadRequest);
    }
    let mut changed = Vec::new();
    match o {
        oid::SECURITY => {
            let per = decode_per_instance(path, format, payload, SecurityObject::resource_kind)?;
            let mut next = dm.security.clone();
            for (i, values) in per {
                let mut inst = next.get(i).cloned().unwrap_or_else(SecurityInstance::blank);
                for (r, v) in values {
                    inst.set_resource(r, v).map_err(|why| {
                        debug!("Bootstrap-Write /0/{i}/{r}: {why}");
                        DmError::BadRequest
                    })?;
                    changed.push(Path::resource(o, i, r));
                }
                next.replace(i, inst).map_err(|e| {
                    debug!("Bootstrap-Write /0/{i}: {e}");
                    DmError::BadRequest
                })?;
            }
            dm.security = next;
        }
        oid::SERVER => {
            let per = decode_per_instance(path, format, payload, ServerObject::resource_kind)?;
            let mut next = dm.server.clone();
            for (i, values) in per {
                let mut inst = next.get(i).cloned().unwrap_or_else(ServerInstance::blank);
                for (r, v) in values {
                    inst.set_resource(r, v).map_err(|why| {
                        debug!("Bootstrap-Write /1/{i}/{r}: {why}");
                        DmError::BadRequest
                    })?;
                    changed.push(Path::resource(o, i, r));
                }
                next.replace(i, inst).map_err(|e| {
                    debug!("Bootstrap-Write /1/{i}: {e}");
                    DmError::BadRequest
                })?;
            }
            dm.server = next;
        }
        _ => return write_other(dm, path, format, payload),
    }
    Ok(changed)
}

/// Bootstrap-Write to an object other than Security and Server: each instance is written
/// atomically by the data model; an instance the write had to create is removed again when
/// its write fails.
fn write_other(
    dm: &mut DataModel,
    path: &Path,
    format: Option<u16>,
    payload: &[u8],
) -> Result<Vec<Path>, DmError> {
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    let Some(i) = path.iid() else {
        // Several instances of an ordinary object in one request: not supported here.
        debug!("Bootstrap-Write {path}: object-level writes only for /0 and /1");
        return Err(DmError::BadRequest);
    };
    let obj = dm.object_mut(o).ok_or(DmError::NotFound)?;
    let created = !obj.instances().contains(&i);
    if created {
        obj.create_instance(i)?;
    }
    match ops::write(
        dm,
        path,
        format,
        payload,
        WriteMode::Update,
        Requester::Bootstrap,
    ) {
        Ok(changed) => Ok(changed),
        Err(e) => {
            if created {
                if let Some(obj) = dm.object_mut(o) {
                    let _ = obj.delete_instance(i);
                }
            }
            Err(e)
        }
    }
}
