// Pando patch: message counts for observers (see PANDO-PATCH.md at the crate's root).

//! How many messages an actor was sent, how many it took out of its mailbox and finished, and how long the one in
//! its handler has run: what an operator needs to see a backlog or a stuck actor from outside, without asking the
//! actor (which cannot answer while it is stuck). Counting costs three relaxed atomic additions and two stores per
//! message, and one clock read when a handler starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::concurrency::Instant;

/// A snapshot of an actor's message counts ([`crate::ActorCell::message_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Messages sent and not yet taken out of the mailbox.
    pub queued: u64,
    /// Messages whose handler returned (or failed).
    pub handled: u64,
    /// How long the message in the handler has run; `None` when the actor waits for its next message.
    pub busy_for: Option<Duration>,
}

pub(crate) struct MessageCounters {
    /// Counted before the send, taken back when it fails, so `received <= sent` at every instant.
    sent: AtomicU64,
    received: AtomicU64,
    handled: AtomicU64,
    /// Nanoseconds from `born` to the start of the running handler, plus one; 0 while idle.
    busy_since: AtomicU64,
    born: Instant,
}

impl MessageCounters {
    pub(crate) fn new() -> MessageCounters {
        MessageCounters {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    pub(crate) fn sending(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn send_failed(&self) {
        self.sent.fetch_sub(1, Ordering::Relaxed);
    }

    /// A message left the mailbox and its handler starts; the handler ends (returns, fails or unwinds from a panic)
    /// when the guard is dropped.
    pub(crate) fn started(&self) -> Handling<'_> {
        self.received.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now().saturating_duration_since(self.born).as_nanos() as u64;
        self.busy_since.store(since.saturating_add(1), Ordering::Relaxed);
        Handling(self)
    }

    pub(crate) fn snapshot(&self) -> MessageCounts {
        let received = self.received.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        let busy_since = self.busy_since.load(Ordering::Relaxed);
        let busy_for = (busy_since != 0).then(|| {
            let now = Instant::now().saturating_duration_since(self.born);
            now.saturating_sub(Duration::from_nanos(busy_since - 1))
        });
        MessageCounts {
            queued: sent.saturating_sub(received),
            handled: self.handled.load(Ordering::Relaxed),
            busy_for,
        }
    }
}

/// One message in its handler: counted handled when dropped, also when the handler panics.
pub(crate) struct Handling<'a>(&'a MessageCounters);

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
        self.0.handled.fetch_add(1, Ordering::Relaxed);
    }
}
