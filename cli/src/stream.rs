//! What a watch and an observation share: a request that opens a long-lived stream on the client's current member,
//! and the move to another member when that one is lost (a bounded number of failed opens in a row, with backoff).

use std::sync::atomic::Ordering;
use std::time::Duration;

use pando_protocol::PROTOCOL_VERSION;
use pando_protocol::envelope::{Request, RequestEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame;
use pando_protocol::limits::REQUEST_TIMEOUT_MS_MAX;
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::error::ClientError;
use crate::transport::{RecvHalf, SendHalf};

/// Opens in a row that may fail (no member reachable, each refusing) before a watch gives up.
pub const WATCH_RESUME_ATTEMPTS_MAX: u32 = 20;
/// Pause before opening a watch again after losing a member (doubles, up to a second).
pub const WATCH_RESUME_BACKOFF_MS: u64 = 100;

/// An open long-lived stream: its halves and its request's id.
pub(crate) struct OpenStream {
    pub send: SendHalf,
    pub recv: RecvHalf,
    pub request_id: u64,
}

impl OpenStream {
    /// Sends `body` on a new stream to the client's current member, keeping the stream open (finishing it ends
    /// what it opened).
    pub async fn open(client: &Client, body: Request) -> Result<OpenStream, ClientError> {
        let request_id = client.next_request_id.fetch_add(1, Ordering::Relaxed);
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms: REQUEST_TIMEOUT_MS_MAX,
            token: client.ticket().token.clone(),
            body,
        };
        let frame = frame::encode(&envelope).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let (mut send, recv) = client.open().await?;
        send.write_all(&frame).await.map_err(|error| ClientError::Transport(error.to_string()))?;
        // The request goes out now, not when the stream finishes.
        send.flush().await.map_err(|error| ClientError::Transport(error.to_string()))?;
        Ok(OpenStream { send, recv, request_id })
    }

    /// Ends the stream: the member stops serving it.
    pub async fn close(mut self) {
        let _ = self.send.shutdown().await;
    }
}

/// Counts the losses of a long-lived stream and paces the moves to another member.
#[derive(Default)]
pub(crate) struct Mover {
    /// Opens and losses in a row without a frame in between.
    failures: u32,
    /// How many times the stream moved to another member.
    pub resumes: u64,
}

impl Mover {
    /// A frame arrived: the member serves.
    pub fn served(&mut self) {
        self.failures = 0;
    }

    /// The member was lost (or cannot serve now): the next open goes to another one, after a pause; an error once
    /// [`WATCH_RESUME_ATTEMPTS_MAX`] opens in a row failed.
    pub async fn lost(&mut self, client: &Client, why: &str) -> Result<(), ClientError> {
        self.failures += 1;
        if self.failures > WATCH_RESUME_ATTEMPTS_MAX {
            return Err(ClientError::Transport(format!(
                "could not resume on any member after {WATCH_RESUME_ATTEMPTS_MAX} attempts; last: {why}"
            )));
        }
        self.resumes += 1;
        client.drop_connection().await;
        let backoff = (WATCH_RESUME_BACKOFF_MS << self.failures.min(4)).min(1_000);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        Ok(())
    }
}

/// Whether an error means "this member cannot serve the stream now" (another may), rather than a final answer.
pub(crate) fn movable(error: &WireError) -> bool {
    matches!(error.code, ErrorCode::NoLeader | ErrorCode::SlowConsumer | ErrorCode::Unavailable | ErrorCode::Busy)
}
