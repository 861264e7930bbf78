//! Client errors: either the node answered with a wire error, or the request never got an answer.

use pando_protocol::error::{ErrorCode, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node refused or failed the request.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// No node could be reached, or a connection broke before the response arrived.
    #[error("UNAVAILABLE: {0}")]
    Transport(String),
    /// No node of the ticket answered within the client's connect timeout: the message names each address, why it
    /// failed, and what to check. Nothing was sent.
    #[error("UNAVAILABLE: {0}")]
    Unreachable(String),
    /// A stage of the request did not finish within the deadline.
    #[error("TIMEOUT: {0}")]
    Timeout(String),
    /// The node answered with something this client cannot understand.
    #[error("MALFORMED: {0}")]
    Protocol(String),
    /// The ticket or an argument is unusable.
    #[error("INVALID_ARGUMENT: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The stable code of this error, as printed by the CLI.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Wire(error) => error.code,
            ClientError::Transport(_) | ClientError::Unreachable(_) => ErrorCode::Unavailable,
            ClientError::Timeout(_) => ErrorCode::Timeout,
            ClientError::Protocol(_) => ErrorCode::Malformed,
            ClientError::Invalid(_) => ErrorCode::InvalidArgument,
        }
    }
}
