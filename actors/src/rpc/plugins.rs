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
            linearize(context).await?;
            let reader = reader(context)?;
            let infos = tokio::task::spawn_blocking(move || reader.plugin_infos())
                .await
                .map_err(|error| WireError::internal(format!("read task failed: {error}")))?
                .map_err(|fault| WireError::internal(fault.to_string()))?;
            return Ok(PluginResponse::List(infos));
        }
        PluginRequest::Info { name } => {
            authorise(claims, Access::ClusterRead)?;
            linearize(context).await?;
            let reader = reader(context)?;
            let lookup = name.clone();
            let info = tokio::task::spawn_blocking(move || reader.plugin_info(&lookup))
                .await
                .map_err(|error| WireError::internal(format!("read task failed: {error}")))?
                .map_err(|fault| WireError::internal(fault.to_string()))?;
            return info
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
