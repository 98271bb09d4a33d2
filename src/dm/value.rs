//! Resource values and types of the LwM2M data model (LwM2M 1.1 Appendix C).

/// The declared type of a resource.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    String,
    Integer,
    Unsigned,
    Float,
    Boolean,
    Opaque,
    Time,
    Objlnk,
    Corelnk,
    /// Executable resources have no value.
    None,
}

/// A resource (or resource instance) value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    Boolean(bool),
    Opaque(Vec<u8>),
    /// Seconds since the Unix epoch.
    Time(i64),
    Objlnk(u16, u16),
    Corelnk(String),
}

impl Value {
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::String(_) => ValueKind::String,
            Value::Integer(_) => ValueKind::Integer,
            Value::Unsigned(_) => ValueKind::Unsigned,
            Value::Float(_) => ValueKind::Float,
            Value::Boolean(_) => ValueKind::Boolean,
            Value::Opaque(_) => ValueKind::Opaque,
            Value::Time(_) => ValueKind::Time,
            Value::Objlnk(..) => ValueKind::Objlnk,
            Value::Corelnk(_) => ValueKind::Corelnk,
        }
    }

    /// The text/plain representation (LwM2M 1.1 §7.4.1); opaque has none.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::String(s) | Value::Corelnk(s) => s.clone(),
            Value::Integer(v) | Value::Time(v) => v.to_string(),
            Value::Unsigned(v) => v.to_string(),
            Value::Float(v) => format_float(*v),
            Value::Boolean(b) => if *b { "1" } else { "0" }.to_string(),
            Value::Objlnk(o, i) => format!("{o}:{i}"),
            Value::Opaque(_) => return None,
        })
    }

    /// Parses text/plain as the given kind.
    pub fn from_text(kind: ValueKind, text: &str) -> Option<Value> {
        Some(match kind {
            ValueKind::String => Value::String(text.to_string()),
            ValueKind::Corelnk => Value::Corelnk(text.to_string()),
            ValueKind::Integer => Value::Integer(text.trim().parse().ok()?),
            ValueKind::Time => Value::Time(text.trim().parse().ok()?),
            ValueKind::Unsigned => Value::Unsigned(text.trim().parse().ok()?),
            ValueKind::Float => {
                Value::Float(text.trim().parse().ok().filter(|f: &f64| f.is_finite())?)
            }
            ValueKind::Boolean => match text.trim() {
                "1" => Value::Boolean(true),
                "0" => Value::Boolean(false),
                _ => return None,
            },
            ValueKind::Objlnk => {
                let (o, i) = text.trim().split_once(':')?;
                Value::Objlnk(o.parse().ok()?, i.parse().ok()?)
            }
            ValueKind::Opaque | ValueKind::None => return None,
        })
    }
}

fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_for_each_kind() {
        let vals = [
            Value::String("Estuary".into()),
            Value::Integer(-42),
            Value::Unsigned(u64::MAX),
            Value::Float(2.5),
            Value::Boolean(true),
            Value::Time(1_700_000_000),
            Value::Objlnk(1, 0),
            Value::Corelnk("</3/0>".into()),
        ];
        for v in vals {
            let t = v.to_text().unwrap();
            assert_eq!(Value::from_text(v.kind(), &t), Some(v));
        }
        assert_eq!(Value::Opaque(vec![1]).to_text(), None);
        assert_eq!(Value::from_text(ValueKind::Boolean, "yes"), None);
        assert_eq!(Value::from_text(ValueKind::Float, "NaN"), None);
    }
}
