//! Moving blob bytes: fetching from holders (verified as they stream), and serving iroh-blobs' protocol to members.

use std::sync::atomic::Ordering;
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh_blobs::api::TempTag;
use pando_protocol::alpn;
use pando_protocol::blob::BlobHash;
use pando_protocol::error::{ErrorCode, WireError};

use super::{BlobNode, BlobsHandle, iroh_hash};
use crate::raft::RaftHandle;
use crate::raft::transport::endpoint_addr;

/// How long dialling a holder may take.
pub const BLOB_CONNECT_TIMEOUT_MS: u64 = 3_000;

#[derive(Clone, Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("blob store: {0}")]
    Store(String),
}

impl TransferError {
    pub(crate) fn store(error: impl std::fmt::Display) -> TransferError {
        TransferError::Store(error.to_string())
    }
}

impl From<TransferError> for WireError {
    fn from(error: TransferError) -> WireError {
        let code = match &error {
            TransferError::NotFound(_) => ErrorCode::NotFound,
            TransferError::Unavailable(_) => ErrorCode::Unavailable,
            TransferError::Invalid(_) => ErrorCode::InvalidArgument,
            TransferError::Store(_) => ErrorCode::Internal,
        };
        WireError::new(code, error.to_string())
    }
}

impl BlobNode {
    /// Makes sure this node has a complete, verified copy of `hash`, fetching it from `holders` in order when it does
    /// not: a holder that cannot be reached, stops early or sends data that does not match the hash is skipped, and
    /// the next one resumes from the chunks already verified. The returned tag keeps the data until the caller is
    /// done (or has tagged it for good).
    pub async fn ensure_local(&self, hash: &BlobHash, size: u64, holders: &[u64]) -> Result<TempTag, TransferError> {
        let target = iroh_hash(hash);
        let pin = self.store.tags().temp_tag(target).await.map_err(TransferError::store)?;
        if self.store.blobs().has(target).await.map_err(TransferError::store)? {
            return Ok(pin);
        }
        let members = self.raft.members();
        let mut failures = Vec::new();
        for holder in holders.iter().copied().filter(|holder| *holder != self.node_id) {
            let Some(member) = members.get(&holder) else {
                failures.push(format!("node {holder} is not a member"));
                continue;
            };
            match self.fetch_from(holder, member, hash, size).await {
                Ok(bytes) => {
                    self.counters.fetches_ok.fetch_add(1, Ordering::Relaxed);
                    self.counters.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
                    if self.store.blobs().has(target).await.map_err(TransferError::store)? {
                        return Ok(pin);
                    }
                    failures.push(format!("node {holder} ended the transfer before the end of the blob"));
                }
                Err(failure) => {
                    self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%hash, holder, %failure, "fetching a blob failed, trying the next holder");
                    failures.push(format!("node {holder}: {failure}"));
                }
            }
        }
        if failures.is_empty() {
            return Err(TransferError::Unavailable(format!("blob {hash} has no holder to fetch it from")));
        }
        Err(TransferError::Unavailable(format!("no holder could provide blob {hash}: {}", failures.join("; "))))
    }

    async fn fetch_from(
        &self,
        holder: u64,
        member: &pando_protocol::cluster::MemberNode,
        hash: &BlobHash,
        size: u64,
    ) -> Result<u64, String> {
        let addr = endpoint_addr(holder, member)?;
        let connect = self.endpoint.connect(addr, alpn::BLOBS);
        let connection = match tokio::time::timeout(Duration::from_millis(BLOB_CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(format!("cannot connect: {error}")),
            Err(_) => return Err(format!("connecting took over {BLOB_CONNECT_TIMEOUT_MS} ms")),
        };
        // A holder that stalls (or trickles) must not hold the repair worker or a client's transfer slot forever.
        let deadline = fetch_deadline(size);
        let fetch = self.store.remote().fetch(connection.clone(), iroh_hash(hash));
        let result = tokio::time::timeout(deadline, fetch).await;
        connection.close(0u32.into(), b"done");
        let Ok(result) = result else {
            return Err(format!("the transfer took over {deadline:?}"));
        };
        match result {
            Ok(stats) => Ok(stats.payload_bytes_read),
            Err(error) => {
                let text = error.to_string();
                if matches!(error, iroh_blobs::get::GetError::Decode { .. }) {
                    self.counters.fetch_corrupt.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("the data did not match the hash ({text})"));
                }
                Err(text)
            }
        }
    }
}

/// Slowest transfer rate a fetch may have before it is abandoned for the next holder.
pub const FETCH_RATE_BYTES_PER_SEC_MIN: u64 = 4 * 1024 * 1024;

/// How long fetching `size` bytes from one holder may take: a base for small blobs, plus the size at the slowest
/// acceptable rate.
pub fn fetch_deadline(size: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(size / FETCH_RATE_BYTES_PER_SEC_MIN)
}

/// Serves iroh-blobs' protocol on one connection, if the remote is a member (or a peer this node trusts since it
/// joined). Clients get blobs through the RPC protocol, with their token checked; this is the members' path.
pub async fn serve_members(connection: Connection, raft: RaftHandle, blobs: BlobsHandle) {
    let remote = connection.remote_id();
    if !raft.is_authorised_peer(remote.as_bytes()) {
        tracing::warn!(%remote, "refusing a blob transfer to a node that is not a member");
        connection.close(5u32.into(), b"not a member");
        return;
    }
    let Ok(node) = blobs.node() else {
        connection.close(6u32.into(), b"blob store not running");
        return;
    };
    let events = iroh_blobs::provider::events::EventSender::DEFAULT;
    iroh_blobs::provider::handle_connection(connection, node.store.as_ref().clone(), events).await;
}
