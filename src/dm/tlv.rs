//! OMA LwM2M TLV (Content-Format 11542, LwM2M 1.1 TS §7.4.3): encoding of read results
//! and a bounds-checked decoder that never panics.

use super::value::{Value, ValueKind};

/// The four TLV identifier types.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlvType {
    ObjectInstance = 0,
    ResourceInstance = 1,
    MultipleResource = 2,
    Resource = 3,
}

/// One decoded TLV element: raw value bytes or nested elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Tlv {
    pub ty: TlvType,
    pub id: u16,
    pub body: TlvBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TlvBody {
    Value(Vec<u8>),
    Children(Vec<Tlv>),
}

/// Why TLV input was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("TLV truncated")]
    Truncated,
    #[error("TLV value does not decode as {0:?}")]
    BadValue(ValueKind),
    #[error("TLV nested too deeply")]
    TooDeep,
}

impl Tlv {
    pub fn value(ty: TlvType, id: u16, v: &Value) -> Tlv {
        Tlv {
            ty,
            id,
            body: TlvBody::Value(encode_value(v)),
        }
    }

    pub fn parent(ty: TlvType, id: u16, children: Vec<Tlv>) -> Tlv {
        Tlv {
            ty,
            id,
            body: TlvBody::Children(children),
        }
    }
}

/// Encodes a value's bytes (integers and floats in the shortest exact width).
pub fn encode_value(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) | Value::Corelnk(s) => s.as_bytes().to_vec(),
        Value::Opaque(b) => b.clone(),
        Value::Integer(i) | Value::Time(i) => encode_int(*i),
        Value::Unsigned(u) => match i64::try_from(*u) {
            Ok(i) => encode_int(i),
            Err(_) => u.to_be_bytes().to_vec(),
        },
        Value::Float(f) => {
            let single = *f as f32;
            if f64::from(single) == *f {
                single.to_be_bytes().to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        Value::Boolean(b) => vec![u8::from(*b)],
        Value::Objlnk(o, i) => {
            let mut b = o.to_be_bytes().to_vec();
            b.extend_from_slice(&i.to_be_bytes());
            b
        }
    }
}

fn encode_int(i: i64) -> Vec<u8> {
    if let Ok(v) = i8::try_from(i) {
        v.to_be_bytes().to_vec()
    } else if let Ok(v) = i16::try_from(i) {
        v.to_be_bytes().to_vec()
    } else if let Ok(v) = i32::try_from(i) {
        v.to_be_bytes().to_vec()
    } else {
        i.to_be_bytes().to_vec()
    }
}

/// Decodes value bytes as the given kind.
pub fn decode_value(kind: ValueKind, b: &[u8]) -> Result<Value, TlvError> {
    let bad = || TlvError::BadValue(kind);
    Ok(match kind {
        ValueKind::String => Value::String(String::from_utf8(b.to_vec()).map_err(|_| bad())?),
        ValueKind::Corelnk => Value::Corelnk(String::from_utf8(b.to_vec()).map_err(|_| bad())?),
        ValueKind::Opaque => Value::Opaque(b.to_vec()),
        ValueKind::Integer => Value::Integer(decode_int(b).ok_or_else(bad)?),
        ValueKind::Time => Value::Time(decode_int(b).ok_or_else(bad)?),
        ValueKind::Unsigned => match b.len() {
            8 => Value::Unsigned(u64::from_be_bytes(b.try_into().map_err(|_| bad())?)),
            _ => Value::Unsigned(u64::try_from(decode_int(b).ok_or_else(bad)?).map_err(|_| bad())?),
        },
        ValueKind::Float => match b.len() {
            4 => Value::Float(f64::from(f32::from_be_bytes(
                b.try_into().map_err(|_| bad())?,
            ))),
            8 => Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| bad())?)),
            _ => return Err(bad()),
        },
        ValueKind::Boolean => match b {
            [0] => Value::Boolean(false),
            [1] => Value::Boolean(true),
            _ => return Err(bad()),
        },
        ValueKind::Objlnk => match b {
            [a, b2, c, d] => {
                Value::Objlnk(u16::from_be_bytes([*a, *b2]), u16::from_be_bytes([*c, *d]))
            }
            _ => return Err(bad()),
        },
        ValueKind::None => return Err(bad()),
    })
}

fn decode_int(b: &[u8]) -> Option<i64> {
    Some(match b.len() {
        1 => i64::from(i8::from_be_bytes([b[0]])),
        2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
        4 => i64::from(i32::from_be_bytes(b.try_into().ok()?)),
        8 => i64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// Serializes TLV elements.
pub fn encode(items: &[Tlv]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in items {
        encode_one(t, &mut out);
    }
    out
}

fn encode_one(t: &Tlv, out: &mut Vec<u8>) {
    let body = match &t.body {
        TlvBody::Value(v) => v.clone(),
        TlvBody::Children(c) => encode(c),
    };
    let len = body.len();
    let mut ty = (t.ty as u8) << 6;
    if t.id > 0xFF {
        ty |= 0x20;
    }
    let len_bytes: Vec<u8> = if len < 8 {
        ty |= len as u8;
        Vec::new()
    } else if len <= 0xFF {
        ty |= 0x08;
        vec![len as u8]
    } else if len <= 0xFFFF {
        ty |= 0x10;
        (len as u16).to_be_bytes().to_vec()
    } else {
        ty |= 0x18;
        (len as u32).to_be_bytes()[1..].to_vec()
    };
    out.push(ty);
    if t.id > 0xFF {
        out.extend_from_slice(&t.id.to_be_bytes());
    } else {
        out.push(t.id as u8);
    }
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&body);
}

/// Parses TLV; containers (object instances, multiple resources) are parsed recursively.
pub fn decode(mut b: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    decode_level(&mut b, 0)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], TlvError> {
    if b.len() < n {
        return Err(TlvError::Truncated);
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn decode_level(b: &mut &[u8], depth: u8) -> Result<Vec<Tlv>, TlvError> {
    if depth > 2 {
        return Err(TlvError::TooDeep);
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let t = take(b, 1)?[0];
        let ty = match t >> 6 {
            0 => TlvType::ObjectInstance,
            1 => TlvType::ResourceInstance,
            2 => TlvType::MultipleResource,
            _ => TlvType::Resource,
        };
        let id = if t & 0x20 != 0 {
            let v = take(b, 2)?;
            u16::from_be_bytes([v[0], v[1]])
        } else {
            u16::from(take(b, 1)?[0])
        };
        let len = match (t >> 3) & 0x03 {
            0 => usize::from(t & 0x07),
            n => take(b, usize::from(n))?
                .iter()
                .fold(0usize, |a, x| (a << 8) | usize::from(*x)),
        };
        let mut body = take(b, len)?;
        let body = match ty {
            TlvType::ObjectInstance | TlvType::MultipleResource => {
                TlvBody::Children(decode_level(&mut body, depth + 1)?)
            }
            _ => TlvBody::Value(body.to_vec()),
        };
        out.push(Tlv { ty, id, body });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{RandomSource, SeededRng};

    /// LwM2M TS 1.1 §7.4.3.2 example: Device object instance 0, resources 0..3 as TLV.
    #[test]
    fn golden_device_resources() {
        let items = vec![
            Tlv::value(
                TlvType::Resource,
                0,
                &Value::String("Open Mobile Alliance".into()),
            ),
            Tlv::value(
                TlvType::Resource,
                1,
                &Value::String("Lightweight M2M Client".into()),
            ),
            Tlv::value(TlvType::Resource, 2, &Value::String("345000123".into())),
            Tlv::value(TlvType::Resource, 3, &Value::String("1.0".into())),
        ];
        let b = encode(&items);
        assert_eq!(&b[..3], &[0xC8, 0x00, 0x14]);
        assert_eq!(&b[3..23], b"Open Mobile Alliance");
        assert_eq!(&b[23..26], &[0xC8, 0x01, 0x16]);
        assert_eq!(decode(&b).unwrap(), items);
    }

    /// The same section's multiple-resource example: Available Power Sources /3/0/6 = [1, 5].
    #[test]
    fn golden_multiple_resource() {
        let t = Tlv::parent(
            TlvType::MultipleResource,
            6,
            vec![
                Tlv::value(TlvType::ResourceInstance, 0, &Value::Integer(1)),
                Tlv::value(TlvType::ResourceInstance, 1, &Value::Integer(5)),
            ],
        );
        assert_eq!(
            encode(&[t]),
            vec![0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]
        );
    }

    #[test]
    fn values_round_trip_by_kind() {
        let vals = [
            Value::Integer(0),
            Value::Integer(-129),
            Value::Integer(70_000),
            Value::Integer(i64::MIN),
            Value::Unsigned(u64::MAX),
            Value::Float(1.5),
            Value::Float(0.1),
            Value::Boolean(false),
            Value::Objlnk(3, 65535),
            Value::Opaque(vec![0, 1, 2]),
            Value::String("é".into()),
        ];
        for v in vals {
            assert_eq!(decode_value(v.kind(), &encode_value(&v)).unwrap(), v);
        }
    }

    #[test]
    fn long_ids_and_lengths() {
        let big = Tlv::value(TlvType::Resource, 300, &Value::Opaque(vec![7; 70_000]));
        let b = encode(std::slice::from_ref(&big));
        assert_eq!(decode(&b).unwrap(), vec![big]);
    }

    #[test]
    fn truncated_and_random_input_never_panics() {
        let b = encode(&[Tlv::parent(
            TlvType::ObjectInstance,
            0,
            vec![Tlv::value(
                TlvType::Resource,
                0,
                &Value::String("abc".into()),
            )],
        )]);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err() || n == 0);
        }
        let mut rng = SeededRng::new(9);
        for _ in 0..5000 {
            let mut buf = vec![0u8; (rng.next_u32() % 40) as usize];
            rng.fill_bytes(&mut buf);
            let _ = decode(&buf);
        }
    }
}
