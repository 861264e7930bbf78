//! Plugin requests: lifecycle changes go through the log (an administrator's token), reads come from the applied
//! registry after a read-index round, calls run on this node's instances of the plugin.

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::Bytes;
use pando_protocol::plugin::{PluginCommand, PluginRequest, PluginResponse};
use pando_protocol::token::{Access, TokenClaims};

use super::handler::{RpcContext, authorise, linearize, propose, reader};

pub(crate) async fn execute(
    context: &RpcContext,
    claims: &TokenClaims,
    request: PluginRequest,
    timeout: Duration,
) -> Result<PluginResponse, WireError> {
    request.validate()?;
    if request.is_admin() {
        authorise(claims, Access::PluginAdmin)?;
    }
    let command = match request {
        PluginRequest::Call { name, function, input } => {
            authorise(claims, Access::PluginCall(&name))?;
            let (output, generation) =
                context.directory.plugins().call(&name, &function, input.to_vec(), timeout).await?;
            return Ok(PluginResponse::Output { output: Bytes::from(output), node: context.node_id, generation });
        }
        PluginRequest::List => {
            authorise(claims, Access::ClusterRead)?;
            return read_registry(context, |reader| reader.plugin_infos()).await.map(PluginResponse::List);
        }
        PluginRequest::Info { name } => {
            authorise(claims, Access::ClusterRead)?;
            let lookup = name.clone();
            return read_registry(context, move |reader| reader.plugin_info(&lookup))
                .await?
                .map(PluginResponse::Info)
                .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no plugin `{name}` is installed")));
        }
        PluginRequest::Install { manifest, wasm } => PluginCommand::Install { manifest, wasm },
        PluginRequest::Enable { name } => PluginCommand::SetEnabled { name, enabled: true },
        PluginRequest::Disable { name } => PluginCommand::SetEnabled { name, enabled: false },
        PluginRequest::Remove { name } => PluginCommand::Remove { name },
    };
    match propose(context, Command::Plugin(command), timeout).await? {
        CommandOutput::Plugin(response) => Ok(response),
        other => Err(WireError::internal(format!("a plugin command produced {other:?}"))),
    }
}

/// Reads the plugin registry linearizably (after a read-index round), off the async threads.
async fn read_registry<T: Send + 'static>(
    context: &RpcContext,
    work: impl FnOnce(&crate::storage::StateReader) -> Result<T, pando_protocol::state_machine::StorageFault>
    + Send
    + 'static,
) -> Result<T, WireError> {
    linearize(context).await?;
    let reader = reader(context)?;
    crate::storage::offload(move || work(&reader))
        .await
        .map_err(|error| WireError::internal(format!("read task failed: {error}")))?
        .map_err(|fault| WireError::internal(fault.to_string()))
}
