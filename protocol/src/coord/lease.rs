//! Leases: a TTL that the holder keeps alive; when it lapses (judged against the log's clock) or is revoked, everything
//! attached to it (keys, locks, read-write locks, semaphore permits, leaderships, barrier places and service
//! registrations) is released in the same entry.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::keys::{self, with};
use super::{CoordEvent, CoordRead, CoordResponse, CoordWrite, load, save};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::{KvWrite, StorageFault};

/// Shortest TTL a lease may have.
pub const LEASE_TTL_MS_MIN: u64 = 1_000;
/// Longest TTL a lease may have.
pub const LEASE_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Most things (locks) one lease may hold.
pub const LEASE_ATTACHMENTS_COUNT_MAX: usize = 1_024;
/// Most leases one `LeaseList` answer carries.
pub const LEASE_LIST_COUNT_MAX: usize = 1_000;
/// Most lease rows one listing reads while looking for those of its prefix (leases are keyed by id, so a listing for
/// a prefix reads from the first lease on; past this it answers what it found, marked truncated).
pub const LEASE_LIST_SCAN_ROWS_MAX: usize = 10_000;
const _: () = assert!(LEASE_LIST_COUNT_MAX <= LEASE_LIST_SCAN_ROWS_MAX);
/// Most leases one proposal expires; the rest expire with the next one.
pub const EXPIRIES_PER_PROPOSAL_MAX: u32 = 1_024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: u64,
    /// The part of the keyspace the lease belongs to (empty: all of it): it holds only keys and names under it, and
    /// keeping it alive, revoking or reading it needs access to it.
    #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
    pub prefix: Bytes,
    pub ttl_ms: u64,
    /// The log-clock time (ms since the Unix epoch) at which the lease lapses unless kept alive.
    pub deadline_ms: u64,
    /// Locks the lease holds.
    pub locks: Vec<Bytes>,
    /// KV keys tied to the lease.
    #[serde(default)]
    pub keys: Vec<Bytes>,
    /// Semaphores the lease holds permits of.
    #[serde(default)]
    pub semaphores: Vec<Bytes>,
    /// Read-write locks the lease holds.
    #[serde(default)]
    pub rwlocks: Vec<Bytes>,
    /// Elections the lease leads.
    #[serde(default)]
    pub elections: Vec<Bytes>,
    /// Barriers the lease is in.
    #[serde(default)]
    pub barriers: Vec<Bytes>,
    /// Service registrations tied to the lease.
    #[serde(default)]
    pub services: Vec<super::service::ServiceRef>,
    /// Inodes the lease holds file locks on (a FUSE mount's session: see `crate::fs::locks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<u64>,
    /// Files the lease keeps open after their last unlink (a FUSE mount's session: see `crate::fs::kept`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<u64>,
}

pub(crate) fn validate_ttl(ttl_ms: u64) -> Result<(), WireError> {
    if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(WireError::invalid(format!(
            "lease TTL must be between {LEASE_TTL_MS_MIN} ms and {LEASE_TTL_MS_MAX} ms, got {ttl_ms} ms"
        )));
    }
    Ok(())
}

fn lease_key(id: u64) -> Vec<u8> {
    with(keys::LEASE, &id.to_be_bytes())
}

fn expiry_key(deadline_ms: u64, id: u64) -> Vec<u8> {
    let mut key = with(keys::EXPIRY, &deadline_ms.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn not_found(id: u64) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("lease {id} does not exist (expired or revoked)"))
}

pub(crate) fn load_lease(store: &impl CoordRead, id: u64) -> Result<Option<LeaseInfo>, StorageFault> {
    load(store, &lease_key(id))
}

pub(crate) fn save_lease(store: &mut impl CoordWrite, lease: &LeaseInfo) -> Result<(), StorageFault> {
    save(store, &lease_key(lease.id), lease)
}

pub(crate) fn grant(
    store: &mut impl CoordWrite,
    now: u64,
    ttl_ms: u64,
    prefix: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let id = match store.coord_get(keys::NEXT_LEASE)? {
        Some(bytes) => u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StorageFault("next lease row is not 8 bytes".into()))?,
        ),
        None => 1,
    };
    store.coord_put(keys::NEXT_LEASE, &(id + 1).to_be_bytes())?;
    let lease = LeaseInfo {
        id,
        prefix: Bytes::from(prefix.to_vec()),
        ttl_ms,
        deadline_ms: now.saturating_add(ttl_ms),
        locks: Vec::new(),
        keys: Vec::new(),
        semaphores: Vec::new(),
        rwlocks: Vec::new(),
        elections: Vec::new(),
        barriers: Vec::new(),
        services: Vec::new(),
        files: Vec::new(),
        kept: Vec::new(),
    };
    save_lease(store, &lease)?;
    store.coord_put(&expiry_key(lease.deadline_ms, id), &[])?;
    store.emit(CoordEvent::LeaseGranted { lease: id, deadline_ms: lease.deadline_ms });
    Ok(Ok(CoordResponse::Lease { lease }))
}

/// Lease `id` as a caller with access to `prefix` may see it: one that belongs under `prefix`. Any other answers
/// as a lease that does not exist, so a caller learns nothing of leases outside its prefix.
pub(crate) fn load_under(store: &impl CoordRead, id: u64, prefix: &[u8]) -> Result<Option<LeaseInfo>, StorageFault> {
    Ok(load_lease(store, id)?.filter(|lease| lease.prefix.starts_with(prefix)))
}

/// Lease `id`, to attach `name` to it: refused when the lease does not exist or `name` is outside its prefix.
pub(crate) fn load_for(
    store: &impl CoordRead,
    id: u64,
    name: &[u8],
) -> Result<Result<LeaseInfo, WireError>, StorageFault> {
    let Some(lease) = load_lease(store, id)? else { return Ok(Err(not_found(id))) };
    if !name.starts_with(&lease.prefix) {
        return Ok(Err(WireError::invalid(format!(
            "lease {id} belongs to `{}`; `{}` is outside it",
            String::from_utf8_lossy(&lease.prefix),
            String::from_utf8_lossy(name)
        ))));
    }
    Ok(Ok(lease))
}

pub(crate) fn keep_alive(
    store: &mut impl CoordWrite,
    now: u64,
    id: u64,
    prefix: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(mut lease) = load_under(store, id, prefix)? else { return Ok(Err(not_found(id))) };
    store.coord_delete(&expiry_key(lease.deadline_ms, id))?;
    lease.deadline_ms = now.saturating_add(lease.ttl_ms);
    store.coord_put(&expiry_key(lease.deadline_ms, id), &[])?;
    save_lease(store, &lease)?;
    Ok(Ok(CoordResponse::Lease { lease }))
}

/// Deletes a lease, releases its locks and deletes its keys (at one new revision, if any existed).
pub(crate) fn revoke(
    store: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    lease: &LeaseInfo,
    expired: bool,
) -> Result<(), StorageFault> {
    for name in &lease.locks {
        super::lock::release_by_lease(store, name, lease.id)?;
    }
    for name in &lease.semaphores {
        super::semaphore::release_by_lease(store, name, lease.id)?;
    }
    for name in &lease.rwlocks {
        super::rwlock::release_by_lease(store, name, lease.id)?;
    }
    for name in &lease.elections {
        super::election::resign_by_lease(store, name, lease.id)?;
    }
    for name in &lease.barriers {
        super::barrier::leave_by_lease(store, name, lease.id)?;
    }
    for reference in &lease.services {
        super::service::remove_by_lease(store, reference)?;
    }
    for ino in &lease.files {
        crate::fs::locks::release_lease(store, *ino, lease.id)?;
    }
    for ino in &lease.kept {
        crate::fs::kept::lease_ended(store, *ino, lease.id)?;
    }
    let mut deleted = false;
    for key in &lease.keys {
        store.coord_delete(&with(keys::KEY_LEASE, key))?;
        deleted |= crate::state_machine::delete_row(store, key, *revision + 1)?;
    }
    if deleted {
        *revision += 1;
    }
    store.coord_delete(&expiry_key(lease.deadline_ms, lease.id))?;
    store.coord_delete(&lease_key(lease.id))?;
    store.emit(CoordEvent::LeaseEnded { lease: lease.id, expired });
    Ok(())
}

pub(crate) fn revoke_request(
    store: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    id: u64,
    prefix: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let Some(lease) = load_under(store, id, prefix)? else { return Ok(Err(not_found(id))) };
    revoke(store, revision, &lease, false)?;
    Ok(Ok(CoordResponse::Revoked { released_locks: lease.locks, deleted_keys: lease.keys }))
}

/// Whether `key` may be tied to lease `id`: the lease exists and has room (or already holds the key).
pub(crate) fn check_attachable(
    store: &impl CoordRead,
    key: &[u8],
    id: u64,
) -> Result<Result<(), WireError>, StorageFault> {
    let lease = match load_for(store, id, key)? {
        Ok(lease) => lease,
        Err(error) => return Ok(Err(error)),
    };
    if lease.keys.iter().all(|held| held.as_slice() != key) && attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(WireError::too_large(format!("lease {id} already holds {LEASE_ATTACHMENTS_COUNT_MAX} things"))));
    }
    Ok(Ok(()))
}

/// The kinds of things a lease can hold by name.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    Lock,
    RwLock,
    Semaphore,
    Election,
    Barrier,
}

/// Removes `name` from the things of `kind` lease `id` holds (after the primitive itself let go of it).
pub(crate) fn forget(store: &mut impl CoordWrite, id: u64, kind: Held, name: &[u8]) -> Result<(), StorageFault> {
    let Some(mut lease) = load_lease(store, id)? else { return Ok(()) };
    let list = match kind {
        Held::Lock => &mut lease.locks,
        Held::RwLock => &mut lease.rwlocks,
        Held::Semaphore => &mut lease.semaphores,
        Held::Election => &mut lease.elections,
        Held::Barrier => &mut lease.barriers,
    };
    list.retain(|held| held.as_slice() != name);
    save_lease(store, &lease)
}

/// Everything a lease holds.
pub(crate) fn attachments(lease: &LeaseInfo) -> usize {
    lease.locks.len()
        + lease.keys.len()
        + lease.semaphores.len()
        + lease.rwlocks.len()
        + lease.elections.len()
        + lease.barriers.len()
        + lease.services.len()
        + lease.files.len()
        + lease.kept.len()
}

/// Ties `key` to lease `id` (checked by [`check_attachable`] first).
pub(crate) fn attach_key(store: &mut impl CoordWrite, key: &[u8], id: u64) -> Result<(), StorageFault> {
    let Some(mut lease) = load_lease(store, id)? else { return Ok(()) };
    if lease.keys.iter().all(|held| held.as_slice() != key) {
        lease.keys.push(Bytes::from(key.to_vec()));
        save_lease(store, &lease)?;
    }
    store.coord_put(&with(keys::KEY_LEASE, key), &id.to_be_bytes())
}

/// Unties `key` from its lease, if it has one.
pub(crate) fn detach_key(store: &mut impl CoordWrite, key: &[u8]) -> Result<(), StorageFault> {
    let index = with(keys::KEY_LEASE, key);
    let Some(bytes) = store.coord_get(&index)? else { return Ok(()) };
    store.coord_delete(&index)?;
    let Some(id) = be_u64(Some(&bytes)) else { return Err(StorageFault("key lease row is not 8 bytes".into())) };
    if let Some(mut lease) = load_lease(store, id)? {
        lease.keys.retain(|held| held.as_slice() != key);
        save_lease(store, &lease)?;
    }
    Ok(())
}

pub(crate) fn expire_due(
    store: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    now: u64,
) -> Result<u32, StorageFault> {
    let mut due = Vec::new();
    store.coord_scan(keys::EXPIRY, &mut |key, _| {
        let rest = &key[keys::EXPIRY.len()..];
        let (Some(deadline), Some(id)) = (be_u64(rest.get(..8)), be_u64(rest.get(8..16))) else {
            return ControlFlow::Continue(());
        };
        if deadline > now || due.len() >= EXPIRIES_PER_PROPOSAL_MAX as usize {
            return ControlFlow::Break(());
        }
        due.push(id);
        ControlFlow::Continue(())
    })?;
    let mut expired = 0;
    for id in due {
        if let Some(lease) = load_lease(store, id)? {
            revoke(store, revision, &lease, true)?;
            expired += 1;
        }
    }
    Ok(expired)
}

/// The earliest lease deadline, if any lease exists.
pub(crate) fn next_deadline(store: &impl CoordRead) -> Result<Option<u64>, StorageFault> {
    let mut next = None;
    store.coord_scan(keys::EXPIRY, &mut |key, _| {
        next = be_u64(key.get(keys::EXPIRY.len()..keys::EXPIRY.len() + 8));
        ControlFlow::Break(())
    })?;
    Ok(next)
}

fn be_u64(bytes: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_be_bytes(bytes?.try_into().ok()?))
}

pub(crate) fn get(
    store: &impl CoordRead,
    id: u64,
    prefix: &[u8],
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    Ok(load_under(store, id, prefix)?.map(|lease| CoordResponse::Lease { lease }).ok_or_else(|| not_found(id)))
}

/// The leases that belong to `prefix`, in id order. Leases are keyed by id, so a listing for a prefix reads them
/// all: it stops after [`LEASE_LIST_SCAN_ROWS_MAX`] rows and says the answer is truncated.
pub(crate) fn list(store: &impl CoordRead, prefix: &[u8]) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    let (leases, truncated) = super::load_under_where(
        store,
        keys::LEASE,
        LEASE_LIST_COUNT_MAX,
        LEASE_LIST_SCAN_ROWS_MAX,
        |lease: &LeaseInfo| lease.prefix.starts_with(prefix),
    )?;
    Ok(Ok(CoordResponse::Leases { leases, truncated }))
}
