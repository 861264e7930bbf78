//! The replicated state machine in redb, implementing openraft's `RaftStateMachine`: applies committed entries through
//! the pure core in `pando-protocol`, builds and installs snapshots.

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder};
use pando_protocol::command::ProposalOutcome;
use pando_protocol::hook::{ClusterEvent, EventBody};
use pando_protocol::state_machine::apply_proposal;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::redb_tables::{History, Rows, Tables, read_revision};
use super::snapshot::{
    CURRENT_SNAPSHOT_FILE, SNAPSHOT_FORMAT_WITH_HISTORY, SnapshotHeader, SnapshotReader, SnapshotTable, SnapshotWriter,
};
use super::{
    AppliedDigest, COORD_TABLE, HISTORY_TABLE, KV_TABLE, META_APPLIED_DIGEST, META_LAST_APPLIED, META_MEMBERSHIP,
    META_REVISION, SM_META_TABLE, SnapshotFile, applied_digest, blocking, decode, encode, offload, read_applied_digest,
    read_error, write_error,
};
use crate::commit_stream::{CommitStream, Committed, MembershipChange, RevisionEvents};
use crate::raft::type_config::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Records a cluster event in the hook log at the state machine's clock.
fn record_cluster_event(
    tables: &mut impl pando_protocol::coord::CoordWrite,
    revision: u64,
    event: ClusterEvent,
) -> Result<Vec<Arc<pando_protocol::hook::HookEvent>>, StorageError> {
    let fault = |fault: pando_protocol::state_machine::StorageFault| write_error(&std::io::Error::other(fault.0));
    let now = pando_protocol::coord::clock(tables).map_err(fault)?;
    let subject = pando_protocol::hook::cluster_subject(&event);
    let events =
        pando_protocol::hook::record(tables, now, revision, [(subject, EventBody::Cluster(event))]).map_err(fault)?;
    Ok(events.into_iter().map(Arc::new).collect())
}

#[derive(Clone)]
pub struct StateMachineStore {
    database: Arc<Database>,
    snapshot_dir: PathBuf,
    /// Distinguishes temporary files of concurrent snapshot builds and receptions.
    file_counter: Arc<AtomicU64>,
    /// Orders the publication of builds and installs (openraft may run a build concurrently with an install).
    snapshot_lock: Arc<std::sync::Mutex<()>>,
    /// The node's commit stream: what each applied entry changed, published after its transaction committed. The
    /// storage handle gives every store it publishes the node's one stream ([`StateMachineStore::publish_to`]).
    stream: CommitStream,
}

impl StateMachineStore {
    pub(crate) fn new(database: Arc<Database>, snapshot_dir: PathBuf) -> Result<StateMachineStore, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|error| write_error(&error))?;
        // Leftovers of builds or receptions interrupted by a crash are never valid snapshots.
        for entry in std::fs::read_dir(&snapshot_dir).map_err(|error| read_error(&error))? {
            let path = entry.map_err(|error| read_error(&error))?.path();
            if path.extension().is_some_and(|extension| extension == "tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(StateMachineStore {
            database,
            snapshot_dir,
            file_counter: Arc::new(AtomicU64::new(0)),
            snapshot_lock: Arc::new(std::sync::Mutex::new(())),
            stream: CommitStream::default(),
        })
    }

    /// Publishes what this store applies on `stream` (the node's one commit stream) from now on.
    pub(crate) fn publish_to(&mut self, stream: CommitStream) {
        self.stream = stream;
    }

    fn temporary_path(&self, what: &str) -> PathBuf {
        let counter = self.file_counter.fetch_add(1, Ordering::Relaxed);
        self.snapshot_dir.join(format!("{what}-{counter}.tmp"))
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership, u64), StorageError> {
        let read = self.database.begin_read().map_err(|error| read_error(&error))?;
        let meta = read.open_table(SM_META_TABLE).map_err(|error| read_error(&error))?;
        let last_applied = match meta.get(META_LAST_APPLIED).map_err(|error| read_error(&error))? {
            Some(bytes) => decode(bytes.value())?,
            None => None,
        };
        let membership = match meta.get(META_MEMBERSHIP).map_err(|error| read_error(&error))? {
            Some(bytes) => decode(bytes.value())?,
            None => StoredMembership::default(),
        };
        let revision = read_revision(&meta).map_err(|error| read_error(&error))?;
        Ok((last_applied, membership, revision))
    }

    /// Makes a complete snapshot file the current one, durably (rename, then fsync of the directory).
    fn publish(&self, path: &std::path::Path) -> Result<(), StorageError> {
        std::fs::rename(path, self.snapshot_dir.join(CURRENT_SNAPSHOT_FILE)).map_err(|error| write_error(&error))?;
        std::fs::File::open(&self.snapshot_dir).and_then(|dir| dir.sync_all()).map_err(|error| write_error(&error))
    }

    fn open_current(&self) -> Result<Option<(std::fs::File, SnapshotMeta)>, StorageError> {
        let path = self.snapshot_dir.join(CURRENT_SNAPSHOT_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(read_error(&error)),
        };
        let (_, SnapshotHeader { meta, .. }) =
            SnapshotReader::open(file.try_clone().map_err(|error| read_error(&error))?)?;
        // The clone shares the offset: rewind, so readers of the snapshot start at its header.
        let mut file = file;
        file.seek(SeekFrom::Start(0)).map_err(|error| read_error(&error))?;
        Ok(Some((file, meta)))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let (last_applied, membership, _) = self.read_applied()?;
        Ok((last_applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let database = &self.database;
        super::short_write(|| {
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            // Durable with the next log append or purge; until then the log can replay these entries.
            write.set_durability(Durability::None).map_err(|error| write_error(&error))?;
            let mut outcomes = Vec::with_capacity(entries.len());
            let mut committed = Vec::with_capacity(entries.len());
            {
                let mut meta = write.open_table(SM_META_TABLE).map_err(|error| write_error(&error))?;
                let mut revision = read_revision(&meta).map_err(|error| write_error(&error))?;
                let mut digest = read_applied_digest(&meta)?;
                let mut tables = Tables {
                    kv: Rows {
                        table: write.open_table(KV_TABLE).map_err(|error| write_error(&error))?,
                        history: History(write.open_table(HISTORY_TABLE).map_err(|error| write_error(&error))?),
                        recorded: Vec::new(),
                    },
                    coord: write.open_table(COORD_TABLE).map_err(|error| write_error(&error))?,
                    events: Vec::new(),
                };
                let mut last_applied = None;
                for entry in &entries {
                    last_applied = Some(*entry.get_log_id());
                    digest = applied_digest(&digest, entry)?;
                    match &entry.payload {
                        EntryPayload::Blank => {
                            // A leader's first entry of its term.
                            let leader = entry.get_log_id().leader_id;
                            let event = ClusterEvent::LeaderElected { node: leader.node_id, term: leader.term };
                            let hooks = record_cluster_event(&mut tables, revision, event)?;
                            outcomes.push(ProposalOutcome::default());
                            committed.push(Committed {
                                index: entry.get_log_id().index,
                                revision,
                                hooks,
                                ..Committed::default()
                            });
                        }
                        EntryPayload::Normal(proposal) => {
                            let mut outcome = apply_proposal(&mut tables, &mut revision, proposal)
                                .map_err(|fault| openraft::StorageIOError::apply(*entry.get_log_id(), &fault))?;
                            committed.push(Committed {
                                index: entry.get_log_id().index,
                                revision,
                                kv: RevisionEvents::group(std::mem::take(&mut tables.kv.recorded)),
                                coord: outcome.events.clone(),
                                membership: None,
                                hooks: std::mem::take(&mut outcome.hooks).into_iter().map(Arc::new).collect(),
                            });
                            outcomes.push(outcome);
                        }
                        EntryPayload::Membership(membership) => {
                            let stored = StoredMembership::new(Some(*entry.get_log_id()), membership.clone());
                            meta.insert(META_MEMBERSHIP, encode(&stored)?.as_slice())
                                .map_err(|error| write_error(&error))?;
                            outcomes.push(ProposalOutcome::default());
                            let change = MembershipChange {
                                voters: membership.voter_ids().collect(),
                                learners: membership.learner_ids().collect(),
                            };
                            let event = ClusterEvent::MembershipChanged {
                                voters: change.voters.iter().copied().collect(),
                                learners: change.learners.iter().copied().collect(),
                            };
                            let hooks = record_cluster_event(&mut tables, revision, event)?;
                            committed.push(Committed {
                                index: entry.get_log_id().index,
                                revision,
                                membership: Some(change),
                                hooks,
                                ..Committed::default()
                            });
                        }
                    }
                }
                if let Some(last_applied) = last_applied {
                    meta.insert(META_LAST_APPLIED, encode(&Some(last_applied))?.as_slice())
                        .map_err(|error| write_error(&error))?;
                    meta.insert(META_APPLIED_DIGEST, digest.as_slice()).map_err(|error| write_error(&error))?;
                }
                meta.insert(META_REVISION, revision.to_be_bytes().as_slice()).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))?;
            Ok((outcomes, committed))
        })
        .map(|(outcomes, committed)| {
            for entry in committed {
                self.stream.publish(entry);
            }
            outcomes
        })
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.temporary_path("receiving");
        let file = offload(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|error| write_error(&error))?;
            // The open handle is all openraft uses; unlinking now means an install never leaves the file behind.
            std::fs::remove_file(&path).map_err(|error| write_error(&error))?;
            Ok::<_, StorageError>(file)
        })
        .await
        .map_err(|error| write_error(&error))??;
        Ok(Box::new(SnapshotFile::new(file)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotFile>) -> Result<(), StorageError> {
        let mut source = snapshot.into_std().await;
        let store = self.clone();
        let meta = meta.clone();
        blocking(move || {
            // Keep a copy as the current snapshot first, so a node that installs one can also serve it.
            source.seek(SeekFrom::Start(0)).map_err(|error| read_error(&error))?;
            let copy_path = store.temporary_path("installing");
            let mut copy = std::fs::File::create(&copy_path).map_err(|error| write_error(&error))?;
            std::io::copy(&mut source, &mut copy).map_err(|error| write_error(&error))?;
            copy.sync_all().map_err(|error| write_error(&error))?;
            drop(copy);

            let _guard = store.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let file = std::fs::File::open(&copy_path).map_err(|error| read_error(&error))?;
            let (mut reader, SnapshotHeader { format_version, meta: file_meta, revision, applied_digest }) =
                SnapshotReader::open(file)?;
            if file_meta.last_log_id != meta.last_log_id {
                return Err(read_error(&std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("snapshot holds {:?}, expected {:?}", file_meta.last_log_id, meta.last_log_id),
                )));
            }
            let write = store.database.begin_write().map_err(|error| write_error(&error))?;
            {
                let mut kv = write.open_table(KV_TABLE).map_err(|error| write_error(&error))?;
                kv.retain(|_, _| false).map_err(|error| write_error(&error))?;
                let mut coord = write.open_table(COORD_TABLE).map_err(|error| write_error(&error))?;
                coord.retain(|_, _| false).map_err(|error| write_error(&error))?;
                let mut history = write.open_table(HISTORY_TABLE).map_err(|error| write_error(&error))?;
                history.retain(|_, _| false).map_err(|error| write_error(&error))?;
                while let Some((table, rows)) = reader.next_rows()? {
                    let target = match table {
                        SnapshotTable::Kv => &mut kv,
                        SnapshotTable::Coord => &mut coord,
                        SnapshotTable::History => &mut history,
                    };
                    for (key, value) in rows {
                        target.insert(key.as_slice(), value.as_slice()).map_err(|error| write_error(&error))?;
                    }
                }
                super::complete_blob_key_index(&kv, &mut coord)?;
                if format_version < SNAPSHOT_FORMAT_WITH_HISTORY {
                    // The snapshot carries no history: this node holds none up to the snapshot's revision.
                    let mut tables = Tables { kv: (), coord, events: Vec::new() };
                    pando_protocol::watch::set_compacted_revision(&mut tables, revision + 1)
                        .map_err(|fault| write_error(&std::io::Error::other(fault.0)))?;
                }
                let mut sm_meta = write.open_table(SM_META_TABLE).map_err(|error| write_error(&error))?;
                sm_meta
                    .insert(META_LAST_APPLIED, encode(&meta.last_log_id)?.as_slice())
                    .map_err(|error| write_error(&error))?;
                sm_meta
                    .insert(META_MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                    .map_err(|error| write_error(&error))?;
                sm_meta
                    .insert(META_REVISION, revision.to_be_bytes().as_slice())
                    .map_err(|error| write_error(&error))?;
                sm_meta.insert(META_APPLIED_DIGEST, applied_digest.as_slice()).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))?;
            std::fs::rename(&copy_path, store.snapshot_dir.join(CURRENT_SNAPSHOT_FILE))
                .map_err(|error| write_error(&error))
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        match self.open_current()? {
            Some((file, meta)) => Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotFile::new(file)) })),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.clone();
        let (file, meta) = blocking(move || {
            // One read transaction: rows and meta come from the same applied state.
            let read = store.database.begin_read().map_err(|error| read_error(&error))?;
            let sm_meta = read.open_table(SM_META_TABLE).map_err(|error| read_error(&error))?;
            let last_log_id: Option<LogId> = match sm_meta.get(META_LAST_APPLIED).map_err(|error| read_error(&error))? {
                Some(bytes) => decode(bytes.value())?,
                None => None,
            };
            let last_membership: StoredMembership =
                match sm_meta.get(META_MEMBERSHIP).map_err(|error| read_error(&error))? {
                    Some(bytes) => decode(bytes.value())?,
                    None => StoredMembership::default(),
                };
            let revision = read_revision(&sm_meta).map_err(|error| read_error(&error))?;
            let digest: AppliedDigest = read_applied_digest(&sm_meta)?;
            let snapshot_id = match last_log_id {
                Some(log_id) => {
                    format!("{}-{}-{}-{revision}", log_id.leader_id.term, log_id.leader_id.node_id, log_id.index)
                }
                None => format!("empty-{revision}"),
            };
            let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
            let path = store.temporary_path("building");
            let mut writer = SnapshotWriter::create(&path, &meta, revision, digest)?;
            // Every state-machine table, each in its own run of chunks.
            let tables = [
                (KV_TABLE, SnapshotTable::Kv),
                (COORD_TABLE, SnapshotTable::Coord),
                (HISTORY_TABLE, SnapshotTable::History),
            ];
            for (definition, table) in tables {
                let rows = read.open_table(definition).map_err(|error| read_error(&error))?;
                for row in rows.iter().map_err(|error| read_error(&error))? {
                    let (key, value) = row.map_err(|error| read_error(&error))?;
                    writer.row(table, key.value(), value.value())?;
                }
            }
            writer.finish()?;
            let _guard = store.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // An install may have finished while this build ran: never replace a newer snapshot with an older one.
            if let Some((file, current)) = store.open_current()?
                && current.last_log_id >= meta.last_log_id
            {
                let _ = std::fs::remove_file(&path);
                return Ok((file, current));
            }
            // The state this snapshot holds becomes durable before the snapshot does: applies are durable only at
            // the log store's checkpoints, and a crash must never leave the current snapshot ahead of the applied
            // state (openraft refuses to start with a snapshot beyond the commit index: simulator seed 20386, once
            // applies waited for a checkpoint instead of the next log sync). A synced commit persists every commit
            // before it.
            let mut write = store.database.begin_write().map_err(|error| write_error(&error))?;
            write.set_durability(Durability::Immediate).map_err(|error| write_error(&error))?;
            write.commit().map_err(|error| write_error(&error))?;
            store.publish(&path)?;
            let file = std::fs::File::open(store.snapshot_dir.join(CURRENT_SNAPSHOT_FILE))
                .map_err(|error| read_error(&error))?;
            Ok((file, meta))
        })
        .await?;
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotFile::new(file)) })
    }
}
