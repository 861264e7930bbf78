//! A watch that survives the loss of its node: [`Client::watch`] opens it on a member; when that member is lost (the
//! connection breaks, or the node cancels with `NO_LEADER`, `SLOW_CONSUMER` or `UNAVAILABLE`) the watch opens again on
//! another member from the first revision it has not delivered. Revisions come exactly once and in order, each whole
//! (fragments of a large revision are put back together; a revision cut by a lost node is asked for again).
//! A member that says nothing for a few progress intervals (the watch asks for progress, as a heartbeat, when its
//! caller did not) is lost too: a partition between the client and the member shows as silence, not as an error.
//! `COMPACTED` is final here: the caller re-reads what it watches and starts a new watch from the revision that read
//! answered (the error's detail names the oldest revision held and the current one).

use std::sync::atomic::Ordering;
use std::time::Duration;

use pando_protocol::PROTOCOL_VERSION;
use pando_protocol::envelope::{Request, RequestEnvelope, Response};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame;
use pando_protocol::limits::REQUEST_TIMEOUT_MS_MAX;
use pando_protocol::watch::{WatchEvent, WatchRequest, WatchResponse};
use tokio::io::AsyncWriteExt;

use crate::client::{Client, read_response};
use crate::error::ClientError;
use crate::transport::{RecvHalf, SendHalf};

/// Opens in a row that may fail (no member reachable, each refusing) before the watch gives up.
pub const WATCH_RESUME_ATTEMPTS_MAX: u32 = 20;
/// Pause before opening the watch again after losing a member (doubles, up to a second).
pub const WATCH_RESUME_BACKOFF_MS: u64 = 100;
/// How often the member must say something when the caller asked for no progress notifications: the watch asks for
/// them at this interval and keeps them to itself.
pub const WATCH_HEARTBEAT_MS: u32 = 5_000;
/// Progress intervals a member may stay silent before the watch counts it lost (a partition between the client and
/// the member shows as silence: no frame, no error) and resumes on another one.
pub const WATCH_SILENT_INTERVALS_MAX: u32 = 3;

/// What a watch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// Every matching event of one revision.
    Events { revision: u64, events: Vec<WatchEvent> },
    /// Every revision before `next_revision` was delivered (or held nothing this watch matches).
    Progress { next_revision: u64 },
}

/// A watch in progress (see the module's documentation).
pub struct Watch<'a> {
    client: &'a Client,
    request: WatchRequest,
    stream: Option<(SendHalf, RecvHalf, u64)>,
    /// The first revision not delivered yet (0: not known until the first member says where the watch starts).
    next_revision: u64,
    /// Events of a revision whose last fragment has not arrived.
    partial: Option<(u64, Vec<WatchEvent>)>,
    /// Opens and losses in a row without a frame in between.
    failures: u32,
    /// How many times the watch moved to another member.
    resumes: u64,
}

impl Client {
    /// Opens a watch (see [`Watch`]); the first member is reached when [`Watch::next`] is first called.
    pub fn watch(&self, request: WatchRequest) -> Watch<'_> {
        let next_revision = request.start_revision;
        Watch { client: self, request, stream: None, next_revision, partial: None, failures: 0, resumes: 0 }
    }
}

impl Watch<'_> {
    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// How many times the watch resumed on another member.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// The next revision's events, or a progress notification; waits as long as it takes.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        loop {
            let silence = Duration::from_millis(u64::from(self.heartbeat_ms() * WATCH_SILENT_INTERVALS_MAX));
            let (_, recv, request_id) = match self.stream.as_mut() {
                Some(stream) => stream,
                None => {
                    self.open().await?;
                    continue;
                }
            };
            // Silence past a few progress intervals: the member is cut off from us (read_response is not cancel-safe,
            // so the stream is dropped, never read again).
            let read = match tokio::time::timeout(silence, read_response(recv, *request_id)).await {
                Ok(read) => read,
                Err(_) => {
                    self.lost("the member said nothing for several progress intervals").await?;
                    continue;
                }
            };
            let frame = match read {
                Ok(Ok(Response::Watch(frame))) => frame,
                Ok(Ok(other)) => return Err(ClientError::Protocol(format!("unexpected answer to a watch: {other:?}"))),
                Ok(Err(error)) if movable(&error) => {
                    self.lost(&error.to_string()).await?;
                    continue;
                }
                Ok(Err(error)) => return Err(ClientError::Wire(error)),
                Err(error) => {
                    self.lost(&error.to_string()).await?;
                    continue;
                }
            };
            self.failures = 0;
            match frame {
                WatchResponse::Created { start_revision, .. } => {
                    if self.next_revision == 0 {
                        self.next_revision = start_revision;
                    }
                }
                WatchResponse::Events { revision, events, more } => {
                    if revision < self.next_revision {
                        // Delivered before the watch moved here.
                        continue;
                    }
                    let mut gathered = match self.partial.take() {
                        Some((partial, mut gathered)) if partial == revision => {
                            gathered.extend(events);
                            gathered
                        }
                        _ => events,
                    };
                    if more {
                        self.partial = Some((revision, std::mem::take(&mut gathered)));
                        continue;
                    }
                    self.next_revision = revision + 1;
                    return Ok(WatchItem::Events { revision, events: gathered });
                }
                WatchResponse::Progress { next_revision } => {
                    // A member that lags behind the one the watch left may name an earlier revision: never go back.
                    if self.partial.is_none() && next_revision >= self.next_revision {
                        self.next_revision = next_revision;
                        // Heartbeats the caller did not ask for stay here.
                        if self.request.progress_ms > 0 {
                            return Ok(WatchItem::Progress { next_revision });
                        }
                    }
                }
                WatchResponse::Canceled { error, .. } if movable(&error) => self.lost(&error.to_string()).await?,
                WatchResponse::Canceled { error, .. } => {
                    self.stream = None;
                    return Err(ClientError::Wire(error));
                }
            }
        }
    }

    /// Ends the watch: the member stops serving it.
    pub async fn cancel(mut self) {
        if let Some((mut send, _, _)) = self.stream.take() {
            let _ = send.shutdown().await;
        }
    }

    /// Opens the watch on the client's current member, from the first revision not delivered.
    async fn open(&mut self) -> Result<(), ClientError> {
        let request_id = self.client.next_request_id.fetch_add(1, Ordering::Relaxed);
        let request = WatchRequest {
            start_revision: self.next_revision,
            progress_ms: self.heartbeat_ms(),
            ..self.request.clone()
        };
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms: REQUEST_TIMEOUT_MS_MAX,
            token: self.client.ticket().token.clone(),
            body: Request::Watch(request),
        };
        let frame = frame::encode(&envelope).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let opened = async {
            let (mut send, recv) = self.client.open().await?;
            send.write_all(&frame).await.map_err(|error| ClientError::Transport(error.to_string()))?;
            // The stream stays open (finishing it cancels the watch): the request goes out now.
            send.flush().await.map_err(|error| ClientError::Transport(error.to_string()))?;
            Ok::<_, ClientError>((send, recv))
        };
        match opened.await {
            Ok((send, recv)) => {
                self.stream = Some((send, recv, request_id));
                Ok(())
            }
            Err(error) => self.lost(&error.to_string()).await,
        }
    }

    /// The progress interval asked of members: the caller's, or a heartbeat.
    fn heartbeat_ms(&self) -> u32 {
        match self.request.progress_ms {
            0 => WATCH_HEARTBEAT_MS,
            asked => asked,
        }
    }

    /// The member was lost (or cannot serve the watch): the next open goes to another one, after a pause.
    async fn lost(&mut self, why: &str) -> Result<(), ClientError> {
        self.stream = None;
        self.partial = None;
        self.failures += 1;
        if self.failures > WATCH_RESUME_ATTEMPTS_MAX {
            return Err(ClientError::Transport(format!(
                "the watch could not be resumed on any member after {WATCH_RESUME_ATTEMPTS_MAX} attempts; last: {why}"
            )));
        }
        self.resumes += 1;
        self.client.drop_connection().await;
        let backoff = (WATCH_RESUME_BACKOFF_MS << self.failures.min(4)).min(1_000);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        Ok(())
    }
}

/// Whether an error means "this member cannot serve the watch now" (another may), rather than a final answer.
fn movable(error: &WireError) -> bool {
    matches!(error.code, ErrorCode::NoLeader | ErrorCode::SlowConsumer | ErrorCode::Unavailable | ErrorCode::Busy)
}
