//! LwM2M CBOR (Content-Format 11544, LwM2M 1.2 TS §7.4.6): nested CBOR maps keyed by the
//! path's IDs from the Object ID down, `{3: {0: {0: "Open Mobile Alliance", 6: {0: 1}}}}`.
//! A key may also be an array of IDs standing for several levels at once (`{[3, 0]: {...}}`);
//! this decoder accepts both, the encoder writes one level per map.
//!
//! Values: text (string, core link, object link as "OID:IID"), integers, floats, booleans,
//! byte strings for opaque, and time as tag 1 over an integer.

use std::collections::BTreeSet;

use ciborium::value::Value as Cbor;

use super::senml::parse_cbor;
use super::{bad, coerce, Entry};
use crate::dm::object::DmError;
use crate::dm::path::Path;
use crate::dm::value::{Value, ValueKind};

/// CBOR tag 1: epoch-based date/time (RFC 8949 §3.4.2).
const TAG_EPOCH_TIME: u64 = 1;

fn leaf(path: &Path, v: &Value) -> Result<Cbor, DmError> {
    Ok(match v {
        Value::String(s) | Value::Corelnk(s) => Cbor::Text(s.clone()),
        Value::Integer(i) => Cbor::from(*i),
        Value::Time(t) => Cbor::Tag(TAG_EPOCH_TIME, Box::new(Cbor::from(*t))),
        Value::Unsigned(u) => Cbor::from(*u),
        Value::Float(f) if f.is_finite() => Cbor::Float(*f),
        Value::Float(_) => return Err(bad(format_args!("{path}: non-finite float"))),
        Value::Boolean(b) => Cbor::Bool(*b),
        Value::Opaque(b) => Cbor::Bytes(b.clone()),
        Value::Objlnk(o, i) => Cbor::Text(format!("{o}:{i}")),
    })
}

/// Builds the nested maps level by level; `ids` are the remaining IDs of each entry.
fn tree(items: &[(&[u16], Cbor)]) -> Cbor {
    let mut m: Vec<(Cbor, Cbor)> = Vec::new();
    let mut rest = items;
    while let Some((ids, _)) = rest.first() {
        let key = ids[0];
        let n = rest.iter().take_while(|(i, _)| i[0] == key).count();
        let value = if ids.len() == 1 {
            rest[0].1.clone()
        } else {
            let sub: Vec<(&[u16], Cbor)> = rest[..n]
                .iter()
                .map(|(i, v)| (&i[1..], v.clone()))
                .collect();
            tree(&sub)
        };
        m.push((Cbor::from(key), value));
        rest = &rest[n..];
    }
    Cbor::Map(m)
}

fn ids_of(p: &Path) -> Vec<u16> {
    [p.oid(), p.iid(), p.rid(), p.riid()]
        .into_iter()
        .flatten()
        .collect()
}

pub fn encode(_base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.path);
    let ids: Vec<Vec<u16>> = sorted.iter().map(|e| ids_of(&e.path)).collect();
    let mut items = Vec::with_capacity(sorted.len());
    for (e, i) in sorted.iter().zip(&ids) {
        items.push((i.as_slice(), leaf(&e.path, &e.value)?));
    }
    let mut out = Vec::new();
    ciborium::ser::into_writer(&tree(&items), &mut out).map_err(|_| DmError::Internal)?;
    Ok(out)
}

fn id(v: &Cbor) -> Result<u16, DmError> {
    match v {
        Cbor::Integer(i) => u16::try_from(*i)
            .ok()
            .filter(|v| *v != u16::MAX)
            .ok_or_else(|| bad(format_args!("LwM2M CBOR key out of range"))),
        _ => Err(bad(format_args!(
            "LwM2M CBOR key is not an unsigned integer"
        ))),
    }
}

fn value_of(path: &Path, v: Cbor, kind: Option<ValueKind>) -> Result<Value, DmError> {
    let raw = match v {
        Cbor::Text(s) if kind == Some(ValueKind::Objlnk) => {
            let link = s
                .split_once(':')
                .and_then(|(o, i)| Some(Value::Objlnk(o.parse().ok()?, i.parse().ok()?)));
            link.ok_or_else(|| bad(format_args!("{path}: {s:?} is not OID:IID")))?
        }
        Cbor::Text(s) => Value::String(s),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(v), _) => Value::Integer(v),
                (_, Ok(v)) => Value::Unsigned(v),
                _ => return Err(bad(format_args!("{path}: integer out of range"))),
            }
        }
        Cbor::Tag(TAG_EPOCH_TIME, inner) => match *inner {
            Cbor::Integer(i) => Value::Time(
                i64::try_from(i).map_err(|_| bad(format_args!("{path}: time out of range")))?,
            ),
            _ => return Err(bad(format_args!("{path}: tag 1 over a non-integer"))),
        },
        Cbor::Float(f) if f.is_finite() => Value::Float(f),
        Cbor::Bool(b) => Value::Boolean(b),
        Cbor::Bytes(b) => Value::Opaque(b),
        _ => return Err(bad(format_args!("{path}: unsupported CBOR value"))),
    };
    if kind == Some(ValueKind::None) {
        return Err(bad(format_args!(
            "{path}: value for an executable resource"
        )));
    }
    coerce(path, raw, kind)
}

fn walk(
    map: Vec<(Cbor, Cbor)>,
    prefix: &[u16],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
    out: &mut Vec<Entry>,
    seen: &mut BTreeSet<Path>,
) -> Result<(), DmError> {
    if map.is_empty() {
        return Err(bad(format_args!("LwM2M CBOR: empty map")));
    }
    for (k, v) in map {
        let mut ids = prefix.to_vec();
        match &k {
            Cbor::Array(parts) if !parts.is_empty() => {
                for p in parts {
                    ids.push(id(p)?);
                }
            }
            other => ids.push(id(other)?),
        }
        if ids.len() > 4 {
            return Err(bad(format_args!(
                "LwM2M CBOR: path deeper than four levels"
            )));
        }
        match v {
            Cbor::Map(m) => walk(m, &ids, kind_of, out, seen)?,
            leaf => {
                let path = match ids[..] {
                    [o, i, r] => Path::resource(o, i, r),
                    [o, i, r, ri] => Path::resource_instance(o, i, r, ri),
                    _ => return Err(bad(format_args!("LwM2M CBOR: value above a resource"))),
                };
                if !seen.insert(path) {
                    return Err(bad(format_args!("LwM2M CBOR: {path} given twice")));
                }
                let kind = kind_of(&path).or_else(|| {
                    let [o, i, r, _] = ids[..] else { return None };
                    kind_of(&Path::resource(o, i, r))
                });
                out.push(Entry::new(path, value_of(&path, leaf, kind)?));
            }
        }
    }
    Ok(())
}

pub fn decode(
    _base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let Cbor::Map(m) = parse_cbor(payload)? else {
        return Err(bad(format_args!("LwM2M CBOR is not a map")));
    };
    let mut out = Vec::new();
    walk(m, &[], kind_of, &mut out, &mut BTreeSet::new())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{kinds, no_kinds, random_entries};
    use super::super::{decode, encode};
    use super::*;
    use crate::coap::content_format as cf;
    use crate::rng::{RandomSource, SeededRng};

    /// Part of the Device instance of the TLV example (LwM2M 1.1 TS §7.4.3) in LwM2M CBOR,
    /// bytes by hand: {3: {0: {0: "Open Mobile Alliance", 6: {0: 1, 1: 5}, 13: 1(1367491215)}}}.
    #[test]
    fn golden_device_resources() {
        let mut golden = vec![0xA1, 0x03, 0xA1, 0x00, 0xA3, 0x00, 0x74];
        golden.extend_from_slice(b"Open Mobile Alliance");
        golden.extend_from_slice(&[0x06, 0xA2, 0x00, 0x01, 0x01, 0x05]);
        golden.extend_from_slice(&[0x0D, 0xC1, 0x1A, 0x51, 0x82, 0x42, 0x8F]);
        let entries = vec![
            Entry::new(
                Path::resource(3, 0, 0),
                Value::String("Open Mobile Alliance".into()),
            ),
            Entry::new(Path::resource_instance(3, 0, 6, 0), Value::Integer(1)),
            Entry::new(Path::resource_instance(3, 0, 6, 1), Value::Integer(5)),
            Entry::new(Path::resource(3, 0, 13), Value::Time(1_367_491_215)),
        ];
        let base = Path::instance(3, 0);
        assert_eq!(encode(cf::LWM2M_CBOR, &base, &entries).unwrap(), golden);
        assert_eq!(
            decode(cf::LWM2M_CBOR, &base, &golden, &no_kinds).unwrap(),
            entries
        );
    }

    #[test]
    fn array_keys_collapse_levels() {
        // {[3, 0]: {0: "x", [6, 1]: 5}}
        let b = [
            0xA1, 0x82, 0x03, 0x00, 0xA2, 0x00, 0x61, b'x', 0x82, 0x06, 0x01, 0x05,
        ];
        let got = decode(cf::LWM2M_CBOR, &Path::instance(3, 0), &b, &no_kinds).unwrap();
        assert_eq!(
            got,
            vec![
                Entry::new(Path::resource(3, 0, 0), Value::String("x".into())),
                Entry::new(Path::resource_instance(3, 0, 6, 1), Value::Integer(5)),
            ]
        );
    }

    #[test]
    fn bad_trees_are_refused() {
        let base = Path::instance(3, 0);
        let cases: &[&[u8]] = &[
            &[0x80],                                     // not a map
            &[0xA1, 0x03, 0x01],                         // value at an object
            &[0xA1, 0x03, 0xA0],                         // empty map
            &[0xA1, 0x61, b'x', 0x01],                   // text key
            &[0xA1, 0x84, 0, 0, 0, 0, 0xA1, 0x00, 0x01], // five levels
            &[0xA1, 0x83, 3, 0, 0, 0xC6, 0x41, 0x00],    // unknown tag
            &[0xA1, 0x83, 3, 0, 0, 0x01, 0x00],          // trailing byte
            // /3/0/0 twice, once through an array key.
            &[
                0xA2, 0x83, 3, 0, 0, 0x01, 0x03, 0xA1, 0x00, 0xA1, 0x00, 0x02,
            ],
        ];
        for c in cases {
            assert_eq!(
                decode(cf::LWM2M_CBOR, &base, c, &no_kinds),
                Err(DmError::BadRequest),
                "{c:02x?}"
            );
        }
    }

    #[test]
    fn round_trip_random_entries() {
        let mut rng = SeededRng::new(7);
        let bases = [
            Path::object(3303),
            Path::instance(3303, 1),
            Path::resource(3303, 1, 5700),
            Path::resource_instance(3303, 1, 5700, 2),
        ];
        for n in 0..3000 {
            let base = bases[n % bases.len()];
            let entries = random_entries(&mut rng, &base);
            let b = encode(cf::LWM2M_CBOR, &base, &entries).unwrap();
            let back = decode(cf::LWM2M_CBOR, &base, &b, &kinds(&entries)).unwrap();
            assert_eq!(back, entries, "base {base}");
        }
    }

    #[test]
    fn random_and_truncated_input_is_refused_without_panic() {
        let mut rng = SeededRng::new(8);
        let base = Path::instance(3303, 0);
        for _ in 0..5000 {
            let mut buf = vec![0u8; (rng.next_u32() % 48) as usize];
            rng.fill_bytes(&mut buf);
            if let Err(e) = decode(cf::LWM2M_CBOR, &base, &buf, &no_kinds) {
                assert_eq!(e, DmError::BadRequest);
            }
        }
        for _ in 0..50 {
            let entries = random_entries(&mut rng, &base);
            let b = encode(cf::LWM2M_CBOR, &base, &entries).unwrap();
            for n in 0..b.len() {
                assert_eq!(
                    decode(cf::LWM2M_CBOR, &base, &b[..n], &kinds(&entries)),
                    Err(DmError::BadRequest),
                    "cut at {n}"
                );
            }
        }
    }
}
