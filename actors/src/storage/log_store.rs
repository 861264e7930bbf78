//! The Raft log and vote in redb, implementing openraft's `RaftLogStorage`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::{
    LOG_TABLE, META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_META_TABLE, blocking, decode, encode, read_error,
    write_error,
};
use crate::raft::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    database: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(database: Arc<Database>) -> LogStore {
        LogStore { database }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let read = self.database.begin_read().map_err(|error| read_error(&error))?;
        let table = read.open_table(RAFT_META_TABLE).map_err(|error| read_error(&error))?;
        let value = table.get(key).map_err(|error| read_error(&error))?;
        value.map(|bytes| decode(bytes.value())).transpose()
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        let database = self.database.clone();
        blocking(move || {
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            write.set_durability(durability).map_err(|error| write_error(&error))?;
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
        self.write_meta(META_VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced (Raft's commit index is volatile state): it becomes durable with the next log append, so a batch
        // costs one fsync instead of two, on the leader and on every follower. Nothing acknowledged depends on it: an acknowledged write is in the synced log,
        // and is committed again after a restart. But openraft 0.9 restores a node that was leader as leader at
        // startup and takes max(first entry of its term, this value) as its read index, so a commit index that lags
        // would let it serve a linearizable read that misses an acknowledged write (found by the simulator, seed
        // 20386, when this value was unsynced without more): its reads wait until everything its log held at
        // startup is applied (`RaftCore::applied_startup_log`).
        self.write_meta(META_COMMITTED, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
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
        let database = self.database.clone();
        let result = blocking(move || {
            let write = database.begin_write().map_err(|error| write_error(&error))?;
            {
                let mut table = write.open_table(LOG_TABLE).map_err(|error| write_error(&error))?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(|error| write_error(&error))?;
                }
            }
            write.commit().map_err(|error| write_error(&error))
        })
        .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
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
