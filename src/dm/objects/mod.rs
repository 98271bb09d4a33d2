//! The built-in LwM2M objects: Security (0), Server (1) and Device (3).

mod device;
mod security;
mod server;

pub use device::DeviceObject;
pub use security::{SecurityInstance, SecurityMode, SecurityObject};
pub use server::{ServerInstance, ServerObject};

/// Why an instance could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {0} already exists")]
    IdTaken(u16),
    #[error("short server ID {0} is already used by another instance")]
    SsidTaken(u16),
    #[error("invalid instance: {0}")]
    Invalid(&'static str),
    #[error("no free instance ID")]
    Full,
}

/// The lowest instance ID not in `used` (65535 is reserved).
pub(crate) fn free_iid<I: Iterator<Item = u16>>(used: I) -> Option<u16> {
    let mut used: Vec<u16> = used.collect();
    used.sort_unstable();
    let mut candidate = 0u16;
    for id in used {
        if id == candidate {
            candidate = candidate.checked_add(1)?;
        } else if id > candidate {
            break;
        }
    }
    (candidate != u16::MAX).then_some(candidate)
}
