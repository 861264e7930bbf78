//! Extended attributes: Linux's namespaces and permission rules, `XATTR_CREATE` and `XATTR_REPLACE`, and the bound on
//! what one inode holds.

use std::ops::ControlFlow;

use super::perm::{self, MAY_READ, MAY_WRITE};
use super::rows::*;
use super::tx::Tx;
use super::{Attr, Caller, Errno, FileKind, FsResponse, XattrMode};
use crate::coord::keys::with;
use crate::coord::{CoordRead, CoordWrite, decode, save};
use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::FS_XATTR_TOTAL_BYTES_MAX;
use crate::state_machine::StorageFault;

/// Whether `caller` may read (`write == false`) or write extended attribute `name` of `attr`, as Linux's
/// `xattr_permission` says: `user.` by the file's permissions (on files and directories only, and in a sticky
/// directory only by its owner), `trusted.` by root only (others see none), `security.` written by the owner;
/// other namespaces are not supported.
pub(super) fn xattr_allowed(attr: &Attr, caller: &Caller, name: &str, write: bool) -> Result<(), WireError> {
    let namespace = name.split_once('.').map(|(namespace, _)| namespace).unwrap_or("");
    match namespace {
        "user" => {
            if !matches!(attr.kind, FileKind::File | FileKind::Dir) {
                return Err(if write {
                    Errno::EPERM.error("user attributes are for files and directories")
                } else {
                    Errno::ENODATA.error(format!("no attribute {name:?}"))
                });
            }
            if write && attr.kind == FileKind::Dir && attr.perm & super::mode::S_ISVTX != 0 && !perm::owns(attr, caller)
            {
                return Err(Errno::EPERM.error("only the owner sets user attributes of a sticky directory"));
            }
            let mask = if write { MAY_WRITE } else { MAY_READ };
            perm::check(attr, caller, mask, if write { "set attributes of" } else { "read attributes of" })
        }
        "trusted" if caller.is_root() => Ok(()),
        "trusted" if write => Err(Errno::EPERM.error("trusted attributes are root's")),
        "trusted" => Err(Errno::ENODATA.error(format!("no attribute {name:?}"))),
        "security" if write && !perm::owns(attr, caller) => {
            Err(Errno::EPERM.error(format!("uid {} does not own inode {}", caller.uid, attr.ino)))
        }
        "security" => Ok(()),
        _ => Err(Errno::EOPNOTSUPP.error(format!("attribute namespace {namespace:?} is not supported"))),
    }
}

/// Whether `ino` has any extended attribute.
pub(super) fn has_any(store: &impl CoordRead, ino: u64) -> Result<bool, StorageFault> {
    any_under(store, &with(XATTR, &ino.to_be_bytes()))
}

/// Whether a read of attribute `name` of an inode that has none answers `ENODATA` whoever asks: the `security.`
/// namespace is readable by all, and `trusted.` answers `ENODATA` to all but root (who finds none).
pub fn absent_for_anyone(name: &str) -> bool {
    name.starts_with("security.") || name.starts_with("trusted.")
}

pub(super) fn xattrs(store: &impl CoordRead, ino: u64) -> Result<Vec<(String, Bytes)>, StorageFault> {
    let prefix = with(XATTR, &ino.to_be_bytes());
    let mut found = Vec::new();
    let mut fault = None;
    store.coord_scan(&prefix, &mut |key, bytes| {
        match decode::<Bytes>(key, bytes) {
            Ok(value) => found.push((String::from_utf8_lossy(&key[prefix.len()..]).into_owned(), value)),
            Err(error) => {
                fault = Some(error);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    match fault {
        Some(fault) => Err(fault),
        None => Ok(found),
    }
}

pub(super) fn set_xattr(
    tx: &mut Tx<'_, impl CoordWrite>,
    ino: u64,
    name: &str,
    value: &Bytes,
    mode: XattrMode,
) -> Answer<FsResponse> {
    let mut attr = refuse!(tx.get(ino)?);
    refuse!(xattr_allowed(&attr, tx.caller, name, true));
    let all = xattrs(tx.store, ino)?;
    let existing = all.iter().find(|(have, _)| have == name);
    match (mode, existing) {
        (XattrMode::Create, Some(_)) => return Ok(Err(Errno::EEXIST.error(format!("attribute {name:?} exists")))),
        (XattrMode::Replace, None) => return Ok(Err(Errno::ENODATA.error(format!("no attribute {name:?}")))),
        _ => {}
    }
    let total: usize = all.iter().filter(|(have, _)| have != name).map(|(have, value)| have.len() + value.len()).sum();
    if total + name.len() + value.len() > FS_XATTR_TOTAL_BYTES_MAX {
        return Ok(Err(
            Errno::ENOSPC.error(format!("the attributes of one inode hold at most {FS_XATTR_TOTAL_BYTES_MAX} bytes"))
        ));
    }
    save(tx.store, &xattr_key(ino, name), value)?;
    attr.ctime = tx.now;
    tx.set(attr);
    Ok(Ok(FsResponse::Done))
}

pub(super) fn remove_xattr(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, name: &str) -> Answer<FsResponse> {
    let mut attr = refuse!(tx.get(ino)?);
    refuse!(xattr_allowed(&attr, tx.caller, name, true));
    if !tx.store.coord_delete(&xattr_key(ino, name))? {
        return Ok(Err(Errno::ENODATA.error(format!("no attribute {name:?}"))));
    }
    attr.ctime = tx.now;
    tx.set(attr);
    Ok(Ok(FsResponse::Done))
}
