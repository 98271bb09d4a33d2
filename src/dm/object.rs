//! The object abstraction every LwM2M object implements — built-in ones (Security, Server,
//! Device), Rust users' own, and C firmware objects through the FFI adapter.
//!
//! Objects answer per resource; walking instances and encoding is [`super::ops`]'s job.

use super::value::{Value, ValueKind};

/// Which operations a resource allows (the R / W / RW / E of object definitions).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Operations {
    Read,
    Write,
    ReadWrite,
    Execute,
}

impl Operations {
    pub fn readable(self) -> bool {
        matches!(self, Operations::Read | Operations::ReadWrite)
    }

    pub fn writable(self) -> bool {
        matches!(self, Operations::Write | Operations::ReadWrite)
    }

    pub fn executable(self) -> bool {
        self == Operations::Execute
    }
}

/// A resource as present in one instance.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    pub rid: u16,
    pub kind: ValueKind,
    pub ops: Operations,
    pub multiple: bool,
}

impl ResourceDef {
    pub const fn single(rid: u16, kind: ValueKind, ops: Operations) -> Self {
        ResourceDef {
            rid,
            kind,
            ops,
            multiple: false,
        }
    }

    pub const fn multiple(rid: u16, kind: ValueKind, ops: Operations) -> Self {
        ResourceDef {
            rid,
            kind,
            ops,
            multiple: true,
        }
    }

    pub const fn executable(rid: u16) -> Self {
        ResourceDef {
            rid,
            kind: ValueKind::None,
            ops: Operations::Execute,
            multiple: false,
        }
    }
}

/// A resource's value: one value, or instances of a multiple resource.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceValue {
    Single(Value),
    Multiple(Vec<(u16, Value)>),
}

/// Data-model errors; each maps to one CoAP response code.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmError {
    #[error("4.00 bad request")]
    BadRequest,
    #[error("4.01 unauthorized")]
    Unauthorized,
    #[error("4.04 not found")]
    NotFound,
    #[error("4.05 method not allowed")]
    MethodNotAllowed,
    #[error("4.06 not acceptable")]
    NotAcceptable,
    #[error("4.15 unsupported content format")]
    UnsupportedContentFormat,
    #[error("5.00 internal server error")]
    Internal,
    /// A handler answered with this exact CoAP code (class 4 or 5, e.g. 0x83 = 4.03); other
    /// classes are not errors and are reported as 5.00.
    #[error("handler error code {}", crate::coap::code::to_string(*.0))]
    Code(u8),
}

impl DmError {
    /// The CoAP response code for this error.
    pub fn coap_code(self) -> u8 {
        use crate::coap::code;
        match self {
            DmError::BadRequest => code::BAD_REQUEST,
            DmError::Unauthorized => code::UNAUTHORIZED,
            DmError::NotFound => code::NOT_FOUND,
            DmError::MethodNotAllowed => code::METHOD_NOT_ALLOWED,
            DmError::NotAcceptable => code::NOT_ACCEPTABLE,
            DmError::UnsupportedContentFormat => code::UNSUPPORTED_CONTENT_FORMAT,
            DmError::Internal => code::INTERNAL_SERVER_ERROR,
            DmError::Code(c) if matches!(c >> 5, 4 | 5) => c,
            DmError::Code(_) => code::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An LwM2M object.
pub trait Object: Send {
    /// The Object ID.
    fn oid(&self) -> u16;

    /// The object version advertised at registration ("1.0" is left implicit).
    fn version(&self) -> &str {
        "1.0"
    }

    /// Instance IDs, ascending.
    fn instances(&self) -> Vec<u16>;

    /// The resources present in an instance, ascending by ID.
    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError>;

    /// Reads one resource.
    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError>;

    /// Writes one resource.
    fn write(&mut self, _iid: u16, _rid: u16, _value: ResourceValue) -> Result<(), DmError> {
        Err(DmError::MethodNotAllowed)
    }

    /// Executes a resource with its (possibly empty) argument string.
    fn execute(&mut self, _iid: u16, _rid: u16, _args: &[u8]) -> Result<(), DmError> {
        Err(DmError::MethodNotAllowed)
    }

    /// Creates an empty instance `iid` (the Create operation then writes its resources).
    fn create_instance(&mut self, _iid: u16) -> Result<(), DmError> {
        Err(DmError::MethodNotAllowed)
    }

    /// Deletes instance `iid`.
    fn delete_instance(&mut self, _iid: u16) -> Result<(), DmError> {
        Err(DmError::MethodNotAllowed)
    }

    /// Resource-instance IDs of a multiple resource, ascending.
    fn resource_instances(&self, iid: u16, rid: u16) -> Result<Vec<u16>, DmError> {
        match self.read(iid, rid)? {
            ResourceValue::Multiple(vs) => {
                let mut ids: Vec<u16> = vs.iter().map(|(ri, _)| *ri).collect();
                ids.sort_unstable();
                Ok(ids)
            }
            ResourceValue::Single(_) => Err(DmError::MethodNotAllowed),
        }
    }

    /// Called before a Write-replace of an instance: drops every writable resource's value,
    /// so that resources missing from the request end up unset.
    fn reset_instance(&mut self, _iid: u16) -> Result<(), DmError> {
        Ok(())
    }

    /// Opens a transaction around a multi-resource Write or Create. Objects that cannot undo
    /// writes themselves may rely on the data model restoring the old values instead.
    fn transaction_begin(&mut self) -> Result<(), DmError> {
        Ok(())
    }

    /// Checks the state after all writes of a request; an error rolls the request back.
    fn transaction_validate(&mut self) -> Result<(), DmError> {
        Ok(())
    }

    /// Makes the request's writes final.
    fn transaction_commit(&mut self) -> Result<(), DmError> {
        Ok(())
    }

    /// Undoes the writes since [`Object::transaction_begin`].
    fn transaction_rollback(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_codes_map_to_themselves_only_for_error_classes() {
        assert_eq!(DmError::Code(0x83).coap_code(), 0x83);
        assert_eq!(DmError::Code(0xA3).coap_code(), 0xA3);
        assert_eq!(DmError::Code(0x44).coap_code(), 0xA0);
        assert_eq!(DmError::Code(0).coap_code(), 0xA0);
        assert_eq!(DmError::Code(0x83).to_string(), "handler error code 4.03");
    }
}
