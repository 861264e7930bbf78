//! openraft's storage conformance suite against the redb stores.

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore};
use crate::raft::type_config::{StorageError, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|error| super::write_error(&error))?;
        let stores = super::open(dir.path())?;
        Ok((dir, stores.log, stores.state_machine))
    }
}

#[test]
fn redb_storage_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(RedbBuilder)
}

/// A snapshot carries every state-machine table: coordination rows survive a build on one node and an install on
/// another.
#[tokio::test]
async fn snapshots_carry_the_coordination_table() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use pando_protocol::command::{Command, Proposal};
    use pando_protocol::coord::{CoordRequest, CoordResponse, CounterValue};
    use pando_protocol::kv::bytes;

    let source_dir = tempfile::tempdir().unwrap();
    let source = super::open(source_dir.path()).unwrap();
    let commands = vec![
        Command::Coord(CoordRequest::lease_grant(60_000)),
        Command::Coord(CoordRequest::LockAcquire { name: bytes("jobs/main"), lease: 1, wait_ms: 0 }),
        Command::Coord(CoordRequest::CounterAdd { name: bytes("hits"), delta: 15, initial: CounterValue::Signed(0) }),
        Command::Kv(pando_protocol::state_machine::put_request(b"k", b"v")),
    ];
    let entry = crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Proposal { stamp_ms: 1_000, commands }),
    };
    let mut state_machine = source.state_machine.clone();
    let outcomes = state_machine.apply(vec![entry]).await.unwrap();
    assert!(outcomes[0].results.iter().all(Result::is_ok), "{outcomes:?}");
    let snapshot = state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = super::open(target_dir.path()).unwrap();
    let mut target_machine = target.state_machine.clone();
    target_machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    match target.reader.read_coord(&CoordRequest::LockGet { name: bytes("jobs/main") }).unwrap().unwrap() {
        CoordResponse::Lock { lock } => {
            assert_eq!(lock.holder.map(|holder| (holder.lease, holder.token)), Some((1, 1)))
        }
        other => panic!("unexpected {other:?}"),
    }
    match target.reader.read_coord(&CoordRequest::CounterGet { name: bytes("hits") }).unwrap().unwrap() {
        CoordResponse::Counter { value } => assert_eq!(value, Some(CounterValue::Signed(15))),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(target.reader.lease_deadline().unwrap(), Some(61_000));
}

struct SimDiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SimDiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|error| super::write_error(&error))?;
        let stores = super::open_simulated(dir.path(), super::SimDisk::new())?;
        Ok((dir, stores.log, stores.state_machine))
    }
}

/// The simulated disk runs the real stores: they pass the same conformance suite.
#[test]
fn the_simulated_disk_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SimDiskBuilder)
}

/// A crash loses what was not synced, in any subset, and never what was: appended log entries (immediate commits)
/// survive every crash; the state machine may fall behind the log (openraft re-applies) but never ahead of it, and
/// the database always opens again.
#[tokio::test]
async fn a_crash_keeps_the_log_and_loses_only_unsynced_applies() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload};
    use pando_protocol::command::{Command, Proposal};

    let entry = |index: u64| crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: index,
            commands: vec![Command::Kv(pando_protocol::state_machine::put_request(
                format!("k{index}").as_bytes(),
                b"v",
            ))],
        }),
    };
    // A fixed pseudo-random sequence decides which unsynced writes survive each crash.
    let mut rng = crate::seeded_rng::SeededRng::new(1);
    let mut coin = move || rng.per_mille(500);
    let dir = tempfile::tempdir().unwrap();
    let disk = super::SimDisk::new();
    let mut appended = 0;
    for round in 0..6u64 {
        let stores = super::open_simulated(dir.path(), disk.clone()).unwrap();
        let (mut log, mut machine) = (stores.log, stores.state_machine);
        let (applied, _) = machine.applied_state().await.unwrap();
        let applied = applied.map_or(0, |log_id| log_id.index);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|log_id| log_id.index), (appended > 0).then_some(appended), "round {round}");
        assert!(applied <= appended, "the state machine ({applied}) is never ahead of the log ({appended})");
        if round > 0 {
            assert!(applied < appended, "the applies after the last append were not synced and are lost");
        }
        let entries = log.try_get_log_entries(1..appended + 1).await.unwrap();
        assert_eq!(entries.len() as u64, appended, "every appended entry survived");
        // Re-apply what the crash lost, append and apply five more, leave the last applies unsynced, crash.
        let missing: Vec<_> = (applied + 1..=appended).map(entry).collect();
        machine.apply(missing).await.unwrap();
        log.blocking_append((appended + 1..=appended + 5).map(entry)).await.unwrap();
        machine.apply((appended + 1..=appended + 5).map(entry).collect::<Vec<_>>()).await.unwrap();
        appended += 5;
        // Power fails under the running stores; what they do afterwards (closing included) never reaches the disk.
        disk.crash(&mut coin);
        drop((log, machine, stores.reader));
    }
    assert_eq!(disk.stats().crashes, 6);
}

/// The commit index costs no write of its own: it is read back at once, written by the next checkpoint, and
/// survives a crash from then on (before it, a crash loses it, which openraft tolerates: a lagging value is raised
/// to the applied state at startup).
#[tokio::test]
async fn the_commit_index_is_written_by_the_next_checkpoint() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, EntryPayload};
    use pando_protocol::command::Proposal;

    let log_id = |index: u64| openraft::LogId::new(CommittedLeaderId::new(1, 1), index);
    let entry = |index: u64| crate::raft::type_config::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands: Vec::new() }),
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = super::SimDisk::new();
    let mut log = super::open_simulated(dir.path(), disk.clone()).unwrap().log;
    log.blocking_append((1..=3).map(entry)).await.unwrap();
    log.save_committed(Some(log_id(2))).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)), "read back before any checkpoint");
    log.blocking_append((4..=4).map(entry)).await.unwrap();
    disk.crash(|| false);
    drop(log);
    let mut log = super::open_simulated(dir.path(), disk.clone()).unwrap().log;
    assert_eq!(log.read_committed().await.unwrap(), None, "a crash before the next checkpoint loses it");
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(4)), "the synced appends survive");
    log.save_committed(Some(log_id(3))).await.unwrap();
    log.checkpoint().await.unwrap();
    disk.crash(|| false);
    drop(log);
    let mut log = super::open_simulated(dir.path(), disk.clone()).unwrap().log;
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3)), "the checkpoint wrote it");
}

/// Opens a store on a simulated disk and appends and applies entries 1 to 3 (unsynced applies).
async fn three_applied(dir: &std::path::Path, disk: &super::SimDisk) -> super::Stores {
    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload};
    use pando_protocol::command::Proposal;

    let entry = |index: u64| crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands: Vec::new() }),
    };
    let mut stores = super::open_simulated(dir, disk.clone()).unwrap();
    stores.log.blocking_append((1..=3).map(entry)).await.unwrap();
    stores.state_machine.apply((1..=3).map(entry).collect::<Vec<_>>()).await.unwrap();
    stores
}

/// The index of the last apply a store on `disk` finds durable.
async fn durably_applied(dir: &std::path::Path, disk: &super::SimDisk) -> Option<u64> {
    use openraft::storage::RaftStateMachine;

    let mut machine = super::open_simulated(dir, disk.clone()).unwrap().state_machine;
    machine.applied_state().await.unwrap().0.map(|log_id| log_id.index)
}

/// The checkpointer works on its own: a second after appends stop, every apply before is durable.
#[tokio::test(start_paused = true)]
async fn applies_become_durable_by_the_checkpoint_a_second_after_the_log_stops() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), super::SimDisk::new());
    let stores = three_applied(dir.path(), &disk).await;
    tokio::time::sleep(std::time::Duration::from_millis(super::log_store::CHECKPOINT_INTERVAL_MS + 50)).await;
    assert_eq!(stores.log.checkpoint_times().count, 1, "one checkpoint, counted for the metrics");
    disk.crash(|| false);
    drop(stores);
    assert_eq!(durably_applied(dir.path(), &disk).await, Some(3), "the checkpoint made the applies durable");
}

/// The checkpointer's last checkpoint comes as soon as the store is gone, not when the next one would have been due:
/// a storage actor restarted after a panic must find the database closed and every apply durable.
#[tokio::test(start_paused = true)]
async fn the_last_checkpoint_comes_as_soon_as_the_store_is_gone() {
    let (dir, disk) = (tempfile::tempdir().unwrap(), super::SimDisk::new());
    drop(three_applied(dir.path(), &disk).await);
    // On the paused clock: lets the spawned syncer and checkpointer run, 10 ms of simulated time, far less than the
    // checkpoint interval the old behaviour would have waited out.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    disk.crash(|| false);
    assert_eq!(durably_applied(dir.path(), &disk).await, Some(3), "the last checkpoint made the applies durable");
}

/// A store from before the log had files of its own (its entries in the database's log table) moves them into the
/// files when it opens, once, and keeps every entry.
#[tokio::test]
async fn a_store_with_its_log_in_the_database_moves_it_into_the_log_files() {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::{CommittedLeaderId, EntryPayload};
    use pando_protocol::command::Proposal;

    let entry = |index: u64| crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands: Vec::new() }),
    };
    let dir = tempfile::tempdir().unwrap();
    drop(super::open(dir.path()).unwrap());
    {
        // The old shape: entries 1..=5 in the log table, nothing in the log's files.
        let database = redb::Database::create(dir.path().join("pando.redb")).unwrap();
        let write = database.begin_write().unwrap();
        {
            let mut table = write.open_table(super::LOG_TABLE).unwrap();
            for index in 1..=5 {
                table.insert(index, super::encode(&entry(index)).unwrap().as_slice()).unwrap();
            }
        }
        write.commit().unwrap();
    }
    for _ in 0..2 {
        let mut log = super::open(dir.path()).unwrap().log;
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|log_id| log_id.index), Some(5));
        let entries = log.try_get_log_entries(1..=5).await.unwrap();
        assert_eq!(entries.iter().map(|entry| entry.log_id.index).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }
    let database = redb::Database::create(dir.path().join("pando.redb")).unwrap();
    let read = redb::ReadableDatabase::begin_read(&database).unwrap();
    assert!(redb::ReadableTableMetadata::is_empty(&read.open_table(super::LOG_TABLE).unwrap()).unwrap());
}

/// Power fails in the middle of an append, at every point of it in turn, keeping a seeded subset of the unsynced
/// writes: the stores open again and the log holds the entries from before, with the new batch wholly there or
/// wholly absent (an append is one write), never anything torn.
#[tokio::test]
async fn a_crash_in_the_middle_of_an_append_leaves_whole_entries() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, EntryPayload};
    use pando_protocol::command::Proposal;

    let entry = |index: u64| crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands: Vec::new() }),
    };
    let mut crashed_mid_append = 0;
    for point in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let disk = super::SimDisk::new();
        let mut log = super::open_simulated(dir.path(), disk.clone()).unwrap().log;
        log.blocking_append((1..=3).map(entry)).await.unwrap();
        disk.crash_after(point, 0x5eed ^ point);
        let outcome = log.blocking_append((4..=6).map(entry)).await;
        if disk.stats().crashes == 0 {
            // The append finished before the armed point: crash right after it instead.
            assert!(outcome.is_ok());
            disk.crash(|| false);
        } else {
            crashed_mid_append += 1;
        }
        drop(log);
        let mut reopened =
            super::open_simulated(dir.path(), disk.clone()).expect("the database opens after a crash").log;
        let state = reopened.get_log_state().await.unwrap();
        let last = state.last_log_id.map(|log_id| log_id.index);
        assert!(last == Some(3) || last == Some(6), "crash at operation {point}: last entry {last:?}");
        let entries = reopened.try_get_log_entries(1..last.unwrap() + 1).await.unwrap();
        assert_eq!(entries.len() as u64, last.unwrap(), "crash at operation {point}");
        if outcome.is_ok() {
            assert_eq!(last, Some(6), "an acknowledged append survives (crash at operation {point})");
        }
    }
    assert!(crashed_mid_append >= 2, "the crash points fell inside the append {crashed_mid_append} times");
}

/// A simulated disk is a locked file: a second database cannot open it while the first lives (as redb refuses to open
/// a file twice), but it can once the first is dropped, or after a crash (the process that held it died).
#[test]
fn a_simulated_disk_opens_once_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let disk = super::SimDisk::new();
    let first = super::open_simulated(dir.path(), disk.clone()).unwrap();
    assert!(super::open_simulated(dir.path(), disk.clone()).is_err(), "opened twice");
    drop(first);
    let second = super::open_simulated(dir.path(), disk.clone()).unwrap();
    disk.crash(|| true);
    super::open_simulated(dir.path(), disk.clone()).expect("a crash releases the disk");
    drop(second);
}

/// Only "already open" is worth waiting for when a storage actor restarts; every other failure is final.
#[test]
fn an_already_open_database_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let first = super::open(dir.path()).unwrap();
    let error = super::open(dir.path()).err().expect("a second open in one process fails");
    assert!(super::is_already_open(&error), "{error}");
    drop(first);
    let disk = super::SimDisk::new();
    let _held = super::open_simulated(dir.path(), disk.clone()).unwrap();
    let error = super::open_simulated(dir.path(), disk.clone()).err().unwrap();
    assert!(super::is_already_open(&error), "{error}");
}

/// Replicas that apply the same entries hold the same applied digest; a different entry at the same index gives a
/// different one; a snapshot carries the digest, so a node that installed it continues the same chain.
#[tokio::test]
async fn the_applied_digest_follows_the_entries_and_travels_with_snapshots() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use pando_protocol::command::{Command, Proposal};

    let entry = |index: u64, value: &[u8]| crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: 1_000,
            commands: vec![Command::Kv(pando_protocol::state_machine::put_request(b"k", value))],
        }),
    };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<_> = dirs.iter().map(|dir| super::open(dir.path()).unwrap()).collect();
    assert_eq!(stores[0].reader.applied().unwrap(), (None, [0; 32]));
    for store in &stores[..2] {
        store.state_machine.clone().apply(vec![entry(1, b"a"), entry(2, b"b")]).await.unwrap();
    }
    // The same entries one at a time give the same digest as in one batch.
    let mut third = stores[2].state_machine.clone();
    third.apply(vec![entry(1, b"a")]).await.unwrap();
    let after_one = stores[2].reader.applied().unwrap().1;
    third.apply(vec![entry(2, b"c")]).await.unwrap();

    let (log_id, digest) = stores[0].reader.applied().unwrap();
    assert_eq!(log_id.map(|log_id| log_id.index), Some(2));
    assert_ne!(digest, after_one);
    assert_eq!(stores[1].reader.applied().unwrap(), (log_id, digest));
    assert_ne!(stores[2].reader.applied().unwrap().1, digest, "another value at index 2 must change the digest");

    let snapshot = stores[0].state_machine.clone().get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut installed = stores[3].state_machine.clone();
    installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(stores[3].reader.applied().unwrap(), (log_id, digest));
    for store in [&stores[0], &stores[3]] {
        store.state_machine.clone().apply(vec![entry(3, b"d")]).await.unwrap();
    }
    assert_eq!(stores[3].reader.applied().unwrap(), stores[0].reader.applied().unwrap());
}

/// A store written before the key-to-blob index existed (a KV row pointing at a blob, no `Bk/` row) gets the index
/// rows on its next open, once: the marker says the index is complete from then on.
#[test]
fn a_store_from_before_the_key_index_gets_its_rows_when_it_opens() {
    use pando_protocol::blob::{BlobHash, BlobRef, KEY_INDEX_COMPLETE, key_reference};
    use pando_protocol::stored_value::StoredValue;
    use redb::{ReadableDatabase, ReadableTable};

    let dir = tempfile::tempdir().unwrap();
    let hash = BlobHash::from_slice(&[9; 32]).unwrap();
    drop(super::open(dir.path()).unwrap());
    {
        // Rewind the store to its old shape: a blob-valued row, an inline row, and no index or marker.
        let database = redb::Database::create(dir.path().join("pando.redb")).unwrap();
        let write = database.begin_write().unwrap();
        {
            let mut kv = write.open_table(super::KV_TABLE).unwrap();
            let blob = StoredValue {
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                value: Vec::new(),
                blob: Some(BlobRef { hash, size: 5 }),
            };
            kv.insert(b"secret/big".as_slice(), blob.encode().as_slice()).unwrap();
            let inline =
                StoredValue { create_revision: 2, mod_revision: 2, version: 1, value: b"v".to_vec(), blob: None };
            kv.insert(b"small".as_slice(), inline.encode().as_slice()).unwrap();
            let mut coord = write.open_table(super::COORD_TABLE).unwrap();
            coord.remove(KEY_INDEX_COMPLETE).unwrap();
        }
        write.commit().unwrap();
    }
    let stores = super::open(dir.path()).unwrap();
    let reachable = |allowed: &'static [u8]| {
        stores.reader.blob_reachable(&hash, &move |key: &[u8]| key.starts_with(allowed)).unwrap()
    };
    assert!(reachable(b"secret/"), "the index row was rebuilt");
    assert!(!reachable(b"public/"));
    drop(stores);
    let database = redb::Database::create(dir.path().join("pando.redb")).unwrap();
    let read = database.begin_read().unwrap();
    let coord = read.open_table(super::COORD_TABLE).unwrap();
    assert!(coord.get(KEY_INDEX_COMPLETE).unwrap().is_some());
    assert!(coord.get(key_reference(&hash, b"secret/big").as_slice()).unwrap().is_some());
    assert!(coord.iter().unwrap().filter(|row| row.as_ref().unwrap().0.value().starts_with(b"Bk/")).count() == 1);
}
