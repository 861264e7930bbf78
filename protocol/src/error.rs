//! Wire errors: a stable code, a human message, and structured detail where the client can act on it.

use serde::{Deserialize, Serialize};

use crate::kv::KvEntry;

/// Stable error codes. Serialized by name; never renumbered, never removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is well-formed but an argument is invalid (empty key, bad limit, ...).
    InvalidArgument,
    /// A key, value, batch or frame exceeds a limit from [`crate::limits`].
    TooLarge,
    /// The bytes on the stream are not a valid frame or message.
    Malformed,
    /// The envelope decoded but its body names a request this node does not know.
    UnknownRequest,
    /// The envelope's protocol version is not supported.
    UnsupportedVersion,
    /// No token, a token that does not verify, an expired token, or a token without the needed capability.
    Unauthorized,
    /// The thing asked for does not exist.
    NotFound,
    /// A compare-and-swap or compare-and-delete found another value; the detail carries the current entry.
    Conflict,
    /// This node is not the leader; the detail names the leader when it is known.
    NotLeader,
    /// The request's deadline passed before it finished; a write may or may not have been applied.
    Timeout,
    /// The node is overloaded and refused the request before doing anything; retry with backoff.
    Busy,
    /// The node cannot serve right now (no leader, shutting down).
    Unavailable,
    /// A bug or an unexpected storage failure on the node.
    Internal,
    /// A plugin call trapped, ran out of fuel or memory, or the plugin returned an error; the message says which.
    PluginFailed,
    /// A watch or history read asked for a revision the history no longer holds; the detail names the oldest
    /// revision still held and the current one.
    Compacted,
    /// A watcher stopped reading for too long; its watch was cancelled (resume from the revision the cancellation
    /// names).
    SlowConsumer,
    /// The node lost its leader (it may be cut off from the majority); resume the watch on another member.
    NoLeader,
}

impl ErrorCode {
    /// The stable text form, as printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::UnknownRequest => "UNKNOWN_REQUEST",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Busy => "BUSY",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::PluginFailed => "PLUGIN_FAILED",
            ErrorCode::Compacted => "COMPACTED",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::NoLeader => "NO_LEADER",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Structured detail attached to some errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorDetail {
    /// With [`ErrorCode::NotLeader`]: who the leader is, when known.
    Leader {
        node_id: u64,
        /// The leader's iroh public key (32 bytes).
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        addrs: Vec<std::net::SocketAddr>,
    },
    /// With [`ErrorCode::Conflict`]: the entry as it is now (`None` when the key does not exist).
    Current { entry: Option<KvEntry> },
    /// With [`ErrorCode::Compacted`]: the history starts at `compacted`; the store is at `current`.
    Compacted { compacted: u64, current: u64 },
    /// A file-system refusal: the `errno` a Linux file system answers (see [`crate::fs::Errno`]).
    Errno { errno: i32 },
}

/// An error as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<ErrorDetail>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
