//! The mesh as one supervised unit, and its MeshActor, which keeps one ractor_cluster session open to every other
//! member and none to anyone else.
//!
//! The unit ([`child_spec`]) is a generic one_for_all supervisor over three children, started in this order:
//! `node-server` (ractor_cluster's NodeServer, which owns the sessions), `agent` (this node's
//! [`NodeAgent`]) and `sessions` (the MeshActor, which dials, accepts and prunes sessions through the NodeServer).
//! If any of them ends, all three restart: a new NodeServer holds no sessions, a new agent must rejoin the groups,
//! and the MeshActor caches the NodeServer it was started with. The sessions come back on the next reconcile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::Instant;

use iroh::Endpoint;
use iroh::endpoint::Connection;
use pando_protocol::alpn;
use pando_protocol::cluster::{MemberNode, MeshSession};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::task::JoinHandle;

use super::agent::NodeAgent;
use super::handle::MeshHandle;
use super::sim_link::SimMeshStream;
use super::stream::MeshStream;
use super::{
    MESH_CONNECT_TIMEOUT_MS, MESH_FRAME_BYTES_MAX, MESH_PREAMBLE, MESH_PREAMBLE_TIMEOUT_MS, MESH_RECONCILE_INTERVAL_MS,
    MESH_REDIAL_BACKOFF_MS_MAX, MESH_REDIAL_BACKOFF_MS_MIN, MESH_RESTART_PERIOD_MS, MESH_RESTARTS_MAX,
    MESH_SESSIONS_PER_PEER_MAX, node_of_label, session_label,
};
use crate::live::Live;
use crate::raft::RaftHandle;
use crate::raft::transport::endpoint_addr;
use crate::supervision::{
    ActorDetail, ChildSpec, Control, Restart, StartFn, Strategy, Supervisor, SupervisorArgs, SupervisorOptions,
};

/// How long the mesh waits for the NodeServer to list its sessions.
const SESSIONS_QUERY_TIMEOUT_MS: u64 = 2_000;

/// The ractor_cluster cookie of a cluster: derived from its secret key, so only holders of the key (members) know it.
pub fn cookie(cluster_secret_key: &[u8; 32]) -> String {
    let derived = blake3::derive_key("pando 2026-11 actor mesh cookie v1", cluster_secret_key);
    derived.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MeshActor;

/// The mesh of node `args.node_id` as a child `id` of the node's tree: the one_for_all supervisor of its NodeServer,
/// its agent and its MeshActor.
pub fn child_spec(id: &str, args: MeshArgs) -> ChildSpec {
    let node_server = Live::new("actor mesh NodeServer");
    let children = vec![
        ChildSpec::uncontrolled("node-server", Restart::Permanent, start_node_server(&args, node_server.clone())),
        ChildSpec::uncontrolled("agent", Restart::Permanent, start_agent(&args)),
        ChildSpec::new("sessions", Restart::Permanent, MeshActor, SessionsArgs { mesh: args, node_server }),
    ];
    let options =
        SupervisorOptions::new(Strategy::OneForAll, MESH_RESTARTS_MAX, Duration::from_millis(MESH_RESTART_PERIOD_MS));
    ChildSpec::new(id, Restart::Permanent, Supervisor, SupervisorArgs { name: "mesh".into(), options, children })
}

/// Starts ractor_cluster's NodeServer and publishes it for the MeshActor started after it.
fn start_node_server(args: &MeshArgs, published: Live<ActorRef<NodeServerMessage>>) -> StartFn {
    let (node_id, cookie, scope) = (args.node_id, args.cookie.clone(), args.scope());
    Arc::new(move |supervisor: ActorCell| {
        // ractor_cluster always opens a TCP listener; it is bound to loopback and every session it would accept still
        // needs the cookie. Pando's sessions all arrive over iroh (or the simulated network).
        let server = NodeServer::new(
            0,
            cookie.clone(),
            session_label(node_id),
            "pando".into(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(MESH_FRAME_BYTES_MAX)
        .with_scope(scope.clone())
        .with_remote_group_filter(super::agent::peer_may_join);
        let published = published.clone();
        Box::pin(async move {
            let (node_server, _) = Actor::spawn_linked(None, server, (), supervisor).await?;
            published.publish(node_server.clone());
            Ok(node_server.get_cell())
        })
    })
}

fn start_agent(args: &MeshArgs) -> StartFn {
    let (node_id, scope, raft) = (args.node_id, args.scope(), args.raft.clone());
    Arc::new(move |supervisor: ActorCell| {
        let agent = NodeAgent { node_id, scope: scope.clone(), raft: raft.clone() };
        Box::pin(async move {
            let (agent, _) = Actor::spawn_linked(None, agent, (), supervisor).await?;
            Ok(agent.get_cell())
        })
    })
}

/// The MeshActor's arguments: the mesh's, and the NodeServer its sibling published.
#[derive(Clone)]
pub struct SessionsArgs {
    mesh: MeshArgs,
    node_server: Live<ActorRef<NodeServerMessage>>,
}

#[derive(Clone)]
pub struct MeshArgs {
    pub node_id: u64,
    pub net: MeshNet,
    /// Who the members are (sessions follow the membership), and where forwarded proposals go.
    pub raft: RaftHandle,
    /// Where the running mesh is published.
    pub handle: MeshHandle,
    pub cookie: String,
}

impl MeshArgs {
    fn scope(&self) -> String {
        let simulation = match &self.net {
            MeshNet::Iroh(_) => None,
            MeshNet::Simulated(net) => Some(net.id()),
        };
        super::scope(self.node_id, simulation)
    }

    /// The node's key: its endpoint's, or in the simulator the one [`crate::sim::node_key`] derives.
    fn node_key(&self) -> iroh::SecretKey {
        match &self.net {
            MeshNet::Iroh(endpoint) => endpoint.secret_key().clone(),
            MeshNet::Simulated(_) => crate::sim::node_key(self.node_id),
        }
    }
}

/// What the mesh's session streams run on.
#[derive(Clone)]
pub enum MeshNet {
    /// The node's endpoint: the mesh dials on it, and the RPC gateway accepts for it ([`accept_peer`]).
    Iroh(Endpoint),
    /// The simulated network: the mesh dials and accepts on it.
    Simulated(crate::raft::sim_network::SimNet),
}

/// A session stream a member opened to this node, authenticated as that member.
pub enum PeerStream {
    Iroh(MeshStream),
    Simulated(SimMeshStream),
}

impl PeerStream {
    /// Refuses the session: the stream (and, over iroh, its connection) closes with `reason`.
    fn refuse(self, reason: &'static str) {
        match self {
            PeerStream::Iroh(stream) => stream.connection.close(7u32.into(), reason.as_bytes()),
            PeerStream::Simulated(stream) => stream.close(),
        }
    }

    fn into_cluster_stream(self) -> Box<dyn ractor_cluster::ClusterBidiStream> {
        match self {
            PeerStream::Iroh(stream) => Box::new(stream),
            PeerStream::Simulated(stream) => Box::new(stream),
        }
    }
}

pub enum MeshMsg {
    /// Compare the sessions with the membership: dial missing members, stop sessions of non-members.
    Reconcile,
    /// A dial finished.
    Dialed {
        node_id: u64,
        outcome: Result<(), String>,
    },
    /// A member dialled us and opened its session stream (already authenticated by [`accept_peer`]).
    Incoming {
        node_id: u64,
        stream: PeerStream,
    },
    Status(RpcReplyPort<MeshStatus>),
    /// Status for `pando actors`, and fault injection (a panic in the handler).
    Control(Control),
}

impl ractor::Message for MeshMsg {}

impl From<Control> for MeshMsg {
    fn from(control: Control) -> MeshMsg {
        MeshMsg::Control(control)
    }
}

#[derive(Clone, Debug, Default)]
pub struct MeshStatus {
    pub sessions: Vec<MeshSession>,
    /// Other members with no session.
    pub unconnected: Vec<u64>,
}

pub struct MeshState {
    args: MeshArgs,
    node_server: ActorRef<NodeServerMessage>,
    dials: BTreeMap<u64, JoinHandle<()>>,
    /// Per member: when it may be dialled next, and the wait after the next failure.
    backoff: BTreeMap<u64, (Instant, Duration)>,
    /// Sessions per member at the last reconcile, to bound what one member may open.
    sessions_per_peer: BTreeMap<u64, usize>,
    reconcile_timer: JoinHandle<()>,
    /// In the simulator: the task taking session streams from the network.
    sim_acceptor: Option<JoinHandle<()>>,
    me: ActorRef<MeshMsg>,
}

impl Drop for MeshState {
    /// A panicking MeshActor skips `post_stop`: its dials and timer must end with it all the same. (Its siblings,
    /// the NodeServer with the sessions and the agent, are restarted with it by their one_for_all supervisor.)
    fn drop(&mut self) {
        self.reconcile_timer.abort();
        if let Some(acceptor) = &self.sim_acceptor {
            acceptor.abort();
        }
        for dial in self.dials.values() {
            dial.abort();
        }
        self.args.handle.retract(&self.me);
    }
}

impl Actor for MeshActor {
    type Msg = MeshMsg;
    type State = MeshState;
    type Arguments = SessionsArgs;

    async fn pre_start(&self, myself: ActorRef<MeshMsg>, args: SessionsArgs) -> Result<MeshState, ActorProcessingErr> {
        let SessionsArgs { mesh: args, node_server } = args;
        // Started after it by a one_for_all supervisor: the NodeServer published here is the live one.
        let node_server = node_server.get()?;
        let reconcile_timer =
            myself.send_interval(Duration::from_millis(MESH_RECONCILE_INTERVAL_MS), || MeshMsg::Reconcile);
        args.handle.publish(myself.clone(), args.scope(), args.node_key());
        let sim_acceptor = match &args.net {
            MeshNet::Iroh(_) => None,
            MeshNet::Simulated(net) => Some(tokio::spawn(accept_simulated(
                net.mesh_listener(args.node_id),
                args.raft.clone(),
                args.handle.clone(),
            ))),
        };
        let _ = myself.cast(MeshMsg::Reconcile);
        Ok(MeshState {
            args,
            node_server,
            dials: BTreeMap::new(),
            backoff: BTreeMap::new(),
            sessions_per_peer: BTreeMap::new(),
            reconcile_timer,
            sim_acceptor,
            me: myself,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MeshMsg>,
        message: MeshMsg,
        state: &mut MeshState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MeshMsg::Reconcile => reconcile(&myself, state).await,
            MeshMsg::Dialed { node_id, outcome } => {
                state.dials.remove(&node_id);
                let (_, wait) = state
                    .backoff
                    .get(&node_id)
                    .copied()
                    .unwrap_or((Instant::now(), Duration::from_millis(MESH_REDIAL_BACKOFF_MS_MIN)));
                // A dial that worked can still end in a refused handshake; the next dial waits either way, and the
                // wait resets once a reconcile sees the session.
                state.backoff.insert(
                    node_id,
                    (Instant::now() + wait, (wait * 2).min(Duration::from_millis(MESH_REDIAL_BACKOFF_MS_MAX))),
                );
                match outcome {
                    Ok(()) => tracing::debug!(peer = node_id, "actor session opened"),
                    Err(error) => tracing::debug!(peer = node_id, %error, "cannot open an actor session"),
                }
            }
            MeshMsg::Incoming { node_id, stream } => {
                let held = state.sessions_per_peer.get(&node_id).copied().unwrap_or(0);
                if held >= MESH_SESSIONS_PER_PEER_MAX {
                    tracing::warn!(peer = node_id, held, "refusing another actor session from a member");
                    stream.refuse("too many actor sessions");
                    return Ok(());
                }
                state.sessions_per_peer.insert(node_id, held + 1);
                state.node_server.cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: stream.into_cluster_stream(),
                    is_server: true,
                })?;
            }
            MeshMsg::Status(reply) => {
                let node_server = state.node_server.clone();
                let others: BTreeSet<u64> =
                    state.args.raft.members().into_keys().filter(|id| *id != state.args.node_id).collect();
                // Answered from a task: the mesh keeps reconciling while the NodeServer is asked.
                tokio::spawn(async move {
                    let sessions = sessions(&node_server).await.unwrap_or_default();
                    let connected: BTreeSet<u64> =
                        sessions.values().filter_map(|session| node_of_label(&session.peer_addr)).collect();
                    let mut report: Vec<MeshSession> = sessions
                        .values()
                        .map(|session| MeshSession {
                            node_id: node_of_label(&session.peer_addr),
                            peer_name: session.peer_name.as_ref().map(|name| name.name.clone()),
                            incoming: session.is_server,
                        })
                        .collect();
                    report.sort_by_key(|session| session.node_id);
                    let unconnected = others.difference(&connected).copied().collect();
                    let _ = reply.send(MeshStatus { sessions: report, unconnected });
                });
            }
            MeshMsg::Control(Control::InjectPanic) => panic!("fault injection: mesh actor told to panic"),
            MeshMsg::Control(Control::Status(reply, _)) => {
                let sessions: usize = state.sessions_per_peer.values().sum();
                let _ = reply.send(ActorDetail::line(format!(
                    "{sessions} sessions to {} members, {} dials in progress",
                    state.sessions_per_peer.len(),
                    state.dials.len()
                )));
            }
        }
        Ok(())
    }
}

async fn sessions(node_server: &ActorRef<NodeServerMessage>) -> Option<HashMap<u64, NodeServerSessionInformation>> {
    let timeout = Some(Duration::from_millis(SESSIONS_QUERY_TIMEOUT_MS));
    match node_server.call(NodeServerMessage::GetSessions, timeout).await {
        Ok(ractor::rpc::CallResult::Success(sessions)) => Some(sessions),
        _ => None,
    }
}

async fn reconcile(myself: &ActorRef<MeshMsg>, state: &mut MeshState) {
    let me = state.args.node_id;
    let members = state.args.raft.members();
    if members.is_empty() {
        // Raft is restarting or has no membership yet: keep what we have.
        return;
    }
    let Some(sessions) = sessions(&state.node_server).await else {
        tracing::warn!("the actor mesh's NodeServer did not list its sessions");
        return;
    };
    let mut per_peer: BTreeMap<u64, usize> = BTreeMap::new();
    // In session order, not hash order: a simulated run must stop sessions in the same order every time.
    let sessions: BTreeMap<u64, NodeServerSessionInformation> = sessions.into_iter().collect();
    for session in sessions.values() {
        match node_of_label(&session.peer_addr) {
            Some(node_id) if node_id != me && members.contains_key(&node_id) => {
                *per_peer.entry(node_id).or_default() += 1;
            }
            // Removed from the cluster (or never a member): its actors leave our process groups with the session.
            other => {
                tracing::info!(peer = ?other, "stopping the actor session of a node that is not a member");
                session.actor.stop(Some("not a member".into()));
            }
        }
    }
    tracing::trace!(
        me,
        members = ?members.keys().collect::<Vec<_>>(),
        sessions = ?per_peer,
        dialling = ?state.dials.keys().collect::<Vec<_>>(),
        "actor mesh reconcile"
    );
    state.backoff.retain(|node_id, _| members.contains_key(node_id) && !per_peer.contains_key(node_id));
    state.sessions_per_peer = per_peer;
    let now = Instant::now();
    for (node_id, node) in members {
        // The member with the lower id dials, so a pair never races two sessions into existence.
        if node_id <= me || state.sessions_per_peer.contains_key(&node_id) || state.dials.contains_key(&node_id) {
            continue;
        }
        if state.backoff.get(&node_id).is_some_and(|(next, _)| *next > now) {
            continue;
        }
        let net = state.args.net.clone();
        let me = state.args.node_id;
        let node_server = state.node_server.clone();
        let myself = myself.clone();
        let task = tokio::spawn(async move {
            let outcome = dial(&net, me, node_id, &node, &node_server).await;
            let _ = myself.cast(MeshMsg::Dialed { node_id, outcome });
        });
        state.dials.insert(node_id, task);
    }
}

/// Opens a session stream to a member and hands it to the NodeServer, which runs the ractor_cluster handshake.
async fn dial(
    net: &MeshNet,
    me: u64,
    node_id: u64,
    node: &MemberNode,
    node_server: &ActorRef<NodeServerMessage>,
) -> Result<(), String> {
    let open = async {
        match net {
            MeshNet::Iroh(endpoint) => {
                let addr = endpoint_addr(node_id, node)?;
                let connection =
                    endpoint.connect(addr, alpn::ACTORS).await.map_err(|error| format!("cannot connect: {error}"))?;
                let (mut send, recv) =
                    connection.open_bi().await.map_err(|error| format!("cannot open the session stream: {error}"))?;
                send.write_all(MESH_PREAMBLE).await.map_err(|error| format!("cannot send the preamble: {error}"))?;
                Ok::<_, String>(PeerStream::Iroh(MeshStream { connection, send, recv, label: session_label(node_id) }))
            }
            MeshNet::Simulated(net) => Ok(PeerStream::Simulated(net.dial_mesh(me, node_id).await)),
        }
    };
    let stream = tokio::time::timeout(Duration::from_millis(MESH_CONNECT_TIMEOUT_MS), open)
        .await
        .map_err(|_| format!("opening a session to node {node_id} timed out"))??;
    node_server
        .cast(NodeServerMessage::ConnectionOpenedExternal { stream: stream.into_cluster_stream(), is_server: false })
        .map_err(|error| format!("the NodeServer is gone: {error}"))
}

/// The member of the current membership whose identity is `is_peer`, if any.
fn member_id(raft: &RaftHandle, is_peer: impl Fn(u64, &MemberNode) -> bool) -> Option<u64> {
    raft.members().into_iter().find(|(node_id, node)| is_peer(*node_id, node)).map(|(node_id, _)| node_id)
}

/// Takes the session streams members open to this node over the simulated network, which names the dialler as
/// iroh's TLS handshake does in production; the same membership check as [`accept_peer`] applies.
async fn accept_simulated(mut listener: super::sim_link::SimMeshListener, raft: RaftHandle, mesh: MeshHandle) {
    while let Some((from, stream)) = listener.accept().await {
        if member_id(&raft, |node_id, _| node_id == from).is_none() {
            tracing::warn!(peer = from, "refusing an actor session from a node that is not a member");
            stream.close();
            continue;
        }
        let Ok(mesh) = mesh.actor() else {
            stream.close();
            continue;
        };
        if let Err(error) = mesh.cast(MeshMsg::Incoming { node_id: from, stream: PeerStream::Simulated(stream) }) {
            tracing::debug!(peer = from, %error, "actor mesh stopped while a session arrived");
        }
    }
}

/// Serves one incoming `pando/actors/1` connection: only a current member is accepted, and its session is labelled
/// with the node id its iroh identity has in the membership.
pub async fn accept_peer(connection: Connection, raft: RaftHandle, mesh: MeshHandle) {
    let remote = connection.remote_id();
    let Some(node_id) = member_id(&raft, |_, node| node.public_key.as_slice() == remote.as_bytes()) else {
        tracing::warn!(%remote, "refusing an actor session from a node that is not a member");
        connection.close(5u32.into(), b"not a member");
        return;
    };
    let Ok(mesh) = mesh.actor() else {
        connection.close(2u32.into(), b"actor mesh not running");
        return;
    };
    let opened = async {
        let (send, mut recv) = connection.accept_bi().await.map_err(|error| error.to_string())?;
        let mut preamble = [0u8; MESH_PREAMBLE.len()];
        recv.read_exact(&mut preamble).await.map_err(|error| error.to_string())?;
        if &preamble != MESH_PREAMBLE {
            return Err("unknown actor session preamble".to_string());
        }
        Ok((send, recv))
    };
    let (send, recv) = match tokio::time::timeout(Duration::from_millis(MESH_PREAMBLE_TIMEOUT_MS), opened).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => {
            tracing::debug!(peer = node_id, %error, "actor session stream refused");
            connection.close(6u32.into(), b"bad actor session stream");
            return;
        }
        Err(_) => {
            connection.close(6u32.into(), b"actor session stream not opened in time");
            return;
        }
    };
    let stream =
        PeerStream::Iroh(MeshStream { connection: connection.clone(), send, recv, label: session_label(node_id) });
    if mesh.cast(MeshMsg::Incoming { node_id, stream }).is_err() {
        connection.close(2u32.into(), b"actor mesh not running");
    }
}
