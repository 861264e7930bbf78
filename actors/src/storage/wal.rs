//! The Raft log's own files: segments of checksummed records beside the database, so a batch of appended entries
//! costs one `write` and one `fdatasync` of one file instead of a redb transaction (B-tree pages, ~28 `pwrite`s and
//! a synced commit per batch: ~0.4 ms more per batch on each node, `benches/storage_path.rs`).
//!
//! A segment is named by the index of its first record (`00000000000000000042.log`; `.start.log` if it began an
//! empty log, the one place the log may begin after its purge point) and holds records back to back:
//! a 40-byte header (magic, payload length, index, term, leader node, checksum) and the MessagePack entry. An
//! in-memory slot per entry says where it is. Recovery reads every segment and keeps, per segment, the prefix of
//! records that check (magic, checksum, the expected next index, terms that never go down); the rest of a segment is
//! a torn tail of unsynced writes and is cut off, synced, before anything new is written after it.
//!
//! Rules that keep every acknowledged entry and never let stale bytes come back:
//! - **Appends are reported durable only after every segment written since its last sync was synced, oldest
//!   first** (`take_dirty`, the log store's syncer). So a segment with a torn tail has no acknowledged records after
//!   it, and recovery drops every later segment.
//! - **A new segment's name is made durable (the directory synced) before anything is written to it**: a segment
//!   whose data was synced but whose name was not could vanish.
//! - **A truncation is durable before the call returns** (the cut segment synced, later segments removed and the
//!   directory synced): otherwise a crash could bring back the conflicting entries after newer ones written in their
//!   place, a log no leader ever sent.
//! - **A purge removes only segments whose every record is at or below the purge point** and need not be durable:
//!   a removed segment that comes back holds only purged records, which recovery skips (and removes again). The purge
//!   point itself is in the database, written synced before the purge (`LogStore::purge`).
//! - Recovery's own removals and cuts are synced before the log is used.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::CommittedLeaderId;

use crate::raft::type_config::LogId;

/// A segment holds at least one record and starts a new one after this many bytes.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A simulated node's segments are small, so rolling, purging whole segments and recovery across several of them
/// run in every seed.
pub const SIM_WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024;

/// One file of the log, read and written at offsets.
pub trait WalFile: Send + Sync + std::fmt::Debug + 'static {
    /// The file's length in bytes (named for what it answers, not a container's length).
    fn byte_len(&self) -> io::Result<u64>;
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// New bytes read as zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

/// The directory of the log's segments.
pub trait WalDir: Send + Sync + 'static {
    fn names(&self) -> io::Result<Vec<String>>;
    fn open(&self, name: &str) -> io::Result<Arc<dyn WalFile>>;
    /// A new, empty file (replacing one of the same name).
    fn create(&self, name: &str) -> io::Result<Arc<dyn WalFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the names created and removed so far durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// The log's directory on the node's file system.
#[derive(Debug)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    pub fn open(path: &Path) -> io::Result<FsDir> {
        std::fs::create_dir_all(path)?;
        Ok(FsDir { path: path.to_owned() })
    }
}

impl WalDir for FsDir {
    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(self.path.join(name))?))
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn WalFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path.join(name))?;
        Ok(Arc::new(file))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }
}

impl WalFile for std::fs::File {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// "PWL1": the first bytes of every record; zeros (a file extended but never written) end a segment.
const MAGIC: u32 = u32::from_le_bytes(*b"PWL1");
/// magic u32, payload length u32, index u64, term u64, leader node u64, checksum u64 (little-endian).
const HEADER_BYTES: usize = 40;
const CHECKED_BYTES: usize = 32;

fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new_derive_key("pando 2026-12 raft log record v1");
    hasher.update(&header[..CHECKED_BYTES]);
    hasher.update(payload);
    let digest = hasher.finalize();
    u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn encode_record(log_id: &LogId, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("a log entry over 4 GiB"))?;
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&log_id.index.to_le_bytes());
    out.extend_from_slice(&log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&log_id.leader_id.node_id.to_le_bytes());
    let check = checksum(&out[start..], payload);
    out.extend_from_slice(&check.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The records of a segment that check, from its start: each at the next index after the one before (the first
/// at `first`), with a term no lower. Answers them and the length they cover.
fn scan(bytes: &[u8], first: u64) -> (Vec<(LogId, u64, u32)>, u64) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut expected = first;
    let mut term = 0;
    while let Some(header) = bytes.get(offset..offset + HEADER_BYTES) {
        let len = le_u32(header, 4) as usize;
        let Some(payload) = bytes.get(offset + HEADER_BYTES..offset + HEADER_BYTES + len) else { break };
        let index = le_u64(header, 8);
        let record_term = le_u64(header, 16);
        if le_u32(header, 0) != MAGIC
            || le_u64(header, 32) != checksum(header, payload)
            || index != expected
            || record_term < term
        {
            break;
        }
        let log_id = LogId::new(CommittedLeaderId::new(record_term, le_u64(header, 24)), index);
        records.push((log_id, offset as u64, len as u32));
        offset += HEADER_BYTES + len;
        expected += 1;
        term = record_term;
    }
    (records, offset as u64)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A segment's file name: its first index, and whether it began an empty log (`.start.log`), the one place a log
/// may begin after its purge point's next index (see [`Wal::append`]).
fn segment_name(first: u64, starts_log: bool) -> String {
    if starts_log { format!("{first:020}.start.log") } else { format!("{first:020}.log") }
}

fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    let (digits, starts_log) = match name.strip_suffix(".start.log") {
        Some(digits) => (digits, true),
        None => (name.strip_suffix(".log")?, false),
    };
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, starts_log))
}

#[derive(Debug)]
struct Segment {
    file: Arc<dyn WalFile>,
    name: String,
    len: u64,
}

/// Where an entry is: its segment (by first index), the offset of its record and its payload's length.
#[derive(Clone, Copy, Debug)]
struct Slot {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: u32,
}

/// The log's segments and where each entry is. Not synchronized: the log store keeps it behind a mutex.
///
/// **Invariants:** every segment holds at least one live record or is the purged remains of one (removed at the next
/// purge or recovery); the last slot is in the last segment; slots are contiguous from `first`.
pub struct Wal {
    dir: Arc<dyn WalDir>,
    segments: BTreeMap<u64, Segment>,
    slots: VecDeque<Slot>,
    /// The index of `slots[0]`, or of the next entry while there are none.
    first: u64,
    last_purged: Option<LogId>,
    /// Segments written since their last sync.
    dirty: BTreeSet<u64>,
    segment_bytes_max: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Wal")
            .field("segments", &self.segments.keys().collect::<Vec<_>>())
            .field("first", &self.first)
            .field("entries", &self.slots.len())
            .field("last_purged", &self.last_purged)
            .finish()
    }
}

impl Wal {
    /// Opens the log in `dir` and recovers it (see the module documentation); `last_purged` is the purge point the
    /// database holds: records at or below it are gone whatever the segments still hold.
    pub fn open(dir: Arc<dyn WalDir>, last_purged: Option<LogId>, segment_bytes_max: u64) -> io::Result<Wal> {
        let purged_through = last_purged.map(|log_id| log_id.index);
        let mut wal = Wal {
            dir,
            segments: BTreeMap::new(),
            slots: VecDeque::new(),
            first: purged_through.map_or(0, |index| index + 1),
            last_purged,
            dirty: BTreeSet::new(),
            segment_bytes_max,
        };
        let mut found: Vec<(u64, bool)> = wal.dir.names()?.iter().filter_map(|name| parse_segment_name(name)).collect();
        found.sort_unstable();
        let mut changed_names = false;
        // Set once the log ends early: every later segment was written after an unsynced tail, so nothing in it was
        // acknowledged, and keeping it would put a gap in the log.
        let mut cut = false;
        for (first, starts_log) in found {
            let name = segment_name(first, starts_log);
            if cut {
                wal.dir.remove(&name)?;
                changed_names = true;
                continue;
            }
            let file = wal.dir.open(&name)?;
            let len = file.byte_len()?;
            let mut bytes = vec![0; usize::try_from(len).map_err(|_| invalid("a log segment over the address space"))?];
            file.read_at(0, &mut bytes)?;
            let (records, valid_len) = scan(&bytes, first);
            drop(bytes);
            let live: Vec<_> = records
                .iter()
                .filter(|(log_id, ..)| purged_through.is_none_or(|through| log_id.index > through))
                .collect();
            let expected = wal.next_index();
            let Some((head, ..)) = live.first() else {
                // Purged remains (a purge's removal that did not become durable; the log goes on at the purge point,
                // so a lost tail of it shows as a gap before the next segment), or a new segment whose first record
                // never reached the disk (nothing after it was acknowledged either).
                let stale = records.last().is_some_and(|(log_id, ..)| Some(log_id.index) <= purged_through)
                    || Some(first) <= purged_through;
                wal.dir.remove(&name)?;
                changed_names = true;
                cut |= !stale;
                continue;
            };
            if head.index > expected && !(starts_log && wal.slots.is_empty()) {
                // The log before lost its last records (unsynced writes, while later ones to this segment survived):
                // nothing from the gap on was acknowledged, since a sync of this segment syncs the one before first.
                tracing::warn!(segment = %name, missing_from = expected, "the log's tail was torn at a segment's end; cut there");
                wal.dir.remove(&name)?;
                changed_names = true;
                cut = true;
                continue;
            }
            if head.index > expected {
                wal.first = head.index;
            } else if head.index < expected {
                return Err(invalid(format!(
                    "segment {name} repeats entries from {} that the log before holds",
                    head.index
                )));
            }
            if wal.slots.back().is_some_and(|slot| slot.log_id.leader_id.term > head.leader_id.term) {
                return Err(invalid(format!("segment {name} goes back to an earlier term than the log before it")));
            }
            for (log_id, offset, len) in live {
                wal.slots.push_back(Slot { log_id: *log_id, segment: first, offset: *offset, len: *len });
            }
            if valid_len < len {
                // A torn tail of unsynced writes: cut it off, durably, before anything is written after it.
                file.set_len(valid_len)?;
                file.sync()?;
                cut = true;
            }
            wal.segments.insert(first, Segment { file, name, len: valid_len });
        }
        if changed_names {
            wal.dir.sync_dir()?;
        }
        Ok(wal)
    }

    /// The index the next appended entry must have.
    pub fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|slot| slot.log_id).or(self.last_purged)
    }

    pub fn last_purged(&self) -> Option<LogId> {
        self.last_purged
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Writes `entries` (log id and encoded entry, at consecutive indexes from the next one, or from one the log holds,
    /// which replaces the entries from there on) after the last record, unsynced:
    /// readable at once, durable once the segments [`Wal::take_dirty`] answers are synced.
    pub fn append(&mut self, entries: &[(LogId, Vec<u8>)]) -> io::Result<()> {
        let mut run: Vec<u8> = Vec::new();
        let mut run_slots: Vec<Slot> = Vec::new();
        if let Some((log_id, _)) = entries.first() {
            if log_id.index < self.next_index() && log_id.index >= self.first {
                // Entries that overwrite the tail (openraft truncates first; its storage suite does not): the tail
                // goes, durably, as a truncation's does.
                self.truncate(log_id.index)?;
            }
            if self.slots.is_empty() && log_id.index != self.first {
                // An empty log may begin anywhere (openraft's storage suite begins logs at 1 or 2, and below a purge
                // point; a node's own log begins at 0, or after the snapshot it installed). Recovery skips what is
                // at or below the purge point the database holds.
                self.first = log_id.index;
            }
        }
        for (log_id, payload) in entries {
            let expected = self.next_index() + run_slots.len() as u64;
            if log_id.index != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "append of entry {} where entry {expected} is next (the log holds {} entries from {})",
                        log_id.index,
                        self.slots.len(),
                        self.first
                    ),
                ));
            }
            let active_len = self.segments.last_key_value().map(|(_, segment)| segment.len + run.len() as u64);
            if active_len.is_none_or(|len| len >= self.segment_bytes_max) {
                self.write_run(&mut run, &mut run_slots)?;
                self.start_segment(log_id.index)?;
            }
            let (&segment, active) = self.segments.last_key_value().expect("a segment was just started");
            let offset = active.len + run.len() as u64;
            encode_record(log_id, payload, &mut run)?;
            run_slots.push(Slot { log_id: *log_id, segment, offset, len: payload.len() as u32 });
        }
        self.write_run(&mut run, &mut run_slots)
    }

    /// Writes the records gathered for the last segment in one write and makes their slots visible.
    fn write_run(&mut self, run: &mut Vec<u8>, run_slots: &mut Vec<Slot>) -> io::Result<()> {
        let Some(first_slot) = run_slots.first() else { return Ok(()) };
        let segment = self.segments.get_mut(&first_slot.segment).expect("the run's segment exists");
        segment.file.write_at(segment.len, run)?;
        segment.len += run.len() as u64;
        self.dirty.insert(first_slot.segment);
        self.slots.extend(run_slots.drain(..));
        run.clear();
        Ok(())
    }

    /// A new segment for entries from `first`, its name durable before anything is written to it.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        let name = segment_name(first, self.slots.is_empty());
        let file = self.dir.create(&name)?;
        self.dir.sync_dir()?;
        self.segments.insert(first, Segment { file, name, len: 0 });
        Ok(())
    }

    /// The segments written since their last sync, oldest first, to sync in that order before reporting the appends
    /// before this call durable.
    pub fn take_dirty(&mut self) -> Vec<Arc<dyn WalFile>> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().filter_map(|first| self.segments.get(first)).map(|segment| segment.file.clone()).collect()
    }

    /// The encoded entries from `start` up to `end` (exclusive), as far as the log holds them.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<(LogId, Vec<u8>)>> {
        let start = start.max(self.first);
        let end = end.min(self.next_index());
        let mut entries = Vec::with_capacity(end.saturating_sub(start) as usize);
        let mut position = start;
        while position < end {
            // One read for the run of entries that sit in one segment.
            let from = self.slot(position);
            let mut until = position + 1;
            while until < end && self.slot(until).segment == from.segment {
                until += 1;
            }
            let last = self.slot(until - 1);
            let span_end = last.offset + HEADER_BYTES as u64 + u64::from(last.len);
            let mut bytes = vec![0; (span_end - from.offset) as usize];
            self.segments[&from.segment].file.read_at(from.offset, &mut bytes)?;
            for index in position..until {
                let slot = self.slot(index);
                let at = (slot.offset - from.offset) as usize + HEADER_BYTES;
                entries.push((slot.log_id, bytes[at..at + slot.len as usize].to_vec()));
            }
            position = until;
        }
        Ok(entries)
    }

    fn slot(&self, index: u64) -> Slot {
        self.slots[(index - self.first) as usize]
    }

    /// Removes the entries from `index` on, durably (see the module documentation).
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        if index >= self.next_index() {
            return Ok(());
        }
        let index = index.max(self.first);
        let cut = self.slot(index);
        self.slots.truncate((index - self.first) as usize);
        let later: Vec<u64> = self.segments.range(cut.segment + 1..).map(|(first, _)| *first).collect();
        for first in later {
            self.remove_segment(first)?;
        }
        if cut.offset == 0 {
            self.remove_segment(cut.segment)?;
        } else {
            let segment = self.segments.get_mut(&cut.segment).expect("the cut entry's segment exists");
            segment.file.set_len(cut.offset)?;
            segment.file.sync()?;
            segment.len = cut.offset;
        }
        self.dir.sync_dir()
    }

    /// Forgets the entries up to `log_id` and removes the segments that hold nothing after it. The caller has made
    /// the purge point durable first.
    pub fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        while self.slots.front().is_some_and(|slot| slot.log_id.index <= log_id.index) {
            self.slots.pop_front();
        }
        self.first = self.first.max(log_id.index + 1);
        if self.last_purged.is_none_or(|purged| purged.index < log_id.index) {
            self.last_purged = Some(log_id);
        }
        let keep_from = self.slots.front().map(|slot| slot.segment);
        let gone: Vec<u64> =
            self.segments.keys().copied().filter(|first| keep_from.is_none_or(|keep| *first < keep)).collect();
        for first in gone {
            self.remove_segment(first)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, first: u64) -> io::Result<()> {
        self.dirty.remove(&first);
        match self.segments.remove(&first) {
            Some(segment) => self.dir.remove(&segment.name),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
