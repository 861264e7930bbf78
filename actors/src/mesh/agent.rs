//! The node agent: one per node, joined to [`NODES_GROUP`](super::NODES_GROUP), answering pings from any node.
//! It is the smallest user of the mesh and the proof that process groups span the cluster.

use std::time::{Duration, Instant};

use pando_protocol::cluster::MeshPing;
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
}

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
}

impl Actor for NodeAgent {
    type Msg = AgentMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<AgentMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(NODES_GROUP.to_string(), vec![myself.get_cell()]);
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
        }
        Ok(())
    }
}

/// Pings every agent in [`NODES_GROUP`] (on this node and, through the mesh, on the others) at once.
pub async fn ping_group(from: u64) -> Vec<MeshPing> {
    let payload = rmp_serde::to_vec_named(&Ping { from }).unwrap_or_default();
    let members = ractor::pg::get_members(&NODES_GROUP.to_string());
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
