//! Byte-range locks on files (POSIX `fcntl` locks, and `flock` as a whole-file lock in the same table, as NFS does):
//! shared (`Read`) or exclusive (`Write`), held by an owner that is a coordination lease (a mount's session with
//! the cluster) and the kernel's lock owner on that mount (a process's file table for `fcntl`, an open file for
//! `flock`). When the lease ends (revoked when the mount stops, or lapsed when its node died) every lock it holds is
//! released in the same entry ([`release_lease`], called by the lease's revocation).
//!
//! Rows: `Fl/<ino>` the locks on one inode, sorted by start, at most [`FS_LOCKS_PER_INODE_MAX`]; the lease lists
//! the inodes it holds locks on (`LeaseInfo::files`), so its end finds them.
//!
//! **Invariants** (checked by the model test): no two locks of different owners that overlap are both exclusive or
//! one exclusive; one owner's locks never overlap one another, and two of its locks of the same mode are never
//! adjacent (they are merged), so setting a range then unlocking it leaves the owner's other locks as they were
//! (split where needed), as POSIX describes.

use serde::{Deserialize, Serialize};

use super::rows::*;
use super::{Errno, FsResponse};
use crate::coord::keys::with;
use crate::coord::lease::{LEASE_ATTACHMENTS_COUNT_MAX, attachments, load_lease, save_lease};
use crate::coord::{CoordRead, CoordWrite, load, save};
use crate::limits::FS_LOCKS_PER_INODE_MAX;
use crate::state_machine::StorageFault;

pub(super) const LOCKS: &[u8] = b"Fl/";

/// How a lock request wants a range held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    Read,
    Write,
    Unlock,
}

/// Who holds a lock: a lease (a mount's session) and the kernel's owner on that mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LockOwner {
    pub lease: u64,
    pub owner: u64,
}

/// A lock request, or a held lock (`mode` never `Unlock` then). `end` is inclusive (`u64::MAX`: to the end of any
/// size the file may take).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub owner: LockOwner,
    /// The process that asked (what `F_GETLK` reports), as the holder's machine numbers it.
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub mode: LockMode,
}

impl FileLock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether `self` (held by someone else) stands in the way of `request`.
    fn conflicts_with(&self, request: &FileLock) -> bool {
        self.owner != request.owner
            && self.overlaps(request.start, request.end)
            && (self.mode == LockMode::Write || request.mode == LockMode::Write)
    }
}

pub(super) fn locks_key(ino: u64) -> Vec<u8> {
    with(LOCKS, &ino.to_be_bytes())
}

fn load_locks(store: &impl CoordRead, ino: u64) -> Result<Vec<FileLock>, StorageFault> {
    Ok(load(store, &locks_key(ino))?.unwrap_or_default())
}

fn save_locks(store: &mut impl CoordWrite, ino: u64, locks: &[FileLock]) -> Result<(), StorageFault> {
    if locks.is_empty() {
        store.coord_delete(&locks_key(ino))?;
        Ok(())
    } else {
        save(store, &locks_key(ino), &locks)
    }
}

/// The owner's locks after `request` (set or unlock its range), the others' as they were. Pure, so the model test
/// runs it against a byte map.
pub(super) fn applied(locks: &[FileLock], request: &FileLock) -> Vec<FileLock> {
    let mut after = Vec::with_capacity(locks.len() + 2);
    for lock in locks {
        if lock.owner != request.owner || !lock.overlaps(request.start, request.end) {
            after.push(*lock);
            continue;
        }
        if lock.start < request.start {
            after.push(FileLock { end: request.start - 1, ..*lock });
        }
        if lock.end > request.end {
            after.push(FileLock { start: request.end + 1, ..*lock });
        }
    }
    if request.mode != LockMode::Unlock {
        let mut merged = *request;
        after.retain(|lock| {
            let touches = lock.owner == request.owner
                && lock.mode == request.mode
                && lock.end.saturating_add(1) >= merged.start
                && lock.start <= merged.end.saturating_add(1);
            if touches {
                merged.start = merged.start.min(lock.start);
                merged.end = merged.end.max(lock.end);
            }
            !touches
        });
        after.push(merged);
    }
    after.sort_by_key(|lock| (lock.start, lock.owner));
    after
}

/// The first lock that stands in the way of `request`, if any (what `F_GETLK` reports).
pub(super) fn conflict(locks: &[FileLock], request: &FileLock) -> Option<FileLock> {
    locks.iter().find(|lock| lock.conflicts_with(request)).copied()
}

/// Sets or unlocks a range for its owner: `EAGAIN` when another owner's lock stands in the way (the mount waits and
/// asks again for `F_SETLKW`), `ENOLCK` past the bounds, `NOT_FOUND` (no `errno`) when the owner's lease is gone.
pub(super) fn set(store: &mut impl CoordWrite, ino: u64, request: &FileLock) -> Answer<FsResponse> {
    if request.mode == LockMode::Unlock && load_attr(store, ino)?.is_none() {
        // The inode went away and took its locks with it ([`destroyed`]): a close of a removed file that was
        // locked must not fail.
        return Ok(Ok(FsResponse::Done));
    }
    refuse!(existing(store, ino)?);
    let Some(mut lease) = load_lease(store, request.owner.lease)? else {
        if request.mode == LockMode::Unlock {
            // Whatever the lease held went with it.
            return Ok(Ok(FsResponse::Done));
        }
        return Ok(Err(crate::coord::lease::not_found(request.owner.lease)));
    };
    let locks = load_locks(store, ino)?;
    if request.mode != LockMode::Unlock
        && let Some(holder) = conflict(&locks, request)
    {
        return Ok(Err(Errno::EAGAIN.error(format!(
            "bytes {}..={} of inode {ino} are locked ({:?}) by process {} of lease {}",
            holder.start, holder.end, holder.mode, holder.pid, holder.owner.lease
        ))));
    }
    let after = applied(&locks, request);
    if after.len() > FS_LOCKS_PER_INODE_MAX && after.len() > locks.len() {
        return Ok(Err(Errno::ENOLCK.error(format!("inode {ino} has {FS_LOCKS_PER_INODE_MAX} locks already"))));
    }
    let holds = after.iter().any(|lock| lock.owner.lease == lease.id);
    let listed = lease.files.contains(&ino);
    if holds && !listed {
        if attachments(&lease) >= LEASE_ATTACHMENTS_COUNT_MAX {
            return Ok(Err(
                Errno::ENOLCK.error(format!("lease {} holds {LEASE_ATTACHMENTS_COUNT_MAX} things already", lease.id))
            ));
        }
        lease.files.push(ino);
        save_lease(store, &lease)?;
    } else if !holds && listed {
        lease.files.retain(|file| *file != ino);
        save_lease(store, &lease)?;
    }
    save_locks(store, ino, &after)?;
    Ok(Ok(FsResponse::Done))
}

/// Drops every lock `owner` holds on `ino` (a process closed the file, or an open file was released).
pub(super) fn release_owner(store: &mut impl CoordWrite, ino: u64, owner: LockOwner) -> Answer<FsResponse> {
    let request = FileLock { owner, pid: 0, start: 0, end: u64::MAX, mode: LockMode::Unlock };
    set(store, ino, &request)
}

/// Drops every lock lease `lease` holds on `ino` (the lease is ending; its own row is the caller's business).
pub(crate) fn release_lease(store: &mut impl CoordWrite, ino: u64, lease: u64) -> Result<(), StorageFault> {
    let mut locks = load_locks(store, ino)?;
    let before = locks.len();
    locks.retain(|lock| lock.owner.lease != lease);
    if locks.len() != before {
        save_locks(store, ino, &locks)?;
    }
    Ok(())
}

/// Drops the locks of an inode that is going away, and the inode from its holders' lists.
pub(super) fn destroyed(store: &mut impl CoordWrite, ino: u64) -> Result<(), StorageFault> {
    let locks = load_locks(store, ino)?;
    let mut leases: Vec<u64> = locks.iter().map(|lock| lock.owner.lease).collect();
    leases.dedup();
    for id in leases {
        if let Some(mut lease) = load_lease(store, id)? {
            lease.files.retain(|file| *file != ino);
            save_lease(store, &lease)?;
        }
    }
    save_locks(store, ino, &[])
}

/// The lock that stands in the way of `request`, if any.
pub(super) fn test(store: &impl CoordRead, ino: u64, request: &FileLock) -> Answer<Option<FileLock>> {
    refuse!(existing(store, ino)?);
    Ok(Ok(conflict(&load_locks(store, ino)?, request)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::command::{Command, CommandOutput, Proposal};
    use crate::coord::{CoordRequest, CoordResponse};
    use crate::error::{ErrorCode, WireError};
    use crate::fs::{Caller, FileKind, FsCommand, FsCommandKind, ROOT_INO};
    use crate::memory_tables::MemoryTables;
    use crate::state_machine::apply_proposal;

    /// The state machine over in-memory tables, at a log time the test moves.
    struct Machine {
        tables: MemoryTables,
        revision: u64,
        now: u64,
    }

    impl Machine {
        fn run(&mut self, command: Command) -> Result<CommandOutput, WireError> {
            self.now += 1;
            let proposal = Proposal { stamp_ms: self.now, commands: vec![command] };
            apply_proposal(&mut self.tables, &mut self.revision, &proposal).expect("no faults").results.remove(0)
        }

        fn fs(&mut self, kind: FsCommandKind) -> Result<FsResponse, WireError> {
            match self.run(Command::Fs(FsCommand { caller: Caller::ROOT, kind }))? {
                CommandOutput::Fs(response) => Ok(response),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn file(&mut self, name: &str) -> u64 {
            let create = FsCommandKind::Create {
                parent: ROOT_INO,
                name: name.into(),
                kind: FileKind::File,
                perm: 0o644,
                rdev: 0,
                exclusive: true,
            };
            match self.fs(create) {
                Ok(FsResponse::Attr(attr)) => attr.ino,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn lease(&mut self, ttl_ms: u64) -> u64 {
            match self.run(Command::Coord(CoordRequest::LeaseGrant { ttl_ms, prefix: Default::default() })) {
                Ok(CommandOutput::Coord(CoordResponse::Lease { lease })) => lease.id,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn files_of(&self, lease: u64) -> Vec<u64> {
            load_lease(&self.tables, lease).unwrap().map(|lease| lease.files).unwrap_or_default()
        }

        fn take(&mut self, ino: u64, lease: u64, start: u64, end: u64) -> Result<FsResponse, WireError> {
            let lock = FileLock { owner: LockOwner { lease, owner: 7 }, pid: 42, start, end, mode: LockMode::Write };
            self.fs(FsCommandKind::SetLock { ino, lock })
        }
    }

    #[test]
    fn a_lapsed_lease_releases_its_file_locks_and_a_removed_file_drops_its_own() {
        let mut machine = Machine { tables: MemoryTables::default(), revision: 0, now: 1_796_428_800_000 };
        let (f, g) = (machine.file("f"), machine.file("g"));
        let short = machine.lease(1_000);
        let long = machine.lease(60_000);

        assert_eq!(machine.take(f, short, 0, 9), Ok(FsResponse::Done));
        assert_eq!(machine.files_of(short), vec![f]);
        let refused = machine.take(f, long, 5, 5).unwrap_err();
        assert_eq!(Errno::of(&refused), Errno::EAGAIN.code(), "{refused}");
        assert_eq!(machine.take(f, long, 10, 19), Ok(FsResponse::Done), "the range next to it is free");

        machine.now += 1_000;
        assert_eq!(machine.take(f, long, 0, 9), Ok(FsResponse::Done), "the lapsed lease's lock went with it");
        assert_eq!(machine.take(f, short, 30, 39).unwrap_err().code, ErrorCode::NotFound, "its lease is gone");

        assert_eq!(machine.take(g, long, 0, u64::MAX), Ok(FsResponse::Done));
        assert_eq!(machine.files_of(long), vec![f, g]);
        machine.fs(FsCommandKind::Unlink { parent: ROOT_INO, name: "g".into() }).unwrap();
        assert_eq!(machine.files_of(long), vec![f], "a removed file leaves its holders' lists");
        assert!(machine.tables.coord_get(&locks_key(g)).unwrap().is_none(), "and its locks row goes");
        let closed = FsCommandKind::ReleaseLocks { ino: g, owner: LockOwner { lease: long, owner: 7 } };
        assert_eq!(machine.fs(closed), Ok(FsResponse::Done), "a close of the removed file that was locked succeeds");
        let relocked = machine.take(g, long, 0, 0).unwrap_err();
        assert_eq!(Errno::of(&relocked), Errno::ENOENT.code(), "but it cannot be locked again: {relocked}");

        let owner = LockOwner { lease: long, owner: 7 };
        assert_eq!(machine.fs(FsCommandKind::ReleaseLocks { ino: f, owner }), Ok(FsResponse::Done));
        assert!(machine.files_of(long).is_empty(), "an owner that holds nothing leaves the lease's list");
        assert!(machine.tables.coord_get(&locks_key(f)).unwrap().is_none());
    }

    const SPAN: u64 = 48;

    fn lock(owner: u64, start: u64, end: u64, mode: LockMode) -> FileLock {
        FileLock { owner: LockOwner { lease: 1, owner }, pid: owner as u32, start, end, mode }
    }

    /// The reference: per owner, the mode of each byte of a small span.
    type Model = Vec<[Option<LockMode>; SPAN as usize]>;

    fn apply_model(model: &mut Model, request: &FileLock) -> bool {
        let owner = request.owner.owner as usize;
        let range = request.start as usize..=request.end.min(SPAN - 1) as usize;
        if request.mode != LockMode::Unlock {
            for (other, bytes) in model.iter().enumerate() {
                let blocked = other != owner
                    && range.clone().any(|byte| match bytes[byte] {
                        Some(LockMode::Write) => true,
                        Some(_) => request.mode == LockMode::Write,
                        None => false,
                    });
                if blocked {
                    return false;
                }
            }
        }
        let mode = (request.mode != LockMode::Unlock).then_some(request.mode);
        for byte in range {
            model[owner][byte] = mode;
        }
        true
    }

    fn rendered(locks: &[FileLock], owners: usize) -> Model {
        let mut model = vec![[None; SPAN as usize]; owners];
        for lock in locks {
            for byte in lock.start..=lock.end.min(SPAN - 1) {
                assert!(model[lock.owner.owner as usize][byte as usize].is_none(), "one owner's locks overlap");
                model[lock.owner.owner as usize][byte as usize] = Some(lock.mode);
            }
        }
        model
    }

    fn request() -> impl Strategy<Value = FileLock> {
        (0u64..3, 0..SPAN, 0..SPAN, prop_oneof![Just(LockMode::Read), Just(LockMode::Write), Just(LockMode::Unlock)])
            .prop_map(|(owner, a, b, mode)| {
                // The span's last byte stands for every byte from it on: a range that reaches it runs to the end of
                // the file, so the model's last byte and the real locks past the span always agree (a range that
                // stopped at it exactly would leave real locks past the span that the model cannot see; CI found
                // that with an unlock of 0..=47 after a write lock of 1..).
                let end = if a.max(b) == SPAN - 1 { u64::MAX } else { a.max(b) };
                lock(owner, a.min(b), end, mode)
            })
    }

    proptest! {
        #[test]
        fn random_lock_requests_agree_with_a_byte_map(requests in prop::collection::vec(request(), 1..40)) {
            let (mut locks, mut model): (Vec<FileLock>, Model) = (Vec::new(), vec![[None; SPAN as usize]; 3]);
            for request in &requests {
                let granted = request.mode == LockMode::Unlock || conflict(&locks, request).is_none();
                prop_assert_eq!(granted, apply_model(&mut model, request));
                if granted {
                    locks = applied(&locks, request);
                }
                prop_assert_eq!(&rendered(&locks, 3), &model);
                for pair in locks.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let mergeable = a.owner == b.owner && a.mode == b.mode && a.end.saturating_add(1) >= b.start;
                    prop_assert!(!mergeable, "adjacent locks of one owner and mode were not merged: {:?}", pair);
                }
            }
        }
    }

    #[test]
    fn unlocking_the_middle_of_a_lock_splits_it_in_two() {
        let held = applied(&[], &lock(0, 0, 99, LockMode::Write));
        let after = applied(&held, &lock(0, 40, 59, LockMode::Unlock));
        assert_eq!(after, vec![lock(0, 0, 39, LockMode::Write), lock(0, 60, 99, LockMode::Write)]);
    }

    #[test]
    fn readers_share_and_a_writer_waits_for_them() {
        let held = applied(&[], &lock(0, 0, 9, LockMode::Read));
        assert_eq!(conflict(&held, &lock(1, 5, 20, LockMode::Read)), None);
        assert_eq!(conflict(&held, &lock(1, 5, 20, LockMode::Write)), Some(lock(0, 0, 9, LockMode::Read)));
        assert_eq!(conflict(&held, &lock(1, 10, 20, LockMode::Write)), None, "ranges that only touch do not conflict");
        assert_eq!(conflict(&held, &lock(0, 0, 9, LockMode::Write)), None, "an owner upgrades its own lock");
    }
}
