//! LwM2M client behaviour towards servers: server URIs and the per-server registration
//! session (Register, Update before the lifetime runs out, De-register), and the bootstrap
//! session. Sans-IO like the rest of the core.

pub mod bootstrap;
pub mod registration;
pub mod transport;
pub mod uri;

pub use bootstrap::{BootstrapEvent, BootstrapSession, BootstrapState};
pub use registration::{RegistrationState, ServerSession};
pub use uri::ServerUri;
