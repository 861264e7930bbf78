//! The KV service: reads at their consistency, writes through this node's Raft, values above the inline threshold
//! stored as blobs, and the same operations on behalf of a plugin (checked against the plugin registry where they
//! take effect, proposed from any member, read-your-writes on this node).
//!
//! Callers validate nothing themselves: every request is validated here (a caller's mistake is an `INVALID_ARGUMENT`
//! or `TOO_LARGE` answer and changes nothing).

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorDetail, WireError};
use pando_protocol::kv::{Bytes, CompareTarget, Consistency, KvEntry, KvRequest, KvResponse, TxnOp};
use pando_protocol::plugin::sealed::{SealedOp, SealedRead, SealedReadAnswer, SealedWritten};
use pando_protocol::plugin::{PluginCommand, PluginResponse};

use super::blobs::BlobService;
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage::StateReader;
use crate::storage_actor::StorageHandle;

#[derive(Clone)]
pub struct KvService {
    raft: RaftHandle,
    storage: StorageHandle,
    proposer: Proposer,
    blobs: BlobService,
}

/// A page of a scan: the entries, where the next page starts when more keys may follow, and the revision it was
/// read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    pub entries: Vec<KvEntry>,
    pub next: Option<Bytes>,
    pub revision: u64,
}

impl KvService {
    pub fn new(raft: RaftHandle, storage: StorageHandle, proposer: Proposer, blobs: BlobService) -> KvService {
        KvService { raft, storage, proposer, blobs }
    }

    /// Serves one request as a client's: a read at its consistency (a linearizable one after a read-index round), a
    /// write through this node's Raft (a follower answers `NOT_LEADER` naming the leader), a put above the inline
    /// threshold as a blob the key points at.
    /// The state this node applied (a storage that is not open is `UNAVAILABLE`).
    pub fn reader(&self) -> Result<StateReader, WireError> {
        Ok(self.storage.reader()?)
    }

    pub async fn execute(&self, request: KvRequest, timeout: Duration) -> Result<KvResponse, WireError> {
        request.validate()?;
        if !request.is_write() {
            return self.read(request, timeout).await;
        }
        if let KvRequest::Put { key, value, lease } = &request
            && self.blobs.stores_as_blob(value.len())
        {
            return self.blobs.put_large(key, value, *lease, timeout).await;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::FenceDropped)
            && let KvRequest::Txn { compares, success, failure } = &request
            && compares.iter().any(|compare| matches!(compare.target, CompareTarget::Fence { .. }))
        {
            let compares = compares.iter().filter(|c| !matches!(c.target, CompareTarget::Fence { .. })).cloned();
            let request =
                KvRequest::Txn { compares: compares.collect(), success: success.clone(), failure: failure.clone() };
            return self.write(request, timeout).await;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::TornTxns)
            && let KvRequest::Txn { compares, success, .. } = &request
            && compares.is_empty()
            && success.len() > 1
        {
            return self.torn_txn(success.clone(), timeout).await;
        }
        self.write(request, timeout).await
    }

    pub async fn get(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<Option<KvEntry>, WireError> {
        match self.execute(KvRequest::Get { key: key.into(), consistency }, timeout).await? {
            KvResponse::Entry { entry } => Ok(entry),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Sets `key`, answering the revision the write took effect at.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        lease: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, WireError> {
        match self.execute(KvRequest::Put { key: key.into(), value: value.into(), lease }, timeout).await? {
            KvResponse::Written { revision } => Ok(revision),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Deletes `key`, answering the revision and whether there was anything to delete.
    pub async fn delete(&self, key: impl Into<Bytes>, timeout: Duration) -> Result<(u64, bool), WireError> {
        match self.execute(KvRequest::Delete { key: key.into() }, timeout).await? {
            KvResponse::Deleted { revision, existed } => Ok((revision, existed)),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// One page of the keys under `prefix`, strictly after `after`.
    pub async fn scan(
        &self,
        prefix: impl Into<Bytes>,
        after: Option<Bytes>,
        limit: u32,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<ScanPage, WireError> {
        let request = KvRequest::Scan { prefix: prefix.into(), limit, after, consistency };
        match self.execute(request, timeout).await? {
            KvResponse::ScanPage { entries, next, revision } => Ok(ScanPage { entries, next, revision }),
            other => Err(unexpected("scan", &other)),
        }
    }

    async fn read(&self, request: KvRequest, timeout: Duration) -> Result<KvResponse, WireError> {
        let consistency = match &request {
            KvRequest::Get { consistency, .. }
            | KvRequest::Scan { consistency, .. }
            | KvRequest::BatchGet { consistency, .. } => *consistency,
            _ => Consistency::Linearizable,
        };
        if consistency == Consistency::Linearizable {
            self.raft.linearize(timeout).await?;
        }
        if let KvRequest::Get { .. } = &request {
            return self.storage.read_here(timeout, |reader| reader.read(&request)).await?;
        }
        self.storage.read(timeout, move |reader| reader.read(&request)).await?
    }

    async fn write(&self, request: KvRequest, timeout: Duration) -> Result<KvResponse, WireError> {
        match self.raft.propose(Command::Kv(request), timeout).await? {
            CommandOutput::Kv(response) => Ok(response),
            other => Err(WireError::internal(format!("a KV write produced {other:?}"))),
        }
    }

    /// The planted bug [`TornTxns`](crate::sim::PlantedBug::TornTxns): each operation of a transaction proposed as a
    /// transaction of its own, the answers stitched together as if they were one.
    async fn torn_txn(&self, operations: Vec<TxnOp>, timeout: Duration) -> Result<KvResponse, WireError> {
        let mut results = Vec::new();
        let mut revision = 0;
        for operation in operations {
            let request = KvRequest::Txn { compares: Vec::new(), success: vec![operation], failure: Vec::new() };
            match self.write(request, timeout).await? {
                KvResponse::Txn { results: mut one, revision: at, .. } => {
                    results.append(&mut one);
                    revision = at;
                }
                other => return Err(unexpected("transaction", &other)),
            }
        }
        Ok(KvResponse::Txn { succeeded: true, revision, results })
    }

    /// A read on behalf of plugin `plugin`, from this node's applied state (stale), checked by the read path against
    /// the plugin registry in the same snapshot.
    pub fn read_as_plugin(&self, plugin: &str, request: &KvRequest) -> Result<KvResponse, WireError> {
        request.validate()?;
        let reader = self.storage.reader()?;
        reader.read_for_plugin(plugin, request).map_err(|fault| WireError::internal(fault.0))?
    }

    /// A write on behalf of plugin `plugin`, proposed from this node wherever the leader is; the state machine checks
    /// the registry when it applies it. Read-your-writes on every node: the answer waits (within `timeout`) until
    /// this node applied what it is about (the write, or the value a compare lost against), so the plugin's next read
    /// here sees it.
    pub async fn write_as_plugin(
        &self,
        plugin: &str,
        request: KvRequest,
        timeout: Duration,
    ) -> Result<KvResponse, WireError> {
        request.validate()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let command = Command::Plugin(PluginCommand::Kv { plugin: plugin.to_string(), request });
        let outcome = self.proposer.propose_anywhere(command, timeout).await;
        let seen = match &outcome {
            Ok(CommandOutput::Kv(KvResponse::Written { revision } | KvResponse::Deleted { revision, .. })) => *revision,
            Err(error) => match &error.detail {
                Some(ErrorDetail::Current { entry: Some(entry) }) => entry.mod_revision,
                _ => 0,
            },
            _ => 0,
        };
        self.storage.wait_until(deadline, |reader| reader.revision().is_ok_and(|applied| applied >= seen)).await;
        match outcome? {
            CommandOutput::Kv(response) => Ok(response),
            other => Err(WireError::internal(format!("a plugin KV write produced {other:?}"))),
        }
    }
}

/// A plugin's sealed storage (`pando_protocol::plugin::sealed`): reached only by the plugin's own host functions.
impl KvService {
    /// A read of plugin `plugin`'s sealed rows: after a read index through the leader (from any node) unless
    /// `stale`, so a plugin on a node that lags (or is cut off) never acts on a key ring that was rotated, restricted
    /// or deleted elsewhere.
    pub async fn read_sealed(
        &self,
        plugin: &str,
        read: SealedRead,
        stale: bool,
        timeout: Duration,
    ) -> Result<SealedReadAnswer, WireError> {
        if !stale {
            self.proposer.linearize_anywhere(timeout).await?;
        }
        let reader = self.storage.reader()?;
        reader.read_sealed(plugin, &read).map_err(|fault| WireError::internal(fault.0))?
    }

    /// A sealed write of plugin `plugin`, proposed from this node wherever the leader is; the state machine checks
    /// the registry and the write's checks when it applies it.
    pub async fn write_sealed(
        &self,
        plugin: &str,
        ops: Vec<SealedOp>,
        timeout: Duration,
    ) -> Result<SealedWritten, WireError> {
        pando_protocol::plugin::sealed::validate_write(&ops)?;
        let command = Command::Plugin(PluginCommand::Sealed { plugin: plugin.to_string(), ops });
        match self.proposer.propose_anywhere(command, timeout).await? {
            CommandOutput::Plugin(PluginResponse::Sealed(written)) => Ok(written),
            other => Err(unexpected("sealed write", &other)),
        }
    }
}

/// A response of the wrong kind for the request: a bug in the state machine, never the caller's mistake.
pub(crate) fn unexpected(what: &str, response: &impl std::fmt::Debug) -> WireError {
    WireError::internal(format!("a {what} produced {response:?}"))
}
