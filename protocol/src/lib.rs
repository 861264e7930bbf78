//! Pando's protocol crate: wire types, limits, ALPN names and the deterministic replicated state machine core.
//!
//! Nothing here does IO or depends on an async runtime, so the same code runs in the node, in the client, in the
//! simulator and (later) inside WASM plugins. The crate compiles for `wasm32-unknown-unknown`.

pub mod alpn;
pub mod blob;
pub mod cluster;
pub mod command;
pub mod coord;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fs;
pub mod hook;
pub mod job;
pub mod kv;
pub mod limits;
pub mod memory_tables;
pub mod observe;
pub mod plugin;
pub mod plugin_abi;
pub mod state_machine;
pub mod stored_value;
pub mod ticket;
pub mod token;
pub mod watch;

pub use envelope::{PROTOCOL_VERSION, Request, RequestEnvelope, Response, ResponseEnvelope};
pub use error::{ErrorCode, ErrorDetail, WireError};
