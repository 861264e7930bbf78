//! The file system's rows and their keys, and the reads every command and query starts with.
//!
//! Rows of the coordination table:
//! - `Fi/<ino>` an inode's [`Attr`]; `Fe/<parent><name>` a directory entry (the inode and its kind);
//! - `Fd/<ino>` an inline file's bytes, or a symlink's target; `Fc/<ino><index>` one chunk of a large file;
//! - `Fx/<ino><name>` an extended attribute; `m/fs_next_ino` the next inode number; `m/fs_totals` the totals.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::{Attr, Errno, FileKind, ROOT_INO, Time};
use crate::coord::keys::with;
use crate::coord::{CoordRead, load};
use crate::error::WireError;
use crate::state_machine::StorageFault;

pub(super) const INODE: &[u8] = b"Fi/";
pub(super) const ENTRY: &[u8] = b"Fe/";
pub(super) const DATA: &[u8] = b"Fd/";
pub(super) const CHUNK: &[u8] = b"Fc/";
pub(super) const XATTR: &[u8] = b"Fx/";
pub(super) const NEXT_INO: &[u8] = b"m/fs_next_ino";
pub(super) const TOTALS: &[u8] = b"m/fs_totals";

/// The deepest a directory may be nested (the walk that refuses moving a directory into itself is bounded by it).
pub(super) const DEPTH_MAX: usize = 4_096;

pub(super) type Answer<T> = Result<Result<T, WireError>, StorageFault>;

pub(super) fn inode_key(ino: u64) -> Vec<u8> {
    with(INODE, &ino.to_be_bytes())
}

pub(super) fn entry_key(parent: u64, name: &str) -> Vec<u8> {
    let mut key = with(ENTRY, &parent.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

pub(super) fn data_key(ino: u64) -> Vec<u8> {
    with(DATA, &ino.to_be_bytes())
}

pub(super) fn chunk_key(ino: u64, index: u64) -> Vec<u8> {
    let mut key = with(CHUNK, &ino.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

pub(super) fn xattr_key(ino: u64, name: &str) -> Vec<u8> {
    let mut key = with(XATTR, &ino.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub ino: u64,
    pub kind: FileKind,
}

/// The root as it is before the first command creates its row.
pub(super) fn root(now: Time) -> Attr {
    Attr {
        ino: ROOT_INO,
        kind: FileKind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: 0,
        parent: ROOT_INO,
    }
}

pub(crate) fn load_attr(store: &impl CoordRead, ino: u64) -> Result<Option<Attr>, StorageFault> {
    match load::<Attr>(store, &inode_key(ino))? {
        None if ino == ROOT_INO => Ok(Some(root(Time::default()))),
        other => Ok(other),
    }
}

pub(super) fn load_entry(store: &impl CoordRead, parent: u64, name: &str) -> Result<Option<Entry>, StorageFault> {
    load(store, &entry_key(parent, name))
}

pub(super) fn enoent(what: impl std::fmt::Display) -> WireError {
    Errno::ENOENT.error(format!("{what} does not exist"))
}

/// Inode `ino`, which must exist.
pub(super) fn existing(store: &impl CoordRead, ino: u64) -> Answer<Attr> {
    Ok(load_attr(store, ino)?.ok_or_else(|| enoent(format_args!("inode {ino}"))))
}

/// Directory `ino`, which must exist and be a directory.
pub(super) fn directory(store: &impl CoordRead, ino: u64) -> Answer<Attr> {
    let attr = refuse!(existing(store, ino)?);
    if attr.kind != FileKind::Dir {
        return Ok(Err(Errno::ENOTDIR.error(format!("inode {ino} is not a directory"))));
    }
    Ok(Ok(attr))
}

/// Whether any row's key starts with `prefix`.
pub(super) fn any_under(store: &impl CoordRead, prefix: &[u8]) -> Result<bool, StorageFault> {
    let mut any = false;
    store.coord_scan(prefix, &mut |_, _| {
        any = true;
        ControlFlow::Break(())
    })?;
    Ok(any)
}

/// The keys of every row under `prefix`.
pub(super) fn scan_keys(store: &impl CoordRead, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StorageFault> {
    let mut keys = Vec::new();
    store.coord_scan(prefix, &mut |key, _| {
        keys.push(key.to_vec());
        ControlFlow::Continue(())
    })?;
    Ok(keys)
}
