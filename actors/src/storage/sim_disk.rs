//! The in-memory twin of the node's disk, for simulation: a redb [`StorageBackend`] that keeps what was synced apart
//! from what was only written, and can **crash**: everything written since the last sync is lost, except the writes a
//! caller-chosen (seeded) predicate lets through, in any subset, as a disk cache that reorders writes would. redb, the
//! log store and the state machine run unchanged on top of it; only the bytes live in memory.
//!
//! Clones share one disk. A crash happens while the database is still open (as power fails under a running process):
//! the handles that existed before it go dead, so nothing the old database does afterwards (its close included) reaches
//! the disk; the node "restarts" by opening a new database on a clone made after the crash.

use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

#[derive(Debug, Default)]
struct Disk {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What reads see: the durable bytes plus every write since the last sync.
    current: Vec<u8>,
    /// Writes (and length changes) since the last sync, in order, to replay a subset of them at a crash.
    unsynced: Vec<Change>,
    syncs: u64,
    crashes: u64,
    /// An armed crash: after this many more writes, length changes and syncs, the disk crashes in the middle of
    /// whatever the database was doing, keeping the unsynced changes a generator seeded with the second number picks.
    armed: Option<(u64, u64)>,
    /// The handle (id, crash epoch) of the database open on this disk, as a file lock would hold it: a second open
    /// while it lives fails, as redb's open of a locked file does. A crash releases it (the process died).
    holder: Option<(u64, u64)>,
    /// Handles made so far (each gets the next id).
    handles: u64,
}

impl Disk {
    /// Loses what was not synced except what `survives` keeps.
    fn crash(&mut self, survives: &mut dyn FnMut() -> bool) {
        let mut after = self.durable.clone();
        for change in std::mem::take(&mut self.unsynced) {
            if !survives() {
                continue;
            }
            match change {
                Change::Write { offset, data } => write_at(&mut after, offset, &data),
                Change::SetLen(len) => after.resize(len as usize, 0),
            }
        }
        self.durable = after.clone();
        self.current = after;
        self.crashes += 1;
        self.armed = None;
    }

    /// Counts one operation against an armed crash; `true` if the disk crashed now.
    fn tick(&mut self) -> bool {
        let Some((remaining, seed)) = self.armed else { return false };
        if remaining > 0 {
            self.armed = Some((remaining - 1, seed));
            return false;
        }
        let mut rng = crate::seeded_rng::SeededRng::new(seed);
        self.crash(&mut move || rng.per_mille(500));
        true
    }
}

#[derive(Debug)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A simulated disk; see the module documentation.
#[derive(Debug, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
    /// The crash count when this handle was made: a handle from before the last crash is dead.
    epoch: u64,
    id: u64,
}

impl Clone for SimDisk {
    /// Another handle on the same disk, alive until the next crash.
    fn clone(&self) -> SimDisk {
        let mut disk = self.lock();
        disk.handles += 1;
        SimDisk { disk: self.disk.clone(), epoch: disk.crashes, id: disk.handles }
    }
}

/// What a disk did, for the simulation's trace and assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimDiskStats {
    pub len: u64,
    pub syncs: u64,
    pub crashes: u64,
    pub unsynced_changes: usize,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The disk, if this handle is from after the last crash.
    fn alive(&self) -> Result<MutexGuard<'_, Disk>, std::io::Error> {
        let disk = self.lock();
        if disk.crashes != self.epoch {
            return Err(crashed());
        }
        Ok(disk)
    }

    /// Loses what was not synced, except the unsynced changes `survives` keeps (asked once per change, in write
    /// order). Every handle made before goes dead; open a new database on a new clone to "restart".
    pub fn crash(&self, mut survives: impl FnMut() -> bool) {
        self.lock().crash(&mut survives);
    }

    /// Crashes the disk in the middle of later work: after `operations` more writes, length changes and syncs, the
    /// next one fails and the disk crashes, keeping a subset of the unsynced changes picked by a generator seeded with
    /// `seed`. Deterministic for a given sequence of operations.
    pub fn crash_after(&self, operations: u64, seed: u64) {
        self.lock().armed = Some((operations, seed));
    }

    /// Takes the disk for one database, as opening a file takes its lock: fails while another live handle holds it.
    /// The handle's `close` (redb calls it when the database is dropped) releases it.
    pub(crate) fn claim(&self) -> Result<(), std::io::Error> {
        let mut disk = self.alive()?;
        match disk.holder {
            Some((holder, epoch)) if holder != self.id && epoch == disk.crashes => {
                Err(std::io::Error::new(std::io::ErrorKind::WouldBlock, super::ALREADY_OPEN))
            }
            _ => {
                disk.holder = Some((self.id, self.epoch));
                Ok(())
            }
        }
    }

    pub fn stats(&self) -> SimDiskStats {
        let disk = self.lock();
        SimDiskStats {
            len: disk.current.len() as u64,
            syncs: disk.syncs,
            crashes: disk.crashes,
            unsynced_changes: disk.unsynced.len(),
        }
    }
}

fn write_at(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset as usize..end].copy_from_slice(data);
}

fn crashed() -> std::io::Error {
    std::io::Error::other("the simulated disk crashed under this handle")
}

fn out_of_range() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the simulated disk")
}

impl StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.alive()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let disk = self.alive()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let bytes = disk.current.get(start..start + out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut disk = self.alive()?;
        if disk.tick() {
            return Err(crashed());
        }
        disk.current.resize(len as usize, 0);
        disk.unsynced.push(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut disk = self.alive()?;
        if disk.tick() {
            return Err(crashed());
        }
        let disk = &mut *disk;
        for change in disk.unsynced.drain(..) {
            match change {
                Change::Write { offset, data } => write_at(&mut disk.durable, offset, &data),
                Change::SetLen(len) => disk.durable.resize(len as usize, 0),
            }
        }
        disk.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut disk = self.alive()?;
        if disk.tick() {
            return Err(crashed());
        }
        write_at(&mut disk.current, offset, data);
        disk.unsynced.push(Change::Write { offset, data: data.to_vec() });
        Ok(())
    }

    /// The database is gone: its claim on the disk ends.
    fn close(&self) -> Result<(), std::io::Error> {
        let mut disk = self.lock();
        if disk.holder.is_some_and(|(holder, _)| holder == self.id) {
            disk.holder = None;
        }
        Ok(())
    }
}
