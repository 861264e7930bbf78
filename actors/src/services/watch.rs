//! The watch service: a KV feed narrowed to the keys and kinds one watch asked for, with previous entries, progress
//! notifications that never run ahead of the events, and the cancellations a watcher acts on (`COMPACTED`: re-read
//! and continue; `NO_LEADER`: resume on another member). The RPC layer frames what it answers; the hook router and
//! the FUSE cache are its next callers. Observations of coordination resources ([`Observer`]) share its slots.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::limits::{WATCH_FRAME_EVENTS_BYTES_MAX, WATCH_NO_LEADER_MS, WATCHES_PER_NODE_MAX};
use pando_protocol::observe::ObserveRequest;
use pando_protocol::watch::{KvEvent, WatchEvent, WatchRequest, WatchResponse};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

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
        let now = Instant::now();
        let mut watcher = Watcher {
            feed: self.storage.feed(start),
            storage: self.storage.clone(),
            request,
            created: Some(WatchResponse::Created { start_revision: start, current }),
            frames: VecDeque::new(),
            ended: false,
            last_frame: now,
            leader: LeaderLoss::new(self.raft.clone()),
            leader_check_at: now + Duration::from_millis(LEADER_CHECK_MS),
            tick: Box::pin(tokio::time::sleep_until(now)),
            _slot: slot,
        };
        watcher.rearm();
        Ok(watcher)
    }

    /// Opens an observation (the caller checked the observer may read the resource); `BUSY` like a watch.
    pub fn observe(&self, request: ObserveRequest) -> Result<Observer, WireError> {
        request.validate()?;
        let slot = self.slot()?;
        Ok(Observer::new(self.storage.clone(), request, LeaderLoss::new(self.raft.clone()), slot))
    }

    /// One of the node's watch slots (hook streams take them too).
    pub(crate) fn slot(&self) -> Result<OwnedSemaphorePermit, WireError> {
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
    /// Frames queued: the fragments of a revision cut into several, or a revision taken whole.
    frames: VecDeque<WatchFrame>,
    ended: bool,
    last_frame: Instant,
    leader: LeaderLoss,
    /// When the node's leadership is looked at next.
    leader_check_at: Instant,
    /// One timer for the watch's whole life (progress and the leader check), re-armed only when it fires: a busy
    /// watch does not set and clear timers for every revision it sends.
    tick: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

/// A frame of a watch, as the watch stream sends it.
#[derive(Debug)]
pub enum WatchFrame {
    /// A frame made for this watch alone.
    Own(WatchResponse),
    /// A whole revision: every event of it, without previous entries, in one frame. It is the same frame for every
    /// watch that takes the revision whole, so the stream encodes it once (`RevisionEvents::whole_frame`).
    Whole(Arc<RevisionEvents>),
}

impl WatchFrame {
    /// The frame as a response (a whole revision's events copied out).
    pub fn into_response(self) -> WatchResponse {
        match self {
            WatchFrame::Own(response) => response,
            WatchFrame::Whole(revision) => whole_response(&revision),
        }
    }

    /// Whether the frame ends the watch.
    pub fn is_last(&self) -> bool {
        matches!(self, WatchFrame::Own(WatchResponse::Canceled { .. }))
    }
}

/// The frame that carries every event of `revision` and nothing more.
pub fn whole_response(revision: &RevisionEvents) -> WatchResponse {
    let events = revision.events.iter().map(|event| WatchEvent { event: event.clone(), prev: None }).collect();
    WatchResponse::Events { revision: revision.revision, events, more: false }
}

impl Watcher {
    /// The next revision this watch will deliver: every earlier one was delivered or held nothing it matches.
    pub fn next_revision(&self) -> u64 {
        self.feed.next_revision()
    }

    /// The next frame: `Created`, then `Events` and `Progress` as they come; `Canceled` ends the watch (then `None`).
    pub async fn next(&mut self) -> Option<WatchResponse> {
        self.next_frame().await.map(WatchFrame::into_response)
    }

    /// [`Watcher::next`] as the watch stream sends it.
    pub async fn next_frame(&mut self) -> Option<WatchFrame> {
        if let Some(frame) = self.try_next_frame() {
            return Some(frame);
        }
        if self.ended {
            return None;
        }
        loop {
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
                () = self.tick.as_mut() => {
                    if let Some(frame) = self.ticked() {
                        return Some(frame);
                    }
                }
            }
        }
    }

    /// The next frame if one is at hand without waiting (queued, or a revision the feed holds already): the stream
    /// sends what is ready in one write.
    pub fn try_next_frame(&mut self) -> Option<WatchFrame> {
        if let Some(created) = self.created.take() {
            return Some(self.sent(WatchFrame::Own(created)));
        }
        if let Some(frame) = self.frames.pop_front() {
            return Some(self.sent(frame));
        }
        if self.ended {
            return None;
        }
        loop {
            match self.feed.try_next() {
                Ok(Some(revision)) => {
                    if self.frame(revision) {
                        let frame = self.frames.pop_front()?;
                        return Some(self.sent(frame));
                    }
                }
                Ok(None) => return None,
                Err(error) => return Some(self.cancel(error.into())),
            }
        }
    }

    /// The timer fired: looks at the leadership and sends progress when either is due, and re-arms the timer.
    fn ticked(&mut self) -> Option<WatchFrame> {
        let now = Instant::now();
        if now >= self.leader_check_at {
            self.leader_check_at = now + Duration::from_millis(LEADER_CHECK_MS);
            if let Some(error) = self.leader.check() {
                return Some(self.cancel(error));
            }
        }
        let progress_at = self.progress_at();
        if progress_at.is_some_and(|at| now >= at) {
            let next_revision = self.feed.next_revision();
            let frame = self.sent(WatchFrame::Own(WatchResponse::Progress { next_revision }));
            self.rearm();
            return Some(frame);
        }
        self.rearm();
        None
    }

    /// When progress falls due (`None`: the watch asked for none).
    fn progress_at(&self) -> Option<Instant> {
        (self.request.progress_ms > 0).then(|| self.last_frame + Duration::from_millis(self.request.progress_ms.into()))
    }

    fn rearm(&mut self) {
        let at = self.progress_at().map_or(self.leader_check_at, |at| at.min(self.leader_check_at));
        self.tick.as_mut().reset(at);
    }

    fn sent(&mut self, frame: WatchFrame) -> WatchFrame {
        self.last_frame = Instant::now();
        frame
    }

    fn cancel(&mut self, error: WireError) -> WatchFrame {
        self.ended = true;
        self.frames.clear();
        WatchFrame::Own(WatchResponse::Canceled { error, next_revision: self.feed.next_revision() })
    }

    /// Queues the frames of one revision's matching events (none: nothing queued); `true` when some were.
    fn frame(&mut self, revision: Arc<RevisionEvents>) -> bool {
        let request = &self.request;
        let matches =
            |event: &KvEvent| request.range.contains(event.key()) && request.only.is_none_or(|kind| kind == event.kind);
        let matching = revision.events.iter().filter(|event| matches(event)).count();
        if matching == 0 {
            return false;
        }
        let values: usize = revision.events.iter().map(|event| event.key().len() + event.entry.value.len()).sum();
        if matching == revision.events.len() && !request.prev_kv && values <= WATCH_FRAME_EVENTS_BYTES_MAX {
            self.frames.push_back(WatchFrame::Whole(revision));
            return true;
        }
        let reader = if request.prev_kv { self.storage.reader().ok() } else { None };
        let mut frame = Vec::new();
        let mut bytes = 0;
        for event in revision.events.iter().filter(|event| matches(event)) {
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
                self.frames.push_back(WatchFrame::Own(WatchResponse::Events {
                    revision: revision.revision,
                    events: std::mem::take(&mut frame),
                    more: true,
                }));
                bytes = 0;
            }
            bytes += size;
            frame.push(WatchEvent { event: event.clone(), prev });
        }
        self.frames.push_back(WatchFrame::Own(WatchResponse::Events {
            revision: revision.revision,
            events: frame,
            more: false,
        }));
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
