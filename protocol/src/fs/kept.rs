//! Files kept open after their last link: POSIX lets a process that has a file open go on reading and writing it
//! after every name of it is gone, and the file goes at its last close. A mount that removes a name whose file it
//! has open first asks its session's lease to keep the file ([`keep`]); the file's last unlink (or the rename that
//! replaces it) then leaves the inode in place with `nlink` 0, reachable by its number only, and the mount lets go
//! of it at its last close ([`release`]), which removes it with its data. The lease's end (an unmount, or a lapse
//! when the mount's node died) lets go of every file it keeps ([`lease_ended`]), so no orphan outlives its mount by
//! more than a TTL.
//!
//! As on NFS and JuiceFS, only the mount that removes the name keeps the file for its own open handles: a file
//! removed through one mount while another mount has it open goes at once, and that mount's handle reads `ENOENT`.
//!
//! Rows: `Fk/<ino><lease>` (empty) for each lease that keeps `ino`; the lease lists the inodes it keeps
//! (`LeaseInfo::kept`, counted among its attachments), so its end finds them.
//!
//! **Invariants** (checked by the model test): an inode whose `nlink` is 0 has at least one keeper, a live lease
//! that lists it; an inode with no keeper and no link does not exist.

use super::rows::*;
use super::tx::Tx;
use super::{Caller, Errno, FileKind, FsResponse};
use crate::coord::keys::with;
use crate::coord::lease::{LEASE_ATTACHMENTS_COUNT_MAX, attachments, load_lease, not_found, save_lease};
use crate::coord::{CoordRead, CoordWrite};
use crate::state_machine::StorageFault;

pub(super) const KEPT: &[u8] = b"Fk/";

fn kept_key(ino: u64, lease: u64) -> Vec<u8> {
    let mut key = with(KEPT, &ino.to_be_bytes());
    key.extend_from_slice(&lease.to_be_bytes());
    key
}

/// Whether any lease keeps `ino`.
pub(super) fn is_kept(store: &impl CoordRead, ino: u64) -> Result<bool, StorageFault> {
    any_under(store, &with(KEPT, &ino.to_be_bytes()))
}

/// Lease `lease` keeps regular file `ino` past its last link, until [`release`] or the lease's end. `NOT_FOUND`
/// (no `errno`) when the lease is gone, `ENOLCK` when it holds as many things as a lease may.
pub(super) fn keep(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, lease: u64) -> Answer<FsResponse> {
    let attr = refuse!(tx.get(ino)?);
    if attr.kind != FileKind::File {
        return Ok(Err(Errno::EINVAL.error(format!("inode {ino} is not a regular file: only files are kept open"))));
    }
    let Some(mut info) = load_lease(tx.store, lease)? else { return Ok(Err(not_found(lease))) };
    if info.kept.contains(&ino) {
        return Ok(Ok(FsResponse::Done));
    }
    if attachments(&info) >= LEASE_ATTACHMENTS_COUNT_MAX {
        return Ok(Err(
            Errno::ENOLCK.error(format!("lease {lease} holds {LEASE_ATTACHMENTS_COUNT_MAX} things already"))
        ));
    }
    info.kept.push(ino);
    save_lease(tx.store, &info)?;
    tx.store.coord_put(&kept_key(ino, lease), &[])?;
    Ok(Ok(FsResponse::Done))
}

/// Lease `lease` no longer keeps `ino` (the mount's last handle on it closed): a file with no link left goes, with
/// its data. Releasing what is not kept (twice, or after the lease's end) is done already.
pub(super) fn release(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, lease: u64) -> Answer<FsResponse> {
    if let Some(mut info) = load_lease(tx.store, lease)?
        && info.kept.contains(&ino)
    {
        info.kept.retain(|kept| *kept != ino);
        save_lease(tx.store, &info)?;
    }
    let_go(tx, ino, lease)?;
    Ok(Ok(FsResponse::Done))
}

/// Drops lease `lease`'s keep of `ino`, and the inode when nothing else holds it.
fn let_go(tx: &mut Tx<'_, impl CoordWrite>, ino: u64, lease: u64) -> Result<(), StorageFault> {
    if !tx.store.coord_delete(&kept_key(ino, lease))? {
        return Ok(());
    }
    if is_kept(tx.store, ino)? {
        return Ok(());
    }
    if let Ok(attr) = tx.get(ino)?
        && attr.nlink == 0
    {
        tx.destroy(attr.ino, attr.kind, attr.size)?;
    }
    Ok(())
}

/// Lease `lease` is ending (its own row is the caller's business): it lets go of `ino`, which goes if it has no link
/// and no other keeper.
pub(crate) fn lease_ended(store: &mut impl CoordWrite, ino: u64, lease: u64) -> Result<(), StorageFault> {
    // No time moves when an inode goes, and a revocation checks no permission.
    let root = Caller::ROOT;
    let mut tx = Tx::new(store, 0, &root)?;
    let_go(&mut tx, ino, lease)?;
    tx.commit()
}
