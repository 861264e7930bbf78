//! What a node does about membership: join an existing cluster (before the supervision tree starts), and, under the
//! tree as the `membership` actor, promote itself once it has caught up, announce a changed address, and keep its
//! ticket files in step with the membership.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use pando_actors::raft::RaftHandle;
use pando_actors::supervision::{ActorDetail, Control};
use pando_client::{Client, ClientError, ClientOptions};
use pando_protocol::cluster::{ClusterRequest, ClusterResponse, MemberNode};
use pando_protocol::error::ErrorCode;
use pando_protocol::kv::Bytes;
use pando_protocol::ticket::{Ticket, TicketNode};
use pando_protocol::token::{Capability, CapabilityToken, TokenClaims};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::identity;

/// How long a joining node keeps asking to be promoted.
pub const PROMOTE_WAIT_MS_MAX: u64 = 10 * 60 * 1000;
/// Pause between promotion attempts.
pub const PROMOTE_RETRY_MS: u64 = 300;
/// How long a join ticket's token stays valid.
pub const JOIN_TOKEN_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Timeout of the node's own cluster requests.
const CLUSTER_REQUEST_TIMEOUT_MS: u64 = 10_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// Everything a node needs to speak for the cluster.
#[derive(Clone)]
pub struct ClusterIdentity {
    pub node_id: u64,
    pub cluster_id: Vec<u8>,
    pub signing_key: SigningKey,
    pub me: MemberNode,
}

impl ClusterIdentity {
    fn token(&self, subject: &str, capabilities: Vec<Capability>, expires_at_ms: Option<u64>) -> CapabilityToken {
        CapabilityToken::sign(
            &TokenClaims {
                cluster_id: Bytes::from(self.cluster_id.clone()),
                subject: subject.into(),
                capabilities,
                issued_at_ms: now_ms(),
                expires_at_ms,
            },
            &self.signing_key,
        )
    }

    fn ticket(&self, nodes: Vec<TicketNode>, token: CapabilityToken) -> Ticket {
        Ticket {
            cluster_id: Bytes::from(self.cluster_id.clone()),
            cluster_key: Bytes::from(self.signing_key.verifying_key().to_bytes().to_vec()),
            nodes,
            token: Some(token),
        }
    }

    /// The client ticket (admin token) for these nodes.
    pub fn client_ticket(&self, nodes: Vec<TicketNode>) -> Ticket {
        self.ticket(nodes, self.token("admin", vec![Capability::All], None))
    }

    /// A ticket that only lets its holder join.
    pub fn join_ticket(&self, nodes: Vec<TicketNode>) -> Ticket {
        self.ticket(nodes, self.token("joiner", vec![Capability::ClusterJoin], Some(now_ms() + JOIN_TOKEN_TTL_MS)))
    }
}

/// What a successful join hands the new node.
pub struct Joined {
    pub node_id: u64,
    pub cluster_id: Vec<u8>,
    pub cluster_secret_key: [u8; 32],
    pub members: Vec<TicketNode>,
}

/// Asks the cluster in `join_ticket` to admit `me`; the leader assigns an id and adds it as a learner.
pub async fn join(join_ticket: &str, me: MemberNode) -> anyhow::Result<Joined> {
    let options = ClientOptions { timeout: Duration::from_millis(CLUSTER_REQUEST_TIMEOUT_MS) };
    let client = Client::new(join_ticket, options).await.context("bad join ticket")?;
    let response = client.cluster(ClusterRequest::Join { node: me }).await;
    client.close().await;
    match response.context("the cluster refused to let this node join")? {
        ClusterResponse::Joined { node_id, cluster_id, cluster_secret_key, members } => {
            let cluster_secret_key: [u8; 32] =
                cluster_secret_key.as_slice().try_into().context("the cluster sent a malformed key")?;
            Ok(Joined { node_id, cluster_id: cluster_id.into_vec(), cluster_secret_key, members })
        }
        other => bail!("unexpected answer to join: {other:?}"),
    }
}

/// The members as this node's log has them.
fn members(raft: &RaftHandle) -> Vec<TicketNode> {
    raft.members().into_iter().map(|(node_id, node)| TicketNode { node_id, node }).collect()
}

/// Writes `ticket` and `join-ticket` for the current members (or just this node before it knows any).
pub fn write_tickets(data_dir: &Path, identity: &ClusterIdentity, raft: &RaftHandle) -> anyhow::Result<String> {
    let mut nodes = members(raft);
    // This node first, as it listens now (a joiner's log may not list it yet): a client given this node's ticket
    // talks to this node first.
    nodes.retain(|node| node.node_id != identity.node_id);
    nodes.insert(0, TicketNode { node_id: identity.node_id, node: identity.me.clone() });
    let ticket = identity.client_ticket(nodes.clone()).encode();
    identity::write_private(&identity::ticket_path(data_dir), ticket.as_bytes())?;
    identity::write_private(&identity::join_ticket_path(data_dir), identity.join_ticket(nodes).encode().as_bytes())?;
    Ok(ticket)
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
            DutiesMsg::Control(Control::Status(reply)) => {
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

/// Sends a cluster request with this node's own admin token, to whichever member leads.
async fn ask(
    identity: &ClusterIdentity,
    members: &[TicketNode],
    request: ClusterRequest,
) -> Result<ClusterResponse, ClientError> {
    let others: Vec<TicketNode> = members.iter().filter(|member| member.node_id != identity.node_id).cloned().collect();
    let nodes = if others.is_empty() { members.to_vec() } else { others };
    let ticket = identity.client_ticket(nodes).encode();
    let client =
        Client::new(&ticket, ClientOptions { timeout: Duration::from_millis(CLUSTER_REQUEST_TIMEOUT_MS) }).await?;
    let response = client.cluster(request).await;
    client.close().await;
    response
}
