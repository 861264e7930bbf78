//! The RPC gateway: accepts client connections (ALPN `pando/rpc/1`), reads one framed request per bi-stream,
//! authenticates it, checks it against one access table, hands it to a [service](crate::services) with its deadline,
//! and writes the response.

mod access;
mod admission;
mod blobs;
mod gateway;
mod handler;
mod link;
pub mod sim_link;
pub(crate) mod stream;
mod watch;

pub use gateway::{GatewayHandle, RpcArgs, RpcGateway, RpcGatewayStatus, RpcMsg};
pub use handler::RpcContext;
pub use link::{Outgoing, RpcListener, StreamRecv, StreamSend};

/// Requests served at once by one node; beyond this a request is answered `BUSY` without being executed.
pub const RPC_REQUESTS_IN_FLIGHT_MAX: usize = 4096;
/// Client connections open at once; beyond this new connections are refused.
pub const RPC_CONNECTIONS_MAX: usize = 1024;
/// Connections that have not presented a valid token yet, at once; past this the oldest of them is closed to make
/// room (see [`admission`]).
pub const RPC_UNVERIFIED_CONNECTIONS_MAX: usize = 256;
/// Unauthenticated connections open from which on the per-source limit holds.
pub const RPC_UNVERIFIED_CONNECTIONS_PRESSURE: usize = 128;
/// Unauthenticated connections per source (an IPv4 address, an IPv6 /64) under pressure: a new connection from a
/// source at its limit closes that source's oldest unauthenticated connection.
pub const RPC_UNVERIFIED_CONNECTIONS_PER_SOURCE_MAX: usize = 16;
/// How long a new connection waits for the slot of an unauthenticated connection closed to make room for it.
pub const RPC_EVICTION_WAIT_MS: u64 = 200;
const _: () = assert!(RPC_UNVERIFIED_CONNECTIONS_PER_SOURCE_MAX < RPC_UNVERIFIED_CONNECTIONS_PRESSURE);
const _: () = assert!(RPC_UNVERIFIED_CONNECTIONS_PRESSURE < RPC_UNVERIFIED_CONNECTIONS_MAX);
// Authenticated clients always have room: unauthenticated connections hold at most a quarter of the slots.
const _: () = assert!(RPC_UNVERIFIED_CONNECTIONS_MAX * 4 <= RPC_CONNECTIONS_MAX);
/// Streams of one connection read and authenticated at once; more wait for a slot (a client's first burst of
/// requests waits on its first authentication, a flood of stalled streams holds only its own connection's slots).
pub const RPC_UNVERIFIED_STREAMS_PER_CONNECTION_MAX: usize = 32;
/// Time a client gets to send a whole request frame once it opened a stream.
pub const RPC_REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a client gets to take the response before the stream is dropped.
pub const RPC_RESPONSE_WRITE_TIMEOUT_MS: u64 = 10_000;
/// A connection that has not presented a valid token this long after connecting is closed.
pub const RPC_CONNECTION_AUTH_TIMEOUT_MS: u64 = 10_000;
/// A connection with no stream open and no new stream for this long is closed (clients reconnect transparently).
pub const RPC_CONNECTION_IDLE_TIMEOUT_MS: u64 = 120_000;
/// How often a connection's auth and idle deadlines are checked.
pub const RPC_CONNECTION_CHECK_INTERVAL_MS: u64 = 1_000;
