//! The file system from the client's side: typed calls for what a mount elsewhere (`pando mount`) asks a node. A
//! token with the `fs` capability may make them; each names the caller (uid, gid, groups) it runs as.

use std::time::{Duration, Instant};

use pando_protocol::coord::LeaseInfo;
use pando_protocol::envelope::{Request, Response};
use pando_protocol::fs::{
    Attr, Caller, FsCommandKind, FsQueryKind, FsQueryResponse, FsReply, FsRequest, FsResponse, SessionRequest,
};
use pando_protocol::limits::{FS_REMOTE_READ_BYTES_MAX, FS_REMOTE_WRITE_BYTES_MAX, FS_REMOTE_WRITE_EXTENTS_MAX};

use crate::{Client, ClientError};

/// What is left of an operation's time at its next request (several requests share one deadline: a large write is
/// bounded as a whole, not per piece).
fn left(deadline: Instant) -> Result<Duration, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ClientError::Timeout("the file-system operation ran out of time between its requests".into()));
    }
    Ok(left)
}

fn unexpected(reply: &FsReply) -> ClientError {
    ClientError::Protocol(format!("a file-system request answered {reply:?}"))
}

impl Client {
    async fn fs(&self, request: FsRequest, timeout: Duration) -> Result<FsReply, ClientError> {
        match self.request_within(Request::Fs(request), timeout).await? {
            Response::Fs(reply) => Ok(reply),
            other => Err(ClientError::Protocol(format!("a file-system request answered {other:?}"))),
        }
    }

    /// One replicated file-system command, run as `caller`.
    pub async fn fs_command(
        &self,
        caller: &Caller,
        kind: FsCommandKind,
        timeout: Duration,
    ) -> Result<FsResponse, ClientError> {
        match self.fs(FsRequest::Command { caller: caller.clone(), kind }, timeout).await? {
            FsReply::Done(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// One linearizable file-system read, as `caller`.
    pub async fn fs_query(
        &self,
        caller: &Caller,
        kind: FsQueryKind,
        timeout: Duration,
    ) -> Result<FsQueryResponse, ClientError> {
        match self.fs(FsRequest::Query { caller: caller.clone(), kind }, timeout).await? {
            FsReply::Query(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The file's committed size and up to `len` of its bytes from `offset` (never past that size; holes as
    /// zeros), in as many requests as the bound on one takes.
    pub async fn fs_read(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let at = offset + out.len() as u64;
            let piece = (len as usize).saturating_sub(out.len()).min(FS_REMOTE_READ_BYTES_MAX) as u32;
            let request = FsRequest::Read { caller: caller.clone(), ino, offset: at, len: piece };
            let (size, bytes) = match self.fs(request, left(deadline)?).await? {
                FsReply::Data { size, bytes } => (size, bytes.into_vec()),
                other => return Err(unexpected(&other)),
            };
            let short = bytes.len() < piece as usize;
            out.extend_from_slice(&bytes);
            if short || out.len() >= len as usize {
                return Ok((size, out));
            }
        }
    }

    /// Writes `extents` (offset, bytes; a later one over an earlier one) back to file `ino`, in order, in as many
    /// requests as the bound on one takes; answers the file's attributes after the last.
    pub async fn fs_write(
        &self,
        caller: &Caller,
        ino: u64,
        extents: &[(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Option<Attr>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut attr = None;
        let mut batch = Vec::new();
        let mut bytes = 0;
        // Collected first: an iterator of closures held across an await would not be `Send` for every lifetime.
        let mut pieces: Vec<(u64, &[u8])> = Vec::new();
        for (offset, data) in extents {
            for (index, piece) in data.chunks(FS_REMOTE_WRITE_BYTES_MAX).enumerate() {
                pieces.push((offset + (index * FS_REMOTE_WRITE_BYTES_MAX) as u64, piece));
            }
        }
        for (offset, piece) in pieces {
            if bytes + piece.len() > FS_REMOTE_WRITE_BYTES_MAX || batch.len() == FS_REMOTE_WRITE_EXTENTS_MAX {
                attr = Some(self.fs_write_batch(caller, ino, std::mem::take(&mut batch), left(deadline)?).await?);
                bytes = 0;
            }
            bytes += piece.len();
            batch.push((offset, piece.to_vec().into()));
        }
        if !batch.is_empty() {
            attr = Some(self.fs_write_batch(caller, ino, batch, left(deadline)?).await?);
        }
        Ok(attr)
    }

    async fn fs_write_batch(
        &self,
        caller: &Caller,
        ino: u64,
        extents: Vec<(u64, pando_protocol::kv::Bytes)>,
        timeout: Duration,
    ) -> Result<Attr, ClientError> {
        match self.fs(FsRequest::Write { caller: caller.clone(), ino, extents }, timeout).await? {
            FsReply::Attr(attr) => Ok(attr),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets a file's size.
    pub async fn fs_truncate(
        &self,
        caller: &Caller,
        ino: u64,
        size: u64,
        through_open_file: bool,
        timeout: Duration,
    ) -> Result<Attr, ClientError> {
        let request = FsRequest::Truncate { caller: caller.clone(), ino, size, through_open_file };
        match self.fs(request, timeout).await? {
            FsReply::Attr(attr) => Ok(attr),
            other => Err(unexpected(&other)),
        }
    }

    /// Grants, keeps alive or ends a mount's lock session; the lease, or `None` once ended.
    pub async fn fs_session(
        &self,
        request: SessionRequest,
        timeout: Duration,
    ) -> Result<Option<LeaseInfo>, ClientError> {
        match self.fs(FsRequest::Session(request), timeout).await? {
            FsReply::Session(lease) => Ok(lease),
            other => Err(unexpected(&other)),
        }
    }

    /// Bytes free on the disk holding the node's data (`None`: the node does not know).
    pub async fn fs_free_bytes(&self, timeout: Duration) -> Result<Option<u64>, ClientError> {
        match self.fs(FsRequest::FreeBytes, timeout).await? {
            FsReply::FreeBytes(free) => Ok(free),
            other => Err(unexpected(&other)),
        }
    }
}
