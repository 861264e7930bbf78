//! The file system on the client protocol: what a mount on a machine that is not a member (`pando mount`) asks a
//! node, mirroring what a member's own mount asks its node in-process. A token with [`Capability::Fs`] may send
//! them, and its mount names the caller (uid, gid, groups) the state machine checks permissions for, as an NFS
//! client with `AUTH_SYS` does: the token is trusted with every uid of the file system.
//!
//! Bytes travel in bounded requests: a read answers at most [`FS_REMOTE_READ_BYTES_MAX`], a write carries at most
//! [`FS_REMOTE_WRITE_BYTES_MAX`] (the mount splits its write-back buffer across several, in order).
//!
//! [`Capability::Fs`]: crate::token::Capability::Fs

use serde::{Deserialize, Serialize};

use super::{Attr, Caller, FsCommand, FsCommandKind, FsQuery, FsQueryKind, FsQueryResponse, FsResponse};
use crate::coord::LeaseInfo;
use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::{
    FRAME_SIZE_BYTES_MAX, FS_FILE_BYTES_MAX, FS_REMOTE_READ_BYTES_MAX, FS_REMOTE_WRITE_BYTES_MAX,
    FS_REMOTE_WRITE_EXTENTS_MAX,
};
use crate::token::Access;

/// What a mount asks of its session's lease (a coordination lease of no prefix: its end releases the mount's file
/// locks and the files it keeps open after their last unlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionRequest {
    Grant { ttl_ms: u64 },
    KeepAlive { lease: u64 },
    End { lease: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// One replicated command (answered [`FsReply::Done`]).
    Command { caller: Caller, kind: FsCommandKind },
    /// One linearizable read (answered [`FsReply::Query`]).
    Query { caller: Caller, kind: FsQueryKind },
    /// Up to `len` committed bytes of a file from `offset`, holes as zeros (answered [`FsReply::Data`]).
    Read { caller: Caller, ino: u64, offset: u64, len: u32 },
    /// Extents (offset, bytes; a later one over an earlier one) written back to a file, inline or as chunks as its
    /// size says (answered [`FsReply::Attr`]).
    Write { caller: Caller, ino: u64, extents: Vec<(u64, Bytes)> },
    /// A file's new size (answered [`FsReply::Attr`]).
    Truncate { caller: Caller, ino: u64, size: u64, through_open_file: bool },
    /// The mount's lock session (answered [`FsReply::Session`]).
    Session(SessionRequest),
    /// The free space of the disk holding the node's data, for `statfs` (answered [`FsReply::FreeBytes`]).
    FreeBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Done(FsResponse),
    Query(FsQueryResponse),
    /// The file's committed size and the bytes read (`offset` up to at most that size).
    Data {
        size: u64,
        bytes: Bytes,
    },
    Attr(Attr),
    /// The lease granted or kept alive; `None` once ended.
    Session(Option<LeaseInfo>),
    /// `None`: the node does not know it.
    FreeBytes(Option<u64>),
}

/// The prefix of the lock-session leases a token's mounts grant (`accessor`: the token's): only requests of that
/// token reach them, so one mount cannot renew, end or lock with another's session. It starts with a NUL byte, so
/// only a token of the whole keyspace reaches it through the coordination requests.
pub fn session_prefix(accessor: &[u8]) -> Bytes {
    let hex: String = accessor.iter().map(|byte| format!("{byte:02x}")).collect();
    Bytes::from(format!("\0fs-session/{hex}/").into_bytes())
}

const _: () = assert!(FS_REMOTE_READ_BYTES_MAX + 64 * 1024 <= FRAME_SIZE_BYTES_MAX);
const _: () = assert!(FS_REMOTE_WRITE_BYTES_MAX + 64 * 1024 <= FRAME_SIZE_BYTES_MAX);

impl FsRequest {
    /// The request run as `acting` instead of the caller it names (a token that fixes its uid and gid).
    pub fn acting_as(self, acting: &Caller) -> FsRequest {
        let caller = acting.clone();
        match self {
            FsRequest::Command { kind, .. } => FsRequest::Command { caller, kind },
            FsRequest::Query { kind, .. } => FsRequest::Query { caller, kind },
            FsRequest::Read { ino, offset, len, .. } => FsRequest::Read { caller, ino, offset, len },
            FsRequest::Write { ino, extents, .. } => FsRequest::Write { caller, ino, extents },
            FsRequest::Truncate { ino, size, through_open_file, .. } => {
                FsRequest::Truncate { caller, ino, size, through_open_file }
            }
            request @ (FsRequest::Session(_) | FsRequest::FreeBytes) => request,
        }
    }

    /// A caller's mistake, answered before anything runs.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            FsRequest::Command { caller, .. }
            | FsRequest::Query { caller, .. }
            | FsRequest::Read { caller, .. }
            | FsRequest::Write { caller, .. }
            | FsRequest::Truncate { caller, .. } => caller.validate()?,
            FsRequest::Session(_) | FsRequest::FreeBytes => {}
        }
        match self {
            // A chunk map names blobs by hash: one sent from outside could point a file at any blob of the cluster
            // and read it without the blob capability. Chunks are made by the node's data path (`Write`) only.
            FsRequest::Command { kind: FsCommandKind::SetChunks { .. }, .. } => Err(WireError::invalid(
                "chunk maps are set by the node's data path: send the bytes as a file-system write",
            )),
            FsRequest::Command { caller, kind } => FsCommand { caller: caller.clone(), kind: kind.clone() }.validate(),
            FsRequest::Query { caller, kind } => FsQuery { caller: caller.clone(), kind: kind.clone() }.validate(),
            FsRequest::Read { len, .. } if *len as usize > FS_REMOTE_READ_BYTES_MAX => Err(WireError::too_large(
                format!("a read of {len} bytes: at most {FS_REMOTE_READ_BYTES_MAX} per request"),
            )),
            FsRequest::Read { offset, len, .. } if offset.saturating_add(*len as u64) > FS_FILE_BYTES_MAX => {
                Err(WireError::invalid(format!("a read past the largest file ({FS_FILE_BYTES_MAX} bytes)")))
            }
            FsRequest::Write { extents, .. } if extents.len() > FS_REMOTE_WRITE_EXTENTS_MAX => {
                Err(WireError::too_large(format!(
                    "a write of {} extents: at most {FS_REMOTE_WRITE_EXTENTS_MAX} per request",
                    extents.len()
                )))
            }
            FsRequest::Write { extents, .. } => {
                let bytes: usize = extents.iter().map(|(_, data)| data.len()).sum();
                if bytes > FS_REMOTE_WRITE_BYTES_MAX {
                    return Err(WireError::too_large(format!(
                        "a write of {bytes} bytes: at most {FS_REMOTE_WRITE_BYTES_MAX} per request"
                    )));
                }
                if extents.iter().any(|(offset, data)| offset.saturating_add(data.len() as u64) > FS_FILE_BYTES_MAX) {
                    return Err(WireError::invalid(format!(
                        "an extent ends past the largest file ({FS_FILE_BYTES_MAX} bytes)"
                    )));
                }
                Ok(())
            }
            FsRequest::Read { .. } | FsRequest::Truncate { .. } | FsRequest::Session(_) | FsRequest::FreeBytes => {
                Ok(())
            }
        }
    }

    /// What the token must allow: reads and the lock session (locks are for readers too) need
    /// [`Access::FsRead`], every change [`Access::FsWrite`].
    pub fn required(&self) -> Access<'static> {
        match self {
            FsRequest::Query { .. } | FsRequest::Read { .. } | FsRequest::Session(_) | FsRequest::FreeBytes => {
                Access::FsRead
            }
            FsRequest::Command { kind: FsCommandKind::SetLock { .. } | FsCommandKind::ReleaseLocks { .. }, .. } => {
                Access::FsRead
            }
            // Every change, and keeping a file past its removal (for a mount that removes names: a reader's keep
            // would hold a removed file's room for as long as it liked).
            FsRequest::Command { .. } | FsRequest::Write { .. } | FsRequest::Truncate { .. } => Access::FsWrite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::fs::ROOT_INO;

    #[test]
    fn reads_and_locks_need_read_access_and_every_change_write_access() {
        let caller = Caller::ROOT;
        let query = FsRequest::Query { caller: caller.clone(), kind: FsQueryKind::GetAttr { ino: ROOT_INO } };
        assert_eq!(query.required(), Access::FsRead);
        let unlink = FsCommandKind::Unlink { parent: ROOT_INO, name: "a".into() };
        assert_eq!(FsRequest::Command { caller: caller.clone(), kind: unlink }.required(), Access::FsWrite);
        let truncate = FsRequest::Truncate { caller, ino: 2, size: 0, through_open_file: false };
        assert_eq!(truncate.required(), Access::FsWrite);
        assert_eq!(FsRequest::Session(SessionRequest::Grant { ttl_ms: 10_000 }).required(), Access::FsRead);
        let keep = FsRequest::Command { caller: Caller::ROOT, kind: FsCommandKind::KeepOpen { ino: 2, lease: 1 } };
        assert_eq!(keep.required(), Access::FsWrite, "only a mount that removes names keeps files");
    }

    #[test]
    fn oversized_reads_and_writes_and_chunk_maps_from_outside_are_refused_before_anything_runs() {
        let read = FsRequest::Read { caller: Caller::ROOT, ino: 2, offset: 0, len: u32::MAX };
        assert_eq!(read.validate().unwrap_err().code, ErrorCode::TooLarge);
        let far = FsRequest::Read { caller: Caller::ROOT, ino: 2, offset: u64::MAX, len: 1 };
        assert_eq!(far.validate().unwrap_err().code, ErrorCode::InvalidArgument, "no offset overflows");
        let big = Bytes::from(vec![0u8; FS_REMOTE_WRITE_BYTES_MAX + 1]);
        let write = FsRequest::Write { caller: Caller::ROOT, ino: 2, extents: vec![(0, big)] };
        assert_eq!(write.validate().unwrap_err().code, ErrorCode::TooLarge);
        let wraps = FsRequest::Write { caller: Caller::ROOT, ino: 2, extents: vec![(u64::MAX, Bytes::from(vec![1]))] };
        assert_eq!(wraps.validate().unwrap_err().code, ErrorCode::InvalidArgument);
        let chunks = FsCommandKind::SetChunks { ino: 2, chunks: Vec::new(), size: 0 };
        let pointed = FsRequest::Command { caller: Caller::ROOT, kind: chunks }.validate().unwrap_err();
        assert_eq!(pointed.code, ErrorCode::InvalidArgument, "a chunk map from outside could name any blob");
        let bad_name = FsCommandKind::Unlink { parent: ROOT_INO, name: "a/b".into() };
        assert!(FsRequest::Command { caller: Caller::ROOT, kind: bad_name }.validate().is_err());
    }

    #[test]
    fn a_write_of_many_tiny_extents_and_a_caller_of_too_many_groups_are_refused() {
        let tiny: Vec<(u64, Bytes)> =
            (0..=FS_REMOTE_WRITE_EXTENTS_MAX as u64).map(|at| (at * 2, Bytes::from(vec![1]))).collect();
        let write = FsRequest::Write { caller: Caller::ROOT, ino: 2, extents: tiny };
        assert_eq!(write.validate().unwrap_err().code, ErrorCode::TooLarge, "the extents would outgrow a frame");
        let crowded = Caller { uid: 5, gid: 5, groups: (0..=crate::limits::FS_CALLER_GROUPS_MAX as u32).collect() };
        let kinds = [
            FsRequest::Query { caller: crowded.clone(), kind: FsQueryKind::GetAttr { ino: ROOT_INO } },
            FsRequest::Truncate { caller: crowded.clone(), ino: 2, size: 0, through_open_file: false },
            FsRequest::Command {
                caller: crowded.clone(),
                kind: FsCommandKind::Unlink { parent: ROOT_INO, name: "a".into() },
            },
        ];
        for request in kinds {
            assert_eq!(request.validate().unwrap_err().code, ErrorCode::InvalidArgument, "{request:?}");
        }
        let mut fine = crowded;
        fine.groups.pop();
        assert!(FsRequest::Query { caller: fine, kind: FsQueryKind::GetAttr { ino: ROOT_INO } }.validate().is_ok());
    }
}
