//! `estuary-testserver`: Estuary's own LwM2M Server and Bootstrap Server
//! (and, as the product grows, EST-coaps server) for examples, tests and developers' workstations.
//!
//! The protocol parts are sans-IO and reuse the client's CoAP, data-model and crypto code;
//! `run` adds sockets, the real clock and the HTTP control API; `sim` puts a client and the
//! server in one process on a virtual clock and a lossy link.

pub mod bootstrap_server;
pub mod cli;
pub mod coaps;
pub mod config;
pub mod control;
pub mod est_server;
pub mod events;
pub mod http;
pub mod init;
pub mod lwm2m_server;
pub mod pki;
pub mod provision;
pub mod render;
pub mod run;
pub mod sim;

pub use events::{EventKind, EventRecord};
pub use lwm2m_server::{Lwm2mServer, OpId, OpResult, Registration, ServerEvent};
pub use run::{ClientInfo, ReadError, TestServer, TestServerConfig, TestServerHandle};
