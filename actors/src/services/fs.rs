//! The file-system service: file-system commands through the log (from any member: a follower forwards to the
//! leader), reads after a read index (the leader's, when this node follows: so a mount sees every write acknowledged anywhere before it asked: close-to-open
//! across nodes), and the data path over the blob service: reading a byte range of a file (inline bytes, or chunks
//! fetched as blobs, holes as zeros), and writing a set of dirty extents back (in place while the file stays inline,
//! else chunk by chunk: read, patch, add as a blob, then one `SetChunks` per batch).
//!
//! The FUSE mount calls it from its handlers; nothing here knows of FUSE.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::blob::{BlobHash, BlobRef};
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::coord::{CoordRequest, CoordResponse, LeaseInfo};
use pando_protocol::error::{ErrorCode, WireError};
pub use pando_protocol::fs::SessionRequest;
use pando_protocol::fs::{
    Attr, Caller, Chunk, Errno, FileData, FileLock, FsCommand, FsCommandKind, FsQuery, FsQueryKind, FsQueryResponse,
    FsReply, FsRequest, FsResponse, LockOwner, chunk_start,
};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::{
    FS_CHUNK_BYTES, FS_CHUNK_GC_GRACE_MS, FS_CHUNKS_PER_COMMAND_MAX, FS_INLINE_BYTES_MAX, FS_READ_CHUNKS_MAX,
};

use super::BlobService;
use crate::mesh::Proposer;
use crate::storage_actor::StorageHandle;

#[derive(Clone)]
pub struct FsService {
    storage: StorageHandle,
    proposer: Proposer,
    blobs: BlobService,
    chunks: Arc<Mutex<ChunkCache>>,
    /// A directory on the disk holding the node's data, whose free space `statfs` reports.
    capacity_of: Option<Arc<std::path::Path>>,
    /// Lock-session leases found under a token's prefix (lease, prefix).
    sessions: Arc<Mutex<HashSet<(u64, Bytes)>>>,
}

/// The longest lock session a mount elsewhere may ask for (the node's own mounts take 10 s).
const FS_SESSION_TTL_MS_MAX: u64 = 60_000;

/// Lock sessions of mounts elsewhere a node remembers it checked (then it forgets them all and checks again).
const SESSIONS_REMEMBERED_MAX: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How often a command refused for want of a leader asks again.
const LEADER_RETRY_MS: u64 = 50;

/// Bytes of chunk blobs the service keeps in memory (the read cache of the mounts on this node).
pub const FS_CHUNK_CACHE_BYTES: usize = 64 * 1024 * 1024;
const _: () = assert!(FS_CHUNK_CACHE_BYTES as u64 >= 8 * FS_CHUNK_BYTES);

/// Recently read or written chunk blobs by hash, least recently used out first. A blob's bytes never change, so the
/// cache needs no invalidation: which blob a file's chunk is comes from the chunk map, read through a read index.
#[derive(Default)]
struct ChunkCache {
    blobs: HashMap<BlobHash, (Arc<Vec<u8>>, u64)>,
    by_use: BTreeMap<u64, BlobHash>,
    bytes: usize,
    tick: u64,
}

impl ChunkCache {
    fn get(&mut self, hash: &BlobHash) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let (bytes, used) = self.blobs.get_mut(hash)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, *hash);
        Some(bytes.clone())
    }

    fn put(&mut self, hash: BlobHash, bytes: Arc<Vec<u8>>) {
        if self.get(&hash).is_some() || bytes.len() > FS_CHUNK_CACHE_BYTES {
            return;
        }
        self.bytes += bytes.len();
        self.blobs.insert(hash, (bytes, self.tick));
        self.by_use.insert(self.tick, hash);
        while self.bytes > FS_CHUNK_CACHE_BYTES {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((bytes, _)) = self.blobs.remove(&oldest) {
                self.bytes -= bytes.len();
            }
        }
    }
}

/// A file's bytes as one read of the state found them.
enum Stored {
    Inline(Vec<u8>),
    Chunks(BTreeMap<u64, Chunk>),
}

impl FsService {
    pub fn new(storage: StorageHandle, proposer: Proposer, blobs: BlobService) -> FsService {
        FsService { storage, proposer, blobs, chunks: Arc::default(), capacity_of: None, sessions: Arc::default() }
    }

    /// The service reporting the free space of the disk holding `dir` (the node's data directory).
    pub fn with_capacity_of(self, dir: &std::path::Path) -> FsService {
        FsService { capacity_of: Some(Arc::from(dir)), ..self }
    }

    /// Bytes free for unprivileged users on the disk holding the node's data (`None`: not known).
    pub fn free_bytes(&self) -> Option<u64> {
        let disk = rustix::fs::statvfs(self.capacity_of.as_deref()?).ok()?;
        Some(disk.f_bavail.saturating_mul(disk.f_frsize))
    }

    /// A request of a mount elsewhere (`pando mount`), through the same paths as this node's own mount. Its lock
    /// sessions are leases under `sessions` (its token's own prefix: [`pando_protocol::fs::session_prefix`]; empty
    /// for an admin), and a lock command naming a lease outside it answers as one naming a lease that is gone.
    ///
    /// With `checked` (a token that fixes its ids, whose mount is not trusted), reads and writes of a file's bytes
    /// are checked against the caller's permissions on the file at each request (a trusted mount checked them at
    /// `open`), and no truncate counts as through an open file.
    pub async fn execute(
        &self,
        request: FsRequest,
        sessions: Bytes,
        checked: bool,
        timeout: Duration,
    ) -> Result<FsReply, WireError> {
        request.validate()?;
        let request = if checked { self.checked(request, timeout).await? } else { request };
        match request {
            FsRequest::Command { caller, kind } => {
                if let FsCommandKind::SetLock { lock: FileLock { owner: LockOwner { lease, .. }, .. }, .. }
                | FsCommandKind::ReleaseLocks { owner: LockOwner { lease, .. }, .. }
                | FsCommandKind::KeepOpen { lease, .. }
                | FsCommandKind::ReleaseKept { lease, .. } = &kind
                {
                    self.check_session(&sessions, *lease, timeout).await?;
                }
                self.command(&caller, kind, timeout).await.map(FsReply::Done)
            }
            FsRequest::Query { caller, kind } => self.query(&caller, kind, timeout).await.map(FsReply::Query),
            FsRequest::Read { caller, ino, offset, len } => {
                let (size, bytes) = self.read_committed(&caller, ino, offset, len, timeout).await?;
                Ok(FsReply::Data { size, bytes: bytes.into() })
            }
            FsRequest::Write { caller, ino, extents } => {
                let extents: Vec<(u64, Vec<u8>)> =
                    extents.into_iter().map(|(offset, data)| (offset, data.into_vec())).collect();
                self.write_extents(&caller, ino, &extents, timeout).await.map(FsReply::Attr)
            }
            FsRequest::Truncate { caller, ino, size, through_open_file } => {
                self.truncate(&caller, ino, size, through_open_file, timeout).await.map(FsReply::Attr)
            }
            FsRequest::Session(SessionRequest::Grant { ttl_ms }) => {
                // A mount elsewhere renews its session like this node's own does: its locks never outlive it long.
                let grant = SessionRequest::Grant { ttl_ms: ttl_ms.min(FS_SESSION_TTL_MS_MAX) };
                self.session_under(sessions, grant, timeout).await.map(FsReply::Session)
            }
            FsRequest::Session(request) => self.session_under(sessions, request, timeout).await.map(FsReply::Session),
            FsRequest::FreeBytes => Ok(FsReply::FreeBytes(self.free_bytes())),
        }
    }

    /// Proposes one command (validated first: a caller's mistake is answered here, with its `errno`).
    pub async fn command(
        &self,
        caller: &Caller,
        kind: FsCommandKind,
        timeout: Duration,
    ) -> Result<FsResponse, WireError> {
        let kind = match kind {
            FsCommandKind::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode: pando_protocol::fs::RenameMode::Exchange,
            } if crate::sim::planted_bug(crate::sim::PlantedBug::FsExchangeAsReplace) => {
                let mode = pando_protocol::fs::RenameMode::Replace;
                FsCommandKind::Rename { parent, name, new_parent, new_name, mode }
            }
            kind => kind,
        };
        if matches!(kind, FsCommandKind::KeepOpen { .. })
            && crate::sim::planted_bug(crate::sim::PlantedBug::KeepOpenIgnored)
        {
            return Ok(FsResponse::Done);
        }
        caller.validate()?;
        let command = FsCommand { caller: caller.clone(), kind };
        command.validate()?;
        let locking = matches!(command.kind, FsCommandKind::SetLock { .. });
        match self.propose(Command::Fs(command), timeout).await {
            Ok(CommandOutput::Fs(response)) => Ok(response),
            Ok(other) => Err(WireError::internal(format!("a file-system command answered {other:?}"))),
            Err(error)
                if locking
                    && Errno::of(&error) == Errno::EAGAIN.code()
                    && crate::sim::planted_bug(crate::sim::PlantedBug::FileLockConflictIgnored) =>
            {
                Ok(FsResponse::Done)
            }
            Err(error) => Err(error),
        }
    }

    /// Grants, keeps alive or revokes the lease a mount's file locks hang on (its session with the cluster: when it
    /// lapses, every lock it holds goes with it). A member's mount forwards these like its file-system commands.
    pub async fn session(&self, request: SessionRequest, timeout: Duration) -> Result<Option<LeaseInfo>, WireError> {
        self.session_under(Bytes::new(), request, timeout).await
    }

    /// [`FsService::session`] with leases under `prefix` (granted there; one outside it answers as gone).
    async fn session_under(
        &self,
        prefix: Bytes,
        request: SessionRequest,
        timeout: Duration,
    ) -> Result<Option<LeaseInfo>, WireError> {
        let request = match request {
            SessionRequest::Grant { ttl_ms } => CoordRequest::LeaseGrant { ttl_ms, prefix },
            SessionRequest::KeepAlive { lease } => CoordRequest::LeaseKeepAlive { lease, prefix },
            SessionRequest::End { lease } => CoordRequest::LeaseRevoke { lease, prefix },
        };
        request.validate()?;
        match self.propose(Command::Coord(request), timeout).await? {
            CommandOutput::Coord(CoordResponse::Lease { lease }) => Ok(Some(lease)),
            CommandOutput::Coord(CoordResponse::Revoked { .. }) => Ok(None),
            other => Err(WireError::internal(format!("a lock session request answered {other:?}"))),
        }
    }

    /// `request` as an untrusted mount may make it: its reads and writes of bytes checked against the caller's
    /// permissions on the file, its truncates never as through an open file.
    async fn checked(&self, request: FsRequest, timeout: Duration) -> Result<FsRequest, WireError> {
        const MAY_WRITE: u32 = 2;
        const MAY_READ: u32 = 4;
        let (caller, ino, mask) = match &request {
            FsRequest::Read { caller, ino, .. } => (caller, *ino, MAY_READ),
            FsRequest::Write { caller, ino, .. } => (caller, *ino, MAY_WRITE),
            _ => {
                return Ok(match request {
                    FsRequest::Truncate { caller, ino, size, .. } => {
                        FsRequest::Truncate { caller, ino, size, through_open_file: false }
                    }
                    FsRequest::Command { caller, kind: FsCommandKind::SetAttr { ino, mut set } } => {
                        set.through_open_file = false;
                        FsRequest::Command { caller, kind: FsCommandKind::SetAttr { ino, set } }
                    }
                    other => other,
                });
            }
        };
        self.query(caller, FsQueryKind::Access { ino, mask }, timeout).await?;
        Ok(request)
    }

    /// Whether `lease` is a session under `sessions` (always, for an empty prefix); a lease outside it answers as one
    /// that is gone. A lease's prefix never changes and its id is never reused, so one found is remembered.
    async fn check_session(&self, sessions: &Bytes, lease: u64, timeout: Duration) -> Result<(), WireError> {
        if sessions.is_empty() || lock(&self.sessions).contains(&(lease, sessions.clone())) {
            return Ok(());
        }
        self.proposer.linearize_anywhere(timeout).await?;
        let request = CoordRequest::LeaseGet { lease, prefix: sessions.clone() };
        self.storage.read(timeout, move |reader| reader.read_coord(&request)).await??;
        let mut known = lock(&self.sessions);
        if known.len() >= SESSIONS_REMEMBERED_MAX {
            known.clear();
        }
        known.insert((lease, sessions.clone()));
        Ok(())
    }

    /// Proposes through the leader (forwarded when this node follows), asking again while no leader takes it.
    async fn propose(&self, command: Command, timeout: Duration) -> Result<CommandOutput, WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.proposer.propose_anywhere(command.clone(), left).await {
                Ok(output) => return Ok(output),
                // Refused before it was proposed (an election, or leadership moved under a forward): asking again
                // cannot apply it twice.
                Err(error)
                    if error.code == ErrorCode::NotLeader
                        && tokio::time::Instant::now() + Duration::from_millis(LEADER_RETRY_MS) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(LEADER_RETRY_MS)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A linearizable read.
    pub async fn query(
        &self,
        caller: &Caller,
        kind: FsQueryKind,
        timeout: Duration,
    ) -> Result<FsQueryResponse, WireError> {
        caller.validate()?;
        let query = FsQuery { caller: caller.clone(), kind };
        query.validate()?;
        self.proposer.linearize_anywhere(timeout).await?;
        self.storage.read(timeout, move |reader| reader.fs(&query)).await?
    }

    pub async fn attr(&self, caller: &Caller, ino: u64, timeout: Duration) -> Result<Attr, WireError> {
        match self.query(caller, FsQueryKind::GetAttr { ino }, timeout).await? {
            FsQueryResponse::Attr(attr) => Ok(attr),
            other => Err(unexpected(&other)),
        }
    }

    /// The file's size and the stored form of chunks `first..=last` (all of an inline file).
    async fn stored(
        &self,
        caller: &Caller,
        ino: u64,
        first: u64,
        last: u64,
        timeout: Duration,
    ) -> Result<(u64, Stored), WireError> {
        let mut chunks = BTreeMap::new();
        let mut from = first;
        loop {
            let most = (last - from + 1).min(FS_READ_CHUNKS_MAX as u64) as u32;
            let read = FsQueryKind::Read { ino, first_chunk: from, most };
            match self.query(caller, read, timeout).await? {
                FsQueryResponse::Data { size, data: FileData::Inline(bytes) } => {
                    return Ok((size, Stored::Inline(bytes.into_vec())));
                }
                FsQueryResponse::Data { size, data: FileData::Chunks(page) } => {
                    let full = page.len() as u32 == most;
                    let next = page.last().map(|(index, _)| index + 1);
                    chunks.extend(page.into_iter().filter(|(index, _)| *index <= last));
                    match next {
                        Some(next) if full && next <= last => from = next,
                        _ => return Ok((size, Stored::Chunks(chunks))),
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// The valid bytes of one chunk (from the cache when it holds the blob).
    async fn chunk_bytes(&self, chunk: &Chunk, timeout: Duration) -> Result<Arc<Vec<u8>>, WireError> {
        let cached = self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&chunk.blob.hash);
        let blob = match cached {
            Some(blob) => blob,
            None => {
                let bytes = self.blobs.get_bytes(chunk.blob.hash, FS_CHUNK_BYTES, timeout).await?;
                let blob = Arc::new(bytes.to_vec());
                self.remember(chunk.blob.hash, blob.clone());
                blob
            }
        };
        let len = (chunk.len as usize).min(blob.len());
        if len == blob.len() { Ok(blob) } else { Ok(Arc::new(blob[..len].to_vec())) }
    }

    fn remember(&self, hash: BlobHash, bytes: Arc<Vec<u8>>) {
        self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).put(hash, bytes);
    }

    /// Up to `len` bytes of file `ino` from `offset` (fewer at its end; holes read as zeros).
    pub async fn read(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, WireError> {
        self.read_over(caller, ino, offset, len, &[], timeout).await
    }

    /// [`FsService::read`] of the file as if `overlay` (extents not yet written back: offset, bytes, a later one over
    /// an earlier one) were written: a mount's reads of what it buffered.
    pub async fn read_over(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        len: u32,
        overlay: &[(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Vec<u8>, WireError> {
        let (size, committed) = self.read_committed(caller, ino, offset, len, timeout).await?;
        Ok(overlaid(committed, size, offset, len, overlay))
    }

    /// The file's committed size, and its bytes from `offset` up to `len` of them, never past that size (holes as
    /// zeros).
    pub async fn read_committed(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<(u64, Vec<u8>), WireError> {
        if len == 0 {
            return Ok((self.attr(caller, ino, timeout).await?.size, Vec::new()));
        }
        let first = offset / FS_CHUNK_BYTES;
        let last = (offset + len as u64 - 1) / FS_CHUNK_BYTES;
        let (size, stored) = self.stored(caller, ino, first, last, timeout).await?;
        let end = size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok((size, Vec::new()));
        }
        let mut out = vec![0u8; (end - offset) as usize];
        match stored {
            Stored::Inline(bytes) => {
                let have = (bytes.len() as u64).min(end).min(size);
                if offset < have {
                    out[..(have - offset) as usize].copy_from_slice(&bytes[offset as usize..have as usize]);
                }
            }
            Stored::Chunks(chunks) => {
                for (index, chunk) in &chunks {
                    let start = chunk_start(*index);
                    let bytes = self.chunk_bytes(chunk, timeout).await?;
                    // Never past the committed size (a chunk keeps bytes a truncate cut off until it is rewritten).
                    let valid = (size.saturating_sub(start) as usize).min(bytes.len());
                    copy_overlap(&mut out, offset, &bytes[..valid], start);
                }
            }
        }
        Ok((size, out))
    }

    /// Writes extents that end within the inline bound straight into an inline file's bytes: one command each, the
    /// last answering the attributes (a small file's write-back costs no read first). `None` when the file is chunked
    /// (a command refuses with `EFBIG` and changes nothing; the ones before it wrote bytes the chunks will hold
    /// again): the caller writes chunks.
    async fn write_inline(
        &self,
        caller: &Caller,
        ino: u64,
        extents: &[(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Option<Attr>, WireError> {
        let writes: Vec<&(u64, Vec<u8>)> = extents.iter().filter(|(_, data)| !data.is_empty()).collect();
        let mut answered = None;
        for (at, (offset, data)) in writes.iter().enumerate() {
            let answer_attr = at + 1 == writes.len();
            let write =
                FsCommandKind::Write { ino, offset: *offset, data: data.clone().into(), append: false, answer_attr };
            match self.command(caller, write, timeout).await {
                Ok(FsResponse::Attr(attr)) => answered = Some(attr),
                Ok(_) => {}
                // Chunked (by another node since the first, for a later one): every extent is written again as chunks.
                Err(error) if Errno::of(&error) == Errno::EFBIG.code() => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        match answered {
            Some(attr) => Ok(Some(attr)),
            // A leader from before `answer_attr` answered the size only.
            None => self.attr(caller, ino, timeout).await.map(Some),
        }
    }

    /// Whether this node's own state (maybe behind the leader's) has `ino` as a file whose bytes may be inline: not
    /// larger than the inline bound. Only a hint of which write to try first.
    async fn maybe_inline(&self, ino: u64, timeout: Duration) -> bool {
        let query = FsQuery { caller: Caller::ROOT, kind: FsQueryKind::GetAttr { ino } };
        match self.storage.read(timeout, move |reader| reader.fs(&query)).await {
            Ok(Ok(FsQueryResponse::Attr(attr))) => attr.size <= FS_INLINE_BYTES_MAX as u64,
            _ => true,
        }
    }

    /// Writes `extents` (offset, bytes; a later one over an earlier one) to file `ino`: in place while the file stays
    /// within the inline bound, else as chunks (each touched chunk read, patched and added as a blob), with the size
    /// growing to the last byte written. Answers the file's attributes after.
    pub async fn write_extents(
        &self,
        caller: &Caller,
        ino: u64,
        extents: &[(u64, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Attr, WireError> {
        let written_end = extents.iter().map(|(offset, data)| offset + data.len() as u64).max().unwrap_or(0);
        let touched: std::collections::BTreeSet<u64> = extents
            .iter()
            .filter(|(_, data)| !data.is_empty())
            .flat_map(|(offset, data)| (offset / FS_CHUNK_BYTES)..=((offset + data.len() as u64 - 1) / FS_CHUNK_BYTES))
            .collect();
        let (Some(&first), Some(&last)) = (touched.first(), touched.last()) else {
            return self.attr(caller, ino, timeout).await;
        };
        if written_end <= FS_INLINE_BYTES_MAX as u64
            && self.maybe_inline(ino, timeout).await
            && let Some(attr) = self.write_inline(caller, ino, extents, timeout).await?
        {
            return Ok(attr);
        }
        let (size, stored) = self.stored(caller, ino, first, last, timeout).await?;
        let end = size.max(written_end);
        let inline = match &stored {
            Stored::Inline(_) => true,
            Stored::Chunks(chunks) => chunks.is_empty() && size == 0,
        };
        if inline && end <= FS_INLINE_BYTES_MAX as u64 {
            // Only an inline file that became one since `write_inline` refused: written the same way.
            if let Some(attr) = self.write_inline(caller, ino, extents, timeout).await? {
                return Ok(attr);
            }
        }
        // Chunks: an inline file's bytes move into chunk 0 (the inline bound is below one chunk).
        let (mut touched, old_chunks, inline_bytes) = match stored {
            Stored::Inline(bytes) => {
                let mut touched = touched;
                if !bytes.is_empty() {
                    touched.insert(0);
                }
                (touched, BTreeMap::new(), Some(bytes))
            }
            Stored::Chunks(chunks) => (touched, chunks, None),
        };
        let mut patched = Vec::with_capacity(touched.len());
        for index in std::mem::take(&mut touched) {
            let start = chunk_start(index);
            let chunk_end = (start + FS_CHUNK_BYTES).min(end);
            let mut bytes = match (&inline_bytes, old_chunks.get(&index)) {
                (Some(inline), _) if index == 0 => inline.clone(),
                (_, Some(chunk)) => self.chunk_bytes(chunk, timeout).await?.as_ref().clone(),
                _ => Vec::new(),
            };
            bytes.resize((chunk_end - start) as usize, 0);
            for (offset, data) in extents {
                patch(&mut bytes, start, *offset, data);
            }
            patched.push((index, bytes));
        }
        // Added at once, so their bookkeeping shares the log's group commits.
        let added = futures::future::join_all(patched.into_iter().map(|(index, bytes)| async move {
            let len = bytes.len() as u32;
            let kept = Arc::new(bytes.clone());
            let grace = Some(Duration::from_millis(FS_CHUNK_GC_GRACE_MS));
            let hash = self.blobs.add_bytes_graced(bytes, false, grace, timeout).await?;
            self.remember(hash, kept);
            Ok::<_, WireError>((index, Some(Chunk { blob: BlobRef { hash, size: len as u64 }, len })))
        }))
        .await;
        let mut changes = Vec::with_capacity(added.len());
        for chunk in added {
            changes.push(chunk?);
        }
        let mut attr = None;
        for batch in changes.chunks(FS_CHUNKS_PER_COMMAND_MAX) {
            let set = FsCommandKind::SetChunks { ino, chunks: batch.to_vec(), size: end };
            match self.command(caller, set, timeout).await? {
                FsResponse::Attr(after) => attr = Some(after),
                other => return Err(WireError::internal(format!("SetChunks answered {other:?}"))),
            }
        }
        match attr {
            Some(attr) => Ok(attr),
            None => self.attr(caller, ino, timeout).await,
        }
    }

    /// Sets a file's size, moving an inline file to chunks when it grows past the inline bound.
    pub async fn truncate(
        &self,
        caller: &Caller,
        ino: u64,
        size: u64,
        through_open_file: bool,
        timeout: Duration,
    ) -> Result<Attr, WireError> {
        let set = pando_protocol::fs::SetAttr { size: Some(size), through_open_file, ..Default::default() };
        match self.command(caller, FsCommandKind::SetAttr { ino, set }, timeout).await {
            Ok(FsResponse::Attr(attr)) => Ok(attr),
            Ok(other) => Err(WireError::internal(format!("SetAttr answered {other:?}"))),
            Err(error) if Errno::of(&error) == Errno::EFBIG.code() && size > FS_INLINE_BYTES_MAX as u64 => {
                // An inline file growing past the bound: its bytes become chunk 0 (none if it is empty) and it takes
                // the new size, in one command.
                let (_, stored) = self.stored(caller, ino, 0, 0, timeout).await?;
                let chunk = match stored {
                    Stored::Inline(bytes) if !bytes.is_empty() => {
                        let len = bytes.len() as u32;
                        let grace = Some(Duration::from_millis(FS_CHUNK_GC_GRACE_MS));
                        let hash = self.blobs.add_bytes_graced(bytes, false, grace, timeout).await?;
                        Some(Chunk { blob: BlobRef { hash, size: len as u64 }, len })
                    }
                    _ => None,
                };
                match self
                    .command(caller, FsCommandKind::SetChunks { ino, chunks: vec![(0, chunk)], size }, timeout)
                    .await?
                {
                    FsResponse::Attr(attr) => Ok(attr),
                    other => Err(WireError::internal(format!("SetChunks answered {other:?}"))),
                }
            }
            Err(error) => Err(error),
        }
    }
}

/// Copies the part of `bytes` (file offset `start`) that falls in `out` (file offset `offset`).
/// What a read of `len` bytes from `offset` sees when `overlay` (extents not yet written back: offset, bytes, a
/// later one over an earlier one) lies over the `committed` bytes (from `offset`) of a file of `size`: the file
/// grows to the overlay's end.
pub fn overlaid(mut committed: Vec<u8>, size: u64, offset: u64, len: u32, overlay: &[(u64, Vec<u8>)]) -> Vec<u8> {
    if overlay.is_empty() {
        return committed;
    }
    let written = overlay.iter().map(|(at, data)| at + data.len() as u64).max().unwrap_or(0);
    let end = size.max(written).min(offset.saturating_add(len as u64));
    if offset >= end {
        return Vec::new();
    }
    committed.resize((end - offset) as usize, 0);
    for (at, data) in overlay {
        patch(&mut committed, offset, *at, data);
    }
    committed
}

fn copy_overlap(out: &mut [u8], offset: u64, bytes: &[u8], start: u64) {
    let from = offset.max(start);
    let to = (offset + out.len() as u64).min(start + bytes.len() as u64);
    if from < to {
        out[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
    }
}

/// Writes the part of `data` (file offset `offset`) that falls in `chunk` (file offset `start`).
fn patch(chunk: &mut [u8], start: u64, offset: u64, data: &[u8]) {
    let from = offset.max(start);
    let to = (offset + data.len() as u64).min(start + chunk.len() as u64);
    if from < to {
        chunk[(from - start) as usize..(to - start) as usize]
            .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
    }
}

fn unexpected(response: &FsQueryResponse) -> WireError {
    WireError::internal(format!("a file-system read answered {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_copy_only_the_shared_bytes() {
        let mut out = vec![0u8; 4];
        copy_overlap(&mut out, 10, b"abcdef", 8);
        assert_eq!(out, b"cdef");
        let mut out = vec![0u8; 4];
        copy_overlap(&mut out, 10, b"xy", 13);
        assert_eq!(out, b"\0\0\0x");
        let mut chunk = vec![0u8; 4];
        patch(&mut chunk, 100, 98, b"abcd");
        assert_eq!(chunk, b"cd\0\0");
        patch(&mut chunk, 100, 103, b"zz");
        assert_eq!(chunk, b"cd\0z");
    }
}
