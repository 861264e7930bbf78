//! The cluster's file system as replicated state: inodes, directory entries, symlinks, hard links, extended
//! attributes and file data (small files inline, large ones as a map of content-addressed chunks), where every
//! namespace operation is one command of the log. A rename of a file or of a whole directory is therefore atomic on
//! every replica, and a crash can never leave half of one.
//!
//! The FUSE mount (and any other client) sends [`FsCommand`]s and [`FsQuery`]s on behalf of a [`Caller`] (uid, gid,
//! supplementary groups); the state machine checks permissions as Linux's `generic_permission` does, and refuses
//! with the `errno` a Linux file system gives ([`Errno`], carried in the error's detail), so the mount answers the
//! kernel exactly.
//!
//! Data: a file whose bytes fit in [`FS_INLINE_BYTES_MAX`] keeps them in one row, written in place by
//! [`FsCommand::Write`]. A larger file is a map from chunk index to a blob of up to [`FS_CHUNK_BYTES`] (BLAKE3, so the
//! same chunk written twice is stored once), replaced chunk by chunk by [`FsCommand::SetChunks`]; the state machine
//! counts each chunk's reference on its blob, so a blob a file still uses is never collected. Bytes past a chunk's
//! valid length, and missing chunks, read as zeros (holes).

/// Returns the refusal from the enclosing function (which answers `Answer<_>`) when `$check` is one.
macro_rules! refuse {
    ($check:expr) => {
        match $check {
            Ok(value) => value,
            Err(error) => return Ok(Err(error)),
        }
    };
}

pub mod api;
pub mod apply;
mod data;
pub(crate) mod kept;
pub mod locks;
mod perm;
pub mod query;
mod rows;
mod tx;
mod xattr;

use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::{
    FS_CALLER_GROUPS_MAX, FS_CHUNK_BYTES, FS_CHUNKS_PER_COMMAND_MAX, FS_FILE_BYTES_MAX, FS_INLINE_BYTES_MAX,
    FS_LIST_COUNT_MAX, FS_NAME_BYTES_MAX, FS_SYMLINK_BYTES_MAX, FS_XATTR_NAME_BYTES_MAX, FS_XATTR_VALUE_BYTES_MAX,
};
pub use api::{FsReply, FsRequest, SessionRequest, session_prefix};
pub use locks::{FileLock, LockMode, LockOwner};
pub use xattr::absent_for_anyone;

/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: u64 = 1;

/// The `errno` values the file system answers, as Linux numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i32)]
pub enum Errno {
    EPERM = 1,
    ENOENT = 2,
    EINTR = 4,
    EIO = 5,
    EAGAIN = 11,
    E2BIG = 7,
    EACCES = 13,
    EBUSY = 16,
    EEXIST = 17,
    EXDEV = 18,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    EFBIG = 27,
    ENOSPC = 28,
    EROFS = 30,
    EMLINK = 31,
    ERANGE = 34,
    ENAMETOOLONG = 36,
    ENOLCK = 37,
    ENOTEMPTY = 39,
    ELOOP = 40,
    ENODATA = 61,
    EOPNOTSUPP = 95,
    ESTALE = 116,
    // Added after the others: a variant's place is its number in serde's encodings.
    EBADF = 9,
    EDEADLK = 35,
}

impl Errno {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::EINTR => "EINTR",
            Errno::EIO => "EIO",
            Errno::EBADF => "EBADF",
            Errno::EDEADLK => "EDEADLK",
            Errno::EAGAIN => "EAGAIN",
            Errno::E2BIG => "E2BIG",
            Errno::EACCES => "EACCES",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EXDEV => "EXDEV",
            Errno::ENOTDIR => "ENOTDIR",
            Errno::EISDIR => "EISDIR",
            Errno::EINVAL => "EINVAL",
            Errno::EFBIG => "EFBIG",
            Errno::ENOSPC => "ENOSPC",
            Errno::EROFS => "EROFS",
            Errno::EMLINK => "EMLINK",
            Errno::ERANGE => "ERANGE",
            Errno::ENAMETOOLONG => "ENAMETOOLONG",
            Errno::ENOLCK => "ENOLCK",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ELOOP => "ELOOP",
            Errno::ENODATA => "ENODATA",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::ESTALE => "ESTALE",
        }
    }

    /// The wire code a client that knows nothing of `errno` sees.
    fn wire_code(self) -> ErrorCode {
        match self {
            Errno::ENOENT | Errno::ENODATA | Errno::ESTALE => ErrorCode::NotFound,
            Errno::EPERM | Errno::EACCES | Errno::EROFS => ErrorCode::Unauthorized,
            Errno::EEXIST | Errno::ENOTEMPTY | Errno::EXDEV | Errno::EAGAIN | Errno::EBUSY | Errno::EDEADLK => {
                ErrorCode::Conflict
            }
            Errno::E2BIG
            | Errno::EFBIG
            | Errno::ENOSPC
            | Errno::EMLINK
            | Errno::ENAMETOOLONG
            | Errno::ERANGE
            | Errno::ENOLCK => ErrorCode::TooLarge,
            Errno::EIO => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        }
    }

    /// The error carrying this `errno` (in its detail) and `message`.
    pub fn error(self, message: impl Into<String>) -> WireError {
        WireError::new(self.wire_code(), format!("{}: {}", self.name(), message.into()))
            .with_detail(crate::error::ErrorDetail::Errno { errno: self.code() })
    }

    /// The `errno` an error carries (`EIO` for one that carries none: the mount's answer to a fault).
    pub fn of(error: &WireError) -> i32 {
        match &error.detail {
            Some(crate::error::ErrorDetail::Errno { errno }) => *errno,
            _ => Errno::EIO.code(),
        }
    }
}

/// Who asks: the uid, gid and supplementary groups of the process behind the operation (root is uid 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    /// A caller names at most [`FS_CALLER_GROUPS_MAX`] supplementary groups.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.groups.len() > FS_CALLER_GROUPS_MAX {
            return Err(Errno::EINVAL.error(format!(
                "a caller with {} supplementary groups: at most {FS_CALLER_GROUPS_MAX}",
                self.groups.len()
            )));
        }
        Ok(())
    }

    pub const ROOT: Caller = Caller { uid: 0, gid: 0, groups: Vec::new() };

    pub fn new(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, groups: Vec::new() }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A point in time: seconds since the Unix epoch and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// A log time (milliseconds since the epoch).
    pub fn from_ms(ms: u64) -> Time {
        Time { secs: (ms / 1000) as i64, nanos: (ms % 1000) as u32 * 1_000_000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Permission and mode bits.
pub mod mode {
    pub const S_ISUID: u32 = 0o4000;
    pub const S_ISGID: u32 = 0o2000;
    pub const S_ISVTX: u32 = 0o1000;
    pub const S_IXGRP: u32 = 0o010;
    /// Every bit a `chmod` may set.
    pub const PERMISSIONS: u32 = 0o7777;
}

/// One inode's attributes (what `stat` shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits with set-uid, set-gid and sticky (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Bytes of a file, length of a symlink's target, entries of a directory.
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    /// Device number of a character or block device.
    pub rdev: u32,
    /// A directory's parent (its `..`); the root is its own. 0 for other kinds (they may have several).
    pub parent: u64,
}

/// A time a `setattr` sets: the log's now, or a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Time),
}

/// What a `setattr` changes (`None`: leaves it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The change comes through a file opened for writing (`ftruncate`): the open checked the permission.
    pub through_open_file: bool,
}

impl SetAttr {
    /// Whether it changes anything but the size.
    pub fn changes_besides_size(&self) -> bool {
        self.perm.is_some() || self.uid.is_some() || self.gid.is_some() || self.atime.is_some() || self.mtime.is_some()
    }
}

/// How a rename treats an existing target (Linux's `renameat2` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target (a file by a file, an empty directory by a directory).
    #[default]
    Replace,
    /// `RENAME_NOREPLACE`: `EEXIST` if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap the two, which must both exist.
    Exchange,
}

/// How a `setxattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    #[default]
    Either,
    /// `XATTR_CREATE`: `EEXIST` if it exists.
    Create,
    /// `XATTR_REPLACE`: `ENODATA` unless it exists.
    Replace,
}

/// One chunk of a large file: `len` valid bytes of `blob` (past them, zeros up to the chunk's end or the file's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub blob: BlobRef,
    pub len: u32,
}

/// A file's bytes as the state holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileData {
    /// All of it (the file's size is its length).
    Inline(Bytes),
    /// The chunks present, by index (ascending); a missing index is a hole.
    Chunks(Vec<(u64, Chunk)>),
}

/// Replicated file-system commands, each on behalf of `caller`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsCommandKind {
    /// A file, FIFO, socket or device named `name` in `parent` (`perm` already masked by the caller's umask).
    /// `exclusive`: `EEXIST` if the name exists (`O_EXCL`); otherwise an existing file is answered as it is.
    Create {
        parent: u64,
        name: String,
        kind: FileKind,
        perm: u32,
        rdev: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: u64,
        name: String,
        perm: u32,
    },
    Symlink {
        parent: u64,
        name: String,
        target: String,
    },
    /// A hard link to `ino` named `name` in `parent`.
    Link {
        ino: u64,
        parent: u64,
        name: String,
    },
    Unlink {
        parent: u64,
        name: String,
    },
    Rmdir {
        parent: u64,
        name: String,
    },
    Rename {
        parent: u64,
        name: String,
        new_parent: u64,
        new_name: String,
        mode: RenameMode,
    },
    SetAttr {
        ino: u64,
        set: SetAttr,
    },
    /// Writes `data` at `offset` of an inline file (`append`: at its end), which must stay within the inline bound;
    /// `EFBIG` answers that the file must be written as chunks. Answered with the new size, or with the attributes
    /// after it when `answer_attr` (a node before it answers the size).
    Write {
        ino: u64,
        offset: u64,
        data: Bytes,
        append: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        answer_attr: bool,
    },
    /// Replaces chunks of a file (`None` punches a hole) and sets its size; an inline file becomes a chunked one
    /// (its inline bytes must be in the chunks given).
    SetChunks {
        ino: u64,
        chunks: Vec<(u64, Option<Chunk>)>,
        size: u64,
    },
    SetXattr {
        ino: u64,
        name: String,
        value: Bytes,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: u64,
        name: String,
    },
    /// Sets or unlocks a byte range for `lock.owner` (`fcntl`'s `F_SETLK`, or `flock`): `EAGAIN` while another
    /// owner's lock is in the way. Not a change of the inode (no times move).
    SetLock {
        ino: u64,
        lock: FileLock,
    },
    /// Drops every lock `owner` holds on `ino` (its process closed the file, or its open file was released).
    ReleaseLocks {
        ino: u64,
        owner: LockOwner,
    },
    /// Keeps regular file `ino` past its last link for `lease` (a mount's session that has it open and is about to
    /// remove a name of it), until [`FsCommandKind::ReleaseKept`] or the lease's end. Not a change of the inode.
    KeepOpen {
        ino: u64,
        lease: u64,
    },
    /// `lease` no longer keeps `ino` (the mount's last handle closed): a file with no link left goes.
    ReleaseKept {
        ino: u64,
        lease: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCommand {
    pub caller: Caller,
    pub kind: FsCommandKind,
}

/// What a file-system command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponse {
    /// The inode created, linked, or changed.
    Attr(Attr),
    /// A write's new size.
    Written {
        size: u64,
    },
    Done,
}

/// File-system reads, on behalf of `caller` (served from a member's applied state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsQueryKind {
    Lookup {
        parent: u64,
        name: String,
    },
    GetAttr {
        ino: u64,
    },
    /// Entries of a directory after `after` (by name, exclusive), at most `limit`.
    ReadDir {
        ino: u64,
        after: Option<String>,
        limit: u32,
    },
    ReadLink {
        ino: u64,
    },
    /// A file's bytes: inline, or its chunks from index `first_chunk` on, at most `most` of them (the reader fetches
    /// the blobs).
    Read {
        ino: u64,
        first_chunk: u64,
        most: u32,
    },
    GetXattr {
        ino: u64,
        name: String,
    },
    ListXattr {
        ino: u64,
    },
    /// Whether the caller may read (4), write (2) or execute (1) `ino` (`access`).
    Access {
        ino: u64,
        mask: u32,
    },
    StatFs,
    /// The first lock of another owner in the way of `lock` (`F_GETLK`).
    TestLock {
        ino: u64,
        lock: FileLock,
    },
    /// [`FsQueryKind::ReadDir`] with each entry's attributes (a mount's `readdirplus`: `ls -l` of a directory costs
    /// one read per this many entries, not one per entry).
    ReadDirPlus {
        ino: u64,
        after: Option<String>,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsQuery {
    pub caller: Caller,
    pub kind: FsQueryKind,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    pub kind: FileKind,
}

/// The file system's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsTotals {
    pub inodes: u64,
    /// Bytes of files (their sizes, holes included).
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsQueryResponse {
    Attr(Attr),
    Entries {
        entries: Vec<DirEntry>,
        more: bool,
    },
    Target(String),
    Data {
        size: u64,
        data: FileData,
    },
    Xattr(Bytes),
    XattrNames(Vec<String>),
    Allowed,
    StatFs(FsTotals),
    /// What [`FsQueryKind::TestLock`] found in the way, if anything.
    Lock(Option<FileLock>),
    /// What [`FsQueryKind::ReadDirPlus`] listed.
    EntriesPlus {
        entries: Vec<(DirEntry, Attr)>,
        more: bool,
        /// The listed inodes that have extended attributes (a mount answers a read of one in the `security.` or
        /// `trusted.` namespace of any other listed inode with `ENODATA` itself while its listing is fresh: `ls -l`
        /// asks one of each entry).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        with_xattrs: Vec<u64>,
    },
}

/// A name in a directory: not empty, not `.` or `..`, no `/` or NUL, at most [`FS_NAME_BYTES_MAX`] bytes.
pub fn validate_name(name: &str) -> Result<(), WireError> {
    if name.len() > FS_NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG.error(format!("a name is at most {FS_NAME_BYTES_MAX} bytes")));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Errno::EINVAL.error(format!("{name:?} is not a name")));
    }
    Ok(())
}

fn validate_range(lock: &FileLock) -> Result<(), WireError> {
    if lock.start > lock.end {
        return Err(Errno::EINVAL.error(format!("a lock's range {}..={} ends before it starts", lock.start, lock.end)));
    }
    Ok(())
}

fn validate_xattr_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > FS_XATTR_NAME_BYTES_MAX {
        return Err(Errno::ERANGE.error(format!("an attribute name is 1 to {FS_XATTR_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

impl FsCommand {
    /// Bytes the command weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        256 + self.caller.groups.len() * 5
            + match &self.kind {
                FsCommandKind::Write { data, .. } => data.len(),
                FsCommandKind::SetXattr { value, .. } => value.len(),
                FsCommandKind::SetChunks { chunks, .. } => chunks.len() * 64,
                FsCommandKind::Symlink { target, .. } => target.len(),
                _ => 0,
            }
    }

    /// Checks what can be checked without the state.
    pub fn validate(&self) -> Result<(), WireError> {
        // Not the caller's groups: this runs again when the command is applied, and a bound added later must not
        // refuse there what an older node accepted (replicas would differ). Requests are bounded where they come
        // in ([`Caller::validate`] in `FsRequest::validate` and the node's file-system service).
        match &self.kind {
            FsCommandKind::Create { name, kind, .. } => {
                if *kind == FileKind::Dir || *kind == FileKind::Symlink {
                    return Err(Errno::EINVAL.error("directories and symlinks have commands of their own"));
                }
                validate_name(name)
            }
            FsCommandKind::Mkdir { name, .. } | FsCommandKind::Link { name, .. } => validate_name(name),
            FsCommandKind::Unlink { name, .. } | FsCommandKind::Rmdir { name, .. } => validate_name(name),
            FsCommandKind::Symlink { name, target, .. } => {
                validate_name(name)?;
                if target.is_empty() {
                    return Err(Errno::ENOENT.error("a symlink's target is not empty"));
                }
                if target.len() > FS_SYMLINK_BYTES_MAX || target.contains('\0') {
                    return Err(Errno::ENAMETOOLONG.error(format!("a target is at most {FS_SYMLINK_BYTES_MAX} bytes")));
                }
                Ok(())
            }
            FsCommandKind::Rename { name, new_name, .. } => {
                validate_name(name)?;
                validate_name(new_name)
            }
            FsCommandKind::SetAttr { set, .. } => {
                if set.perm.is_some_and(|perm| perm & !mode::PERMISSIONS != 0) {
                    return Err(Errno::EINVAL.error("a mode has permission bits only"));
                }
                if set.size.is_some_and(|size| size > FS_FILE_BYTES_MAX) {
                    return Err(Errno::EFBIG.error(format!("a file is at most {FS_FILE_BYTES_MAX} bytes")));
                }
                Ok(())
            }
            FsCommandKind::Write { offset, data, .. } => {
                if offset.saturating_add(data.len() as u64) > FS_INLINE_BYTES_MAX as u64 {
                    return Err(Errno::EFBIG.error("past the inline bound: write chunks"));
                }
                Ok(())
            }
            FsCommandKind::SetChunks { chunks, size, .. } => {
                if *size > FS_FILE_BYTES_MAX {
                    return Err(Errno::EFBIG.error(format!("a file is at most {FS_FILE_BYTES_MAX} bytes")));
                }
                if chunks.is_empty() || chunks.len() > FS_CHUNKS_PER_COMMAND_MAX {
                    return Err(Errno::EINVAL.error(format!("a command sets 1 to {FS_CHUNKS_PER_COMMAND_MAX} chunks")));
                }
                for window in chunks.windows(2) {
                    if window[0].0 >= window[1].0 {
                        return Err(Errno::EINVAL.error("chunks are given in ascending order, once each"));
                    }
                }
                for (index, chunk) in chunks {
                    let Some(chunk) = chunk else { continue };
                    if chunk.len as u64 > FS_CHUNK_BYTES || chunk.len as u64 > chunk.blob.size || chunk.len == 0 {
                        return Err(Errno::EINVAL.error(format!("chunk {index} claims {} bytes", chunk.len)));
                    }
                    if index.saturating_mul(FS_CHUNK_BYTES) >= *size {
                        return Err(Errno::EINVAL.error(format!("chunk {index} is past the file's end")));
                    }
                }
                Ok(())
            }
            FsCommandKind::SetXattr { name, value, .. } => {
                validate_xattr_name(name)?;
                if value.len() > FS_XATTR_VALUE_BYTES_MAX {
                    return Err(Errno::E2BIG.error(format!("a value is at most {FS_XATTR_VALUE_BYTES_MAX} bytes")));
                }
                Ok(())
            }
            FsCommandKind::RemoveXattr { name, .. } => validate_xattr_name(name),
            FsCommandKind::SetLock { lock, .. } => validate_range(lock),
            FsCommandKind::ReleaseLocks { .. } | FsCommandKind::KeepOpen { .. } | FsCommandKind::ReleaseKept { .. } => {
                Ok(())
            }
        }
    }
}

impl FsQuery {
    pub fn validate(&self) -> Result<(), WireError> {
        match &self.kind {
            FsQueryKind::Lookup { name, .. } => validate_name(name),
            FsQueryKind::ReadDir { limit, .. } | FsQueryKind::ReadDirPlus { limit, .. }
                if !(1..=FS_LIST_COUNT_MAX).contains(limit) =>
            {
                Err(Errno::EINVAL.error(format!("a listing takes 1 to {FS_LIST_COUNT_MAX} entries")))
            }
            FsQueryKind::GetXattr { name, .. } => validate_xattr_name(name),
            FsQueryKind::TestLock { lock, .. } if lock.mode == LockMode::Unlock => {
                Err(Errno::EINVAL.error("a lock test asks for a read or a write lock"))
            }
            FsQueryKind::TestLock { lock, .. } => validate_range(lock),
            _ => Ok(()),
        }
    }
}

/// Where chunk `index` starts in its file.
pub fn chunk_start(index: u64) -> u64 {
    index * FS_CHUNK_BYTES
}

#[cfg(test)]
mod tests;
