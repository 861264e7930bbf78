//! Storage: the Raft log in segment files of its own ([`wal`]), and one redb database per node holding the vote and
//! the state-machine tables.
//!
//! A vote is written synced. Log appends are written unsynced and a syncer task makes them durable, one `fdatasync`
//! for every append waiting at once (`log_store`). The state machine applies committed entries with
//! `Durability::None`; a checkpointer task beside the syncer checkpoints the database (a synced commit, which makes
//! every commit before it durable, and writes the commit index) about once a second while the log moves, and on a
//! real disk syncs the database file every 50 ms in between so a checkpoint has little left to write. After a crash the state machine
//! is at worst behind the log, and openraft re-applies the missing committed entries: the log is purged only after a
//! synced commit, which also persists every state-machine commit before it. The leader may apply an entry a quorum
//! of followers holds before its own copy is synced; if a checkpoint then makes that apply durable and the node
//! crashes, its log ends before its state, and openraft purges the log up to the applied entry at startup (the
//! entries are committed, so nothing is lost).

mod log_store;
mod redb_tables;
pub mod sim_disk;
mod snapshot;
mod snapshot_file;
mod state_machine_store;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use log_store::LogStore;
pub use redb_tables::{HistoryPage, HookDetail, HookLogPage, StateReader};
pub use sim_disk::SimDisk;
pub use snapshot_file::SnapshotFile;
pub use state_machine_store::StateMachineStore;

use crate::raft::type_config::StorageError;

/// Raft log entries by index, MessagePack-encoded: where the log was before it had files of its own; a store that
/// still has rows here moves them into the log's files when it opens.
pub(crate) const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Vote, committed log id, last purged log id.
pub(crate) const RAFT_META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// KV rows: key to [`pando_protocol::stored_value::StoredValue`].
pub(crate) const KV_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_kv");
/// Coordination rows (leases, locks, counters, sequences, the log clock), see `pando_protocol::coord`.
pub(crate) const COORD_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_coord");
/// The KV change history: revision and position (`pando_protocol::watch::history_key`) to the event.
pub(crate) const HISTORY_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_history");
/// Last applied log id, membership and store revision.
pub(crate) const SM_META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

pub(crate) const META_VOTE: &str = "vote";
pub(crate) const META_COMMITTED: &str = "committed";
pub(crate) const META_LAST_PURGED: &str = "last_purged";
pub(crate) const META_LAST_APPLIED: &str = "last_applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";
pub(crate) const META_REVISION: &str = "revision";
/// The applied digest ([`applied_digest`]) at `last_applied`.
pub(crate) const META_APPLIED_DIGEST: &str = "applied_digest";

/// A 32-byte digest of every entry applied so far, in order: each applied entry's digest hashes the previous one
/// with the entry's log id and payload. Two replicas with the same digest at one index applied the same sequence of
/// entries up to it, so comparing digests checks that replicas agree (committed entries never change, each applied
/// state is a prefix of one sequence), as etcd's hash check does. Snapshots carry it, so a node that installed one
/// continues the same chain. All zeros before the first entry.
pub type AppliedDigest = [u8; 32];

/// The digest after applying `entry` on top of `previous`.
pub(crate) fn applied_digest(
    previous: &AppliedDigest,
    entry: &crate::raft::type_config::Entry,
) -> Result<AppliedDigest, StorageError> {
    use openraft::RaftLogId;
    let log_id = entry.get_log_id();
    let mut hasher = blake3::Hasher::new_derive_key("pando 2026-11 applied entry digest v1");
    hasher.update(previous);
    hasher.update(&log_id.index.to_be_bytes());
    hasher.update(&log_id.leader_id.term.to_be_bytes());
    hasher.update(&log_id.leader_id.node_id.to_be_bytes());
    hasher.update(&encode(&entry.payload)?);
    Ok(*hasher.finalize().as_bytes())
}

pub(crate) fn read_applied_digest(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<AppliedDigest, StorageError> {
    match meta.get(META_APPLIED_DIGEST).map_err(|error| read_error(&error))? {
        Some(bytes) => bytes.value().try_into().map_err(|_| {
            read_error(&std::io::Error::new(std::io::ErrorKind::InvalidData, "applied digest is not 32 bytes"))
        }),
        None => Ok([0; 32]),
    }
}

/// Page cache redb may use. Small on purpose: redb keeps the pages of unsynced commits (every apply) in a write buffer
/// of up to half of it, and a checkpoint writes and syncs the whole buffer while it holds the write lock that applies
/// wait for. At 256 MiB a second's applies under 256 clients stayed buffered (20-30 MiB) and a checkpoint stalled
/// applies for 50-90 ms, the put p99; at 8 MiB the buffer spills to the file as it fills, the checkpointer syncs the
/// spilled pages ahead (see `log_store`), and a checkpoint takes 20-27 ms (release, 3 members, `put --concurrency
/// 256`). Reads past the cache are page-cache reads of the file.
pub const REDB_CACHE_SIZE_BYTES: usize = 8 * 1024 * 1024;
/// Page cache of a simulated node's database (many nodes share one process).
pub const SIM_REDB_CACHE_SIZE_BYTES: usize = 8 * 1024 * 1024;

/// The node's storage: the log store, the state machine, and a read handle, all over one database.
pub struct Stores {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub reader: StateReader,
}

/// What opening the database says when this process still has it open (a previous instance not yet closed).
pub(crate) const ALREADY_OPEN: &str = "the database is already open in this process";

/// Whether opening failed only because this process still has the database open.
pub(crate) fn is_already_open(error: &StorageError) -> bool {
    error.to_string().contains(ALREADY_OPEN)
}

fn already_open() -> StorageError {
    write_error(&std::io::Error::new(std::io::ErrorKind::WouldBlock, ALREADY_OPEN))
}

/// Opens (or creates) the database in `dir` (file `pando.redb`, the log's segments in `wal/`, snapshots in
/// `snapshots/`).
pub fn open(dir: &Path) -> Result<Stores, StorageError> {
    std::fs::create_dir_all(dir).map_err(|error| write_error(&error))?;
    let database =
        Database::builder().set_cache_size(REDB_CACHE_SIZE_BYTES).create(dir.join("pando.redb")).map_err(|error| {
            match error {
                redb::DatabaseError::DatabaseAlreadyOpen => already_open(),
                other => write_error(&other),
            }
        })?;
    let wal_dir = wal::FsDir::open(&dir.join("wal")).map_err(|error| write_error(&error))?;
    // A second handle on the database's file, read-only, for the checkpointer's syncs ahead of a checkpoint.
    let ahead = std::fs::File::open(dir.join("pando.redb")).map_err(|error| read_error(&error))?;
    open_database(dir, database, Arc::new(wal_dir), wal::WAL_SEGMENT_BYTES_MAX, Some(ahead))
}

/// Opens (or creates) the database and the log on a simulated disk (snapshots still go to `dir/snapshots/`).
pub fn open_simulated(dir: &Path, disk: SimDisk) -> Result<Stores, StorageError> {
    std::fs::create_dir_all(dir).map_err(|error| write_error(&error))?;
    disk.claim().map_err(|_| already_open())?;
    let wal_dir = disk.clone();
    let database = Database::builder()
        .set_cache_size(SIM_REDB_CACHE_SIZE_BYTES)
        .create_with_backend(disk)
        .map_err(|error| write_error(&error))?;
    // No syncs ahead: they only make a checkpoint shorter, and a simulated disk has no time of its own to save.
    open_database(dir, database, Arc::new(wal_dir), wal::SIM_WAL_SEGMENT_BYTES_MAX, None)
}

fn open_database(
    dir: &Path,
    database: Database,
    wal_dir: Arc<dyn wal::WalDir>,
    segment_bytes_max: u64,
    ahead: Option<std::fs::File>,
) -> Result<Stores, StorageError> {
    let database = Arc::new(database);
    let write = database.begin_write().map_err(|error| write_error(&error))?;
    {
        // Create every table up front so readers never meet a missing table.
        write.open_table(LOG_TABLE).map_err(|error| write_error(&error))?;
        write.open_table(RAFT_META_TABLE).map_err(|error| write_error(&error))?;
        let kv = write.open_table(KV_TABLE).map_err(|error| write_error(&error))?;
        let mut coord = write.open_table(COORD_TABLE).map_err(|error| write_error(&error))?;
        write.open_table(HISTORY_TABLE).map_err(|error| write_error(&error))?;
        write.open_table(SM_META_TABLE).map_err(|error| write_error(&error))?;
        complete_blob_key_index(&kv, &mut coord)?;
    }
    write.commit().map_err(|error| write_error(&error))?;
    let last_purged = {
        let read = database.begin_read().map_err(|error| read_error(&error))?;
        let meta = read.open_table(RAFT_META_TABLE).map_err(|error| read_error(&error))?;
        let bytes = meta.get(META_LAST_PURGED).map_err(|error| read_error(&error))?;
        bytes.map(|bytes| decode::<crate::raft::type_config::LogId>(bytes.value())).transpose()?
    };
    let mut log = wal::Wal::open(wal_dir, last_purged, segment_bytes_max).map_err(|error| read_error(&error))?;
    move_log_rows(&database, &mut log)?;
    let state_machine = StateMachineStore::new(database.clone(), dir.join("snapshots"))?;
    Ok(Stores { log: LogStore::new(database.clone(), log, ahead), reader: StateReader::new(database), state_machine })
}

/// Moves a store's log rows from the database (where the log was before it had files) into the log's files: copied
/// and synced while the files hold nothing, then removed from the database, synced. A crash between the two leaves
/// both, and the next open only removes the rows.
fn move_log_rows(database: &Database, log: &mut wal::Wal) -> Result<(), StorageError> {
    let rows = {
        let read = database.begin_read().map_err(|error| read_error(&error))?;
        let table = read.open_table(LOG_TABLE).map_err(|error| read_error(&error))?;
        if table.is_empty().map_err(|error| read_error(&error))? {
            return Ok(());
        }
        let mut rows = Vec::new();
        if log.is_empty() {
            for row in table.iter().map_err(|error| read_error(&error))? {
                let (index, bytes) = row.map_err(|error| read_error(&error))?;
                if index.value() < log.next_index() {
                    continue; // purged
                }
                let entry: crate::raft::type_config::Entry = decode(bytes.value())?;
                rows.push((entry.log_id, bytes.value().to_vec()));
            }
        }
        rows
    };
    if !rows.is_empty() {
        log.append(&rows).map_err(|error| write_error(&error))?;
        for file in log.take_dirty() {
            file.sync().map_err(|error| write_error(&error))?;
        }
        tracing::info!(entries = rows.len(), "moved the Raft log from the database into its own files");
    }
    let write = database.begin_write().map_err(|error| write_error(&error))?;
    write
        .open_table(LOG_TABLE)
        .map_err(|error| write_error(&error))?
        .retain(|_, _| false)
        .map_err(|error| write_error(&error))?;
    write.commit().map_err(|error| write_error(&error))
}

/// Completes the key-to-blob index (`Bk/` rows, which token scopes over blobs read) of a state written before the
/// index existed: every KV row that points at a blob gets its row, then [`KEY_INDEX_COMPLETE`] says so. The rows are
/// a function of the KV rows alone, so every member computes the same ones. Runs when a store opens and after a
/// snapshot install (a snapshot from before the index has neither rows nor marker); answers the rows added.
///
/// [`KEY_INDEX_COMPLETE`]: pando_protocol::blob::KEY_INDEX_COMPLETE
pub(crate) fn complete_blob_key_index(
    kv: &impl ReadableTable<&'static [u8], &'static [u8]>,
    coord: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
) -> Result<usize, StorageError> {
    use pando_protocol::blob::{KEY_INDEX_COMPLETE, key_reference};
    if coord.get(KEY_INDEX_COMPLETE).map_err(|error| read_error(&error))?.is_some() {
        return Ok(0);
    }
    let mut added = 0;
    for row in kv.iter().map_err(|error| read_error(&error))? {
        let (key, value) = row.map_err(|error| read_error(&error))?;
        let Some(blob) =
            pando_protocol::stored_value::StoredValue::decode(value.value()).and_then(|stored| stored.blob)
        else {
            continue;
        };
        let reference = key_reference(&blob.hash, key.value());
        if coord.insert(reference.as_slice(), [].as_slice()).map_err(|error| write_error(&error))?.is_none() {
            added += 1;
        }
    }
    coord.insert(KEY_INDEX_COMPLETE, [].as_slice()).map_err(|error| write_error(&error))?;
    if added > 0 {
        tracing::info!(added, "completed the key-to-blob index of blobs recorded before it existed");
    }
    Ok(added)
}

pub(crate) fn read_error(error: &(impl std::error::Error + 'static)) -> StorageError {
    openraft::StorageIOError::read(error).into()
}

pub(crate) fn write_error(error: &(impl std::error::Error + 'static)) -> StorageError {
    openraft::StorageIOError::write(error).into()
}

/// Runs blocking work off the async runtime. On a current-thread runtime (the simulation's, on a paused clock) it
/// runs inline instead: tokio would let simulated time leap ahead while a blocking thread works, firing every timeout
/// at once, and the order of events would depend on thread scheduling. `Err` only if the work panicked.
pub(crate) async fn offload<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}

/// Runs a short, unsynced write transaction (a log append, an apply) on the calling thread. Handing it to a blocking
/// thread and back cost two thread wakeups per transaction, which on a 2-core VM were a larger share of a put than
/// the transaction itself (release build, 3 members, one client: 556 → 614-651 puts/s). Never for a synced commit:
/// at worst an apply waits for redb's write lock while a checkpoint holds it (20-27 ms under 256 clients, see
/// [`REDB_CACHE_SIZE_BYTES`]), blocking one runtime worker meanwhile (the Raft core waits for the apply either way).
pub(crate) fn short_write<T>(work: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
    work()
}

/// Runs blocking storage work with [`offload`].
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match offload(work).await {
        Ok(result) => result,
        Err(join_error) => Err(write_error(&join_error)),
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec_named(value).map_err(|error| write_error(&error))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    rmp_serde::from_slice(bytes).map_err(|error| read_error(&error))
}

#[cfg(test)]
mod tests;
