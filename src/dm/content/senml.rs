//! SenML JSON (110) and SenML CBOR (112) as LwM2M 1.1 TS §7.4.4/§7.4.5 use them: an array of
//! records whose base name + name resolve to a data-model path, one value field each
//! (`v` number, `vs` string, `vb` boolean, `vd` opaque, `vlo` object link).
//!
//! Both syntaxes share [`Record`]; only the field labels and the `vd` encoding differ
//! (base64url without padding in JSON, a byte string in CBOR; RFC 8428 §4.3 and §6).

use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value as Json};

use super::base64::{self, Alphabet};
use super::{bad, coerce, Entry};
use crate::dm::object::DmError;
use crate::dm::path::Path;
use crate::dm::value::{Value, ValueKind};

/// RFC 8428 §6 CBOR labels of the fields LwM2M uses; `vlo` is a text label (LwM2M §7.4.5).
mod label {
    pub const BN: i64 = -2;
    pub const BT: i64 = -3;
    pub const N: i64 = 0;
    pub const V: i64 = 2;
    pub const VS: i64 = 3;
    pub const VB: i64 = 4;
    pub const VD: i64 = 8;
    pub const VLO: &str = "vlo";
}

/// A SenML number as it arrived: integers keep their exact value.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Num {
    Int(i64),
    Uint(u64),
    Float(f64),
}

/// The value field of one record.
#[derive(Clone, Debug, PartialEq)]
enum Field {
    V(Num),
    Vs(String),
    Vb(bool),
    Vd(Vec<u8>),
    Vlo(String),
}

/// One SenML record, syntax-independent.
#[derive(Clone, Debug, Default, PartialEq)]
struct Record {
    bn: Option<String>,
    n: Option<String>,
    value: Option<Field>,
}

fn field_of(path: &Path, v: &Value) -> Result<Field, DmError> {
    Ok(match v {
        Value::String(s) | Value::Corelnk(s) => Field::Vs(s.clone()),
        Value::Integer(i) | Value::Time(i) => Field::V(Num::Int(*i)),
        Value::Unsigned(u) => Field::V(Num::Uint(*u)),
        Value::Float(f) if f.is_finite() => Field::V(Num::Float(*f)),
        Value::Float(_) => return Err(bad(format_args!("{path}: non-finite float"))),
        Value::Boolean(b) => Field::Vb(*b),
        Value::Opaque(b) => Field::Vd(b.clone()),
        Value::Objlnk(o, i) => Field::Vlo(format!("{o}:{i}")),
    })
}

/// Records for `entries`: the base name on the first record, names relative to it, as the
/// examples of §7.4.4 write them.
fn records(base: &Path, entries: &[Entry]) -> Result<Vec<Record>, DmError> {
    if let [e] = entries {
        if e.path == *base {
            return Ok(vec![Record {
                bn: Some(base.to_string()),
                n: None,
                value: Some(field_of(&e.path, &e.value)?),
            }]);
        }
    }
    let bn = if base.is_root() {
        "/".to_string()
    } else {
        format!("{base}/")
    };
    let skip = base.depth();
    let mut out = Vec::with_capacity(entries.len());
    for (k, e) in entries.iter().enumerate() {
        let rel = e.path.to_string();
        let rel: Vec<&str> = rel
            .split('/')
            .filter(|s| !s.is_empty())
            .skip(skip)
            .collect();
        out.push(Record {
            bn: (k == 0).then(|| bn.clone()),
            n: Some(rel.join("/")),
            value: Some(field_of(&e.path, &e.value)?),
        });
    }
    Ok(out)
}

/// Resolves names (base name + name, base name carried forward) and values.
fn entries_of(
    recs: Vec<Record>,
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let mut bn = String::new();
    let mut out: Vec<Entry> = Vec::with_capacity(recs.len());
    // A set, so a payload of many records costs n log n to check, not n².
    let mut seen = std::collections::BTreeSet::new();
    for r in recs {
        if let Some(b) = r.bn {
            bn = b;
        }
        let name = format!("{bn}{}", r.n.as_deref().unwrap_or(""));
        if !name.starts_with('/') {
            return Err(bad(format_args!(
                "SenML name {name:?} is not an absolute path"
            )));
        }
        let path = Path::parse(&name).map_err(|e| bad(format_args!("SenML name {name:?}: {e}")))?;
        if path.depth() < 3 {
            return Err(bad(format_args!("SenML name {name:?} is not a resource")));
        }
        if !seen.insert(path) {
            return Err(bad(format_args!("SenML name {name:?} given twice")));
        }
        let field = r
            .value
            .ok_or_else(|| bad(format_args!("SenML record {name:?} has no value")))?;
        let kind = kind_of(&path).or_else(|| {
            let (o, i, r) = (path.oid()?, path.iid()?, path.rid()?);
            path.riid().and_then(|_| kind_of(&Path::resource(o, i, r)))
        });
        let raw = match field {
            Field::V(Num::Int(i)) => Value::Integer(i),
            Field::V(Num::Uint(u)) => Value::Unsigned(u),
            Field::V(Num::Float(f)) => Value::Float(f),
            Field::Vs(s) => Value::String(s),
            Field::Vb(b) => Value::Boolean(b),
            Field::Vd(b) => Value::Opaque(b),
            Field::Vlo(s) => {
                let v = s
                    .split_once(':')
                    .and_then(|(o, i)| Some(Value::Objlnk(o.parse().ok()?, i.parse().ok()?)));
                v.ok_or_else(|| bad(format_args!("SenML vlo {s:?} is not OID:IID")))?
            }
        };
        if kind == Some(ValueKind::None) {
            return Err(bad(format_args!(
                "{path}: value for an executable resource"
            )));
        }
        out.push(Entry::new(path, coerce(&path, raw, kind)?));
    }
    Ok(out)
}

// ---- JSON ----

pub fn encode_json(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    let mut arr = Vec::new();
    for r in records(base, entries)? {
        let mut m = Map::new();
        if let Some(bn) = r.bn {
            m.insert("bn".into(), Json::String(bn));
        }
        if let Some(n) = r.n {
            m.insert("n".into(), Json::String(n));
        }
        let (k, v) = match r.value {
            Some(Field::V(Num::Int(i))) => ("v", Json::from(i)),
            Some(Field::V(Num::Uint(u))) => ("v", Json::from(u)),
            Some(Field::V(Num::Float(f))) => (
                "v",
                Number::from_f64(f)
                    .map(Json::Number)
                    .ok_or(DmError::BadRequest)?,
            ),
            Some(Field::Vs(s)) => ("vs", Json::String(s)),
            Some(Field::Vb(b)) => ("vb", Json::Bool(b)),
            Some(Field::Vd(b)) => ("vd", Json::String(base64::encode(&b, Alphabet::UrlSafe))),
            Some(Field::Vlo(s)) => ("vlo", Json::String(s)),
            None => continue,
        };
        m.insert(k.into(), v);
        arr.push(Json::Object(m));
    }
    serde_json::to_vec(&Json::Array(arr)).map_err(|_| DmError::Internal)
}

fn json_record(v: Json) -> Result<Record, DmError> {
    let Json::Object(m) = v else {
        return Err(bad(format_args!("SenML JSON record is not an object")));
    };
    let mut r = Record::default();
    let text = |k: &str, v: Json| match v {
        Json::String(s) => Ok(s),
        _ => Err(bad(format_args!("SenML JSON {k} is not a string"))),
    };
    for (k, v) in m {
        let field = match k.as_str() {
            "bn" => {
                r.bn = Some(text("bn", v)?);
                continue;
            }
            "n" => {
                r.n = Some(text("n", v)?);
                continue;
            }
            "v" => {
                let Json::Number(n) = v else {
                    return Err(bad(format_args!("SenML JSON v is not a number")));
                };
                Field::V(if let Some(i) = n.as_i64() {
                    Num::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Num::Uint(u)
                } else {
                    Num::Float(n.as_f64().ok_or(DmError::BadRequest)?)
                })
            }
            "vs" => Field::Vs(text("vs", v)?),
            "vb" => match v {
                Json::Bool(b) => Field::Vb(b),
                _ => return Err(bad(format_args!("SenML JSON vb is not a boolean"))),
            },
            "vd" => {
                let s = text("vd", v)?;
                // Some senders pad or use the standard alphabet; accept those too.
                let b = base64::decode(&s, Alphabet::UrlSafe)
                    .or_else(|| base64::decode(&s, Alphabet::Standard))
                    .ok_or_else(|| bad(format_args!("SenML JSON vd is not base64")))?;
                Field::Vd(b)
            }
            "vlo" => Field::Vlo(text("vlo", v)?),
            // Must-understand fields (RFC 8428 §4.4) that this codec does not know.
            k if k.ends_with('_') => {
                return Err(bad(format_args!(
                    "SenML JSON field {k:?} is not understood"
                )))
            }
            _ => continue,
        };
        if r.value.replace(field).is_some() {
            return Err(bad(format_args!("SenML JSON record has two values")));
        }
    }
    Ok(r)
}

pub fn decode_json(
    _base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let v: Json =
        serde_json::from_slice(payload).map_err(|e| bad(format_args!("SenML JSON: {e}")))?;
    let Json::Array(items) = v else {
        return Err(bad(format_args!("SenML JSON is not an array")));
    };
    let recs = items
        .into_iter()
        .map(json_record)
        .collect::<Result<_, _>>()?;
    entries_of(recs, kind_of)
}

// ---- CBOR ----

pub fn encode_cbor(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    let mut arr = Vec::new();
    for r in records(base, entries)? {
        let mut m: Vec<(Cbor, Cbor)> = Vec::new();
        if let Some(bn) = r.bn {
            m.push((Cbor::from(label::BN), Cbor::Text(bn)));
        }
        if let Some(n) = r.n {
            m.push((Cbor::from(label::N), Cbor::Text(n)));
        }
        let (k, v) = match r.value {
            Some(Field::V(Num::Int(i))) => (Cbor::from(label::V), Cbor::from(i)),
            Some(Field::V(Num::Uint(u))) => (Cbor::from(label::V), Cbor::from(u)),
            Some(Field::V(Num::Float(f))) => (Cbor::from(label::V), Cbor::Float(f)),
            Some(Field::Vs(s)) => (Cbor::from(label::VS), Cbor::Text(s)),
            Some(Field::Vb(b)) => (Cbor::from(label::VB), Cbor::Bool(b)),
            Some(Field::Vd(b)) => (Cbor::from(label::VD), Cbor::Bytes(b)),
            Some(Field::Vlo(s)) => (Cbor::Text(label::VLO.into()), Cbor::Text(s)),
            None => continue,
        };
        m.push((k, v));
        arr.push(Cbor::Map(m));
    }
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Cbor::Array(arr), &mut out).map_err(|_| DmError::Internal)?;
    Ok(out)
}

/// Parses exactly one CBOR data item; trailing bytes are an error.
pub(crate) fn parse_cbor(payload: &[u8]) -> Result<Cbor, DmError> {
    let mut rd = payload;
    let v: Cbor = ciborium::de::from_reader(&mut rd).map_err(|e| bad(format_args!("CBOR: {e}")))?;
    if !rd.is_empty() {
        return Err(bad(format_args!(
            "CBOR: {} bytes after the data item",
            rd.len()
        )));
    }
    Ok(v)
}

fn cbor_num(v: Cbor) -> Result<Num, DmError> {
    match v {
        Cbor::Integer(i) => {
            let i = i128::from(i);
            if let Ok(v) = i64::try_from(i) {
                Ok(Num::Int(v))
            } else {
                u64::try_from(i)
                    .map(Num::Uint)
                    .map_err(|_| bad(format_args!("SenML CBOR v out of range")))
            }
        }
        Cbor::Float(f) if f.is_finite() => Ok(Num::Float(f)),
        _ => Err(bad(format_args!("SenML CBOR v is not a number"))),
    }
}

fn cbor_record(v: Cbor) -> Result<Record, DmError> {
    let Cbor::Map(m) = v else {
        return Err(bad(format_args!("SenML CBOR record is not a map")));
    };
    let mut r = Record::default();
    let text = |v: Cbor| match v {
        Cbor::Text(s) => Ok(s),
        _ => Err(bad(format_args!("SenML CBOR field is not a text string"))),
    };
    for (k, v) in m {
        let label: Result<i64, &str> = match &k {
            Cbor::Integer(i) => i64::try_from(*i).map_err(|_| ""),
            Cbor::Text(t) => Err(t.as_str()),
            _ => {
                return Err(bad(format_args!(
                    "SenML CBOR label is neither int nor text"
                )))
            }
        };
        let field = match label {
            Ok(label::BN) => {
                r.bn = Some(text(v)?);
                continue;
            }
            Ok(label::N) => {
                r.n = Some(text(v)?);
                continue;
            }
            Ok(label::V) => Field::V(cbor_num(v)?),
            Ok(label::VS) => Field::Vs(text(v)?),
            Ok(label::VB) => match v {
                Cbor::Bool(b) => Field::Vb(b),
                _ => return Err(bad(format_args!("SenML CBOR vb is not a boolean"))),
            },
            Ok(label::VD) => match v {
                Cbor::Bytes(b) => Field::Vd(b),
                _ => return Err(bad(format_args!("SenML CBOR vd is not a byte string"))),
            },
            Err(label::VLO) => Field::Vlo(text(v)?),
            // Base time and other fields LwM2M does not need are skipped.
            Ok(label::BT) | Ok(_) => continue,
            Err(t) if t.ends_with('_') => {
                return Err(bad(format_args!(
                    "SenML CBOR field {t:?} is not understood"
                )))
            }
            Err(_) => continue,
        };
        if r.value.replace(field).is_some() {
            return Err(bad(format_args!("SenML CBOR record has two values")));
        }
    }
    Ok(r)
}

pub fn decode_cbor(
    _base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let Cbor::Array(items) = parse_cbor(payload)? else {
        return Err(bad(format_args!("SenML CBOR is not an array")));
    };
    let recs = items
        .into_iter()
        .map(cbor_record)
        .collect::<Result<_, _>>()?;
    entries_of(recs, kind_of)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{kinds, no_kinds, random_entries};
    use super::super::{decode, encode};
    use super::*;
    use crate::coap::content_format as cf;
    use crate::rng::{RandomSource, SeededRng};

    /// The Device object instance of LwM2M 1.1 TS §7.4.4's SenML JSON example (Read /3/0),
    /// values as in the TLV example of §7.4.3.
    fn device_entries() -> Vec<Entry> {
        let s = |rid, v: &str| Entry::new(Path::resource(3, 0, rid), Value::String(v.into()));
        let ri = |rid, ri, v| Entry::new(Path::resource_instance(3, 0, rid, ri), Value::Integer(v));
        vec![
            s(0, "Open Mobile Alliance"),
            s(1, "Lightweight M2M Client"),
            s(2, "345000123"),
            s(3, "1.0"),
            ri(6, 0, 1),
            ri(6, 1, 5),
            ri(7, 0, 3800),
            ri(7, 1, 5000),
            ri(8, 0, 125),
            ri(8, 1, 900),
            Entry::new(Path::resource(3, 0, 9), Value::Integer(100)),
            Entry::new(Path::resource(3, 0, 10), Value::Integer(15)),
            ri(11, 0, 0),
            Entry::new(Path::resource(3, 0, 13), Value::Time(1_367_491_215)),
            s(14, "+02:00"),
            s(16, "U"),
        ]
    }

    /// §7.4.4 example text, written out from the example's values.
    const DEVICE_JSON: &str = concat!(
        r#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},"#,
        r#"{"n":"1","vs":"Lightweight M2M Client"},"#,
        r#"{"n":"2","vs":"345000123"},"#,
        r#"{"n":"3","vs":"1.0"},"#,
        r#"{"n":"6/0","v":1},{"n":"6/1","v":5},"#,
        r#"{"n":"7/0","v":3800},{"n":"7/1","v":5000},"#,
        r#"{"n":"8/0","v":125},{"n":"8/1","v":900},"#,
        r#"{"n":"9","v":100},{"n":"10","v":15},{"n":"11/0","v":0},"#,
        r#"{"n":"13","v":1367491215},{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]"#
    );

    #[test]
    fn golden_device_instance_json() {
        let base = Path::instance(3, 0);
        let entries = device_entries();
        let b = encode(cf::SENML_JSON, &base, &entries).unwrap();
        assert_eq!(std::str::from_utf8(&b).unwrap(), DEVICE_JSON);
        let back = decode(
            cf::SENML_JSON,
            &base,
            DEVICE_JSON.as_bytes(),
            &kinds(&entries),
        );
        assert_eq!(back.unwrap(), entries);
        // Without declared kinds numbers stay integers and strings stay strings.
        let raw = decode(cf::SENML_JSON, &base, DEVICE_JSON.as_bytes(), &no_kinds).unwrap();
        assert_eq!(raw[13].value, Value::Integer(1_367_491_215));
    }

    /// Two records of the same example in SenML CBOR (RFC 8428 §6 labels), bytes by hand:
    /// [{-2: "/3/0/", 0: "0", 3: "Open Mobile Alliance"}, {0: "9", 2: 100}].
    #[test]
    fn golden_device_records_cbor() {
        let mut golden = vec![0x82, 0xA3, 0x21, 0x65];
        golden.extend_from_slice(b"/3/0/");
        golden.extend_from_slice(&[0x00, 0x61, b'0', 0x03, 0x74]);
        golden.extend_from_slice(b"Open Mobile Alliance");
        golden.extend_from_slice(&[0xA2, 0x00, 0x61, b'9', 0x02, 0x18, 0x64]);
        let entries = vec![
            Entry::new(
                Path::resource(3, 0, 0),
                Value::String("Open Mobile Alliance".into()),
            ),
            Entry::new(Path::resource(3, 0, 9), Value::Integer(100)),
        ];
        let base = Path::instance(3, 0);
        assert_eq!(encode(cf::SENML_CBOR, &base, &entries).unwrap(), golden);
        assert_eq!(
            decode(cf::SENML_CBOR, &base, &golden, &no_kinds).unwrap(),
            entries
        );
    }

    #[test]
    fn value_fields_and_names() {
        let base = Path::resource(3303, 0, 5700);
        let one = |v: Value| vec![Entry::new(base, v)];
        let j = |e: &[Entry]| String::from_utf8(encode(cf::SENML_JSON, &base, e).unwrap()).unwrap();
        assert_eq!(
            j(&one(Value::Float(21.5))),
            r#"[{"bn":"/3303/0/5700","v":21.5}]"#
        );
        assert_eq!(
            j(&one(Value::Boolean(true))),
            r#"[{"bn":"/3303/0/5700","vb":true}]"#
        );
        assert_eq!(
            j(&one(Value::Opaque(vec![0xFB, 0xFF]))),
            r#"[{"bn":"/3303/0/5700","vd":"-_8"}]"#
        );
        assert_eq!(
            j(&one(Value::Objlnk(3, 0))),
            r#"[{"bn":"/3303/0/5700","vlo":"3:0"}]"#
        );
        // A full name without a base name, and a base name replaced half-way.
        let text =
            br#"[{"n":"/1/0/1","v":60},{"bn":"/1/0/","n":"7","vs":"U"},{"n":"6","vb":false}]"#;
        let got = decode(cf::SENML_JSON, &Path::instance(1, 0), text, &no_kinds).unwrap();
        assert_eq!(
            got,
            vec![
                Entry::new(Path::resource(1, 0, 1), Value::Integer(60)),
                Entry::new(Path::resource(1, 0, 7), Value::String("U".into())),
                Entry::new(Path::resource(1, 0, 6), Value::Boolean(false)),
            ]
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let base = Path::instance(1, 0);
        let cases: &[&[u8]] = &[
            br#"{"n":"/1/0/1","v":1}"#,
            br#"[{"n":"/1/0/1"}]"#,
            br#"[{"n":"/1/0/1","v":1,"vs":"x"}]"#,
            br#"[{"n":"/1/0","v":1}]"#,
            br#"[{"n":"1/0/1","v":1}]"#,
            br#"[{"n":"/2/0/1","v":1}]"#,
            br#"[{"n":"/1/0/1","v":1},{"n":"/1/0/1","v":2}]"#,
            br#"[{"n":"/1/0/1","v":"1"}]"#,
            br#"[{"n":"/1/0/1","vd":"***"}]"#,
            br#"[{"n":"/1/0/1","vlo":"3"}]"#,
            br#"[{"n":"/1/0/1","v":1,"x_":0}]"#,
            br#"[{"n":"/1/0/x","v":1}]"#,
            b"[",
        ];
        for c in cases {
            assert_eq!(
                decode(cf::SENML_JSON, &base, c, &no_kinds),
                Err(DmError::BadRequest),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        // A number for a string resource is refused; an integer for a float is converted.
        let t = br#"[{"n":"/1/0/1","v":1}]"#;
        assert!(decode(cf::SENML_JSON, &base, t, &|_| Some(ValueKind::String)).is_err());
        assert_eq!(
            decode(cf::SENML_JSON, &base, t, &|_| Some(ValueKind::Float)).unwrap()[0].value,
            Value::Float(1.0)
        );
    }

    #[test]
    fn round_trip_random_entries_both_syntaxes() {
        let mut rng = SeededRng::new(5);
        let bases = [
            Path::ROOT,
            Path::object(3303),
            Path::instance(3303, 1),
            Path::resource(3303, 1, 5700),
            Path::resource_instance(3303, 1, 5700, 2),
        ];
        for n in 0..3000 {
            let base = bases[n % bases.len()];
            let gen_base = if base.is_root() {
                Path::object(7)
            } else {
                base
            };
            let entries = random_entries(&mut rng, &gen_base);
            for f in [cf::SENML_JSON, cf::SENML_CBOR] {
                let b = encode(f, &base, &entries).unwrap();
                let back = decode(f, &base, &b, &kinds(&entries)).unwrap();
                assert_eq!(back, entries, "cf {f} base {base}");
            }
        }
    }

    #[test]
    fn random_and_truncated_input_is_refused_without_panic() {
        let mut rng = SeededRng::new(6);
        let base = Path::instance(3303, 0);
        for _ in 0..5000 {
            let mut buf = vec![0u8; (rng.next_u32() % 48) as usize];
            rng.fill_bytes(&mut buf);
            for f in [cf::SENML_JSON, cf::SENML_CBOR] {
                if let Err(e) = decode(f, &base, &buf, &no_kinds) {
                    assert_eq!(e, DmError::BadRequest);
                }
            }
        }
        for _ in 0..50 {
            let entries = random_entries(&mut rng, &base);
            for f in [cf::SENML_JSON, cf::SENML_CBOR] {
                let b = encode(f, &base, &entries).unwrap();
                for n in 0..b.len() {
                    assert_eq!(
                        decode(f, &base, &b[..n], &kinds(&entries)),
                        Err(DmError::BadRequest),
                        "cf {f} cut at {n}"
                    );
                }
            }
        }
    }
}
