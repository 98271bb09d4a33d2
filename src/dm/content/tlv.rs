//! TLV (LwM2M 1.1 TS §7.4.3) as [`Entry`] lists: builds the TLV tree that fits the request
//! path and flattens a received tree back into entries. Byte-level work is
//! [`crate::dm::tlv`]'s.

use super::{bad, coerce, Entry};
use crate::dm::object::DmError;
use crate::dm::path::Path;
use crate::dm::tlv::{self as wire, Tlv, TlvBody, TlvType};
use crate::dm::value::{Value, ValueKind};

/// Resource TLVs of one instance: single resources as Resource, resource instances grouped
/// into a Multiple Resource.
fn resources(entries: &[&Entry]) -> Vec<Tlv> {
    let mut out: Vec<Tlv> = Vec::new();
    for e in entries {
        let rid = e.path.rid().unwrap_or_default();
        match e.path.riid() {
            None => out.push(Tlv::value(TlvType::Resource, rid, &e.value)),
            Some(ri) => {
                let item = Tlv::value(TlvType::ResourceInstance, ri, &e.value);
                match out.last_mut() {
                    Some(Tlv {
                        ty: TlvType::MultipleResource,
                        id,
                        body: TlvBody::Children(c),
                    }) if *id == rid => c.push(item),
                    _ => out.push(Tlv::parent(TlvType::MultipleResource, rid, vec![item])),
                }
            }
        }
    }
    out
}

pub fn encode(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, DmError> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.path);
    let items = match base.depth() {
        1 => {
            let mut out = Vec::new();
            let mut rest = &sorted[..];
            while let Some(first) = rest.first() {
                let iid = first.path.iid();
                let n = rest.iter().take_while(|e| e.path.iid() == iid).count();
                out.push(Tlv::parent(
                    TlvType::ObjectInstance,
                    iid.unwrap_or_default(),
                    resources(&rest[..n]),
                ));
                rest = &rest[n..];
            }
            out
        }
        2 | 3 => {
            // A single resource read gives a Resource TLV; a multiple one its container.
            resources(&sorted)
        }
        4 => match sorted.as_slice() {
            [e] => vec![Tlv::value(
                TlvType::ResourceInstance,
                base.riid().unwrap_or_default(),
                &e.value,
            )],
            _ => return Err(bad(format_args!("TLV for {base} needs exactly one value"))),
        },
        _ => return Err(bad(format_args!("TLV cannot be encoded at {base}"))),
    };
    Ok(wire::encode(&items))
}

/// Decodes one value's bytes as the path's declared kind; unknown kinds stay opaque.
fn value(path: Path, bytes: &[u8], kind: Option<ValueKind>) -> Result<Entry, DmError> {
    let v = match kind {
        None => Value::Opaque(bytes.to_vec()),
        Some(ValueKind::None) => {
            return Err(bad(format_args!(
                "{path}: value for an executable resource"
            )))
        }
        Some(k) => wire::decode_value(k, bytes)
            .map_err(|e| bad(format_args!("{path}: {e}")))
            .and_then(|v| coerce(&path, v, Some(k)))?,
    };
    Ok(Entry::new(path, v))
}

fn flatten(
    items: &[Tlv],
    at: Path,
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
    out: &mut Vec<Entry>,
) -> Result<(), DmError> {
    for t in items {
        let (o, i, r) = (at.oid(), at.iid(), at.rid());
        match (t.ty, &t.body, o, i, r) {
            (TlvType::ObjectInstance, TlvBody::Children(c), Some(o), None, None) => {
                flatten(c, Path::instance(o, t.id), kind_of, out)?
            }
            (TlvType::Resource, TlvBody::Value(b), Some(o), Some(i), None) => {
                let p = Path::resource(o, i, t.id);
                out.push(value(p, b, kind_of(&p))?);
            }
            (TlvType::MultipleResource, TlvBody::Children(c), Some(o), Some(i), None) => {
                flatten(c, Path::resource(o, i, t.id), kind_of, out)?
            }
            (TlvType::ResourceInstance, TlvBody::Value(b), Some(o), Some(i), Some(r)) => {
                let p = Path::resource_instance(o, i, r, t.id);
                // Instances of a multiple resource share the resource's declared kind.
                let kind = kind_of(&p).or_else(|| kind_of(&Path::resource(o, i, r)));
                out.push(value(p, b, kind)?);
            }
            _ => {
                return Err(bad(format_args!(
                    "TLV {:?} {} does not belong under {at}",
                    t.ty, t.id
                )))
            }
        }
    }
    Ok(())
}

pub fn decode(
    base: &Path,
    payload: &[u8],
    kind_of: &dyn Fn(&Path) -> Option<ValueKind>,
) -> Result<Vec<Entry>, DmError> {
    let items = wire::decode(payload).map_err(|e| bad(format_args!("{base}: {e}")))?;
    let mut out = Vec::new();
    match (base.depth(), items.as_slice()) {
        (1, _) => flatten(&items, *base, kind_of, &mut out)?,
        // An instance may come wrapped in its Object Instance TLV or as bare resources.
        (2, [t]) if t.ty == TlvType::ObjectInstance => {
            if Some(t.id) != base.iid() {
                return Err(bad(format_args!("TLV instance {} sent to {base}", t.id)));
            }
            flatten(
                &items,
                Path::object(base.oid().unwrap_or_default()),
                kind_of,
                &mut out,
            )?
        }
        (2, _) => flatten(&items, *base, kind_of, &mut out)?,
        (3, [t]) if matches!(t.ty, TlvType::Resource | TlvType::MultipleResource) => {
            if Some(t.id) != base.rid() {
                return Err(bad(format_args!("TLV resource {} sent to {base}", t.id)));
            }
            let inst = Path::instance(
                base.oid().unwrap_or_default(),
                base.iid().unwrap_or_default(),
            );
            flatten(&items, inst, kind_of, &mut out)?
        }
        // Resource instances of a multiple resource without their container.
        (3, _) => flatten(&items, *base, kind_of, &mut out)?,
        (4, [t]) if t.ty == TlvType::ResourceInstance && Some(t.id) == base.riid() => {
            let (o, i, r) = (base.oid(), base.iid(), base.rid());
            let res = Path::resource(
                o.unwrap_or_default(),
                i.unwrap_or_default(),
                r.unwrap_or_default(),
            );
            flatten(&items, res, kind_of, &mut out)?
        }
        _ => return Err(bad(format_args!("TLV payload does not fit {base}"))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{kinds, no_kinds, random_entries};
    use super::super::{decode, encode};
    use super::*;
    use crate::coap::content_format as cf;
    use crate::rng::{RandomSource, SeededRng};

    /// LwM2M 1.1 TS §7.4.3.2, "Single Object Instance" example: Read /3/0 of the Device
    /// object (manufacturer, model, serial number, firmware version, power sources
    /// [1, 5], voltages [3800, 5000], currents [125, 900], battery level 100, memory free
    /// 15, error codes [0], current time 0x5182428F, UTC offset "+02:00", binding "U").
    /// The bytes are written out here from that example's values.
    #[test]
    fn golden_device_instance() {
        let mut golden = vec![0xC8, 0x00, 0x14];
        golden.extend_from_slice(b"Open Mobile Alliance");
        golden.extend_from_slice(&[0xC8, 0x01, 0x16]);
        golden.extend_from_slice(b"Lightweight M2M Client");
        golden.extend_from_slice(&[0xC8, 0x02, 0x09]);
        golden.extend_from_slice(b"345000123");
        golden.extend_from_slice(&[0xC3, 0x03]);
        golden.extend_from_slice(b"1.0");
        golden.extend_from_slice(&[0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]);
        golden.extend_from_slice(&[
            0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88,
        ]);
        golden.extend_from_slice(&[0x87, 0x08, 0x41, 0x00, 0x7D, 0x42, 0x01, 0x03, 0x84]);
        golden.extend_from_slice(&[0xC1, 0x09, 0x64]);
        golden.extend_from_slice(&[0xC1, 0x0A, 0x0F]);
        golden.extend_from_slice(&[0x83, 0x0B, 0x41, 0x00, 0x00]);
        golden.extend_from_slice(&[0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F]);
        golden.extend_from_slice(&[0xC6, 0x0E]);
        golden.extend_from_slice(b"+02:00");
        golden.extend_from_slice(&[0xC1, 0x10, 0x55]);

        let s = |rid, v: &str| Entry::new(Path::resource(3, 0, rid), Value::String(v.into()));
        let ri = |rid, ri, v| Entry::new(Path::resource_instance(3, 0, rid, ri), Value::Integer(v));
        let entries = vec![
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
            Entry::new(Path::resource(3, 0, 13), Value::Time(0x5182_428F)),
            s(14, "+02:00"),
            s(16, "U"),
        ];
        let base = Path::instance(3, 0);
        assert_eq!(encode(cf::LWM2M_TLV, &base, &entries).unwrap(), golden);
        let back = decode(cf::LWM2M_TLV, &base, &golden, &kinds(&entries)).unwrap();
        assert_eq!(back, entries);
        // Without declared kinds every value stays opaque bytes.
        let raw = decode(cf::LWM2M_TLV, &base, &golden, &no_kinds).unwrap();
        assert_eq!(raw[10].path, Path::resource(3, 0, 9));
        assert_eq!(raw[10].value, Value::Opaque(vec![0x64]));
    }

    /// §7.4.3.2's multiple-resource example: Read /3/0/6 gives the Multiple Resource TLV.
    #[test]
    fn golden_multiple_resource() {
        let base = Path::resource(3, 0, 6);
        let entries = vec![
            Entry::new(Path::resource_instance(3, 0, 6, 0), Value::Integer(1)),
            Entry::new(Path::resource_instance(3, 0, 6, 1), Value::Integer(5)),
        ];
        let golden = [0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05];
        assert_eq!(encode(cf::LWM2M_TLV, &base, &entries).unwrap(), golden);
        assert_eq!(
            decode(cf::LWM2M_TLV, &base, &golden, &|_| Some(ValueKind::Integer)).unwrap(),
            entries
        );
        // The same instances without their container are accepted too.
        assert_eq!(
            decode(cf::LWM2M_TLV, &base, &golden[2..], &|_| Some(
                ValueKind::Integer
            ))
            .unwrap(),
            entries
        );
    }

    #[test]
    fn instance_wrapper_and_object_level() {
        let inst = Tlv::parent(
            TlvType::ObjectInstance,
            1,
            vec![Tlv::value(TlvType::Resource, 0, &Value::Integer(7))],
        );
        let b = wire::encode(&[inst]);
        let want = vec![Entry::new(Path::resource(1, 1, 0), Value::Integer(7))];
        let k = |_: &Path| Some(ValueKind::Integer);
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::instance(1, 1), &b, &k).unwrap(),
            want
        );
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::object(1), &b, &k).unwrap(),
            want
        );
        assert_eq!(
            decode(cf::LWM2M_TLV, &Path::instance(1, 2), &b, &k),
            Err(DmError::BadRequest)
        );
        assert_eq!(encode(cf::LWM2M_TLV, &Path::object(1), &want).unwrap(), b);
    }

    #[test]
    fn round_trip_random_entries() {
        let mut rng = SeededRng::new(3);
        let bases = [
            Path::object(3303),
            Path::instance(3303, 1),
            Path::resource(3303, 1, 5700),
            Path::resource_instance(3303, 1, 5700, 2),
        ];
        for n in 0..3000 {
            let base = bases[n % bases.len()];
            let entries = random_entries(&mut rng, &base);
            let b = encode(cf::LWM2M_TLV, &base, &entries).unwrap();
            let back = decode(cf::LWM2M_TLV, &base, &b, &kinds(&entries)).unwrap();
            assert_eq!(back, entries, "base {base}");
        }
    }

    #[test]
    fn random_and_truncated_input_is_refused_without_panic() {
        let mut rng = SeededRng::new(4);
        let base = Path::instance(3, 0);
        let int = |_: &Path| Some(ValueKind::Integer);
        for _ in 0..5000 {
            let mut buf = vec![0u8; (rng.next_u32() % 48) as usize];
            rng.fill_bytes(&mut buf);
            for p in [Path::object(3), base, Path::resource(3, 0, 1)] {
                if let Err(e) = decode(cf::LWM2M_TLV, &p, &buf, &int) {
                    assert_eq!(e, DmError::BadRequest);
                }
            }
        }
        let entries = random_entries(&mut rng, &base);
        let b = encode(cf::LWM2M_TLV, &base, &entries).unwrap();
        // A cut inside an element is refused; a cut between top-level elements is a
        // shorter valid payload and must give a prefix of the entries.
        for n in 1..b.len() {
            match decode(cf::LWM2M_TLV, &base, &b[..n], &kinds(&entries)) {
                Err(e) => assert_eq!(e, DmError::BadRequest),
                Ok(got) => assert_eq!(got[..], entries[..got.len()], "cut at {n}"),
            }
        }
    }
}
