//! Moving blob bytes: fetching from holders (verified as they arrive, through the [store](super::store)), and serving
//! iroh-blobs' protocol to members.

use iroh::endpoint::Connection;
use pando_protocol::blob::{BlobHash, LocalBlob};
use pando_protocol::error::{ErrorCode, WireError};

use super::store::{BlobPin, FetchFailure, count_fetch};
use super::{BlobNode, BlobsHandle};
use crate::raft::RaftHandle;

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
    /// the next one is tried. The returned pin keeps the data until the caller is done (or has kept it for good).
    pub async fn ensure_local(&self, hash: &BlobHash, size: u64, holders: &[u64]) -> Result<BlobPin, TransferError> {
        let pin = self.store.pin(*hash).await?;
        if self.has_complete(hash).await? {
            return Ok(pin);
        }
        let members = self.raft.members();
        let mut failures = Vec::new();
        for holder in holders.iter().copied().filter(|holder| *holder != self.node_id) {
            let Some(member) = members.get(&holder) else {
                failures.push(format!("node {holder} is not a member"));
                continue;
            };
            let fetched = self.store.fetch(holder, member, *hash, size).await;
            count_fetch(&self.counters, &fetched);
            match fetched {
                Ok(_) if self.has_complete(hash).await? => return Ok(pin),
                Ok(_) => failures.push(format!("node {holder} ended the transfer before the end of the blob")),
                Err(FetchFailure::Corrupt(failure) | FetchFailure::Failed(failure)) => {
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

    async fn has_complete(&self, hash: &BlobHash) -> Result<bool, TransferError> {
        Ok(matches!(self.store.status(*hash).await?, LocalBlob::Complete { .. }))
    }
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
    let Some(store) = node.store.iroh() else {
        connection.close(6u32.into(), b"blob store not served over iroh");
        return;
    };
    let events = iroh_blobs::provider::events::EventSender::DEFAULT;
    iroh_blobs::provider::handle_connection(connection, store, events).await;
}
