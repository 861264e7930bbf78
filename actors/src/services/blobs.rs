//! The blob service: recording blobs this node holds (and attaching them to keys), large KV values stored as blobs,
//! the bookkeeping requests, and whole-blob reads and writes for plugins. Moving a client's bytes in frames is the
//! RPC layer's work (`rpc/blobs.rs`); what the cluster records about them happens here.

use std::time::Duration;

use bytes::Bytes as DataBytes;
use pando_protocol::blob::{
    BlobCommand, BlobHash, BlobRecord, BlobRef, BlobRequest, BlobResponse, LocalBlob, Replica, ReplicationReport,
};
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::{Bytes, KvRequest, KvResponse};

use super::kv::unexpected;
use crate::blobs::{BlobNode, BlobsHandle};
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

/// How long recording a blob (and attaching it) may take, besides fetching copies.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait for copies looks at the record again when the commit stream stays quiet (this node may apply
/// after the leader).
const COPIES_POLL_MS: u64 = 200;

#[derive(Clone)]
pub struct BlobService {
    node_id: u64,
    raft: RaftHandle,
    storage: StorageHandle,
    proposer: Proposer,
    blobs: BlobsHandle,
}

impl BlobService {
    pub fn new(
        node_id: u64,
        raft: RaftHandle,
        storage: StorageHandle,
        proposer: Proposer,
        blobs: BlobsHandle,
    ) -> BlobService {
        BlobService { node_id, raft, storage, proposer, blobs }
    }

    /// The running blob store.
    pub fn node(&self) -> Result<BlobNode, WireError> {
        Ok(self.blobs.node()?)
    }

    /// Whether a KV value of `len` bytes is stored as a blob (only while this node runs a blob store).
    pub(crate) fn stores_as_blob(&self, len: usize) -> bool {
        self.blobs.kv_inline_max_bytes().is_some_and(|inline_max| len > inline_max)
    }

    /// The cluster's record of `hash`, as this node applied it.
    pub async fn record(&self, hash: BlobHash) -> Result<Option<BlobRecord>, WireError> {
        Ok(self.node()?.read(move |reader| reader.blob(&hash)).await?)
    }

    /// Refuses a write on a learner, pointing at the leader: like etcd's learners, a learner serves no writes (the
    /// leader would refuse what it forwards anyway; this spares the upload).
    pub(crate) fn check_takes_writes(&self) -> Result<(), WireError> {
        let members = self.raft.members();
        if members.is_empty() || self.raft.is_voter(self.node_id) {
            return Ok(());
        }
        let leader = self.raft.leader();
        let mut error = crate::raft::raft_actor::not_leader(leader, leader.and_then(|id| members.get(&id).cloned()));
        error.message = format!("node {} is a learner and takes no writes; {}", self.node_id, error.message);
        Err(error)
    }

    /// A client transfer slot of this node's store.
    pub fn transfer_permit(node: &BlobNode) -> Result<tokio::sync::OwnedSemaphorePermit, WireError> {
        node.transfers.clone().try_acquire_owned().map_err(|_| {
            WireError::new(ErrorCode::Busy, "this node streams as many blobs as it may at once; retry with backoff")
        })
    }

    /// Records a blob this node holds (its copy kept first), attaches it to a key when asked, then waits until
    /// `ack_copies` nodes hold it (by default two when it should have two or more, so an acknowledged blob survives
    /// the loss of any one node; never more than the members).
    pub async fn record_and_attach(
        &self,
        blob: BlobRef,
        replicas: Option<u8>,
        pin: bool,
        ack_copies: Option<u8>,
        attach: Option<(Bytes, Option<u64>)>,
    ) -> Result<(BlobRecord, Option<u64>), WireError> {
        let node = self.node()?;
        let replicas = replicas.unwrap_or(node.config.default_replicas);
        let members = self.raft.members().len().max(1);
        let ack_copies = usize::from(ack_copies.unwrap_or(replicas.min(2)).min(replicas)).min(members);
        let added = BlobCommand::Added {
            blob,
            holder: self.node_id,
            replicas,
            pin,
            gc_grace_ms: u64::try_from(node.config.gc_grace.as_millis()).unwrap_or(u64::MAX),
        };
        // Kept before it is recorded: once the record names this node, the copy must already be safe from a sweep.
        node.hold(blob.hash).await?;
        let mut events = Some(self.storage.subscribe());
        let mut record = match self.proposer.propose_anywhere(Command::Blob(added), RECORD_TIMEOUT).await? {
            CommandOutput::Blob(BlobResponse::Record { record, .. }) => record,
            other => return Err(unexpected("blob add", &other)),
        };
        // Attached before waiting for copies: until a key (or the user's pin) references it, the blob is only one
        // grace period away from collection.
        let revision = match attach {
            None => None,
            Some((key, lease)) => {
                let put = KvRequest::PutBlob { key, hash: blob.hash, lease };
                match self.proposer.propose_anywhere(Command::Kv(put), RECORD_TIMEOUT).await? {
                    CommandOutput::Kv(KvResponse::Written { revision }) => Some(revision),
                    other => return Err(unexpected("blob attachment", &other)),
                }
            }
        };
        let deadline = tokio::time::Instant::now() + crate::blobs::fetch_deadline(blob.size) + RECORD_TIMEOUT;
        while record.holders.len() < ack_copies {
            if tokio::time::Instant::now() >= deadline {
                return Err(WireError::new(
                    ErrorCode::Timeout,
                    format!(
                        "blob {} is recorded but only {} of the {ack_copies} copies asked for exist yet; repair goes \
                         on, add it again to wait once more",
                        blob.hash,
                        record.holders.len()
                    ),
                ));
            }
            // Woken by the commit stream, and every so often anyway.
            let wait = tokio::time::sleep(Duration::from_millis(COPIES_POLL_MS));
            match events.as_mut() {
                Some(events) => {
                    tokio::select! {
                        biased;
                        _ = events.recv() => {}
                        () = wait => {}
                    }
                }
                None => wait.await,
            }
            match self.record(blob.hash).await? {
                Some(current) => record = current,
                None => {
                    return Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("blob {} was collected before it had {ack_copies} copies", blob.hash),
                    ));
                }
            }
        }
        Ok((record, revision))
    }

    /// A KV put of a value above the inline threshold, on the leader: the value becomes a blob held here and the key
    /// points at it. A follower proposes it as it is, which answers `NOT_LEADER`, and the client moves to the leader.
    pub(crate) async fn put_large(
        &self,
        key: &Bytes,
        value: &Bytes,
        lease: Option<u64>,
        timeout: Duration,
    ) -> Result<KvResponse, WireError> {
        let node = self.node()?;
        if !node.leads() {
            let put = KvRequest::Put { key: key.clone(), value: value.clone(), lease };
            return match self.raft.propose(Command::Kv(put), timeout).await? {
                CommandOutput::Kv(response) => Ok(response),
                other => Err(unexpected("KV write", &other)),
            };
        }
        let (hash, pin) = node
            .store
            .add(DataBytes::copy_from_slice(value))
            .await
            .map_err(|error| WireError::internal(format!("cannot store the value as a blob: {error}")))?;
        let blob = BlobRef { hash, size: value.len() as u64 };
        let attach = Some((key.clone(), lease));
        let (_, revision) = self.record_and_attach(blob, None, false, None, attach).await?;
        drop(pin);
        Ok(KvResponse::Written { revision: revision.unwrap_or_default() })
    }

    /// The blob requests that do not stream data.
    pub async fn execute(&self, request: BlobRequest, timeout: Duration) -> Result<BlobResponse, WireError> {
        request.validate()?;
        let write = |command: BlobCommand| async move {
            match self.raft.propose(Command::Blob(command), timeout).await? {
                CommandOutput::Blob(response) => Ok(response),
                other => Err(unexpected("blob command", &other)),
            }
        };
        match request {
            BlobRequest::Add { .. } | BlobRequest::Get { .. } => {
                Err(WireError::invalid("blob add and get stream their data on their own request stream"))
            }
            BlobRequest::Protect { hash } => write(BlobCommand::Protect { hash, protected: true }).await,
            BlobRequest::Unprotect { hash } => write(BlobCommand::Protect { hash, protected: false }).await,
            BlobRequest::Delete { hash } => write(BlobCommand::Unpin { hash }).await,
            BlobRequest::SetReplicas { hash, replicas } => write(BlobCommand::SetReplicas { hash, replicas }).await,
            BlobRequest::Has { hash } => {
                let node = self.node()?;
                let cluster = self.record(hash).await?.is_some_and(|record| !record.holders.is_empty());
                let local = matches!(node.local(&hash).await?, LocalBlob::Complete { .. });
                Ok(BlobResponse::Has { cluster, local })
            }
            BlobRequest::Status { hash } => {
                let node = self.node()?;
                let record = self.record(hash).await?;
                let local = node.local(&hash).await?;
                Ok(BlobResponse::Status {
                    hash,
                    record,
                    local,
                    node_id: self.node_id,
                    transfers: node.transfer_counters(),
                })
            }
            BlobRequest::List { after, limit } => {
                let (blobs, next) = self.node()?.read(move |reader| reader.blobs(after.as_ref(), limit)).await?;
                Ok(BlobResponse::Page { blobs, next })
            }
            BlobRequest::Replication { hash } => {
                // Liveness is the leader's view: the node that hears from every member.
                self.raft.linearize(timeout).await?;
                let record = self
                    .record(hash)
                    .await?
                    .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster")))?;
                let node = self.node()?;
                let live = |id: &u64| node.is_live(*id);
                let replicas = |nodes: &[u64]| {
                    nodes.iter().map(|node| Replica { node_id: *node, live: live(node) }).collect::<Vec<_>>()
                };
                Ok(BlobResponse::Replication(ReplicationReport {
                    hash,
                    size: record.size,
                    desired: record.replicas,
                    live_holders: record.holders.iter().filter(|node| live(node)).count() as u32,
                    holders: replicas(&record.holders),
                    assigned: replicas(&record.assigned),
                    reported_by: self.node_id,
                }))
            }
        }
    }

    /// The whole of blob `hash` (fetched to this node first when it has no copy), refused with `TOO_LARGE` above
    /// `size_max` bytes.
    pub async fn get_bytes(&self, hash: BlobHash, size_max: u64, timeout: Duration) -> Result<DataBytes, WireError> {
        let node = self.node()?;
        let record = self.storage.reader()?.blob(&hash).map_err(|fault| WireError::internal(fault.0))?;
        let Some(record) = record else {
            return Err(WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster")));
        };
        if record.size > size_max {
            return Err(WireError::too_large(format!(
                "blob of {} bytes exceeds the {size_max} that may be read at once",
                record.size
            )));
        }
        let unavailable = |error: String| WireError::new(ErrorCode::Unavailable, error);
        let _pin = node
            .ensure_local(&hash, record.size, &record.holders)
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        tokio::time::timeout(timeout, node.store.get(hash))
            .await
            .map_err(|_| unavailable("reading the blob timed out".to_string()))?
            .map_err(|error| unavailable(error.to_string()))
    }

    /// Adds `data` as a pinned blob held by this node with the default replica count, and answers once this node
    /// applied its record (so the caller finds it here at once).
    pub async fn add_bytes(&self, data: Vec<u8>, timeout: Duration) -> Result<BlobHash, WireError> {
        self.add_bytes_with(data, true, timeout).await
    }

    /// [`BlobService::add_bytes`], pinned or not: an unpinned blob nothing refers to is collected after the grace,
    /// unless the state machine protects it first (a job's output, once its result is recorded).
    pub async fn add_bytes_with(&self, data: Vec<u8>, pin: bool, timeout: Duration) -> Result<BlobHash, WireError> {
        self.add_bytes_graced(data, pin, None, timeout).await
    }

    /// [`BlobService::add_bytes_with`] with a grace of its own before the blob, once unreferenced, is collected
    /// (`None`: the node's): a caller that references the blob at once (the file system's chunks) keeps the garbage
    /// its rewrites leave short-lived.
    pub async fn add_bytes_graced(
        &self,
        data: Vec<u8>,
        pin: bool,
        gc_grace: Option<Duration>,
        timeout: Duration,
    ) -> Result<BlobHash, WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let node = self.node()?;
        let gc_grace = gc_grace.unwrap_or(node.config.gc_grace).min(node.config.gc_grace);
        let size = data.len() as u64;
        let (hash, held) = node
            .store
            .add(DataBytes::from(data))
            .await
            .map_err(|error| WireError::internal(format!("cannot store the blob: {error}")))?;
        node.hold(hash).await.map_err(|error| WireError::new(ErrorCode::Unavailable, error.to_string()))?;
        let added = BlobCommand::Added {
            blob: BlobRef { hash, size },
            holder: self.node_id,
            replicas: node.config.default_replicas,
            pin,
            gc_grace_ms: u64::try_from(gc_grace.as_millis()).unwrap_or(u64::MAX),
        };
        self.proposer.propose_anywhere(Command::Blob(added), timeout).await?;
        drop(held);
        self.storage.wait_until(deadline, |reader| reader.blob(&hash).is_ok_and(|record| record.is_some())).await;
        Ok(hash)
    }

    /// Whether the cluster holds a copy of `hash` somewhere, as this node applied it.
    pub fn has(&self, hash: &BlobHash) -> Result<bool, WireError> {
        let record = self.storage.reader()?.blob(hash).map_err(|fault| WireError::internal(fault.0))?;
        Ok(record.is_some_and(|record| !record.holders.is_empty()))
    }
}
