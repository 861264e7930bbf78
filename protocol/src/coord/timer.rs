//! Timers of the log clock, for everything but lease deadlines (which have their own index): a queue delivery's
//! visibility timeout, a queue's memory of a deduplication id, a service registration's TTL, a blob's grace, a job's
//! start or lease, a cron schedule's next instant.
//!
//! A timer is one row `w/<deadline><kind><subject>`; rows sort by deadline, so the due ones are a prefix of the index
//! and the earliest one is what the leader waits for before proposing a tick. Whoever arms a timer remembers its
//! deadline in its own row and disarms exactly that key when the state changes first; a timer that fires anyway (it
//! should not) is checked against that row and ignored when stale.

use std::ops::ControlFlow;

use super::keys::{self, with};
use super::{CoordRead, CoordWrite};
use crate::state_machine::StorageFault;

/// Most timers one proposal fires; the next proposal fires the rest.
pub const TIMERS_PER_PROPOSAL_MAX: usize = 1_024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// A queue delivery's visibility ends: subject is the scoped queue name and the message id.
    Visibility = 1,
    /// A queue forgets a deduplication id: subject is the scoped queue name and the id.
    Dedup = 2,
    /// A service registration's TTL (or its grace as critical) ends: subject is the scoped service and the instance.
    Service = 3,
    /// An unreferenced blob's grace period ends: subject is the hash.
    BlobCollect = 4,
    /// A scheduled or retrying job's start: subject is the job id (8 bytes, big-endian).
    JobDue = 5,
    /// A running job attempt's lease: subject is the job id.
    JobLease = 6,
    /// A cron schedule's next instant: subject is the schedule's name.
    Cron = 7,
}

impl TimerKind {
    fn from_byte(byte: u8) -> Option<TimerKind> {
        match byte {
            1 => Some(TimerKind::Visibility),
            2 => Some(TimerKind::Dedup),
            3 => Some(TimerKind::Service),
            4 => Some(TimerKind::BlobCollect),
            5 => Some(TimerKind::JobDue),
            6 => Some(TimerKind::JobLease),
            7 => Some(TimerKind::Cron),
            _ => None,
        }
    }
}

fn timer_key(deadline_ms: u64, kind: TimerKind, subject: &[u8]) -> Vec<u8> {
    let mut key = with(keys::TIMER, &deadline_ms.to_be_bytes());
    key.push(kind as u8);
    key.extend_from_slice(subject);
    key
}

pub(crate) fn arm(
    store: &mut impl CoordWrite,
    deadline_ms: u64,
    kind: TimerKind,
    subject: &[u8],
) -> Result<(), StorageFault> {
    store.coord_put(&timer_key(deadline_ms, kind, subject), &[])
}

pub(crate) fn disarm(
    store: &mut impl CoordWrite,
    deadline_ms: u64,
    kind: TimerKind,
    subject: &[u8],
) -> Result<(), StorageFault> {
    store.coord_delete(&timer_key(deadline_ms, kind, subject)).map(|_| ())
}

/// Fires every timer due at `now` (at most [`TIMERS_PER_PROPOSAL_MAX`]), in deadline order.
pub(crate) fn fire_due(store: &mut impl CoordWrite, now: u64) -> Result<usize, StorageFault> {
    let mut due = Vec::new();
    store.coord_scan(keys::TIMER, &mut |key, _| {
        let rest = &key[keys::TIMER.len()..];
        let Some(deadline) = rest.get(..8).and_then(|bytes| bytes.try_into().ok()).map(u64::from_be_bytes) else {
            return ControlFlow::Continue(());
        };
        if deadline > now || due.len() >= TIMERS_PER_PROPOSAL_MAX {
            return ControlFlow::Break(());
        }
        due.push(key.to_vec());
        ControlFlow::Continue(())
    })?;
    for key in &due {
        store.coord_delete(key)?;
        let rest = &key[keys::TIMER.len()..];
        let deadline = u64::from_be_bytes(rest[..8].try_into().expect("checked above"));
        let subject = rest.get(9..).unwrap_or_default();
        match rest.get(8).copied().and_then(TimerKind::from_byte) {
            Some(TimerKind::Visibility) => super::queue::visibility_lapsed(store, deadline, subject)?,
            Some(TimerKind::Dedup) => super::queue::dedup_lapsed(store, deadline, subject)?,
            Some(TimerKind::Service) => super::service::ttl_lapsed(store, deadline, subject)?,
            Some(TimerKind::BlobCollect) => crate::blob::collect_lapsed(store, deadline, subject)?,
            Some(TimerKind::JobDue) => crate::job::apply::due(store, now, deadline, subject)?,
            Some(TimerKind::JobLease) => crate::job::apply::lapsed(store, now, deadline, subject)?,
            Some(TimerKind::Cron) => crate::job::apply::cron_fire(store, now, deadline, subject)?,
            None => return Err(StorageFault(format!("timer row of unknown kind: {key:?}"))),
        }
    }
    Ok(due.len())
}

/// The earliest timer's deadline, if any.
pub(crate) fn next_deadline(store: &impl CoordRead) -> Result<Option<u64>, StorageFault> {
    let mut next = None;
    store.coord_scan(keys::TIMER, &mut |key, _| {
        next =
            key.get(keys::TIMER.len()..keys::TIMER.len() + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        ControlFlow::Break(())
    })?;
    Ok(next)
}
