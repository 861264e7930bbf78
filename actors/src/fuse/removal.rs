//! Removing a name while a file may be open through this mount, and opening a file while its name is being removed.
//!
//! POSIX lets a process go on using a file it opened after the file's last name went. The mount keeps such a file
//! through its session lease (`locks.rs`, `pando_protocol::fs::kept`) when a removal finds it open here. What it must
//! not do is let an open and a removal cross: the kernel resolves a name, releases the directory, and only then sends
//! the open of the inode, so an open can arrive after a removal looked (and found the file not open) but before the
//! removal's command destroyed the file. The open would then answer a handle on a file that is about to go.
//!
//! **Invariant:** every removal registers before it looks whether the file is open, and every open registers its
//! handle and looks for removals under way in one hold of the buffers' lock, which the removal also holds as it
//! registers. So either the removal sees the handle (and keeps the file), or the open sees the removal: it then waits
//! until every removal under way when it opened has ended, and asks the cluster whether the file still has a name (or
//! is kept here); if not, the open lost the race and answers `ENOENT`, as if the removal had come first.

use std::collections::BTreeSet;

use pando_protocol::error::WireError;
use pando_protocol::fs::{Attr, Caller, Errno, FileKind, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse};

use super::shared::{Shared, lock};

/// The removals of names under way through this mount, by number.
#[derive(Debug, Default)]
pub(super) struct Removals {
    next: u64,
    under_way: BTreeSet<u64>,
}

impl Removals {
    /// `Some(upto)`: an open that sees this must wait until no removal numbered below `upto` is under way.
    pub(super) fn under_way(&self) -> Option<u64> {
        (!self.under_way.is_empty()).then_some(self.next)
    }

    /// Whether every removal numbered below `upto` has ended.
    fn ended_below(&self, upto: u64) -> bool {
        self.under_way.first().is_none_or(|first| *first >= upto)
    }
}

/// A removal under way; it ends when this drops (answered, failed or cancelled).
struct UnderWay<'a> {
    shared: &'a Shared,
    number: u64,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        lock(&self.shared.removals).under_way.remove(&self.number);
        self.shared.removed.notify_waiters();
    }
}

impl Shared {
    /// Whether a handle on `ino` is open through this mount.
    pub(super) fn is_open(&self, ino: u64) -> bool {
        lock(&self.buffers).get(&ino).is_some_and(|buffered| buffered.handles > 0)
    }

    /// Registers a removal; answers it and whether anything is open through this mount.
    fn begin_removal(&self) -> (UnderWay<'_>, bool) {
        let buffers = lock(&self.buffers);
        let mut removals = lock(&self.removals);
        let number = removals.next;
        removals.next += 1;
        removals.under_way.insert(number);
        (UnderWay { shared: self, number }, !buffers.is_empty())
    }

    /// Removes a name (`remove`: an unlink, an rmdir or a rename that may replace `name` in `parent`). If the name's
    /// file is open through this mount, the session keeps it first, so the open handles go on reading and writing
    /// it until their last close, as POSIX says (a keep that fails fails the removal with `EBUSY`, as NFS's silly
    /// rename does, rather than lose the file under its handles). A mount with nothing open asks nothing more.
    pub(super) async fn remove_name(
        &self,
        caller: &Caller,
        parent: u64,
        name: &str,
        remove: FsCommandKind,
    ) -> Result<FsResponse, WireError> {
        let (_under_way, anything_open) = self.begin_removal();
        let mut kept = None;
        if !super::view::is_view(parent) && anything_open {
            let named = self.fs.query(caller, FsQueryKind::Lookup { parent, name: name.to_string() }, self.timeout());
            match named.await {
                Ok(FsQueryResponse::Attr(attr)) if attr.kind == FileKind::File && self.is_open(attr.ino) => {
                    if let Err(error) = self.locks.keep(attr.ino).await {
                        return Err(Errno::EBUSY.error(format!(
                            "{name:?} is open here and could not be kept open past its removal: {error}"
                        )));
                    }
                    kept = Some(attr.ino);
                }
                Ok(_) => {}
                // Not knowing whether the name's file is open here, the removal could pull it from its handles.
                Err(error) if Errno::of(&error) == Errno::EIO.code() => return Err(error),
                // A refusal (ENOENT, EACCES, ...): the removal answers for itself.
                Err(_) => {}
            }
        }
        let removed = self.command(caller, remove).await;
        // The last handle may have closed while the keep was asked (the kernel sends a close's release after the
        // close returns, so `close; unlink` races it): that close found nothing kept to let go of. Before this, each
        // such race kept a file for the session's life (CI's 100,000-operation fsx found 30 MB of them).
        if let Some(ino) = kept
            && !self.is_open(ino)
        {
            self.locks.let_go(ino).await;
        }
        removed
    }

    /// Opens a handle on regular file or symlink `ino` (not the view's) for `caller`, who needs `mask` (`R_OK` 4,
    /// `W_OK` 2) on it; answers the handle and the file's attributes. The handle is registered before anything is
    /// checked, so a removal of the file's name either sees it (and keeps the file) or is seen: the open then waits
    /// for every removal under way when it registered, and answers `ENOENT` if the file lost its last name meanwhile
    /// without being kept here (see the module's invariant).
    pub(super) async fn open_file(
        &self,
        caller: &Caller,
        ino: u64,
        mask: u32,
        append: bool,
    ) -> Result<(u64, Attr), WireError> {
        let (handle, racing) = self.open_handle_amid_removals(ino, append);
        match self.checked_open(caller, ino, mask, racing).await {
            Ok(attr) => Ok((handle, attr)),
            Err(error) => {
                let _ = self.release(handle).await;
                Err(error)
            }
        }
    }

    async fn checked_open(&self, caller: &Caller, ino: u64, mask: u32, racing: Option<u64>) -> Result<Attr, WireError> {
        self.query(caller, FsQueryKind::Access { ino, mask }).await?;
        let mut attr = self.looked_up(caller, FsQueryKind::GetAttr { ino }).await?;
        if attr.kind == FileKind::Dir && mask & 2 != 0 {
            return Err(Errno::EISDIR.error("a directory is not opened for writing"));
        }
        if let Some(upto) = racing {
            loop {
                let ended = self.removed.notified();
                let mut ended = std::pin::pin!(ended);
                ended.as_mut().enable();
                if lock(&self.removals).ended_below(upto) {
                    break;
                }
                ended.await;
            }
            attr = self.looked_up(caller, FsQueryKind::GetAttr { ino }).await?;
        }
        if attr.kind == FileKind::File && attr.nlink == 0 && !self.locks.keeps(ino) {
            return Err(Errno::ENOENT.error(format!("inode {ino} lost its last name while it was being opened")));
        }
        Ok(attr)
    }
}
