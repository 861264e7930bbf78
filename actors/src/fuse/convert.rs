//! Between the file system's replicated types and the kernel's: attributes, kinds, times and error numbers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::fs::{Attr, Errno, FileKind, Time};

use super::IdMap;

/// The preferred I/O size `stat` reports: large, so `cp` and friends move data in few requests.
pub const BLOCK_SIZE: u32 = 128 * 1024;

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kind a `mknod` mode names (`S_IFMT` bits; none is a regular file, as Linux takes it).
pub fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc_ifmt::S_IFMT {
        0 | libc_ifmt::S_IFREG => Some(FileKind::File),
        libc_ifmt::S_IFIFO => Some(FileKind::Fifo),
        libc_ifmt::S_IFSOCK => Some(FileKind::Socket),
        libc_ifmt::S_IFCHR => Some(FileKind::CharDevice),
        libc_ifmt::S_IFBLK => Some(FileKind::BlockDevice),
        _ => None,
    }
}

/// `S_IFMT` and its kinds, as Linux numbers them.
mod libc_ifmt {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

pub fn system_time(time: Time) -> SystemTime {
    if time.secs >= 0 {
        UNIX_EPOCH + Duration::new(time.secs as u64, time.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(time.secs.unsigned_abs()) + Duration::from_nanos(time.nanos as u64)
    }
}

pub fn time_of(at: SystemTime) -> Time {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => Time { secs: since.as_secs() as i64, nanos: since.subsec_nanos() },
        Err(before) => {
            let before = before.duration();
            let (mut secs, mut nanos) = (-(before.as_secs() as i64), before.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Time { secs, nanos }
        }
    }
}

/// The kernel's view of `attr`, with `size` (the mount's own view: buffered writes may have grown it).
pub fn file_attr(attr: &Attr, size: u64, ids: &IdMap) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size,
        blocks: size.div_ceil(512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.crtime),
        kind: file_type(attr.kind),
        perm: attr.perm as u16,
        nlink: attr.nlink,
        uid: ids.uid_to_local(attr.uid),
        gid: ids.gid_to_local(attr.gid),
        rdev: attr.rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The `errno` the kernel is answered for an error: the one a refusal carries, else one for its wire code.
pub fn errno(error: &WireError) -> fuser::Errno {
    let code = Errno::of(error);
    if code != Errno::EIO.code() {
        return fuser::Errno::from_i32(code);
    }
    fuser::Errno::from_i32(match error.code {
        ErrorCode::Busy => 11,         // EAGAIN
        ErrorCode::Timeout => 110,     // ETIMEDOUT
        ErrorCode::Unavailable => 107, // ENOTCONN: no leader reachable
        // A `pando mount` whose token may not do this (a read-only token writing, or one revoked or expired).
        ErrorCode::Unauthorized => 13, // EACCES
        ErrorCode::TooLarge => 27,     // EFBIG
        _ => 5,                        // EIO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for time in [
            Time { secs: 0, nanos: 0 },
            Time { secs: 1_700_000_000, nanos: 123_456_789 },
            Time { secs: -1, nanos: 500_000_000 },
            Time { secs: -86_400, nanos: 1 },
        ] {
            assert_eq!(time_of(system_time(time)), time, "{time:?}");
        }
    }

    #[test]
    fn mknod_modes_name_their_kinds() {
        assert_eq!(kind_of_mode(0o100644), Some(FileKind::File));
        assert_eq!(kind_of_mode(0o644), Some(FileKind::File));
        assert_eq!(kind_of_mode(0o010600), Some(FileKind::Fifo));
        assert_eq!(kind_of_mode(0o040755), None);
    }
}
