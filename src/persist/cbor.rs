//! Small helpers over `ciborium::Value` for the persisted parts: integer-keyed maps, and
//! typed getters that turn a wrong type into a `PersistError` instead of a panic.

use ciborium::Value;

use super::PersistError;

/// Encodes a CBOR value.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    ciborium::into_writer(v, &mut out).expect("CBOR into Vec");
    out
}

/// Decodes exactly one CBOR value, refusing trailing bytes and deep nesting.
pub fn from_bytes(b: &[u8]) -> Result<Value, PersistError> {
    let mut rest = b;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 16)
        .map_err(|e| PersistError::malformed(format!("CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(PersistError::malformed(
            "trailing bytes after the CBOR payload",
        ));
    }
    Ok(v)
}

/// A map with small integer keys.
pub fn map(entries: Vec<(u64, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// Reads an integer-keyed map.
pub struct Fields<'a> {
    entries: &'a [(Value, Value)],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn of(v: &'a Value, what: &'static str) -> Result<Self, PersistError> {
        match v {
            Value::Map(entries) => Ok(Fields { entries, what }),
            _ => Err(PersistError::malformed(format!("{what} is not a map"))),
        }
    }

    pub fn get(&self, key: u64) -> Option<&'a Value> {
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Integer(i) if u64::try_from(*i).ok() == Some(key) => Some(v),
            _ => None,
        })
    }

    fn bad(&self, key: u64, ty: &str) -> PersistError {
        PersistError::malformed(format!("{} field {key} is not {ty}", self.what))
    }

    pub fn req(&self, key: u64) -> Result<&'a Value, PersistError> {
        self.get(key)
            .ok_or_else(|| PersistError::malformed(format!("{} lacks field {key}", self.what)))
    }

    pub fn int(&self, key: u64) -> Result<i64, PersistError> {
        match self.req(key)? {
            Value::Integer(i) => i64::try_from(*i).map_err(|_| self.bad(key, "an i64")),
            _ => Err(self.bad(key, "an integer")),
        }
    }

    pub fn opt_int(&self, key: u64) -> Result<Option<i64>, PersistError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    pub fn text(&self, key: u64) -> Result<String, PersistError> {
        match self.req(key)? {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(self.bad(key, "text")),
        }
    }

    pub fn bytes(&self, key: u64) -> Result<Vec<u8>, PersistError> {
        match self.req(key)? {
            Value::Bytes(b) => Ok(b.clone()),
            _ => Err(self.bad(key, "bytes")),
        }
    }

    pub fn opt_bytes(&self, key: u64) -> Result<Option<Vec<u8>>, PersistError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.bytes(key).map(Some),
        }
    }

    pub fn boolean(&self, key: u64) -> Result<bool, PersistError> {
        match self.req(key)? {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.bad(key, "a boolean")),
        }
    }

    pub fn array(&self, key: u64) -> Result<&'a [Value], PersistError> {
        match self.req(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.bad(key, "an array")),
        }
    }
}
