//! The file-system service: file-system commands through the log (from any member: a follower forwards to the
//! leader), reads after a read index (the leader's, when this node follows: so a mount sees every write acknowledged anywhere before it asked: close-to-open
//! across nodes), and the data path over the blob service: reading a byte range of a file (inline bytes, or chunks
//! fetched as blobs, holes as zeros), and writing a set of dirty extents back (in place while the file stays inline,
//! else chunk by chunk: read, patch, add as a blob, then one `SetChunks` per batch).
//!
//! The FUSE mount calls it from its handlers; nothing here knows of FUSE.

use std::collections::BTreeMap;
use std::time::Duration;

use pando_protocol::blob::BlobRef;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::WireError;
use pando_protocol::fs::{
    Attr, Caller, Chunk, Errno, FileData, FsCommand, FsCommandKind, FsQuery, FsQueryKind, FsQueryResponse, FsResponse,
    chunk_start,
};
use pando_protocol::limits::{FS_CHUNK_BYTES, FS_CHUNKS_PER_COMMAND_MAX, FS_INLINE_BYTES_MAX, FS_READ_CHUNKS_MAX};

use super::BlobService;
use crate::mesh::Proposer;
use crate::storage_actor::StorageHandle;

#[derive(Clone)]
pub struct FsService {
    storage: StorageHandle,
    proposer: Proposer,
    blobs: BlobService,
}

/// A file's bytes as one read of the state found them.
enum Stored {
    Inline(Vec<u8>),
    Chunks(BTreeMap<u64, Chunk>),
}

impl FsService {
    pub fn new(storage: StorageHandle, proposer: Proposer, blobs: BlobService) -> FsService {
        FsService { storage, proposer, blobs }
    }

    /// Proposes one command (validated first: a caller's mistake is answered here, with its `errno`).
    pub async fn command(
        &self,
        caller: &Caller,
        kind: FsCommandKind,
        timeout: Duration,
    ) -> Result<FsResponse, WireError> {
        let command = FsCommand { caller: caller.clone(), kind };
        command.validate()?;
        match self.proposer.propose_anywhere(Command::Fs(command), timeout).await? {
            CommandOutput::Fs(response) => Ok(response),
            other => Err(WireError::internal(format!("a file-system command answered {other:?}"))),
        }
    }

    /// A linearizable read.
    pub async fn query(
        &self,
        caller: &Caller,
        kind: FsQueryKind,
        timeout: Duration,
    ) -> Result<FsQueryResponse, WireError> {
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

    /// The valid bytes of one chunk.
    async fn chunk_bytes(&self, chunk: &Chunk, timeout: Duration) -> Result<Vec<u8>, WireError> {
        let bytes = self.blobs.get_bytes(chunk.blob.hash, FS_CHUNK_BYTES, timeout).await?;
        let len = (chunk.len as usize).min(bytes.len());
        Ok(bytes[..len].to_vec())
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
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = offset / FS_CHUNK_BYTES;
        let last = (offset + len as u64 - 1) / FS_CHUNK_BYTES;
        let (size, stored) = self.stored(caller, ino, first, last, timeout).await?;
        let end = size.min(offset + len as u64);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        match stored {
            Stored::Inline(bytes) => {
                let have = (bytes.len() as u64).min(end);
                if offset < have {
                    out[..(have - offset) as usize].copy_from_slice(&bytes[offset as usize..have as usize]);
                }
            }
            Stored::Chunks(chunks) => {
                for (index, chunk) in &chunks {
                    let start = chunk_start(*index);
                    let bytes = self.chunk_bytes(chunk, timeout).await?;
                    copy_overlap(&mut out, offset, &bytes, start);
                }
            }
        }
        Ok(out)
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
        let (size, stored) = self.stored(caller, ino, first, last, timeout).await?;
        let end = size.max(written_end);
        let inline = match &stored {
            Stored::Inline(_) => true,
            Stored::Chunks(chunks) => chunks.is_empty() && size == 0,
        };
        if inline && end <= FS_INLINE_BYTES_MAX as u64 {
            for (offset, data) in extents.iter().filter(|(_, data)| !data.is_empty()) {
                let write = FsCommandKind::Write { ino, offset: *offset, data: data.clone().into(), append: false };
                self.command(caller, write, timeout).await?;
            }
            return self.attr(caller, ino, timeout).await;
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
        let mut changes = Vec::with_capacity(touched.len());
        for index in std::mem::take(&mut touched) {
            let start = chunk_start(index);
            let chunk_end = (start + FS_CHUNK_BYTES).min(end);
            let mut bytes = match (&inline_bytes, old_chunks.get(&index)) {
                (Some(inline), _) if index == 0 => inline.clone(),
                (_, Some(chunk)) => self.chunk_bytes(chunk, timeout).await?,
                _ => Vec::new(),
            };
            bytes.resize((chunk_end - start) as usize, 0);
            for (offset, data) in extents {
                patch(&mut bytes, start, *offset, data);
            }
            let len = bytes.len() as u32;
            let hash = self.blobs.add_bytes_with(bytes, false, timeout).await?;
            let blob = BlobRef { hash, size: len as u64 };
            changes.push((index, Some(Chunk { blob, len })));
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
                        let hash = self.blobs.add_bytes_with(bytes, false, timeout).await?;
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
