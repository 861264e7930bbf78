//! File locks through the mount (`fcntl` and `flock`), held cluster-wide in the file system's lock table
//! (`pando_protocol::fs::locks`) by this mount's session: a coordination lease it grants at its first lock and keeps
//! alive while it holds any. When this node stops renewing it (a crash, a partition) the lease lapses
//! [`LOCK_LEASE_TTL_MS`] later and every lock of the mount goes with it, in one entry; an unmount revokes it at once.
//!
//! - `F_SETLKW` (and a `flock` without `LOCK_NB`) asks again, backing off, while another owner holds the range: until
//!   it gets it, the process has a signal pending (`EINTR`: the kernel cannot take back a request it passed on, and
//!   fuser does not forward its interrupts, so the mount looks for the signal itself), the process is gone, or the
//!   mount closes.
//! - A `close` releases the closing process's `fcntl` locks (`flush` carries its lock owner) and the last close of an
//!   open file its `flock` (`release`), each only where this mount took a lock with that owner, so closing a file
//!   that was never locked costs no command.
//! - `flock` reaches the mount as a whole-file lock owned by the open file (fuser does not pass the kernel's flag that
//!   tells the two apart), so `flock` and `fcntl` locks on one file exclude each other, as on NFS.
//! - Not detected: deadlocks between waiters (`EDEADLK`); two waiters that wait on each other wait until one is
//!   interrupted.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::fs::{Caller, Errno, FileLock, FsCommandKind, FsQueryKind, FsQueryResponse, LockMode, LockOwner};
use tokio::sync::RwLock;

use crate::services::{FsService, SessionRequest};

/// How long the cluster keeps a mount's locks after its node stops renewing them.
pub const LOCK_LEASE_TTL_MS: u64 = 10_000;
/// How often the mount renews its lease (a third of its TTL: two renewals may fail before the locks go).
const RENEW_MS: u64 = LOCK_LEASE_TTL_MS / 3;
const _: () = assert!(RENEW_MS * 2 < LOCK_LEASE_TTL_MS);
/// The first and the longest pause between two attempts of a blocking lock.
const RETRY_FIRST_MS: u64 = 5;
const RETRY_MAX_MS: u64 = 200;

/// One lock request from the kernel.
#[derive(Clone, Copy, Debug)]
pub(super) struct LockCall {
    pub ino: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub mode: LockMode,
}

impl LockCall {
    /// The request as the file system takes it, owned by `lease` and the kernel's owner.
    fn lock(&self, lease: u64) -> FileLock {
        FileLock {
            owner: LockOwner { lease, owner: self.owner },
            pid: self.pid,
            start: self.start,
            end: self.end,
            mode: self.mode,
        }
    }
}

pub(super) struct LockSession {
    fs: FsService,
    timeout: Duration,
    /// The session's lease, once a lock was asked for (write-locked while it is granted, renewed or ended, so no lock
    /// command runs against a lease being revoked for want of locks).
    lease: RwLock<Option<u64>>,
    /// (inode, kernel lock owner) pairs this mount took a lock for: a close of one of them releases its locks.
    held: Mutex<HashSet<(u64, u64)>>,
    closing: AtomicBool,
}

fn lease_gone(error: &WireError) -> bool {
    error.code == ErrorCode::NotFound && error.detail.is_none()
}

impl LockSession {
    pub(super) fn new(fs: FsService, timeout: Duration) -> LockSession {
        LockSession { fs, timeout, lease: RwLock::new(None), held: Mutex::default(), closing: AtomicBool::new(false) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, u64)>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets or unlocks a range; with `wait`, asks again until it is free (see the module's notes).
    pub(super) async fn set(&self, call: LockCall, wait: bool, waiter_tid: u32) -> Result<(), WireError> {
        let mut pause = RETRY_FIRST_MS;
        let mut renewed = false;
        loop {
            let lease = match call.mode {
                LockMode::Unlock => match *self.lease.read().await {
                    Some(lease) => lease,
                    None => return Ok(()),
                },
                LockMode::Read | LockMode::Write => self.session().await?,
            };
            match self.try_set(lease, call).await {
                Ok(()) => {
                    if call.mode != LockMode::Unlock {
                        self.held().insert((call.ino, call.owner));
                    }
                    return Ok(());
                }
                // Whatever the lease held went with it.
                Err(error) if lease_gone(&error) && call.mode == LockMode::Unlock => return Ok(()),
                Err(error) if lease_gone(&error) && !renewed => {
                    // The lease lapsed under us (this node was cut off longer than its TTL): its locks are gone
                    // already; a new session serves this request.
                    renewed = true;
                    self.forget_lease(lease).await;
                }
                Err(error) if wait && Errno::of(&error) == Errno::EAGAIN.code() => {
                    if self.closing.load(Ordering::Relaxed) || interrupted(waiter_tid) {
                        return Err(Errno::EINTR.error("the wait for a lock was interrupted"));
                    }
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    pause = (pause * 2).min(RETRY_MAX_MS);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt with `lease`, while no renewal can end it.
    async fn try_set(&self, lease: u64, call: LockCall) -> Result<(), WireError> {
        let guard = self.lease.read().await;
        if *guard != Some(lease) {
            return Err(lease_ended(lease));
        }
        let lock = call.lock(lease);
        self.fs.command(&Caller::ROOT, FsCommandKind::SetLock { ino: call.ino, lock }, self.timeout).await?;
        drop(guard);
        Ok(())
    }

    /// The session's lease, granted if it has none.
    async fn session(&self) -> Result<u64, WireError> {
        if let Some(lease) = *self.lease.read().await {
            return Ok(lease);
        }
        let mut lease = self.lease.write().await;
        if let Some(lease) = *lease {
            return Ok(lease);
        }
        let granted = self.fs.session(SessionRequest::Grant { ttl_ms: LOCK_LEASE_TTL_MS }, self.timeout).await?;
        let granted = granted.ok_or_else(|| WireError::internal("a lease grant answered no lease"))?;
        *lease = Some(granted.id);
        tracing::debug!(lease = granted.id, "the mount's lock session began");
        Ok(granted.id)
    }

    /// The lock of another owner in the way of `call`, with its pid when a process of this mount holds it (a
    /// process elsewhere has no number here: 0).
    pub(super) async fn test(&self, call: LockCall) -> Result<Option<FileLock>, WireError> {
        let lease = (*self.lease.read().await).unwrap_or(0);
        let lock = call.lock(lease);
        match self.fs.query(&Caller::ROOT, FsQueryKind::TestLock { ino: call.ino, lock }, self.timeout).await? {
            FsQueryResponse::Lock(found) => Ok(found
                .map(|holder| FileLock { pid: if holder.owner.lease == lease { holder.pid } else { 0 }, ..holder })),
            other => Err(WireError::internal(format!("a lock test answered {other:?}"))),
        }
    }

    /// Releases the locks `owner` holds on `ino`, if this mount took any for it.
    pub(super) async fn release(&self, ino: u64, owner: u64) -> Result<(), WireError> {
        if !self.held().remove(&(ino, owner)) {
            return Ok(());
        }
        let guard = self.lease.read().await;
        let Some(lease) = *guard else { return Ok(()) };
        let owner = LockOwner { lease, owner };
        match self.fs.command(&Caller::ROOT, FsCommandKind::ReleaseLocks { ino, owner }, self.timeout).await {
            Err(error) if lease_gone(&error) => Ok(()),
            Err(error) => {
                // Kept, so the next close asks again; the lease's end releases them at the latest.
                self.held().insert((ino, owner.owner));
                Err(error)
            }
            Ok(_) => Ok(()),
        }
    }

    /// Renews the lease while the mount holds locks, and ends it once it holds none (an idle mount costs the log
    /// nothing). Runs until the mount stops.
    pub(super) async fn renew_forever(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(RENEW_MS)).await;
            let mut lease = self.lease.write().await;
            let Some(id) = *lease else { continue };
            match self.fs.session(SessionRequest::KeepAlive { lease: id }, self.timeout).await {
                Ok(Some(info)) if info.files.is_empty() => {
                    if self.fs.session(SessionRequest::End { lease: id }, self.timeout).await.is_ok() {
                        *lease = None;
                        self.held().clear();
                    }
                }
                Ok(_) => {}
                Err(error) if lease_gone(&error) => {
                    *lease = None;
                    let lost = std::mem::take(&mut *self.held());
                    if !lost.is_empty() {
                        tracing::warn!(
                            lease = id,
                            files = lost.len(),
                            "the mount's lock lease lapsed (this node was cut off for {LOCK_LEASE_TTL_MS} ms): the \
                             cluster released every lock taken through this mount"
                        );
                    }
                }
                Err(error) => tracing::warn!(lease = id, %error, "the mount's lock lease could not be renewed"),
            }
        }
    }

    /// Drops `lapsed` (if it is still the session's lease): the cluster released its locks when it lapsed.
    async fn forget_lease(&self, lapsed: u64) {
        let mut lease = self.lease.write().await;
        if *lease == Some(lapsed) {
            *lease = None;
            self.held().clear();
            tracing::warn!(lease = lapsed, "the mount's lock lease lapsed; the cluster released its locks");
        }
    }

    /// Ends the session at unmount: every lock of the mount is released at once, and waiters give up.
    pub(super) async fn end(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let mut lease = self.lease.write().await;
        if let Some(id) = lease.take()
            && let Err(error) = self.fs.session(SessionRequest::End { lease: id }, self.timeout).await
        {
            tracing::warn!(lease = id, %error, "the mount's lock lease could not be revoked; it lapses on its own");
        }
    }
}

fn lease_ended(lease: u64) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("the mount's lock lease {lease} ended"))
}

/// Whether thread `tid` (the one blocked in the lock call) is gone or has a signal pending that it does not block.
fn interrupted(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return true };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") != 0 || status.lines().any(|line| line.starts_with("State:") && line.contains('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_gone_counts_as_interrupted() {
        assert!(interrupted(u32::MAX - 1));
        assert!(!interrupted(std::process::id()), "this test process has no signal pending");
    }
}
