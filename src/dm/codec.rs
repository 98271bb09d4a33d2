//! Payload decoding for the write-side operations (Write, Create): turns a request body in
//! text/plain, opaque or TLV into path/value entries under the request path. Read-side
//! encoding stays in [`super::ops`].
//!
//! SenML JSON/CBOR and LwM2M CBOR go to `super::content` (contract C1); text, opaque and
//! TLV are decoded here, where a TLV object-instance wrapper also names the instance ID
//! that Create needs.

use super::object::DmError;
use super::tlv::{self, Tlv, TlvBody, TlvType};
use super::value::{Value, ValueKind};
use super::Path;
use crate::coap::content_format as cf;

/// One value at a resource path (/o/i/r) or resource-instance path (/o/i/r/ri).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub path: Path,
    pub value: Value,
}

/// Decodes a payload sent to `base`. `kind_of` gives the declared type of a resource path
/// when known (None: TLV and text values come back as opaque / string).
pub fn decode(
    format: u16,
    base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    match format {
        cf::TEXT_PLAIN => {
            let path = leaf(base)?;
            let text = std::str::from_utf8(payload).map_err(|_| DmError::BadRequest)?;
            let value = match kind_of(&resource_of(&path)) {
                Some(ValueKind::Opaque) => return Err(DmError::BadRequest),
                Some(kind) => Value::from_text(kind, text).ok_or(DmError::BadRequest)?,
                None => Value::String(text.to_string()),
            };
            Ok(vec![Entry { path, value }])
        }
        cf::OCTET_STREAM => {
            let path = leaf(base)?;
            match kind_of(&resource_of(&path)) {
                None | Some(ValueKind::Opaque) => Ok(vec![Entry {
                    path,
                    value: Value::Opaque(payload.to_vec()),
                }]),
                Some(_) => Err(DmError::BadRequest),
            }
        }
        cf::LWM2M_TLV => {
            let items = tlv::decode(payload).map_err(|_| DmError::BadRequest)?;
            let mut out = Vec::new();
            tlv_entries(base, &items, kind_of, &mut out)?;
            Ok(out)
        }
        cf::SENML_JSON | cf::SENML_CBOR | cf::LWM2M_CBOR => {
            Ok(super::content::decode(format, base, payload, kind_of)?
                .into_iter()
                .map(|e| Entry {
                    path: e.path,
                    value: e.value,
                })
                .collect())
        }
        _ => Err(DmError::UnsupportedContentFormat),
    }
}

/// text/plain and opaque address exactly one resource or resource instance.
fn leaf(base: &Path) -> Result<Path, DmError> {
    if base.depth() >= 3 {
        Ok(*base)
    } else {
        Err(DmError::BadRequest)
    }
}

fn resource_of(p: &Path) -> Path {
    match (p.oid(), p.iid(), p.rid()) {
        (Some(o), Some(i), Some(r)) => Path::resource(o, i, r),
        _ => *p,
    }
}

/// The path a TLV element names when it appears under `parent`. A element may also repeat
/// the last level of `parent` itself (e.g. a Resource TLV sent to that resource's path).
fn child_path(parent: &Path, t: &Tlv) -> Result<Path, DmError> {
    let ids = (parent.oid(), parent.iid(), parent.rid(), parent.riid());
    let p = match (t.ty, ids) {
        (TlvType::ObjectInstance, (Some(o), None, _, _)) => Path::instance(o, t.id),
        (TlvType::ObjectInstance, (Some(o), Some(i), None, _)) if i == t.id => Path::instance(o, i),
        (TlvType::Resource | TlvType::MultipleResource, (Some(o), Some(i), None, _)) => {
            Path::resource(o, i, t.id)
        }
        (TlvType::Resource | TlvType::MultipleResource, (Some(o), Some(i), Some(r), None))
            if r == t.id =>
        {
            Path::resource(o, i, r)
        }
        (TlvType::ResourceInstance, (Some(o), Some(i), Some(r), None)) => {
            Path::resource_instance(o, i, r, t.id)
        }
        (TlvType::ResourceInstance, (Some(o), Some(i), Some(r), Some(ri))) if ri == t.id => {
            Path::resource_instance(o, i, r, ri)
        }
        _ => return Err(DmError::BadRequest),
    };
    Ok(p)
}

fn tlv_entries(
    parent: &Path,
    items: &[Tlv],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
    out: &mut Vec<Entry>,
) -> Result<(), DmError> {
    for t in items {
        let path = child_path(parent, t)?;
        match (&t.body, t.ty) {
            (TlvBody::Children(children), TlvType::ObjectInstance | TlvType::MultipleResource) => {
                tlv_entries(&path, children, kind_of, out)?
            }
            (TlvBody::Value(bytes), TlvType::Resource | TlvType::ResourceInstance) => {
                let value = match kind_of(&resource_of(&path)) {
                    Some(ValueKind::None) => return Err(DmError::BadRequest),
                    Some(kind) => {
                        tlv::decode_value(kind, bytes).map_err(|_| DmError::BadRequest)?
                    }
                    None => Value::Opaque(bytes.clone()),
                };
                out.push(Entry { path, value });
            }
            _ => return Err(DmError::BadRequest),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(p: &Path) -> Option<ValueKind> {
        match p.rid() {
            Some(1) => Some(ValueKind::Integer),
            Some(7) => Some(ValueKind::String),
            Some(9) => Some(ValueKind::Opaque),
            _ => None,
        }
    }

    #[test]
    fn text_and_opaque_take_the_declared_kind() {
        let p = Path::resource(1, 0, 1);
        let e = decode(cf::TEXT_PLAIN, &p, b"300", &kinds).unwrap();
        assert_eq!(e[0].value, Value::Integer(300));
        assert_eq!(
            decode(cf::TEXT_PLAIN, &p, b"3x", &kinds),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            decode(cf::TEXT_PLAIN, &Path::instance(1, 0), b"1", &kinds),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            decode(cf::OCTET_STREAM, &p, b"\x01", &kinds),
            Err(DmError::BadRequest)
        );
        let o = decode(cf::OCTET_STREAM, &Path::resource(1, 0, 9), b"\x01", &kinds).unwrap();
        assert_eq!(o[0].value, Value::Opaque(vec![1]));
        assert_eq!(
            decode(9999, &p, b"", &kinds),
            Err(DmError::UnsupportedContentFormat)
        );
    }

    #[test]
    fn tlv_instance_and_multiple_resources() {
        let body = tlv::encode(&[
            Tlv::value(TlvType::Resource, 1, &Value::Integer(60)),
            Tlv::parent(
                TlvType::MultipleResource,
                5,
                vec![Tlv::value(TlvType::ResourceInstance, 3, &Value::Integer(2))],
            ),
        ]);
        let e = decode(cf::LWM2M_TLV, &Path::instance(1, 0), &body, &kinds).unwrap();
        assert_eq!(e[0].path, Path::resource(1, 0, 1));
        assert_eq!(e[0].value, Value::Integer(60));
        assert_eq!(e[1].path, Path::resource_instance(1, 0, 5, 3));
        // Untyped: raw bytes.
        assert_eq!(e[1].value, Value::Opaque(vec![2]));
        // A resource TLV for another resource than the request path is refused.
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::resource(1, 0, 7), &body, &kinds),
            Err(DmError::BadRequest)
        );
        // Object-instance wrapper under an object path gives the instance ID.
        let wrapped = tlv::encode(&[Tlv::parent(
            TlvType::ObjectInstance,
            4,
            vec![Tlv::value(TlvType::Resource, 7, &Value::String("U".into()))],
        )]);
        let e = decode(cf::LWM2M_TLV, &Path::object(1), &wrapped, &kinds).unwrap();
        assert_eq!(e[0].path, Path::resource(1, 4, 7));
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::object(1), &body, &kinds),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::instance(1, 0), &[0xC1, 1], &kinds),
            Err(DmError::BadRequest)
        );
    }
}
