//! The RPC gateway: accepts client connections (ALPN `pando/rpc/1`), reads one framed request per bi-stream,
//! authenticates it, routes it with its deadline, and writes the response.

mod gateway;
mod handler;
mod stream;

pub use gateway::{RpcArgs, RpcGateway, RpcGatewayStatus, RpcMsg};
pub use handler::RpcContext;

/// Requests served at once by one node; beyond this a request is answered `BUSY` without being executed.
pub const RPC_REQUESTS_IN_FLIGHT_MAX: usize = 4096;
/// Client connections open at once; beyond this new connections are refused.
pub const RPC_CONNECTIONS_MAX: usize = 1024;
/// Time a client gets to send a whole request frame once it opened a stream.
pub const RPC_REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a client gets to take the response before the stream is dropped.
pub const RPC_RESPONSE_WRITE_TIMEOUT_MS: u64 = 10_000;
