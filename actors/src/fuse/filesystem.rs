//! The kernel's requests, served from the file-system service: each handler reads what it needs from the request,
//! hands the work to a task on the node's runtime and returns (at most [`FUSE_INFLIGHT_MAX`] at once), and the task
//! answers the kernel.
//!
//! The caller is the requesting process's uid, gid and supplementary groups (from `/proc/<pid>/status`), mapped by
//! the mount's [`IdMap`]; the state machine checks every permission, so the mount does not ask the kernel to
//! (`default_permissions` would judge by attributes up to a TTL old).
//!
//! What the mount keeps per inode ([`Buffer`](super::buffer::Buffer), in [`Shared`]): the buffered writes of its open handles (a read of the inode sees them
//! over the committed bytes), flushed on `flush` (every `close`), `fsync`, `release`, a truncate, another caller's
//! write, or the buffer's bound;
//! and per inode the kernel knows (looked up and not forgotten): the version (mtime and size) its pages were cached
//! at, so `open` keeps the page cache only when the file did not change since (close-to-open).

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use pando_protocol::fs::{
    Caller, Errno, FileKind, FsCommandKind, FsQueryKind, FsQueryResponse, LockMode, RenameMode, SetAttr, SetTime,
    XattrMode,
};
use pando_protocol::limits::{FS_CALLER_GROUPS_MAX, FS_NAME_BYTES_MAX};
use tokio::sync::Semaphore;

use super::backend::FsBackend;
use super::convert::{self, errno};
use super::locks::{LockCall, LockSession};
use super::shared::{Listing, STATFS_BLOCK, Shared, lock, wrong};
use super::view::{View, ViewSource, is_view};
use super::{FUSE_INFLIGHT_MAX, FUSE_LOCK_WAITERS_MAX, FUSE_OP_TIMEOUT_MS, MountConfig};

const O_APPEND: i32 = 0o2000;
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
/// The largest request the kernel sends (it caps this by its own limit).
const MAX_WRITE: u32 = 1024 * 1024;

/// The mount's file system (cheap to clone: the session, the tasks and the invalidation thread share it).
#[derive(Clone)]
pub struct PandoFs(Arc<Shared>);

impl PandoFs {
    /// The mount's file system over `fs`, with the `.pando/` view when `view` names its sources.
    pub fn new(
        fs: Arc<dyn FsBackend>,
        config: MountConfig,
        runtime: tokio::runtime::Handle,
        view: Option<Arc<dyn ViewSource>>,
    ) -> PandoFs {
        PandoFs(Arc::new(Shared {
            config,
            runtime,
            inflight: Arc::new(Semaphore::new(FUSE_INFLIGHT_MAX)),
            waiters: Arc::new(Semaphore::new(FUSE_LOCK_WAITERS_MAX)),
            next_handle: AtomicU64::new(1),
            files: Mutex::default(),
            dirs: Mutex::default(),
            buffers: Mutex::default(),
            known: Mutex::default(),
            changes: AtomicU64::new(0),
            xattr_hints: Mutex::default(),
            removals: Mutex::default(),
            removed: tokio::sync::Notify::new(),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            locks: LockSession::new(fs.clone(), Duration::from_millis(FUSE_OP_TIMEOUT_MS)),
            view: view.map(|sources| View::new(sources, Duration::from_millis(FUSE_OP_TIMEOUT_MS))),
            fs,
        }))
    }

    /// Keeps the mount's lock lease alive while it holds locks (run by the actor until the mount stops).
    pub async fn renew_locks(&self) {
        self.0.locks.renew_forever().await
    }

    /// Releases every lock taken through the mount (at unmount).
    pub async fn end_locks(&self) {
        self.0.locks.end().await
    }

    #[cfg(test)]
    pub(super) fn shared(&self) -> &Shared {
        &self.0
    }

    /// One line for `pando actors`.
    pub fn summary(&self) -> String {
        let open = lock(&self.0.files).len();
        let buffered: usize =
            lock(&self.0.buffers).values().filter_map(|entry| entry.buffer.try_lock().ok().map(|b| b.bytes())).sum();
        format!(
            "{open} open files, {buffered} bytes buffered, {} requests served, {} failed",
            self.0.served.load(Ordering::Relaxed),
            self.0.failed.load(Ordering::Relaxed)
        )
    }

    /// Flushes every buffered write (at an unmount), for at most `budget`.
    pub async fn flush_all(&self, budget: Duration) {
        let inodes: Vec<u64> = lock(&self.0.buffers).keys().copied().collect();
        let flushed = tokio::time::timeout(budget, async {
            for ino in &inodes {
                if let Err(error) = self.0.flush(*ino).await {
                    tracing::error!(ino, %error, "buffered writes lost at unmount");
                }
            }
        });
        if flushed.await.is_err() {
            let left = lock(&self.0.buffers).len();
            tracing::error!(
                inodes = left,
                "the unmount's write-back ran out of time; buffered writes of these are lost"
            );
        }
    }

    pub(super) fn known_inodes(&self) -> Vec<u64> {
        lock(&self.0.known).keys().copied().collect()
    }

    pub(super) fn is_known(&self, ino: u64) -> bool {
        lock(&self.0.known).contains_key(&ino)
    }

    /// Changes were lost on the commit stream: nothing listed before is handed out again.
    pub(super) fn changed_unheard(&self) {
        self.0.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets the cached version of `ino` (it changed); answers whether the kernel knows it.
    pub(super) fn forget_version(&self, ino: u64) -> bool {
        self.0.changes.fetch_add(1, Ordering::SeqCst);
        match lock(&self.0.known).get_mut(&ino) {
            Some(known) => {
                known.version = None;
                true
            }
            None => false,
        }
    }

    /// The caller behind a request, as the file system stores ids.
    fn caller(&self, req: &Request) -> Caller {
        let ids = &self.0.config.ids;
        let groups = supplementary_groups(req.pid()).into_iter().map(|gid| ids.gid_to_stored(gid)).collect();
        Caller { uid: ids.uid_to_stored(req.uid()), gid: ids.gid_to_stored(req.gid()), groups }
    }

    /// Runs `work` on the runtime once a slot is free (this thread, the session's, waits for it).
    fn spawn<Fut>(&self, work: impl FnOnce(Arc<Shared>) -> Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let permit = self.0.runtime.block_on(self.0.inflight.clone().acquire_owned());
        self.run(permit, work);
    }

    /// Runs `work` on the runtime, holding `permit` until it is done.
    fn run<Fut>(&self, permit: impl Send + 'static, work: impl FnOnce(Arc<Shared>) -> Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = work(self.0.clone());
        self.0.runtime.spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// The supplementary groups of process `pid` (none when it is gone or `/proc` says nothing), the first
/// [`FS_CALLER_GROUPS_MAX`] of them (as NFS passes the first 16): a group past those grants nothing through the mount.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|gid| gid.parse().ok()).take(FS_CALLER_GROUPS_MAX).collect())
        .unwrap_or_default()
}

/// A name from the kernel: UTF-8 (the state machine keeps names as strings), within the bound.
fn name_of(name: &OsStr) -> Result<String, fuser::Errno> {
    let name = name.to_str().ok_or(fuser::Errno::EINVAL)?;
    if name.len() > FS_NAME_BYTES_MAX {
        return Err(fuser::Errno::ENAMETOOLONG);
    }
    Ok(name.to_string())
}

/// `F_RDLCK`, `F_WRLCK` and `F_UNLCK` as Linux numbers them.
const F_RDLCK: i32 = 0;
const F_WRLCK: i32 = 1;
const F_UNLCK: i32 = 2;

fn lock_mode(typ: i32) -> Option<LockMode> {
    match typ {
        F_RDLCK => Some(LockMode::Read),
        F_WRLCK => Some(LockMode::Write),
        F_UNLCK => Some(LockMode::Unlock),
        _ => None,
    }
}

fn lock_type(mode: LockMode) -> i32 {
    match mode {
        LockMode::Read => F_RDLCK,
        LockMode::Write => F_WRLCK,
        LockMode::Unlock => F_UNLCK,
    }
}

fn set_time(time: TimeOrNow) -> SetTime {
    match time {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(convert::time_of(at)),
    }
}

/// Answers an xattr read: its size when asked for 0 bytes, `ERANGE` when it does not fit, else the bytes.
fn reply_sized(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if bytes.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

impl Filesystem for PandoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        // The state machine clears set-uid and set-gid on a write, truncate or chown by its caller; without this the
        // kernel would send a chmod on the writer's behalf, which a writer who is not the owner may not make.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV) {
            tracing::warn!(?missing, "the kernel cannot leave set-uid clearing to the file system");
        }
        // fcntl and flock locks are the cluster's (without these the kernel keeps them on this machine only).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS) {
            tracing::warn!(?missing, "the kernel keeps file locks on this machine only");
        }
        // Listings carry attributes (the kernel asks for them when lookups follow a listing, as in `ls -l`).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO)
        {
            tracing::debug!(?missing, "the kernel looks entries of a listing up one by one");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(fuser::Errno::EINVAL) => return reply.error(fuser::Errno::ENOENT),
            Err(error) => return reply.error(error),
        };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let found = s.looked_up(&caller, FsQueryKind::Lookup { parent: parent.0, name }).await;
            match s.counted(found) {
                Ok(attr) => s.reply_entry(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut known = lock(&self.0.known);
        if let Some(entry) = known.get_mut(&ino.0) {
            entry.lookups = entry.lookups.saturating_sub(nlookup);
            if entry.lookups == 0 {
                known.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let attr = s.looked_up(&caller, FsQueryKind::GetAttr { ino: ino.0 }).await;
            match s.counted(attr) {
                Ok(attr) => s.reply_attr(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if is_view(ino.0) {
            return reply.error(fuser::Errno::EROFS);
        }
        let caller = self.caller(req);
        let ids = &self.0.config.ids;
        let set = SetAttr {
            perm: mode.map(|mode| mode & pando_protocol::fs::mode::PERMISSIONS),
            uid: uid.map(|uid| ids.uid_to_stored(uid)),
            gid: gid.map(|gid| ids.gid_to_stored(gid)),
            size: None,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            through_open_file: fh.is_some(),
        };
        let ino = ino.0;
        self.spawn(move |s| async move {
            let result = async {
                let Some(size) = size else {
                    return match set.changes_besides_size() {
                        true => s.changed(&caller, FsCommandKind::SetAttr { ino, set }).await,
                        false => s.looked_up(&caller, FsQueryKind::GetAttr { ino }).await,
                    };
                };
                s.changes.fetch_add(1, Ordering::SeqCst);
                // Flush, resize and the buffer's new size under one lock of the buffer: a write buffered between
                // them would land after a size it never saw.
                match s.buffer(ino) {
                    Some(buffer) => {
                        let mut buffer = buffer.lock().await;
                        s.flush_locked(ino, &mut buffer).await?;
                        let after = s.resize(&caller, ino, size, set).await?;
                        buffer.committed(after.size);
                        Ok(after)
                    }
                    None => s.resize(&caller, ino, size, set).await,
                }
            }
            .await;
            match s.counted(result) {
                Ok(attr) => s.reply_attr(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let target = s.query(&caller, FsQueryKind::ReadLink { ino: ino.0 }).await;
            match s.counted(target) {
                Ok(FsQueryResponse::Target(target)) => reply.data(target.as_bytes()),
                Ok(other) => reply.error(errno(&wrong(other))),
                Err(error) => reply.error(error),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let Some(kind) = convert::kind_of_mode(mode) else { return reply.error(fuser::Errno::EINVAL) };
        let caller = self.caller(req);
        let perm = mode & !umask & pando_protocol::fs::mode::PERMISSIONS;
        let create = FsCommandKind::Create { parent: parent.0, name, kind, perm, rdev, exclusive: true };
        self.spawn(move |s| async move {
            let made = s.changed(&caller, create).await;
            match s.counted(made) {
                Ok(attr) => s.reply_entry(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let caller = self.caller(req);
        let perm = mode & !umask & pando_protocol::fs::mode::PERMISSIONS;
        self.spawn(move |s| async move {
            let made = s.changed(&caller, FsCommandKind::Mkdir { parent: parent.0, name, perm }).await;
            match s.counted(made) {
                Ok(attr) => s.reply_entry(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(req, parent, name, reply, false);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(req, parent, name, reply, true);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = match name_of(link_name) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let Some(target) = target.to_str().map(str::to_string) else { return reply.error(fuser::Errno::EINVAL) };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let made = s.changed(&caller, FsCommandKind::Symlink { parent: parent.0, name, target }).await;
            match s.counted(made) {
                Ok(attr) => s.reply_entry(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = match (name_of(name), name_of(newname)) {
            (Ok(name), Ok(new_name)) => (name, new_name),
            (Err(error), _) | (_, Err(error)) => return reply.error(error),
        };
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(fuser::Errno::EINVAL);
        };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let target = new_name.clone();
            let rename = FsCommandKind::Rename { parent: parent.0, name, new_parent: newparent.0, new_name, mode };
            let done = match mode {
                // The name it replaces may be the last of a file open here.
                RenameMode::Replace => s.remove_name(&caller, newparent.0, &target, rename).await,
                RenameMode::NoReplace | RenameMode::Exchange => s.command(&caller, rename).await,
            };
            match s.counted(done) {
                Ok(_) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let name = match name_of(newname) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let linked = s.changed(&caller, FsCommandKind::Link { ino: ino.0, parent: newparent.0, name }).await;
            match s.counted(linked) {
                Ok(attr) => s.reply_entry(reply, &caller, attr).await,
                Err(error) => reply.error(error),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mask = match flags.acc_mode() {
            fuser::OpenAccMode::O_RDONLY => 4,
            fuser::OpenAccMode::O_WRONLY => 2,
            fuser::OpenAccMode::O_RDWR => 6,
        } | if flags.0 & O_TRUNC != 0 { 2 } else { 0 };
        let append = flags.0 & O_APPEND != 0;
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let opened = async {
                if is_view(ino.0) {
                    s.query(&caller, FsQueryKind::Access { ino: ino.0, mask }).await?;
                    let attr = s.looked_up(&caller, FsQueryKind::GetAttr { ino: ino.0 }).await?;
                    if attr.kind == FileKind::Dir && mask & 2 != 0 {
                        return Err(Errno::EISDIR.error("a directory is not opened for writing"));
                    }
                    // No buffer, no page cache: every read renders the view as it is.
                    return Ok((s.next_handle.fetch_add(1, Ordering::Relaxed), None));
                }
                let (handle, attr) = s.open_file(&caller, ino.0, mask, append).await?;
                Ok((handle, Some(s.same_version(&attr))))
            }
            .await;
            match s.counted(opened) {
                Ok((handle, keep)) => {
                    let flags = match keep {
                        Some(true) => FopenFlags::FOPEN_KEEP_CACHE,
                        Some(false) => FopenFlags::empty(),
                        None => FopenFlags::FOPEN_DIRECT_IO,
                    };
                    reply.opened(FileHandle(handle), flags)
                }
                Err(error) => reply.error(error),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            // What this mount buffered reads as written (read-your-writes without a commit).
            let read = match s.buffer(ino.0) {
                _ if is_view(ino.0) => match &s.view {
                    Some(view) => view.read(&caller, ino.0, offset, size).await,
                    None => Err(Errno::ENOENT.error("no such inode")),
                },
                Some(buffer) => {
                    let buffer = buffer.lock().await;
                    s.fs.read_over(&caller, ino.0, offset, size, buffer.extents(), s.timeout()).await
                }
                None => s.fs.read_over(&caller, ino.0, offset, size, &[], s.timeout()).await,
            };
            match s.counted(read) {
                Ok(bytes) => reply.data(&bytes),
                Err(error) => reply.error(error),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.0.config.read_only {
            return reply.error(fuser::Errno::EROFS);
        }
        let caller = self.caller(req);
        let data = data.to_vec();
        self.spawn(move |s| async move {
            let written = s.write(caller, fh.0, offset, data).await;
            match s.counted(written) {
                Ok(written) => reply.written(written),
                Err(error) => reply.error(error),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(move |s| async move {
            // A close drops the closing process's fcntl locks on the file (POSIX), after its writes are committed.
            // Both happen whatever the other answers: a failed flush must not leave the locks behind.
            let flushed = s.flush(ino.0).await;
            let released = s.locks.closed(ino.0, lock_owner.0).await;
            let flushed = flushed.and(released);
            match s.counted(flushed) {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |s| async move {
            if let Err(error) = s.release(fh.0).await {
                tracing::error!(%error, "buffered writes could not be committed when their file was released");
            }
            // The last close of an open file drops the locks it owns: its flock, its open-file-description locks.
            if let Err(error) = s.locks.released(ino.0, fh.0, lock_owner.map(|owner| owner.0)).await {
                tracing::warn!(%error, "a lock could not be released at close; asked again later");
            }
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |s| async move {
            let flushed = s.flush(ino.0).await;
            match s.counted(flushed) {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let attr = async {
                let attr = s.looked_up(&caller, FsQueryKind::GetAttr { ino: ino.0 }).await?;
                if attr.kind == FileKind::Dir {
                    s.query(&caller, FsQueryKind::Access { ino: ino.0, mask: 4 }).await?;
                }
                Ok(attr)
            }
            .await;
            match s.counted(attr) {
                Ok(attr) if attr.kind != FileKind::Dir => reply.error(fuser::Errno::ENOTDIR),
                Ok(_) => {
                    let handle = s.next_handle.fetch_add(1, Ordering::Relaxed);
                    lock(&s.dirs).insert(handle, Listing::default());
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Err(error) => reply.error(error),
            }
        });
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let caller = self.caller(req);
        let Some(listing) = lock(&self.0.dirs).get(&fh.0).cloned() else { return reply.error(fuser::Errno::EBADF) };
        self.spawn(move |s| async move {
            let listed = match s.counted(s.rows(&listing, &caller, ino.0, offset).await) {
                Ok(listed) => listed,
                Err(error) => return reply.error(error),
            };
            for (at, row) in listed.rows.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(row.ino), at as u64 + 1, row.kind, &row.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// A listing with each entry's attributes (`ls -l` costs one read per page of entries, not one per entry). Each
    /// entry but `.` and `..` counts as a lookup the kernel later forgets; one gone since the listing is left out.
    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let caller = self.caller(req);
        let Some(listing) = lock(&self.0.dirs).get(&fh.0).cloned() else { return reply.error(fuser::Errno::EBADF) };
        self.spawn(move |s| async move {
            let listed = match s.counted(s.rows(&listing, &caller, ino.0, offset).await) {
                Ok(listed) => listed,
                Err(error) => return reply.error(error),
            };
            let ttl = s.config.attr_ttl;
            // The listed attributes only while nothing changed since they were read (a later page would otherwise
            // put sizes from before a write back into the kernel) and within the TTL.
            let fresh = listed.changes == s.changes.load(Ordering::SeqCst) && listed.at.elapsed() < ttl;
            let mut added = false;
            for (at, row) in listed.rows.iter().enumerate().skip(offset as usize) {
                let kernel = match s.row_attr(&caller, row, fresh).await {
                    Ok(kernel) => kernel,
                    Err(error) if Errno::of(&error) == Errno::ENOENT.code() => continue,
                    // Nothing sent yet: the error, not an empty page (which would end the listing).
                    Err(error) if !added => return reply.error(s.counted::<()>(Err(error)).unwrap_err()),
                    // What was added goes; the next call meets the error again.
                    Err(_) => break,
                };
                if reply.add(INodeNo(row.ino), at as u64 + 1, &row.name, &ttl, &kernel, Generation(0)) {
                    break;
                }
                added = true;
                if row.name != "." && row.name != ".." {
                    lock(&s.known).entry(row.ino).or_default().lookups += 1;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.0.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every namespace change was committed on a quorum before it was answered.
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let totals = s.statfs(&caller).await;
            match s.counted(totals) {
                Ok([blocks, bfree, bavail, files, ffree]) => reply.statfs(
                    blocks,
                    bfree,
                    bavail,
                    files,
                    ffree,
                    STATFS_BLOCK as u32,
                    FS_NAME_BYTES_MAX as u32,
                    STATFS_BLOCK as u32,
                ),
                Err(error) => reply.error(error),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = name.to_str().map(str::to_string) else { return reply.error(fuser::Errno::EINVAL) };
        let mode = match flags {
            0 => XattrMode::Either,
            XATTR_CREATE => XattrMode::Create,
            XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        let caller = self.caller(req);
        let set = FsCommandKind::SetXattr { ino: ino.0, name, value: value.to_vec().into(), mode };
        self.spawn(move |s| async move {
            let done = s.command(&caller, set).await;
            match s.counted(done) {
                Ok(_) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name.to_str().map(str::to_string) else { return reply.error(fuser::Errno::ENODATA) };
        if let Some(answer) = self.0.xattr_shortcut(ino.0, &name) {
            self.0.served.fetch_add(1, Ordering::Relaxed);
            return reply.error(errno(&answer));
        }
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let value = s.query(&caller, FsQueryKind::GetXattr { ino: ino.0, name }).await;
            match s.counted(value) {
                Ok(FsQueryResponse::Xattr(value)) => reply_sized(reply, size, &value),
                Ok(other) => reply.error(errno(&wrong(other))),
                Err(error) => reply.error(error),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let names = s.query(&caller, FsQueryKind::ListXattr { ino: ino.0 }).await;
            match s.counted(names) {
                Ok(FsQueryResponse::XattrNames(names)) => {
                    let mut bytes = Vec::new();
                    for name in names {
                        bytes.extend_from_slice(name.as_bytes());
                        bytes.push(0);
                    }
                    reply_sized(reply, size, &bytes)
                }
                Ok(other) => reply.error(errno(&wrong(other))),
                Err(error) => reply.error(error),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str().map(str::to_string) else { return reply.error(fuser::Errno::ENODATA) };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let done = s.command(&caller, FsCommandKind::RemoveXattr { ino: ino.0, name }).await;
            match s.counted(done) {
                Ok(_) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(mode) = lock_mode(typ).filter(|mode| *mode != LockMode::Unlock) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        if is_view(ino.0) {
            return reply.error(fuser::Errno::ENOLCK);
        }
        let call = LockCall { ino: ino.0, fh: fh.0, owner: lock_owner.0, pid, start, end, mode };
        self.spawn(move |s| async move {
            let found = s.locks.test(call).await;
            match s.counted(found) {
                Ok(Some(holder)) => reply.locked(holder.start, holder.end, lock_type(holder.mode), holder.pid),
                Ok(None) => reply.locked(start, end, F_UNLCK, 0),
                Err(error) => reply.error(error),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(mode) = lock_mode(typ) else { return reply.error(fuser::Errno::EINVAL) };
        if is_view(ino.0) {
            // The view's files are generated here and lock nothing anywhere.
            return reply.error(fuser::Errno::ENOLCK);
        }
        let call = LockCall { ino: ino.0, fh: fh.0, owner: lock_owner.0, pid, start, end, mode };
        // A request that may wait for as long as it takes runs outside the slots of `spawn` (waiters holding them
        // would leave none for the unlock they wait for), at most FUSE_LOCK_WAITERS_MAX at once: nothing here may
        // block the session's thread.
        let permit = if sleep && mode != LockMode::Unlock {
            let Ok(permit) = self.0.waiters.clone().try_acquire_owned() else {
                tracing::warn!("{FUSE_LOCK_WAITERS_MAX} lock requests wait already; another is refused");
                return reply.error(fuser::Errno::ENOLCK);
            };
            Some(permit)
        } else {
            None
        };
        let waiter = req.pid();
        let work = move |s: Arc<Shared>| async move {
            let set = s.locks.set(call, sleep, waiter).await;
            match s.counted(set) {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(error),
            }
        };
        match permit {
            Some(permit) => self.run(permit, work),
            None => self.spawn(work),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let caller = self.caller(req);
        let mask = (mask.bits() & 7) as u32;
        self.spawn(move |s| async move {
            let allowed = s.query(&caller, FsQueryKind::Access { ino: ino.0, mask }).await;
            match s.counted(allowed) {
                Ok(_) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let Some(kind) = convert::kind_of_mode(mode) else { return reply.error(fuser::Errno::EINVAL) };
        let caller = self.caller(req);
        let perm = mode & !umask & pando_protocol::fs::mode::PERMISSIONS;
        let exclusive = flags & O_EXCL != 0;
        let append = flags & O_APPEND != 0;
        let truncate = flags & O_TRUNC != 0;
        let create = FsCommandKind::Create { parent: parent.0, name, kind, perm, rdev: 0, exclusive };
        self.spawn(move |s| async move {
            let created = async {
                let mut attr = s.changed(&caller, create).await?;
                if truncate && attr.size > 0 {
                    attr = s.fs.truncate(&caller, attr.ino, 0, true, s.timeout()).await?;
                }
                s.same_version(&attr);
                // Before the handle opens a buffer: a new file's attributes as created, with no read again.
                let kernel = s.kernel_attr(&caller, attr).await?;
                Ok((kernel, s.open_handle(kernel.ino.0, append)))
            }
            .await;
            match s.counted(created) {
                Ok((kernel, handle)) => {
                    lock(&s.known).entry(kernel.ino.0).or_default().lookups += 1;
                    let (fh, flags) = (FileHandle(handle), FopenFlags::empty());
                    reply.created(&s.config.entry_ttl, &kernel, Generation(0), fh, flags);
                }
                Err(error) => reply.error(error),
            }
        });
    }
}

impl PandoFs {
    fn remove(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty, directory: bool) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(error) => return reply.error(error),
        };
        let caller = self.caller(req);
        self.spawn(move |s| async move {
            let done = if directory {
                s.command(&caller, FsCommandKind::Rmdir { parent: parent.0, name }).await
            } else {
                let unlink = FsCommandKind::Unlink { parent: parent.0, name: name.clone() };
                s.remove_name(&caller, parent.0, &name, unlink).await
            };
            match s.counted(done) {
                Ok(_) => reply.ok(),
                Err(error) => reply.error(error),
            }
        });
    }
}
