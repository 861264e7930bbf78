//! The RaftActor: owns the openraft instance, drains concurrent proposals into batched `client_write`s (group commit)
//! and answers each command with its own result.
//!
//! A proposal that finds nothing waiting and fewer than [`PROPOSALS_IN_FLIGHT_MAX`] batches in flight is written by its
//! caller's own task and never reaches the actor (the direct path, [`super::batch`]); the rest wait in the actor's
//! bounded queue and leave together in the next batch, so under load one log append (one fsync) carries many client
//! writes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandOutput, CommandResult};
use pando_protocol::coord::CoordRequest;
use pando_protocol::error::{ErrorCode, ErrorDetail, WireError};
use pando_protocol::limits::{PROPOSAL_BYTES_MAX, REQUEST_TIMEOUT_MS_MAX};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use super::batch::{Slots, write_batch};
use super::handle::{RaftCore, RaftHandle, StartupLog};
use super::transport::RaftTransport;
use super::type_config::{NodeId, Raft};
use crate::clock::Clock;
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, Control};

pub use super::batch::{PROPOSAL_WAIT_MS_MAX, PROPOSALS_IN_FLIGHT_MAX};
/// Most commands in one batch (one log entry).
pub const PROPOSAL_BATCH_COUNT_MAX: usize = 1024;
/// Most proposals waiting for a batch; beyond this proposals are refused with `BUSY`.
pub const PROPOSALS_PENDING_COUNT_MAX: usize = 16 * 1024;
/// How often the leader checks whether a lease deadline has passed (and proposes a tick to expire it).
pub const EXPIRY_CHECK_INTERVAL_MS: u64 = 250;
/// How long a previous Raft instance gets to shut down when the actor restarts.
pub const RAFT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct RaftActor;

#[derive(Clone)]
pub struct RaftArgs {
    pub node_id: NodeId,
    pub config: Arc<openraft::Config>,
    /// Members to initialise the cluster with when the log is empty (first start of the first node).
    pub bootstrap: Option<BTreeMap<NodeId, MemberNode>>,
    /// Where each new Raft core is published.
    pub handle: RaftHandle,
    /// The log and state machine the core runs on.
    pub storage: StorageHandle,
    /// What proposals are stamped with.
    pub clock: Clock,
    pub network: RaftTransport,
}

pub enum RaftMsg {
    /// Replicate `command` and answer with its result once applied.
    Propose {
        command: Command,
        reply: RpcReplyPort<CommandResult>,
    },
    /// A batch's in-flight slot is free again while proposals wait (sent by the slot, [`super::batch::Slot`]).
    SlotFreed,
    Status(RpcReplyPort<RaftActorStatus>),
    /// openraft stopped with a fatal error.
    Fatal(String),
    /// Status for `pando actors`, and fault injection (a panic inside the handler, as a bug would).
    Control(Control),
    /// On the leader: propose a tick if a lease deadline has passed, so leases expire on a quiet cluster too.
    ExpiryCheck,
}

impl ractor::Message for RaftMsg {}

impl From<Control> for RaftMsg {
    fn from(control: Control) -> RaftMsg {
        RaftMsg::Control(control)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RaftActorStatus {
    pub node_id: NodeId,
    pub pending_count: usize,
    pub in_flight_count: usize,
    pub batches_total: u64,
    /// Batches of one proposal its caller wrote directly, among `batches_total`.
    pub direct_total: u64,
    pub commands_total: u64,
}

pub struct RaftState {
    node_id: NodeId,
    raft: Raft,
    pending: VecDeque<(Command, RpcReplyPort<CommandResult>)>,
    /// Shared with the direct path (published in the [`RaftCore`]).
    slots: Arc<Slots>,
    storage: StorageHandle,
    clock: Clock,
    last_tick_at: Option<tokio::time::Instant>,
    joint: super::joint::JointWatch,
}

impl Actor for RaftActor {
    type Msg = RaftMsg;
    type State = RaftState;
    type Arguments = RaftArgs;

    async fn pre_start(&self, myself: ActorRef<RaftMsg>, args: RaftArgs) -> Result<RaftState, ActorProcessingErr> {
        // A restarted actor must not run a second Raft core over the same storage.
        if let Some(previous) = args.handle.take() {
            let shutdown =
                tokio::time::timeout(Duration::from_millis(RAFT_SHUTDOWN_TIMEOUT_MS), previous.raft.shutdown());
            if shutdown.await.is_err() {
                tracing::warn!("previous raft instance did not shut down in time");
            }
        }
        let stores = args.storage.stores()?;
        let started_with = {
            use openraft::storage::RaftLogStorage as _;
            let mut log = stores.log.clone();
            let state = log.get_log_state().await?;
            let vote = log.read_vote().await?;
            // A leader never resumes its leadership after a restart (openraft 0.9 would, from a committed vote of its
            // own): a leader's entries are replicated before its own copy is durable, so a crash may take entries
            // from its log that followers hold under the same leader id, and a resumed leadership would write other
            // entries under those ids. Forgetting that the vote was granted makes this node a follower that stands
            // for a new term; it grants no vote it would have refused (see `storage::log_store`).
            if let Some(vote) = vote.filter(|vote| vote.is_committed() && vote.leader_id().node_id == args.node_id) {
                let demoted = openraft::Vote::new(vote.leader_id().term, args.node_id);
                log.save_vote(&demoted).await?;
                tracing::info!(term = vote.leader_id().term, "restarted as a follower of the leadership it held");
            }
            let leader = vote.map(|vote| *vote.leader_id()).unwrap_or_default();
            StartupLog { leader, last_index: state.last_log_id.map(|id| id.index) }
        };
        let raft = Raft::new(args.node_id, args.config.clone(), args.network.clone(), stores.log, stores.state_machine)
            .await?;
        if let Some(members) = &args.bootstrap {
            match raft.initialize(members.clone()).await {
                Ok(()) => tracing::info!(node_id = args.node_id, "initialised a new cluster"),
                Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                    tracing::debug!("cluster already initialised");
                }
                Err(error) => return Err(error.into()),
            }
        }
        let metrics_changed = Arc::new(tokio::sync::Notify::new());
        let reads = super::read_rounds::ReadRounds::start(raft.clone());
        let slots = Arc::new(Slots::default());
        let core = RaftCore {
            raft: raft.clone(),
            actor: myself.clone(),
            started_with,
            metrics_changed,
            reads,
            slots: slots.clone(),
            clock: args.clock,
        };
        let metrics_changed = core.metrics_changed.clone();
        args.handle.publish(core);
        let myself_for_ticks = myself.clone();
        // The one watcher of openraft's metrics: it wakes every `RaftCore::wait_metrics` in arrival order. openraft
        // stops by itself on a fatal error (a storage failure, a panic in its core); that becomes a failure of this
        // actor, so the supervisor restarts it instead of leaving a node that answers UNAVAILABLE.
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                metrics_changed.notify_waiters();
                if let Err(fatal) = &metrics.borrow().running_state {
                    let _ = myself.cast(RaftMsg::Fatal(fatal.to_string()));
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        myself_ticks(&myself_for_ticks);
        Ok(RaftState {
            node_id: args.node_id,
            raft,
            pending: VecDeque::new(),
            slots,
            storage: args.storage.clone(),
            clock: args.clock,
            last_tick_at: None,
            joint: Default::default(),
        })
    }

    async fn post_stop(&self, _myself: ActorRef<RaftMsg>, state: &mut RaftState) -> Result<(), ActorProcessingErr> {
        for (_, reply) in state.pending.drain(..) {
            let _ = reply.send(Err(WireError::new(ErrorCode::Unavailable, "node is shutting down")));
        }
        state.slots.set_pending(0);
        if tokio::time::timeout(Duration::from_millis(RAFT_SHUTDOWN_TIMEOUT_MS), state.raft.shutdown()).await.is_err() {
            tracing::warn!("raft did not shut down in time");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RaftMsg>,
        message: RaftMsg,
        state: &mut RaftState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RaftMsg::Propose { command, reply } => {
                if state.pending.len() >= PROPOSALS_PENDING_COUNT_MAX {
                    let _ = reply.send(Err(WireError::new(ErrorCode::Busy, "too many writes waiting, retry later")));
                    return Ok(());
                }
                if crate::sim::planted_bug(crate::sim::PlantedBug::AckBeforeCommit)
                    && matches!(command, Command::Kv(pando_protocol::kv::KvRequest::Put { lease: None, .. }))
                    && state.raft.metrics().borrow().current_leader == Some(state.node_id)
                {
                    // The planted bug: the leader acknowledges a write when it takes it, before the log commits it.
                    let _ = reply.send(Ok(CommandOutput::Kv(pando_protocol::kv::KvResponse::Written { revision: 0 })));
                    let (ignored, _) = ractor::concurrency::oneshot();
                    state.pending.push_back((command, RpcReplyPort::from(ignored)));
                    flush(&myself, state);
                    return Ok(());
                }
                state.pending.push_back((command, reply));
                flush(&myself, state);
            }
            RaftMsg::SlotFreed => flush(&myself, state),
            RaftMsg::Fatal(error) => return Err(format!("raft stopped: {error}").into()),
            RaftMsg::Control(Control::InjectPanic) => panic!("fault injection: raft actor panics on request"),
            RaftMsg::Control(Control::Status(reply, _)) => {
                let _ = reply.send(ActorDetail::line(format!(
                    "{} waiting, {} batches in flight, {} batches ({} written directly) and {} commands so far",
                    state.pending.len(),
                    state.slots.in_flight(),
                    state.slots.batches_total(),
                    state.slots.direct_total(),
                    state.slots.commands_total()
                )));
            }
            RaftMsg::ExpiryCheck => {
                expiry_check(&myself, state);
                state.joint.check(&state.raft);
            }
            RaftMsg::Status(reply) => {
                let _ = reply.send(RaftActorStatus {
                    node_id: state.node_id,
                    pending_count: state.pending.len(),
                    in_flight_count: state.slots.in_flight(),
                    batches_total: state.slots.batches_total(),
                    direct_total: state.slots.direct_total(),
                    commands_total: state.slots.commands_total(),
                });
            }
        }
        Ok(())
    }
}

/// Sends the actor an [`RaftMsg::ExpiryCheck`] every [`EXPIRY_CHECK_INTERVAL_MS`] for as long as it lives.
fn myself_ticks(myself: &ActorRef<RaftMsg>) {
    myself.send_interval(Duration::from_millis(EXPIRY_CHECK_INTERVAL_MS), || RaftMsg::ExpiryCheck);
}

/// On the leader, when the earliest lease deadline is behind its clock, queues a tick (at most one per interval).
fn expiry_check(myself: &ActorRef<RaftMsg>, state: &mut RaftState) {
    // The state, not `current_leader`: a node that stepped down still names itself from its committed vote.
    if state.raft.metrics().borrow().state != openraft::ServerState::Leader {
        return;
    }
    if state.last_tick_at.is_some_and(|at| at.elapsed() < Duration::from_millis(EXPIRY_CHECK_INTERVAL_MS)) {
        return;
    }
    let Ok(reader) = state.storage.reader() else { return };
    let due = match reader.lease_deadline() {
        Ok(deadline) => deadline.is_some_and(|deadline| deadline <= state.clock.now_ms()),
        Err(fault) => {
            tracing::warn!(%fault, "cannot read the next lease deadline");
            return;
        }
    };
    if due && state.pending.len() < PROPOSALS_PENDING_COUNT_MAX {
        state.last_tick_at = Some(tokio::time::Instant::now());
        // Nobody waits for the answer: the tick's effect is the expiry it triggers.
        let (reply, _) = ractor::concurrency::oneshot();
        state.pending.push_back((Command::Coord(CoordRequest::Tick), RpcReplyPort::from(reply)));
        flush(myself, state);
    }
}

/// Starts batches while there is room in flight and work pending. The queue's length is published before a slot is
/// taken (see [`super::batch`] for why), and again when the loop ends.
fn flush(myself: &ActorRef<RaftMsg>, state: &mut RaftState) {
    loop {
        state.slots.set_pending(state.pending.len());
        if state.pending.is_empty() {
            return;
        }
        // Bounded by count and by bytes, so one log entry (and so one AppendEntries frame) stays bounded.
        let mut count = 0;
        let mut batch_bytes = 0;
        for (command, _) in state.pending.iter().take(PROPOSAL_BATCH_COUNT_MAX) {
            let command_bytes = command_payload_bytes(command);
            if count > 0 && batch_bytes + command_bytes > PROPOSAL_BYTES_MAX {
                break;
            }
            batch_bytes += command_bytes;
            count += 1;
        }
        let Some(slot) = state.slots.take(myself, count) else { return };
        let mut commands = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(count);
        for (command, reply) in state.pending.drain(..count) {
            commands.push(command);
            replies.push(reply);
        }
        let (raft, clock, node_id) = (state.raft.clone(), state.clock, state.node_id);
        tokio::spawn(async move {
            let longest = Duration::from_millis(u64::from(REQUEST_TIMEOUT_MS_MAX));
            match write_batch(&raft, node_id, clock, commands, slot, longest).await {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Translates a failed `client_write` into a wire error a client can act on.
pub fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> WireError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(forward.leader_id, forward.leader_node)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            WireError::new(ErrorCode::Conflict, error.to_string())
        }
        RaftError::Fatal(fatal) => WireError::new(ErrorCode::Unavailable, format!("raft stopped: {fatal}")),
    }
}

/// Whether this node is in the membership it knows (a voter or a learner); see `batch::removed_leader`. A learner that
/// leads is a leader: openraft lets it lead a quorum of voters (seeds 5357 and 5656 stalled when only voters
/// counted).
pub(crate) fn is_member(metrics: &openraft::RaftMetrics<NodeId, MemberNode>) -> bool {
    metrics.membership_config.membership().get_node(&metrics.id).is_some()
}

/// The leader `metrics` name, except this node when it does not lead (openraft 0.9 names the node of the last
/// committed vote, whatever this node's state: a leader that removed itself and restarted as a learner names itself).
pub(crate) fn known_leader(metrics: &openraft::RaftMetrics<NodeId, MemberNode>) -> Option<NodeId> {
    let leads = metrics.state == openraft::ServerState::Leader;
    metrics.current_leader.filter(|leader| *leader != metrics.id || leads)
}

/// `NOT_LEADER` for openraft's forward to `leader_id`: no leader when that is this node (see [`known_leader`]).
pub(crate) fn forward_to(
    metrics: &openraft::RaftMetrics<NodeId, MemberNode>,
    leader_id: Option<NodeId>,
    leader_node: Option<MemberNode>,
) -> WireError {
    match leader_id {
        Some(leader) if leader == metrics.id => not_leader(None, None),
        _ => not_leader(leader_id, leader_node),
    }
}

/// `NOT_LEADER`, naming the leader when known.
pub fn not_leader(leader_id: Option<NodeId>, leader_node: Option<MemberNode>) -> WireError {
    let error = WireError::new(
        ErrorCode::NotLeader,
        match leader_id {
            Some(id) => format!("this node is not the leader; node {id} is"),
            None => "this node is not the leader and no leader is known".to_string(),
        },
    );
    match (leader_id, leader_node) {
        (Some(node_id), Some(node)) => error.with_detail(ErrorDetail::Leader {
            node_id,
            public_key: node.public_key.into_vec(),
            addrs: node.addrs,
        }),
        _ => error,
    }
}

/// Key and value bytes a command carries.
fn command_payload_bytes(command: &Command) -> usize {
    command.payload_bytes()
}
