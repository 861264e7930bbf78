//! What the mount knows of its lock owners beyond the cluster's lock table, as two pure structures:
//!
//! - [`LockedThrough`]: the open files each kernel lock owner locked through. The kernel names the owner of an
//!   open-file-description lock (`F_OFD_SETLK`) and of a `flock` by the open file, and of a `fcntl` lock by the
//!   process's file table, and passes the mount nothing else that tells them apart. A close sends the process's
//!   owner (`flush`), which releases its `fcntl` locks on the file; the last close of an open file (`release`)
//!   sends no owner for an open-file-description lock. So the mount releases, at an open file's release, every
//!   owner that locked through it and was not closed since: a `fcntl` owner always was (every process that had
//!   the open file closed it before its release, and each close released that process's locks on the file), so
//!   what is left are the open file's own locks.
//! - [`WaitsFor`]: the wait-for graph of this mount's `F_SETLKW` waiters, for `EDEADLK`. A waiter whose range is
//!   held by an owner that (through this mount's waiters) waits for the waiter's own owner would wait forever; it
//!   is answered `EDEADLK`, as Linux answers two processes of one machine. Owners of other mounts wait where this
//!   mount cannot see, so a cycle through another node is not found (as on NFS).

use std::collections::{HashMap, HashSet};

use pando_protocol::fs::LockOwner;

use super::locks::LockCall;

/// Steps followed through the wait-for graph before giving up, as Linux's `MAX_DEADLK_ITERATIONS`.
pub(super) const DEADLOCK_STEPS_MAX: usize = 10;

/// The kernel lock owners that locked through each open file of the mount, by the mount's file handle.
#[derive(Debug, Default)]
pub(super) struct LockedThrough {
    handles: HashMap<u64, (u64, HashSet<u64>)>,
}

impl LockedThrough {
    /// `owner` asked for a lock on `ino` through open file `fh`.
    pub(super) fn locked(&mut self, fh: u64, ino: u64, owner: u64) {
        self.handles.entry(fh).or_insert_with(|| (ino, HashSet::new())).1.insert(owner);
    }

    /// A close by `owner` released its locks on `ino`, whatever open file took them.
    pub(super) fn closed(&mut self, ino: u64, owner: u64) {
        for (file, owners) in self.handles.values_mut() {
            if *file == ino {
                owners.remove(&owner);
            }
        }
        self.handles.retain(|_, (_, owners)| !owners.is_empty());
    }

    /// Open file `fh` was released: the owners whose locks go with it. An owner that also locked
    /// through another open file still open is kept (the kernel numbers an owner by an address, and a new open
    /// file may have the released one's address, and lock, before this release arrives).
    pub(super) fn released(&mut self, fh: u64) -> Vec<u64> {
        let Some((ino, owners)) = self.handles.remove(&fh) else { return Vec::new() };
        let live: HashSet<u64> = self
            .handles
            .values()
            .filter(|(file, _)| *file == ino)
            .flat_map(|(_, owners)| owners.iter().copied())
            .collect();
        let mut gone: Vec<u64> = owners.into_iter().filter(|owner| !live.contains(owner)).collect();
        gone.sort_unstable();
        gone
    }
}

/// One waiter: the call it waits to make and the owner last seen in its way.
#[derive(Clone, Copy, Debug)]
struct Wait {
    call: LockCall,
    blocker: LockOwner,
}

/// The wait-for graph of the mount's waiters, by waiter number. Owners are the kernel's numbers within `lease` (this
/// mount's session); a blocker of another lease ends a path.
#[derive(Debug, Default)]
pub(super) struct WaitsFor {
    waits: HashMap<u64, Wait>,
    next: u64,
}

impl WaitsFor {
    /// A number for a new waiter.
    pub(super) fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The waiters (with their calls) on a path from `blocker` back to `call`'s owner, if waiter `id` blocked by
    /// `blocker` would close a cycle; at most [`DEADLOCK_STEPS_MAX`] steps are followed.
    pub(super) fn cycle(
        &self,
        lease: u64,
        id: u64,
        call: &LockCall,
        blocker: LockOwner,
    ) -> Option<Vec<(u64, LockCall)>> {
        let mut path = Vec::new();
        let mut seen = HashSet::new();
        self.search(lease, id, call.owner, blocker, &mut path, &mut seen).then_some(path)
    }

    fn search(
        &self,
        lease: u64,
        id: u64,
        owner: u64,
        blocker: LockOwner,
        path: &mut Vec<(u64, LockCall)>,
        seen: &mut HashSet<u64>,
    ) -> bool {
        if blocker.lease != lease {
            return false;
        }
        if blocker.owner == owner {
            return true;
        }
        if path.len() == DEADLOCK_STEPS_MAX || !seen.insert(blocker.owner) {
            return false;
        }
        let mut next: Vec<(&u64, &Wait)> =
            self.waits.iter().filter(|(waiter, wait)| **waiter != id && wait.call.owner == blocker.owner).collect();
        next.sort_unstable_by_key(|(waiter, _)| **waiter);
        for (waiter, wait) in next {
            path.push((*waiter, wait.call));
            if self.search(lease, id, owner, wait.blocker, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }

    /// Waiter `id` waits for `blocker` to let go of a range `call` asks for.
    pub(super) fn wait(&mut self, id: u64, call: LockCall, blocker: LockOwner) {
        self.waits.insert(id, Wait { call, blocker });
    }

    /// Waiter `id` was seen in the way of `blocker` now (`None`: nothing is in its way, and it is about to ask).
    pub(super) fn seen(&mut self, id: u64, blocker: Option<LockOwner>) {
        match blocker {
            Some(blocker) => {
                if let Some(wait) = self.waits.get_mut(&id) {
                    wait.blocker = blocker;
                }
            }
            None => {
                self.waits.remove(&id);
            }
        }
    }

    /// Waiter `id` waits no more.
    pub(super) fn done(&mut self, id: u64) {
        self.waits.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waits.len()
    }
}

#[cfg(test)]
mod tests {
    use pando_protocol::fs::LockMode;

    use super::*;

    const LEASE: u64 = 7;

    fn call(owner: u64, start: u64) -> LockCall {
        LockCall { ino: 1, fh: 1, owner, pid: owner as u32, start, end: start + 9, mode: LockMode::Write }
    }

    fn mine(owner: u64) -> LockOwner {
        LockOwner { lease: LEASE, owner }
    }

    #[test]
    fn an_open_files_own_owner_goes_at_its_release_and_a_closed_process_does_not() {
        let mut through = LockedThrough::default();
        through.locked(10, 1, 100); // a process's fcntl lock
        through.locked(10, 1, 555); // the open file's own (an OFD lock or a flock)
        through.closed(1, 100);
        assert_eq!(through.released(10), vec![555]);
        assert_eq!(through.released(10), Vec::<u64>::new(), "released once");
    }

    #[test]
    fn a_process_closing_one_open_file_is_forgotten_on_every_open_file_of_the_inode() {
        let mut through = LockedThrough::default();
        through.locked(10, 1, 100);
        through.locked(11, 1, 100);
        through.locked(12, 2, 100);
        through.closed(1, 100);
        assert_eq!(through.released(10), Vec::<u64>::new(), "nothing is left to release through it");
        assert_eq!(through.released(11), Vec::<u64>::new());
        assert_eq!(through.released(12), vec![100], "another inode keeps its owner");
    }

    #[test]
    fn an_owner_still_locking_through_another_open_file_is_kept_at_a_release() {
        let mut through = LockedThrough::default();
        through.locked(10, 1, 555);
        through.locked(11, 1, 555); // a new open file at the released one's address
        assert_eq!(through.released(10), Vec::<u64>::new());
        assert_eq!(through.released(11), vec![555]);
    }

    #[test]
    fn two_owners_waiting_on_each_other_make_a_cycle_and_a_stranger_does_not() {
        let mut waits = WaitsFor::default();
        let a = waits.number();
        waits.wait(a, call(1, 10), mine(2));
        let b = waits.number();
        let path = waits.cycle(LEASE, b, &call(2, 0), mine(1)).expect("owner 2 waits for 1, which waits for 2");
        assert_eq!(path.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>(), vec![a]);
        assert!(waits.cycle(LEASE, b, &call(3, 0), mine(1)).is_none(), "owner 1 waits for 2, not for 3");
        let elsewhere = LockOwner { lease: LEASE + 1, owner: 1 };
        assert!(waits.cycle(LEASE, b, &call(2, 0), elsewhere).is_none(), "another mount's owner 1 is another owner");
    }

    #[test]
    fn a_longer_cycle_is_found_through_any_of_an_owners_waiters_and_not_past_the_step_limit() {
        let mut waits = WaitsFor::default();
        // Owner 1 has two threads waiting: one for 2 (a dead end), one for 3; 3 waits for 4.
        let dead_end = waits.number();
        waits.wait(dead_end, call(1, 0), mine(2));
        let through = waits.number();
        waits.wait(through, call(1, 20), mine(3));
        let last = waits.number();
        waits.wait(last, call(3, 40), mine(4));
        let me = waits.number();
        let path = waits.cycle(LEASE, me, &call(4, 60), mine(1)).expect("4 -> 1 -> 3 -> 4");
        assert_eq!(path.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>(), vec![through, last]);

        // A chain longer than the limit is not followed to its end.
        let mut chain = WaitsFor::default();
        for owner in 1..=(DEADLOCK_STEPS_MAX as u64 + 1) {
            let id = chain.number();
            chain.wait(id, call(owner, 0), mine(owner + 1));
        }
        let me = chain.number();
        let tail = DEADLOCK_STEPS_MAX as u64 + 2;
        assert!(chain.cycle(LEASE, me, &call(tail, 0), mine(1)).is_none());
        assert!(chain.cycle(LEASE, me, &call(5, 0), mine(1)).is_some(), "a short one is");
    }

    #[test]
    fn a_waiter_that_sees_nothing_in_its_way_leaves_the_graph() {
        let mut waits = WaitsFor::default();
        let a = waits.number();
        waits.wait(a, call(1, 10), mine(2));
        waits.seen(a, Some(mine(3)));
        assert!(waits.cycle(LEASE, 99, &call(2, 0), mine(1)).is_none(), "1 waits for 3 now");
        assert!(waits.cycle(LEASE, 99, &call(3, 0), mine(1)).is_some());
        waits.seen(a, None);
        assert_eq!(waits.len(), 0);
        let b = waits.number();
        waits.wait(b, call(1, 10), mine(2));
        waits.done(b);
        assert_eq!(waits.len(), 0);
    }
}
