//! Permission checks as Linux makes them (`generic_permission`, `may_delete`, `chown_ok`, `setattr_prepare`,
//! `inode_init_owner`, `file_remove_privs`), so a non-root caller gets the same `EACCES` and `EPERM` through the mount
//! as on a local file system. Root (uid 0) stands for a caller with every capability.

use super::{Attr, Caller, Errno, FileKind, mode};
use crate::error::WireError;

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// Whether `caller` may do `mask` (a combination of [`MAY_READ`], [`MAY_WRITE`], [`MAY_EXEC`]) to `attr`: the owner's
/// bits for the owner, the group's for a member of the file's group, the others' for anyone else. Root may read and
/// write anything, and execute what has an execute bit (and search any directory).
pub fn allowed(attr: &Attr, caller: &Caller, mask: u32) -> bool {
    if caller.is_root() {
        return mask & MAY_EXEC == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
    }
    let bits = if caller.uid == attr.uid {
        attr.perm >> 6
    } else if caller.in_group(attr.gid) {
        attr.perm >> 3
    } else {
        attr.perm
    } & 7;
    bits & mask == mask
}

/// `EACCES` unless [`allowed`].
pub fn check(attr: &Attr, caller: &Caller, mask: u32, what: &str) -> Result<(), WireError> {
    if allowed(attr, caller, mask) {
        Ok(())
    } else {
        Err(Errno::EACCES.error(format!("uid {} may not {what} inode {}", caller.uid, attr.ino)))
    }
}

/// Whether `caller` may remove or rename `victim` out of `dir` as the sticky bit says: in a sticky directory only the
/// victim's owner, the directory's owner and root may.
pub fn sticky_allows(dir: &Attr, victim: &Attr, caller: &Caller) -> bool {
    dir.perm & mode::S_ISVTX == 0 || caller.is_root() || caller.uid == victim.uid || caller.uid == dir.uid
}

/// `EPERM` unless [`sticky_allows`].
pub fn check_sticky(dir: &Attr, victim: &Attr, caller: &Caller) -> Result<(), WireError> {
    if sticky_allows(dir, victim, caller) {
        Ok(())
    } else {
        Err(Errno::EPERM.error(format!(
            "inode {} is in sticky directory {} and uid {} owns neither",
            victim.ino, dir.ino, caller.uid
        )))
    }
}

/// Whether the caller owns the inode (or is root): who may chmod, set times explicitly, and set xattrs of sticky
/// directories.
pub fn owns(attr: &Attr, caller: &Caller) -> bool {
    caller.is_root() || caller.uid == attr.uid
}

/// The owner and permission bits of an inode `caller` creates in `parent`: the parent's group if it is set-gid (a
/// directory created there inherits the bit too), else the caller's; a set-gid bit on a new non-directory is dropped
/// when its creator is not in its group.
pub fn new_owner(parent: &Attr, caller: &Caller, kind: FileKind, perm: u32) -> (u32, u32, u32) {
    let mut perm = perm & mode::PERMISSIONS;
    let gid = if parent.perm & mode::S_ISGID != 0 {
        if kind == FileKind::Dir {
            perm |= mode::S_ISGID;
        }
        parent.gid
    } else {
        caller.gid
    };
    if kind != FileKind::Dir && perm & mode::S_ISGID != 0 && !caller.is_root() && !caller.in_group(gid) {
        perm &= !mode::S_ISGID;
    }
    (caller.uid, gid, perm)
}

/// The bits left after a non-root caller wrote to or truncated a file: set-uid goes, and set-gid where group-execute
/// makes it mean set-gid (without group-execute it marks mandatory locking and stays).
pub fn after_write(perm: u32, caller: &Caller) -> u32 {
    if caller.is_root() { perm } else { kill_privs(perm) }
}

/// Set-uid off, and set-gid when group-execute is set (what a write and a chown of a non-directory do).
pub fn kill_privs(perm: u32) -> u32 {
    let mut perm = perm & !mode::S_ISUID;
    if perm & mode::S_IXGRP != 0 {
        perm &= !mode::S_ISGID;
    }
    perm
}
