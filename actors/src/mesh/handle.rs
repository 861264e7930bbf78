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

    /// Waits until this node has applied everything committed anywhere before the call: a read-index round here when
    /// this node leads, else one on the leader (asked over the mesh for the index it has applied once a quorum
    /// confirmed it still leads), then this node's apply catching up to that index: etcd's read index from a
    /// follower. While no leader is known (an election), it asks again until `timeout`.
    pub async fn linearize_anywhere(&self, timeout: Duration) -> Result<(), WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match self.raft.linearize(left).await {
                Err(error) if error.code == ErrorCode::NotLeader => error,
                other => return other,
            };
            if let Some(ErrorDetail::Leader { node_id, .. }) = error.detail {
                let mesh = self.mesh.live.get()?;
                let index = super::agent::read_index_on(&mesh.scope, node_id, left).await?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                return self.raft.wait_applied(index, left).await;
            }
            if tokio::time::Instant::now() + Duration::from_millis(LEADER_POLL_MS) >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
        }
    }
}

/// How often a read waiting out an election asks again.
const LEADER_POLL_MS: u64 = 50;
