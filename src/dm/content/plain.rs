//! text/plain (LwM2M 1.1 TS §7.4.1) and opaque (§7.4.2): one value at a resource or
//! resource-instance path, the request path itself.

use super::base64::{self, Alphabet};
use super::{bad, Entry};
use crate::dm::object::DmError;
use crate::dm::path::Path;
use crate::dm::value::{Value, ValueKind};

/// The one entry a single-value format carries; it must sit at the request path.
fn single<'a>(base: &Path, entries: &'a [Entry]) -> Result<&'a Entry, DmError> {
    match entries {
        [e] if e.path == *base => Ok(e),
        _ => Err(bad(format_args!(
            "a single-value format needs exactly one value at {base}, got {}",
            entries.len()
        ))),
    }
}

fn check_single_path(base: &Path) -> Result<(), DmError> {
    if base.depth() < 3 {
        return Err(bad(format_args!("single-value format sent to {base}")));
    }
    Ok(())
}

pub fn encode_text(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    let e = single(base, entries)?;
    Ok(match &e.value {
        // Opaque data in text/plain is base64 (§7.4.1).
        Value::Opaque(b) => base64::encode(b, Alphabet::Standard).into_bytes(),
        v => v.to_text().unwrap_or_default().into_bytes(),
    })
}

pub fn encode_opaque(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    match &single(base, entries)?.value {
        Value::Opaque(b) => Ok(b.clone()),
        v => Err(bad(format_args!(
            "{base}: {:?} value cannot be sent as opaque",
            v.kind()
        ))),
    }
}

pub fn decode_text(
    base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    check_single_path(base)?;
    let text = core::str::from_utf8(payload)
        .map_err(|_| bad(format_args!("{base}: text/plain is not UTF-8")))?;
    let value = match kind_of(base) {
        None => Value::String(text.to_string()),
        Some(ValueKind::Opaque) => Value::Opaque(
            base64::decode(text.trim(), Alphabet::Standard)
                .ok_or_else(|| bad(format_args!("{base}: opaque text is not base64")))?,
        ),
        Some(kind) => Value::from_text(kind, text)
            .ok_or_else(|| bad(format_args!("{base}: {text:?} is not a {kind:?}")))?,
    };
    Ok(vec![Entry::new(*base, value)])
}

pub fn decode_opaque(
    base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    check_single_path(base)?;
    match kind_of(base) {
        None | Some(ValueKind::Opaque) => {
            Ok(vec![Entry::new(*base, Value::Opaque(payload.to_vec()))])
        }
        Some(kind) => Err(bad(format_args!(
            "{base}: opaque payload for a {kind:?} resource"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{no_kinds, random_value};
    use super::super::{decode, encode};
    use super::*;
    use crate::coap::content_format as cf;
    use crate::rng::{RandomSource, SeededRng};

    #[test]
    fn text_round_trips_every_kind() {
        let base = Path::resource(3303, 0, 5700);
        let mut rng = SeededRng::new(1);
        for _ in 0..2000 {
            let v = random_value(&mut rng);
            let e = vec![Entry::new(base, v.clone())];
            let b = encode(cf::TEXT_PLAIN, &base, &e).unwrap();
            let back = decode(cf::TEXT_PLAIN, &base, &b, &|_| Some(v.kind())).unwrap();
            match (&v, &back[0].value) {
                // Floats go through decimal text; the shortest form round-trips exactly.
                (Value::Float(a), Value::Float(b)) => assert_eq!(a, b),
                _ => assert_eq!(back, e),
            }
        }
    }

    #[test]
    fn text_examples() {
        let base = Path::resource(3, 0, 9);
        let kinds = |k| move |_: &Path| Some(k);
        let d = |b: &[u8], k| decode(cf::TEXT_PLAIN, &base, b, &kinds(k));
        assert_eq!(
            d(b"42", ValueKind::Integer).unwrap()[0].value,
            Value::Integer(42)
        );
        assert_eq!(
            d(b"1", ValueKind::Boolean).unwrap()[0].value,
            Value::Boolean(true)
        );
        assert_eq!(
            d(b"3:1", ValueKind::Objlnk).unwrap()[0].value,
            Value::Objlnk(3, 1)
        );
        assert_eq!(
            d(b"AQID", ValueKind::Opaque).unwrap()[0].value,
            Value::Opaque(vec![1, 2, 3])
        );
        assert_eq!(
            decode(cf::TEXT_PLAIN, &base, b"x", &no_kinds).unwrap()[0].value,
            Value::String("x".into())
        );
        assert_eq!(d(b"4x", ValueKind::Integer), Err(DmError::BadRequest));
        assert_eq!(d(b"\xff", ValueKind::String), Err(DmError::BadRequest));
        assert_eq!(d(b"1", ValueKind::None), Err(DmError::BadRequest));
        let e = [Entry::new(base, Value::Opaque(vec![1, 2, 3]))];
        assert_eq!(encode(cf::TEXT_PLAIN, &base, &e).unwrap(), b"AQID");
    }

    #[test]
    fn single_value_formats_refuse_containers_and_lists() {
        let inst = Path::instance(3, 0);
        assert_eq!(
            decode(cf::TEXT_PLAIN, &inst, b"1", &no_kinds),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            decode(cf::OCTET_STREAM, &inst, b"1", &no_kinds),
            Err(DmError::BadRequest)
        );
        let p = Path::resource(3, 0, 0);
        let two = [
            Entry::new(p, Value::Integer(1)),
            Entry::new(p, Value::Integer(2)),
        ];
        assert_eq!(encode(cf::TEXT_PLAIN, &p, &two), Err(DmError::BadRequest));
        assert_eq!(encode(cf::TEXT_PLAIN, &p, &[]), Err(DmError::BadRequest));
    }

    #[test]
    fn opaque_round_trip_and_type_check() {
        let p = Path::resource(5, 0, 0);
        let mut rng = SeededRng::new(2);
        for _ in 0..200 {
            let mut b = vec![0u8; (rng.next_u32() % 300) as usize];
            rng.fill_bytes(&mut b);
            let e = vec![Entry::new(p, Value::Opaque(b))];
            let enc = encode(cf::OCTET_STREAM, &p, &e).unwrap();
            assert_eq!(decode(cf::OCTET_STREAM, &p, &enc, &no_kinds).unwrap(), e);
        }
        assert_eq!(
            decode(cf::OCTET_STREAM, &p, b"x", &|_| Some(ValueKind::Integer)),
            Err(DmError::BadRequest)
        );
        let e = [Entry::new(p, Value::Integer(1))];
        assert_eq!(encode(cf::OCTET_STREAM, &p, &e), Err(DmError::BadRequest));
    }
}
