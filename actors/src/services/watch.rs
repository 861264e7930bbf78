//! The watch service: a KV feed narrowed to the keys and kinds one watch asked for, with previous entries, progress
//! notifications that never run ahead of the events, and the cancellations a watcher acts on (`COMPACTED`: re-read
//! and continue; `NO_LEADER`: resume on another member). The RPC layer frames what it answers; the hook router and
//! the FUSE cache are its next callers. Observations of coordination resources ([`Observer`]) share its slots.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::limits::{WATCH_FRAME_EVENTS_BYTES_MAX, WATCH_NO_LEADER_MS, WATCHES_PER_NODE_MAX};
use pando_protocol::observe::ObserveRequest;
use pando_protocol::watch::{WatchEvent, WatchRequest, WatchResponse};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::commit_stream::{KvFeed, RevisionEvents};
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

mod observe;
pub use observe::Observer;

/// How often a watch looks whether its node still has a leader.
const LEADER_CHECK_MS: u64 = 250;

#[derive(Clone)]
pub struct WatchService {
    storage: StorageHandle,
    raft: RaftHandle,
    /// One permit per open watch: at most [`WATCHES_PER_NODE_MAX`] on this node.
    slots: Arc<Semaphore>,
}

impl WatchService {
    pub fn new(storage: StorageHandle, raft: RaftHandle) -> WatchService {
        WatchService { storage, raft, slots: Arc::new(Semaphore::new(WATCHES_PER_NODE_MAX)) }
    }

    /// Opens a watch (the caller checked the watcher may read every key it can see). `BUSY` when the node already
    /// serves [`WATCHES_PER_NODE_MAX`].
    pub fn open(&self, request: WatchRequest) -> Result<Watcher, WireError> {
        request.validate()?;
        let slot = self.slot()?;
        let current = self.storage.reader()?.revision().map_err(|fault| WireError::internal(fault.to_string()))?;
        let start = match request.start_revision {
            0 => current + 1,
            start => start,
        };
        Ok(Watcher {
            feed: self.storage.feed(start),
            storage: self.storage.clone(),
            request,
            created: Some(WatchResponse::Created { start_revision: start, current }),
            frames: VecDeque::new(),
            ended: false,
            last_frame: Instant::now(),
            leader: LeaderLoss::new(self.raft.clone()),
            _slot: slot,
        })
    }

    /// Opens an observation (the caller checked the observer may read the resource); `BUSY` like a watch.
    pub fn observe(&self, request: ObserveRequest) -> Result<Observer, WireError> {
        request.validate()?;
        let slot = self.slot()?;
        Ok(Observer::new(self.storage.clone(), request, LeaderLoss::new(self.raft.clone()), slot))
    }

    fn slot(&self) -> Result<OwnedSemaphorePermit, WireError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            WireError::new(
                ErrorCode::Busy,
                format!("this node serves {WATCHES_PER_NODE_MAX} watches already; retry with backoff or elsewhere"),
            )
        })
    }
}

/// One open watch: its frames, in order, until it is cancelled.
pub struct Watcher {
    feed: KvFeed,
    storage: StorageHandle,
    request: WatchRequest,
    created: Option<WatchResponse>,
    /// Frames of a revision cut into several.
    frames: VecDeque<WatchResponse>,
    ended: bool,
    last_frame: Instant,
    leader: LeaderLoss,
    _slot: OwnedSemaphorePermit,
}

impl Watcher {
    /// The next revision this watch will deliver: every earlier one was delivered or held nothing it matches.
    pub fn next_revision(&self) -> u64 {
        self.feed.next_revision()
    }

    /// The next frame: `Created`, then `Events` and `Progress` as they come; `Canceled` ends the watch (then `None`).
    pub async fn next(&mut self) -> Option<WatchResponse> {
        if let Some(created) = self.created.take() {
            return Some(self.sent(created));
        }
        if let Some(frame) = self.frames.pop_front() {
            return Some(self.sent(frame));
        }
        if self.ended {
            return None;
        }
        loop {
            let progress = (self.request.progress_ms > 0)
                .then(|| self.last_frame + Duration::from_millis(self.request.progress_ms.into()));
            let progress_due = async {
                match progress {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Biased: the same order every run (the simulator replays a seed exactly); a revision before a
                // progress notice that falls due at the same instant.
                biased;
                revision = self.feed.next() => match revision {
                    Ok(revision) => {
                        if self.frame(revision) {
                            let frame = self.frames.pop_front()?;
                            return Some(self.sent(frame));
                        }
                    }
                    Err(error) => return Some(self.cancel(error.into())),
                },
                () = progress_due => {
                    let next_revision = self.feed.next_revision();
                    return Some(self.sent(WatchResponse::Progress { next_revision }));
                }
                () = tokio::time::sleep(Duration::from_millis(LEADER_CHECK_MS)) => {
                    if let Some(error) = self.leader.check() {
                        return Some(self.cancel(error));
                    }
                }
            }
        }
    }

    fn sent(&mut self, frame: WatchResponse) -> WatchResponse {
        self.last_frame = Instant::now();
        frame
    }

    fn cancel(&mut self, error: WireError) -> WatchResponse {
        self.ended = true;
        self.frames.clear();
        WatchResponse::Canceled { error, next_revision: self.feed.next_revision() }
    }

    /// Queues the frames of one revision's matching events (none: nothing queued); `true` when some were.
    fn frame(&mut self, revision: RevisionEvents) -> bool {
        let RevisionEvents { revision, events } = revision;
        let request = &self.request;
        let matching: Vec<_> = events
            .into_iter()
            .filter(|event| request.range.contains(event.key()) && request.only.is_none_or(|kind| kind == event.kind))
            .collect();
        if matching.is_empty() {
            return false;
        }
        let reader = if request.prev_kv { self.storage.reader().ok() } else { None };
        let mut frame = Vec::new();
        let mut bytes = 0;
        for event in matching {
            let prev = match (&reader, event.prev_revision) {
                (Some(reader), prev_revision) if prev_revision > 0 => {
                    reader.entry_at(prev_revision, event.key()).ok().flatten()
                }
                _ => None,
            };
            let size = event.key().len()
                + event.entry.value.len()
                + prev.as_ref().map_or(0, |prev| prev.key.len() + prev.value.len());
            if !frame.is_empty() && bytes + size > WATCH_FRAME_EVENTS_BYTES_MAX {
                self.frames.push_back(WatchResponse::Events {
                    revision,
                    events: std::mem::take(&mut frame),
                    more: true,
                });
                bytes = 0;
            }
            bytes += size;
            frame.push(WatchEvent { event, prev });
        }
        self.frames.push_back(WatchResponse::Events { revision, events: frame, more: false });
        true
    }
}

/// Tells when a node has been without a leader for too long to keep serving a watch.
pub(crate) struct LeaderLoss {
    raft: RaftHandle,
    since: Option<Instant>,
}

impl LeaderLoss {
    fn new(raft: RaftHandle) -> LeaderLoss {
        LeaderLoss { raft, since: None }
    }

    /// `NO_LEADER` once the node has known no leader for [`WATCH_NO_LEADER_MS`]: cut off from the majority, it would
    /// otherwise serve a watch that silently stops (etcd's watches hang there).
    fn check(&mut self) -> Option<WireError> {
        if self.raft.leader().is_some() {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        (since.elapsed() >= Duration::from_millis(WATCH_NO_LEADER_MS)).then(|| {
            WireError::new(
                ErrorCode::NoLeader,
                format!("this node has had no leader for {WATCH_NO_LEADER_MS} ms; resume the watch on another member"),
            )
        })
    }
}

#[cfg(test)]
mod tests;
