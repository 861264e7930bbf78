//! The StorageActor: owns the node's redb database for its lifetime and publishes the stores through the
//! [`StorageHandle`] every other subsystem reads by.
//!
//! It is the first child of the node's root supervisor (rest_for_one): if it restarts, everything that used the old
//! database handle restarts after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::error::WireError;
use pando_protocol::state_machine::StorageFault;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::commit_stream::{CommitStream, Committed, KvFeed};
use crate::live::{Live, Unavailable};
use crate::storage::{self, LogStore, StateMachineStore, StateReader, Stores};
use crate::supervision::{ActorDetail, Control};

/// How long a starting storage actor keeps trying to open the database (the previous instance may still hold it).
pub const STORAGE_REOPEN_WAIT_MS: u64 = 5_000;
/// Pause between those attempts.
pub const STORAGE_REOPEN_RETRY_MS: u64 = 20;
/// Longest wait between two looks at the applied state while a caller waits for its write to apply here.
pub const APPLIED_POLL_MS_MAX: u64 = 10;

/// Clones of the open stores (they share one database handle).
#[derive(Clone)]
pub struct StoreHandles {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub reader: StateReader,
}

/// The node's storage as the other subsystems reach it: valid across the StorageActor's restarts, as is the node's
/// commit stream it holds.
#[derive(Clone)]
pub struct StorageHandle {
    live: Live<StoreHandles>,
    stream: CommitStream,
}

impl Default for StorageHandle {
    fn default() -> StorageHandle {
        StorageHandle { live: Live::new("storage"), stream: CommitStream::default() }
    }
}

impl StorageHandle {
    /// The open stores, or [`Unavailable`] while storage restarts.
    pub fn stores(&self) -> Result<StoreHandles, Unavailable> {
        self.live.get()
    }

    /// A reader of the applied state.
    pub fn reader(&self) -> Result<StateReader, Unavailable> {
        self.live.get().map(|stores| stores.reader)
    }

    /// A reader of the applied state, waiting up to `within` while storage (re)starts.
    pub async fn reader_within(&self, within: Duration) -> Result<StateReader, Unavailable> {
        self.live.wait(within).await.map(|stores| stores.reader)
    }

    /// The node's commit stream from now on (it lives through storage restarts; an entry applied while nobody
    /// listened is in the history, not here). A subscriber more than
    /// [`COMMIT_STREAM_CAPACITY`](crate::commit_stream::COMMIT_STREAM_CAPACITY) entries behind is told it lagged.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.stream.subscribe()
    }

    /// How many applied entries took a grant away (a revoked token, a membership change) since the node started.
    pub fn grants_epoch(&self) -> u64 {
        self.stream.grants_epoch()
    }

    /// The KV changes from revision `from` on (history, then live), with no gap and no repeat.
    pub fn feed(&self, from: u64) -> KvFeed {
        KvFeed::new(self.clone(), from)
    }

    /// Runs `work` on the applied state off the async threads, waiting up to `within` for storage to be open. A
    /// storage fault is an internal error.
    pub async fn read<T: Send + 'static>(
        &self,
        within: Duration,
        work: impl FnOnce(&StateReader) -> Result<T, StorageFault> + Send + 'static,
    ) -> Result<T, WireError> {
        let reader = self.live.wait(within).await?.reader;
        storage::offload(move || work(&reader))
            .await
            .map_err(|error| WireError::internal(format!("read task failed: {error}")))?
            .map_err(|fault| WireError::internal(fault.to_string()))
    }

    /// [`StorageHandle::read`] on the calling thread, for reads of a few microseconds (one key): a read transaction
    /// never waits for the writer, and a hand-off to a blocking thread and back costs two thread wakeups, more than
    /// such a read.
    pub async fn read_here<T>(
        &self,
        within: Duration,
        work: impl FnOnce(&StateReader) -> Result<T, StorageFault>,
    ) -> Result<T, WireError> {
        let reader = self.live.wait(within).await?.reader;
        work(&reader).map_err(|fault| WireError::internal(fault.to_string()))
    }

    /// Waits until `applied` holds of this node's applied state, or `deadline` passes (read-your-writes for callers
    /// whose write may have committed on another node first). Looks again after 0.2 ms, doubling up to
    /// [`APPLIED_POLL_MS_MAX`].
    pub async fn wait_until(&self, deadline: tokio::time::Instant, applied: impl Fn(&StateReader) -> bool) {
        let mut pause = Duration::from_micros(200);
        while tokio::time::Instant::now() < deadline {
            if self.live.current().is_some_and(|stores| applied(&stores.reader)) {
                return;
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(APPLIED_POLL_MS_MAX));
        }
    }

    pub(crate) fn publish(&self, stores: Stores) {
        let Stores { log, mut state_machine, reader } = stores;
        state_machine.publish_to(self.stream.clone());
        self.live.publish(StoreHandles { log, state_machine, reader });
    }

    /// Lets go of the stores (the database closes once the last clone elsewhere is dropped).
    pub(crate) fn retract(&self) {
        self.live.retract();
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct StorageActor;

#[derive(Clone)]
pub struct StorageArgs {
    pub dir: PathBuf,
    /// Where the stores are published.
    pub handle: StorageHandle,
    /// The simulator's disk, instead of the file system (snapshot files still go under `dir`).
    pub disk: Option<storage::SimDisk>,
}

pub enum StorageMsg {
    Status(RpcReplyPort<StorageStatus>),
    /// Status for `pando actors`, and fault injection (the actor panics; its supervisor restarts it and everything
    /// started after it).
    Control(Control),
}

impl ractor::Message for StorageMsg {}

impl From<Control> for StorageMsg {
    fn from(control: Control) -> StorageMsg {
        StorageMsg::Control(control)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StorageStatus {
    pub dir: PathBuf,
    pub database_bytes: u64,
    /// The Raft log's segment files (`wal/`).
    pub log_bytes: u64,
    pub log_segments: u64,
}

impl StorageStatus {
    /// What the data directory holds now (zero for what cannot be read: a simulated node keeps none of it there).
    fn of(dir: &std::path::Path) -> StorageStatus {
        let database_bytes = std::fs::metadata(dir.join("pando.redb")).map(|meta| meta.len()).unwrap_or(0);
        let (mut log_bytes, mut log_segments) = (0, 0);
        for entry in std::fs::read_dir(dir.join("wal")).into_iter().flatten().flatten() {
            log_bytes += entry.metadata().map(|meta| meta.len()).unwrap_or(0);
            log_segments += 1;
        }
        StorageStatus { dir: dir.to_owned(), database_bytes, log_bytes, log_segments }
    }
}

impl Actor for StorageActor {
    type Msg = StorageMsg;
    type State = StorageArgs;
    type Arguments = StorageArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<StorageMsg>,
        args: StorageArgs,
    ) -> Result<StorageArgs, ActorProcessingErr> {
        // A storage actor that panicked skipped `post_stop`: let go of its database before opening the file again.
        args.handle.retract();
        // redb refuses to open a file its process still has open, and the previous instance's last holders (the
        // Raft core's state machine worker) let go only once they next run: wait for them, within a bound. Found by
        // the simulator (seed 9: a storage panic took the whole node down in 2 ms of failed restarts).
        let waited = tokio::time::Instant::now();
        let stores = loop {
            let dir = args.dir.clone();
            let opened = match args.disk.clone() {
                Some(disk) => storage::open_simulated(&dir, disk),
                None => tokio::task::spawn_blocking(move || storage::open(&dir)).await?,
            };
            match opened {
                Ok(stores) => break stores,
                Err(error)
                    if storage::is_already_open(&error)
                        && waited.elapsed() < Duration::from_millis(STORAGE_REOPEN_WAIT_MS) =>
                {
                    tracing::debug!(%error, "the previous database is not closed yet, retrying");
                    tokio::time::sleep(Duration::from_millis(STORAGE_REOPEN_RETRY_MS)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        args.handle.publish(stores);
        tracing::info!(dir = %args.dir.display(), "storage open");
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StorageMsg>,
        state: &mut StorageArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.handle.retract();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<StorageMsg>,
        message: StorageMsg,
        state: &mut StorageArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StorageMsg::Control(Control::InjectPanic) => panic!("fault injection: storage actor panics on request"),
            StorageMsg::Control(Control::Status(reply, _)) => {
                let status = StorageStatus::of(&state.dir);
                let _ = reply.send(ActorDetail::line(format!(
                    "database {} bytes, log {} bytes in {} segments",
                    status.database_bytes, status.log_bytes, status.log_segments
                )));
            }
            StorageMsg::Status(reply) => {
                let _ = reply.send(StorageStatus::of(&state.dir));
            }
        }
        Ok(())
    }
}
