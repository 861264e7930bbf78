//! What the mount's handlers share ([`Shared`]): the file-system service, the open files and directory listings, the
//! write-back buffers, the inodes the kernel knows, the lock session and the `.pando/` view; and the steps the
//! handlers are made of (commands and queries through the view, attributes as the kernel should see them, flushes,
//! buffered writes, listings, statfs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{FileType, Generation, ReplyAttr, ReplyEntry};
use pando_protocol::error::WireError;
use pando_protocol::fs::{
    Attr, Caller, DirEntry, Errno, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, ROOT_INO, SetAttr, Time,
};
use pando_protocol::limits::{FS_INLINE_BYTES_MAX, FS_INODES_MAX, FS_LIST_COUNT_MAX};
use tokio::sync::Semaphore;

use super::backend::FsBackend;
use super::buffer::Buffer;
use super::convert::{errno, file_attr, file_type};
use super::locks::LockSession;
use super::view::View;
use super::{
    FUSE_LIST_ENTRIES_MAX, FUSE_OP_TIMEOUT_MS, FUSE_WRITE_BUFFER_BYTES_MAX, FUSE_WRITE_BUFFER_EXTENTS_MAX,
    FUSE_XATTR_HINTS_MAX, MountConfig,
};

/// Statfs's block size.
pub(super) const STATFS_BLOCK: u64 = 4096;

pub(super) struct Shared {
    pub(super) fs: Arc<dyn FsBackend>,
    pub(super) config: MountConfig,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) inflight: Arc<Semaphore>,
    /// Slots of lock requests that wait (outside `inflight`).
    pub(super) waiters: Arc<Semaphore>,
    pub(super) next_handle: AtomicU64,
    pub(super) files: Mutex<HashMap<u64, OpenFile>>,
    pub(super) dirs: Mutex<HashMap<u64, Listing>>,
    pub(super) buffers: Mutex<HashMap<u64, Buffered>>,
    pub(super) known: Mutex<HashMap<u64, Known>>,
    /// Counts changes heard from the commit stream and writes made through this mount: attributes listed before
    /// the count moved are not handed to the kernel again.
    pub(super) changes: AtomicU64,
    pub(super) served: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) locks: LockSession,
    /// The `.pando/` view (a mount that is not a member's has none).
    pub(super) view: Option<View>,
    /// What the latest listings said of each listed inode's extended attributes, so `ls -l`'s reads of
    /// `security.selinux` and `system.posix_acl_*` of each entry are answered here (see [`Shared::xattr_shortcut`]).
    pub(super) xattr_hints: Mutex<HashMap<u64, XattrHint>>,
    /// Removals of names under way (see `removal.rs`): an open that lands while one runs waits for it.
    pub(super) removals: Mutex<super::removal::Removals>,
    /// Notified as each removal ends.
    pub(super) removed: tokio::sync::Notify,
}

/// Whether a listed inode had extended attributes, and when that was read.
#[derive(Clone, Copy)]
pub(super) struct XattrHint {
    pub(super) any: bool,
    /// [`Shared::changes`] before the listing was read.
    pub(super) changes: u64,
    pub(super) at: std::time::Instant,
}

pub(super) struct OpenFile {
    pub(super) ino: u64,
    pub(super) append: bool,
    /// The inode's buffer (the one in `buffers` for as long as this handle is open).
    pub(super) buffer: SharedBuffer,
}

pub(super) type SharedBuffer = Arc<tokio::sync::Mutex<Buffer>>;

/// The write-back buffer of an inode and the handles open on it. An entry is removed only under the map's lock with
/// no handle open and nothing buffered, so every open handle writes into the buffer that flushes and stats see (a
/// release that removed the entry while an open was taking it left that open writing into a buffer nobody flushed,
/// appending at offset 0: fsx seed 20261205 caught it at operation 86,381).
pub(super) struct Buffered {
    pub(super) buffer: SharedBuffer,
    pub(super) handles: u32,
}

/// One directory handle's listing, read whole at its first `readdir` (so offsets stay stable under changes).
pub(super) type Listing = Arc<tokio::sync::Mutex<Option<Arc<Listed>>>>;

/// An entry of a page of a listing, with its attributes when the page had them.
type ListedEntry = (DirEntry, Option<Attr>);

/// A directory's rows and when they were read.
pub(super) struct Listed {
    pub(super) rows: Vec<Row>,
    pub(super) at: std::time::Instant,
    /// [`Shared::changes`] before the rows were read.
    pub(super) changes: u64,
}

pub(super) struct Row {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: String,
    /// Its attributes as listed (`None`: asked for when a `readdirplus` needs them). For `.` and `..` the listed
    /// directory's own, which the kernel does not use.
    pub(super) attr: Option<Attr>,
    /// Whether it has extended attributes (known only with `attr`).
    pub(super) xattrs: bool,
}

/// An inode the kernel holds (looked up, not yet forgotten).
#[derive(Default)]
pub(super) struct Known {
    pub(super) lookups: u64,
    /// The version (mtime, size) of the pages the kernel may cache for it.
    pub(super) version: Option<(Time, u64)>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn wrong(response: impl std::fmt::Debug) -> WireError {
    WireError::internal(format!("the file-system service answered {response:?}"))
}

impl Shared {
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(FUSE_OP_TIMEOUT_MS)
    }

    pub(super) fn counted<T>(&self, result: Result<T, WireError>) -> Result<T, fuser::Errno> {
        self.served.fetch_add(1, Ordering::Relaxed);
        result.map_err(|error| {
            if Errno::of(&error) == Errno::EIO.code() {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "a file-system request failed");
            }
            errno(&error)
        })
    }

    pub(super) async fn command(&self, caller: &Caller, kind: FsCommandKind) -> Result<FsResponse, WireError> {
        if let Some(refused) = self.view.as_ref().and_then(|_| super::view::refusal(&kind)) {
            return Err(refused);
        }
        // What was listed before may no longer hold (the commit stream says so too, but later).
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.fs.command(caller, kind, self.timeout()).await
    }

    pub(super) async fn changed(&self, caller: &Caller, kind: FsCommandKind) -> Result<Attr, WireError> {
        match self.command(caller, kind).await? {
            FsResponse::Attr(attr) => Ok(attr),
            other => Err(wrong(other)),
        }
    }

    /// Sets `ino`'s size and the rest of `set` in one command: a `truncate(2)` and the times the kernel sends with
    /// it commit together, or not at all. An inline file growing past the inline bound (`EFBIG` from the state
    /// machine) becomes chunked by a command of its own first, and the rest of `set` follows in a second.
    pub(super) async fn resize(&self, caller: &Caller, ino: u64, size: u64, set: SetAttr) -> Result<Attr, WireError> {
        let whole = SetAttr { size: Some(size), ..set.clone() };
        match self.changed(caller, FsCommandKind::SetAttr { ino, set: whole }).await {
            Err(error) if Errno::of(&error) == Errno::EFBIG.code() && size > FS_INLINE_BYTES_MAX as u64 => {
                let after = self.fs.truncate(caller, ino, size, set.through_open_file, self.timeout()).await?;
                match set.changes_besides_size() {
                    true => self.changed(caller, FsCommandKind::SetAttr { ino, set }).await,
                    false => Ok(after),
                }
            }
            other => other,
        }
    }

    pub(super) async fn query(&self, caller: &Caller, kind: FsQueryKind) -> Result<FsQueryResponse, WireError> {
        if let Some(view) = &self.view
            && let Some(answer) = view.query(caller, &kind).await
        {
            return answer;
        }
        self.fs.query(caller, kind, self.timeout()).await
    }

    pub(super) async fn looked_up(&self, caller: &Caller, kind: FsQueryKind) -> Result<Attr, WireError> {
        match self.query(caller, kind).await? {
            FsQueryResponse::Attr(attr) => Ok(attr),
            other => Err(wrong(other)),
        }
    }

    pub(super) fn buffer(&self, ino: u64) -> Option<SharedBuffer> {
        lock(&self.buffers).get(&ino).map(|buffered| buffered.buffer.clone())
    }

    /// Removes the buffer of `ino` if it is `buffer`, no handle is open on it and nothing is buffered (`guard` is its
    /// lock, so nothing is written into it meanwhile); `closing` counts one handle fewer first, and answers whether
    /// it was the last.
    fn drop_if_idle(&self, ino: u64, buffer: &SharedBuffer, guard: &Buffer, closing: bool) -> bool {
        let mut buffers = lock(&self.buffers);
        let Some(entry) = buffers.get_mut(&ino) else { return false };
        // A flush may hold a buffer the last release dropped (a new open made another): that one is not its to drop.
        if !Arc::ptr_eq(&entry.buffer, buffer) {
            return false;
        }
        if closing {
            entry.handles = entry.handles.saturating_sub(1);
        }
        let last = closing && entry.handles == 0;
        if entry.handles == 0 && guard.is_empty() {
            buffers.remove(&ino);
        }
        last
    }

    /// The kernel's view of `attr`: its size grown by what this mount buffered for it. An inode with a buffer here is
    /// read again under the buffer's lock: a flush that ran between the caller's read and the lock would otherwise
    /// leave a size from before the flush with nothing buffered to make up for it (an fsx run caught a stat that
    /// went back that way).
    pub(super) async fn kernel_attr(&self, caller: &Caller, attr: Attr) -> Result<fuser::FileAttr, WireError> {
        let Some(buffer) = self.buffer(attr.ino) else { return Ok(file_attr(&attr, attr.size, &self.config.ids)) };
        let buffer = buffer.lock().await;
        let attr = self.looked_up(caller, FsQueryKind::GetAttr { ino: attr.ino }).await?;
        Ok(file_attr(&attr, buffer.size_over(attr.size), &self.config.ids))
    }

    pub(super) async fn reply_entry(&self, reply: ReplyEntry, caller: &Caller, attr: Attr) {
        let ino = attr.ino;
        match self.counted(self.kernel_attr(caller, attr).await) {
            Ok(kernel) => {
                lock(&self.known).entry(ino).or_default().lookups += 1;
                reply.entry_with_ttls(&self.config.attr_ttl, &self.config.entry_ttl, &kernel, Generation(0));
            }
            Err(error) => reply.error(error),
        }
    }

    pub(super) async fn reply_attr(&self, reply: ReplyAttr, caller: &Caller, attr: Attr) {
        match self.counted(self.kernel_attr(caller, attr).await) {
            Ok(kernel) => reply.attr(&self.config.attr_ttl, &kernel),
            Err(error) => reply.error(error),
        }
    }

    /// Records the version the kernel's pages of `attr.ino` now match; answers whether it is the one they had.
    pub(super) fn same_version(&self, attr: &Attr) -> bool {
        let version = (attr.mtime, attr.size);
        let mut known = lock(&self.known);
        let known = known.entry(attr.ino).or_default();
        let same = known.version == Some(version);
        known.version = Some(version);
        same
    }

    /// Commits the buffered writes of `ino`.
    pub(super) async fn flush(&self, ino: u64) -> Result<(), WireError> {
        let Some(buffer) = self.buffer(ino) else { return Ok(()) };
        let mut guard = buffer.lock().await;
        self.flush_locked(ino, &mut guard).await?;
        // A buffer left behind by a failed flush at release goes once it is committed.
        self.drop_if_idle(ino, &buffer, &guard, false);
        Ok(())
    }

    pub(super) async fn flush_locked(&self, ino: u64, buffer: &mut Buffer) -> Result<(), WireError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let caller = buffer.caller.clone().unwrap_or_default();
        let extents = buffer.take();
        match self.fs.write_extents(&caller, ino, &extents, self.timeout()).await {
            Ok(attr) => {
                buffer.committed(attr.size);
                self.same_version(&attr);
                Ok(())
            }
            Err(error) => {
                let code = Errno::of(&error);
                if code == Errno::ENOENT.code() || code == Errno::ESTALE.code() {
                    // The file is gone: its buffered bytes have nowhere to go.
                    buffer.committed(0);
                } else {
                    buffer.restore(extents);
                }
                Err(error)
            }
        }
    }

    /// Writes `data` through the open file `handle`: committed at once on a write-through mount, buffered otherwise.
    /// An append goes after the committed size (asked of the cluster once per buffer fill) and what is buffered.
    pub(super) async fn write(
        &self,
        caller: Caller,
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u32, WireError> {
        let Some((ino, append, buffer)) =
            lock(&self.files).get(&handle).map(|file| (file.ino, file.append, file.buffer.clone()))
        else {
            return Err(Errno::EBADF.error("no such open file"));
        };
        let written = data.len() as u32;
        self.changes.fetch_add(1, Ordering::SeqCst);
        if !self.config.write_back {
            let offset = if append { self.fs.attr(&caller, ino, self.timeout()).await?.size } else { offset };
            let attr = self.fs.write_extents(&caller, ino, &[(offset, data)], self.timeout()).await?;
            self.same_version(&attr);
            return Ok(written);
        }
        let mut buffer = buffer.lock().await;
        if buffer.caller.as_ref().is_some_and(|writer| *writer != caller) {
            self.flush_locked(ino, &mut buffer).await?;
        }
        let offset = if append {
            let committed = match buffer.known_size {
                Some(size) => size,
                None => self.fs.attr(&caller, ino, self.timeout()).await?.size,
            };
            buffer.known_size = Some(committed);
            buffer.size_over(committed)
        } else {
            offset
        };
        buffer.add(&caller, offset, &data);
        if buffer.bytes() >= FUSE_WRITE_BUFFER_BYTES_MAX || buffer.extents().len() >= FUSE_WRITE_BUFFER_EXTENTS_MAX {
            self.flush_locked(ino, &mut buffer).await?;
        }
        Ok(written)
    }

    /// A new handle on `ino`, counted on the inode's buffer (made if there is none).
    pub(super) fn open_handle(&self, ino: u64, append: bool) -> u64 {
        self.open_handle_amid_removals(ino, append).0
    }

    /// [`Shared::open_handle`], and the removals under way as it opened (see `removal.rs`): `Some(upto)` when one
    /// with a number below `upto` was.
    pub(super) fn open_handle_amid_removals(&self, ino: u64, append: bool) -> (u64, Option<u64>) {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let (buffer, racing) = {
            let mut buffers = lock(&self.buffers);
            let entry = buffers.entry(ino).or_insert_with(|| Buffered { buffer: SharedBuffer::default(), handles: 0 });
            entry.handles += 1;
            // Under the buffers' lock, which a removal holds as it begins (see `Removals`).
            (entry.buffer.clone(), lock(&self.removals).under_way())
        };
        lock(&self.files).insert(handle, OpenFile { ino, append, buffer });
        (handle, racing)
    }

    /// Closes `handle`: its inode's buffered writes are committed, and the buffer goes with the last handle, as
    /// does the file if it was removed while open here (the session lets go of it).
    pub(super) async fn release(&self, handle: u64) -> Result<(), WireError> {
        let Some(file) = lock(&self.files).remove(&handle) else { return Ok(()) };
        let mut guard = file.buffer.lock().await;
        let flushed = self.flush_locked(file.ino, &mut guard).await;
        let last = self.drop_if_idle(file.ino, &file.buffer, &guard, true);
        drop(guard);
        if last {
            self.locks.let_go(file.ino).await;
        }
        flushed
    }

    /// Directory `ino`'s entries, with `.` and `..` (and the view in the root), each with its attributes when the
    /// file system lists them (the view's are asked for one by one).
    pub(super) async fn listing(&self, caller: &Caller, ino: u64) -> Result<Vec<Row>, WireError> {
        let attr = self.looked_up(caller, FsQueryKind::GetAttr { ino }).await?;
        let mut rows = vec![
            Row { ino, kind: FileType::Directory, name: ".".into(), attr: Some(attr.clone()), xattrs: true },
            Row {
                ino: attr.parent.max(1),
                kind: FileType::Directory,
                name: "..".into(),
                attr: Some(attr),
                xattrs: true,
            },
        ];
        if ino == ROOT_INO
            && let Some(view) = &self.view
        {
            let view = view.root_entry();
            rows.push(Row { ino: view.ino, kind: FileType::Directory, name: view.name, attr: None, xattrs: true });
        }
        let mut after = None;
        loop {
            let (after_this, limit) = (after.take(), FS_LIST_COUNT_MAX);
            let (entries, more, with_xattrs): (Vec<ListedEntry>, bool, Vec<u64>) = if super::view::is_view(ino) {
                let read = FsQueryKind::ReadDir { ino, after: after_this, limit };
                let FsQueryResponse::Entries { entries, more } = self.query(caller, read).await? else {
                    return Err(WireError::internal("a listing answered something else"));
                };
                (entries.into_iter().map(|entry| (entry, None)).collect(), more, Vec::new())
            } else {
                let read = FsQueryKind::ReadDirPlus { ino, after: after_this, limit };
                let FsQueryResponse::EntriesPlus { entries, more, with_xattrs } = self.query(caller, read).await?
                else {
                    return Err(WireError::internal("a listing answered something else"));
                };
                (entries.into_iter().map(|(entry, attr)| (entry, Some(attr))).collect(), more, with_xattrs)
            };
            after = entries.last().map(|(entry, _)| entry.name.clone());
            // A file the file system holds as `.pando` in the root is hidden by the view.
            let hidden =
                |entry: &DirEntry| self.view.is_some() && ino == ROOT_INO && entry.name == super::view::VIEW_NAME;
            rows.extend(entries.into_iter().filter(|(entry, _)| !hidden(entry)).map(|(entry, attr)| Row {
                ino: entry.ino,
                kind: file_type(entry.kind),
                name: entry.name,
                xattrs: attr.is_none() || with_xattrs.contains(&entry.ino),
                attr,
            }));
            if !more || after.is_none() {
                return Ok(rows);
            }
            if rows.len() >= FUSE_LIST_ENTRIES_MAX {
                tracing::warn!(
                    ino,
                    "a directory lists only its first {FUSE_LIST_ENTRIES_MAX} entries through the mount"
                );
                return Ok(rows);
            }
        }
    }

    /// The rows of directory handle `listing` on `ino` for a read from `offset`: read whole at the first (offset 0),
    /// the same rows after that.
    pub(super) async fn rows(
        &self,
        listing: &Listing,
        caller: &Caller,
        ino: u64,
        offset: u64,
    ) -> Result<Arc<Listed>, WireError> {
        let mut held = listing.lock().await;
        if let Some(listed) = held.as_ref()
            && offset > 0
        {
            return Ok(listed.clone());
        }
        let changes = self.changes.load(Ordering::SeqCst);
        let at = std::time::Instant::now();
        let listed = Arc::new(Listed { rows: self.listing(caller, ino).await?, at, changes });
        *held = Some(listed.clone());
        let mut hints = lock(&self.xattr_hints);
        if hints.len() + listed.rows.len() > FUSE_XATTR_HINTS_MAX {
            hints.clear();
        }
        for row in listed.rows.iter().filter(|row| row.attr.is_some() && row.name != "." && row.name != "..") {
            hints.insert(row.ino, XattrHint { any: row.xattrs, changes, at });
        }
        Ok(listed)
    }

    /// The answer to a read of extended attribute `name` of `ino` without asking the cluster, where a fresh listing
    /// (nothing changed since, younger than the attribute TTL) said the inode has none: `EOPNOTSUPP` for the
    /// `system.` namespace (no ACLs: the state machine supports no attribute there), `ENODATA` for `security.` and
    /// `trusted.` (what the state machine answers anyone of an inode without attributes). `ls -l` reads two or three
    /// of each entry; this makes them free.
    pub(super) fn xattr_shortcut(&self, ino: u64, name: &str) -> Option<WireError> {
        let hint = *lock(&self.xattr_hints).get(&ino)?;
        let fresh = !hint.any
            && hint.changes == self.changes.load(Ordering::SeqCst)
            && hint.at.elapsed() < self.config.attr_ttl;
        if !fresh {
            return None;
        }
        if name.starts_with("system.") {
            Some(Errno::EOPNOTSUPP.error(format!("attribute namespace of {name:?} is not supported")))
        } else if pando_protocol::fs::absent_for_anyone(name) {
            Some(Errno::ENODATA.error(format!("no attribute {name:?}")))
        } else {
            None
        }
    }

    /// What a `readdirplus` tells the kernel of `row`: the attributes listed with it while they are younger than the
    /// kernel may keep them (else asked again), as [`Shared::kernel_attr`] gives them. `.` and `..` carry the
    /// directory's own (the kernel skips both).
    pub(super) async fn row_attr(&self, caller: &Caller, row: &Row, fresh: bool) -> Result<fuser::FileAttr, WireError> {
        match &row.attr {
            Some(attr) if row.name == "." || row.name == ".." => {
                Ok(fuser::FileAttr { ino: fuser::INodeNo(row.ino), ..file_attr(attr, attr.size, &self.config.ids) })
            }
            Some(attr) if fresh => self.kernel_attr(caller, attr.clone()).await,
            _ => {
                let attr = self.looked_up(caller, FsQueryKind::GetAttr { ino: row.ino }).await?;
                self.kernel_attr(caller, attr).await
            }
        }
    }

    pub(super) async fn statfs(&self, caller: &Caller) -> Result<[u64; 5], WireError> {
        let FsQueryResponse::StatFs(totals) = self.query(caller, FsQueryKind::StatFs).await? else {
            return Err(WireError::internal("statfs answered something else"));
        };
        let free = self.fs.free_bytes(self.timeout()).await?.unwrap_or(0) / STATFS_BLOCK;
        let used = totals.bytes.div_ceil(STATFS_BLOCK);
        let ffree = FS_INODES_MAX.saturating_sub(totals.inodes);
        Ok([used + free, free, free, totals.inodes + ffree, ffree])
    }
}
