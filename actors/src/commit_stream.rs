//! The node's commit stream: what every applied entry changed, in log order, for the coordination waiters, the
//! plugins, the blob repair, watches and next the hook router.
//!
//! There is one stream per node, held by the [`StorageHandle`], so subscribers live through storage and raft restarts:
//! the state machine of whichever database is open publishes on it. Each item is one applied entry ([`Committed`]):
//! its log index, the KV revision after it, its KV events (every event of a revision comes from one command, so one
//! item holds whole revisions), its coordination events (plugin lifecycle changes among them) and, for a membership
//! change, the new voters and learners.
//!
//! A live subscription is a bounded broadcast: a subscriber that falls more than [`COMMIT_STREAM_CAPACITY`] entries
//! behind is told it lagged. A [`KvFeed`] (a subscription from a revision) never loses an event that way: it reads
//! whatever it missed from the history (`pando_protocol::watch`), so it replays, then follows live, and catches up
//! from the history again after a lag, a storage restart, or an idle spell in which the store moved on without it.
//! Revisions are consecutive, so a gap is always noticed: a feed either delivers every revision from its start, in
//! order, each whole and once, or answers [`FeedError::Compacted`] when the history no longer holds the next one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pando_protocol::coord::CoordEvent;
use pando_protocol::error::{ErrorCode, ErrorDetail, WireError};
use pando_protocol::hook::HookEvent;
use pando_protocol::state_machine::StorageFault;
use pando_protocol::watch::KvEvent;
use tokio::sync::broadcast;
use tokio::time::{Instant, Sleep};

use crate::storage::HistoryPage;
use crate::storage_actor::StorageHandle;

/// Applied entries the live stream buffers for a slow subscriber before it is told it lagged.
pub const COMMIT_STREAM_CAPACITY: usize = 1024;
/// Events one catch-up read takes from the history (whole revisions: it may take one revision's worth more).
pub const FEED_CATCH_UP_EVENTS_MAX: usize = 1024;
/// How long a feed waits on the live stream before it looks whether the store moved on without telling it (an entry
/// applied by a storage instance that stopped before publishing).
pub const FEED_IDLE_CHECK_MS: u64 = 1_000;

/// What one applied entry changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// The entry's log index.
    pub index: u64,
    /// The KV revision once the entry is applied.
    pub revision: u64,
    /// Its KV changes, revision by revision, in order: shared by every feed that delivers them, so a revision's events
    /// are built (and framed for a watch) once per node, not once per watcher.
    pub kv: Vec<Arc<RevisionEvents>>,
    /// Its coordination events, in order (plugin lifecycle changes among them: `CoordEvent::PluginChanged`).
    pub coord: Vec<CoordEvent>,
    /// The membership the entry committed, when it is a membership change.
    pub membership: Option<MembershipChange>,
    /// Everything above as the hook log recorded it (plus user events and hook notices), in sequence order: what the
    /// hook router delivers.
    pub hooks: Vec<Arc<HookEvent>>,
}

/// A membership change as committed: who votes and who learns from then on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub voters: std::collections::BTreeSet<u64>,
    pub learners: std::collections::BTreeSet<u64>,
}

/// The sending side, shared by every state machine the node opens.
#[derive(Clone)]
pub struct CommitStream {
    sender: broadcast::Sender<Arc<Committed>>,
    /// Counts applied entries that took a grant away (a token revoked, a membership change): a connection that
    /// verified its caller before the count moved checks again before its next request.
    grants_epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for CommitStream {
    fn default() -> CommitStream {
        CommitStream { sender: broadcast::channel(COMMIT_STREAM_CAPACITY).0, grants_epoch: Arc::default() }
    }
}

impl CommitStream {
    /// Follows the stream from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.sender.subscribe()
    }

    /// How many applied entries took a grant away so far (see the field).
    pub fn grants_epoch(&self) -> u64 {
        self.grants_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publishes one applied entry (nobody listening is fine: the history and the log hold it too).
    pub(crate) fn publish(&self, committed: Committed) {
        if committed.kv.is_empty()
            && committed.coord.is_empty()
            && committed.membership.is_none()
            && committed.hooks.is_empty()
        {
            return;
        }
        // Before anyone hears of the entry (and so before the proposer's answer): once a revocation is acknowledged,
        // no connection of this node serves the token on what it verified earlier.
        if committed.membership.is_some()
            || committed.coord.iter().any(|event| matches!(event, CoordEvent::TokenRevoked { .. }))
        {
            self.grants_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = self.sender.send(Arc::new(committed));
    }
}

/// Every event of one revision.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<KvEvent>,
    /// The revision as one watch frame body (every event, no previous entries), encoded by the first watch that sends
    /// it whole and shared by every other: with a thousand watchers on a prefix, a revision is encoded once, not a
    /// thousand times. Filled and read only by the watch stream (`rpc::watch`).
    pub whole_frame: OnceLock<Arc<[u8]>>,
}

impl RevisionEvents {
    pub fn new(revision: u64, events: Vec<KvEvent>) -> RevisionEvents {
        RevisionEvents { revision, events, whole_frame: OnceLock::new() }
    }

    /// Events (in order, whole revisions) grouped by revision, moved, not copied.
    pub fn group(events: Vec<KvEvent>) -> Vec<Arc<RevisionEvents>> {
        let mut groups: Vec<RevisionEvents> = Vec::new();
        for event in events {
            match groups.last_mut() {
                Some(group) if group.revision == event.revision() => group.events.push(event),
                _ => groups.push(RevisionEvents::new(event.revision(), vec![event])),
            }
        }
        groups.into_iter().map(Arc::new).collect()
    }
}

/// Two revisions are equal when their events are (the encoding cache is not part of what they are).
impl PartialEq for RevisionEvents {
    fn eq(&self, other: &RevisionEvents) -> bool {
        self.revision == other.revision && self.events == other.events
    }
}

impl Eq for RevisionEvents {}

/// Why a feed cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The history no longer holds `requested`: it starts at `compacted`; the store is at `current`.
    #[error("revision {requested} is compacted: the history starts at revision {compacted} (current {current})")]
    Compacted { requested: u64, compacted: u64, current: u64 },
    #[error("storage is not available: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(StorageFault),
}

impl From<FeedError> for WireError {
    fn from(error: FeedError) -> WireError {
        match &error {
            FeedError::Compacted { compacted, current, .. } => WireError::new(ErrorCode::Compacted, error.to_string())
                .with_detail(ErrorDetail::Compacted { compacted: *compacted, current: *current }),
            FeedError::Unavailable(_) => WireError::new(ErrorCode::Unavailable, error.to_string()),
            FeedError::Storage(fault) => WireError::internal(fault.to_string()),
        }
    }
}

/// The KV changes from one revision on: history first, then live, with no gap and no repeat.
pub struct KvFeed {
    storage: StorageHandle,
    live: broadcast::Receiver<Arc<Committed>>,
    /// The next revision to deliver: every revision before it was delivered (or skipped as empty of matches by the
    /// caller, who sees each one).
    next: u64,
    /// Revisions read ahead, in order.
    pending: VecDeque<Arc<RevisionEvents>>,
    /// Whether the history may hold revisions at or after `next` that the live stream will not bring.
    behind: bool,
    /// When the feed last heard from the live stream (or looked at the store): after [`FEED_IDLE_CHECK_MS`] of quiet
    /// it looks whether the store moved on without telling it.
    heard: Instant,
    idle_check: Option<Pin<Box<Sleep>>>,
}

const IDLE_CHECK: Duration = Duration::from_millis(FEED_IDLE_CHECK_MS);

impl KvFeed {
    /// A feed starting at `from` (which may be in the future: it then waits for it). Subscribes before it reads
    /// anything, so nothing committed from now on can slip between the history and the live stream.
    pub fn new(storage: StorageHandle, from: u64) -> KvFeed {
        let live = storage.subscribe();
        KvFeed {
            storage,
            live,
            next: from.max(1),
            pending: VecDeque::new(),
            behind: true,
            heard: Instant::now(),
            idle_check: None,
        }
    }

    /// The next revision this feed will deliver: every change before it has been delivered.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The next revision's events, all of them, waiting as long as it takes (bound it with a timeout).
    pub async fn next(&mut self) -> Result<Arc<RevisionEvents>, FeedError> {
        loop {
            if let Some(revision) = self.try_next()? {
                return Ok(revision);
            }
            // One timer for the feed's whole life, re-armed only when it fires: a busy feed (woken by the live stream
            // for every revision) does not set and clear a timer per revision.
            let idle = self.idle_check.get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_CHECK)));
            tokio::select! {
                // Biased: the same order every run (the simulator replays a seed exactly).
                biased;
                live = self.live.recv() => {
                    self.heard = Instant::now();
                    match live {
                        Ok(committed) => self.take_live(&committed),
                        Err(broadcast::error::RecvError::Lagged(_)) => self.behind = true,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Err(FeedError::Unavailable("the commit stream closed".into()));
                        }
                    }
                }
                () = idle.as_mut() => {
                    let quiet_until = self.heard + IDLE_CHECK;
                    if Instant::now() < quiet_until {
                        idle.as_mut().reset(quiet_until);
                    } else {
                        idle.as_mut().reset(Instant::now() + IDLE_CHECK);
                        self.heard = Instant::now();
                        let current = self.reader()?.revision().map_err(FeedError::Storage)?;
                        self.behind = current >= self.next;
                    }
                }
            }
        }
    }

    /// The next revision if one is at hand without waiting: read ahead, in the history, or on the live stream already.
    pub fn try_next(&mut self) -> Result<Option<Arc<RevisionEvents>>, FeedError> {
        loop {
            if let Some(revision) = self.pending.pop_front() {
                self.next = revision.revision + 1;
                return Ok(Some(revision));
            }
            if self.behind {
                self.catch_up()?;
                if self.pending.is_empty() && self.behind {
                    return Err(FeedError::Storage(StorageFault(format!(
                        "the history holds nothing at revision {} but says it is incomplete",
                        self.next
                    ))));
                }
                continue;
            }
            match self.live.try_recv() {
                Ok(committed) => {
                    self.heard = Instant::now();
                    self.take_live(&committed);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.behind = true,
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Err(FeedError::Unavailable("the commit stream closed".into()));
                }
            }
        }
    }

    /// Queues the live entry's revisions this feed has not delivered; a revision after a missing one means the
    /// history must fill the gap first (it holds the entry too, so the entry itself is dropped here).
    fn take_live(&mut self, committed: &Committed) {
        let mut expected = self.next;
        let mut taken = Vec::new();
        for events in &committed.kv {
            let revision = events.revision;
            if revision < expected {
                continue;
            }
            if crate::sim::planted_bug(crate::sim::PlantedBug::SkipRevision) && revision % 7 == 0 {
                expected = revision + 1;
                continue;
            }
            if revision > expected {
                self.behind = true;
                return;
            }
            taken.push(events.clone());
            expected = revision + 1;
        }
        self.pending.extend(taken);
    }

    /// Reads whole revisions from `next` on from the history.
    fn catch_up(&mut self) -> Result<(), FeedError> {
        let page = self.reader()?.history(self.next, FEED_CATCH_UP_EVENTS_MAX).map_err(FeedError::Storage)?;
        let HistoryPage { events, compacted, current, complete } = page;
        if self.next < compacted && self.next <= current {
            return Err(FeedError::Compacted { requested: self.next, compacted, current });
        }
        let mut expected = self.next;
        for events in RevisionEvents::group(events) {
            let revision = events.revision;
            if revision != expected {
                // Revisions are consecutive from the compacted one: a hole is a bug or corruption, never skipped.
                return Err(FeedError::Storage(StorageFault(format!(
                    "the history jumps from revision {expected} to {revision}"
                ))));
            }
            self.pending.push_back(events);
            expected = revision + 1;
        }
        self.behind = !complete;
        Ok(())
    }

    fn reader(&self) -> Result<crate::storage::StateReader, FeedError> {
        self.storage.reader().map_err(|unavailable| FeedError::Unavailable(unavailable.to_string()))
    }
}

#[cfg(test)]
mod tests;
