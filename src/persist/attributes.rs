//! Attribute storage (the pmin/pmax/gt/lt/st each server set with Write-Attributes) as a
//! persisted part. The payload is `[[ssid, [[path, {attribute: value}], ...]], ...]`, a path
//! being the array of its IDs; restoring applies the same checks as Write-Attributes, so a
//! part that decodes is one the client could have built itself.

use std::collections::BTreeMap;

use ciborium::Value;

use super::cbor::{self, Fields};
use super::frame::{self, Part};
use super::PersistError;
use crate::dm::Path;
use crate::lwm2m::attributes::{AttributeStore, Attributes};

pub const ATTRIBUTES_VERSION: u16 = 1;

/// Keys of the attribute map.
const PMIN: u64 = 0;
const PMAX: u64 = 1;
const GT: u64 = 2;
const LT: u64 = 3;
const ST: u64 = 4;

/// Every server's attributes by SSID.
pub type AttributeStorage = BTreeMap<u16, AttributeStore>;

fn path_value(p: &Path) -> Value {
    let ids = [p.oid(), p.iid(), p.rid(), p.riid()];
    Value::Array(ids.iter().flatten().map(|id| Value::from(*id)).collect())
}

fn attributes_value(a: &Attributes) -> Value {
    let mut m = Vec::new();
    m.extend(a.pmin.map(|v| (PMIN, Value::from(v))));
    m.extend(a.pmax.map(|v| (PMAX, Value::from(v))));
    for (k, v) in [(GT, a.gt), (LT, a.lt), (ST, a.st)] {
        m.extend(v.map(|v| (k, Value::Float(v))));
    }
    cbor::map(m)
}

/// The attribute storage as a part (`stores` as [`crate::Client::attribute_storage`] gives it).
pub fn attributes_persist<'a>(
    stores: impl IntoIterator<Item = (u16, &'a AttributeStore)>,
) -> Result<Vec<u8>, PersistError> {
    let servers = stores
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(ssid, s)| {
            let entries = s
                .iter()
                .map(|(p, a)| Value::Array(vec![path_value(p), attributes_value(a)]))
                .collect();
            Value::Array(vec![Value::from(ssid), Value::Array(entries)])
        })
        .collect();
    frame::write(
        Part::Attributes,
        ATTRIBUTES_VERSION,
        &cbor::to_bytes(&Value::Array(servers)),
    )
}

fn pair(v: Value, what: &str) -> Result<(Value, Value), PersistError> {
    match v {
        Value::Array(mut a) if a.len() == 2 => {
            let second = a.pop().expect("len 2");
            let first = a.pop().expect("len 2");
            Ok((first, second))
        }
        _ => Err(PersistError::malformed(format!("{what} is not a pair"))),
    }
}

fn id(v: &Value, what: &str) -> Result<u16, PersistError> {
    match v {
        Value::Integer(i) => u16::try_from(*i)
            .ok()
            .filter(|id| *id != u16::MAX)
            .ok_or_else(|| PersistError::malformed(format!("{what} out of range"))),
        _ => Err(PersistError::malformed(format!("{what} is not an integer"))),
    }
}

fn parse_path(v: &Value) -> Result<Path, PersistError> {
    let Value::Array(ids) = v else {
        return Err(PersistError::malformed("attribute path is not an array"));
    };
    let ids = ids
        .iter()
        .map(|i| id(i, "path ID"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match ids[..] {
        [o] => Path::object(o),
        [o, i] => Path::instance(o, i),
        [o, i, r] => Path::resource(o, i, r),
        [o, i, r, ri] => Path::resource_instance(o, i, r, ri),
        _ => {
            return Err(PersistError::malformed(format!(
                "attribute path has {} levels",
                ids.len()
            )))
        }
    })
}

fn parse_attributes(v: &Value) -> Result<Attributes, PersistError> {
    let f = Fields::of(v, "attributes")?;
    if let Value::Map(entries) = v {
        if let Some((k, _)) = entries.iter().find(
            |(k, _)| !matches!(k, Value::Integer(i) if u64::try_from(*i).is_ok_and(|k| k <= ST)),
        ) {
            return Err(PersistError::malformed(format!(
                "unknown attribute key {k:?}"
            )));
        }
    }
    let period = |k: u64| -> Result<Option<u32>, PersistError> {
        f.opt_int(k)?
            .map(|v| u32::try_from(v).map_err(|_| PersistError::malformed("period out of range")))
            .transpose()
    };
    let number = |k: u64| -> Result<Option<f64>, PersistError> {
        match f.get(k) {
            None => Ok(None),
            Some(Value::Float(x)) => Ok(Some(*x)),
            Some(_) => Err(PersistError::malformed(format!(
                "attribute {k} is not a number"
            ))),
        }
    };
    Ok(Attributes {
        pmin: period(PMIN)?,
        pmax: period(PMAX)?,
        gt: number(GT)?,
        lt: number(LT)?,
        st: number(ST)?,
    })
}

/// Decodes an attribute-storage part. Returns the storage and the bytes consumed.
pub fn attributes_restore(input: &[u8]) -> Result<(AttributeStorage, usize), PersistError> {
    let (_v, payload, used) = frame::read(input, Part::Attributes, ATTRIBUTES_VERSION)?;
    let Value::Array(servers) = cbor::from_bytes(payload)? else {
        return Err(PersistError::malformed("attribute storage is not an array"));
    };
    let mut out = AttributeStorage::new();
    for server in servers {
        let (ssid, entries) = pair(server, "server attributes")?;
        let ssid = id(&ssid, "SSID")?;
        if ssid == 0 {
            return Err(PersistError::malformed("SSID 0"));
        }
        let Value::Array(entries) = entries else {
            return Err(PersistError::malformed(
                "attribute entries are not an array",
            ));
        };
        let mut store = AttributeStore::default();
        for e in entries {
            let (path, attrs) = pair(e, "attribute entry")?;
            let path = parse_path(&path)?;
            let attrs = parse_attributes(&attrs)?;
            if attrs.is_empty() || !store.at(&path).is_empty() {
                return Err(PersistError::malformed(format!(
                    "ssid={ssid}: empty or repeated attributes at {path:?}"
                )));
            }
            store
                .set(path, attrs)
                .map_err(|e| PersistError::malformed(format!("ssid={ssid} {path:?}: {e}")))?;
        }
        if out.insert(ssid, store).is_some() {
            return Err(PersistError::malformed(format!(
                "ssid={ssid} appears twice"
            )));
        }
    }
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AttributeStorage {
        let mut a = AttributeStore::default();
        a.set(
            Path::object(3303),
            Attributes {
                pmin: Some(10),
                pmax: Some(60),
                ..Default::default()
            },
        )
        .unwrap();
        a.set(
            Path::resource(3303, 0, 5700),
            Attributes {
                gt: Some(25.5),
                lt: Some(-3.25),
                st: Some(0.5),
                ..Default::default()
            },
        )
        .unwrap();
        let mut b = AttributeStore::default();
        b.set(
            Path::resource_instance(3, 0, 7, 1),
            Attributes {
                pmax: Some(u32::MAX),
                ..Default::default()
            },
        )
        .unwrap();
        BTreeMap::from([(7, a), (9, b)])
    }

    fn same(a: &AttributeStorage, b: &AttributeStorage) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((sa, x), (sb, y))| {
                sa == sb && x.iter().collect::<Vec<_>>() == y.iter().collect::<Vec<_>>()
            })
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = attributes_persist(s.iter().map(|(k, v)| (*k, v))).unwrap();
        let (back, used) = attributes_restore(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert!(same(&s, &back));
        let empty = attributes_persist([]).unwrap();
        assert!(attributes_restore(&empty).unwrap().0.is_empty());
        // A server without attributes is not written at all.
        let e = AttributeStore::default();
        assert_eq!(attributes_persist([(4, &e)]).unwrap(), empty);
    }

    fn framed(v: Value) -> Vec<u8> {
        frame::write(Part::Attributes, 1, &cbor::to_bytes(&v)).unwrap()
    }

    fn entry(path: &[u16], attrs: Vec<(u64, Value)>) -> Value {
        Value::Array(vec![
            Value::Array(path.iter().map(|i| Value::from(*i)).collect()),
            cbor::map(attrs),
        ])
    }

    fn one(ssid: u16, entries: Vec<Value>) -> Value {
        Value::Array(vec![Value::Array(vec![
            Value::from(ssid),
            Value::Array(entries),
        ])])
    }

    #[test]
    fn well_framed_but_invalid_contents_are_refused() {
        let cases = [
            one(7, vec![entry(&[], vec![(0, Value::from(1))])]),
            one(7, vec![entry(&[1, 2, 3, 4, 5], vec![(0, Value::from(1))])]),
            one(7, vec![entry(&[65535], vec![(0, Value::from(1))])]),
            one(7, vec![entry(&[3], vec![(0, Value::from(-1))])]),
            one(7, vec![entry(&[3], vec![(9, Value::from(1))])]),
            one(7, vec![entry(&[3], vec![])]),
            one(7, vec![entry(&[3], vec![(2, Value::from(1))])]),
            one(7, vec![entry(&[3], vec![(2, Value::Float(f64::NAN))])]),
            one(
                7,
                vec![entry(
                    &[3],
                    vec![(2, Value::Float(1.0)), (3, Value::Float(2.0))],
                )],
            ),
            one(
                7,
                vec![
                    entry(&[3], vec![(0, Value::from(1))]),
                    entry(&[3], vec![(1, Value::from(1))]),
                ],
            ),
            one(0, vec![entry(&[3], vec![(0, Value::from(1))])]),
            Value::Array(vec![
                Value::Array(vec![Value::from(7), Value::Array(vec![])]),
                Value::Array(vec![Value::from(7), Value::Array(vec![])]),
            ]),
            Value::Map(vec![]),
        ];
        for (i, v) in cases.into_iter().enumerate() {
            let e = attributes_restore(&framed(v)).unwrap_err();
            assert!(matches!(e, PersistError::Malformed(_)), "case {i}: {e}");
        }
    }
}
