//! Content-format codecs for LwM2M payloads (LwM2M 1.1 TS §7.4): one entry point to encode
//! values under a request path and to decode what a server sent, whatever the format.
//!
//! | format | module |
//! |---|---|
//! | text/plain (0), opaque (42) | [`plain`] |
//! | TLV (11542) | [`tlv`], over [`crate::dm::tlv`] |
//! | SenML JSON (110), SenML CBOR (112) | [`senml`] |
//! | LwM2M CBOR (11544) | [`lwm2m_cbor`] |
//!
//! CoRE link format (40) is produced by Discover only (`crate::dm::link`), never through
//! here. Every decoder is bounds-checked and refuses bad input with [`DmError::BadRequest`]
//! (and a log line) instead of panicking.

pub mod base64;
pub mod lwm2m_cbor;
pub mod plain;
pub mod senml;
pub mod tlv;

use super::object::DmError;
use super::path::Path;
use super::value::{Value, ValueKind};
use crate::coap::content_format as cf;

/// One value at a resource path (/o/i/r) or resource-instance path (/o/i/r/ri).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub path: Path,
    pub value: Value,
}

impl Entry {
    pub fn new(path: Path, value: Value) -> Entry {
        Entry { path, value }
    }
}

/// Encodes entries under `base` (the request path) in Content-Format `cf`.
/// text/plain and opaque take exactly one entry; TLV, SenML JSON/CBOR, LwM2M CBOR any number.
pub fn encode(cf: u16, base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    for e in entries {
        if e.path.depth() < 3 || !base.contains(&e.path) {
            log::warn!("content: entry {} cannot be encoded under {base}", e.path);
            return Err(DmError::BadRequest);
        }
    }
    match cf {
        cf::TEXT_PLAIN => plain::encode_text(base, entries),
        cf::OCTET_STREAM => plain::encode_opaque(base, entries),
        cf::LWM2M_TLV => tlv::encode(base, entries),
        cf::SENML_JSON => senml::encode_json(base, entries),
        cf::SENML_CBOR => senml::encode_cbor(base, entries),
        cf::LWM2M_CBOR => lwm2m_cbor::encode(base, entries),
        _ => Err(DmError::UnsupportedContentFormat),
    }
}

/// Decodes a payload sent to `base`. `kind_of` gives the declared type of a resource path
/// when known (None: TLV and text values come back as Value::Opaque / Value::String).
/// Malformed input -> DmError::BadRequest; unsupported cf -> DmError::UnsupportedContentFormat.
pub fn decode(
    cf: u16,
    base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let entries = match cf {
        cf::TEXT_PLAIN => plain::decode_text(base, payload, kind_of),
        cf::OCTET_STREAM => plain::decode_opaque(base, payload, kind_of),
        cf::LWM2M_TLV => tlv::decode(base, payload, kind_of),
        cf::SENML_JSON => senml::decode_json(base, payload, kind_of),
        cf::SENML_CBOR => senml::decode_cbor(base, payload, kind_of),
        cf::LWM2M_CBOR => lwm2m_cbor::decode(base, payload, kind_of),
        _ => Err(DmError::UnsupportedContentFormat),
    }?;
    // Whatever the format says, a payload may only carry values at or below the request path.
    for e in &entries {
        if e.path.depth() < 3 || !base.contains(&e.path) {
            return Err(bad(format_args!(
                "{} is not a resource below {base}",
                e.path
            )));
        }
    }
    Ok(entries)
}

/// Logs why input was refused and gives the error every decoder returns for it.
pub(crate) fn bad(why: core::fmt::Arguments<'_>) -> DmError {
    log::warn!("content: refusing payload: {why}");
    DmError::BadRequest
}

/// Checks a value against the declared kind of its path, converting where the format
/// cannot tell kinds apart (numbers, strings). `None` kind keeps the value as decoded.
pub(crate) fn coerce(path: &Path, v: Value, kind: Option<ValueKind>) -> Result<Value, DmError> {
    let Some(kind) = kind else { return Ok(v) };
    if v.kind() == kind {
        return Ok(v);
    }
    let out = match (kind, &v) {
        (ValueKind::Integer, Value::Unsigned(u)) => i64::try_from(*u).ok().map(Value::Integer),
        (ValueKind::Integer, Value::Time(t)) => Some(Value::Integer(*t)),
        (ValueKind::Time, Value::Integer(t)) => Some(Value::Time(*t)),
        (ValueKind::Time, Value::Unsigned(u)) => i64::try_from(*u).ok().map(Value::Time),
        (ValueKind::Unsigned, Value::Integer(i)) => u64::try_from(*i).ok().map(Value::Unsigned),
        (ValueKind::Float, Value::Integer(i)) => Some(Value::Float(*i as f64)),
        (ValueKind::Float, Value::Unsigned(u)) => Some(Value::Float(*u as f64)),
        (ValueKind::Integer, Value::Float(f)) if is_integral(*f) => Some(Value::Integer(*f as i64)),
        (ValueKind::Unsigned, Value::Float(f)) if is_integral(*f) && *f >= 0.0 => {
            Some(Value::Unsigned(*f as u64))
        }
        (ValueKind::Time, Value::Float(f)) if is_integral(*f) => Some(Value::Time(*f as i64)),
        (ValueKind::Corelnk, Value::String(s)) => Some(Value::Corelnk(s.clone())),
        (ValueKind::String, Value::Corelnk(s)) => Some(Value::String(s.clone())),
        _ => None,
    };
    out.ok_or_else(|| {
        bad(format_args!(
            "{path}: {:?} value for a {kind:?} resource",
            v.kind()
        ))
    })
}

/// True for finite floats that an i64 holds exactly (|f| < 2^63).
fn is_integral(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Seeded random entries for the round-trip property tests of every codec.
    use super::*;
    use crate::rng::{RandomSource, SeededRng};

    pub fn random_value(rng: &mut SeededRng) -> Value {
        let n = rng.next_u32();
        let len = (rng.next_u32() % 20) as usize;
        match n % 9 {
            0 => {
                let s: String = (0..len)
                    .map(|_| char::from_u32(0x20 + rng.next_u32() % 0x300).unwrap_or('x'))
                    .collect();
                Value::String(s)
            }
            1 => Value::Integer(random_i64(rng)),
            2 => Value::Unsigned(u64::from(rng.next_u32()) << (rng.next_u32() % 33)),
            3 => {
                let f = f64::from(rng.next_u32() as i32) / f64::from(1 + rng.next_u32() % 1000);
                Value::Float(f)
            }
            4 => Value::Boolean(n & 0x100 != 0),
            5 => {
                let mut b = vec![0u8; len];
                rng.fill_bytes(&mut b);
                Value::Opaque(b)
            }
            6 => Value::Time(i64::from(rng.next_u32())),
            7 => Value::Objlnk(rng.next_u32() as u16, rng.next_u32() as u16),
            _ => Value::Corelnk(format!(
                "</{}/{}>",
                rng.next_u32() % 100,
                rng.next_u32() % 9
            )),
        }
    }

    fn random_i64(rng: &mut SeededRng) -> i64 {
        let v = (i64::from(rng.next_u32()) << 32) | i64::from(rng.next_u32());
        v >> (rng.next_u32() % 64)
    }

    /// 1..=8 entries below `base`, distinct paths, resource instances grouped as a multiple
    /// resource would be. Paths are sorted, as encoders emit them.
    pub fn random_entries(rng: &mut SeededRng, base: &Path) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        let count = 1 + rng.next_u32() % 8;
        for _ in 0..count {
            let small = |rng: &mut SeededRng| (rng.next_u32() % 4) as u16 * 100 + 1;
            let path = match base.depth() {
                1 => Path::resource(base.oid().unwrap(), small(rng), small(rng)),
                2 => Path::resource(base.oid().unwrap(), base.iid().unwrap(), small(rng)),
                3 => Path::resource_instance(
                    base.oid().unwrap(),
                    base.iid().unwrap(),
                    base.rid().unwrap(),
                    small(rng),
                ),
                _ => *base,
            };
            // A resource is either single or multiple, never both in one payload.
            let clash = out.iter().any(|e| {
                e.path == path
                    || (e.path.depth() != path.depth()
                        && e.path.rid() == path.rid()
                        && e.path.iid() == path.iid())
            });
            if !clash {
                out.push(Entry::new(path, random_value(rng)));
            }
        }
        out.sort_by_key(|e| e.path);
        out
    }

    /// The declared kinds of the entries' paths, as a data model would know them.
    pub fn kinds(entries: &[Entry]) -> impl Fn(&Path) -> Option<ValueKind> + '_ {
        move |p: &Path| {
            entries
                .iter()
                .find(|e| e.path == *p)
                .map(|e| e.value.kind())
        }
    }

    pub fn no_kinds(_: &Path) -> Option<ValueKind> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_formats_are_refused() {
        let base = Path::resource(3, 0, 0);
        let e = [Entry::new(base, Value::Integer(1))];
        assert_eq!(
            encode(cf::LINK_FORMAT, &base, &e),
            Err(DmError::UnsupportedContentFormat)
        );
        assert_eq!(
            decode(9999, &base, b"1", &testutil::no_kinds),
            Err(DmError::UnsupportedContentFormat)
        );
    }

    #[test]
    fn entries_outside_the_base_are_refused() {
        let e = [Entry::new(Path::resource(3, 0, 1), Value::Integer(1))];
        for f in [
            cf::LWM2M_TLV,
            cf::TEXT_PLAIN,
            cf::SENML_JSON,
            cf::SENML_CBOR,
        ] {
            assert_eq!(
                encode(f, &Path::resource(3, 0, 0), &e),
                Err(DmError::BadRequest)
            );
        }
    }

    #[test]
    fn coercion_follows_the_declared_kind() {
        let p = Path::resource(3, 0, 0);
        assert_eq!(
            coerce(&p, Value::Integer(3), Some(ValueKind::Float)),
            Ok(Value::Float(3.0))
        );
        assert_eq!(
            coerce(&p, Value::Float(2.0), Some(ValueKind::Unsigned)),
            Ok(Value::Unsigned(2))
        );
        assert_eq!(
            coerce(&p, Value::Float(2.5), Some(ValueKind::Integer)),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            coerce(&p, Value::Integer(-1), Some(ValueKind::Unsigned)),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            coerce(&p, Value::Boolean(true), Some(ValueKind::String)),
            Err(DmError::BadRequest)
        );
    }
}
