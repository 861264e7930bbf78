//! The actor mesh as the other subsystems reach it ([`MeshHandle`], valid across the MeshActor's restarts), and the
//! [`Proposer`] that proposes a node-internal command from any member: through the local Raft when this node leads,
//! else through the leader's node agent over the mesh.

use std::time::Duration;

use pando_protocol::cluster::MeshPing;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, ErrorDetail, WireError};
use ractor::ActorRef;

use super::mesh_actor::{MeshMsg, MeshStatus};
use crate::live::{Live, Unavailable};
use crate::raft::RaftHandle;

/// How long the mesh may take to list its sessions.
const MESH_STATUS_TIMEOUT_MS: u64 = 5_000;

/// The live mesh actor and the process-group scope its sessions are confined to ([`super::scope`]).
#[derive(Clone)]
struct LiveMesh {
    actor: ActorRef<MeshMsg>,
    scope: String,
    /// The node's key, which signs what this node forwards to the leader.
    node_key: iroh::SecretKey,
}

#[derive(Clone)]
pub struct MeshHandle {
    live: Live<LiveMesh>,
}

impl Default for MeshHandle {
    fn default() -> MeshHandle {
        MeshHandle { live: Live::new("actor mesh") }
    }
}

impl MeshHandle {
    /// The running mesh actor.
    pub fn actor(&self) -> Result<ActorRef<MeshMsg>, Unavailable> {
        self.live.get().map(|mesh| mesh.actor)
    }

    /// The process-group scope of the running mesh's sessions.
    pub fn scope(&self) -> Result<String, Unavailable> {
        self.live.get().map(|mesh| mesh.scope)
    }

    /// The mesh's sessions and the members it has none with.
    pub async fn status(&self) -> Result<MeshStatus, WireError> {
        let actor = self.actor()?;
        match actor.call(MeshMsg::Status, Some(Duration::from_millis(MESH_STATUS_TIMEOUT_MS))).await {
            Ok(ractor::rpc::CallResult::Success(status)) => Ok(status),
            _ => Err(WireError::new(ErrorCode::Unavailable, "the actor mesh did not answer")),
        }
    }

    /// Pings every node agent in the cluster-wide group, as node `from` sees it through this mesh.
    pub async fn ping_all(&self, from: u64) -> Result<Vec<MeshPing>, Unavailable> {
        Ok(super::agent::ping_group(&self.scope()?, from).await)
    }

    pub(crate) fn publish(&self, actor: ActorRef<MeshMsg>, scope: String, node_key: iroh::SecretKey) {
        self.live.publish(LiveMesh { actor, scope, node_key });
    }

    /// Forgets `actor` if it is still the published one (a restarted mesh may have published already).
    pub(crate) fn retract(&self, actor: &ActorRef<MeshMsg>) {
        self.live.retract_if(|live| live.actor.get_id() == actor.get_id());
    }
}

/// Proposes node-internal commands (blob bookkeeping, plugin reports and plugin KV writes) from any member.
#[derive(Clone)]
pub struct Proposer {
    raft: RaftHandle,
    mesh: MeshHandle,
}

impl Proposer {
    pub fn new(raft: RaftHandle, mesh: MeshHandle) -> Proposer {
        Proposer { raft, mesh }
    }

    /// Proposes `command` through the local RaftActor when this node leads, else hands it to the leader's node agent
    /// over the actor mesh, within `timeout`.
    pub async fn propose_anywhere(&self, command: Command, timeout: Duration) -> Result<CommandOutput, WireError> {
        match self.raft.propose(command.clone(), timeout).await {
            Err(error) if error.code == ErrorCode::NotLeader => match error.detail {
                Some(ErrorDetail::Leader { node_id, .. }) => {
                    let mesh = self.mesh.live.get()?;
                    let sender =
                        super::agent::Sender { node_id: self.raft.node_id(), key: &mesh.node_key, scope: &mesh.scope };
                    super::agent::propose_on(&sender, node_id, &command, timeout).await
                }
                _ => Err(error),
            },
            other => other,
        }
    }
}
