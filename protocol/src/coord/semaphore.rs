//! Counting semaphores: up to `capacity` permits, held by leases. The capacity is fixed by the first acquisition (a
//! later acquisition naming another capacity is refused); permits return when their holder releases them or its lease
//! ends. Every acquisition gets a fencing token larger than every earlier token of that semaphore.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::lease::{LEASE_ATTACHMENTS_COUNT_MAX, attachments, load_for, save_lease};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Largest capacity a semaphore may have.
pub const SEMAPHORE_CAPACITY_MAX: u32 = 1_000_000;
/// Most distinct holders one semaphore tracks.
pub const SEMAPHORE_HOLDERS_COUNT_MAX: usize = 1_024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreHolder {
    pub lease: u64,
    pub permits: u32,
    pub token: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreInfo {
    pub name: Bytes,
    /// 0 until the first acquisition fixes it.
    pub capacity: u32,
    pub holders: Vec<SemaphoreHolder>,
    pub last_token: u64,
}

impl SemaphoreInfo {
    pub fn used(&self) -> u32 {
        self.holders.iter().map(|holder| holder.permits).sum()
    }
}

pub(crate) fn validate(permits: u32, capacity: u32) -> Result<(), WireError> {
    if capacity == 0 || capacity > SEMAPHORE_CAPACITY_MAX {
        return Err(WireError::invalid(format!("capacity must be between 1 and {SEMAPHORE_CAPACITY_MAX}")));
    }
    if permits == 0 || permits > capacity {
        return Err(WireError::invalid(format!("permits must be between 1 and the capacity {capacity}")));
    }
    Ok(())
}

fn semaphore_key(name: &[u8]) -> Vec<u8> {
    with(keys::SEMAPHORE, name)
}

fn load_semaphore(store: &impl CoordRead, name: &[u8]) -> Result<SemaphoreInfo, StorageFault> {
    Ok(load(store, &semaphore_key(name))?
        .unwrap_or_else(|| SemaphoreInfo { name: Bytes::from(name.to_vec()), ..SemaphoreInfo::default() }))
}

fn save_semaphore(store: &mut impl CoordWrite, semaphore: &SemaphoreInfo) -> Result<(), StorageFault> {
    if semaphore.holders.is_empty() && semaphore.last_token == 0 {
        store.coord_delete(&semaphore_key(&semaphore.name)).map(|_| ())
    } else {
        save(store, &semaphore_key(&semaphore.name), semaphore)
    }
}

pub(crate) fn acquire(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
    permits: u32,
    capacity: u32,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut lease = match load_for(store, lease_id, name)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    let mut semaphore = load_semaphore(store, name)?;
    if semaphore.capacity != 0 && semaphore.capacity != capacity {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("the semaphore's capacity is {}, not {capacity}", semaphore.capacity),
        )));
    }
    if semaphore.holders.iter().any(|holder| holder.lease == lease_id) {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("lease {lease_id} already holds permits of this semaphore; release them first"),
        )));
    }
    let used = semaphore.used();
    if used + permits > capacity {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("{used} of {capacity} permits are taken; {permits} more do not fit"),
        )));
    }
    if semaphore.holders.len() >= SEMAPHORE_HOLDERS_COUNT_MAX || attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large("too many holders or attachments")));
    }
    let Some(token) = semaphore.last_token.checked_add(1) else {
        return Ok(Err(WireError::new(ErrorCode::Conflict, "semaphore has used every token")));
    };
    semaphore.capacity = capacity;
    semaphore.last_token = token;
    semaphore.holders.push(SemaphoreHolder { lease: lease_id, permits, token });
    save_semaphore(store, &semaphore)?;
    lease.semaphores.push(Bytes::from(name.to_vec()));
    save_lease(store, &lease)?;
    store.emit(CoordEvent::SemaphoreAcquired { name: Bytes::from(name.to_vec()), lease: lease_id, permits, token });
    Ok(Ok(CoordResponse::Semaphore { semaphore }))
}

pub(crate) fn release(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if !release_by_lease(store, name, lease_id)? {
        return Ok(Err(WireError::new(ErrorCode::Conflict, format!("lease {lease_id} holds no permits here"))));
    }
    super::lease::forget(store, lease_id, super::lease::Held::Semaphore, name)?;
    Ok(Ok(CoordResponse::Released))
}

/// Returns the permits `lease_id` holds (the lease's own list is the caller's business); says whether it held any.
pub(crate) fn release_by_lease(store: &mut impl CoordWrite, name: &[u8], lease_id: u64) -> Result<bool, StorageFault> {
    let mut semaphore = load_semaphore(store, name)?;
    let before = semaphore.holders.len();
    semaphore.holders.retain(|holder| holder.lease != lease_id);
    if semaphore.holders.len() == before {
        return Ok(false);
    }
    save_semaphore(store, &semaphore)?;
    store.emit(CoordEvent::SemaphoreReleased { name: Bytes::from(name.to_vec()), lease: lease_id });
    Ok(true)
}

/// Whether one of the semaphore's holders holds its permits with `token`.
pub(crate) fn holds_token(store: &impl CoordRead, name: &[u8], token: u64) -> Result<bool, StorageFault> {
    Ok(load_semaphore(store, name)?.holders.iter().any(|holder| holder.token == token))
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::Semaphore { semaphore: load_semaphore(store, name)? }))
}
