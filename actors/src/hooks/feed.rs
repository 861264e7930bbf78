//! Every event of the hook log from one sequence on, in order, each once: the log first, then live from the commit
//! stream, catching up from the log again after a lag, a storage restart or an idle spell in which the store moved on
//! without telling it (the same shape as [`KvFeed`](crate::commit_stream::KvFeed)). Sequences are consecutive, so a
//! gap is always noticed; a feed that asks for what the log no longer holds answers
//! [`FeedError::Compacted`](crate::commit_stream::FeedError).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::hook::HookEvent;
use pando_protocol::limits::HOOK_STREAM_CATCH_UP_MAX;
use tokio::sync::broadcast;

use crate::commit_stream::{Committed, FEED_IDLE_CHECK_MS, FeedError};
use crate::storage_actor::StorageHandle;

pub struct HookFeed {
    storage: StorageHandle,
    live: broadcast::Receiver<Arc<Committed>>,
    /// The next sequence to deliver.
    next: u64,
    pending: VecDeque<Arc<HookEvent>>,
    /// Whether the log may hold events at or after `next` that the live stream will not bring.
    behind: bool,
}

impl HookFeed {
    /// A feed from `from` (0: the next event to commit). Subscribes before it reads, so nothing slips between.
    pub fn new(storage: StorageHandle, from: u64) -> Result<HookFeed, FeedError> {
        let live = storage.subscribe();
        let next = match from {
            0 => {
                let reader = storage.reader().map_err(|unavailable| FeedError::Unavailable(unavailable.to_string()))?;
                reader.hook_log(u64::MAX, 0).map_err(FeedError::Storage)?.next
            }
            from => from,
        };
        Ok(HookFeed { storage, live, next, pending: VecDeque::new(), behind: true })
    }

    /// The next sequence this feed will deliver.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next event, waiting as long as it takes (bound it with a timeout).
    pub async fn next(&mut self) -> Result<Arc<HookEvent>, FeedError> {
        loop {
            if let Some(event) = self.try_next()? {
                return Ok(event);
            }
            tokio::select! {
                biased;
                live = self.live.recv() => match live {
                    Ok(committed) => self.take_live(&committed),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.behind = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(FeedError::Unavailable("the commit stream closed".into()));
                    }
                },
                () = tokio::time::sleep(Duration::from_millis(FEED_IDLE_CHECK_MS)) => self.behind = true,
            }
        }
    }

    /// The next event if one is at hand without waiting.
    pub fn try_next(&mut self) -> Result<Option<Arc<HookEvent>>, FeedError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.next = event.seq + 1;
                return Ok(Some(event));
            }
            if self.behind {
                self.catch_up()?;
                if self.pending.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            match self.live.try_recv() {
                Ok(committed) => self.take_live(&committed),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.behind = true,
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Err(FeedError::Unavailable("the commit stream closed".into()));
                }
            }
        }
    }

    fn take_live(&mut self, committed: &Committed) {
        let mut expected = self.next + self.pending.len() as u64;
        for event in &committed.hooks {
            if event.seq < expected {
                continue;
            }
            if event.seq > expected {
                // Something came between that this feed did not see live: the log has it.
                self.behind = true;
                self.pending.clear();
                return;
            }
            self.pending.push_back(event.clone());
            expected += 1;
        }
    }

    fn catch_up(&mut self) -> Result<(), FeedError> {
        let reader = self.storage.reader().map_err(|unavailable| FeedError::Unavailable(unavailable.to_string()))?;
        let page = reader.hook_log(self.next, HOOK_STREAM_CATCH_UP_MAX).map_err(FeedError::Storage)?;
        if self.next < page.floor {
            return Err(FeedError::Compacted { requested: self.next, compacted: page.floor, current: page.next - 1 });
        }
        let mut expected = self.next;
        for event in page.events {
            if event.seq != expected {
                return Err(FeedError::Storage(pando_protocol::state_machine::StorageFault(format!(
                    "the hook log jumps from sequence {expected} to {}",
                    event.seq
                ))));
            }
            expected += 1;
            self.pending.push_back(Arc::new(event));
        }
        self.behind = expected < page.next;
        Ok(())
    }
}
