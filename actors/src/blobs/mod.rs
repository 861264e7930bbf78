//! The BlobActor: owns the node's blob store ([`BlobStore`]: iroh-blobs' file store, or its in-memory twin in the
//! simulator), serves iroh-blobs' protocol to members, and runs the repair worker that keeps every blob at its replica
//! count.
//!
//! **What lives where.** Bytes live in the store under `<data-dir>/blobs` (files above 16 KiB, small ones inline in
//! the store's own database). What the cluster agrees on (size, desired copies, holders, assignments, references)
//! lives in the replicated state ([`pando_protocol::blob`]).
//!
//! **Keeping and dropping copies.** A node keeps a copy while the store keeps its name (iroh-blobs: a named tag
//! `pando/<hash>`). The name is set durably (by this actor, one message at a time) before the node proposes that it
//! holds the blob, and the actor's sweep drops the names of blobs whose record is gone or no longer places the node,
//! sparing blobs held ahead of their record for [`HOLD_GRACE`]; the store's own garbage collector then deletes data
//! nothing keeps. Data in flight (an upload, a fetch) is pinned until its name is kept, so no sweep or collection can
//! take a copy the cluster counts.
//!
//! **Repair.** Every node fetches the blobs it is assigned (from holders, verified chunk by chunk against the hash;
//! a corrupt or truncated transfer fails and the next holder is tried, resuming from the verified part) and reports
//! them held. The leader assigns copies: whenever fewer live nodes hold or are fetching a blob than it should have, it
//! assigns the missing copies to live members chosen by rendezvous hashing; holders that left the membership are
//! released.

mod repair;
pub mod sim_store;
pub mod store;
mod transfer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iroh::Endpoint;
use iroh_blobs::store::GcConfig;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::Options;
use pando_protocol::blob::{BlobHash, LocalBlob};
use pando_protocol::state_machine::StorageFault;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::live::{Live, Unavailable};
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, Control};

pub use repair::PEER_LIVE_WINDOW_MS;
pub use store::{BlobStore, fetch_deadline};
pub use transfer::{TransferError, serve_members};

/// Prefix of the store tags that keep a node's copies.
pub const TAG_PREFIX: &str = "pando/";

/// How a node keeps blobs.
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// The store's directory.
    pub dir: PathBuf,
    /// Copies a blob gets when its add does not say.
    pub default_replicas: u8,
    /// How long an unreferenced blob survives.
    pub gc_grace: Duration,
    /// How often the store deletes untagged data.
    pub store_gc_interval: Duration,
    /// How often the repair worker runs when nothing wakes it.
    pub repair_interval: Duration,
    /// KV values larger than this are stored as blobs.
    pub kv_inline_max_bytes: usize,
    /// Largest blob a client may add through this node.
    pub max_blob_bytes: u64,
}

impl BlobConfig {
    pub fn new(dir: PathBuf) -> BlobConfig {
        BlobConfig {
            dir,
            default_replicas: 3,
            gc_grace: Duration::from_secs(3600),
            store_gc_interval: Duration::from_secs(60),
            repair_interval: Duration::from_secs(2),
            kv_inline_max_bytes: 256 * 1024,
            max_blob_bytes: 64 << 30,
        }
    }
}

/// Counters of this node's blob traffic.
#[derive(Debug, Default)]
pub struct BlobCounters {
    pub fetches_ok: AtomicU64,
    /// Fetches from one holder that failed (unreachable, cut short, or corrupt).
    pub fetch_failures: AtomicU64,
    /// Fetches refused because the data did not match its hash.
    pub fetch_corrupt: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub tags_dropped: AtomicU64,
}

/// A node's blob store and what works on it, shared by the RPC handlers and the repair worker.
#[derive(Clone)]
pub struct BlobNode {
    pub node_id: u64,
    pub store: Arc<dyn BlobStore>,
    pub config: Arc<BlobConfig>,
    pub counters: Arc<BlobCounters>,
    storage: StorageHandle,
    raft: RaftHandle,
    proposer: Proposer,
    actor: ActorRef<BlobMsg>,
    /// Client uploads and downloads streaming through this node at once.
    pub transfers: Arc<tokio::sync::Semaphore>,
}

/// Client transfers one node streams at once; more are answered `BUSY`.
pub const BLOB_TRANSFERS_MAX: usize = 16;

pub(crate) fn iroh_hash(hash: &BlobHash) -> iroh_blobs::Hash {
    iroh_blobs::Hash::from_bytes(hash.0)
}

pub(crate) fn tag_of(hash: &BlobHash) -> String {
    format!("{TAG_PREFIX}{hash}")
}

impl BlobNode {
    /// What this node's store has of `hash`.
    pub async fn local(&self, hash: &BlobHash) -> Result<LocalBlob, TransferError> {
        self.store.status(*hash).await
    }

    /// Keeps this node's copy of `hash` (a named tag) before the node proposes that it holds it: the sweep leaves a
    /// held blob alone for [`HOLD_GRACE`] even while the node's applied state does not place it yet (the proposal may
    /// still be on its way, or applied on the leader only), and for good once it does. Runs in the actor, so it
    /// never interleaves with a sweep.
    pub async fn hold(&self, hash: BlobHash) -> Result<(), TransferError> {
        match self.actor.call(|reply| BlobMsg::Hold(hash, reply), Some(Duration::from_secs(30))).await {
            Ok(ractor::rpc::CallResult::Success(held)) => held,
            _ => Err(TransferError::Unavailable("the blob actor did not answer".into())),
        }
    }

    pub fn transfer_counters(&self) -> pando_protocol::blob::TransferCounters {
        let counters = &self.counters;
        pando_protocol::blob::TransferCounters {
            fetches_ok: counters.fetches_ok.load(Ordering::Relaxed),
            fetch_failures: counters.fetch_failures.load(Ordering::Relaxed),
            fetch_corrupt: counters.fetch_corrupt.load(Ordering::Relaxed),
            bytes_fetched: counters.bytes_fetched.load(Ordering::Relaxed),
        }
    }

    /// Who the members are and whether this node leads.
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Proposes bookkeeping from this node, wherever the leader is.
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }
}

/// The blob store as the other subsystems reach it: valid across the BlobActor's restarts.
#[derive(Clone)]
pub struct BlobsHandle {
    live: Live<BlobNode>,
}

impl Default for BlobsHandle {
    fn default() -> BlobsHandle {
        BlobsHandle { live: Live::new("blob store") }
    }
}

impl BlobsHandle {
    /// The running blob store, or [`Unavailable`] while it restarts (or on a node that runs none).
    pub fn node(&self) -> Result<BlobNode, Unavailable> {
        self.live.get()
    }

    /// KV values larger than this go to the blob store, while it runs.
    pub fn kv_inline_max_bytes(&self) -> Option<usize> {
        self.live.current().map(|node| node.config.kv_inline_max_bytes)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BlobActor;

#[derive(Clone)]
pub struct BlobArgs {
    pub node_id: u64,
    pub config: BlobConfig,
    /// The applied state: blob records, and the commit stream that wakes repairs.
    pub storage: StorageHandle,
    /// Membership, leadership and peer liveness.
    pub raft: RaftHandle,
    /// Bookkeeping proposals from any member.
    pub proposer: Proposer,
    /// Where the running store is published.
    pub handle: BlobsHandle,
    /// What the store is, and how members fetch from each other.
    pub backend: BlobBackend,
}

/// The store under a BlobActor.
#[derive(Clone)]
pub enum BlobBackend {
    /// iroh-blobs' file store in [`BlobConfig::dir`]; members fetch over iroh-blobs' protocol on this endpoint.
    Iroh(Endpoint),
    /// The simulator's in-memory twin on a disk that outlives crashes; members fetch over the simulated network.
    Simulated { disk: sim_store::SimBlobDisk, net: crate::raft::sim_network::SimNet },
}

pub enum BlobMsg {
    /// Set the tag of a blob this node is about to record as held (see [`BlobNode::hold`]).
    Hold(BlobHash, RpcReplyPort<Result<(), TransferError>>),
    /// Delete the tags of blobs this node should no longer keep.
    Sweep,
    Status(RpcReplyPort<BlobStatusReport>),
    /// Status for `pando actors`, and fault injection.
    Control(Control),
}

impl ractor::Message for BlobMsg {}

impl From<Control> for BlobMsg {
    fn from(control: Control) -> BlobMsg {
        BlobMsg::Control(control)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobStatusReport {
    pub dir: PathBuf,
    pub tags: u64,
    pub fetches_ok: u64,
    pub fetch_failures: u64,
    pub fetch_corrupt: u64,
    pub bytes_fetched: u64,
    pub tags_dropped: u64,
}

pub struct BlobState {
    node: BlobNode,
    handle: BlobsHandle,
    stop: CancellationToken,
    /// Blobs held ahead of the record that places them here, and until when the sweep spares them.
    held: BTreeMap<BlobHash, tokio::time::Instant>,
    /// Whether `post_stop` shut the store down already.
    closed: bool,
}

impl Drop for BlobState {
    /// A panicking BlobActor skips `post_stop`: its repair worker, its published node and its store must go all the
    /// same, or the store's database stays locked and the restarted actor can never open it again. (Found by
    /// injecting a panic into `node/blobs` of a three-node cluster: every restart failed with "Database already open"
    /// until the root supervisor gave up and the node exited.)
    fn drop(&mut self) {
        self.stop.cancel();
        let actor = self.node.actor.get_id();
        self.handle.live.retract_if(|node| node.actor.get_id() == actor);
        if !self.closed {
            let store = self.node.store.clone();
            tokio::spawn(async move { store.close().await });
        }
    }
}

/// How long a starting blob actor keeps trying to open the store (its failed predecessor's store may still be
/// shutting down).
pub const BLOB_STORE_REOPEN_WAIT_MS: u64 = 5_000;
/// Pause between those attempts.
pub const BLOB_STORE_REOPEN_RETRY_MS: u64 = 20;

/// How long the sweep spares a blob held ahead of its record: far longer than any proposal takes to apply.
pub const HOLD_GRACE: Duration = Duration::from_secs(600);
/// Most blobs held ahead of their record at once (uploads and fetches in flight are far fewer).
const HELD_AHEAD_MAX: usize = 100_000;

/// Opens iroh-blobs' file store in the configured directory, waiting out a failed predecessor's store that is still
/// closing.
async fn open_fs_store(config: &BlobConfig) -> Result<FsStore, ActorProcessingErr> {
    std::fs::create_dir_all(&config.dir)?;
    let waited = tokio::time::Instant::now();
    loop {
        let mut options = Options::new(&config.dir);
        options.gc = Some(GcConfig { interval: config.store_gc_interval, add_protected: None });
        match FsStore::load_with_opts(config.dir.join("blobs.db"), options).await {
            Ok(store) => return Ok(store),
            Err(error)
                if format!("{error:#}").contains("already open")
                    && waited.elapsed() < Duration::from_millis(BLOB_STORE_REOPEN_WAIT_MS) =>
            {
                tracing::debug!(%error, "the previous blob store is not closed yet, retrying");
                tokio::time::sleep(Duration::from_millis(BLOB_STORE_REOPEN_RETRY_MS)).await;
            }
            Err(error) => {
                return Err(format!("cannot open the blob store in {}: {error}", config.dir.display()).into());
            }
        }
    }
}

/// Sweeps run every this many repair rounds.
const SWEEP_EVERY_ROUNDS: u64 = 5;

impl Actor for BlobActor {
    type Msg = BlobMsg;
    type State = BlobState;
    type Arguments = BlobArgs;

    async fn pre_start(&self, myself: ActorRef<BlobMsg>, args: BlobArgs) -> Result<BlobState, ActorProcessingErr> {
        let store: Arc<dyn BlobStore> = match args.backend {
            BlobBackend::Iroh(endpoint) => {
                Arc::new(store::IrohStore::new(open_fs_store(&args.config).await?, endpoint))
            }
            BlobBackend::Simulated { disk, net } => {
                Arc::new(sim_store::SimBlobs::open(disk, net, args.node_id, args.config.store_gc_interval))
            }
        };
        let node = BlobNode {
            node_id: args.node_id,
            store,
            config: Arc::new(args.config),
            counters: Arc::default(),
            storage: args.storage,
            raft: args.raft,
            proposer: args.proposer,
            actor: myself.clone(),
            transfers: Arc::new(tokio::sync::Semaphore::new(BLOB_TRANSFERS_MAX)),
        };
        // What the store keeps may be held ahead of records this node has not applied yet (kept, then claimed, and
        // the actor restarted before its state caught up): every kept blob gets the grace a fresh hold gets, or the
        // first sweep would drop a copy the cluster may already count. Placed ones leave the map at that sweep.
        let spared_until = tokio::time::Instant::now() + HOLD_GRACE;
        // (Above HELD_AHEAD_MAX kept blobs, new holds wait for that sweep.)
        let kept = match node.store.kept().await {
            Ok(kept) => kept,
            Err(error) => {
                node.store.close().await;
                return Err(error.into());
            }
        };
        let held: BTreeMap<BlobHash, tokio::time::Instant> =
            kept.into_iter().map(|hash| (hash, spared_until)).collect();
        args.handle.live.publish(node.clone());
        let stop = CancellationToken::new();
        tokio::spawn(repair::run(node.clone(), myself, stop.clone()));
        tracing::info!(dir = %node.config.dir.display(), "blob store open");
        Ok(BlobState { node, handle: args.handle, stop, held, closed: false })
    }

    async fn post_stop(&self, _myself: ActorRef<BlobMsg>, state: &mut BlobState) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        state.handle.live.retract();
        state.closed = true;
        state.node.store.close().await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<BlobMsg>,
        message: BlobMsg,
        state: &mut BlobState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BlobMsg::Hold(hash, reply) => {
                let result = if state.held.len() >= HELD_AHEAD_MAX && !state.held.contains_key(&hash) {
                    Err(TransferError::Unavailable("too many blobs are being recorded on this node".into()))
                } else {
                    state.held.insert(hash, tokio::time::Instant::now() + HOLD_GRACE);
                    tracing::debug!(node = state.node.node_id, %hash, "holding a blob ahead of its record");
                    // Durable before the node claims the copy: a crash right after must not lose it.
                    state.node.store.keep(hash).await
                };
                let _ = reply.send(result);
            }
            BlobMsg::Sweep => {
                if let Err(error) = sweep(&state.node, &mut state.held).await {
                    tracing::warn!(%error, "blob sweep failed");
                }
            }
            BlobMsg::Control(Control::InjectPanic) => panic!("fault injection: blob actor panics on request"),
            BlobMsg::Control(Control::Status(reply, _)) => {
                let counters = &state.node.counters;
                let _ = reply.send(ActorDetail::line(format!(
                    "{} fetched ({} bytes), {} fetch failures, {} held ahead of their record",
                    counters.fetches_ok.load(Ordering::Relaxed),
                    counters.bytes_fetched.load(Ordering::Relaxed),
                    counters.fetch_failures.load(Ordering::Relaxed),
                    state.held.len()
                )));
            }
            BlobMsg::Status(reply) => {
                let counters = &state.node.counters;
                let tags = state.node.store.kept().await.map_or(0, |kept| kept.len() as u64);
                let _ = reply.send(BlobStatusReport {
                    dir: state.node.config.dir.clone(),
                    tags,
                    fetches_ok: counters.fetches_ok.load(Ordering::Relaxed),
                    fetch_failures: counters.fetch_failures.load(Ordering::Relaxed),
                    fetch_corrupt: counters.fetch_corrupt.load(Ordering::Relaxed),
                    bytes_fetched: counters.bytes_fetched.load(Ordering::Relaxed),
                    tags_dropped: counters.tags_dropped.load(Ordering::Relaxed),
                });
            }
        }
        Ok(())
    }
}

impl BlobNode {
    /// Reads the applied state off the async threads (inline on a current-thread runtime, as in the simulator).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&crate::storage::StateReader) -> Result<T, StorageFault> + Send + 'static,
    ) -> Result<T, TransferError> {
        let reader =
            self.storage.reader().map_err(|unavailable| TransferError::Unavailable(unavailable.to_string()))?;
        crate::storage::offload(move || work(&reader))
            .await
            .map_err(|error| TransferError::Unavailable(error.to_string()))?
            .map_err(|fault| TransferError::Unavailable(fault.to_string()))
    }

    /// Whether this node leads the cluster.
    pub(crate) fn leads(&self) -> bool {
        self.raft.leads()
    }

    /// Whether `node` counts as live for placement: this node, or a member it heard from within
    /// [`PEER_LIVE_WINDOW_MS`] (meaningful on the leader, which exchanges Raft RPCs with every member).
    pub(crate) fn is_live(&self, node: u64) -> bool {
        node == self.node_id || self.raft.peer_heard_within(node, Duration::from_millis(PEER_LIVE_WINDOW_MS))
    }
}

/// Deletes the tag of every blob whose record is gone or no longer places this node, sparing blobs held ahead of
/// their record until their grace ends.
async fn sweep(
    node: &BlobNode,
    held_ahead: &mut BTreeMap<BlobHash, tokio::time::Instant>,
) -> Result<(), TransferError> {
    let held: BTreeSet<BlobHash> = node.store.kept().await?.into_iter().collect();
    let node_id = node.node_id;
    let (placed, unplaced) = node
        .read(move |reader| {
            let mut placed = Vec::new();
            let mut unplaced = Vec::new();
            for hash in held {
                if reader.blob(&hash)?.is_some_and(|record| record.places(node_id)) {
                    placed.push(hash);
                } else {
                    unplaced.push(hash);
                }
            }
            tracing::trace!(node = node_id, ?placed, ?unplaced, "sweep");
            Ok((placed, unplaced))
        })
        .await?;
    let now = tokio::time::Instant::now();
    tracing::trace!(node = node.node_id, held_ahead = ?held_ahead.keys().collect::<Vec<_>>(), "sweep");
    for hash in &placed {
        held_ahead.remove(hash);
    }
    held_ahead.retain(|_, until| *until > now);
    let mut dropped: Vec<BlobHash> = unplaced.into_iter().filter(|hash| !held_ahead.contains_key(hash)).collect();
    if crate::sim::planted_bug(crate::sim::PlantedBug::BlobSweepDropsPlaced) {
        dropped.extend(placed);
    }
    for hash in dropped {
        node.store.unkeep(hash).await?;
        node.counters.tags_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(node = node.node_id, %hash, "dropped this node's copy of a blob it no longer keeps");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
