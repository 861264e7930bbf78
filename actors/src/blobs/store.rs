//! The blob store as a node uses it: one trait ([`BlobStore`]) over iroh-blobs' file store and its transfer protocol
//! ([`IrohStore`], production) and over an in-memory twin on the simulated network
//! ([`SimBlobs`](super::sim_store::SimBlobs), the simulator), so replication, repair and garbage collection run the
//! same node code in both.
//!
//! **What the node relies on**, and both implementations keep:
//! - a blob's data is only ever whole and verified against its hash when [`BlobStore::status`] says `Complete`;
//! - data a [`BlobPin`] names is not collected while the pin lives (data in flight: an upload, a fetch);
//! - data [`BlobStore::keep`] names is not collected until [`BlobStore::unkeep`], and the name is durable when `keep`
//!   returns (the node claims a copy only after that);
//! - a fetch verifies what it receives against the hash, and a mismatch is [`FetchFailure::Corrupt`], never stored.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use iroh::Endpoint;
use iroh_blobs::store::fs::FsStore;
use pando_protocol::alpn;
use pando_protocol::blob::{BlobHash, LocalBlob};
use pando_protocol::cluster::MemberNode;

use super::{TAG_PREFIX, TransferError, iroh_hash, tag_of};
use crate::raft::transport::endpoint_addr;

/// How long dialling a holder may take.
pub const BLOB_CONNECT_TIMEOUT_MS: u64 = 3_000;

/// Keeps a blob's data (whatever of it has arrived) from collection until dropped.
pub struct BlobPin(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl BlobPin {
    pub(crate) fn new(guard: impl std::any::Any + Send + Sync) -> BlobPin {
        BlobPin(Box::new(guard))
    }
}

/// Why fetching from one holder failed.
#[derive(Debug)]
pub enum FetchFailure {
    /// The data did not match its hash: nothing of it was kept.
    Corrupt(String),
    /// Anything else: the holder was unreachable, slow, went away or had no copy.
    Failed(String),
}

/// Data to add, as it arrives.
pub type DataStream = std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

/// A readable blob.
pub type BlobReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A node's blob store. Errors of the store itself are [`TransferError::Store`].
pub trait BlobStore: Send + Sync + 'static {
    /// What this store has of `hash`.
    fn status(&self, hash: BlobHash) -> BoxFuture<'_, Result<LocalBlob, TransferError>>;
    /// Pins `hash` (present or not yet): what arrives of it stays until the pin drops.
    fn pin(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobPin, TransferError>>;
    /// Stores `data`, pinned.
    fn add(&self, data: Bytes) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>>;
    /// Stores what `data` yields, pinned; an error item abandons the import with that error.
    fn add_stream(&self, data: DataStream) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>>;
    /// The whole of a complete blob.
    fn get(&self, hash: BlobHash) -> BoxFuture<'_, Result<Bytes, TransferError>>;
    /// A reader of a complete blob, from its start.
    fn reader(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobReader, TransferError>>;
    /// Keeps `hash` for good (until [`BlobStore::unkeep`]); durable when this returns.
    fn keep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>>;
    /// Whether `hash` is kept.
    fn is_kept(&self, hash: BlobHash) -> BoxFuture<'_, Result<bool, TransferError>>;
    /// Stops keeping `hash`: unpinned, its data goes at the store's next collection.
    fn unkeep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>>;
    /// Every kept blob.
    fn kept(&self) -> BoxFuture<'_, Result<Vec<BlobHash>, TransferError>>;
    /// Fetches `hash` (of `size` bytes) from member `holder` into this store, verified against the hash as it
    /// arrives, within [`fetch_deadline`]; answers the bytes read. The caller pins the blob first.
    fn fetch<'a>(
        &'a self,
        holder: u64,
        member: &'a MemberNode,
        hash: BlobHash,
        size: u64,
    ) -> BoxFuture<'a, Result<u64, FetchFailure>>;
    /// Closes the store (a restarted actor opens it again).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// The iroh-blobs store, to serve members over iroh-blobs' protocol (`None` where members fetch otherwise).
    fn iroh(&self) -> Option<iroh_blobs::api::Store>;
}

/// Slowest transfer rate a fetch may have before it is abandoned for the next holder.
pub const FETCH_RATE_BYTES_PER_SEC_MIN: u64 = 4 * 1024 * 1024;

/// How long fetching `size` bytes from one holder may take: a base for small blobs, plus the size at the slowest
/// acceptable rate.
pub fn fetch_deadline(size: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(size / FETCH_RATE_BYTES_PER_SEC_MIN)
}

/// Production: iroh-blobs' file store under the data directory; members fetch over iroh-blobs' protocol.
pub struct IrohStore {
    store: FsStore,
    endpoint: Endpoint,
}

impl IrohStore {
    pub fn new(store: FsStore, endpoint: Endpoint) -> IrohStore {
        IrohStore { store, endpoint }
    }
}

fn store_error(error: impl std::fmt::Display) -> TransferError {
    TransferError::store(error)
}

impl BlobStore for IrohStore {
    fn status(&self, hash: BlobHash) -> BoxFuture<'_, Result<LocalBlob, TransferError>> {
        Box::pin(async move {
            use iroh_blobs::api::blobs::BlobStatus;
            Ok(match self.store.blobs().status(iroh_hash(&hash)).await.map_err(store_error)? {
                BlobStatus::Complete { size } => LocalBlob::Complete { size },
                BlobStatus::Partial { .. } => LocalBlob::Partial,
                BlobStatus::NotFound => LocalBlob::Absent,
            })
        })
    }

    fn pin(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobPin, TransferError>> {
        Box::pin(async move {
            let tag = self.store.tags().temp_tag(iroh_hash(&hash)).await.map_err(store_error)?;
            Ok(BlobPin::new(tag))
        })
    }

    fn add(&self, data: Bytes) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>> {
        Box::pin(async move {
            let tag = self.store.blobs().add_bytes(data).temp_tag().await.map_err(store_error)?;
            Ok((BlobHash(*tag.hash().as_bytes()), BlobPin::new(tag)))
        })
    }

    fn add_stream(&self, data: DataStream) -> BoxFuture<'_, Result<(BlobHash, BlobPin), TransferError>> {
        Box::pin(async move {
            let tag = self.store.blobs().add_stream(data).await.temp_tag().await.map_err(store_error)?;
            Ok((BlobHash(*tag.hash().as_bytes()), BlobPin::new(tag)))
        })
    }

    fn get(&self, hash: BlobHash) -> BoxFuture<'_, Result<Bytes, TransferError>> {
        Box::pin(async move { self.store.blobs().get_bytes(iroh_hash(&hash)).await.map_err(store_error) })
    }

    fn reader(&self, hash: BlobHash) -> BoxFuture<'_, Result<BlobReader, TransferError>> {
        Box::pin(async move { Ok(Box::new(self.store.blobs().reader(iroh_hash(&hash))) as BlobReader) })
    }

    fn keep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move {
            self.store.tags().set(tag_of(&hash), iroh_hash(&hash)).await.map_err(store_error)?;
            // Durable before the node claims the copy: a crash right after must not lose the tag.
            self.store.sync_db().await.map_err(store_error)
        })
    }

    fn is_kept(&self, hash: BlobHash) -> BoxFuture<'_, Result<bool, TransferError>> {
        Box::pin(async move { Ok(self.store.tags().get(tag_of(&hash)).await.map_err(store_error)?.is_some()) })
    }

    fn unkeep(&self, hash: BlobHash) -> BoxFuture<'_, Result<(), TransferError>> {
        Box::pin(async move { self.store.tags().delete(tag_of(&hash)).await.map(|_| ()).map_err(store_error) })
    }

    fn kept(&self) -> BoxFuture<'_, Result<Vec<BlobHash>, TransferError>> {
        Box::pin(async move {
            use futures::StreamExt;
            let mut tags = self.store.tags().list_prefix(TAG_PREFIX).await.map_err(store_error)?;
            let mut kept = Vec::new();
            while let Some(tag) = tags.next().await {
                let tag = tag.map_err(store_error)?;
                let name = String::from_utf8_lossy(tag.name.as_ref()).into_owned();
                match name.strip_prefix(TAG_PREFIX).map(BlobHash::parse) {
                    Some(Ok(hash)) => kept.push(hash),
                    _ => tracing::warn!(%name, "ignoring a blob tag that names no hash"),
                }
            }
            Ok(kept)
        })
    }

    fn fetch<'a>(
        &'a self,
        holder: u64,
        member: &'a MemberNode,
        hash: BlobHash,
        size: u64,
    ) -> BoxFuture<'a, Result<u64, FetchFailure>> {
        Box::pin(async move {
            let addr = endpoint_addr(holder, member).map_err(FetchFailure::Failed)?;
            let connect = self.endpoint.connect(addr, alpn::BLOBS);
            let connection = match tokio::time::timeout(Duration::from_millis(BLOB_CONNECT_TIMEOUT_MS), connect).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(FetchFailure::Failed(format!("cannot connect: {error}"))),
                Err(_) => {
                    return Err(FetchFailure::Failed(format!("connecting took over {BLOB_CONNECT_TIMEOUT_MS} ms")));
                }
            };
            // A holder that stalls (or trickles) must not hold the repair worker or a client's transfer slot forever.
            let deadline = fetch_deadline(size);
            let fetch = self.store.remote().fetch(connection.clone(), iroh_hash(&hash));
            let result = tokio::time::timeout(deadline, fetch).await;
            connection.close(0u32.into(), b"done");
            let Ok(result) = result else {
                return Err(FetchFailure::Failed(format!("the transfer took over {deadline:?}")));
            };
            match result {
                Ok(stats) => Ok(stats.payload_bytes_read),
                Err(error @ iroh_blobs::get::GetError::Decode { .. }) => {
                    Err(FetchFailure::Corrupt(format!("the data did not match the hash ({error})")))
                }
                Err(error) => Err(FetchFailure::Failed(error.to_string())),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.store.shutdown().await {
                tracing::warn!(%error, "blob store did not shut down cleanly");
            }
        })
    }

    fn iroh(&self) -> Option<iroh_blobs::api::Store> {
        Some(self.store.as_ref().clone())
    }
}

/// Counts a fetch outcome (the repair worker's and the clients' transfers share the counters).
pub(crate) fn count_fetch(counters: &super::BlobCounters, outcome: &Result<u64, FetchFailure>) {
    match outcome {
        Ok(bytes) => {
            counters.fetches_ok.fetch_add(1, Ordering::Relaxed);
            counters.bytes_fetched.fetch_add(*bytes, Ordering::Relaxed);
        }
        Err(failure) => {
            counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
            if matches!(failure, FetchFailure::Corrupt(_)) {
                counters.fetch_corrupt.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
