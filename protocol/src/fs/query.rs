//! File-system reads from the applied state (after the caller's read index): lookups, attributes, listings, links,
//! data maps, attributes, access checks and totals.

use std::ops::ControlFlow;

use super::perm::{self, MAY_EXEC, MAY_READ};
use super::rows::*;
use super::xattr::{xattr_allowed, xattrs};
use super::{Chunk, DirEntry, Errno, FileData, FileKind, FsQuery, FsQueryKind, FsQueryResponse, FsTotals};
use crate::coord::keys::with;
use crate::coord::{CoordRead, decode, load};
use crate::kv::Bytes;
use crate::limits::FS_READ_CHUNKS_MAX;

/// Entries of directory `ino` after `after`, at most `limit`, and whether more follow.
fn list(
    store: &impl CoordRead,
    caller: &super::Caller,
    ino: u64,
    after: Option<&str>,
    limit: u32,
) -> Answer<(Vec<DirEntry>, bool)> {
    let dir = refuse!(directory(store, ino)?);
    refuse!(perm::check(&dir, caller, MAY_READ, "list"));
    let prefix = with(ENTRY, &ino.to_be_bytes());
    let start = match after {
        Some(after) => entry_key(ino, after),
        None => prefix.clone(),
    };
    let (mut entries, mut more, mut fault) = (Vec::new(), false, None);
    store.coord_scan_from(&prefix, &start, &mut |key, bytes| {
        let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        if after == Some(name.as_str()) {
            return ControlFlow::Continue(());
        }
        if entries.len() >= limit as usize {
            more = true;
            return ControlFlow::Break(());
        }
        match decode::<Entry>(key, bytes) {
            Ok(entry) => entries.push(DirEntry { name, ino: entry.ino, kind: entry.kind }),
            Err(error) => {
                fault = Some(error);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(fault) = fault {
        return Err(fault);
    }
    Ok(Ok((entries, more)))
}

/// Serves one read from the applied state.
pub fn query(store: &impl CoordRead, query: &FsQuery) -> Answer<FsQueryResponse> {
    if let Err(error) = query.validate() {
        return Ok(Err(error));
    }
    let caller = &query.caller;
    Ok(Ok(match &query.kind {
        FsQueryKind::Lookup { parent, name } => {
            let dir = refuse!(directory(store, *parent)?);
            refuse!(perm::check(&dir, caller, MAY_EXEC, "search"));
            let Some(entry) = load_entry(store, *parent, name)? else {
                return Ok(Err(enoent(format_args!("{name:?}"))));
            };
            FsQueryResponse::Attr(refuse!(existing(store, entry.ino)?))
        }
        FsQueryKind::GetAttr { ino } => FsQueryResponse::Attr(refuse!(existing(store, *ino)?)),
        FsQueryKind::ReadDir { ino, after, limit } => {
            let (entries, more) = refuse!(list(store, caller, *ino, after.as_deref(), *limit)?);
            FsQueryResponse::Entries { entries, more }
        }
        FsQueryKind::ReadDirPlus { ino, after, limit } => {
            let (entries, more) = refuse!(list(store, caller, *ino, after.as_deref(), *limit)?);
            let mut listed = Vec::with_capacity(entries.len());
            let mut with_xattrs = Vec::new();
            for entry in entries {
                if super::xattr::has_any(store, entry.ino)? {
                    with_xattrs.push(entry.ino);
                }
                // An entry names an inode that exists (commands keep the two together); one that does not is a
                // fault of the store, not the caller's.
                let attr = existing(store, entry.ino)?.map_err(|_| {
                    crate::state_machine::StorageFault(format!(
                        "entry {:?} of directory {ino} names no inode",
                        entry.name
                    ))
                })?;
                listed.push((entry, attr));
            }
            FsQueryResponse::EntriesPlus { entries: listed, more, with_xattrs }
        }
        FsQueryKind::ReadLink { ino } => {
            let attr = refuse!(existing(store, *ino)?);
            if attr.kind != FileKind::Symlink {
                return Ok(Err(Errno::EINVAL.error(format!("inode {ino} is not a symlink"))));
            }
            let target: Bytes = load(store, &data_key(*ino))?.unwrap_or_default();
            FsQueryResponse::Target(String::from_utf8_lossy(&target).into_owned())
        }
        FsQueryKind::Read { ino, first_chunk, most } => {
            let attr = refuse!(existing(store, *ino)?);
            if attr.kind != FileKind::File {
                return Ok(Err(Errno::EISDIR.error(format!("inode {ino} is not a regular file"))));
            }
            let data = match load::<Bytes>(store, &data_key(*ino))? {
                Some(bytes) => FileData::Inline(bytes),
                None => {
                    let most = (*most).min(FS_READ_CHUNKS_MAX) as usize;
                    let prefix = with(CHUNK, &ino.to_be_bytes());
                    let (mut chunks, mut fault) = (Vec::new(), None);
                    store.coord_scan_from(&prefix, &chunk_key(*ino, *first_chunk), &mut |key, bytes| {
                        if chunks.len() >= most {
                            return ControlFlow::Break(());
                        }
                        let index = key[prefix.len()..].try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                        match decode::<Chunk>(key, bytes) {
                            Ok(chunk) => chunks.push((index, chunk)),
                            Err(error) => {
                                fault = Some(error);
                                return ControlFlow::Break(());
                            }
                        }
                        ControlFlow::Continue(())
                    })?;
                    if let Some(fault) = fault {
                        return Err(fault);
                    }
                    FileData::Chunks(chunks)
                }
            };
            FsQueryResponse::Data { size: attr.size, data }
        }
        FsQueryKind::GetXattr { ino, name } => {
            let attr = refuse!(existing(store, *ino)?);
            refuse!(xattr_allowed(&attr, caller, name, false));
            match load::<Bytes>(store, &xattr_key(*ino, name))? {
                Some(value) => FsQueryResponse::Xattr(value),
                None => return Ok(Err(Errno::ENODATA.error(format!("no attribute {name:?}")))),
            }
        }
        FsQueryKind::ListXattr { ino } => {
            refuse!(existing(store, *ino)?);
            let names = xattrs(store, *ino)?
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| caller.is_root() || !name.starts_with("trusted."))
                .collect();
            FsQueryResponse::XattrNames(names)
        }
        FsQueryKind::Access { ino, mask } => {
            let attr = refuse!(existing(store, *ino)?);
            refuse!(perm::check(&attr, caller, mask & 7, "access"));
            FsQueryResponse::Allowed
        }
        FsQueryKind::StatFs => {
            FsQueryResponse::StatFs(load(store, TOTALS)?.unwrap_or(FsTotals { inodes: 1, bytes: 0 }))
        }
        FsQueryKind::TestLock { ino, lock } => FsQueryResponse::Lock(refuse!(super::locks::test(store, *ino, lock)?)),
    }))
}
