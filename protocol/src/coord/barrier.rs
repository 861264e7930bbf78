//! Double barriers: `parties` leases enter; when the last of them arrives the barrier opens for all of them (a
//! new generation), and it closes again, ready for the next round, once every one of them has left.
//!
//! The number of parties is fixed by the first enter of a round. An enter while a round is open (by a lease that is
//! not part of it) is refused with `CONFLICT` until that round is over; an enter by a lease already in the round
//! answers the same again, so a waiting enter can be retried. A lease that ends leaves every barrier it is in: before
//! the barrier opens it no longer counts, after it counts as having left.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::lease::{Held, LEASE_ATTACHMENTS_COUNT_MAX, attachments, forget, load_for, save_lease};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Most parties one barrier may have.
pub const BARRIER_PARTIES_MAX: u32 = 1_024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierInfo {
    pub name: Bytes,
    /// 0 when no round is under way.
    pub parties: u32,
    /// Rounds opened so far.
    pub generation: u64,
    /// Whether the current round has opened (every party entered) and not yet been left by all.
    pub open: bool,
    /// Leases in the current round: the ones that entered, or once open, the ones that have not left yet.
    pub members: Vec<u64>,
}

pub(crate) fn validate_parties(parties: u32) -> Result<(), WireError> {
    if !(1..=BARRIER_PARTIES_MAX).contains(&parties) {
        return Err(WireError::invalid(format!("parties must be between 1 and {BARRIER_PARTIES_MAX}")));
    }
    Ok(())
}

fn barrier_key(name: &[u8]) -> Vec<u8> {
    with(keys::BARRIER, name)
}

fn load_barrier(store: &impl CoordRead, name: &[u8]) -> Result<BarrierInfo, StorageFault> {
    Ok(load(store, &barrier_key(name))?
        .unwrap_or_else(|| BarrierInfo { name: Bytes::from(name.to_vec()), ..BarrierInfo::default() }))
}

fn save_barrier(store: &mut impl CoordWrite, barrier: &mut BarrierInfo) -> Result<(), StorageFault> {
    if barrier.members.is_empty() {
        barrier.parties = 0;
        barrier.open = false;
        if barrier.generation == 0 {
            return store.coord_delete(&barrier_key(&barrier.name)).map(|_| ());
        }
    }
    save(store, &barrier_key(&barrier.name), barrier)
}

pub(crate) fn enter(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
    parties: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut lease = match load_for(store, lease_id, name)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    let mut barrier = load_barrier(store, name)?;
    if barrier.members.contains(&lease_id) {
        return Ok(Ok(CoordResponse::Barrier { barrier }));
    }
    if barrier.open {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "round {} of the barrier is open; {} parties have yet to leave",
                barrier.generation,
                barrier.members.len()
            ),
        )));
    }
    if barrier.parties != 0 && barrier.parties != parties {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("this round of the barrier is for {} parties, not {parties}", barrier.parties),
        )));
    }
    if attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("lease {lease_id} holds {LEASE_ATTACHMENTS_COUNT_MAX} things"))));
    }
    barrier.parties = parties;
    barrier.members.push(lease_id);
    lease.barriers.push(Bytes::from(name.to_vec()));
    save_lease(store, &lease)?;
    store.emit(CoordEvent::BarrierEntered {
        name: Bytes::from(name.to_vec()),
        lease: lease_id,
        arrived: barrier.members.len() as u32,
    });
    if barrier.members.len() == parties as usize {
        barrier.open = true;
        barrier.generation += 1;
        store.emit(CoordEvent::BarrierOpened { name: Bytes::from(name.to_vec()), generation: barrier.generation });
    }
    save_barrier(store, &mut barrier)?;
    Ok(Ok(CoordResponse::Barrier { barrier }))
}

pub(crate) fn leave(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    match leave_by_lease(store, name, lease_id)? {
        Some(barrier) => {
            forget(store, lease_id, Held::Barrier, name)?;
            Ok(Ok(CoordResponse::Barrier { barrier }))
        }
        None => Ok(Err(WireError::new(ErrorCode::Conflict, format!("lease {lease_id} is not in this barrier")))),
    }
}

/// Takes `lease_id` out of the barrier (the lease's own list is the caller's business); `None` if it was not in it.
pub(crate) fn leave_by_lease(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Option<BarrierInfo>, StorageFault> {
    let mut barrier = load_barrier(store, name)?;
    let before = barrier.members.len();
    barrier.members.retain(|member| *member != lease_id);
    if barrier.members.len() == before {
        return Ok(None);
    }
    store.emit(CoordEvent::BarrierLeft { name: Bytes::from(name.to_vec()), lease: lease_id });
    if barrier.open && barrier.members.is_empty() {
        store.emit(CoordEvent::BarrierClosed { name: Bytes::from(name.to_vec()), generation: barrier.generation });
    }
    save_barrier(store, &mut barrier)?;
    Ok(Some(barrier))
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::Barrier { barrier: load_barrier(store, name)? }))
}
