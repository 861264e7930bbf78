//! One client's hook stream (`pando hook watch`): the events matching its pattern from a sequence on, in order, each
//! once, with a progress heartbeat while nothing matches.
//!
//! It registers with the router ([`HooksHandle::subscribe`]), reads from the hook log whatever the router had
//! dispatched before (from its start sequence up to the router's dispatch point), then takes what the router routes
//! to it. When its channel closes (it fell [`HOOK_STREAM_BUFFER_MAX`](pando_protocol::limits::HOOK_STREAM_BUFFER_MAX)
//! behind, or the router restarted) it registers again and reads the gap from the log; if the log no longer holds
//! it, the stream ends `COMPACTED`, naming where it stopped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::hook::HookEvent;
use pando_protocol::hook::subject;
use pando_protocol::limits::{HOOK_STREAM_CATCH_UP_MAX, HOOK_STREAM_PROGRESS_MS};

use super::{HooksHandle, Subscription};
use crate::storage_actor::StorageHandle;

/// How long a stream waits for a router to run (one restarting) before it ends `UNAVAILABLE`.
const ROUTER_WAIT_MS: u64 = 5_000;

/// What a stream yields.
#[derive(Debug)]
pub enum StreamItem {
    Event(Arc<HookEvent>),
    /// Every event before this sequence was delivered or did not match.
    Progress(u64),
}

pub struct HookStream {
    handle: HooksHandle,
    storage: StorageHandle,
    pattern: String,
    /// The next sequence to examine.
    next: u64,
    subscription: Option<Subscription>,
    ready: VecDeque<Arc<HookEvent>>,
    heartbeat: tokio::time::Instant,
}

impl HookStream {
    /// A stream of `pattern` (valid) from `from` (0: the next event to commit).
    pub fn open(
        handle: HooksHandle,
        storage: StorageHandle,
        pattern: &str,
        from: u64,
    ) -> Result<HookStream, WireError> {
        let reader = storage.reader()?;
        let page = reader.hook_log(u64::MAX, 0).map_err(|fault| WireError::internal(fault.to_string()))?;
        let next = match from {
            0 => page.next,
            from if from > page.next => {
                return Err(WireError::invalid(format!(
                    "sequence {from} is in the future (the next is {})",
                    page.next
                )));
            }
            from if from < page.floor => return Err(compacted(from, page.floor)),
            from => from,
        };
        Ok(HookStream {
            handle,
            storage,
            pattern: pattern.to_string(),
            next,
            subscription: None,
            ready: VecDeque::new(),
            heartbeat: tokio::time::Instant::now() + Duration::from_millis(HOOK_STREAM_PROGRESS_MS),
        })
    }

    /// The next sequence the stream will examine: where a client resumes.
    pub fn next_seq(&self) -> u64 {
        self.ready.front().map_or(self.next, |event| event.seq)
    }

    /// The next item, waiting as long as it takes.
    pub async fn next(&mut self) -> Result<StreamItem, WireError> {
        let mut waited_for_router = Duration::ZERO;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(StreamItem::Event(event));
            }
            let Some(subscription) = self.subscription.as_mut() else {
                match self.handle.subscribe(&self.pattern) {
                    Ok(subscription) => self.subscription = Some(subscription),
                    Err(unavailable) if waited_for_router.as_millis() as u64 >= ROUTER_WAIT_MS => {
                        return Err(unavailable.into());
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        waited_for_router += Duration::from_millis(100);
                    }
                }
                continue;
            };
            if self.next <= subscription.through {
                let through = subscription.through;
                self.catch_up(through)?;
                continue;
            }
            let heartbeat = tokio::time::sleep_until(self.heartbeat);
            tokio::select! {
                biased;
                event = subscription.events.recv() => match event {
                    Some(event) if event.seq >= self.next => {
                        self.next = event.seq + 1;
                        return Ok(StreamItem::Event(event));
                    }
                    Some(_) => {}
                    // Dropped for lagging, or the router restarted: register again and read the gap.
                    None => self.subscription = None,
                },
                () = heartbeat => {
                    self.heartbeat = tokio::time::Instant::now() + Duration::from_millis(HOOK_STREAM_PROGRESS_MS);
                    // Everything the router dispatched is in the channel before its dispatch point moves: with the
                    // channel empty and still registered, nothing up to that point is owed.
                    if let Some(through) = self.handle.progress(subscription)
                        && subscription.events.is_empty()
                    {
                        self.next = self.next.max(through + 1);
                    }
                    return Ok(StreamItem::Progress(self.next));
                }
            }
        }
    }

    /// Reads the log from `next` up to `through` (at most a page), keeping what matches.
    fn catch_up(&mut self, through: u64) -> Result<(), WireError> {
        let reader = self.storage.reader()?;
        let page = reader
            .hook_log(self.next, HOOK_STREAM_CATCH_UP_MAX)
            .map_err(|fault| WireError::internal(fault.to_string()))?;
        if self.next < page.floor {
            return Err(compacted(self.next, page.floor));
        }
        let mut read_any = false;
        for event in page.events {
            if event.seq > through {
                break;
            }
            read_any = true;
            self.next = event.seq + 1;
            if subject::matches(&self.pattern, &event.subject) {
                self.ready.push_back(Arc::new(event));
            }
        }
        if !read_any {
            // The log holds nothing up to the dispatch point (it cannot: the router read it there). Move on rather
            // than spin; the router's channel has everything after it.
            self.next = through + 1;
        }
        Ok(())
    }
}

fn compacted(requested: u64, floor: u64) -> WireError {
    WireError::new(
        ErrorCode::Compacted,
        format!("sequence {requested} was trimmed from the hook log, which starts at {floor}"),
    )
}
