//! What a mount asks of the cluster's file system, wherever it runs: a member's mount asks its node's
//! [`FsService`] in-process, a mount elsewhere (`pando mount`) asks a node through the client protocol. The mount's
//! code is the same for both; only this trait's implementation differs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pando_protocol::coord::LeaseInfo;
use pando_protocol::error::WireError;
use pando_protocol::fs::{Attr, Caller, FsCommandKind, FsQueryKind, FsQueryResponse, FsResponse, SessionRequest};

use crate::services::FsService;
use crate::services::fs::overlaid;

/// An answer of the file system, later.
pub type Later<'a, T> = Pin<Box<dyn Future<Output = Result<T, WireError>> + Send + 'a>>;

pub trait FsBackend: Send + Sync + 'static {
    /// One replicated command.
    fn command<'a>(&'a self, caller: &'a Caller, kind: FsCommandKind, timeout: Duration) -> Later<'a, FsResponse>;

    /// One linearizable read.
    fn query<'a>(&'a self, caller: &'a Caller, kind: FsQueryKind, timeout: Duration) -> Later<'a, FsQueryResponse>;

    /// The mount's lock session.
    fn session(&self, request: SessionRequest, timeout: Duration) -> Later<'_, Option<LeaseInfo>>;

    /// The file's committed size and its bytes from `offset`, up to `len` and never past that size.
    fn read_committed<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Later<'a, (u64, Vec<u8>)>;

    /// Writes extents back (offset, bytes; a later one over an earlier one); answers the attributes after.
    fn write_extents<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        extents: &'a [(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Later<'a, Attr>;

    /// Sets a file's size.
    fn truncate<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        size: u64,
        through_open_file: bool,
        timeout: Duration,
    ) -> Later<'a, Attr>;

    /// Bytes free where the cluster stores data, as the node asked sees it (`None`: not known).
    fn free_bytes(&self, timeout: Duration) -> Later<'_, Option<u64>>;

    fn attr<'a>(&'a self, caller: &'a Caller, ino: u64, timeout: Duration) -> Later<'a, Attr> {
        Box::pin(async move {
            match self.query(caller, FsQueryKind::GetAttr { ino }, timeout).await? {
                FsQueryResponse::Attr(attr) => Ok(attr),
                other => Err(WireError::internal(format!("a file-system read answered {other:?}"))),
            }
        })
    }

    /// Up to `len` bytes from `offset` of the file as if `overlay` (extents not yet written back) were written.
    fn read_over<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        offset: u64,
        len: u32,
        overlay: &'a [(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Later<'a, Vec<u8>> {
        Box::pin(async move {
            let (size, committed) = self.read_committed(caller, ino, offset, len, timeout).await?;
            Ok(overlaid(committed, size, offset, len, overlay))
        })
    }
}

impl FsBackend for FsService {
    fn command<'a>(&'a self, caller: &'a Caller, kind: FsCommandKind, timeout: Duration) -> Later<'a, FsResponse> {
        Box::pin(FsService::command(self, caller, kind, timeout))
    }

    fn query<'a>(&'a self, caller: &'a Caller, kind: FsQueryKind, timeout: Duration) -> Later<'a, FsQueryResponse> {
        Box::pin(FsService::query(self, caller, kind, timeout))
    }

    fn session(&self, request: SessionRequest, timeout: Duration) -> Later<'_, Option<LeaseInfo>> {
        Box::pin(FsService::session(self, request, timeout))
    }

    fn read_committed<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Later<'a, (u64, Vec<u8>)> {
        Box::pin(FsService::read_committed(self, caller, ino, offset, len, timeout))
    }

    fn write_extents<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        extents: &'a [(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(FsService::write_extents(self, caller, ino, extents, timeout))
    }

    fn truncate<'a>(
        &'a self,
        caller: &'a Caller,
        ino: u64,
        size: u64,
        through_open_file: bool,
        timeout: Duration,
    ) -> Later<'a, Attr> {
        Box::pin(FsService::truncate(self, caller, ino, size, through_open_file, timeout))
    }

    fn free_bytes(&self, _timeout: Duration) -> Later<'_, Option<u64>> {
        Box::pin(async move { Ok(FsService::free_bytes(self)) })
    }
}
