//! The plugin service: calls run on this node's instances of a plugin; lifecycle changes go through the log; the
//! registry is read linearizably.

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::Bytes;
use pando_protocol::plugin::sealed::{SealedOp, SealedRead, SealedReadAnswer, SealedWritten};
use pando_protocol::plugin::{PluginCommand, PluginRequest, PluginResponse};
use pando_protocol::state_machine::StorageFault;

use pando_protocol::blob::BlobHash;
use pando_protocol::kv::{KvRequest, KvResponse};

use super::kv::unexpected;
use super::{BlobService, KvService};
use crate::plugins::host::CallScope;
use crate::plugins::{BoxFuture, PluginHost, PluginsHandle};
use crate::raft::RaftHandle;
use crate::storage::StateReader;
use crate::storage_actor::StorageHandle;

#[derive(Clone)]
pub struct PluginService {
    node_id: u64,
    raft: RaftHandle,
    storage: StorageHandle,
    plugins: PluginsHandle,
}

impl PluginService {
    pub fn new(node_id: u64, raft: RaftHandle, storage: StorageHandle, plugins: PluginsHandle) -> PluginService {
        PluginService { node_id, raft, storage, plugins }
    }

    /// Calls `function` of plugin `name` on this node, answering the output and the generation that produced it.
    pub async fn call(
        &self,
        name: &str,
        function: &str,
        input: Vec<u8>,
        timeout: Duration,
        scope: Option<CallScope>,
    ) -> Result<(Vec<u8>, u64), WireError> {
        self.plugins.routes().call(name, function, input, timeout, scope).await
    }

    /// Serves one validated plugin request of a client whose capabilities are `scope` (`None`: every capability).
    pub async fn execute(
        &self,
        request: PluginRequest,
        timeout: Duration,
        scope: Option<CallScope>,
    ) -> Result<PluginResponse, WireError> {
        request.validate()?;
        let command = match request {
            PluginRequest::Call { name, function, input } => {
                let (output, generation) = self.call(&name, &function, input.to_vec(), timeout, scope).await?;
                return Ok(PluginResponse::Output { output: Bytes::from(output), node: self.node_id, generation });
            }
            PluginRequest::List => {
                return self.read_registry(timeout, |reader| reader.plugin_infos()).await.map(PluginResponse::List);
            }
            PluginRequest::Info { name } => {
                let lookup = name.clone();
                return self
                    .read_registry(timeout, move |reader| reader.plugin_info(&lookup))
                    .await?
                    .map(PluginResponse::Info)
                    .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no plugin `{name}` is installed")));
            }
            PluginRequest::Install { manifest, wasm } => PluginCommand::Install { manifest, wasm },
            PluginRequest::Enable { name } => PluginCommand::SetEnabled { name, enabled: true },
            PluginRequest::Disable { name } => PluginCommand::SetEnabled { name, enabled: false },
            PluginRequest::Remove { name } => PluginCommand::Remove { name },
        };
        match self.raft.propose(Command::Plugin(command), timeout).await? {
            CommandOutput::Plugin(response) => Ok(response),
            other => Err(unexpected("plugin command", &other)),
        }
    }

    /// Reads the plugin registry linearizably (after a read-index round), off the async threads.
    async fn read_registry<T: Send + 'static>(
        &self,
        timeout: Duration,
        work: impl FnOnce(&StateReader) -> Result<T, StorageFault> + Send + 'static,
    ) -> Result<T, WireError> {
        self.raft.linearize(timeout).await?;
        self.storage.read(timeout, work).await
    }
}

/// The plugins' host functions' way into the node: KV and blobs through the services, on a plugin's behalf.
#[derive(Clone)]
pub struct ServicesHost {
    kv: KvService,
    blobs: BlobService,
}

impl ServicesHost {
    pub fn new(kv: KvService, blobs: BlobService) -> ServicesHost {
        ServicesHost { kv, blobs }
    }
}

impl PluginHost for ServicesHost {
    fn kv_read(&self, plugin: &str, request: &KvRequest) -> Result<KvResponse, WireError> {
        self.kv.read_as_plugin(plugin, request)
    }

    fn kv_write(
        &self,
        plugin: String,
        request: KvRequest,
        timeout: Duration,
    ) -> BoxFuture<Result<KvResponse, WireError>> {
        let kv = self.kv.clone();
        Box::pin(async move { kv.write_as_plugin(&plugin, request, timeout).await })
    }

    fn blob_get(&self, hash: BlobHash, size_max: u64, timeout: Duration) -> BoxFuture<Result<Vec<u8>, WireError>> {
        let blobs = self.blobs.clone();
        Box::pin(async move { blobs.get_bytes(hash, size_max, timeout).await.map(|bytes| bytes.to_vec()) })
    }

    fn blob_add(&self, data: Vec<u8>, timeout: Duration) -> BoxFuture<Result<BlobHash, WireError>> {
        let blobs = self.blobs.clone();
        Box::pin(async move { blobs.add_bytes(data, timeout).await })
    }

    fn blob_has(&self, hash: &BlobHash) -> Result<bool, WireError> {
        self.blobs.has(hash)
    }

    fn sealed_read(
        &self,
        plugin: String,
        read: SealedRead,
        stale: bool,
        timeout: Duration,
    ) -> BoxFuture<Result<SealedReadAnswer, WireError>> {
        let kv = self.kv.clone();
        Box::pin(async move { kv.read_sealed(&plugin, read, stale, timeout).await })
    }

    fn sealed_write(
        &self,
        plugin: String,
        ops: Vec<SealedOp>,
        timeout: Duration,
    ) -> BoxFuture<Result<SealedWritten, WireError>> {
        let kv = self.kv.clone();
        Box::pin(async move { kv.write_sealed(&plugin, ops, timeout).await })
    }
}
