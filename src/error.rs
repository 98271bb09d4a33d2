//! The crate-level error: what public entry points return. Each layer has its own typed
//! error (CoAP exchanges, data model, URIs, instances); this wraps them for callers and is
//! mapped once to `ESTUARY_ERR_*` codes in `ffi/`.

use crate::coap::ExchangeError;
use crate::dm::objects::InstanceError;
use crate::dm::DmError;
use crate::lwm2m::uri::UriError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    DataModel(#[from] DmError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("I/O error: {0}")]
    Io(String),
}
