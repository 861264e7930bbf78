//! The in-memory twin of the node's disk, for simulation: files (the database's, the log's segments) that keep what
//! was synced apart from what was only written, and a disk that can **crash**: everything written since the last sync
//! is lost, except the changes a caller-chosen (seeded) predicate lets through, in any subset, as a disk cache that
//! reorders writes would. redb runs on it as a [`StorageBackend`], the log's segments as [`WalFile`]s in a [`WalDir`];
//! only the bytes live in memory.
//!
//! The model is a file system's: a file's data is durable once the file is synced, and a name created or removed in
//! the directory only once the directory is synced (a segment whose data was synced but whose name was not can vanish
//! in a crash, as on ext4). The database's own file exists from the start.
//!
//! Clones share one disk. A crash happens while the database is still open (as power fails under a running process):
//! the handles that existed before it go dead, so nothing the old stores do afterwards (their close included) reaches
//! the disk; the node "restarts" by opening new stores on a clone made after the crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use super::wal::{WalDir, WalFile};

/// A file's bytes: what survives a crash and what reads see (the durable bytes plus every write since the last sync).
#[derive(Debug, Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
}

#[derive(Debug)]
enum Change {
    Write {
        inode: usize,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        inode: usize,
        len: u64,
    },
    /// A name made or replaced in the directory.
    Link {
        name: String,
        inode: usize,
    },
    Unlink {
        name: String,
    },
}

impl Change {
    fn inode(&self) -> Option<usize> {
        match self {
            Change::Write { inode, .. } | Change::SetLen { inode, .. } => Some(*inode),
            Change::Link { .. } | Change::Unlink { .. } => None,
        }
    }
}

/// The database's file: inode 0, named from the start.
const DATABASE_INODE: usize = 0;

#[derive(Debug)]
struct Disk {
    inodes: Vec<Inode>,
    /// The directory as reads see it, and as a crash leaves it.
    names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
    /// Changes since their file's (or the directory's) last sync, in order, to replay a subset of them at a crash.
    unsynced: Vec<Change>,
    syncs: u64,
    crashes: u64,
    /// An armed crash: after this many more writes, length changes, syncs and directory changes, the disk crashes in
    /// the middle of whatever the stores were doing, keeping the unsynced changes a generator seeded with the second
    /// number picks.
    armed: Option<(u64, u64)>,
    /// The handle (id, crash epoch) of the database open on this disk, as a file lock would hold it: a second open
    /// while it lives fails, as redb's open of a locked file does. A crash releases it (the process died).
    holder: Option<(u64, u64)>,
    /// Handles made so far (each gets the next id).
    handles: u64,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk {
            inodes: vec![Inode::default()],
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced: Vec::new(),
            syncs: 0,
            crashes: 0,
            armed: None,
            holder: None,
            handles: 0,
        }
    }
}

impl Disk {
    fn apply_durably(&mut self, change: Change) {
        match change {
            Change::Write { inode, offset, data } => write_at(&mut self.inodes[inode].durable, offset, &data),
            Change::SetLen { inode, len } => self.inodes[inode].durable.resize(len as usize, 0),
            Change::Link { name, inode } => {
                self.durable_names.insert(name, inode);
            }
            Change::Unlink { name } => {
                self.durable_names.remove(&name);
            }
        }
    }

    /// Loses what was not synced except what `survives` keeps.
    fn crash(&mut self, survives: &mut dyn FnMut() -> bool) {
        for change in std::mem::take(&mut self.unsynced) {
            if survives() {
                self.apply_durably(change);
            }
        }
        for inode in &mut self.inodes {
            inode.current = inode.durable.clone();
        }
        self.names = self.durable_names.clone();
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

    /// Makes the changes `selected` picks durable, in order, and keeps the rest pending.
    fn sync(&mut self, mut selected: impl FnMut(&Change) -> bool) {
        let pending = std::mem::take(&mut self.unsynced);
        for change in pending {
            if selected(&change) {
                self.apply_durably(change);
            } else {
                self.unsynced.push(change);
            }
        }
        self.syncs += 1;
    }
}

/// A simulated disk, or one file on it; see the module documentation.
#[derive(Debug, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
    /// The crash count when this handle was made: a handle from before the last crash is dead.
    epoch: u64,
    id: u64,
    /// The file this handle reads and writes (the database's unless made by [`WalDir::open`]).
    inode: usize,
}

impl Clone for SimDisk {
    /// Another handle on the same disk and file, alive until the next crash.
    fn clone(&self) -> SimDisk {
        let mut disk = self.lock();
        disk.handles += 1;
        SimDisk { disk: self.disk.clone(), epoch: disk.crashes, id: disk.handles, inode: self.inode }
    }
}

/// What a disk did, for the simulation's trace and assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimDiskStats {
    /// Bytes in every file that has a name.
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

    /// The disk for a change: alive, and not crashing at this very operation.
    fn changing(&self) -> Result<MutexGuard<'_, Disk>, std::io::Error> {
        let mut disk = self.alive()?;
        if disk.tick() {
            return Err(crashed());
        }
        Ok(disk)
    }

    /// Loses what was not synced, except the unsynced changes `survives` keeps (asked once per change, in write
    /// order). Every handle made before goes dead; open new stores on a new clone to "restart".
    pub fn crash(&self, mut survives: impl FnMut() -> bool) {
        self.lock().crash(&mut survives);
    }

    /// Crashes the disk in the middle of later work: after `operations` more writes, length changes, syncs and
    /// directory changes, the next one fails and the disk crashes, keeping a subset of the unsynced changes picked by
    /// a generator seeded with `seed`. Deterministic for a given sequence of operations.
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
        let named = disk.names.values().map(|inode| disk.inodes[*inode].current.len() as u64).sum::<u64>();
        SimDiskStats {
            len: disk.inodes[DATABASE_INODE].current.len() as u64 + named,
            syncs: disk.syncs,
            crashes: disk.crashes,
            unsynced_changes: disk.unsynced.len(),
        }
    }

    /// A handle on another file of this disk.
    fn on(&self, inode: usize) -> SimDisk {
        SimDisk { inode, ..self.clone() }
    }

    fn file_len(&self) -> Result<u64, std::io::Error> {
        Ok(self.alive()?.inodes[self.inode].current.len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let disk = self.alive()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let bytes = disk.inodes[self.inode].current.get(start..start + out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn resize(&self, len: u64) -> Result<(), std::io::Error> {
        let mut disk = self.changing()?;
        disk.inodes[self.inode].current.resize(len as usize, 0);
        disk.unsynced.push(Change::SetLen { inode: self.inode, len });
        Ok(())
    }

    fn sync_file(&self) -> Result<(), std::io::Error> {
        let inode = self.inode;
        self.changing()?.sync(|change| change.inode() == Some(inode));
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut disk = self.changing()?;
        write_at(&mut disk.inodes[self.inode].current, offset, data);
        disk.unsynced.push(Change::Write { inode: self.inode, offset, data: data.to_vec() });
        Ok(())
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

fn not_found(name: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("no file {name} on the simulated disk"))
}

impl StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file_len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.read_at(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.resize(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.sync_file()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.write_at(offset, data)
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

impl WalFile for SimDisk {
    fn byte_len(&self) -> std::io::Result<u64> {
        self.file_len()
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        SimDisk::read_at(self, offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        SimDisk::write_at(self, offset, data)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.resize(len)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sync_file()
    }
}

/// The disk's one directory holds the log's segments (the database's file has no name in it).
impl WalDir for SimDisk {
    fn names(&self) -> std::io::Result<Vec<String>> {
        Ok(self.alive()?.names.keys().cloned().collect())
    }

    fn open(&self, name: &str) -> std::io::Result<Arc<dyn WalFile>> {
        let inode = *self.alive()?.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(Arc::new(self.on(inode)))
    }

    fn create(&self, name: &str) -> std::io::Result<Arc<dyn WalFile>> {
        let inode = {
            let mut disk = self.changing()?;
            disk.inodes.push(Inode::default());
            let inode = disk.inodes.len() - 1;
            disk.names.insert(name.to_owned(), inode);
            disk.unsynced.push(Change::Link { name: name.to_owned(), inode });
            inode
        };
        Ok(Arc::new(self.on(inode)))
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        let mut disk = self.changing()?;
        disk.names.remove(name).ok_or_else(|| not_found(name))?;
        disk.unsynced.push(Change::Unlink { name: name.to_owned() });
        Ok(())
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        self.changing()?.sync(|change| change.inode().is_none());
        Ok(())
    }
}
