//! Device-management operations on a [`DataModel`]: Read with content-format negotiation
//! and Execute. Access rules that depend on who asks (the Security object is visible to a
//! bootstrap server only) are enforced here, once, for every caller.

use super::object::{DmError, ResourceValue};
use super::tlv::{self, Tlv, TlvType};
use super::value::Value;
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

fn check_access(path: &Path, who: Requester) -> Result<(), DmError> {
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
    let def = obj
        .resources(i)?
        .into_iter()
        .find(|d| d.rid == r)
        .ok_or(DmError::NotFound)?;
    if !def.ops.executable() {
        return Err(DmError::MethodNotAllowed);
    }
    obj.execute(i, r, args)
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
}
