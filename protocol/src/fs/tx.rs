//! One command's transaction: the inodes it read and changed, written back together when it is accepted, with the
//! totals and the change it publishes; and the data bookkeeping every size change shares (chunks dropped and
//! trimmed, blob references released).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::perm::{self, MAY_EXEC, MAY_WRITE};
use super::rows::*;
use super::{Attr, Caller, Chunk, Errno, FileKind, FsTotals, ROOT_INO, Time, chunk_start};
use crate::coord::keys::with;
use crate::coord::{CoordEvent, CoordWrite, decode, load, save};
use crate::kv::Bytes;
use crate::limits::{FS_CHUNK_BYTES, FS_INLINE_BYTES_MAX, FS_INODES_MAX};
use crate::state_machine::StorageFault;

pub(super) struct Tx<'a, S: CoordWrite> {
    pub store: &'a mut S,
    pub now: Time,
    pub caller: &'a Caller,
    pub inodes: BTreeMap<u64, Option<Attr>>,
    pub touched: Vec<u64>,
    pub entries: Vec<(u64, String)>,
    pub totals: FsTotals,
    pub totals_before: FsTotals,
}

impl<'a, S: CoordWrite> Tx<'a, S> {
    pub(super) fn new(store: &'a mut S, now: u64, caller: &'a Caller) -> Result<Self, StorageFault> {
        let totals = load::<FsTotals>(store, TOTALS)?.unwrap_or(FsTotals { inodes: 1, bytes: 0 });
        Ok(Tx {
            store,
            now: Time::from_ms(now),
            caller,
            inodes: BTreeMap::new(),
            touched: Vec::new(),
            entries: Vec::new(),
            totals,
            totals_before: totals,
        })
    }

    pub(super) fn get(&mut self, ino: u64) -> Answer<Attr> {
        if let Some(cached) = self.inodes.get(&ino) {
            return Ok(cached.clone().ok_or_else(|| enoent(format_args!("inode {ino}"))));
        }
        if ino == ROOT_INO && self.store.coord_get(&inode_key(ROOT_INO))?.is_none() {
            // The root's row is written by the first command that changes it, with that command's time.
            return Ok(Ok(root(self.now)));
        }
        existing(self.store, ino)
    }

    pub(super) fn dir(&mut self, ino: u64) -> Answer<Attr> {
        let attr = refuse!(self.get(ino)?);
        if attr.kind != FileKind::Dir {
            return Ok(Err(Errno::ENOTDIR.error(format!("inode {ino} is not a directory"))));
        }
        Ok(Ok(attr))
    }

    pub(super) fn set(&mut self, attr: Attr) {
        if !self.touched.contains(&attr.ino) {
            self.touched.push(attr.ino);
        }
        self.inodes.insert(attr.ino, Some(attr));
    }

    /// A directory whose entries changed: its times move to now.
    pub(super) fn dir_changed(&mut self, mut dir: Attr) {
        dir.mtime = self.now;
        dir.ctime = self.now;
        self.set(dir);
    }

    pub(super) fn entry(&self, parent: u64, name: &str) -> Result<Option<Entry>, StorageFault> {
        load_entry(self.store, parent, name)
    }

    pub(super) fn put_entry(&mut self, parent: u64, name: &str, entry: Entry) -> Result<(), StorageFault> {
        self.entries.push((parent, name.to_string()));
        save(self.store, &entry_key(parent, name), &entry)
    }

    pub(super) fn delete_entry(&mut self, parent: u64, name: &str) -> Result<(), StorageFault> {
        self.entries.push((parent, name.to_string()));
        self.store.coord_delete(&entry_key(parent, name)).map(drop)
    }

    pub(super) fn next_ino(&mut self) -> Answer<u64> {
        if self.totals.inodes >= FS_INODES_MAX {
            return Ok(Err(Errno::ENOSPC.error(format!("the file system holds at most {FS_INODES_MAX} inodes"))));
        }
        let ino = load::<u64>(self.store, NEXT_INO)?.unwrap_or(ROOT_INO + 1);
        save(self.store, NEXT_INO, &(ino + 1))?;
        self.totals.inodes += 1;
        Ok(Ok(ino))
    }

    /// A new inode of `kind` in `parent`, owned as Linux would own it.
    pub(super) fn new_inode(&mut self, parent: &Attr, kind: FileKind, perm: u32, rdev: u32) -> Answer<Attr> {
        let ino = refuse!(self.next_ino()?);
        let (uid, gid, perm) = perm::new_owner(parent, self.caller, kind, perm);
        let dir = kind == FileKind::Dir;
        Ok(Ok(Attr {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink: if dir { 2 } else { 1 },
            size: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            crtime: self.now,
            rdev,
            parent: if dir { parent.ino } else { 0 },
        }))
    }

    /// The checks of creating `name` in `parent`: a directory the caller may write and search, where `name` is free.
    pub(super) fn creatable(&mut self, parent: u64, name: &str) -> Answer<Attr> {
        let dir = refuse!(self.dir(parent)?);
        refuse!(perm::check(&dir, self.caller, MAY_WRITE | MAY_EXEC, "create in"));
        if self.entry(parent, name)?.is_some() {
            return Ok(Err(Errno::EEXIST.error(format!("{name:?} exists in inode {parent}"))));
        }
        Ok(Ok(dir))
    }

    /// Links a new inode into `dir` as `name`.
    pub(super) fn link_new(&mut self, mut dir: Attr, name: &str, attr: Attr) -> Result<(), StorageFault> {
        self.put_entry(dir.ino, name, Entry { ino: attr.ino, kind: attr.kind })?;
        dir.size += 1;
        if attr.kind == FileKind::Dir {
            dir.nlink += 1;
        }
        self.dir_changed(dir);
        self.set(attr);
        Ok(())
    }

    /// Drops one link of `attr` (its entry is gone already): a directory, or a file's last link, goes with its data,
    /// unless a mount keeps the file open ([`super::kept`]: it stays, with no link, until the mount lets go).
    pub(super) fn drop_link(&mut self, mut attr: Attr) -> Result<(), StorageFault> {
        attr.nlink = attr.nlink.saturating_sub(1);
        attr.ctime = self.now;
        if attr.kind == FileKind::Dir || (attr.nlink == 0 && !super::kept::is_kept(self.store, attr.ino)?) {
            self.destroy(attr.ino, attr.kind, attr.size)
        } else {
            self.set(attr);
            Ok(())
        }
    }

    pub(super) fn destroy(&mut self, ino: u64, kind: FileKind, size: u64) -> Result<(), StorageFault> {
        if kind == FileKind::File {
            self.totals.bytes = self.totals.bytes.saturating_sub(size);
            self.drop_chunks_from(ino, 0)?;
        }
        self.store.coord_delete(&data_key(ino))?;
        super::locks::destroyed(self.store, ino)?;
        for key in scan_keys(self.store, &with(XATTR, &ino.to_be_bytes()))? {
            self.store.coord_delete(&key)?;
        }
        self.totals.inodes = self.totals.inodes.saturating_sub(1);
        if !self.touched.contains(&ino) {
            self.touched.push(ino);
        }
        self.inodes.insert(ino, None);
        Ok(())
    }

    /// Removes the chunks of `ino` from index `first` on, releasing their blobs.
    pub(super) fn drop_chunks_from(&mut self, ino: u64, first: u64) -> Result<(), StorageFault> {
        let prefix = with(CHUNK, &ino.to_be_bytes());
        let mut gone = Vec::new();
        let mut fault = None;
        self.store.coord_scan_from(&prefix, &chunk_key(ino, first), &mut |key, bytes| {
            match decode::<Chunk>(key, bytes) {
                Ok(chunk) => gone.push((key.to_vec(), chunk.blob)),
                Err(error) => {
                    fault = Some(error);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(fault) = fault {
            return Err(fault);
        }
        for (key, blob) in gone {
            self.store.coord_delete(&key)?;
            crate::blob::replace_reference(self.store, None, Some(blob), None)?;
        }
        Ok(())
    }

    /// Sets a file's size: a smaller one drops the chunks past it and trims the last, or cuts the inline bytes; a
    /// larger one leaves a hole (an inline file is zero-filled, within the inline bound).
    pub(super) fn resize(&mut self, attr: &mut Attr, size: u64) -> Answer<()> {
        let inline: Option<Bytes> = load(self.store, &data_key(attr.ino))?;
        if let Some(mut bytes) = inline {
            if size > FS_INLINE_BYTES_MAX as u64 {
                return Ok(Err(Errno::EFBIG.error("an inline file grows past the inline bound as chunks")));
            }
            bytes.resize(size as usize, 0);
            save(self.store, &data_key(attr.ino), &bytes)?;
        } else if size < attr.size {
            let first_gone = size.div_ceil(FS_CHUNK_BYTES);
            self.drop_chunks_from(attr.ino, first_gone)?;
            if !size.is_multiple_of(FS_CHUNK_BYTES) {
                let last = size / FS_CHUNK_BYTES;
                let key = chunk_key(attr.ino, last);
                if let Some(mut chunk) = load::<Chunk>(self.store, &key)? {
                    let keep = (size - chunk_start(last)) as u32;
                    if chunk.len > keep {
                        chunk.len = keep;
                        save(self.store, &key, &chunk)?;
                    }
                }
            }
        }
        self.totals.bytes = self.totals.bytes.saturating_sub(attr.size) + size;
        attr.size = size;
        Ok(Ok(()))
    }

    /// Writes the inodes back, saves the totals, and says what changed.
    pub(super) fn commit(self) -> Result<(), StorageFault> {
        for (ino, attr) in &self.inodes {
            match attr {
                Some(attr) if self.touched.contains(ino) => save(self.store, &inode_key(*ino), attr)?,
                Some(_) => {}
                None => {
                    self.store.coord_delete(&inode_key(*ino))?;
                }
            }
        }
        if self.totals != self.totals_before {
            save(self.store, TOTALS, &self.totals)?;
        }
        if !self.touched.is_empty() || !self.entries.is_empty() {
            let mut inodes = self.touched;
            inodes.sort_unstable();
            self.store.emit(CoordEvent::FsChanged { inodes, entries: self.entries });
        }
        Ok(())
    }
}
