//! Locks with fencing tokens. A lock is held by a lease; it is released by its holder, or when the lease is revoked or
//! lapses. Every acquisition's token is larger than every earlier token of that lock, so a resource that remembers the
//! largest token it has seen can refuse a holder whose lock was lost.

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::lease::{LEASE_ATTACHMENTS_COUNT_MAX, load_for, save_lease};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub lease: u64,
    pub token: u64,
    /// Log-clock time of the acquisition.
    pub acquired_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: Bytes,
    pub holder: Option<LockHolder>,
    /// The largest token this lock has handed out (0: never taken).
    pub last_token: u64,
}

/// Most locks (and, apart, read-write locks) one `LockList` answer carries.
pub const LOCK_LIST_COUNT_MAX: usize = 1_000;
/// Most rows one listing reads looking for held locks (released locks keep their row, for their last token).
pub const LOCK_LIST_SCAN_ROWS_MAX: usize = 10_000;
const _: () = assert!(LOCK_LIST_COUNT_MAX <= LOCK_LIST_SCAN_ROWS_MAX);

fn lock_key(name: &[u8]) -> Vec<u8> {
    with(keys::LOCK, name)
}

fn load_lock(store: &impl CoordRead, name: &[u8]) -> Result<LockInfo, StorageFault> {
    Ok(load(store, &lock_key(name))?
        .unwrap_or_else(|| LockInfo { name: Bytes::from(name.to_vec()), ..LockInfo::default() }))
}

pub(crate) fn acquire(
    store: &mut impl CoordWrite,
    now: u64,
    name: &[u8],
    lease_id: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let mut lease = match load_for(store, lease_id, name)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    let mut lock = load_lock(store, name)?;
    if let Some(holder) = &lock.holder {
        if holder.lease == lease_id {
            return Ok(Ok(CoordResponse::Lock { lock }));
        }
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "lock `{}` is held by lease {} with token {}",
                String::from_utf8_lossy(name),
                holder.lease,
                holder.token
            ),
        )));
    }
    if super::lease::attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!(
            "lease {lease_id} already holds {LEASE_ATTACHMENTS_COUNT_MAX} things"
        ))));
    }
    let Some(token) = lock.last_token.checked_add(1) else {
        return Ok(Err(WireError::new(ErrorCode::Conflict, "lock has used every token")));
    };
    lock.last_token = token;
    lock.holder = Some(LockHolder { lease: lease_id, token, acquired_ms: now });
    save(store, &lock_key(name), &lock)?;
    lease.locks.push(Bytes::from(name.to_vec()));
    save_lease(store, &lease)?;
    store.emit(CoordEvent::LockAcquired { name: Bytes::from(name.to_vec()), lease: lease_id, token });
    Ok(Ok(CoordResponse::Lock { lock }))
}

pub(crate) fn release(
    store: &mut impl CoordWrite,
    name: &[u8],
    lease_id: u64,
    token: u64,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let lock = load_lock(store, name)?;
    match &lock.holder {
        Some(holder) if holder.lease == lease_id && holder.token == token => {}
        Some(holder) => {
            return Ok(Err(WireError::new(
                ErrorCode::Conflict,
                format!(
                    "lock is held by lease {} with token {}, not by lease {lease_id} with token {token}",
                    holder.lease, holder.token
                ),
            )));
        }
        None => return Ok(Err(WireError::new(ErrorCode::Conflict, "lock is not held"))),
    }
    release_by_lease(store, name, lease_id)?;
    super::lease::forget(store, lease_id, super::lease::Held::Lock, name)?;
    Ok(Ok(CoordResponse::Released))
}

/// Frees `name` if `lease_id` holds it (the lease's own list is the caller's business). The last token is kept.
pub(crate) fn release_by_lease(store: &mut impl CoordWrite, name: &[u8], lease_id: u64) -> Result<(), StorageFault> {
    let mut lock = load_lock(store, name)?;
    if let Some(holder) = lock.holder.take_if(|holder| holder.lease == lease_id) {
        save(store, &lock_key(name), &lock)?;
        store.emit(CoordEvent::LockReleased { name: Bytes::from(name.to_vec()), lease: lease_id, token: holder.token });
    }
    Ok(())
}

pub(crate) fn get(store: &impl CoordRead, name: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(Ok(CoordResponse::Lock { lock: load_lock(store, name)? }))
}

/// The token `name` is held with now, if held: what a fencing condition compares against.
pub fn current_token(store: &impl CoordRead, name: &[u8]) -> Result<Option<u64>, StorageFault> {
    Ok(load_lock(store, name)?.holder.map(|holder| holder.token))
}

/// The locks and read-write locks held now whose names start with `prefix`, in name order.
pub(crate) fn list(store: &impl CoordRead, prefix: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (locks, locks_cut) = super::load_under_where(
        store,
        &lock_key(prefix),
        LOCK_LIST_COUNT_MAX,
        LOCK_LIST_SCAN_ROWS_MAX,
        |lock: &LockInfo| lock.holder.is_some(),
    )?;
    let (rwlocks, rwlocks_cut) = super::load_under_where(
        store,
        &with(keys::RWLOCK, prefix),
        LOCK_LIST_COUNT_MAX,
        LOCK_LIST_SCAN_ROWS_MAX,
        |rwlock: &super::RwLockInfo| rwlock.writer.is_some() || !rwlock.readers.is_empty(),
    )?;
    Ok(Ok(CoordResponse::Locks { locks, rwlocks, truncated: locks_cut || rwlocks_cut }))
}
