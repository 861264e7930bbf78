//! File locks through the mount (`fcntl` and `flock`), held cluster-wide in the file system's lock table
//! (`pando_protocol::fs::locks`) by this mount's session: a coordination lease it grants at its first lock and keeps
//! alive while it holds any. When this node stops renewing it (a crash, a partition) the lease lapses
//! [`LOCK_LEASE_TTL_MS`] later and every lock of the mount goes with it, in one entry; an unmount revokes it at once.
//!
//! - `F_SETLKW` (and a `flock` without `LOCK_NB`) looks again (a read: no log entry), backing off, while another
//!   owner holds the range, and asks again once it looks free: until it gets it, the process has a signal pending
//!   (`EINTR`: the kernel cannot take back a request it passed on, and fuser does not forward its interrupts, so the
//!   mount looks for the signal itself), the process is gone, or the mount closes. Waiters run outside the mount's request slots, at most `FUSE_LOCK_WAITERS_MAX` (`ENOLCK` beyond).
//! - The lease is renewed without waiting for lock commands under way (a renewal that waited behind a slow one
//!   could let the lease lapse), and ended only when the cluster says it holds nothing, no lock command ran since
//!   it asked, and nothing waits.
//! - A `close` releases the closing process's `fcntl` locks (`flush` carries its lock owner) and the last close of an
//!   open file its `flock` (`release`), each only where this mount took a lock with that owner, so closing a file
//!   that was never locked costs no command. A release that fails is asked again by the renewer, and before the
//!   same owner locks the file again (so the late release cannot drop the new lock); the lease's end releases
//!   everything at the latest.
//! - One lease lists at most `LEASE_ATTACHMENTS_COUNT_MAX` (1,024) files: a mount holds locks on that many files at
//!   once (`ENOLCK` beyond).
//! - `flock` reaches the mount as a whole-file lock owned by the open file (fuser does not pass the kernel's flag that
//!   tells the two apart), so `flock` and `fcntl` locks on one file exclude each other, as on NFS.
//! - Open-file-description locks (`F_OFD_SETLK`) are owned by their open file, as `flock`s are, and go at its last
//!   close: the mount releases every owner that locked through an open file and did not close it since
//!   ([`LockedThrough`]).
//! - A waiter that would close a cycle of this mount's waiters (its range is held by an owner that waits, through
//!   them, for the waiter's own owner) is answered `EDEADLK` ([`WaitsFor`]); each waiter on the cycle is looked at
//!   again first, so a wait that ended since its last look does not count. Cycles through another mount's waiters
//!   are not seen (they wait until one is interrupted, as on NFS).
//!
//! The same session keeps files open past their last unlink (`pando_protocol::fs::kept`): a removal through this
//! mount of a name whose file it has open asks the lease to keep the file first ([`LockSession::keep`]), and the
//! file's last close here lets go of it ([`LockSession::let_go`]). The lease is not ended while it keeps any.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::fs::{Caller, Errno, FileLock, FsCommandKind, FsQueryKind, FsQueryResponse, LockMode, LockOwner};
use tokio::sync::RwLock;

use pando_protocol::fs::SessionRequest;

use super::backend::FsBackend;
use super::owners::{LockedThrough, WaitsFor};

/// How long the cluster keeps a mount's locks after its node stops renewing them.
pub const LOCK_LEASE_TTL_MS: u64 = 10_000;
/// How often the mount renews its lease (a third of its TTL: two renewals may fail before the locks go).
const RENEW_MS: u64 = LOCK_LEASE_TTL_MS / 3;
/// How long one renewal may take: well under the TTL, so a slow one is followed by another before the lease lapses.
const RENEW_TIMEOUT_MS: u64 = 2_000;
const _: () = assert!(RENEW_MS * 2 + RENEW_TIMEOUT_MS < LOCK_LEASE_TTL_MS);
/// How long an unmount waits for lock commands under way, and then for the lease's revoke (it lapses on its own
/// otherwise).
pub(super) const END_TIMEOUT_MS: u64 = RENEW_TIMEOUT_MS;
/// The first and the longest pause between two attempts of a blocking lock.
const RETRY_FIRST_MS: u64 = 5;
const RETRY_MAX_MS: u64 = 200;
/// Fresh sessions one lock request may begin after its lease lapsed under it (each lapse takes a TTL).
const SESSIONS_PER_CALL_MAX: u32 = 3;

/// One lock request from the kernel.
#[derive(Clone, Copy, Debug)]
pub(super) struct LockCall {
    pub ino: u64,
    /// The mount's handle of the open file the call came through.
    pub fh: u64,
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

    fn key(&self) -> Pair {
        (self.ino, self.owner)
    }
}

/// An inode and a kernel lock owner on it.
type Pair = (u64, u64);

pub(super) struct LockSession {
    fs: Arc<dyn FsBackend>,
    timeout: Duration,
    /// The session's lease, once a lock was asked for. A lock command runs under a read guard, so the lease is
    /// never ended for want of locks while one is under way; granting, forgetting and ending take the write guard.
    /// Renewals take neither: a renewal never waits behind a slow command (the lease would lapse meanwhile).
    lease: RwLock<Option<u64>>,
    /// Pairs this mount may hold locks for, added before the lock is asked (a lock that commits after its caller
    /// gave up is still released at close): a close of one of them releases its locks.
    held: Mutex<HashSet<Pair>>,
    /// Pairs whose release at a close failed: asked again by the renewer, and before any new lock of the pair.
    unreleased: Mutex<HashSet<Pair>>,
    /// The owners that locked through each open file, released at its last close if no close released them before.
    through: Mutex<LockedThrough>,
    /// What this mount's waiters wait for (`EDEADLK`).
    waits: Mutex<WaitsFor>,
    /// Orders asking again for an unreleased pair before a new lock of it (taken after a read guard of `lease`).
    settling: tokio::sync::Mutex<()>,
    /// Counts the starts and ends of lock commands: the renewer ends an idle lease only if nothing ran since it
    /// asked the cluster what the lease holds.
    activity: AtomicU64,
    /// Requests waiting for a lock (between attempts they hold no guard, and the lease must outlive them).
    waiters: AtomicUsize,
    /// Files the lease keeps open past their last unlink (`pando_protocol::fs::kept`), let go at their last close.
    kept: Mutex<HashSet<u64>>,
    /// Files whose let-go at the last close failed: asked again by the renewer (the lease's end lets go at the
    /// latest).
    unkept: Mutex<HashSet<u64>>,
    closing: AtomicBool,
}

fn lease_gone(error: &WireError) -> bool {
    error.code == ErrorCode::NotFound && error.detail.is_none()
}

fn locked<T>(set: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a waiting request while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Waiting<'a> {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A waiter's place in the wait-for graph, left when it stops waiting.
struct InGraph<'a> {
    waits: &'a Mutex<WaitsFor>,
    id: u64,
}

impl<'a> InGraph<'a> {
    fn new(waits: &'a Mutex<WaitsFor>) -> InGraph<'a> {
        let id = locked(waits).number();
        InGraph { waits, id }
    }
}

impl Drop for InGraph<'_> {
    fn drop(&mut self) {
        locked(self.waits).done(self.id);
    }
}

impl LockSession {
    pub(super) fn new(fs: Arc<dyn FsBackend>, timeout: Duration) -> LockSession {
        LockSession {
            fs,
            timeout,
            lease: RwLock::new(None),
            held: Mutex::default(),
            unreleased: Mutex::default(),
            through: Mutex::default(),
            waits: Mutex::default(),
            settling: tokio::sync::Mutex::new(()),
            activity: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            kept: Mutex::default(),
            unkept: Mutex::default(),
            closing: AtomicBool::new(false),
        }
    }

    /// Sets or unlocks a range; with `wait`, asks again until it is free (see the module's notes).
    pub(super) async fn set(&self, call: LockCall, wait: bool, waiter_tid: u32) -> Result<(), WireError> {
        let _waiting = wait.then(|| Waiting::new(&self.waiters));
        let mut in_graph = None;
        let mut pause = RETRY_FIRST_MS;
        let mut sessions = 0;
        loop {
            let lease = match call.mode {
                LockMode::Unlock => match *self.lease.read().await {
                    Some(lease) => lease,
                    None => return Ok(()),
                },
                LockMode::Read | LockMode::Write => self.session().await?,
            };
            match self.try_set(lease, call).await {
                Ok(()) => return Ok(()),
                // Whatever the lease held went with it.
                Err(error) if lease_gone(&error) && call.mode == LockMode::Unlock => return Ok(()),
                Err(error) if lease_gone(&error) && sessions < SESSIONS_PER_CALL_MAX => {
                    // The lease lapsed under us (this node was cut off longer than its TTL): its locks are gone
                    // already; a new session serves this request.
                    sessions += 1;
                    self.forget_lease(lease).await;
                }
                Err(error) if wait && Errno::of(&error) == Errno::EAGAIN.code() => {
                    // Waits by reading (no log entry per look) until the range looks free, then asks again.
                    let id = in_graph.get_or_insert_with(|| InGraph::new(&self.waits)).id;
                    loop {
                        if self.closing.load(Ordering::SeqCst) || interrupted(waiter_tid) {
                            return Err(Errno::EINTR.error("the wait for a lock was interrupted"));
                        }
                        let Some(holder) = self.holder(lease, call).await? else {
                            locked(&self.waits).seen(id, None);
                            break;
                        };
                        self.wait_for(lease, id, call, holder.owner).await?;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        pause = (pause * 2).min(RETRY_MAX_MS);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Records that waiter `id` waits for `blocker`, unless that closes a cycle of this mount's waiters: then
    /// `EDEADLK`. A cycle found is confirmed once, by looking again at what each waiter on it waits for (its last
    /// look may be older than a release); the check and the record are one step under the graph's lock, so of two
    /// owners that come to wait on each other the second finds the first.
    async fn wait_for(&self, lease: u64, id: u64, call: LockCall, blocker: LockOwner) -> Result<(), WireError> {
        let mut confirmed = false;
        loop {
            let path = {
                let mut waits = locked(&self.waits);
                match waits.cycle(lease, id, &call, blocker) {
                    None => {
                        waits.wait(id, call, blocker);
                        return Ok(());
                    }
                    Some(_) if confirmed => {
                        waits.done(id);
                        return Err(Errno::EDEADLK.error(format!(
                            "the range {}..={} of inode {} is held by an owner that waits for this one",
                            call.start, call.end, call.ino
                        )));
                    }
                    Some(path) => path,
                }
            };
            for (waiter, waiting) in path {
                let now = self.holder(lease, waiting).await?.map(|holder| holder.owner);
                locked(&self.waits).seen(waiter, now);
            }
            confirmed = true;
        }
    }

    /// One attempt with `lease`, while no renewal can end it.
    async fn try_set(&self, lease: u64, call: LockCall) -> Result<(), WireError> {
        let guard = self.lease.read().await;
        if *guard != Some(lease) {
            return Err(lease_ended(lease));
        }
        if call.mode != LockMode::Unlock {
            self.settle(lease, call.key()).await?;
            locked(&self.held).insert(call.key());
            locked(&self.through).locked(call.fh, call.ino, call.owner);
        }
        let lock = call.lock(lease);
        self.activity.fetch_add(1, Ordering::SeqCst);
        let set = self.fs.command(&Caller::ROOT, FsCommandKind::SetLock { ino: call.ino, lock }, self.timeout).await;
        self.activity.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        set.map(|_| ())
    }

    /// Asks again for a release of `pair` that failed at a close, before a new lock of the pair (so the late
    /// release cannot drop the new lock). The caller holds a read guard of the lease.
    async fn settle(&self, lease: u64, pair: Pair) -> Result<(), WireError> {
        let _order = self.settling.lock().await;
        if !locked(&self.unreleased).contains(&pair) {
            return Ok(());
        }
        self.release_with(lease, pair).await?;
        locked(&self.unreleased).remove(&pair);
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
        if self.closing.load(Ordering::SeqCst) {
            return Err(Errno::ENOLCK.error("the mount is closing"));
        }
        let granted = self.fs.session(SessionRequest::Grant { ttl_ms: LOCK_LEASE_TTL_MS }, self.timeout).await?;
        let granted = granted.ok_or_else(|| WireError::internal("a lease grant answered no lease"))?;
        *lease = Some(granted.id);
        tracing::debug!(lease = granted.id, "the mount's lock session began");
        Ok(granted.id)
    }

    /// Keeps regular file `ino` (open through this mount) past its last unlink, until [`LockSession::let_go`] at its
    /// last close or the session's end. Asked before a removal of a name that may be its last.
    ///
    /// The caller lets go again if the file's last handle closed while the keep was asked ([`LockSession::let_go`]
    /// at that close found nothing kept yet). A keep whose outcome is unknown (it failed without a clear refusal,
    /// and may have committed) is let go later by the renewer, so it cannot hold the file for the session's life.
    pub(super) async fn keep(&self, ino: u64) -> Result<(), WireError> {
        if locked(&self.kept).contains(&ino) {
            return Ok(());
        }
        let mut sessions = 0;
        loop {
            let lease = self.session().await?;
            let guard = self.lease.read().await;
            if *guard != Some(lease) {
                // Ended or forgotten since: a fresh session serves the request.
                drop(guard);
                sessions += 1;
                if sessions > SESSIONS_PER_CALL_MAX {
                    return Err(lease_ended(lease));
                }
                continue;
            }
            // A late let-go of an earlier keep must not drop this one.
            self.settle_kept(lease, ino).await?;
            self.activity.fetch_add(1, Ordering::SeqCst);
            let keep = FsCommandKind::KeepOpen { ino, lease };
            let kept = self.fs.command(&Caller::ROOT, keep, self.timeout).await;
            self.activity.fetch_add(1, Ordering::SeqCst);
            drop(guard);
            match kept {
                Ok(_) => {
                    locked(&self.kept).insert(ino);
                    return Ok(());
                }
                Err(error) if lease_gone(&error) && sessions < SESSIONS_PER_CALL_MAX => {
                    sessions += 1;
                    self.forget_lease(lease).await;
                }
                Err(error) => {
                    if Errno::of(&error) == Errno::EIO.code() && !lease_gone(&error) {
                        locked(&self.unkept).insert(ino);
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Asks again for a let-go of `ino` that failed (or a keep of unknown outcome), before a new keep of it. The
    /// caller holds a read guard of the lease.
    async fn settle_kept(&self, lease: u64, ino: u64) -> Result<(), WireError> {
        let _order = self.settling.lock().await;
        if !locked(&self.unkept).contains(&ino) {
            return Ok(());
        }
        self.let_go_with(lease, ino).await?;
        locked(&self.unkept).remove(&ino);
        Ok(())
    }

    /// Whether the session keeps `ino` past its last unlink.
    pub(super) fn keeps(&self, ino: u64) -> bool {
        locked(&self.kept).contains(&ino)
    }

    /// The last handle on `ino` closed: if the session keeps it, it lets go (a file with no link left goes). A
    /// let-go that fails is asked again by the renewer.
    pub(super) async fn let_go(&self, ino: u64) {
        if !locked(&self.kept).remove(&ino) {
            return;
        }
        let guard = self.lease.read().await;
        let Some(lease) = *guard else { return };
        if let Err(error) = self.let_go_with(lease, ino).await {
            tracing::warn!(ino, %error, "a removed file could not be let go at its last close; asked again later");
            locked(&self.unkept).insert(ino);
        }
    }

    /// Lets go of `ino` kept by `lease` (the caller holds a read guard of it).
    async fn let_go_with(&self, lease: u64, ino: u64) -> Result<(), WireError> {
        match self.fs.command(&Caller::ROOT, FsCommandKind::ReleaseKept { ino, lease }, self.timeout).await {
            Err(error) if lease_gone(&error) => Ok(()),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }

    /// The lock of another owner in the way of `call`, with its pid when a process of this mount holds it (a
    /// process elsewhere has no number here: 0).
    pub(super) async fn test(&self, call: LockCall) -> Result<Option<FileLock>, WireError> {
        let lease = (*self.lease.read().await).unwrap_or(0);
        let found = self.holder(lease, call).await?;
        Ok(found.map(|holder| FileLock { pid: if holder.owner.lease == lease { holder.pid } else { 0 }, ..holder }))
    }

    /// The lock of another owner than (`lease`, the call's owner) in the way of `call`, if any.
    async fn holder(&self, lease: u64, call: LockCall) -> Result<Option<FileLock>, WireError> {
        let lock = call.lock(lease);
        match self.fs.query(&Caller::ROOT, FsQueryKind::TestLock { ino: call.ino, lock }, self.timeout).await? {
            FsQueryResponse::Lock(found) => Ok(found),
            other => Err(WireError::internal(format!("a lock test answered {other:?}"))),
        }
    }

    /// A close by `owner` (a process's file table): its `fcntl` locks on `ino` go, whatever open file took them.
    pub(super) async fn closed(&self, ino: u64, owner: u64) -> Result<(), WireError> {
        locked(&self.through).closed(ino, owner);
        self.release(ino, owner).await
    }

    /// The last close of open file `fh`: the locks it owns go (its open-file-description locks, and its `flock`,
    /// which the kernel names as `flock_owner`). Each release is tried; the first failure is answered.
    pub(super) async fn released(&self, ino: u64, fh: u64, flock_owner: Option<u64>) -> Result<(), WireError> {
        let mut owners = locked(&self.through).released(fh);
        owners.extend(flock_owner.filter(|owner| !owners.contains(owner)));
        let mut outcome = Ok(());
        for owner in owners {
            let released = self.release(ino, owner).await;
            outcome = outcome.and(released);
        }
        outcome
    }

    /// Releases the locks `owner` holds on `ino`, if this mount took any for it. One that fails is asked again by
    /// the renewer (and before the pair locks again), so a failed close never leaves a lock behind for good.
    async fn release(&self, ino: u64, owner: u64) -> Result<(), WireError> {
        let pair = (ino, owner);
        if !locked(&self.held).remove(&pair) {
            return Ok(());
        }
        let guard = self.lease.read().await;
        let Some(lease) = *guard else { return Ok(()) };
        let released = self.release_with(lease, pair).await;
        if released.is_err() {
            locked(&self.unreleased).insert(pair);
        }
        released
    }

    /// Drops `pair`'s locks held with `lease` (the caller holds a read guard of it).
    async fn release_with(&self, lease: u64, (ino, owner): Pair) -> Result<(), WireError> {
        let owner = LockOwner { lease, owner };
        match self.fs.command(&Caller::ROOT, FsCommandKind::ReleaseLocks { ino, owner }, self.timeout).await {
            Err(error) if lease_gone(&error) => Ok(()),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }

    /// Renews the lease while the mount holds locks and ends it once it holds none and nothing waits (an idle mount
    /// costs the log nothing); beside that, asks again for releases that failed. Runs until the mount stops. The
    /// two loops run side by side: a retried release may take a command's whole timeout, longer than the lease's
    /// TTL, and the renewals must not wait for it.
    pub(super) async fn renew_forever(&self) {
        tokio::join!(self.renew_loop(), self.retry_loop());
    }

    async fn renew_loop(&self) {
        let mut ticks = ticker();
        loop {
            ticks.tick().await;
            let Some(id) = *self.lease.read().await else { continue };
            let seen = self.activity.load(Ordering::SeqCst);
            let renewal = SessionRequest::KeepAlive { lease: id };
            match self.fs.session(renewal, Duration::from_millis(RENEW_TIMEOUT_MS)).await {
                Ok(info) => {
                    if info.is_some_and(|info| info.files.is_empty() && info.kept.is_empty()) {
                        self.end_if_idle(id, seen).await;
                    }
                }
                Err(error) if lease_gone(&error) => self.forget_lease(id).await,
                Err(error) => tracing::warn!(lease = id, %error, "the mount's lock lease could not be renewed"),
            }
        }
    }

    async fn retry_loop(&self) {
        let mut ticks = ticker();
        loop {
            ticks.tick().await;
            // Read, then released before the retry (an `if let` would hold the read guard through it, and a writer
            // queued behind it would make the retry's own read wait forever).
            let lease = *self.lease.read().await;
            if let Some(id) = lease {
                self.retry_releases(id).await;
            }
        }
    }

    /// Asks again for the releases and let-gos that failed at a close.
    async fn retry_releases(&self, id: u64) {
        if locked(&self.unreleased).is_empty() && locked(&self.unkept).is_empty() {
            return;
        }
        let guard = self.lease.read().await;
        if *guard != Some(id) {
            return;
        }
        let _order = self.settling.lock().await;
        let pairs: Vec<Pair> = locked(&self.unreleased).iter().copied().collect();
        for pair in pairs {
            match self.release_with(id, pair).await {
                Ok(()) => {
                    locked(&self.unreleased).remove(&pair);
                }
                Err(error) => tracing::warn!(lease = id, ino = pair.0, %error, "a file lock is still not released"),
            }
        }
        let inodes: Vec<u64> = locked(&self.unkept).iter().copied().collect();
        for ino in inodes {
            match self.let_go_with(id, ino).await {
                Ok(()) => {
                    locked(&self.unkept).remove(&ino);
                }
                Err(error) => tracing::warn!(lease = id, ino, %error, "a removed file is still not let go"),
            }
        }
    }

    /// Ends lease `id`, which held no locks when the cluster was asked, if no lock command ran since (`seen`), none
    /// is under way and nothing waits.
    async fn end_if_idle(&self, id: u64, seen: u64) {
        let Ok(mut lease) = self.lease.try_write() else { return };
        let idle = self.waiters.load(Ordering::SeqCst) == 0
            && self.activity.load(Ordering::SeqCst) == seen
            && locked(&self.kept).is_empty()
            && locked(&self.unkept).is_empty();
        if *lease != Some(id) || !idle {
            return;
        }
        let end = SessionRequest::End { lease: id };
        if self.fs.session(end, Duration::from_millis(RENEW_TIMEOUT_MS)).await.is_ok() {
            *lease = None;
            locked(&self.held).clear();
            locked(&self.unreleased).clear();
            locked(&self.unkept).clear();
        }
    }

    /// Drops `lapsed` (if it is still the session's lease): the cluster released its locks when it lapsed.
    async fn forget_lease(&self, lapsed: u64) {
        let mut lease = self.lease.write().await;
        if *lease == Some(lapsed) {
            *lease = None;
            locked(&self.unreleased).clear();
            locked(&self.unkept).clear();
            let lost = std::mem::take(&mut *locked(&self.held));
            let orphans = std::mem::take(&mut *locked(&self.kept));
            tracing::warn!(
                lease = lapsed,
                pairs = lost.len(),
                removed_files = orphans.len(),
                "the mount's lease lapsed (this node was cut off for {LOCK_LEASE_TTL_MS} ms): the cluster released \
                 every lock taken through this mount, and removed files still open here are gone"
            );
        }
    }

    /// Ends the session at unmount: every lock of the mount is released at once, waiters give up, and no new
    /// session begins. Takes at most twice [`END_TIMEOUT_MS`].
    pub(super) async fn end(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let wait = Duration::from_millis(END_TIMEOUT_MS);
        let id = match tokio::time::timeout(wait, self.lease.write()).await {
            Ok(mut lease) => lease.take(),
            // A lock command still under way holds the lease: it is ended under it (the command fails with it).
            Err(_) => self.lease.try_read().ok().and_then(|lease| *lease),
        };
        if let Some(id) = id
            && let Err(error) = self.fs.session(SessionRequest::End { lease: id }, wait).await
        {
            tracing::warn!(lease = id, %error, "the mount's lock lease could not be revoked; it lapses on its own");
        }
    }
}

/// Ticks every [`RENEW_MS`], the first one a period from now; a late tick is not made up for.
fn ticker() -> tokio::time::Interval {
    let period = Duration::from_millis(RENEW_MS);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

fn lease_ended(lease: u64) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("the mount's lock lease {lease} ended"))
}

/// Whether thread `tid` (the one blocked in the lock call) is gone or has a signal pending that it does not block.
/// Thread 0 is the kernel's own request, never interrupted.
fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
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
        assert!(!interrupted(0), "the kernel's own requests come from no process");
    }
}
