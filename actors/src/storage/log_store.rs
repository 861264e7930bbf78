//! The Raft log in its own segment files ([`Wal`]) and the vote in redb, implementing openraft's `RaftLogStorage`.
//!
//! An append writes its entries to the log's active segment, unsynced, so they are readable at once, and returns; one
//! syncer task per store then makes them durable (an `fdatasync` of every segment written since its last sync, which
//! covers every append waiting at once) and reports each append flushed, in order. With the vendored openraft's patch
//! a leader replicates its entries while its own fsync runs, instead of after (`vendor/openraft/PANDO-PATCH.md`); a
//! follower still answers only once its copy is durable, since openraft waits for the report before it does.
//!
//! The state machine's applies commit to redb unsynced; a checkpointer task beside the syncer **checkpoints** the
//! database (one synced redb commit) at most every [`CHECKPOINT_INTERVAL_MS`] while the log moves, never holding up
//! an append's sync, and a purge checkpoints before it removes
//! anything. After a crash the state machine is at worst a checkpoint behind, and openraft re-applies the committed
//! entries the log still holds. The committed log id openraft saves is kept in memory and written by the next
//! checkpoint: it costs the Raft core no write of its own.
//!
//! **Invariants:** an append is reported flushed only after a sync of its segment that began after its write; the
//! log is purged only after a synced database commit that holds the purge point (and every apply before it).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase};
use tokio::sync::{mpsc, oneshot, watch};

use super::wal::Wal;
use super::{
    META_COMMITTED, META_LAST_PURGED, META_VOTE, RAFT_META_TABLE, blocking, decode, encode, read_error, write_error,
};
use crate::raft::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};

/// How often, at most, the checkpointer makes the database durable while the log moves (and once more when it stops).
pub const CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// How often the checkpointer syncs the database's file between checkpoints while the log moves, outside redb's write
/// lock: the pages redb's write buffer spilled since are then on disk before the checkpoint that must sync them
/// holds the lock (it took a checkpoint at 256 clients from 42-51 ms to 20-27 ms with an 8 MiB cache).
pub const SYNC_AHEAD_INTERVAL_MS: u64 = 50;
const _: () = assert!(SYNC_AHEAD_INTERVAL_MS < CHECKPOINT_INTERVAL_MS);

#[derive(Clone)]
pub struct LogStore {
    database: Arc<Database>,
    wal: Arc<Mutex<Wal>>,
    /// Appends written unsynced, in order, for the syncer (started with the checkpointer by the first append, which
    /// runs on the runtime; both end when every clone of this store is gone).
    unsynced: Arc<OnceLock<mpsc::UnboundedSender<LogFlushed<TypeConfig>>>>,
    /// The committed log id last saved and not yet written (`None` once a checkpoint wrote it).
    committed: Arc<Mutex<Option<Option<LogId>>>>,
    /// What the checkpoints so far cost.
    checkpoints: Arc<CheckpointStats>,
    /// The database's file, for syncs ahead of a checkpoint (none on a simulated disk).
    ahead: Option<Arc<std::fs::File>>,
}

impl LogStore {
    pub(crate) fn new(database: Arc<Database>, wal: Wal, ahead: Option<std::fs::File>) -> LogStore {
        LogStore {
            database,
            wal: Arc::new(Mutex::new(wal)),
            unsynced: Arc::default(),
            committed: Arc::default(),
            checkpoints: Arc::default(),
            ahead: ahead.map(Arc::new),
        }
    }

    fn syncer(&self) -> &mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
        self.unsynced.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let (moved, moves) = watch::channel(());
            let (running, syncer_ended) = oneshot::channel();
            tokio::spawn(sync_appends(self.wal.clone(), receiver, moved, running));
            tokio::spawn(checkpoint_while_moving(self.checkpointer(), self.ahead.clone(), moves, syncer_ended));
            sender
        })
    }

    /// What the checkpointer needs, without the syncer's sender (which would keep both alive forever).
    fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            database: self.database.clone(),
            committed: self.committed.clone(),
            stats: self.checkpoints.clone(),
        }
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        locked(&self.wal)
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

    /// Makes the database durable now (every apply so far, and the committed log id saved since the last one).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        self.checkpointer().checkpoint().await
    }

    /// What the checkpoints so far cost.
    pub fn checkpoint_times(&self) -> CheckpointTimes {
        let stats = &self.checkpoints;
        CheckpointTimes {
            count: stats.count.load(Ordering::Relaxed),
            held_seconds_total: stats.held_micros_total.load(Ordering::Relaxed) as f64 / 1e6,
            held_seconds_max: stats.held_micros_max.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// How many checkpoints this store made, and how long they held redb's write lock (which applies wait for), for
/// `pando cluster metrics`.
#[derive(Default)]
struct CheckpointStats {
    count: AtomicU64,
    held_micros_total: AtomicU64,
    held_micros_max: AtomicU64,
}

/// A reading of [`CheckpointStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CheckpointTimes {
    pub count: u64,
    pub held_seconds_total: f64,
    pub held_seconds_max: f64,
}

/// The log's lock; a poisoned one is taken as is, as the stores take every lock.
fn locked(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    wal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a checkpoint writes: the database, and the committed log id saved since the last one; and what it cost.
struct Checkpointer {
    database: Arc<Database>,
    stats: Arc<CheckpointStats>,
    committed: Arc<Mutex<Option<Option<LogId>>>>,
}

impl Checkpointer {
    async fn checkpoint(&self) -> Result<(), StorageError> {
        let database = self.database.clone();
        let committed = self.committed.clone();
        let stats = self.stats.clone();
        blocking(move || {
            let asked = std::time::Instant::now();
            let mut write = database.begin_write().map_err(|error| write_error(&error))?;
            let locked_at = std::time::Instant::now();
            write.set_durability(Durability::Immediate).map_err(|error| write_error(&error))?;
            // Taken once the write lock is held, so a value saved later waits for the next checkpoint.
            let saved = committed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let Some(saved) = saved {
                let bytes = encode(&saved)?;
                let mut table = write.open_table(RAFT_META_TABLE).map_err(|error| write_error(&error))?;
                table.insert(META_COMMITTED, bytes.as_slice()).map_err(|error| write_error(&error))?;
            }
            write.commit().map_err(|error| write_error(&error))?;
            let held = locked_at.elapsed().as_micros() as u64;
            stats.count.fetch_add(1, Ordering::Relaxed);
            stats.held_micros_total.fetch_add(held, Ordering::Relaxed);
            stats.held_micros_max.fetch_max(held, Ordering::Relaxed);
            tracing::debug!(lock_wait_us = (locked_at - asked).as_micros() as u64, held_us = held, "checkpoint");
            Ok(())
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
            Bound::Included(index) => index.saturating_add(1),
            Bound::Excluded(index) => *index,
            Bound::Unbounded => u64::MAX,
        };
        // Read under the lock (a truncation must not reuse the bytes mid-read), decoded after it.
        let encoded = self.wal().read(start, end).map_err(|error| read_error(&error))?;
        encoded.iter().map(|(_, bytes)| decode::<Entry>(bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let wal = self.wal();
        Ok(LogState { last_purged_log_id: wal.last_purged(), last_log_id: wal.last_log_id() })
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
        // Not synced and not written here (Raft's commit index is volatile state): the next checkpoint writes it, so
        // the Raft core pays no write transaction of its own.
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
        let mut records = Vec::new();
        for entry in entries {
            records.push((*entry.get_log_id(), encode(&entry)?));
        }
        // On the calling thread (see `short_write`): one write to the page cache, and a new segment's creation now
        // and then; the syncer makes it durable.
        let result = super::short_write(|| self.wal().append(&records).map_err(|error| write_error(&error)));
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
        let wal = self.wal.clone();
        blocking(move || locked(&wal).truncate(log_id.index).map_err(|error| write_error(&error))).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point first, synced: this commit also makes every earlier apply durable, which the purge relies
        // on (the entries it removes are no longer there to re-apply).
        self.write_meta(META_LAST_PURGED, &log_id).await?;
        let wal = self.wal.clone();
        blocking(move || locked(&wal).purge(log_id).map_err(|error| write_error(&error))).await
    }
}

/// The syncer: for each wait, one sync of every segment written since its last sync, oldest first, then every append
/// that was queued before it began is reported flushed, in order; each round then tells the checkpointer the log
/// moved. It ends when every clone of the store is gone, and the checkpointer with it.
async fn sync_appends(
    wal: Arc<Mutex<Wal>>,
    mut unsynced: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
    moved: watch::Sender<()>,
    // Dropped when the syncer ends, which tells the checkpointer to make its last checkpoint now.
    _running: oneshot::Sender<()>,
) {
    while let Some(first) = unsynced.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = unsynced.try_recv() {
            waiting.push(next);
        }
        // Taken after every waiting append was written: the syncs below began after their writes.
        let files = locked(&wal).take_dirty();
        // Reported from the syncing thread itself: the Raft core (on a follower, the AppendEntries' answer) waits for
        // the report, and a hop back to this task first would be one more thread wakeup on that path. Reports stay
        // in order: the next round begins only after this one returned.
        let reported = blocking(move || {
            let synced = files.iter().try_for_each(|file| file.sync().map_err(|error| write_error(&error)));
            for callback in waiting {
                let outcome = synced.as_ref().map(|_| ()).map_err(|error| std::io::Error::other(error.to_string()));
                callback.log_io_completed(outcome);
            }
            Ok(())
        })
        .await;
        if let Err(error) = reported {
            // The syncing thread panicked: its appends' reports were dropped, which openraft takes as failed writes.
            tracing::error!(%error, "the log syncer's sync failed outright");
        }
        moved.send_replace(());
    }
}

/// The checkpointer: once the log moved, a checkpoint at most [`CHECKPOINT_INTERVAL_MS`] after the last one, and a
/// last one as soon as the syncer ends (`syncer_ended`); until a checkpoint is due, a sync of the database's file every
/// [`SYNC_AHEAD_INTERVAL_MS`]. A task of its own, so that the appends' syncs never wait behind a checkpoint (under 256
/// clients one took 50-90 ms, all of it time every append of the node waited).
async fn checkpoint_while_moving(
    store: Checkpointer,
    ahead: Option<Arc<std::fs::File>>,
    mut moved: watch::Receiver<()>,
    mut syncer_ended: oneshot::Receiver<()>,
) {
    let mut last_checkpoint = tokio::time::Instant::now();
    while moved.changed().await.is_ok() {
        let due = last_checkpoint + std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS);
        let ended = !until_due(due, ahead.as_ref(), &mut syncer_ended).await;
        // Moves from here on are the next checkpoint's: this one may begin before their applies.
        moved.borrow_and_update();
        checkpoint_logged(&store).await;
        if ended {
            return;
        }
        last_checkpoint = tokio::time::Instant::now();
    }
    checkpoint_logged(&store).await;
}

/// Waits until `due`, syncing the database's file ahead meanwhile; answers false if the syncer ended first.
async fn until_due(
    due: tokio::time::Instant,
    ahead: Option<&Arc<std::fs::File>>,
    syncer_ended: &mut oneshot::Receiver<()>,
) -> bool {
    let step = std::time::Duration::from_millis(SYNC_AHEAD_INTERVAL_MS);
    loop {
        let next = match ahead {
            Some(_) => (tokio::time::Instant::now() + step).min(due),
            None => due,
        };
        tokio::select! {
            biased;
            _ = &mut *syncer_ended => return false,
            () = tokio::time::sleep_until(next) => {}
        }
        if next >= due {
            return true;
        }
        if let Some(file) = ahead {
            let file = file.clone();
            // Not the checkpoint's durability (that is its own synced commit): a failure here only leaves the
            // checkpoint more to sync, and the checkpoint reports its own.
            let _ = super::offload(move || file.sync_data()).await;
        }
    }
}

/// A checkpoint that failed is retried by the next one; the log still holds every entry it would have covered.
async fn checkpoint_logged(store: &Checkpointer) {
    if let Err(error) = store.checkpoint().await {
        tracing::warn!(%error, "the database checkpoint failed; the log keeps what it would have made durable");
    }
}
