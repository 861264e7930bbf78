//! What a node does about membership: join an existing cluster with a join ticket (before the supervision tree
//! starts), and, under the tree as the `membership` actor, ask for its promotion once caught up (when its join token
//! said voter), announce a changed address, and keep its ticket file in step with the membership.
//!
//! A node holds no token: it calls its cluster as itself, over connections that authenticate with its own key, and
//! the membership says which key is which node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use pando_actors::raft::RaftHandle;
use pando_actors::supervision::{ActorDetail, Control};
use pando_client::{Client, ClientError, ClientOptions};
use pando_protocol::cluster::{ClusterRequest, ClusterResponse, MemberNode};
use pando_protocol::error::ErrorCode;
use pando_protocol::kv::Bytes;
use pando_protocol::ticket::{Ticket, TicketNode};
use pando_protocol::token::CapabilityToken;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::identity;

/// How long a joining node keeps asking to be promoted.
pub const PROMOTE_WAIT_MS_MAX: u64 = 10 * 60 * 1000;
/// Pause between promotion attempts.
pub const PROMOTE_RETRY_MS: u64 = 300;
/// Timeout of the node's own cluster requests.
const CLUSTER_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Everything a node needs to speak to its cluster as itself.
#[derive(Clone)]
pub struct ClusterIdentity {
    pub node_id: u64,
    pub cluster_id: Vec<u8>,
    pub me: MemberNode,
    /// The node's own secret key: its credential when it calls the cluster.
    pub node_key: [u8; 32],
}

impl ClusterIdentity {
    /// A ticket for `nodes` carrying `token` (`None`: an address book, which authenticates nobody).
    pub fn ticket(&self, nodes: Vec<TicketNode>, token: Option<CapabilityToken>) -> Ticket {
        Ticket { cluster_id: Bytes::from(self.cluster_id.clone()), nodes, token }
    }
}

/// What a successful join hands the new node.
pub struct Joined {
    pub node_id: u64,
    pub cluster_id: Vec<u8>,
    /// What members share to serve (the mesh cookie, plugins' signing keys); it mints no credential.
    pub member_secret: [u8; 32],
    pub members: Vec<TicketNode>,
}

/// Asks the cluster in `join_ticket` to admit `me`, over a connection that authenticates with `node_key` (the key
/// `me` registers): the leader spends one use of the ticket's join token, assigns an id and adds the node as a
/// learner.
pub async fn join(join_ticket: &str, me: MemberNode, node_key: [u8; 32]) -> anyhow::Result<Joined> {
    let options = ClientOptions::new(Duration::from_millis(CLUSTER_REQUEST_TIMEOUT_MS));
    let client = Client::new_as(join_ticket, options, node_key).await.context("bad join ticket")?;
    let response = client.cluster(ClusterRequest::Join { node: me }).await;
    client.close().await;
    match response.context("the cluster refused to let this node join")? {
        ClusterResponse::Joined { node_id, cluster_id, member_secret, members } => {
            let member_secret: [u8; 32] =
                member_secret.as_slice().try_into().context("the cluster sent a malformed member secret")?;
            Ok(Joined { node_id, cluster_id: cluster_id.into_vec(), member_secret, members })
        }
        other => bail!("unexpected answer to join: {other:?}"),
    }
}

/// The members as this node's log has them.
pub(crate) fn members(raft: &RaftHandle) -> Vec<TicketNode> {
    raft.members().into_iter().map(|(node_id, node)| TicketNode { node_id, node }).collect()
}

/// The token the node's `ticket` file carries, if any (the founder's admin token, written on its first start).
pub fn ticket_token(data_dir: &Path) -> Option<CapabilityToken> {
    let text = std::fs::read_to_string(identity::ticket_path(data_dir)).ok()?;
    Ticket::decode(&text).ok()?.token
}

/// Rewrites the `ticket` file for the current members (or just this node before it knows any), keeping the token it
/// carries; answers the ticket without its token (an address book, safe to print).
pub fn write_tickets(data_dir: &Path, identity: &ClusterIdentity, raft: &RaftHandle) -> anyhow::Result<Ticket> {
    let ticket = Ticket { token: ticket_token(data_dir), ..address_book(identity, raft) };
    identity::write_private(&identity::ticket_path(data_dir), ticket.encode().as_bytes())?;
    Ok(Ticket { token: None, ..ticket })
}

/// The ticket naming the current members (or just this node before it knows any), without a token.
pub fn address_book(identity: &ClusterIdentity, raft: &RaftHandle) -> Ticket {
    let mut nodes = members(raft);
    // This node first, as it listens now (a joiner's log may not list it yet): a client given this node's ticket
    // talks to this node first.
    nodes.retain(|node| node.node_id != identity.node_id);
    nodes.insert(0, TicketNode { node_id: identity.node_id, node: identity.me.clone() });
    identity.ticket(nodes, None)
}

/// Runs for the node's lifetime: rewrites the tickets when the membership changes, announces this node's address when
/// the membership has an old one, and (for a node that joined) asks to be promoted until it is a voter.
async fn duties(args: DutiesArgs, voter: Arc<AtomicBool>) {
    let DutiesArgs { data_dir, identity, raft, wants_promotion } = args;
    let mut promoted = !wants_promotion;
    let started = tokio::time::Instant::now();
    let mut last_members = Vec::new();
    loop {
        let current = members(&raft);
        if current != last_members {
            if let Err(error) = write_tickets(&data_dir, &identity, &raft) {
                tracing::warn!(%error, "cannot rewrite tickets");
            }
            last_members = current.clone();
        }
        let mine = current.iter().find(|member| member.node_id == identity.node_id);
        voter.store(raft.is_voter(identity.node_id), Ordering::Relaxed);
        if let Some(member) = mine
            && member.node.addrs != identity.me.addrs
            && let Err(error) = ask(
                &identity,
                &current,
                ClusterRequest::UpdateAddress { node_id: identity.node_id, node: identity.me.clone() },
            )
            .await
        {
            tracing::debug!(%error, "address update not accepted yet");
        }
        if !promoted && mine.is_some() {
            if raft.is_voter(identity.node_id) {
                tracing::info!(node_id = identity.node_id, "this node is a voter");
                promoted = true;
                voter.store(true, Ordering::Relaxed);
            } else if started.elapsed() < Duration::from_millis(PROMOTE_WAIT_MS_MAX) {
                match ask(&identity, &current, ClusterRequest::Promote { node_id: identity.node_id }).await {
                    Ok(_) => {}
                    Err(error) if matches!(&error, ClientError::Wire(wire) if wire.code == ErrorCode::Unavailable) => {
                        tracing::debug!(%error, "not caught up yet");
                    }
                    Err(ClientError::Wire(wire)) if wire.code == ErrorCode::Unauthorized => {
                        // The join token made this node a learner: an admin promotes it (`pando cluster promote`).
                        tracing::info!(node_id = identity.node_id, "a learner until an admin promotes it");
                        promoted = true;
                    }
                    Err(error) => tracing::warn!(%error, "promotion refused"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(PROMOTE_RETRY_MS)).await;
    }
}

/// The membership duties as a supervised actor: the loop runs in a task the actor owns (aborted when it stops, also
/// after a panic), so the node's tree restarts it like any other child.
#[derive(Clone, Copy, Debug, Default)]
pub struct DutiesActor;

#[derive(Clone)]
pub struct DutiesArgs {
    pub data_dir: PathBuf,
    pub identity: ClusterIdentity,
    /// The membership, and whether this node is a voter yet.
    pub raft: RaftHandle,
    /// Whether this node joined and should ask to become a voter.
    pub wants_promotion: bool,
}

pub enum DutiesMsg {
    Control(Control),
}

impl ractor::Message for DutiesMsg {}

impl From<Control> for DutiesMsg {
    fn from(control: Control) -> DutiesMsg {
        DutiesMsg::Control(control)
    }
}

pub struct DutiesState {
    task: tokio::task::JoinHandle<()>,
    voter: Arc<AtomicBool>,
    wants_promotion: bool,
}

impl Drop for DutiesState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Actor for DutiesActor {
    type Msg = DutiesMsg;
    type State = DutiesState;
    type Arguments = DutiesArgs;

    async fn pre_start(&self, _: ActorRef<DutiesMsg>, args: DutiesArgs) -> Result<DutiesState, ActorProcessingErr> {
        let voter = Arc::new(AtomicBool::new(args.raft.is_voter(args.identity.node_id)));
        let wants_promotion = args.wants_promotion;
        let task = tokio::spawn(duties(args, voter.clone()));
        Ok(DutiesState { task, voter, wants_promotion })
    }

    async fn handle(
        &self,
        _: ActorRef<DutiesMsg>,
        message: DutiesMsg,
        state: &mut DutiesState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DutiesMsg::Control(Control::InjectPanic) => panic!("fault injection: membership duties panic on request"),
            DutiesMsg::Control(Control::Status(reply, _)) => {
                let line = match (state.voter.load(Ordering::Relaxed), state.wants_promotion) {
                    (true, _) => "a voter; keeping the tickets in step with the membership",
                    (false, true) => "a learner asking to be promoted",
                    (false, false) => "keeping the tickets in step with the membership",
                };
                let _ = reply.send(ActorDetail::line(line));
            }
        }
        Ok(())
    }
}

/// Sends a cluster request as this node (its key is its credential), to whichever member leads.
async fn ask(
    identity: &ClusterIdentity,
    members: &[TicketNode],
    request: ClusterRequest,
) -> Result<ClusterResponse, ClientError> {
    ask_as(identity, members, request, identity.node_key).await
}

/// Sends a cluster request over connections that authenticate with `key`, to whichever member leads (other members
/// first: this node may be the one whose key is changing).
pub(crate) async fn ask_as(
    identity: &ClusterIdentity,
    members: &[TicketNode],
    request: ClusterRequest,
    key: [u8; 32],
) -> Result<ClusterResponse, ClientError> {
    let others: Vec<TicketNode> = members.iter().filter(|member| member.node_id != identity.node_id).cloned().collect();
    let nodes = if others.is_empty() { members.to_vec() } else { others };
    let ticket = identity.ticket(nodes, None).encode();
    let options = ClientOptions::new(Duration::from_millis(CLUSTER_REQUEST_TIMEOUT_MS));
    let client = Client::new_as(&ticket, options, key).await?;
    let response = client.cluster(request).await;
    client.close().await;
    response
}
