//! Device-management operations on a [`DataModel`]: Read with content-format negotiation,
//! Write (replace and partial update, atomic per request), Execute with arguments, Create,
//! Delete and Discover. Access rules that depend on who asks (the Security object is
//! visible to a bootstrap server only) are enforced here, once, for every caller.

use std::collections::BTreeMap;

use super::codec::{self, Entry};
use super::content;
use super::object::{DmError, Object, ResourceDef, ResourceValue};
use super::tlv::{self, Tlv, TlvType};
use super::value::{Value, ValueKind};
use super::{oid, DataModel, Path};
use crate::coap::content_format as cf;

/// Who is asking: management servers may never see the Security object.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Requester {
    Bootstrap,
    Management,
}

/// The data read for one instance: its resources and their values.
type InstanceData = Vec<(u16, bool, ResourceValue)>;

/// Refuses paths a requester may not touch (4.01).
pub fn check_access(path: &Path, who: Requester) -> Result<(), DmError> {
    if path.oid() == Some(oid::SECURITY) && who == Requester::Management {
        return Err(DmError::Unauthorized);
    }
    Ok(())
}

fn read_instance(dm: &DataModel, o: u16, i: u16) -> Result<InstanceData, DmError> {
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    let mut out = Vec::new();
    for def in obj.resources(i)? {
        if !def.ops.readable() {
            continue;
        }
        match obj.read(i, def.rid) {
            Ok(v) => out.push((def.rid, def.multiple, v)),
            // A resource listed but without a value right now is left out of instance reads.
            Err(DmError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Reads `path` and encodes it in the requested (or default) content format.
/// Returns the Content-Format used and the payload.
pub fn read(
    dm: &DataModel,
    path: &Path,
    accept: Option<u16>,
    who: Requester,
) -> Result<(u16, Vec<u8>), DmError> {
    check_access(path, who)?;
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    if let Some(f @ (cf::SENML_JSON | cf::SENML_CBOR | cf::LWM2M_CBOR)) = accept {
        let entries = read_entries(dm, path)?;
        return Ok((f, content::encode(f, path, &entries)?));
    }
    match (path.iid(), path.rid(), path.riid()) {
        (None, _, _) => {
            let mut items = Vec::new();
            for i in obj.instances() {
                let data = read_instance(dm, o, i)?;
                items.push(Tlv::parent(
                    TlvType::ObjectInstance,
                    i,
                    resources_tlv(&data),
                ));
            }
            encode_hierarchical(accept, &items)
        }
        (Some(i), None, _) => {
            if !obj.instances().contains(&i) {
                return Err(DmError::NotFound);
            }
            let data = read_instance(dm, o, i)?;
            encode_hierarchical(accept, &resources_tlv(&data))
        }
        (Some(i), Some(r), riid) => {
            if !obj.instances().contains(&i) {
                return Err(DmError::NotFound);
            }
            let def = obj
                .resources(i)?
                .into_iter()
                .find(|d| d.rid == r)
                .ok_or(DmError::NotFound)?;
            if !def.ops.readable() {
                return Err(DmError::MethodNotAllowed);
            }
            let value = obj.read(i, r)?;
            match (riid, value) {
                (None, ResourceValue::Single(v)) => encode_single(accept, r, &v, TlvType::Resource),
                (None, ResourceValue::Multiple(vs)) => {
                    let items = vec![multiple_tlv(r, &vs)];
                    encode_hierarchical(accept, &items)
                }
                (Some(ri), ResourceValue::Multiple(vs)) => {
                    let (_, v) = vs
                        .iter()
                        .find(|(id, _)| *id == ri)
                        .ok_or(DmError::NotFound)?;
                    encode_single(accept, ri, v, TlvType::ResourceInstance)
                }
                (Some(_), ResourceValue::Single(_)) => Err(DmError::NotFound),
            }
        }
    }
}

/// Every readable value at or below `path`, as entries for the `content` codecs.
fn read_entries(dm: &DataModel, path: &Path) -> Result<Vec<content::Entry>, DmError> {
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    let instances = obj.instances();
    let iids = match path.iid() {
        None => instances,
        Some(i) if instances.contains(&i) => vec![i],
        Some(_) => return Err(DmError::NotFound),
    };
    let mut out = Vec::new();
    for i in iids {
        let data = match path.rid() {
            None => read_instance(dm, o, i)?,
            Some(r) => {
                let def = find_def(obj, i, r)?;
                if !def.ops.readable() {
                    return Err(DmError::MethodNotAllowed);
                }
                vec![(r, def.multiple, obj.read(i, r)?)]
            }
        };
        for (r, _, v) in data {
            match v {
                ResourceValue::Single(value) => out.push(content::Entry {
                    path: Path::resource(o, i, r),
                    value,
                }),
                ResourceValue::Multiple(vs) => {
                    for (ri, value) in vs {
                        let p = Path::resource_instance(o, i, r, ri);
                        if path.contains(&p) {
                            out.push(content::Entry { path: p, value });
                        }
                    }
                }
            }
        }
    }
    if path.riid().is_some() && out.is_empty() {
        return Err(DmError::NotFound);
    }
    Ok(out)
}

fn multiple_tlv(rid: u16, vs: &[(u16, Value)]) -> Tlv {
    Tlv::parent(
        TlvType::MultipleResource,
        rid,
        vs.iter()
            .map(|(ri, v)| Tlv::value(TlvType::ResourceInstance, *ri, v))
            .collect(),
    )
}

fn resources_tlv(data: &InstanceData) -> Vec<Tlv> {
    data.iter()
        .map(|(rid, _multiple, v)| match v {
            ResourceValue::Single(v) => Tlv::value(TlvType::Resource, *rid, v),
            ResourceValue::Multiple(vs) => multiple_tlv(*rid, vs),
        })
        .collect()
}

fn encode_hierarchical(accept: Option<u16>, items: &[Tlv]) -> Result<(u16, Vec<u8>), DmError> {
    match accept {
        None | Some(cf::LWM2M_TLV) => Ok((cf::LWM2M_TLV, tlv::encode(items))),
        Some(_) => Err(DmError::NotAcceptable),
    }
}

fn encode_single(
    accept: Option<u16>,
    id: u16,
    v: &Value,
    ty: TlvType,
) -> Result<(u16, Vec<u8>), DmError> {
    let default = if matches!(v, Value::Opaque(_)) {
        cf::OCTET_STREAM
    } else {
        cf::TEXT_PLAIN
    };
    match accept.unwrap_or(default) {
        cf::TEXT_PLAIN => {
            let text = v.to_text().ok_or(DmError::NotAcceptable)?;
            Ok((cf::TEXT_PLAIN, text.into_bytes()))
        }
        cf::OCTET_STREAM => match v {
            Value::Opaque(b) => Ok((cf::OCTET_STREAM, b.clone())),
            _ => Err(DmError::NotAcceptable),
        },
        cf::LWM2M_TLV => Ok((cf::LWM2M_TLV, tlv::encode(&[Tlv::value(ty, id, v)]))),
        _ => Err(DmError::NotAcceptable),
    }
}

/// Executes `path` (a resource) with its argument bytes.
pub fn execute(
    dm: &mut DataModel,
    path: &Path,
    args: &[u8],
    who: Requester,
) -> Result<(), DmError> {
    check_access(path, who)?;
    let (Some(o), Some(i), Some(r), None) = (path.oid(), path.iid(), path.rid(), path.riid())
    else {
        return Err(DmError::MethodNotAllowed);
    };
    let obj = dm.object_mut(o).ok_or(DmError::NotFound)?;
    if !obj.instances().contains(&i) {
        return Err(DmError::NotFound);
    }
    let def = find_def(obj, i, r)?;
    if !def.ops.executable() {
        return Err(DmError::MethodNotAllowed);
    }
    if !valid_execute_args(args) {
        return Err(DmError::BadRequest);
    }
    obj.execute(i, r, args)
}

/// Execute arguments (LwM2M 1.1 TS §5.4.5): `arg *("," arg)`, `arg = DIGIT ["='" text "'"]`.
pub fn valid_execute_args(args: &[u8]) -> bool {
    if args.is_empty() {
        return true;
    }
    let mut rest = args;
    loop {
        let Some((&d, tail)) = rest.split_first() else {
            return false;
        };
        if !d.is_ascii_digit() {
            return false;
        }
        rest = tail;
        if let Some(tail) = rest.strip_prefix(b"='") {
            // Text runs to the next quote; it may not itself contain one.
            let Some(end) = tail.iter().position(|b| *b == b'\'') else {
                return false;
            };
            if tail[..end].iter().any(|b| !(b' '..=b'~').contains(b)) {
                return false;
            }
            rest = &tail[end + 1..];
        }
        match rest.split_first() {
            None => return true,
            Some((b',', tail)) => rest = tail,
            Some(_) => return false,
        }
    }
}

fn find_def(obj: &dyn Object, iid: u16, rid: u16) -> Result<ResourceDef, DmError> {
    obj.resources(iid)?
        .into_iter()
        .find(|d| d.rid == rid)
        .ok_or(DmError::NotFound)
}

/// How a Write treats what the request does not mention.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// PUT: the target is replaced; an instance loses resources the request leaves out.
    Replace,
    /// POST to an instance: only the given resources (and resource instances) change.
    Update,
}

/// Checks decoded entries against the instance's resource definitions and groups them per
/// resource. Anything outside `base`, unknown, read-only or of the wrong shape is refused.
fn group_entries(
    defs: &[ResourceDef],
    base: &Path,
    iid: u16,
    entries: Vec<Entry>,
) -> Result<BTreeMap<u16, ResourceValue>, DmError> {
    let mut out: BTreeMap<u16, ResourceValue> = BTreeMap::new();
    for e in entries {
        let (Some(i), Some(r)) = (e.path.iid(), e.path.rid()) else {
            return Err(DmError::BadRequest);
        };
        if i != iid || !(base.contains(&e.path) || e.path.contains(base)) {
            return Err(DmError::BadRequest);
        }
        let def = defs.iter().find(|d| d.rid == r).ok_or(DmError::NotFound)?;
        if !def.ops.writable() {
            return Err(DmError::MethodNotAllowed);
        }
        if e.value.kind() != def.kind {
            return Err(DmError::BadRequest);
        }
        match (e.path.riid(), def.multiple) {
            (None, false) => {
                if out.insert(r, ResourceValue::Single(e.value)).is_some() {
                    return Err(DmError::BadRequest);
                }
            }
            (Some(ri), true) => {
                let slot = out
                    .entry(r)
                    .or_insert_with(|| ResourceValue::Multiple(Vec::new()));
                let ResourceValue::Multiple(list) = slot else {
                    return Err(DmError::BadRequest);
                };
                if list.iter().any(|(id, _)| *id == ri) {
                    return Err(DmError::BadRequest);
                }
                list.push((ri, e.value));
            }
            _ => return Err(DmError::BadRequest),
        }
    }
    Ok(out)
}

fn kinds_of(defs: &[ResourceDef]) -> impl Fn(&Path) -> Option<ValueKind> + '_ {
    |p: &Path| {
        p.rid()
            .and_then(|r| defs.iter().find(|d| d.rid == r))
            .map(|d| d.kind)
    }
}

/// Applies grouped writes to one instance as a transaction: on any failure the object's
/// rollback hook runs and the values read before the request are written back.
fn apply_writes(
    obj: &mut dyn Object,
    iid: u16,
    defs: &[ResourceDef],
    mut writes: BTreeMap<u16, ResourceValue>,
    reset_first: bool,
    merge_multiple: bool,
) -> Result<(), DmError> {
    if merge_multiple {
        for (rid, v) in writes.iter_mut() {
            if let ResourceValue::Multiple(new) = v {
                if let Ok(ResourceValue::Multiple(mut cur)) = obj.read(iid, *rid) {
                    for (ri, val) in new.drain(..) {
                        match cur.iter_mut().find(|(id, _)| *id == ri) {
                            Some(slot) => slot.1 = val,
                            None => cur.push((ri, val)),
                        }
                    }
                    cur.sort_by_key(|(id, _)| *id);
                    *new = cur;
                }
            }
        }
    }
    // What a rollback restores: every readable value the request may change.
    let snapshot: Vec<(u16, ResourceValue)> = defs
        .iter()
        .filter(|d| d.ops.readable() && d.ops.writable())
        .filter(|d| reset_first || writes.contains_key(&d.rid))
        .filter_map(|d| obj.read(iid, d.rid).ok().map(|v| (d.rid, v)))
        .collect();
    obj.transaction_begin()?;
    let run = |obj: &mut dyn Object| -> Result<(), DmError> {
        if reset_first {
            obj.reset_instance(iid)?;
        }
        for (rid, v) in &writes {
            obj.write(iid, *rid, v.clone())?;
        }
        obj.transaction_validate()?;
        obj.transaction_commit()
    };
    if let Err(e) = run(obj) {
        obj.transaction_rollback();
        if reset_first {
            let _ = obj.reset_instance(iid);
        }
        for (rid, v) in snapshot {
            // Best effort: the values were valid a moment ago.
            let _ = obj.write(iid, rid, v);
        }
        return Err(e);
    }
    Ok(())
}

/// Write (PUT replace, or POST partial update of an instance) of `payload` in `format` to
/// `path`. Returns the resource paths written, for observers. Nothing stays applied when
/// any part fails.
pub fn write(
    dm: &mut DataModel,
    path: &Path,
    format: Option<u16>,
    payload: &[u8],
    mode: WriteMode,
    who: Requester,
) -> Result<Vec<Path>, DmError> {
    check_access(path, who)?;
    let (Some(o), Some(i)) = (path.oid(), path.iid()) else {
        return Err(DmError::MethodNotAllowed);
    };
    let obj = dm.object_mut(o).ok_or(DmError::NotFound)?;
    if !obj.instances().contains(&i) {
        return Err(DmError::NotFound);
    }
    let defs = obj.resources(i)?;
    if let Some(r) = path.rid() {
        let def = defs.iter().find(|d| d.rid == r).ok_or(DmError::NotFound)?;
        if !def.ops.writable() {
            return Err(DmError::MethodNotAllowed);
        }
        if path.riid().is_some() && !def.multiple {
            return Err(DmError::NotFound);
        }
    }
    let format = format.ok_or(DmError::BadRequest)?;
    let entries = codec::decode(format, path, payload, &kinds_of(&defs))?;
    if entries.is_empty() && path.rid().is_some() {
        return Err(DmError::BadRequest);
    }
    let writes = group_entries(&defs, path, i, entries)?;
    let changed: Vec<Path> = writes.keys().map(|r| Path::resource(o, i, *r)).collect();
    let reset_first = mode == WriteMode::Replace && path.rid().is_none();
    let merge = mode == WriteMode::Update || path.riid().is_some();
    apply_writes(obj, i, &defs, writes, reset_first, merge)?;
    Ok(changed)
}

/// Create (POST to an object): the instance ID comes from the payload (a TLV object
/// instance) or is the lowest free one. Returns the new instance ID and the paths written.
pub fn create(
    dm: &mut DataModel,
    path: &Path,
    format: Option<u16>,
    payload: &[u8],
    who: Requester,
) -> Result<(u16, Vec<Path>), DmError> {
    check_access(path, who)?;
    let (Some(o), None) = (path.oid(), path.iid()) else {
        return Err(DmError::MethodNotAllowed);
    };
    let format = format.ok_or(DmError::BadRequest)?;
    let obj = dm.object_mut(o).ok_or(DmError::NotFound)?;
    let existing = obj.instances();
    // First pass without types, only to learn the instance ID the payload names.
    let (iid, base) = match codec::decode(format, path, payload, &|_| None) {
        Ok(entries) if !entries.is_empty() => {
            let iid = entries[0].path.iid().ok_or(DmError::BadRequest)?;
            if entries.iter().any(|e| e.path.iid() != Some(iid)) {
                return Err(DmError::BadRequest);
            }
            (iid, *path)
        }
        Err(DmError::UnsupportedContentFormat) => return Err(DmError::UnsupportedContentFormat),
        // Empty, or resources without an instance wrapper: the client picks the ID.
        _ => {
            let iid =
                crate::dm::objects::free_iid(existing.iter().copied()).ok_or(DmError::Internal)?;
            (iid, Path::instance(o, iid))
        }
    };
    if existing.contains(&iid) || iid == u16::MAX {
        return Err(DmError::BadRequest);
    }
    obj.create_instance(iid)?;
    let result = (|| {
        let defs = obj.resources(iid)?;
        let entries = codec::decode(format, &base, payload, &kinds_of(&defs))?;
        let writes = group_entries(&defs, &Path::instance(o, iid), iid, entries)?;
        let changed: Vec<Path> = writes.keys().map(|r| Path::resource(o, iid, *r)).collect();
        apply_writes(obj, iid, &defs, writes, false, false)?;
        Ok(changed)
    })();
    match result {
        Ok(changed) => Ok((iid, changed)),
        Err(e) => {
            if let Err(e2) = obj.delete_instance(iid) {
                log::warn!("/{o}/{iid}: could not undo a failed Create: {e2}");
            }
            Err(e)
        }
    }
}

/// Delete of an object instance.
pub fn delete(dm: &mut DataModel, path: &Path, who: Requester) -> Result<(), DmError> {
    check_access(path, who)?;
    let (Some(o), Some(i), None) = (path.oid(), path.iid(), path.rid()) else {
        return Err(DmError::MethodNotAllowed);
    };
    let obj = dm.object_mut(o).ok_or(DmError::NotFound)?;
    if !obj.instances().contains(&i) {
        return Err(DmError::NotFound);
    }
    obj.delete_instance(i)
}

/// Discover: the link-format description of `path` and what lies below it (down to
/// resources; resource instances when a resource is the target), each link with the
/// attribute parameters `attrs` gives for it.
pub fn discover(
    dm: &DataModel,
    path: &Path,
    who: Requester,
    attrs: &dyn Fn(&Path) -> String,
) -> Result<String, DmError> {
    check_access(path, who)?;
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    if path.riid().is_some() {
        return Err(DmError::MethodNotAllowed);
    }
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    let mut links = Vec::new();
    let resource_links = |links: &mut Vec<String>, i: u16, defs: &[ResourceDef], all_ri: bool| {
        for d in defs {
            let p = Path::resource(o, i, d.rid);
            let mut l = format!("<{p}>");
            let ris = if d.multiple {
                obj.resource_instances(i, d.rid).ok()
            } else {
                None
            };
            if let Some(ris) = &ris {
                l.push_str(&format!(";dim={}", ris.len()));
            }
            l.push_str(&attrs(&p));
            links.push(l);
            if all_ri {
                for ri in ris.unwrap_or_default() {
                    let rp = Path::resource_instance(o, i, d.rid, ri);
                    links.push(format!("<{rp}>{}", attrs(&rp)));
                }
            }
        }
    };
    match (path.iid(), path.rid()) {
        (None, _) => {
            let mut l = format!("</{o}>");
            if obj.version() != "1.0" {
                l.push_str(&format!(";ver={}", obj.version()));
            }
            l.push_str(&attrs(path));
            links.push(l);
            for i in obj.instances() {
                let ip = Path::instance(o, i);
                links.push(format!("<{ip}>{}", attrs(&ip)));
                resource_links(&mut links, i, &obj.resources(i)?, false);
            }
        }
        (Some(i), None) => {
            if !obj.instances().contains(&i) {
                return Err(DmError::NotFound);
            }
            links.push(format!("<{path}>{}", attrs(path)));
            resource_links(&mut links, i, &obj.resources(i)?, false);
        }
        (Some(i), Some(r)) => {
            if !obj.instances().contains(&i) {
                return Err(DmError::NotFound);
            }
            let def = find_def(obj, i, r)?;
            resource_links(&mut links, i, &[def], true);
        }
    }
    Ok(links.join(","))
}

/// The declared type of the resource at `path` (depth 3 or 4), checking that it exists;
/// None for object and instance paths that exist.
pub fn kind_at(dm: &DataModel, path: &Path, who: Requester) -> Result<Option<ValueKind>, DmError> {
    check_access(path, who)?;
    let o = path.oid().ok_or(DmError::MethodNotAllowed)?;
    let obj = dm.object(o).ok_or(DmError::NotFound)?;
    let Some(i) = path.iid() else { return Ok(None) };
    if !obj.instances().contains(&i) {
        return Err(DmError::NotFound);
    }
    let Some(r) = path.rid() else { return Ok(None) };
    let def = find_def(obj, i, r)?;
    if let Some(ri) = path.riid() {
        if !def.multiple || !obj.resource_instances(i, r)?.contains(&ri) {
            return Err(DmError::NotFound);
        }
    }
    Ok(Some(def.kind))
}

/// The numeric value at a resource or resource-instance path, for gt / lt / st checks.
pub fn numeric_value(dm: &DataModel, path: &Path) -> Option<f64> {
    let obj = dm.object(path.oid()?)?;
    let v = match (obj.read(path.iid()?, path.rid()?).ok()?, path.riid()) {
        (ResourceValue::Single(v), None) => v,
        (ResourceValue::Multiple(vs), Some(ri)) => vs.into_iter().find(|(id, _)| *id == ri)?.1,
        _ => return None,
    };
    match v {
        Value::Integer(x) | Value::Time(x) => Some(x as f64),
        Value::Unsigned(x) => Some(x as f64),
        Value::Float(x) => Some(x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::objects::{SecurityInstance, ServerInstance};

    fn model() -> DataModel {
        let mut dm = DataModel::new();
        dm.device.manufacturer = "Estuary Labs".into();
        dm.device.model_number = "E1".into();
        dm.security
            .insert(0, SecurityInstance::nosec("coap://127.0.0.1:5683", 1))
            .unwrap();
        dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
        dm
    }

    #[test]
    fn read_resource_as_text_by_default() {
        let dm = model();
        let (f, p) = read(&dm, &Path::resource(3, 0, 0), None, Requester::Management).unwrap();
        assert_eq!(f, cf::TEXT_PLAIN);
        assert_eq!(p, b"Estuary Labs");
    }

    #[test]
    fn read_instance_as_tlv_decodes_back() {
        let dm = model();
        let (f, p) = read(&dm, &Path::instance(3, 0), None, Requester::Management).unwrap();
        assert_eq!(f, cf::LWM2M_TLV);
        let items = tlv::decode(&p).unwrap();
        let manufacturer = items.iter().find(|t| t.id == 0).unwrap();
        assert_eq!(
            manufacturer.body,
            tlv::TlvBody::Value(b"Estuary Labs".to_vec())
        );
        // Reboot (4) is executable, never read.
        assert!(items.iter().all(|t| t.id != 4));
        // Error Code (11) is a multiple resource.
        assert!(items
            .iter()
            .any(|t| t.id == 11 && t.ty == TlvType::MultipleResource));
    }

    #[test]
    fn missing_paths_and_forbidden_objects() {
        let dm = model();
        let m = Requester::Management;
        assert_eq!(
            read(&dm, &Path::resource(3, 0, 99), None, m),
            Err(DmError::NotFound)
        );
        assert_eq!(
            read(&dm, &Path::instance(3, 7), None, m),
            Err(DmError::NotFound)
        );
        assert_eq!(
            read(&dm, &Path::object(4242), None, m),
            Err(DmError::NotFound)
        );
        assert_eq!(
            read(&dm, &Path::object(0), None, m),
            Err(DmError::Unauthorized)
        );
        assert_eq!(
            read(&dm, &Path::resource(3, 0, 4), None, m),
            Err(DmError::MethodNotAllowed)
        );
        assert!(read(&dm, &Path::object(0), None, Requester::Bootstrap).is_ok());
    }

    #[test]
    fn accept_negotiation() {
        let dm = model();
        let m = Requester::Management;
        let p = Path::resource(3, 0, 0);
        assert_eq!(
            read(&dm, &p, Some(cf::LWM2M_TLV), m).unwrap().0,
            cf::LWM2M_TLV
        );
        assert_eq!(
            read(&dm, &p, Some(cf::OCTET_STREAM), m),
            Err(DmError::NotAcceptable)
        );
        assert_eq!(
            read(&dm, &Path::instance(3, 0), Some(cf::TEXT_PLAIN), m),
            Err(DmError::NotAcceptable)
        );
        assert_eq!(read(&dm, &p, Some(9999), m), Err(DmError::NotAcceptable));
    }

    #[test]
    fn execute_reboot_sets_the_flag() {
        let mut dm = model();
        execute(
            &mut dm,
            &Path::resource(3, 0, 4),
            b"",
            Requester::Management,
        )
        .unwrap();
        assert!(dm.device.take_reboot_request());
        assert_eq!(
            execute(
                &mut dm,
                &Path::resource(3, 0, 0),
                b"",
                Requester::Management
            ),
            Err(DmError::MethodNotAllowed)
        );
    }

    #[test]
    fn server_object_replace_is_all_or_nothing() {
        let mut dm = model();
        let m = Requester::Management;
        let p = Path::instance(1, 0);
        let good = tlv::encode(&[
            Tlv::value(TlvType::Resource, 1, &Value::Integer(300)),
            Tlv::value(TlvType::Resource, 2, &Value::Integer(5)),
        ]);
        let changed = write(
            &mut dm,
            &p,
            Some(cf::LWM2M_TLV),
            &good,
            WriteMode::Replace,
            m,
        )
        .unwrap();
        assert_eq!(changed, [Path::resource(1, 0, 1), Path::resource(1, 0, 2)]);
        let before = dm.server.by_ssid(1).unwrap().clone();
        assert_eq!((before.lifetime, before.default_min_period), (300, Some(5)));
        // Binding "X" fails after lifetime and pmax were written: all of it is undone,
        // including the reset of the optional pmin.
        let bad = tlv::encode(&[
            Tlv::value(TlvType::Resource, 1, &Value::Integer(50)),
            Tlv::value(TlvType::Resource, 3, &Value::Integer(9)),
            Tlv::value(TlvType::Resource, 7, &Value::String("X".into())),
        ]);
        assert_eq!(
            write(
                &mut dm,
                &p,
                Some(cf::LWM2M_TLV),
                &bad,
                WriteMode::Replace,
                m
            ),
            Err(DmError::BadRequest)
        );
        assert_eq!(dm.server.by_ssid(1).unwrap(), &before);
        // Replace drops optional values the request leaves out.
        let only_lifetime = tlv::encode(&[Tlv::value(TlvType::Resource, 1, &Value::Integer(70))]);
        write(
            &mut dm,
            &p,
            Some(cf::LWM2M_TLV),
            &only_lifetime,
            WriteMode::Replace,
            m,
        )
        .unwrap();
        assert_eq!(dm.server.by_ssid(1).unwrap().default_min_period, None);
        assert_eq!(
            write(&mut dm, &p, None, &only_lifetime, WriteMode::Replace, m),
            Err(DmError::BadRequest)
        );
    }

    #[test]
    fn execute_argument_syntax() {
        for ok in [&b""[..], b"0", b"0,1", b"5='x y'", b"0='',9='a,b'"] {
            assert!(valid_execute_args(ok), "{ok:?}");
        }
        for bad in [
            &b","[..],
            b"0,",
            b"a",
            b"10",
            b"0=x",
            b"0='x",
            b"0='x'1",
            b"0='\x01'",
        ] {
            assert!(!valid_execute_args(bad), "{bad:?}");
        }
    }

    #[test]
    fn discover_lists_resources_with_dim_and_attributes() {
        let dm = model();
        let m = Requester::Management;
        let attrs = |p: &Path| {
            if *p == Path::resource(3, 0, 0) {
                ";pmin=1".to_string()
            } else {
                String::new()
            }
        };
        let text = discover(&dm, &Path::instance(3, 0), m, &attrs).unwrap();
        assert!(text.starts_with("</3/0>,</3/0/0>;pmin=1,"), "{text}");
        assert!(text.contains("</3/0/11>;dim=1"), "{text}");
        assert_eq!(
            discover(&dm, &Path::object(0), m, &attrs),
            Err(DmError::Unauthorized)
        );
        assert_eq!(
            discover(&dm, &Path::instance(3, 9), m, &attrs),
            Err(DmError::NotFound)
        );
    }
}
