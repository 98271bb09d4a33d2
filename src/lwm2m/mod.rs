//! LwM2M client behaviour towards servers: server URIs, the per-server registration
//! session (Register, Update before the lifetime runs out, De-register), notification
//! attributes and observations. Bootstrap joins here later. Sans-IO like the rest of the core.

pub mod attributes;
pub mod observe;
pub mod registration;
pub mod server_dm;
pub mod uri;

pub use registration::{RegistrationState, ServerSession};
pub use uri::ServerUri;
