//! Raft: openraft's type configuration, the network between members, and the RaftActor that group-commits proposals.

pub mod raft_actor;
pub mod runtime;
pub mod sim_network;
pub mod transport;
pub mod type_config;

pub use raft_actor::{RaftActor, RaftArgs, RaftMsg};

/// Raft timing for real nodes.
pub fn default_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "pando".into(),
        // openraft bounds each AppendEntries by one heartbeat interval: long enough for a few MiB of entries.
        heartbeat_interval: 200,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        snapshot_max_chunk_size: pando_protocol::limits::SNAPSHOT_CHUNK_BYTES_MAX as u64,
        max_payload_entries: pando_protocol::limits::APPEND_ENTRIES_COUNT_MAX,
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim_tests;

/// Proposes one command through this node's RaftActor, within `timeout`. A follower answers `NOT_LEADER`.
pub(crate) async fn propose_local(
    directory: &crate::directory::Directory,
    command: pando_protocol::command::Command,
    timeout: std::time::Duration,
) -> Result<pando_protocol::command::CommandOutput, pando_protocol::error::WireError> {
    use pando_protocol::error::{ErrorCode, WireError};
    let handles = directory.raft().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "raft is not running"))?;
    let outcome =
        handles.actor.call(|reply: ractor::RpcReplyPort<_>| RaftMsg::Propose { command, reply }, Some(timeout)).await;
    match outcome {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(ractor::rpc::CallResult::Timeout) => Err(WireError::new(
            ErrorCode::Timeout,
            "write not committed before the deadline; it may or may not have been applied",
        )),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(WireError::new(
            ErrorCode::Unavailable,
            "raft stopped before answering; the write may or may not have been applied",
        )),
    }
}

/// Proposes a node-internal command from any member: through the local RaftActor when this node leads, else handed
/// to the leader's node agent over the actor mesh. Only blob bookkeeping travels this way.
pub(crate) async fn propose_anywhere(
    directory: &crate::directory::Directory,
    command: pando_protocol::command::Command,
    timeout: std::time::Duration,
) -> Result<pando_protocol::command::CommandOutput, pando_protocol::error::WireError> {
    use pando_protocol::error::{ErrorCode, ErrorDetail, WireError};
    match propose_local(directory, command.clone(), timeout).await {
        Err(error) if error.code == ErrorCode::NotLeader => match error.detail {
            Some(ErrorDetail::Leader { node_id, .. }) => match directory.mesh_scope() {
                Some(scope) => crate::mesh::agent::propose_on(&scope, node_id, &command, timeout).await,
                None => Err(WireError::new(ErrorCode::Unavailable, "the actor mesh is not running")),
            },
            _ => Err(error),
        },
        other => other,
    }
}
