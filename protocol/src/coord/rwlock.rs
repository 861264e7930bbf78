//! Read-write locks held by leases: many readers or one writer. A writer waits for no one and starves no one here
//! (acquisitions never queue in the state machine; a parked writer is served by the node like a lock waiter). Every
//! write acquisition gets a fencing token larger than every earlier one; a downgrade keeps the writer's token.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::lease::{LEASE_ATTACHMENTS_COUNT_MAX, attachments, load_for, save_lease};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Most readers one read-write lock tracks.
pub const RWLOCK_READERS_COUNT_MAX: usize = 1_024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLockWriter {
    pub lease: u64,
    pub token: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwLockInfo {
    pub name: Bytes,
    pub writer: Option<RwLockWriter>,
    /// Leases holding it for reading.
    pub readers: Vec<u64>,
    /// The largest write token handed out.
    pub last_token: u64,
}

/// How a lease wants to hold a read-write lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RwMode {
    Read,
    Write,
}

fn rwlock_key(name: &[u8]) -> Vec<u8> {
    with(keys::RWLOCK, name)
}

fn load_rwlock(store: &impl CoordRead, name: &[u8]) -> Result<RwLockInfo, StorageFault> {
    Ok(load(store, &rwlock_key(name))?
        .unwrap_or_else(|| RwLockInfo { name: Bytes::from(name.to_vec()), ..RwLockInfo::default() }))
}

/// The token of the write hold, if someone holds it for writing.
pub(crate) fn write_token(store: &impl CoordRead, name: &[u8]) -> Result<Option<u64>, StorageFault> {
    Ok(load_rwlock(store, name)?.writer.map(|writer| writer.token))
}

fn conflict(message: String) -> WireError {
    WireError::new(ErrorCode::Conflict, message)
}

pub(crate) fn acquire(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
    mode: RwMode,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut lease = match load_for(store, lease_id, name)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    let mut rwlock = load_rwlock(store, name)?;
    let holds =
        rwlock.writer.as_ref().is_some_and(|writer| writer.lease == lease_id) || rwlock.readers.contains(&lease_id);
    if holds {
        return Ok(Err(conflict(format!("lease {lease_id} already holds this lock; release or downgrade it"))));
    }
    if let Some(writer) = &rwlock.writer {
        return Ok(Err(conflict(format!("held for writing by lease {} with token {}", writer.lease, writer.token))));
    }
    match mode {
        RwMode::Read => {
            if rwlock.readers.len() >= RWLOCK_READERS_COUNT_MAX {
                return Ok(Err(WireError::too_large(format!("{RWLOCK_READERS_COUNT_MAX} readers hold it already"))));
            }
        }
        RwMode::Write if !rwlock.readers.is_empty() => {
            return Ok(Err(conflict(format!("held for reading by {} leases", rwlock.readers.len()))));
        }
        RwMode::Write => {}
    }
    if attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("lease {lease_id} holds {LEASE_ATTACHMENTS_COUNT_MAX} things"))));
    }
    match mode {
        RwMode::Read => rwlock.readers.push(lease_id),
        RwMode::Write => {
            let Some(token) = rwlock.last_token.checked_add(1) else {
                return Ok(Err(conflict("the lock has used every token".into())));
            };
            rwlock.last_token = token;
            rwlock.writer = Some(RwLockWriter { lease: lease_id, token });
        }
    }
    save(store, &rwlock_key(name), &rwlock)?;
    lease.rwlocks.push(Bytes::from(name.to_vec()));
    save_lease(store, &lease)?;
    store.emit(CoordEvent::RwLockAcquired { name: Bytes::from(name.to_vec()), lease: lease_id, mode });
    Ok(Ok(CoordResponse::RwLock { rwlock }))
}

/// Turns the lease's write hold into a read hold, atomically (no writer can slip in between).
pub(crate) fn downgrade(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut rwlock = load_rwlock(store, name)?;
    if rwlock.writer.take_if(|writer| writer.lease == lease_id).is_none() {
        return Ok(Err(conflict(format!("lease {lease_id} does not hold this lock for writing"))));
    }
    rwlock.readers.push(lease_id);
    save(store, &rwlock_key(name), &rwlock)?;
    store.emit(CoordEvent::RwLockReleased { name: Bytes::from(name.to_vec()), lease: lease_id });
    Ok(Ok(CoordResponse::RwLock { rwlock }))
}

pub(crate) fn release(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if !release_by_lease(store, name, lease_id)? {
        return Ok(Err(conflict(format!("lease {lease_id} does not hold this lock"))));
    }
    super::lease::forget(store, lease_id, super::lease::Held::RwLock, name)?;
    Ok(Ok(CoordResponse::Released))
}

/// Drops whatever hold `lease_id` has (the lease's own list is the caller's business); says whether it had one.
pub(crate) fn release_by_lease(store: &mut impl CoordWrite, name: &[u8], lease_id: u64) -> Result<bool, StorageFault> {
    let mut rwlock = load_rwlock(store, name)?;
    let wrote = rwlock.writer.take_if(|writer| writer.lease == lease_id).is_some();
    let readers = rwlock.readers.len();
    rwlock.readers.retain(|reader| *reader != lease_id);
    if !wrote && rwlock.readers.len() == readers {
        return Ok(false);
    }
    save(store, &rwlock_key(name), &rwlock)?;
    store.emit(CoordEvent::RwLockReleased { name: Bytes::from(name.to_vec()), lease: lease_id });
    Ok(true)
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::RwLock { rwlock: load_rwlock(store, name)? }))
}
