//! The LwM2M data model: paths, values, the [`Object`] trait, the built-in objects, the
//! content-format codecs, and [`DataModel`], which routes operations to objects.
//!
//! Pure data and logic: no transport, no time.

pub mod codec;
pub mod content;
pub mod link;
pub mod object;
pub mod objects;
pub mod ops;
pub mod path;
pub mod tlv;
pub mod value;

use std::collections::BTreeMap;

pub use object::{DmError, Object, Operations, ResourceDef, ResourceValue};
pub use path::Path;
pub use value::{Value, ValueKind};

use objects::{DeviceObject, SecurityObject, ServerObject};

/// Object IDs of the core objects.
pub mod oid {
    pub const SECURITY: u16 = 0;
    pub const SERVER: u16 = 1;
    pub const ACCESS_CONTROL: u16 = 2;
    pub const DEVICE: u16 = 3;
}

/// All objects of a client: the built-in ones as concrete types (the client reads their
/// fields directly) and any others behind the [`Object`] trait.
pub struct DataModel {
    pub security: SecurityObject,
    pub server: ServerObject,
    pub device: DeviceObject,
    others: BTreeMap<u16, Box<dyn Object>>,
}

impl Default for DataModel {
    fn default() -> Self {
        DataModel::new()
    }
}

impl DataModel {
    pub fn new() -> Self {
        DataModel {
            security: SecurityObject::default(),
            server: ServerObject::default(),
            device: DeviceObject::default(),
            others: BTreeMap::new(),
        }
    }

    /// Registers a further object; fails if its ID is taken.
    pub fn register(&mut self, obj: Box<dyn Object>) -> Result<(), Box<dyn Object>> {
        let id = obj.oid();
        if id <= oid::DEVICE || self.others.contains_key(&id) {
            return Err(obj);
        }
        self.others.insert(id, obj);
        Ok(())
    }

    pub fn object(&self, id: u16) -> Option<&dyn Object> {
        match id {
            oid::SECURITY => Some(&self.security),
            oid::SERVER => Some(&self.server),
            oid::DEVICE => Some(&self.device),
            _ => self.others.get(&id).map(|b| b.as_ref() as &dyn Object),
        }
    }

    pub fn object_mut(&mut self, id: u16) -> Option<&mut dyn Object> {
        match id {
            oid::SECURITY => Some(&mut self.security),
            oid::SERVER => Some(&mut self.server),
            oid::DEVICE => Some(&mut self.device),
            _ => match self.others.get_mut(&id) {
                Some(b) => Some(b.as_mut()),
                None => None,
            },
        }
    }

    /// Object IDs, ascending.
    pub fn object_ids(&self) -> Vec<u16> {
        let mut ids = vec![oid::SECURITY, oid::SERVER, oid::DEVICE];
        ids.extend(self.others.keys().copied());
        ids.sort_unstable();
        ids
    }
}
