//! The blob store's in-memory twin, for the simulator: the same [`BlobStore`] trait the node's BlobActor, repair
//! worker, RPC handlers and services use, over a [`SimBlobDisk`] that outlives the node's crashes (as its simulated
//! disk does), with members' fetches carried by the simulated network.
//!
//! **What it models.** Data is whole or absent (a fetch moves a blob in one piece; iroh's resumption from verified
//! chunks is not modelled). Kept names are durable at once (the real store syncs its database before `keep`
//! returns); a crash loses every blob that is not kept (an upload or a fetch in flight, data only pinned), and the
//! pins die with the node's tasks. The store collects data that is neither kept nor pinned every
//! [`BlobConfig::store_gc_interval`](super::BlobConfig), while the node runs. A fetch costs a seeded network delay each
//! way plus the size at [`SIM_FETCH_BYTES_PER_MS`], fails after [`BLOB_CONNECT_TIMEOUT_MS`] when the link is cut or
//! the holder is down, and on a lossy network now and then delivers a flipped byte, which the fetcher's check
//! against the hash refuses ([`FetchFailure::Corrupt`]), as iroh's verified streaming does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use pando_protocol::blob::{BlobHash, LocalBlob};
use pando_protocol::cluster::MemberNode;
use tokio_util::sync::CancellationToken;

use super::TransferError;
use super::store::{BLOB_CONNECT_TIMEOUT_MS, BlobPin, BlobReader, BlobStore, DataStream, FetchFailure, fetch_deadline};
use crate::raft::sim_network::SimNet;

/// How fast a simulated fetch moves data once it flows (64 MB/s).
pub const SIM_FETCH_BYTES_PER_MS: u64 = 64 * 1024;

/// What a simulated node's blob store holds: survives the node's crashes, as its disk does.
#[derive(Clone, Default)]
pub struct SimBlobDisk {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Default)]
struct DiskState {
    data: BTreeMap<BlobHash, Bytes>,
    kept: BTreeSet<BlobHash>,
    /// Live pins, by id: a pin's drop removes its own (a no-op once a crash cleared them).
    pins: BTreeMap<u64, BlobHash>,
    next_pin: u64,
    collected: u64,
}

impl DiskState {
    fn pinned(&self) -> BTreeSet<BlobHash> {
        self.pins.values().copied().collect()
    }
}

impl SimBlobDisk {
    pub fn new() -> SimBlobDisk {
        SimBlobDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Power fails: what was only pinned (in flight, never kept) is gone, and so are the pins.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.pins.clear();
        let DiskState { data, kept, .. } = &mut *state;
        data.retain(|hash, _| kept.contains(hash));
    }

    /// The data of a complete copy of `hash`, if this store has one (for checkers).
    pub fn copy_of(&self, hash: &BlobHash) -> Option<Bytes> {
        self.lock().data.get(hash).cloned()
    }

    /// The blobs this store keeps (for checkers).
    pub fn kept(&self) -> BTreeSet<BlobHash> {
        self.lock().kept.clone()
    }

    /// Blobs collected so far.
    pub fn collected(&self) -> u64 {
        self.lock().collected
    }

    fn pin(&self, hash: BlobHash) -> BlobPin {
        let mut state = self.lock();
        let id = state.next_pin;
        state.next_pin += 1;
        state.pins.insert(id, hash);
        BlobPin::new(PinGuard { disk: self.clone(), id })
    }

    fn insert(&self, hash: BlobHash, data: Bytes) {
        self.lock().data.insert(hash, data);
    }

    /// Deletes the data no name keeps and no pin holds (the store's garbage collection).
    fn collect(&self) {
        let mut state = self.lock();
        let pinned = state.pinned();
        let DiskState { data, kept, collected, .. } = &mut *state;
        let before = data.len();
        data.retain(|hash, _| kept.contains(hash) || pinned.contains(hash));
        *collected += (before - data.len()) as u64;
    }
}

struct PinGuard {
    disk: SimBlobDisk,
    id: u64,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.disk.lock().pins.remove(&self.id);
    }
}

/// One boot of a simulated node's blob store: the disk, the network members fetch over, and the store's collector
/// (stopped when the store closes or is dropped).
pub struct SimBlobs {
    disk: SimBlobDisk,
    net: SimNet,
    node_id: u64,
    /// Stops the collector.
    stop: CancellationToken,
}

impl Drop for SimBlobs {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SimBlobs {
    /// Opens node `node_id`'s store on `disk`, collecting every `gc_interval`.
    pub fn open(disk: SimBlobDisk, net: SimNet, node_id: u64, gc_interval: Duration) -> SimBlobs {
        let stop = CancellationToken::new();
        let collector = disk.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stopped.cancelled() => return,
                    () = tokio::time::sleep(gc_interval) => collector.collect(),
                }
            }
        });
        SimBlobs { disk, net, node_id, stop }
    }

    fn missing(hash: &BlobHash) -> TransferError {
        TransferError::NotFound(format!("blob {hash} is not complete on this node"))
    }
}

impl BlobStore for SimBlobs {
    fn status(&self, hash: BlobHash) -> BoxFuture<'_, Result<LocalBlob, TransferError>> {
        let status = match self.disk.copy_of(&hash) {
            Some(data) => LocalBlob::Complete { size: data.len() as u64 },
            None => LocalBlob::Absent,
        };
        Box::pin(async move { Ok(status) })
    }

    fn pin(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobPin, TransferError>> {
        Box::pin(async move { Ok(self.disk.pin(hash)) })
    }

    fn add(&self, data: Bytes) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>> {
        Box::pin(async move {
            let hash = BlobHash(*blake3::hash(&data).as_bytes());
            let pin = self.disk.pin(hash);
            self.disk.insert(hash, data);
            Ok((hash, pin))
        })
    }

    fn add_stream(&self, mut data: DataStream) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>> {
        Box::pin(async move {
            let mut whole = Vec::new();
            while let Some(piece) = data.next().await {
                whole.extend_from_slice(&piece.map_err(TransferError::store)?);
            }
            self.add(Bytes::from(whole)).await
        })
    }

    fn get(&self, hash: BlobHash) -> BoxFuture<'_, Result<Bytes, TransferError>> {
        Box::pin(async move { self.disk.copy_of(&hash).ok_or_else(|| SimBlobs::missing(&hash)) })
    }

    fn reader(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobReader, TransferError>> {
        Box::pin(async move {
            let data = self.disk.copy_of(&hash).ok_or_else(|| SimBlobs::missing(&hash))?;
            Ok(Box::new(std::io::Cursor::new(data)) as BlobReader)
        })
    }

    fn keep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            self.disk.lock().kept.insert(hash);
            Ok(())
        })
    }

    fn is_kept(&self, hash: BlobHash) -> BoxFuture<'_, Result<bool, TransferError>> {
        Box::pin(async move { Ok(self.disk.lock().kept.contains(&hash)) })
    }

    fn unkeep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            self.disk.lock().kept.remove(&hash);
            Ok(())
        })
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<BlobHash>, TransferError>> {
        Box::pin(async move { Ok(self.disk.kept().into_iter().collect()) })
    }

    fn fetch<'a>(
        &'a self,
        holder: u64,
        _member: &'a MemberNode,
        hash: BlobHash,
        size: u64,
    ) -> BoxFuture<'a, Result<u64, FetchFailure>> {
        Box::pin(async move {
            let me = self.node_id;
            let Some(delay) = self.net.stream_delay(me, holder, holder, &format!("blob fetch {}", short(&hash))) else {
                tokio::time::sleep(Duration::from_millis(BLOB_CONNECT_TIMEOUT_MS)).await;
                return Err(FetchFailure::Failed(format!("connecting took over {BLOB_CONNECT_TIMEOUT_MS} ms")));
            };
            tokio::time::sleep(delay).await;
            let source = self.net.blobs_of(holder).and_then(|blobs| blobs.node().ok());
            let Some(source) = source else {
                return Err(FetchFailure::Failed(format!("node {holder} runs no blob store")));
            };
            let data = source.store.get(hash).await.map_err(|error| FetchFailure::Failed(error.to_string()))?;
            let Some(delay) = self.net.stream_delay(holder, me, me, &format!("blob data {}", short(&hash))) else {
                return Err(FetchFailure::Failed("the transfer broke off".into()));
            };
            let took = delay + Duration::from_millis(data.len() as u64 / SIM_FETCH_BYTES_PER_MS);
            let deadline = fetch_deadline(size);
            if took > deadline {
                tokio::time::sleep(deadline).await;
                return Err(FetchFailure::Failed(format!("the transfer took over {deadline:?}")));
            }
            tokio::time::sleep(took).await;
            let data = match self.net.corrupts_blob_transfer(holder, me) {
                Some(at) if !data.is_empty() => {
                    let mut rotten = data.to_vec();
                    let index = (at % rotten.len() as u64) as usize;
                    rotten[index] ^= 0x5a;
                    Bytes::from(rotten)
                }
                _ => data,
            };
            if blake3::hash(&data).as_bytes() != hash.as_bytes() {
                return Err(FetchFailure::Corrupt(format!("the data from node {holder} did not match the hash")));
            }
            let read = data.len() as u64;
            self.disk.insert(hash, data);
            Ok(read)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // The collector stops; the disk stays.
        self.stop.cancel();
        Box::pin(async {})
    }

    fn iroh(&self) -> Option<iroh_blobs::api::Store> {
        None
    }
}

/// A hash's first characters, for trace lines.
fn short(hash: &BlobHash) -> String {
    hash.to_string().chars().take(8).collect()
}
