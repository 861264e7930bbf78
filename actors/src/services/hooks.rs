//! The hook service: durable hooks' lifecycle and user events through the log, their state from the applied state
//! after a read index, and hook streams (`pando hook watch`) from the router, each holding one of the node's watch
//! slots.

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::hook::api::{HookInfo, HookReply, HookRequest, HookStreamResponse, HookWatchRequest};
use pando_protocol::hook::durable::HookResponse;
use pando_protocol::hook::{EventBody, HookEvent};
use pando_protocol::limits::HOOK_STREAM_FRAME_BYTES_MAX;
use tokio::sync::OwnedSemaphorePermit;

use super::WatchService;
use crate::hooks::HooksHandle;
use crate::hooks::stream::{HookStream, StreamItem};
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

/// Pending events `pando hook info` shows.
const INFO_PENDING_MAX: usize = 16;

#[derive(Clone)]
pub struct HookService {
    raft: RaftHandle,
    storage: StorageHandle,
    hooks: HooksHandle,
    watch: WatchService,
}

impl HookService {
    pub fn new(raft: RaftHandle, storage: StorageHandle, hooks: HooksHandle, watch: WatchService) -> HookService {
        HookService { raft, storage, hooks, watch }
    }

    /// Serves one request (already validated and authorised).
    pub async fn execute(&self, request: HookRequest, timeout: Duration) -> Result<HookReply, WireError> {
        request.validate()?;
        if let Some(command) = request.command() {
            return match self.raft.propose(Command::Hook(command), timeout).await? {
                CommandOutput::Hook(response) => Ok(HookReply::Command(response)),
                other => Err(WireError::internal(format!("a hook command answered {other:?}"))),
            };
        }
        self.raft.linearize(timeout).await?;
        match request {
            HookRequest::List { after, limit } => {
                let (hooks, more) =
                    self.storage.read(timeout, move |reader| reader.hooks(after.as_deref(), limit as usize)).await?;
                Ok(HookReply::List { hooks, more })
            }
            HookRequest::Info { name } => {
                let (detail, log) = {
                    let name = name.clone();
                    self.storage
                        .read(timeout, move |reader| {
                            Ok((reader.hook(&name, INFO_PENDING_MAX)?, reader.hook_log(u64::MAX, 0)?))
                        })
                        .await?
                };
                let detail =
                    detail.ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no hook named {name:?}")))?;
                Ok(HookReply::Info(Box::new(HookInfo {
                    record: detail.record,
                    ack_floor: detail.ack_floor,
                    pending: detail.pending,
                    log_floor: log.floor,
                    log_next: log.next,
                })))
            }
            HookRequest::DeadLetters { name, after, limit } => {
                let lookup = name.clone();
                let (exists, (letters, more)) = self
                    .storage
                    .read(timeout, move |reader| {
                        Ok((
                            reader.hook(&lookup, 0)?.is_some(),
                            reader.hook_dead_letters(&lookup, after, limit as usize)?,
                        ))
                    })
                    .await?;
                if !exists {
                    return Err(WireError::new(ErrorCode::NotFound, format!("no hook named {name:?}")));
                }
                Ok(HookReply::DeadLetters { letters, more })
            }
            _ => Err(WireError::internal("a hook command reached the read path")),
        }
    }

    /// Proposes a user event, answering its sequence (for callers inside the node).
    pub async fn publish(&self, subject: &str, data: Vec<u8>, timeout: Duration) -> Result<u64, WireError> {
        let request = HookRequest::Publish { subject: subject.to_string(), data: data.into() };
        match self.execute(request, timeout).await? {
            HookReply::Command(HookResponse::Published { seq }) => Ok(seq),
            other => Err(WireError::internal(format!("a publish answered {other:?}"))),
        }
    }

    /// Opens a hook stream (the caller checked it may see what the pattern matches); `BUSY` when the node serves
    /// its most watches already.
    pub fn open(&self, request: HookWatchRequest) -> Result<HookWatcher, WireError> {
        request.validate()?;
        let slot = self.watch.slot()?;
        let stream = HookStream::open(self.hooks.clone(), self.storage.clone(), &request.pattern, request.from_seq)?;
        let created = Some(HookStreamResponse::Created { next_seq: stream.next_seq() });
        Ok(HookWatcher { stream, created, ended: false, _slot: slot })
    }
}

/// Events one stream frame carries at most.
const FRAME_EVENTS_MAX: usize = 64;

/// What an event weighs in a frame: its key and value (or payload), and its subject.
fn event_bytes(event: &HookEvent) -> usize {
    let body = match &event.body {
        EventBody::Kv(change) => change.entry.key.len() + change.entry.value.len(),
        EventBody::User { data } => data.len(),
        _ => 256,
    };
    body + event.subject.len() + 64
}

/// One open hook stream: its frames until it ends.
pub struct HookWatcher {
    stream: HookStream,
    created: Option<HookStreamResponse>,
    ended: bool,
    _slot: OwnedSemaphorePermit,
}

impl HookWatcher {
    /// The next frame (`None` once it ended).
    pub async fn next_frame(&mut self) -> Option<HookStreamResponse> {
        if let Some(created) = self.created.take() {
            return Some(created);
        }
        if self.ended {
            return None;
        }
        Some(match self.stream.next().await {
            Ok(StreamItem::Event(event)) => {
                let mut bytes = event_bytes(&event);
                let mut events = vec![event.as_ref().clone()];
                // What else is ready goes in the same frame, up to a bound (one large event always fits alone).
                while events.len() < FRAME_EVENTS_MAX && bytes < HOOK_STREAM_FRAME_BYTES_MAX {
                    match futures::FutureExt::now_or_never(self.stream.next()) {
                        Some(Ok(StreamItem::Event(event))) => {
                            bytes += event_bytes(&event);
                            events.push(event.as_ref().clone());
                        }
                        _ => break,
                    }
                }
                HookStreamResponse::Events { events }
            }
            Ok(StreamItem::Progress(next_seq)) => HookStreamResponse::Progress { next_seq },
            Err(error) => {
                self.ended = true;
                HookStreamResponse::Canceled { error, next_seq: self.stream.next_seq() }
            }
        })
    }

    /// Where the stream would resume.
    pub fn next_seq(&self) -> u64 {
        self.stream.next_seq()
    }
}
