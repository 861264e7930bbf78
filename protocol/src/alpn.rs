//! ALPN names: one per protocol a node speaks, so a connection is routed (and authorised) by what it asks for.

/// Client requests (`pando` CLI and the client library).
pub const RPC: &[u8] = b"pando/rpc/1";
/// Raft traffic between members.
pub const RAFT: &[u8] = b"pando/raft/1";
/// ractor_cluster sessions between members.
pub const ACTORS: &[u8] = b"pando/actors/1";

/// iroh-blobs' own protocol, served to members only (the value of `iroh_blobs::ALPN`, checked by a test in `actors/`).
pub const BLOBS: &[u8] = b"/iroh-bytes/4";
