//! LwM2M client behaviour towards servers: server URIs, the per-server registration
//! session (Register, Update before the lifetime runs out, De-register), notification
//! attributes and observations, the secure channel under each connection, and the bootstrap
//! session. Sans-IO like the rest of the core.

pub mod attributes;
pub mod bootstrap;
pub mod bootstrap_ops;
pub mod observe;
pub mod registration;
pub mod server_dm;
pub mod transport;
pub mod uri;

pub use bootstrap::{BootstrapEvent, BootstrapSession, BootstrapState};
pub use registration::{RegistrationState, ServerSession};
pub use uri::ServerUri;
