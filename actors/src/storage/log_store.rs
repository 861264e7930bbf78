//! The Raft log and vote in redb, implementing openraft's `RaftLogStorage`.
//!
//! An append commits its entries unsynced, so they are readable at once, and returns; one syncer task per store
//! then makes them durable (a synced empty commit, which persists every unsynced one before it: several appends
//! waiting at once share one fsync) and reports each append flushed, in order. With the vendored openraft's patch a
//! leader replicates its entries while its own fsync runs, instead of after (`vendor/openraft/PANDO-PATCH.md`); a
//! follower still answers only once its copy is durable, since openraft waits for the report before it does.
//!
//! The committed log id openraft saves is kept in memory and written by the syncer's next synced commit: it costs
//! the Raft core no write transaction of its own (which waited for redb's one write lock while a sync held it).
//!
//! **Invariant:** an append is reported flushed only after a synced commit that began after its own commit.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, OnceLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::mpsc;

use super::{
    LOG_TABLE, META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_META_TABLE, blocking, decode, encode, read_error,
    write_error,
};
use crate::raft::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    database: Arc<Database>,
    /// Appends committed unsynced, in order, for the syncer (started by the first append, which runs on the runtime;
    /// it ends when every clone of this store is gone).
    unsynced: Arc<OnceLock<mpsc::UnboundedSender<LogFlushed<TypeConfig>>>>,
    /// The committed log id last saved and not yet written (`None` once the syncer wrote it).
    committed: Arc<Mutex<Option<Option<LogId>>>>,
}

impl LogStore {
    pub(crate) fn new(database: Arc<Database>) -> LogStore {
        LogStore { database, unsynced: Arc::default(), committed: Arc::default() }
    }

    fn syncer(&self) -> &mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
        self.unsynced.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(sync_appends(self.database.clone(), self.committed.clone(), receiver));
            sender
        })
    }

    fn unwritten_committed(&self) -> Option<Option<LogId>> {
        *self.committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let read = self.database.begin_read().map_err(|error| read_error(&error))?;
        let table = read.open_table(RAFT_META_TABLE).map_err(|error| read_error(&error))?;
        let value = table.get(key).map_err(|error| read_error(&error))?;
        value.map(|bytes| decode(bytes.value())).transpose()
    }

    /// Writes `value` under `key`, synced.
    async fn write_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        let database = self.database.clone();
        blocking(move || {
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            write.set_durability(Durability::Immediate).map_err(|error| write_error(&error))?;
            {
                let mut table = write.open_table(RAFT_META_TABLE).map_err(|error| write_error(&error))?;
                table.insert(key, bytes.as_slice()).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(index) => Bound::Included(*index),
            Bound::Excluded(index) => Bound::Excluded(*index),
            Bound::Unbounded => Bound::Unbounded,
        };
        let read = self.database.begin_read().map_err(|error| read_error(&error))?;
        let table = read.open_table(LOG_TABLE).map_err(|error| read_error(&error))?;
        let mut entries = Vec::new();
        for row in table.range::<u64>((Bound::Included(start), end)).map_err(|error| read_error(&error))? {
            let (_, value) = row.map_err(|error| read_error(&error))?;
            entries.push(decode::<Entry>(value.value())?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(META_LAST_PURGED)?;
        let read = self.database.begin_read().map_err(|error| read_error(&error))?;
        let table = read.open_table(LOG_TABLE).map_err(|error| read_error(&error))?;
        let last = table.last().map_err(|error| read_error(&error))?;
        let last_log_id = match last {
            Some((_, value)) => Some(*decode::<Entry>(value.value())?.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced and not written here (Raft's commit index is volatile state): the syncer's next synced commit
        // writes it, so a batch costs one fsync instead of two, and the Raft core no write transaction of its own.
        // Nothing acknowledged depends on it: an acknowledged write is in a quorum's synced logs and is committed
        // again after a restart, and a value that lags the applied state is raised to it when the node starts
        // (openraft's `get_initial_state`). openraft 0.9 would restore a node that was leader as leader and take
        // max(first entry of its term, this value) as its read index, which with a lagging value misses acknowledged
        // writes (simulator seed 20386, when this value was first unsynced): a leader no longer resumes its
        // leadership (`RaftActor::pre_start`), and a node's reads also wait until everything its log held at startup
        // is applied (`RaftCore::applied_startup_log`).
        *self.committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        match self.unwritten_committed() {
            Some(committed) => Ok(committed),
            None => Ok(self.read_meta::<Option<LogId>>(META_COMMITTED)?.flatten()),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.get_log_id().index, encode(&entry)?));
        }
        let database = &self.database;
        let result = super::short_write(|| {
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            // Readable at once; the syncer makes it durable.
            write.set_durability(Durability::None).map_err(|error| write_error(&error))?;
            {
                let mut table = write.open_table(LOG_TABLE).map_err(|error| write_error(&error))?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(|error| write_error(&error))?;
                }
            }
            write.commit().map_err(|error| write_error(&error))
        });
        match &result {
            Ok(()) => {
                if let Err(mpsc::error::SendError(callback)) = self.syncer().send(callback) {
                    callback.log_io_completed(Err(std::io::Error::other("the log syncer stopped")));
                }
            }
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let database = self.database.clone();
        blocking(move || {
            let write = database.begin_write().map_err(|error| write_error(&error))?;
            {
                let mut table = write.open_table(LOG_TABLE).map_err(|error| write_error(&error))?;
                table.retain_in(log_id.index.., |_, _| false).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id)?;
        let database = self.database.clone();
        blocking(move || {
            // Immediate: this commit also makes every earlier state-machine commit durable, which the purge relies on.
            let write = database.begin_write().map_err(|error| write_error(&error))?;
            {
                let mut meta = write.open_table(RAFT_META_TABLE).map_err(|error| write_error(&error))?;
                meta.insert(META_LAST_PURGED, bytes.as_slice()).map_err(|error| write_error(&error))?;
                let mut table = write.open_table(LOG_TABLE).map_err(|error| write_error(&error))?;
                table.retain_in(..=log_id.index, |_, _| false).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))
        })
        .await
    }
}

/// The syncer: for each wait, one synced commit (it persists every unsynced commit before it, and writes the committed
/// log id saved since the last one), then every append that was queued before it began is reported flushed, in order.
async fn sync_appends(
    database: Arc<Database>,
    committed: Arc<Mutex<Option<Option<LogId>>>>,
    mut unsynced: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
) {
    while let Some(first) = unsynced.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = unsynced.try_recv() {
            waiting.push(next);
        }
        let database = database.clone();
        let committed = committed.clone();
        let synced = blocking(move || {
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            write.set_durability(Durability::Immediate).map_err(|error| write_error(&error))?;
            // Taken once the write lock is held, so a value saved later waits for the next sync.
            let saved = committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let Some(saved) = saved {
                let bytes = encode(&saved)?;
                let mut table = write.open_table(RAFT_META_TABLE).map_err(|error| write_error(&error))?;
                table.insert(META_COMMITTED, bytes.as_slice()).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))
        })
        .await;
        for callback in waiting {
            let outcome = synced.as_ref().map(|_| ()).map_err(|error| std::io::Error::other(error.to_string()));
            callback.log_io_completed(outcome);
        }
    }
}
