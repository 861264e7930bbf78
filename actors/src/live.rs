//! Handles that outlive the actors behind them.
//!
//! A supervised actor gets a new instance, and new resources (a database handle, a Raft core, a blob store), every
//! time it restarts. Other subsystems never hold those resources directly: they hold a typed handle
//! ([`StorageHandle`](crate::storage_actor::StorageHandle), [`RaftHandle`](crate::raft::RaftHandle), ...) that the tree
//! builds once and passes in their arguments. Inside each handle, a [`Live`] slot points at whatever its owning actor
//! published last: the owner publishes when it starts and retracts when it stops (or its successor replaces what a
//! panic left behind). A caller that finds the slot empty waits for the next publication within its own deadline, or
//! gets the one typed answer [`Unavailable`].
//!
//! **Invariant:** only the owning actor publishes or retracts its slot (`pub(crate)`, called from its `pre_start` and
//! `post_stop`); everyone else reads.
//!
//! **Invariant:** waiters wake in the order they started waiting. They wait on one `tokio::sync::Notify`, not on the
//! `watch` channel that holds the value: tokio spreads a watch channel's waiters over eight notifiers picked from a
//! per-process random seed, so several waiters woke in an order that changed from run to run, and a simulated run did
//! not replay from its seed (seed 11). The same holds for every wait on a Raft core's metrics
//! ([`RaftCore::wait_metrics`](crate::raft::RaftCore::wait_metrics)).

use std::sync::Arc;
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use tokio::sync::{Notify, watch};

/// A subsystem is not running on this node right now (it is starting, restarting or stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {subsystem} subsystem is not running on this node (it may be restarting); retry")]
pub struct Unavailable {
    pub subsystem: &'static str,
}

impl From<Unavailable> for WireError {
    fn from(unavailable: Unavailable) -> WireError {
        WireError::new(ErrorCode::Unavailable, unavailable.to_string())
    }
}

/// The current value a subsystem's owning actor published, shared by every clone.
pub struct Live<T> {
    subsystem: &'static str,
    slot: Arc<watch::Sender<Option<T>>>,
    /// Notified on every publication and retraction; waiters wait here, in arrival order.
    changed: Arc<Notify>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Live<T> {
        Live { subsystem: self.subsystem, slot: self.slot.clone(), changed: self.changed.clone() }
    }
}

impl<T: Clone> Live<T> {
    /// An empty slot for `subsystem` (named in [`Unavailable`]).
    pub fn new(subsystem: &'static str) -> Live<T> {
        Live { subsystem, slot: Arc::new(watch::Sender::new(None)), changed: Arc::default() }
    }

    pub fn subsystem(&self) -> &'static str {
        self.subsystem
    }

    /// What the owner published last, if it runs.
    pub fn current(&self) -> Option<T> {
        self.slot.borrow().clone()
    }

    /// What the owner published last, or [`Unavailable`] at once.
    pub fn get(&self) -> Result<T, Unavailable> {
        self.current().ok_or(Unavailable { subsystem: self.subsystem })
    }

    /// What the owner published last, waiting up to `within` for it to (re)start.
    pub async fn wait(&self, within: Duration) -> Result<T, Unavailable> {
        if let Some(value) = self.current() {
            return Ok(value);
        }
        let published = tokio::time::timeout(within, async {
            loop {
                // Registered before the check, so a publication between the two is not missed.
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if let Some(value) = self.current() {
                    return value;
                }
                changed.await;
            }
        });
        published.await.map_err(|_| Unavailable { subsystem: self.subsystem })
    }

    /// The owner started: callers get `value` from now on.
    pub(crate) fn publish(&self, value: T) {
        self.slot.send_replace(Some(value));
        self.changed.notify_waiters();
    }

    /// The owner stopped: callers wait (or get [`Unavailable`]) until the next publication. Answers what was there.
    pub(crate) fn retract(&self) -> Option<T> {
        let previous = self.slot.send_replace(None);
        self.changed.notify_waiters();
        previous
    }

    /// Retracts only what `is_mine` recognises: a successor may already have published its own value.
    pub(crate) fn retract_if(&self, is_mine: impl FnOnce(&T) -> bool) {
        let retracted = self.slot.send_if_modified(|slot| {
            if slot.as_ref().is_some_and(is_mine) {
                *slot = None;
                return true;
            }
            false
        });
        if retracted {
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_caller_waits_for_a_restarting_owner_within_its_deadline() {
        let live: Live<u32> = Live::new("storage");
        assert_eq!(live.get(), Err(Unavailable { subsystem: "storage" }));
        let owner = live.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            owner.publish(7);
        });
        assert_eq!(live.wait(Duration::from_millis(100)).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gets_unavailable_when_the_owner_does_not_come_back_in_time() {
        let live: Live<u32> = Live::new("raft");
        let answer = live.wait(Duration::from_millis(100)).await;
        assert_eq!(answer, Err(Unavailable { subsystem: "raft" }));
        let error = WireError::from(answer.unwrap_err());
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(error.message.contains("raft"), "{}", error.message);
    }

    #[test]
    fn an_owner_retracts_only_its_own_value() {
        let live: Live<u32> = Live::new("mesh");
        live.publish(1);
        // The successor published before the old owner's cleanup ran.
        live.publish(2);
        live.retract_if(|value| *value == 1);
        assert_eq!(live.current(), Some(2));
        live.retract_if(|value| *value == 2);
        assert_eq!(live.current(), None);
    }
}
