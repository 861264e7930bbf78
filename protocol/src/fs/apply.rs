//! The file system's state machine: each [`FsCommand`] checks everything first (existence, kinds, permissions,
//! limits) and then changes rows, so a refused command changes nothing, and an accepted one (a rename of a directory
//! tree included) is one entry of the log.
//!
//! Times come from the log clock (milliseconds, shown with nanoseconds), so every replica stamps the same ones.
//! **Invariants** (checked after every step of the model test): a directory's `size` is its number of entries and
//! its `nlink` is 2 plus its subdirectories; a non-directory's `nlink` is the number of entries naming it; a
//! directory's `parent` names the one entry that holds it; no directory is inside itself.

use super::data::{set_chunks, write};
use super::perm::{self, MAY_EXEC, MAY_WRITE};
use super::rows::*;
use super::tx::Tx;
use super::xattr::{remove_xattr, set_xattr};
use super::{
    Attr, Errno, FileKind, FsCommand, FsCommandKind, FsResponse, ROOT_INO, RenameMode, SetAttr, SetTime, Time,
};
use crate::coord::{CoordWrite, save};
use crate::kv::Bytes;
use crate::limits::FS_LINKS_MAX;
use crate::state_machine::StorageFault;

pub fn apply(store: &mut impl CoordWrite, now: u64, command: &FsCommand) -> Answer<FsResponse> {
    if let Err(error) = command.validate() {
        return Ok(Err(error));
    }
    let mut tx = Tx::new(store, now, &command.caller)?;
    let response = match &command.kind {
        FsCommandKind::Create { parent, name, kind, perm, rdev, exclusive } => {
            create(&mut tx, *parent, name, *kind, *perm, *rdev, *exclusive)?
        }
        FsCommandKind::Mkdir { parent, name, perm } => mkdir(&mut tx, *parent, name, *perm)?,
        FsCommandKind::Symlink { parent, name, target } => symlink(&mut tx, *parent, name, target)?,
        FsCommandKind::Link { ino, parent, name } => link(&mut tx, *ino, *parent, name)?,
        FsCommandKind::Unlink { parent, name } => remove(&mut tx, *parent, name, false)?,
        FsCommandKind::Rmdir { parent, name } => remove(&mut tx, *parent, name, true)?,
        FsCommandKind::Rename { parent, name, new_parent, new_name, mode } => {
            rename(&mut tx, *parent, name, *new_parent, new_name, *mode)?
        }
        FsCommandKind::SetAttr { ino, set } => set_attr(&mut tx, *ino, set)?,
        FsCommandKind::Write { ino, offset, data, append, answer_attr } => {
            write(&mut tx, *ino, *offset, data, *append, *answer_attr)?
        }
        FsCommandKind::SetChunks { ino, chunks, size } => set_chunks(&mut tx, *ino, chunks, *size)?,
        FsCommandKind::SetXattr { ino, name, value, mode } => set_xattr(&mut tx, *ino, name, value, *mode)?,
        FsCommandKind::RemoveXattr { ino, name } => remove_xattr(&mut tx, *ino, name)?,
        // Locks change no inode: the transaction commits nothing of its own for them.
        FsCommandKind::SetLock { ino, lock } => super::locks::set(tx.store, *ino, lock)?,
        FsCommandKind::ReleaseLocks { ino, owner } => super::locks::release_owner(tx.store, *ino, *owner)?,
        FsCommandKind::KeepOpen { ino, lease } => super::kept::keep(&mut tx, *ino, *lease)?,
        FsCommandKind::ReleaseKept { ino, lease } => super::kept::release(&mut tx, *ino, *lease)?,
    };
    if response.is_ok() {
        tx.commit()?;
    }
    Ok(response)
}

fn create(
    tx: &mut Tx<'_, impl CoordWrite>,
    parent: u64,
    name: &str,
    kind: FileKind,
    perm: u32,
    rdev: u32,
    exclusive: bool,
) -> Answer<FsResponse> {
    if !exclusive && let Some(entry) = tx.entry(parent, name)? {
        // `open(O_CREAT)` of a name that exists opens it (the open checks the permission).
        refuse!(tx.dir(parent)?);
        let attr = refuse!(tx.get(entry.ino)?);
        if attr.kind == FileKind::Dir {
            return Ok(Err(Errno::EISDIR.error(format!("{name:?} is a directory"))));
        }
        return Ok(Ok(FsResponse::Attr(attr)));
    }
    let dir = refuse!(tx.creatable(parent, name)?);
    let attr = refuse!(tx.new_inode(&dir, kind, perm, rdev)?);
    tx.link_new(dir, name, attr.clone())?;
    Ok(Ok(FsResponse::Attr(attr)))
}

fn mkdir(tx: &mut Tx<'_, impl CoordWrite>, parent: u64, name: &str, perm: u32) -> Answer<FsResponse> {
    let dir = refuse!(tx.creatable(parent, name)?);
    if dir.nlink >= FS_LINKS_MAX {
        return Ok(Err(Errno::EMLINK.error(format!("inode {parent} has {FS_LINKS_MAX} links"))));
    }
    let attr = refuse!(tx.new_inode(&dir, FileKind::Dir, perm, 0)?);
    tx.link_new(dir, name, attr.clone())?;
    Ok(Ok(FsResponse::Attr(attr)))
}

fn symlink(tx: &mut Tx<'_, impl CoordWrite>, parent: u64, name: &str, target: &str) -> Answer<FsResponse> {
    let dir = refuse!(tx.creatable(parent, name)?);
    let mut attr = refuse!(tx.new_inode(&dir, FileKind::Symlink, 0o777, 0)?);
    attr.size = target.len() as u64;
    save(tx.store, &data_key(attr.ino), &Bytes::from(target.as_bytes().to_vec()))?;
    tx.link_new(dir, name, attr.clone())?;
    Ok(Ok(FsResponse::Attr(attr)))
}

fn link(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, parent: u64, name: &str) -> Answer<FsResponse> {
    let mut attr = refuse!(tx.get(ino)?);
    if attr.kind == FileKind::Dir {
        return Ok(Err(Errno::EPERM.error("a directory cannot be hard-linked")));
    }
    if attr.nlink == 0 {
        // A file kept open after its last unlink has no name to come back to (Linux: `linkat` of a deleted file).
        return Ok(Err(enoent(format_args!("inode {ino} (removed, still open)"))));
    }
    let mut dir = refuse!(tx.creatable(parent, name)?);
    if attr.nlink >= FS_LINKS_MAX {
        return Ok(Err(Errno::EMLINK.error(format!("inode {ino} has {FS_LINKS_MAX} links"))));
    }
    tx.put_entry(parent, name, Entry { ino, kind: attr.kind })?;
    dir.size += 1;
    tx.dir_changed(dir);
    attr.nlink += 1;
    attr.ctime = tx.now;
    tx.set(attr.clone());
    Ok(Ok(FsResponse::Attr(attr)))
}

/// `unlink` (`dir == false`) or `rmdir`.
fn remove(tx: &mut Tx<'_, impl CoordWrite>, parent: u64, name: &str, dir_wanted: bool) -> Answer<FsResponse> {
    let mut dir = refuse!(tx.dir(parent)?);
    refuse!(perm::check(&dir, tx.caller, MAY_WRITE | MAY_EXEC, "remove from"));
    let Some(entry) = tx.entry(parent, name)? else { return Ok(Err(enoent(format_args!("{name:?}")))) };
    let victim = refuse!(tx.get(entry.ino)?);
    match (dir_wanted, victim.kind == FileKind::Dir) {
        (false, true) => return Ok(Err(Errno::EISDIR.error(format!("{name:?} is a directory")))),
        (true, false) => return Ok(Err(Errno::ENOTDIR.error(format!("{name:?} is not a directory")))),
        (true, true) if victim.size > 0 => {
            return Ok(Err(Errno::ENOTEMPTY.error(format!("{name:?} has {} entries", victim.size))));
        }
        _ => {}
    }
    refuse!(perm::check_sticky(&dir, &victim, tx.caller));
    tx.delete_entry(parent, name)?;
    dir.size -= 1;
    if dir_wanted {
        dir.nlink -= 1;
    }
    tx.dir_changed(dir);
    tx.drop_link(victim)?;
    Ok(Ok(FsResponse::Done))
}

/// Whether directory `ancestor` is `ino` or holds it at any depth.
fn within(tx: &mut Tx<'_, impl CoordWrite>, mut ino: u64, ancestor: u64) -> Answer<bool> {
    for _ in 0..DEPTH_MAX {
        if ino == ancestor {
            return Ok(Ok(true));
        }
        if ino == ROOT_INO {
            return Ok(Ok(false));
        }
        ino = refuse!(tx.get(ino)?).parent;
    }
    Ok(Err(Errno::ELOOP.error(format!("directories nest deeper than {DEPTH_MAX}"))))
}

fn rename(
    tx: &mut Tx<'_, impl CoordWrite>,
    parent: u64,
    name: &str,
    new_parent: u64,
    new_name: &str,
    mode: RenameMode,
) -> Answer<FsResponse> {
    let from_dir = refuse!(tx.dir(parent)?);
    let to_dir = refuse!(tx.dir(new_parent)?);
    refuse!(perm::check(&from_dir, tx.caller, MAY_WRITE | MAY_EXEC, "rename out of"));
    refuse!(perm::check(&to_dir, tx.caller, MAY_WRITE | MAY_EXEC, "rename into"));
    let Some(source) = tx.entry(parent, name)? else { return Ok(Err(enoent(format_args!("{name:?}")))) };
    let target = tx.entry(new_parent, new_name)?;
    match (mode, &target) {
        (RenameMode::NoReplace, Some(_)) => {
            return Ok(Err(Errno::EEXIST.error(format!("{new_name:?} exists"))));
        }
        (RenameMode::Exchange, None) => return Ok(Err(enoent(format_args!("{new_name:?}")))),
        _ => {}
    }
    let moved = refuse!(tx.get(source.ino)?);
    let replaced = match target {
        Some(target) => Some(refuse!(tx.get(target.ino)?)),
        None => None,
    };
    // A directory moves only where it is not: not into itself or below it.
    if moved.kind == FileKind::Dir && refuse!(within(tx, new_parent, moved.ino)?) {
        return Ok(Err(Errno::EINVAL.error(format!("inode {} would be inside itself", moved.ino))));
    }
    if mode == RenameMode::Exchange
        && let Some(other) = &replaced
        && other.kind == FileKind::Dir
        && refuse!(within(tx, parent, other.ino)?)
    {
        return Ok(Err(Errno::EINVAL.error(format!("inode {} would be inside itself", other.ino))));
    }
    if let Some(other) = &replaced {
        if other.ino == moved.ino && mode != RenameMode::Exchange {
            // Two names of one inode: rename does nothing, successfully.
            return Ok(Ok(FsResponse::Done));
        }
        if mode == RenameMode::Replace {
            match (moved.kind == FileKind::Dir, other.kind == FileKind::Dir) {
                (true, false) => return Ok(Err(Errno::ENOTDIR.error(format!("{new_name:?} is not a directory")))),
                (false, true) => return Ok(Err(Errno::EISDIR.error(format!("{new_name:?} is a directory")))),
                (true, true) if other.size > 0 => {
                    return Ok(Err(Errno::ENOTEMPTY.error(format!("{new_name:?} has {} entries", other.size))));
                }
                _ => {}
            }
        }
    }
    refuse!(perm::check_sticky(&from_dir, &moved, tx.caller));
    if let Some(other) = &replaced {
        refuse!(perm::check_sticky(&to_dir, other, tx.caller));
    }
    // Moving a directory to another parent rewrites its `..`: the caller must be able to write it.
    if parent != new_parent {
        if moved.kind == FileKind::Dir {
            refuse!(perm::check(&moved, tx.caller, MAY_WRITE, "move"));
        }
        if mode == RenameMode::Exchange
            && let Some(other) = &replaced
            && other.kind == FileKind::Dir
        {
            refuse!(perm::check(other, tx.caller, MAY_WRITE, "move"));
        }
    }
    if mode != RenameMode::Exchange
        && moved.kind == FileKind::Dir
        && to_dir.nlink >= FS_LINKS_MAX
        && parent != new_parent
    {
        return Ok(Err(Errno::EMLINK.error(format!("inode {new_parent} has {FS_LINKS_MAX} links"))));
    }

    // Everything is checked: change the rows.
    match mode {
        RenameMode::Exchange => {
            let other = replaced.expect("checked above");
            tx.put_entry(parent, name, Entry { ino: other.ino, kind: other.kind })?;
            tx.put_entry(new_parent, new_name, Entry { ino: moved.ino, kind: moved.kind })?;
            reparent(tx, moved, parent, new_parent)?;
            reparent(tx, other, new_parent, parent)?;
        }
        RenameMode::Replace | RenameMode::NoReplace => {
            if let Some(other) = replaced {
                // The target's entry is overwritten below; it loses that link (a directory, its `..` too).
                if other.kind == FileKind::Dir {
                    let mut dir = refuse!(tx.get(new_parent)?);
                    dir.nlink -= 1;
                    dir.size -= 1;
                    tx.set(dir);
                } else {
                    let mut dir = refuse!(tx.get(new_parent)?);
                    dir.size -= 1;
                    tx.set(dir);
                }
                tx.drop_link(other)?;
            }
            tx.delete_entry(parent, name)?;
            tx.put_entry(new_parent, new_name, Entry { ino: moved.ino, kind: moved.kind })?;
            let mut from = refuse!(tx.get(parent)?);
            from.size -= 1;
            tx.set(from);
            let mut to = refuse!(tx.get(new_parent)?);
            to.size += 1;
            tx.set(to);
            reparent(tx, moved, parent, new_parent)?;
        }
    }
    for ino in [parent, new_parent] {
        let dir = refuse!(tx.get(ino)?);
        tx.dir_changed(dir);
    }
    Ok(Ok(FsResponse::Done))
}

/// `attr` now lives in `to` instead of `from`: a directory's `..` moves (and the parents' link counts with it); its
/// change time is now.
fn reparent(tx: &mut Tx<'_, impl CoordWrite>, mut attr: Attr, from: u64, to: u64) -> Result<(), StorageFault> {
    // The latest version: the command may have changed it already (an exchange within one directory).
    if let Some(Some(current)) = tx.inodes.get(&attr.ino) {
        attr = current.clone();
    }
    if attr.kind == FileKind::Dir && from != to {
        attr.parent = to;
        for (ino, delta) in [(from, -1i64), (to, 1)] {
            if let Ok(mut dir) = tx.get(ino)? {
                dir.nlink = (dir.nlink as i64 + delta) as u32;
                tx.set(dir);
            }
        }
    }
    attr.ctime = tx.now;
    tx.set(attr);
    Ok(())
}

fn set_time(time: SetTime, now: Time) -> Time {
    match time {
        SetTime::Now => now,
        SetTime::At(time) => time,
    }
}

fn set_attr(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, set: &SetAttr) -> Answer<FsResponse> {
    let mut attr = refuse!(tx.get(ino)?);
    let caller = tx.caller;
    let owner = perm::owns(&attr, caller);
    if let Some(perm) = set.perm {
        if !owner {
            return Ok(Err(Errno::EPERM.error(format!("uid {} does not own inode {ino}", caller.uid))));
        }
        let mut perm = perm;
        if !caller.is_root() && !caller.in_group(attr.gid) {
            perm &= !super::mode::S_ISGID;
        }
        attr.perm = perm;
    }
    if set.uid.is_some() || set.gid.is_some() {
        let uid_ok = set.uid.is_none_or(|uid| caller.is_root() || (caller.uid == attr.uid && uid == attr.uid));
        let gid_ok = set.gid.is_none_or(|gid| {
            caller.is_root() || (caller.uid == attr.uid && (gid == attr.gid || caller.in_group(gid)))
        });
        if !uid_ok || !gid_ok {
            return Ok(Err(Errno::EPERM.error(format!("uid {} may not change the owner of inode {ino}", caller.uid))));
        }
        attr.uid = set.uid.unwrap_or(attr.uid);
        attr.gid = set.gid.unwrap_or(attr.gid);
        if attr.kind != FileKind::Dir {
            attr.perm = perm::kill_privs(attr.perm);
        }
    }
    for time in [set.atime, set.mtime] {
        let Some(time) = time else { continue };
        let may = match time {
            SetTime::Now => owner || perm::allowed(&attr, caller, MAY_WRITE),
            SetTime::At(_) => owner,
        };
        if !may {
            let errno = if matches!(time, SetTime::Now) { Errno::EACCES } else { Errno::EPERM };
            return Ok(Err(errno.error(format!("uid {} may not set the times of inode {ino}", caller.uid))));
        }
    }
    if let Some(size) = set.size {
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Ok(Err(Errno::EISDIR.error(format!("inode {ino} is a directory")))),
            _ => return Ok(Err(Errno::EINVAL.error(format!("inode {ino} is not a regular file")))),
        }
        if !set.through_open_file {
            refuse!(perm::check(&attr, caller, MAY_WRITE, "truncate"));
        }
        refuse!(tx.resize(&mut attr, size)?);
        attr.mtime = tx.now;
        attr.perm = perm::after_write(attr.perm, caller);
    }
    if let Some(time) = set.atime {
        attr.atime = set_time(time, tx.now);
    }
    if let Some(time) = set.mtime {
        attr.mtime = set_time(time, tx.now);
    }
    attr.ctime = tx.now;
    tx.set(attr.clone());
    Ok(Ok(FsResponse::Attr(attr)))
}
