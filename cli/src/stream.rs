//! What a watch and an observation share: a request that opens a long-lived stream on the client's current member,
//! and the move to another member when that one is lost (a bounded number of failed opens in a row, with backoff).

use std::sync::atomic::Ordering;
use std::time::Duration;

use pando_protocol::PROTOCOL_VERSION;
use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame::{self, LENGTH_PREFIX_BYTES};
use pando_protocol::limits::REQUEST_TIMEOUT_MS_MAX;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::error::ClientError;
use crate::transport::{RecvHalf, SendHalf};

/// Opens in a row that may fail (no member reachable, each refusing) before a watch gives up.
pub const WATCH_RESUME_ATTEMPTS_MAX: u32 = 20;
/// Pause before opening a watch again after losing a member (doubles, up to a second).
pub const WATCH_RESUME_BACKOFF_MS: u64 = 100;

/// Bytes a long-lived stream reads at a time (a member sends what is ready in one write, up to 64 KiB).
const STREAM_READ_BYTES: usize = 64 * 1024;

/// An open long-lived stream: its halves, its request's id, and what arrived but was not read as a frame yet.
pub(crate) struct OpenStream {
    pub send: SendHalf,
    recv: RecvHalf,
    pub request_id: u64,
    /// Bytes received; frames before `consumed` were handed out.
    received: Vec<u8>,
    consumed: usize,
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
        let (mut send, recv) = client.open_stream().await?;
        send.write_all(&frame).await.map_err(|error| ClientError::Transport(error.to_string()))?;
        // The request goes out now, not when the stream finishes.
        send.flush().await.map_err(|error| ClientError::Transport(error.to_string()))?;
        Ok(OpenStream { send, recv, request_id, received: Vec::new(), consumed: 0 })
    }

    /// The next response on the stream. Cancel-safe: what a cancelled call read stays in the stream's buffer, and the
    /// next call goes on from there (so a caller may race it against a timer). Reads in chunks of up to 64 KiB, so a
    /// burst of frames costs one read.
    pub async fn next_response(&mut self) -> Result<Result<Response, WireError>, ClientError> {
        loop {
            if let Some(response) = self.take_frame()? {
                return Ok(response);
            }
            if self.received.capacity() - self.received.len() < STREAM_READ_BYTES / 4 {
                self.received.reserve(STREAM_READ_BYTES);
            }
            let read = self
                .recv
                .read_buf(&mut self.received)
                .await
                .map_err(|error| ClientError::Transport(format!("the stream broke: {error}")))?;
            if read == 0 {
                return Err(ClientError::Transport("the member ended the stream".into()));
            }
        }
    }

    /// A whole frame from the buffer, decoded (`None`: it has not all arrived yet).
    fn take_frame(&mut self) -> Result<Option<Result<Response, WireError>>, ClientError> {
        let available = &self.received[self.consumed..];
        let Some(prefix) = available.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length = frame::body_length(*prefix).map_err(|error| ClientError::Protocol(error.to_string()))?;
        let Some(body) = available.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + length) else {
            // A frame larger than the buffer: room for all of it, so it arrives in a few reads.
            self.received.reserve(LENGTH_PREFIX_BYTES + length - available.len());
            return Ok(None);
        };
        let response: ResponseEnvelope =
            frame::decode(body).map_err(|error| ClientError::Protocol(error.to_string()))?;
        self.consumed += LENGTH_PREFIX_BYTES + length;
        if self.consumed == self.received.len() {
            self.received.clear();
            self.consumed = 0;
        } else if self.consumed >= STREAM_READ_BYTES {
            self.received.drain(..self.consumed);
            self.consumed = 0;
        }
        if response.request_id != self.request_id && response.request_id != 0 {
            return Err(ClientError::Protocol(format!(
                "response for request {} arrived on the stream of request {}",
                response.request_id, self.request_id
            )));
        }
        Ok(Some(response.body))
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
    /// A frame ever arrived (a stream that never opened anywhere fails at once when no member can be reached).
    served_once: bool,
    /// How many times the stream moved to another member.
    pub resumes: u64,
}

impl Mover {
    /// A frame arrived: the member serves.
    pub fn served(&mut self) {
        self.failures = 0;
        self.served_once = true;
    }

    /// Whether an open that failed with `error` ends the stream at once instead of moving on: a stream that was never
    /// served and reached no member within the client's connect timeout (the error names them all and what to check).
    pub fn gives_up(&self, error: &ClientError) -> bool {
        !self.served_once && matches!(error, ClientError::Unreachable(_))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pando_protocol::watch::WatchResponse;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn progress(request_id: u64, next_revision: u64) -> Vec<u8> {
        let body = Ok(Response::Watch(WatchResponse::Progress { next_revision }));
        frame::encode(&ResponseEnvelope { request_id, body }).unwrap()
    }

    /// A stream whose member side is `far`.
    fn open_pair(request_id: u64) -> (OpenStream, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024 * 1024);
        let open = OpenStream {
            send: Box::new(tokio::io::sink()),
            recv: Box::new(near),
            request_id,
            received: Vec::new(),
            consumed: 0,
        };
        (open, far)
    }

    async fn next_revision(stream: &mut OpenStream) -> u64 {
        match stream.next_response().await {
            Ok(Ok(Response::Watch(WatchResponse::Progress { next_revision }))) => next_revision,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_that_arrive_together_or_in_pieces_come_out_whole_and_a_cancelled_read_loses_nothing() {
        let (mut stream, mut far) = open_pair(7);
        let third = progress(7, 3);
        let mut burst = [progress(7, 1), progress(7, 2)].concat();
        burst.extend_from_slice(&third[..5]);
        far.write_all(&burst).await.unwrap();
        assert_eq!(next_revision(&mut stream).await, 1);
        assert_eq!(next_revision(&mut stream).await, 2);
        // Only part of the third frame is there: a read raced against a timer gives up, and keeps what it read.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), stream.next_response()).await;
        assert!(cancelled.is_err(), "no whole frame yet");
        for byte in &third[5..] {
            far.write_all(&[*byte]).await.unwrap();
        }
        assert_eq!(next_revision(&mut stream).await, 3);
        drop(far);
        assert!(matches!(stream.next_response().await, Err(ClientError::Transport(_))), "the member ended it");
    }

    #[tokio::test]
    async fn a_frame_of_another_request_or_an_oversized_one_is_refused() {
        let (mut stream, mut far) = open_pair(7);
        far.write_all(&progress(8, 1)).await.unwrap();
        assert!(matches!(stream.next_response().await, Err(ClientError::Protocol(_))));
        let (mut stream, mut far) = open_pair(7);
        far.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(stream.next_response().await, Err(ClientError::Protocol(_))), "refused before it is read");
    }
}
