//! The node's Raft as the other subsystems reach it: propose a command, confirm leadership for a linearizable read,
//! read the membership and the leader. Valid across the RaftActor's restarts (each new Raft core is published here).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::{ErrorCode, WireError};
use ractor::ActorRef;

use super::raft_actor::{RaftMsg, forward_to, is_member, known_leader, not_leader};
use super::type_config::{NodeId, Raft};
use crate::live::{Live, Unavailable};

/// The live Raft core and the actor that owns it.
#[derive(Clone)]
pub struct RaftCore {
    pub raft: Raft,
    pub actor: ActorRef<RaftMsg>,
    /// What the log held when this core started.
    pub started_with: StartupLog,
    /// Notified each time openraft publishes new metrics (by the RaftActor's one watcher of them): every wait on the
    /// metrics waits here, so waiters wake in arrival order (see `live.rs`).
    pub(crate) metrics_changed: Arc<tokio::sync::Notify>,
    /// Read-index rounds, one at a time for every linearizable read waiting.
    pub(crate) reads: super::read_rounds::ReadRounds,
    /// The in-flight slots the RaftActor's batches and the direct path share.
    pub(crate) slots: Arc<super::batch::Slots>,
    /// What proposals are stamped with.
    pub(crate) clock: crate::clock::Clock,
}

/// Longest `RaftCore::ensure_leader` waits for a restored leader to apply the log it started with.
const STARTUP_APPLY_WAIT_MS: u64 = 5_000;

/// The vote and the last log index a Raft core found on disk. A node restored as leader (openraft 0.9 resumes the
/// leadership of its vote; the RaftActor now prevents that, this is the second line) may have acknowledged writes past
/// its durable commit index (which is saved unsynced); until it has applied its whole startup log, under that
/// leadership, its answers could miss them.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartupLog {
    /// The leader the stored vote named (term and node: openraft may elect two leaders in one term).
    pub leader: openraft::LeaderId<NodeId>,
    pub last_index: Option<u64>,
}

/// When each peer last answered one of this node's Raft RPCs (the leader's view of who is alive).
pub type PeerHealth = Arc<Mutex<BTreeMap<NodeId, tokio::time::Instant>>>;

/// How long a linearizable read waits before asking its leader again to confirm a quorum.
const QUORUM_RETRY_MS: u64 = 100;

#[derive(Clone)]
pub struct RaftHandle {
    node_id: NodeId,
    live: Live<RaftCore>,
    peer_health: PeerHealth,
    /// Public keys allowed to send Raft traffic besides the members in the log (the peers named when joining).
    trusted_peers: Arc<BTreeSet<[u8; 32]>>,
    /// Held by whoever reads the membership to change it on this node (the cluster service, a leader rotating its own
    /// key), so two read-modify-write changes never interleave: one membership change at a time.
    membership_changes: Arc<tokio::sync::Mutex<()>>,
}

impl RaftHandle {
    pub fn new(node_id: NodeId, trusted_peers: impl IntoIterator<Item = [u8; 32]>) -> RaftHandle {
        RaftHandle {
            node_id,
            live: Live::new("raft"),
            peer_health: PeerHealth::default(),
            trusted_peers: Arc::new(trusted_peers.into_iter().collect()),
            membership_changes: Arc::default(),
        }
    }

    /// Waits for this node's membership-change lock (see the field): hold it from reading the membership to the
    /// change's commit.
    pub async fn lock_membership(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.membership_changes.lock().await
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The running Raft core, or [`Unavailable`] while the RaftActor restarts.
    pub fn core(&self) -> Result<RaftCore, Unavailable> {
        self.live.get()
    }

    /// The running Raft core, waiting up to `within` for a restarting RaftActor.
    pub async fn core_within(&self, within: Duration) -> Result<RaftCore, Unavailable> {
        self.live.wait(within).await
    }

    /// openraft's metrics, while Raft runs.
    pub fn metrics(&self) -> Option<openraft::RaftMetrics<NodeId, MemberNode>> {
        self.live.current().map(|core| core.raft.metrics().borrow().clone())
    }

    /// The leader this node knows of. Never this node unless it leads: openraft 0.9 names the node of the last
    /// committed vote, so a leader restarted as a learner (it had removed itself) names itself for good; nobody
    /// contacts a non-member, so it never learns better (simulator seed 1369).
    pub fn leader(&self) -> Option<NodeId> {
        self.live.current().and_then(|core| known_leader(&core.raft.metrics().borrow()))
    }

    /// Whether this node names itself leader.
    pub fn leads(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// The current members (voters and learners) as this node's Raft sees them; empty while Raft is not running.
    pub fn members(&self) -> BTreeMap<NodeId, MemberNode> {
        let Some(core) = self.live.current() else { return BTreeMap::new() };
        let metrics = core.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.clone())).collect()
    }

    /// Whether `node` is a voter in the membership this node knows.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.live.current().is_some_and(|core| {
            core.raft.metrics().borrow().membership_config.membership().voter_ids().any(|id| id == node)
        })
    }

    /// Whether the holder of `public_key` may send this node Raft, mesh and blob traffic: a node of the current
    /// membership. Before this node's log holds any membership (a joiner waiting for the leader's first entries, or
    /// Raft not started yet), the peers it was told about when it joined; once it holds one, only members, so a
    /// removed node is refused also by the nodes that trusted it as a seed.
    pub fn is_authorised_peer(&self, public_key: &[u8; 32]) -> bool {
        let members = self.members();
        if members.is_empty() {
            return self.trusted_peers.contains(public_key);
        }
        members.values().any(|node| node.public_key.as_slice() == public_key)
    }

    /// Waits, at most `within`, until this node either does not lead or has applied an entry of its own term: from then
    /// on its applied state holds everything committed before it led (a revocation the previous leader committed
    /// included), so checks against that state are as current as the leader's answers.
    pub async fn settled_as_leader(&self, within: Duration) {
        let Some(core) = self.live.current() else { return };
        let settled = core.wait_metrics(|metrics| {
            metrics.state != openraft::ServerState::Leader
                // Its own leadership, not just its term: openraft 0.9 (without `single-term-leader`) may elect two
                // leaders in one term, the later one with the greater node id (simulator seed 95).
                || (metrics.last_applied.is_some_and(|applied| applied.leader_id >= *metrics.vote.leader_id())
                    && core.started_with.applied(metrics))
        });
        // Raft stopped, or no quorum in time: the request goes on and meets that on its own.
        let _ = tokio::time::timeout(within, settled).await;
    }

    /// The member whose key is `public_key`, as this node's membership has it.
    pub fn peer_id(&self, public_key: &[u8; 32]) -> Option<NodeId> {
        self.members().into_iter().find(|(_, node)| node.public_key.as_slice() == public_key).map(|(id, _)| id)
    }

    /// Where the Raft network stamps each answer a peer gives.
    pub fn peer_health(&self) -> PeerHealth {
        self.peer_health.clone()
    }

    /// Whether `node` answered a Raft RPC of this node within `within`.
    pub fn peer_heard_within(&self, node: NodeId, within: Duration) -> bool {
        let heard = self.peer_health.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&node).copied();
        heard.is_some_and(|at| at.elapsed() <= within)
    }

    /// Proposes one command and answers its result once applied, within `timeout` (which also bounds the wait for a
    /// restarting RaftActor). A follower answers `NOT_LEADER`. Written at once from this task when nothing waits and a
    /// slot is free, else through the RaftActor's next batch ([`super::batch`]).
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<CommandOutput, WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let core = self.live.wait(timeout).await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
        if let Some(slot) = core.slots.direct(&core.actor) {
            let results =
                super::batch::write_batch(&core.raft, self.node_id, core.clock, vec![command], slot, remaining);
            let mut results = results.await?;
            return results.pop().unwrap_or_else(|| Err(WireError::internal("the state machine returned no result")));
        }
        let outcome = core
            .actor
            .call(|reply: ractor::RpcReplyPort<_>| RaftMsg::Propose { command, reply }, Some(remaining))
            .await;
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

    /// Waits until this node knows it is leader and has applied everything committed before the call (a read-index
    /// round), for a linearizable read. A leader that cannot reach a quorum yet (its peers restarting, a partition
    /// healing) is asked again until `timeout` cuts it off: a read waits for the cluster, as etcd's do, instead of
    /// failing at once. Reads are idempotent, so asking again is safe.
    pub async fn linearize(&self, timeout: Duration) -> Result<(), WireError> {
        if crate::sim::planted_bug(crate::sim::PlantedBug::LocalReads) {
            // The planted bug: whatever this node applied is taken as current.
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let core = self.live.wait(timeout).await?;
        let waiting = async {
            loop {
                match core.reads.confirm().await? {
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                        tracing::debug!(%error, "linearizable read waiting for a quorum");
                        tokio::time::sleep(Duration::from_millis(QUORUM_RETRY_MS)).await;
                    }
                    other => {
                        core.leader_answer(other)?;
                        return core.applied_startup_log().await;
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, waiting).await {
            Ok(answer) => answer,
            Err(_) => Err(WireError::new(ErrorCode::Timeout, "no quorum confirmed this node's leadership in time")),
        }
    }

    /// Waits until this node has applied log index `index` (a follower serving a read at the leader's read index).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WireError> {
        let core = self.live.wait(timeout).await?;
        let applied = core.wait_metrics(|metrics| metrics.last_applied.is_some_and(|applied| applied.index >= index));
        match tokio::time::timeout(timeout, applied).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(WireError::new(ErrorCode::Unavailable, "raft stopped")),
            Err(_) => Err(WireError::new(ErrorCode::Timeout, format!("this node did not apply index {index} in time"))),
        }
    }

    /// The last log index this node applied.
    pub fn applied_index(&self) -> u64 {
        self.metrics().and_then(|metrics| metrics.last_applied.map(|applied| applied.index)).unwrap_or(0)
    }

    pub(crate) fn publish(&self, core: RaftCore) {
        self.live.publish(core);
    }

    /// Takes the published core away (a restarting RaftActor shuts the previous one down before starting its own).
    pub(crate) fn take(&self) -> Option<RaftCore> {
        self.live.retract()
    }
}

impl StartupLog {
    /// Whether a node whose metrics are `metrics` is past its startup log (applied it, or under a later leadership).
    pub fn applied(&self, metrics: &openraft::RaftMetrics<NodeId, MemberNode>) -> bool {
        *metrics.vote.leader_id() != self.leader
            || self.last_index.is_none_or(|last| metrics.last_applied.is_some_and(|applied| applied.index >= last))
    }
}

impl RaftCore {
    /// Fails with `NOT_LEADER` (naming the leader) unless this node is the leader with a quorum (a read-index round:
    /// once it returns, this node has applied everything committed before the call).
    pub async fn ensure_leader(&self) -> Result<(), WireError> {
        self.leader_answer(self.reads.confirm().await?)?;
        let wait = Duration::from_millis(STARTUP_APPLY_WAIT_MS);
        tokio::time::timeout(wait, self.applied_startup_log()).await.unwrap_or_else(|_| {
            Err(WireError::new(ErrorCode::Unavailable, "this leader is still applying the log it restarted with"))
        })
    }

    /// Waits until this node has applied everything its log held when this core started, or has left the term it
    /// started in (a later leadership reads from its own first entry, which follows that log). Callers bound the wait.
    async fn applied_startup_log(&self) -> Result<(), WireError> {
        if self.wait_metrics(|metrics| self.started_with.applied(metrics)).await {
            Ok(())
        } else {
            Err(WireError::new(ErrorCode::Unavailable, "raft stopped"))
        }
    }

    /// Waits until `done` holds of this core's metrics (`true`), or the core stopped (`false`). Unbounded: callers
    /// put a deadline around it.
    pub(crate) async fn wait_metrics(&self, done: impl Fn(&openraft::RaftMetrics<NodeId, MemberNode>) -> bool) -> bool {
        loop {
            // Registered before the check, so new metrics between the two are not missed.
            let changed = self.metrics_changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                if done(&metrics) {
                    return true;
                }
                if metrics.running_state.is_err() {
                    return false;
                }
            }
            changed.await;
        }
    }

    fn leader_answer<T>(
        &self,
        checked: Result<T, RaftError<NodeId, CheckIsLeaderError<NodeId, MemberNode>>>,
    ) -> Result<(), WireError> {
        match checked {
            // A leader outside its own membership (openraft keeps it leading after its removal) leads nobody.
            Ok(_) if !is_member(&self.raft.metrics().borrow()) => Err(not_leader(None, None)),
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(forward_to(&self.raft.metrics().borrow(), forward.leader_id, forward.leader_node))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(WireError::new(ErrorCode::Unavailable, format!("no quorum: {error}")))
            }
            Err(RaftError::Fatal(fatal)) => {
                Err(WireError::new(ErrorCode::Unavailable, format!("raft stopped: {fatal}")))
            }
        }
    }
}
