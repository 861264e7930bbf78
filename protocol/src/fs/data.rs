//! File data: in-place writes of inline files, and chunk maps of large ones whose blobs the state counts.

use super::perm;
use super::rows::*;
use super::tx::Tx;
use super::{Attr, Chunk, Errno, FileKind, FsResponse};
use crate::blob::BlobRef;
use crate::coord::{CoordWrite, load, save};
use crate::kv::Bytes;
use crate::limits::FS_INLINE_BYTES_MAX;

pub(super) fn regular(tx: &mut Tx<'_, impl CoordWrite>, ino: u64) -> Answer<Attr> {
    let attr = refuse!(tx.get(ino)?);
    match attr.kind {
        FileKind::File => Ok(Ok(attr)),
        FileKind::Dir => Ok(Err(Errno::EISDIR.error(format!("inode {ino} is a directory")))),
        _ => Ok(Err(Errno::EINVAL.error(format!("inode {ino} is not a regular file")))),
    }
}

pub(super) fn write(
    tx: &mut Tx<'_, impl CoordWrite>,
    ino: u64,
    offset: u64,
    data: &Bytes,
    append: bool,
    answer_attr: bool,
) -> Answer<FsResponse> {
    let mut attr = refuse!(regular(tx, ino)?);
    let inline: Option<Bytes> = load(tx.store, &data_key(ino))?;
    let mut bytes = match inline {
        Some(bytes) => bytes,
        None if attr.size == 0 => Bytes::default(),
        None => return Ok(Err(Errno::EFBIG.error(format!("inode {ino} is chunked: write chunks")))),
    };
    let offset = if append { bytes.len() as u64 } else { offset };
    let end = offset + data.len() as u64;
    if end > FS_INLINE_BYTES_MAX as u64 {
        return Ok(Err(Errno::EFBIG.error("past the inline bound: write chunks")));
    }
    if bytes.len() < end as usize {
        bytes.resize(end as usize, 0);
    }
    bytes[offset as usize..end as usize].copy_from_slice(data);
    save(tx.store, &data_key(ino), &bytes)?;
    let size = bytes.len() as u64;
    tx.totals.bytes = tx.totals.bytes.saturating_sub(attr.size) + size;
    attr.size = size;
    attr.mtime = tx.now;
    attr.ctime = tx.now;
    attr.perm = perm::after_write(attr.perm, tx.caller);
    tx.set(attr.clone());
    Ok(Ok(if answer_attr { FsResponse::Attr(attr) } else { FsResponse::Written { size } }))
}

pub(super) fn set_chunks(
    tx: &mut Tx<'_, impl CoordWrite>,
    ino: u64,
    chunks: &[(u64, Option<Chunk>)],
    size: u64,
) -> Answer<FsResponse> {
    let mut attr = refuse!(regular(tx, ino)?);
    for (index, chunk) in chunks {
        if let Some(chunk) = chunk {
            let found = match crate::blob::attachable(tx.store, &chunk.blob.hash)? {
                Ok(found) => found,
                Err(error) if error.code == crate::error::ErrorCode::NotFound => {
                    return Ok(Err(Errno::ENOENT.error(format!("chunk {index}: {}", error.message))));
                }
                Err(error) => return Ok(Err(Errno::EIO.error(format!("chunk {index}: {}", error.message)))),
            };
            if found.size != chunk.blob.size {
                return Ok(Err(
                    Errno::EINVAL.error(format!("chunk {index}: blob {} has another size", chunk.blob.hash))
                ));
            }
        }
    }
    // An inline file becomes a chunked one: its bytes are in the chunks given.
    tx.store.coord_delete(&data_key(ino))?;
    for (index, chunk) in chunks {
        let key = chunk_key(ino, *index);
        let old: Option<Chunk> = load(tx.store, &key)?;
        match chunk {
            Some(chunk) => save(tx.store, &key, chunk)?,
            None => {
                tx.store.coord_delete(&key)?;
            }
        }
        let (old, new): (Option<BlobRef>, Option<BlobRef>) = (old.map(|old| old.blob), chunk.map(|new| new.blob));
        crate::blob::replace_reference(tx.store, None, old, new)?;
    }
    if size < attr.size {
        refuse!(tx.resize(&mut attr, size)?);
    } else {
        tx.totals.bytes = tx.totals.bytes.saturating_sub(attr.size) + size;
        attr.size = size;
    }
    attr.mtime = tx.now;
    attr.ctime = tx.now;
    attr.perm = perm::after_write(attr.perm, tx.caller);
    tx.set(attr.clone());
    Ok(Ok(FsResponse::Attr(attr)))
}
