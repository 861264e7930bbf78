//! The node agent: one per node, joined to [`NODES_GROUP`](super::NODES_GROUP), answering pings from any node.
//! It is the smallest user of the mesh and the proof that process groups span the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use pando_protocol::blob::BlobCommand;
use pando_protocol::cluster::{MemberNode, MeshPing};
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::coord::CoordRequest;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::hook::durable::HookCommand;
use pando_protocol::job::JobCommand;
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
    /// A read index for a member that is not the leader: once this node (the leader) confirmed with a quorum that it
    /// still leads, the log index it has applied ([`ReadIndex`]). It reveals nothing, so any member may ask.
    #[rpc]
    ReadIndex(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// The answer to [`AgentMsg::ReadIndex`]: the index to apply before reading.
type ReadIndex = Result<u64, WireError>;

/// A proposal handed to the leader's agent by another member, signed with the sender's node key: the mesh
/// authenticates sessions, not messages, so the signature is what says which member asks (a learner cannot speak for a
/// voter). The command travels as MessagePack bytes, signed as they are.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    to: u64,
    from: u64,
    #[serde(with = "serde_bytes")]
    command: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// What a forward's signature covers: a domain tag, the addressee, the sender and the command's bytes.
fn signed_bytes(to: u64, from: u64, command: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FORWARD_DOMAIN.len() + 16 + command.len());
    bytes.extend_from_slice(FORWARD_DOMAIN);
    bytes.extend_from_slice(&to.to_be_bytes());
    bytes.extend_from_slice(&from.to_be_bytes());
    bytes.extend_from_slice(command);
    bytes
}

const FORWARD_DOMAIN: &[u8] = b"pando 2026-12 forwarded proposal v1\0";

impl Forward {
    fn sign(to: u64, from: u64, command: &Command, key: &iroh::SecretKey) -> Result<Forward, WireError> {
        let command = rmp_serde::to_vec_named(command)
            .map_err(|error| WireError::internal(format!("cannot encode a proposal: {error}")))?;
        let signature = key.sign(&signed_bytes(to, from, &command)).to_bytes().to_vec();
        Ok(Forward { to, from, command, signature })
    }

    /// The command, if the sender is a member of `members` whose key signed it. Who may ask for what is
    /// [`admit`]'s to say.
    fn open(&self, members: &BTreeMap<u64, MemberNode>) -> Result<Command, WireError> {
        let refused = |why: &str| WireError::new(ErrorCode::Unauthorized, format!("forwarded proposal refused: {why}"));
        let member = members.get(&self.from).ok_or_else(|| refused("the sender is not a member"))?;
        let key = <[u8; 32]>::try_from(member.public_key.as_slice())
            .ok()
            .and_then(|key| iroh::PublicKey::from_bytes(&key).ok())
            .ok_or_else(|| refused("the sender's key in the membership is not an ed25519 key"))?;
        let signature = <[u8; 64]>::try_from(self.signature.as_slice())
            .map(|bytes| iroh::Signature::from_bytes(&bytes))
            .map_err(|_| refused("malformed signature"))?;
        key.verify(&signed_bytes(self.to, self.from, &self.command), &signature)
            .map_err(|_| refused("the signature is not the sender's"))?;
        rmp_serde::from_slice(&self.command)
            .map_err(|error| WireError::invalid(format!("malformed forwarded command: {error}")))
    }
}

/// Whether member `from` (a voter or not) may have the leader propose `command`. Voters may forward blob bookkeeping,
/// plugin reports and plugin KV writes (they serve clients, whose tokens they checked). A learner serves no writes
/// (like etcd's learners): it may only say what it holds of a blob and what it runs of a plugin, about itself.
pub(crate) fn admit(command: &Command, from: u64, voter: bool) -> Result<(), WireError> {
    let forwardable = matches!(
        command,
        Command::Blob(_)
            | Command::Kv(KvRequest::PutBlob { .. })
            | Command::Plugin(PluginCommand::Report { .. } | PluginCommand::Kv { .. } | PluginCommand::Sealed { .. })
            | Command::Hook(
                HookCommand::Claim { .. }
                    | HookCommand::Release { .. }
                    | HookCommand::Begin { .. }
                    | HookCommand::Ack { .. }
                    | HookCommand::Nack { .. }
                    | HookCommand::Term { .. }
            )
            | Command::Job(
                JobCommand::Claim { .. }
                    | JobCommand::Heartbeat { .. }
                    | JobCommand::Complete { .. }
                    | JobCommand::Fail { .. }
                    | JobCommand::Pool { .. }
            )
            // A member's FUSE mount, on behalf of its local callers (the state machine checks their permissions),
            // and the lease its file locks hang on.
            | Command::Fs(_)
            | Command::Coord(
                CoordRequest::LeaseGrant { .. }
                    | CoordRequest::LeaseKeepAlive { .. }
                    | CoordRequest::LeaseRevoke { .. }
            )
    );
    if !forwardable {
        return Err(WireError::invalid(
            "only blob bookkeeping, plugin reports, plugin KV and sealed writes, hook deliveries, job workers' claims and \
             results, and file-system commands and lock leases of a member's mount are forwarded",
        ));
    }
    // A node claims hook deliveries for itself only (and only a voter delivers at all, below).
    if let Command::Hook(HookCommand::Claim { node, .. }) = command
        && *node != from
    {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("node {from} may not claim a hook for node {node}"),
        ));
    }
    if let Command::Job(JobCommand::Claim { node, .. } | JobCommand::Pool { node, .. }) = command
        && *node != from
    {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("node {from} may not claim jobs or report a worker pool for node {node}"),
        ));
    }
    let about_itself = match command {
        Command::Blob(BlobCommand::Held { node, .. } | BlobCommand::Release { node, .. }) => *node == from,
        // A learner may run jobs: what it claims is for itself, and its results are fenced.
        Command::Job(_) => true,
        Command::Plugin(PluginCommand::Report { status, .. }) => status.node == from,
        _ => false,
    };
    if voter || about_itself {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Unauthorized,
            format!(
                "node {from} is a learner: it serves no writes (blob adds, keys pointing at blobs, plugin writes); send \
                 them to a voter, or promote the node"
            ),
        ))
    }
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
                let admitted = forward.open(&self.raft.members()).and_then(|command| {
                    admit(&command, forward.from, self.raft.is_voter(forward.from)).map(|()| command)
                });
                let command = match admitted {
                    Ok(command) => command,
                    Err(error) => {
                        tracing::warn!(from = forward.from, %error, "refused a forwarded proposal");
                        let _ = reply.send(answer(&Err(error)));
                        return Ok(());
                    }
                };
                // Proposed off the mailbox, so a slow commit never holds up pings.
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let result = raft.propose(command, Duration::from_millis(FORWARD_TIMEOUT_MS)).await;
                    let _ = reply.send(answer(&result));
                });
            }
            AgentMsg::ReadIndex(_, reply) => {
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let index: ReadIndex = match raft.linearize(Duration::from_millis(FORWARD_TIMEOUT_MS)).await {
                        Ok(()) => Ok(raft.applied_index()),
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(rmp_serde::to_vec_named(&index).unwrap_or_default());
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

/// Who forwards a proposal: this node's id, its node key, and its mesh's process-group scope.
pub(crate) struct Sender<'a> {
    pub node_id: u64,
    pub key: &'a iroh::SecretKey,
    pub scope: &'a str,
}

/// The process group holding one node's agent (and nothing else), so a message can be addressed to a node. Groups
/// under this name are bound to their node: only the session authenticated as that node may join actors to them
/// ([`peer_may_join`]).
pub fn node_group(node_id: u64) -> String {
    format!("{NODE_GROUP_PREFIX}{node_id}")
}

const NODE_GROUP_PREFIX: &str = "pando.node.";

/// The mesh's group filter (a patch of ractor_cluster): a peer whose session is labelled `peer_label` may join actors
/// to a node-bound group (`pando.node.<id>`, or anything under `pando.node.<id>.`) only if it is that node; every
/// other group is open to every member.
pub fn peer_may_join(peer_label: &str, group: &str) -> bool {
    let Some(rest) = group.strip_prefix(NODE_GROUP_PREFIX) else { return true };
    let node = rest.split('.').next().unwrap_or_default();
    super::node_of_label(peer_label).is_some_and(|peer| peer.to_string() == node)
}

/// Proposes `command` on node `leader` through its agent, found in the leader's own process group as `sender`'s mesh
/// scope sees it, signed with `sender`'s node key. Only the leader's own session may stand in its group (the mesh's
/// group filter), so the proposal reaches the leader or nobody.
pub(crate) async fn propose_on(sender: &Sender<'_>, leader: u64, command: &Command, timeout: Duration) -> Forwarded {
    let forward = Forward::sign(leader, sender.node_id, command, sender.key)?;
    let payload = rmp_serde::to_vec_named(&forward)
        .map_err(|error| WireError::internal(format!("cannot encode a proposal: {error}")))?;
    // A session to the leader may still be opening (a node just started, a leader just elected): wait for it, within
    // the caller's deadline.
    let deadline = tokio::time::Instant::now() + timeout;
    let agent = leader_agent(sender.scope, leader, deadline).await?;
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    match agent.call(|reply| AgentMsg::Propose(payload, reply), Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(bytes)) => rmp_serde::from_slice::<Forwarded>(&bytes)
            .unwrap_or_else(|error| Err(WireError::internal(format!("malformed answer: {error}")))),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(WireError::new(ErrorCode::Timeout, "the leader did not answer; it may or may not have applied"))
        }
        _ => Err(WireError::new(ErrorCode::Unavailable, format!("cannot reach the agent of node {leader}"))),
    }
}

/// The agent of node `leader`, found in its own process group as `scope` sees it. A session to the leader may still
/// be opening (a node just started, a leader just elected): waits for it until `deadline`.
async fn leader_agent(
    scope: &str,
    leader: u64,
    deadline: tokio::time::Instant,
) -> Result<ActorRef<AgentMsg>, WireError> {
    let started = tokio::time::Instant::now();
    loop {
        let members = ractor::pg::get_scoped_members(&scope.to_string(), &node_group(leader));
        if let Some(cell) = members.into_iter().find(|cell| !cell.get_id().is_local()) {
            return Ok(ActorRef::<AgentMsg>::from(cell));
        }
        if tokio::time::Instant::now() + Duration::from_millis(SESSION_POLL_MS) >= deadline {
            let waited = started.elapsed().as_millis();
            let message = format!("no mesh session to the leader (node {leader}) within {waited} ms");
            return Err(WireError::new(ErrorCode::Unavailable, message));
        }
        tokio::time::sleep(Duration::from_millis(SESSION_POLL_MS)).await;
    }
}

/// Asks node `leader` for a read index ([`AgentMsg::ReadIndex`]) as `scope` sees it.
pub(crate) async fn read_index_on(scope: &str, leader: u64, timeout: Duration) -> ReadIndex {
    let deadline = tokio::time::Instant::now() + timeout;
    let agent = leader_agent(scope, leader, deadline).await?;
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    match agent.call(|reply| AgentMsg::ReadIndex(Vec::new(), reply), Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(bytes)) => rmp_serde::from_slice::<ReadIndex>(&bytes)
            .unwrap_or_else(|error| Err(WireError::internal(format!("malformed answer: {error}")))),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(WireError::new(ErrorCode::Timeout, "the leader gave no read index"))
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

#[cfg(test)]
mod tests {
    use pando_protocol::blob::BlobHash;
    use pando_protocol::kv::bytes;

    use super::*;
    use crate::sim::{member, node_key};

    fn members() -> BTreeMap<u64, MemberNode> {
        (1..=3).map(|id| (id, member(id))).collect()
    }

    fn held(node: u64) -> Command {
        Command::Blob(BlobCommand::Held { hash: BlobHash([7; 32]), node })
    }

    #[test]
    fn a_forward_signed_by_its_sender_opens_to_its_command() {
        let forward = Forward::sign(1, 2, &held(2), &node_key(2)).unwrap();
        assert_eq!(forward.open(&members()).unwrap(), held(2));
    }

    #[test]
    fn a_member_cannot_forward_in_another_members_name() {
        // Node 3 signs with its own key but claims to be node 2.
        let forged = Forward::sign(1, 2, &held(2), &node_key(3)).unwrap();
        let error = forged.open(&members()).unwrap_err();
        assert_eq!(error.code, ErrorCode::Unauthorized);
        assert!(error.message.contains("not the sender's"), "{error}");
    }

    #[test]
    fn a_forward_whose_command_was_changed_after_signing_is_refused() {
        let mut forward = Forward::sign(1, 2, &held(2), &node_key(2)).unwrap();
        forward.command = rmp_serde::to_vec_named(&held(3)).unwrap();
        assert_eq!(forward.open(&members()).unwrap_err().code, ErrorCode::Unauthorized);
        // Nor can it be readdressed: the addressee is signed too.
        let mut forward = Forward::sign(1, 2, &held(2), &node_key(2)).unwrap();
        forward.to = 3;
        assert_eq!(forward.open(&members()).unwrap_err().code, ErrorCode::Unauthorized);
    }

    #[test]
    fn a_node_outside_the_membership_cannot_forward() {
        let forward = Forward::sign(1, 9, &held(9), &node_key(9)).unwrap();
        let error = forward.open(&members()).unwrap_err();
        assert!(error.message.contains("not a member"), "{error}");
    }

    #[test]
    fn a_learner_forwards_only_what_it_says_about_itself() {
        let learner = 4;
        assert!(admit(&held(learner), learner, false).is_ok());
        let release = Command::Blob(BlobCommand::Release { hash: BlobHash([7; 32]), node: learner });
        assert!(admit(&release, learner, false).is_ok());
        // About another node, or a write a client asked for: refused.
        assert_eq!(admit(&held(2), learner, false).unwrap_err().code, ErrorCode::Unauthorized);
        let put = Command::Kv(KvRequest::PutBlob { key: bytes("secret/x"), hash: BlobHash([7; 32]), lease: None });
        assert_eq!(admit(&put, learner, false).unwrap_err().code, ErrorCode::Unauthorized);
        let plugin_write = Command::Plugin(PluginCommand::Kv {
            plugin: "kv-counter".into(),
            request: KvRequest::Delete { key: bytes("counter/x") },
        });
        assert_eq!(admit(&plugin_write, learner, false).unwrap_err().code, ErrorCode::Unauthorized);
        let sealed_write = Command::Plugin(PluginCommand::Sealed {
            plugin: "secrets".into(),
            ops: vec![pando_protocol::plugin::sealed::SealedOp::Delete { key: bytes("k") }],
        });
        assert_eq!(admit(&sealed_write, learner, false).unwrap_err().code, ErrorCode::Unauthorized);
        let unpin = Command::Blob(BlobCommand::Unpin { hash: BlobHash([7; 32]) });
        assert_eq!(admit(&unpin, learner, false).unwrap_err().code, ErrorCode::Unauthorized);
        // A voter serves clients: it forwards all of these.
        for command in [held(3), put, plugin_write, sealed_write, unpin] {
            assert!(admit(&command, 2, true).is_ok(), "{command:?}");
        }
    }

    #[test]
    fn a_voter_forwards_hook_deliveries_and_claims_only_for_itself() {
        let claim = |node| Command::Hook(HookCommand::Claim { name: "audit".into(), node, fence: 0 });
        assert!(admit(&claim(2), 2, true).is_ok());
        assert_eq!(admit(&claim(3), 2, true).unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(admit(&claim(4), 4, false).unwrap_err().code, ErrorCode::Unauthorized, "learners deliver nothing");
        let ack = Command::Hook(HookCommand::Ack { name: "audit".into(), seq: 1, attempt: 1, fence: 1 });
        assert!(admit(&ack, 2, true).is_ok());
        // What a client asks for goes through the client's own request, never a node's forward.
        let create = Command::Hook(HookCommand::Delete { name: "audit".into() });
        assert_eq!(admit(&create, 2, true).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn a_member_forwards_job_claims_for_itself_and_fenced_results_but_no_client_command() {
        let claim = |node| {
            Command::Job(JobCommand::Claim {
                node,
                worker: 0,
                queues: vec!["default".into()],
                most: 1,
                lease_ms: 5_000,
            })
        };
        assert!(admit(&claim(2), 2, true).is_ok());
        assert!(admit(&claim(4), 4, false).is_ok(), "a learner may run jobs");
        assert_eq!(admit(&claim(3), 2, true).unwrap_err().code, ErrorCode::Unauthorized);
        let heartbeat = Command::Job(JobCommand::Heartbeat { id: 1, fence: 1, lease_ms: 5_000 });
        assert!(admit(&heartbeat, 2, true).is_ok());
        let pool =
            |node| Command::Job(JobCommand::Pool { node, workers: 4, queues: vec!["default".into()], lease_ms: 5_000 });
        assert!(admit(&pool(4), 4, false).is_ok(), "a node reports its own pool");
        assert_eq!(admit(&pool(3), 2, true).unwrap_err().code, ErrorCode::Unauthorized);
        let cancel = Command::Job(JobCommand::Cancel { id: 1 });
        assert_eq!(admit(&cancel, 2, true).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn nobody_forwards_what_is_not_node_bookkeeping() {
        let put = Command::Kv(KvRequest::Put { key: bytes("a"), value: bytes("1"), lease: None });
        assert_eq!(admit(&put, 2, true).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn only_a_node_itself_stands_in_its_own_groups() {
        use super::super::session_label;
        assert!(peer_may_join(&session_label(2), &node_group(2)));
        assert!(peer_may_join(&session_label(2), "pando.node.2.hooks"));
        assert!(!peer_may_join(&session_label(2), &node_group(1)));
        assert!(!peer_may_join(&session_label(2), &node_group(21)));
        assert!(!peer_may_join(&session_label(21), &node_group(2)));
        assert!(!peer_may_join("external", &node_group(2)));
        assert!(peer_may_join(&session_label(2), NODES_GROUP));
    }
}
