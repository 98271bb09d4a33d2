//! Persistence (SPEC section 5): the Security object, the Server object, attribute storage
//! and the EST state, each as one framed part ([`frame`]: magic, part, version, CBOR payload,
//! CRC-32). Encoding is pure: parts go to and come from byte buffers; streams and files are
//! the edges' job (`ffi/`, `io/`). Restoring decodes and validates everything first and only
//! then replaces the in-memory state, so a bad stream leaves the state exactly as it was.
//! [`Snapshot`] is all four parts together, restored all-or-nothing.

pub mod attributes;
pub mod cbor;
pub mod est;
pub mod frame;
pub mod objects;
pub mod snapshot;

pub use frame::Part;
pub use snapshot::Snapshot;

/// Why persisting or restoring failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    #[error("stream ends before the part does")]
    Truncated,
    #[error("not an Estuary persistence stream (bad magic)")]
    BadMagic,
    #[error("unknown part type {0}")]
    UnknownPart(u8),
    #[error("expected the {expected:?} part, found {found:?}")]
    WrongPart { expected: Part, found: Part },
    #[error("part written by a newer Estuary (format {found}, this one reads up to {supported})")]
    NewerVersion { found: u16, supported: u16 },
    #[error("checksum mismatch: the stream is corrupt")]
    Checksum,
    #[error("part is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("malformed part: {0}")]
    Malformed(String),
    #[error("an EST operation is in progress; the EST state cannot be persisted now")]
    EstBusy,
    #[error("restore is only possible before the client starts")]
    ClientStarted,
}

impl PersistError {
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        PersistError::Malformed(what.into())
    }
}

/// Remembers the checksum of what was last persisted or restored per part, so
/// `*_is_modified` can tell without the objects keeping dirty flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModificationTracker {
    last: [Option<u32>; 4],
}

impl ModificationTracker {
    fn slot(part: Part) -> usize {
        part as usize - 1
    }

    /// Records that `bytes` (a full part) is now what storage holds.
    pub fn mark_saved(&mut self, part: Part, bytes: &[u8]) {
        self.last[Self::slot(part)] = Some(crc32fast::hash(bytes));
    }

    /// True when `current` (the part as it would be written now) differs from storage.
    pub fn is_modified(&self, part: Part, current: &[u8]) -> bool {
        self.last[Self::slot(part)] != Some(crc32fast::hash(current))
    }
}
