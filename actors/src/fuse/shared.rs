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
    Attr, Caller, DirEntry, Errno, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, ROOT_INO, Time,
};
use pando_protocol::limits::{FS_INODES_MAX, FS_LIST_COUNT_MAX};
use tokio::sync::Semaphore;

use super::backend::FsBackend;
use super::buffer::Buffer;
use super::convert::{errno, file_attr, file_type};
use super::locks::LockSession;
use super::view::View;
use super::{FUSE_LIST_ENTRIES_MAX, FUSE_OP_TIMEOUT_MS, FUSE_WRITE_BUFFER_BYTES_MAX, MountConfig};

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
    pub(super) buffers: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Buffer>>>>,
    pub(super) known: Mutex<HashMap<u64, Known>>,
    pub(super) served: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) locks: LockSession,
    /// The `.pando/` view (a mount that is not a member's has none).
    pub(super) view: Option<View>,
}

pub(super) struct OpenFile {
    pub(super) ino: u64,
    pub(super) append: bool,
}

/// One directory handle's listing, read whole at its first `readdir` (so offsets stay stable under changes).
pub(super) type Listing = Arc<tokio::sync::Mutex<Option<Arc<Vec<Row>>>>>;

pub(super) struct Row {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: String,
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
        self.fs.command(caller, kind, self.timeout()).await
    }

    pub(super) async fn changed(&self, caller: &Caller, kind: FsCommandKind) -> Result<Attr, WireError> {
        match self.command(caller, kind).await? {
            FsResponse::Attr(attr) => Ok(attr),
            other => Err(wrong(other)),
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

    pub(super) fn buffer(&self, ino: u64) -> Option<Arc<tokio::sync::Mutex<Buffer>>> {
        lock(&self.buffers).get(&ino).cloned()
    }

    pub(super) fn buffer_or_new(&self, ino: u64, size: u64) -> Arc<tokio::sync::Mutex<Buffer>> {
        lock(&self.buffers).entry(ino).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Buffer::new(size)))).clone()
    }

    /// The kernel's view of `attr`: its size grown by what this mount buffered for it. An inode with a buffer here is
    /// read again under the buffer's lock: a flush that ran between the caller's read and the lock would otherwise
    /// leave a size from before the flush with nothing buffered to make up for it (an fsx run caught a stat that
    /// went back that way).
    pub(super) async fn kernel_attr(&self, caller: &Caller, attr: Attr) -> Result<fuser::FileAttr, WireError> {
        let Some(buffer) = self.buffer(attr.ino) else { return Ok(file_attr(&attr, attr.size, &self.config.ids)) };
        let buffer = buffer.lock().await;
        let attr = self.looked_up(caller, FsQueryKind::GetAttr { ino: attr.ino }).await?;
        let size = if buffer.is_empty() { attr.size } else { attr.size.max(buffer.size()) };
        Ok(file_attr(&attr, size, &self.config.ids))
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
        let mut buffer = buffer.lock().await;
        self.flush_locked(ino, &mut buffer).await
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

    pub(super) async fn write(
        &self,
        caller: Caller,
        ino: u64,
        append: bool,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u32, WireError> {
        let written = data.len() as u32;
        if !self.config.write_back {
            let offset = if append { self.fs.attr(&caller, ino, self.timeout()).await?.size } else { offset };
            let attr = self.fs.write_extents(&caller, ino, &[(offset, data)], self.timeout()).await?;
            self.same_version(&attr);
            return Ok(written);
        }
        let buffer = self.buffer_or_new(ino, 0);
        let mut buffer = buffer.lock().await;
        if buffer.caller.as_ref().is_some_and(|writer| *writer != caller) {
            self.flush_locked(ino, &mut buffer).await?;
        }
        let offset = if append { buffer.size() } else { offset };
        buffer.add(&caller, offset, &data);
        if buffer.bytes() >= FUSE_WRITE_BUFFER_BYTES_MAX {
            self.flush_locked(ino, &mut buffer).await?;
        }
        Ok(written)
    }

    pub(super) async fn open_handle(&self, ino: u64, append: bool, size: u64) -> u64 {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(handle, OpenFile { ino, append });
        let buffer = self.buffer_or_new(ino, size);
        let mut buffer = buffer.lock().await;
        buffer.open += 1;
        if buffer.is_empty() {
            buffer.committed_size = size;
        }
        handle
    }

    pub(super) async fn release(&self, handle: u64) -> Result<(), WireError> {
        let Some(file) = lock(&self.files).remove(&handle) else { return Ok(()) };
        let Some(buffer) = self.buffer(file.ino) else { return Ok(()) };
        let mut guard = buffer.lock().await;
        let flushed = self.flush_locked(file.ino, &mut guard).await;
        guard.open = guard.open.saturating_sub(1);
        if guard.open == 0 && guard.is_empty() {
            drop(guard);
            lock(&self.buffers).remove(&file.ino);
        }
        flushed
    }

    pub(super) async fn listing(&self, caller: &Caller, ino: u64) -> Result<Vec<Row>, WireError> {
        let attr = self.looked_up(caller, FsQueryKind::GetAttr { ino }).await?;
        let mut rows = vec![
            Row { ino, kind: FileType::Directory, name: ".".into() },
            Row { ino: attr.parent.max(1), kind: FileType::Directory, name: "..".into() },
        ];
        if ino == ROOT_INO
            && let Some(view) = &self.view
        {
            let view = view.root_entry();
            rows.push(Row { ino: view.ino, kind: FileType::Directory, name: view.name });
        }
        let mut after = None;
        loop {
            let read = FsQueryKind::ReadDir { ino, after: after.take(), limit: FS_LIST_COUNT_MAX };
            let FsQueryResponse::Entries { entries, more } = self.query(caller, read).await? else {
                return Err(WireError::internal("a listing answered something else"));
            };
            after = entries.last().map(|entry| entry.name.clone());
            // A file the file system holds as `.pando` in the root is hidden by the view.
            let hidden =
                |entry: &DirEntry| self.view.is_some() && ino == ROOT_INO && entry.name == super::view::VIEW_NAME;
            rows.extend(entries.into_iter().filter(|entry| !hidden(entry)).map(|entry| Row {
                ino: entry.ino,
                kind: file_type(entry.kind),
                name: entry.name,
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
