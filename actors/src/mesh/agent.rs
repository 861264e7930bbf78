//! The node agent: one per node, joined to [`NODES_GROUP`](super::NODES_GROUP), answering pings from any node.
//! It is the smallest user of the mesh and the proof that process groups span the cluster.

use std::time::Duration;

use tokio::time::Instant;

use pando_protocol::cluster::MeshPing;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::KvRequest;
use pando_protocol::plugin::PluginCommand;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use super::{MESH_PING_TARGETS_MAX, MESH_PING_TIMEOUT_MS, NODES_GROUP};

/// Messages a node agent takes, from this node or any other. Payloads are MessagePack bytes decoded by the agent, so
/// a malformed message from a peer is an error answer, never a panic.
#[derive(RactorClusterMessage)]
pub enum AgentMsg {
    #[rpc]
    Ping(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A [`Forward`]: propose a command on this node (the leader) for a member that is not the leader.
    #[rpc]
    Propose(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// A proposal handed to the leader's agent by another member. Only blob commands are accepted (a blob's bytes arrive
/// at whichever node a client or a repair chose, which then records them): the member that forwards a client's
/// command has checked the client's token.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    to: u64,
    command: Command,
}

type Forwarded = Result<CommandOutput, WireError>;

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    from: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Pong {
    Ok { node_id: u64 },
    Refused { reason: String },
}

pub struct NodeAgent {
    pub node_id: u64,
    /// The node's process-group scope ([`super::scope`]).
    pub scope: String,
    /// Where forwarded proposals are proposed.
    pub raft: crate::raft::RaftHandle,
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<AgentMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        let agent = vec![myself.get_cell()];
        ractor::pg::join_scoped(self.scope.clone(), NODES_GROUP.to_string(), agent.clone());
        ractor::pg::join_scoped(self.scope.clone(), node_group(self.node_id), agent);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Ping(payload, reply) => {
                let pong = match rmp_serde::from_slice::<Ping>(&payload) {
                    Ok(ping) => {
                        tracing::trace!(from = ping.from, "node agent pinged");
                        Pong::Ok { node_id: self.node_id }
                    }
                    Err(error) => Pong::Refused { reason: format!("malformed ping: {error}") },
                };
                let _ = reply.send(rmp_serde::to_vec_named(&pong).unwrap_or_default());
            }
            AgentMsg::Propose(payload, reply) => {
                let answer = |result: &Forwarded| rmp_serde::to_vec_named(result).unwrap_or_default();
                let forward = match rmp_serde::from_slice::<Forward>(&payload) {
                    Ok(forward) => forward,
                    Err(error) => {
                        let _ = reply.send(answer(&Err(WireError::invalid(format!("malformed proposal: {error}")))));
                        return Ok(());
                    }
                };
                if forward.to != self.node_id {
                    let _ = reply.send(answer(&Err(WireError::invalid("addressed to another node"))));
                    return Ok(());
                }
                let forwardable = matches!(
                    forward.command,
                    Command::Blob(_)
                        | Command::Kv(KvRequest::PutBlob { .. })
                        | Command::Plugin(PluginCommand::Report { .. } | PluginCommand::Kv { .. })
                );
                if !forwardable {
                    let _ = reply.send(answer(&Err(WireError::invalid(
                        "only blob bookkeeping, plugin reports and plugin KV writes are forwarded",
                    ))));
                    return Ok(());
                }
                // Proposed off the mailbox, so a slow commit never holds up pings.
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let result = raft.propose(forward.command, Duration::from_millis(FORWARD_TIMEOUT_MS)).await;
                    let _ = reply.send(answer(&result));
                });
            }
        }
        Ok(())
    }
}

/// How often a forwarded proposal looks again for a session to the leader that is still opening.
const SESSION_POLL_MS: u64 = 50;

/// Longest a forwarded proposal may take on the leader.
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// The process group holding one node's agent (and nothing else), so a message can be addressed to a node.
pub fn node_group(node_id: u64) -> String {
    format!("pando.node.{node_id}")
}

/// Proposes `command` on node `leader` through its agent, found in the leader's own process group as this node's
/// mesh (whose process-group scope is `scope`) sees it.
pub(crate) async fn propose_on(scope: &str, leader: u64, command: &Command, timeout: Duration) -> Forwarded {
    let payload = rmp_serde::to_vec_named(&Forward { to: leader, command: command.clone() })
        .map_err(|error| WireError::internal(format!("cannot encode a proposal: {error}")))?;
    // A session to the leader may still be opening (a node just started, a leader just elected): wait for it, within
    // the caller's deadline.
    let deadline = tokio::time::Instant::now() + timeout;
    let cell = loop {
        let members = ractor::pg::get_scoped_members(&scope.to_string(), &node_group(leader));
        if let Some(cell) = members.into_iter().find(|cell| !cell.get_id().is_local()) {
            break cell;
        }
        if tokio::time::Instant::now() + Duration::from_millis(SESSION_POLL_MS) >= deadline {
            let message = format!("no mesh session to the leader (node {leader}) within {} ms", timeout.as_millis());
            return Err(WireError::new(ErrorCode::Unavailable, message));
        }
        tokio::time::sleep(Duration::from_millis(SESSION_POLL_MS)).await;
    };
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let agent = ActorRef::<AgentMsg>::from(cell);
    match agent.call(|reply| AgentMsg::Propose(payload, reply), Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(bytes)) => rmp_serde::from_slice::<Forwarded>(&bytes)
            .unwrap_or_else(|error| Err(WireError::internal(format!("malformed answer: {error}")))),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(WireError::new(ErrorCode::Timeout, "the leader did not answer; it may or may not have applied"))
        }
        _ => Err(WireError::new(ErrorCode::Unavailable, format!("cannot reach the agent of node {leader}"))),
    }
}

/// Pings every agent in [`NODES_GROUP`] (on this node and, through the mesh, on the others) at once, as node `from`
/// sees the group in its mesh's scope.
pub async fn ping_group(scope: &str, from: u64) -> Vec<MeshPing> {
    let payload = rmp_serde::to_vec_named(&Ping { from }).unwrap_or_default();
    let mut members = ractor::pg::get_scoped_members(&scope.to_string(), &NODES_GROUP.to_string());
    // In a fixed order (process groups keep hash order), so a simulated run sends its pings the same way each time.
    members.sort_by_key(|cell| cell.get_id());
    let pings = members.into_iter().take(MESH_PING_TARGETS_MAX).map(|cell| {
        let payload = payload.clone();
        async move {
            let local = cell.get_id().is_local();
            let agent = ActorRef::<AgentMsg>::from(cell);
            let started = Instant::now();
            let answer = agent
                .call(|reply| AgentMsg::Ping(payload, reply), Some(Duration::from_millis(MESH_PING_TIMEOUT_MS)))
                .await;
            let round_trip_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let failed = |error: String| MeshPing { node_id: None, local, round_trip_us: None, error: Some(error) };
            match answer {
                Ok(ractor::rpc::CallResult::Success(bytes)) => match rmp_serde::from_slice::<Pong>(&bytes) {
                    Ok(Pong::Ok { node_id }) => {
                        MeshPing { node_id: Some(node_id), local, round_trip_us: Some(round_trip_us), error: None }
                    }
                    Ok(Pong::Refused { reason }) => failed(reason),
                    Err(error) => failed(format!("malformed answer: {error}")),
                },
                Ok(ractor::rpc::CallResult::Timeout) => failed(format!("no answer within {MESH_PING_TIMEOUT_MS} ms")),
                Ok(ractor::rpc::CallResult::SenderError) => failed("the agent dropped the ping".into()),
                Err(error) => failed(format!("cannot reach the agent: {error}")),
            }
        }
    });
    let mut answers = futures::future::join_all(pings).await;
    answers.sort_by_key(|ping| (ping.node_id.is_none(), ping.node_id));
    answers
}
