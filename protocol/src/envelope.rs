//! The versioned envelope around every request and response, and the per-domain bodies.

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterRequest, ClusterResponse};
use crate::coord::{CoordRequest, CoordResponse};
use crate::error::{ErrorCode, WireError};
use crate::kv::{KvRequest, KvResponse};
use crate::token::CapabilityToken;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A request as the client sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u16,
    /// Chosen by the client, echoed in the response.
    pub request_id: u64,
    /// How long the client will wait, in milliseconds from when the node receives the request. The node gives up (with
    /// [`ErrorCode::Timeout`]) when it passes.
    pub timeout_ms: u32,
    pub token: Option<CapabilityToken>,
    pub body: Request,
}

/// Request bodies, one variant per domain. No variant depends on a cargo feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Kv(KvRequest),
    Cluster(ClusterRequest),
    Coord(CoordRequest),
    Blob(crate::blob::BlobRequest),
    Plugin(crate::plugin::PluginRequest),
    /// Opens a watch on the request's stream (answered with a stream of [`Response::Watch`] frames).
    Watch(crate::watch::WatchRequest),
    /// Observes a coordination resource on the request's stream (answered with [`Response::Observe`] frames).
    Observe(crate::observe::ObserveRequest),
    /// Minting, listing and revoking tokens.
    Token(crate::token::TokenRequest),
    /// Durable hooks and user events.
    Hook(crate::hook::api::HookRequest),
    /// Opens a hook stream on the request's stream (answered with [`Response::HookStream`] frames).
    HookWatch(crate::hook::api::HookWatchRequest),
    /// Jobs: submits, reads, the admin's commands.
    Job(crate::job::JobRequest),
    /// The file system, for a mount on a machine that is not a member.
    Fs(crate::fs::FsRequest),
}

/// A response to the request with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub request_id: u64,
    pub body: Result<Response, WireError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Kv(KvResponse),
    Cluster(ClusterResponse),
    Coord(CoordResponse),
    Blob(crate::blob::BlobResponse),
    Plugin(crate::plugin::PluginResponse),
    Watch(crate::watch::WatchResponse),
    Observe(crate::observe::ObserveResponse),
    Token(crate::token::TokenResponse),
    Hook(crate::hook::api::HookReply),
    HookStream(crate::hook::api::HookStreamResponse),
    Job(crate::job::JobReply),
    Fs(crate::fs::FsReply),
}

/// The first two fields of an envelope, decoded on their own when the full envelope does not decode, so the error
/// response can still name the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    pub version: u16,
    pub request_id: u64,
}

/// A request body that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRequest {
    /// The request id, when at least the header decoded.
    pub request_id: Option<u64>,
    pub error: WireError,
}

impl RequestEnvelope {
    /// Decodes a frame body into a request, or explains why not with a stable code.
    pub fn decode(body: &[u8]) -> Result<RequestEnvelope, RejectedRequest> {
        match rmp_serde::from_slice::<RequestEnvelope>(body) {
            Ok(envelope) if envelope.version == PROTOCOL_VERSION => Ok(envelope),
            Ok(envelope) => Err(RejectedRequest {
                request_id: Some(envelope.request_id),
                error: unsupported_version(envelope.version),
            }),
            Err(full_error) => match rmp_serde::from_slice::<EnvelopeHeader>(body) {
                Ok(header) if header.version != PROTOCOL_VERSION => Err(RejectedRequest {
                    request_id: Some(header.request_id),
                    error: unsupported_version(header.version),
                }),
                Ok(header) => Err(RejectedRequest {
                    request_id: Some(header.request_id),
                    error: WireError::new(
                        ErrorCode::UnknownRequest,
                        format!("cannot decode request body: {full_error}"),
                    ),
                }),
                Err(_) => Err(RejectedRequest {
                    request_id: None,
                    error: WireError::new(
                        ErrorCode::Malformed,
                        format!("cannot decode request envelope: {full_error}"),
                    ),
                }),
            },
        }
    }
}

fn unsupported_version(version: u16) -> WireError {
    WireError::new(
        ErrorCode::UnsupportedVersion,
        format!("protocol version {version} is not supported, this node speaks {PROTOCOL_VERSION}"),
    )
}
