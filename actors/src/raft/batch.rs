//! Who may start a batch of proposals, and the write of one batch through openraft.
//!
//! A batch holds one of [`PROPOSALS_IN_FLIGHT_MAX`] slots while openraft replicates and applies it. The RaftActor and
//! the direct path share the slots ([`Slots`]):
//! - **Direct:** a proposal that finds nothing waiting at the RaftActor and a free slot is written by the caller's
//!   own task ([`super::handle::RaftHandle::propose`]). Through the RaftActor it would cost the actor's mailbox, a
//!   spawned batch task and a reply back: three handoffs on a put's critical path, each a thread wakeup on a loaded
//!   2-core machine.
//! - **Group commit:** a proposal that finds others waiting or every slot taken queues at the RaftActor and leaves
//!   with the others in its next batch, one log entry (one fsync) for all of them.
//!
//! **Invariant:** a slot freed while proposals wait wakes the RaftActor ([`Slot`]'s drop), and the RaftActor takes a
//! slot only after it published how many wait. Both sides use sequentially consistent atomics, so either the actor
//! sees the freed slot or the slot's owner sees the waiting proposals: none waits for a slot that is free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pando_protocol::command::{Command, CommandResult, Proposal};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::limits::REQUEST_TIMEOUT_MS_MAX;
use ractor::ActorRef;

use super::raft_actor::{RaftMsg, not_leader, write_error};
use super::type_config::{NodeId, Raft};
use crate::clock::Clock;

/// Batches written concurrently; more proposals wait and join the next batch.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// Longest a batch holds its in-flight slot waiting for raft; past it the slot is free again (the batch's callers keep
/// waiting, up to their deadlines).
pub const PROPOSAL_WAIT_MS_MAX: u64 = 10_000;
const _: () = assert!(PROPOSAL_WAIT_MS_MAX < REQUEST_TIMEOUT_MS_MAX as u64);

/// The in-flight slots and the counts `pando actors` shows, shared by the RaftActor and the direct path.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    in_flight: AtomicUsize,
    /// Proposals waiting at the RaftActor (it publishes its queue's length after each change).
    pending: AtomicUsize,
    batches_total: AtomicU64,
    /// Batches of the direct path (one proposal each), among `batches_total`.
    direct_total: AtomicU64,
    commands_total: AtomicU64,
}

impl Slots {
    /// A slot for a batch of `commands` commands, if one is free.
    pub(super) fn take(self: &Arc<Self>, actor: &ActorRef<RaftMsg>, commands: usize) -> Option<Slot> {
        let taken = self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
            (count < PROPOSALS_IN_FLIGHT_MAX).then_some(count + 1)
        });
        taken.ok()?;
        self.batches_total.fetch_add(1, Ordering::Relaxed);
        Some(Slot { slots: self.clone(), actor: actor.clone(), commands })
    }

    /// A slot for one proposal of the caller's own, if nothing waits at the RaftActor (a waiting proposal goes first)
    /// and one is free.
    pub(super) fn direct(self: &Arc<Self>, actor: &ActorRef<RaftMsg>) -> Option<Slot> {
        if crate::sim::planted_bug(crate::sim::PlantedBug::AckBeforeCommit) {
            // The planted bug lives in the RaftActor's intake: every proposal goes there.
            return None;
        }
        if self.pending.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let slot = self.take(actor, 1)?;
        self.direct_total.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// The RaftActor's queue now holds `count` proposals.
    pub(super) fn set_pending(&self, count: usize) {
        self.pending.store(count, Ordering::SeqCst);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn batches_total(&self) -> u64 {
        self.batches_total.load(Ordering::Relaxed)
    }

    pub(super) fn direct_total(&self) -> u64 {
        self.direct_total.load(Ordering::Relaxed)
    }

    pub(super) fn commands_total(&self) -> u64 {
        self.commands_total.load(Ordering::Relaxed)
    }
}

/// One batch's hold of an in-flight slot. Dropped when the batch is answered, when it waited
/// [`PROPOSAL_WAIT_MS_MAX`], or when its task ends any other way (a panic cannot wedge the count).
pub(crate) struct Slot {
    slots: Arc<Slots>,
    actor: ActorRef<RaftMsg>,
    commands: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.commands_total.fetch_add(self.commands as u64, Ordering::Relaxed);
        self.slots.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.slots.pending.load(Ordering::SeqCst) > 0 {
            let _ = self.actor.cast(RaftMsg::SlotFreed);
        }
    }
}

/// Whether this node leads but is no longer in the membership it knows. openraft 0.9 keeps a leader that applied its
/// own removal leading until its next tick: in that window it takes writes it can never commit and asserts (in debug
/// builds) on a membership change. Such a leader is none: it answers `NOT_LEADER` (found by the simulator, seed 11).
fn removed_leader(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics.current_leader == Some(metrics.id) && !super::raft_actor::is_member(&metrics)
}

/// Writes `commands` as one log entry stamped by `clock` and answers their results in order (one error for all when
/// the write fails; `NOT_LEADER` from a [`removed_leader`]). `slot` is freed once openraft answers or after [`PROPOSAL_WAIT_MS_MAX`], whatever openraft does
/// with the entry: a write it never answers must not stop every later write on this node (the simulator saw two such
/// writes wedge a node, seed 5097). The answer is awaited for `longest` in all.
pub(super) async fn write_batch(
    raft: &Raft,
    node_id: NodeId,
    clock: Clock,
    commands: Vec<Command>,
    slot: Slot,
    longest: Duration,
) -> Result<Vec<CommandResult>, WireError> {
    if removed_leader(raft) {
        return Err(not_leader(None, None));
    }
    let count = commands.len();
    let write = raft.client_write(Proposal { stamp_ms: clock.now_ms(), commands });
    tokio::pin!(write);
    let first = longest.min(Duration::from_millis(PROPOSAL_WAIT_MS_MAX));
    let written = match tokio::time::timeout(first, &mut write).await {
        Ok(written) => written,
        Err(_) => {
            drop(slot);
            let rest = longest.saturating_sub(first);
            if !rest.is_zero() {
                tracing::warn!(node_id, commands = count, "a proposal got no answer from raft in time");
            }
            match tokio::time::timeout(rest, &mut write).await {
                Ok(written) => written,
                Err(_) => {
                    return Err(WireError::new(
                        ErrorCode::Timeout,
                        "write not committed before the deadline; it may or may not have been applied",
                    ));
                }
            }
        }
    };
    let mut results = written.map_err(write_error)?.data.results;
    if results.len() < count {
        let missing = Err(WireError::internal("state machine returned fewer results than commands"));
        results.resize(count, missing);
    }
    Ok(results)
}
