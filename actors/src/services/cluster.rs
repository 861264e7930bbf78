//! The cluster service: status, join, add-learner, promote, remove, address refresh, metrics, the supervision tree and
//! panic injection, the actor mesh. Membership changes run on the leader (others answer `NOT_LEADER` with the
//! leader's address, and the client follows).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use pando_protocol::cluster::{
    ActorReport, ClusterRequest, ClusterResponse, ClusterStatus, MemberNode, MemberStatus, MeshReport, NodeVersion, hex,
};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::{CLUSTER_MEMBERS_MAX, MEMBER_ADDRS_COUNT_MAX};
use pando_protocol::ticket::TicketNode;

use super::TokenService;
use crate::mesh::MeshHandle;
use crate::raft::raft_actor::write_error;
use crate::raft::type_config::NodeId;
use crate::raft::{RaftCore, RaftHandle};
use crate::storage_actor::StorageHandle;
use crate::supervision::control::STATUS_LEVEL_MARGIN_MS;
use crate::supervision::{ActorNode, Control, SupervisorMsg, TreeHandle};

#[derive(Clone)]
pub struct ClusterService {
    node_id: NodeId,
    cluster_id: Vec<u8>,
    /// Handed to nodes that join: what a member needs to serve (the mesh cookie, plugins' signing keys). It mints no
    /// credential.
    member_secret: [u8; 32],
    /// Join tokens are spent here; a removed node's grants are forgotten.
    tokens: TokenService,
    /// Whether `InjectPanic` is served (`--enable-fault-injection`).
    fault_injection: bool,
    /// The process's CPU time for the status ([`own_process_cpu_ms`]; in the simulator, where nodes share a process
    /// and a seed must replay exactly, nothing).
    process_cpu_ms: fn() -> Option<u64>,
    raft: RaftHandle,
    storage: StorageHandle,
    mesh: MeshHandle,
    tree: TreeHandle,
    jobs: Arc<crate::jobs::JobCounters>,
}

impl ClusterService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        cluster_id: Vec<u8>,
        member_secret: [u8; 32],
        tokens: TokenService,
        fault_injection: bool,
        process_cpu_ms: fn() -> Option<u64>,
        raft: RaftHandle,
        storage: StorageHandle,
        mesh: MeshHandle,
        tree: TreeHandle,
    ) -> ClusterService {
        ClusterService {
            node_id,
            cluster_id,
            member_secret,
            tokens,
            fault_injection,
            process_cpu_ms,
            raft,
            storage,
            mesh,
            tree,
            jobs: Arc::default(),
        }
    }

    /// Reads this node's job workers' counters for the metrics.
    pub fn with_job_counters(mut self, jobs: Arc<crate::jobs::JobCounters>) -> ClusterService {
        self.jobs = jobs;
        self
    }

    /// Serves one cluster request (its caller authorised it). A join comes through [`ClusterService::join`], which
    /// needs the caller's key and token.
    pub async fn execute(&self, request: ClusterRequest) -> Result<ClusterResponse, WireError> {
        Ok(match request {
            ClusterRequest::Status => ClusterResponse::Status(status(self)?),
            ClusterRequest::Metrics => metrics(self).await?,
            ClusterRequest::Join { .. } => {
                return Err(WireError::new(ErrorCode::Unauthorized, "joining needs a join token"));
            }
            ClusterRequest::AddLearner { node_id, node } => add_learner(self, node_id, node).await?,
            ClusterRequest::Promote { node_id } => promote(self, node_id).await?,
            ClusterRequest::Remove { node_id } => remove(self, node_id).await?,
            ClusterRequest::Actors => actors(self).await?,
            ClusterRequest::InjectPanic { actor } => inject_panic(self, &actor).await?,
            ClusterRequest::Mesh => mesh(self).await?,
            ClusterRequest::Version => ClusterResponse::Version(NodeVersion {
                node_id: self.node_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: pando_protocol::PROTOCOL_VERSION,
            }),
            ClusterRequest::UpdateAddress { node_id, node } => update_address(self, node_id, node).await?,
            ClusterRequest::RotateNodeKey { node_id, public_key, proof } => {
                rotate_node_key(self, node_id, public_key, proof).await?
            }
        })
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Result<ClusterStatus, WireError> {
        status(self)
    }

    /// The member whose key is `public_key`, as this node's membership has it.
    pub fn member_id(&self, public_key: &[u8; 32]) -> Option<NodeId> {
        self.raft.members().into_iter().find(|(_, node)| node.public_key.as_slice() == public_key).map(|(id, _)| id)
    }

    /// Admits `node` as a learner, spending one use of join token `accessor`. The node must have connected with the
    /// key it registers (`peer_key`), so nobody registers a key they do not hold.
    pub async fn join(
        &self,
        node: MemberNode,
        peer_key: Option<[u8; 32]>,
        accessor: Bytes,
        timeout: Duration,
    ) -> Result<ClusterResponse, WireError> {
        validate_node(&node)?;
        match peer_key {
            Some(key) if key.as_slice() == node.public_key.as_slice() => {}
            Some(_) => {
                return Err(WireError::new(
                    ErrorCode::Unauthorized,
                    "a joining node must connect with the key it registers",
                ));
            }
            None => return Err(WireError::new(ErrorCode::Unauthorized, "joining needs an authenticated connection")),
        }
        join(self, node, accessor, timeout).await
    }
}

/// A learner this far behind the leader's log is not promoted yet (the caller retries).
pub const PROMOTE_LAG_COUNT_MAX: u64 = 64;

/// What every membership change starts with: this node is the leader, holds the membership lock, and reads the
/// membership as it is.
struct LeaderView<'a> {
    handles: RaftCore,
    membership: openraft::Membership<NodeId, MemberNode>,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

async fn leader_view(context: &ClusterService) -> Result<LeaderView<'_>, WireError> {
    let handles = context.raft.core()?;
    // One membership change at a time, so two joiners never get the same id.
    let guard = context.raft.lock_membership().await;
    handles.ensure_leader().await?;
    let membership = handles.raft.metrics().borrow().membership_config.membership().clone();
    Ok(LeaderView { handles, membership, _guard: guard })
}

fn validate_node(node: &MemberNode) -> Result<(), WireError> {
    if node.public_key.len() != 32 {
        return Err(WireError::invalid("a node's public key is 32 bytes"));
    }
    if node.addrs.is_empty() || node.addrs.len() > MEMBER_ADDRS_COUNT_MAX {
        return Err(WireError::invalid(format!("a node needs between 1 and {MEMBER_ADDRS_COUNT_MAX} addresses")));
    }
    Ok(())
}

fn status(context: &ClusterService) -> Result<ClusterStatus, WireError> {
    let handles = context.raft.core()?;
    let metrics = handles.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(node_id, node)| {
            let matched_index = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(node_id))
                .map(|matched| matched.map_or(0, |log_id| log_id.index));
            MemberStatus {
                node_id: *node_id,
                public_key: hex(&node.public_key),
                addrs: node.addrs.clone(),
                voter: voters.contains(node_id),
                matched_index,
                lag: matched_index.map(|matched| metrics.last_log_index.unwrap_or(0).saturating_sub(matched)),
            }
        })
        .collect();
    let reader = context.storage.reader()?;
    let revision = reader.revision().map_err(|fault| WireError::internal(fault.to_string()))?;
    let (digest_at, applied_digest) = reader.applied().map_err(|fault| WireError::internal(fault.to_string()))?;
    Ok(ClusterStatus {
        cluster_id: hex(&context.cluster_id),
        node_id: context.node_id,
        role: format!("{:?}", metrics.state),
        leader_id: crate::raft::raft_actor::known_leader(&metrics),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied_index: metrics.last_applied.map(|log_id| log_id.index),
        revision,
        snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
        purged_index: metrics.purged.map(|log_id| log_id.index),
        members,
        applied_digest: hex(&applied_digest),
        applied_digest_index: digest_at.map(|log_id| log_id.index),
        process_cpu_ms: (context.process_cpu_ms)(),
    })
}

/// This process's CPU time in milliseconds, where the platform says (Linux's `/proc/self/stat`).
pub fn own_process_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    pando_protocol::cluster::cpu_ms_from_proc_stat(&stat)
}

async fn join(
    context: &ClusterService,
    node: MemberNode,
    accessor: Bytes,
    timeout: Duration,
) -> Result<ClusterResponse, WireError> {
    let LeaderView { handles, membership, _guard } = leader_view(context).await?;
    let existing = membership.nodes().find(|(_, member)| member.public_key == node.public_key).map(|(id, _)| *id);
    let node_id = match existing {
        // The same identity joining again (a retry) keeps its id; its address may have changed. Its token must
        // still admit it (a second admission of the same node spends nothing).
        Some(node_id) => {
            context.tokens.admit(accessor, node_id, timeout).await?;
            handles
                .raft
                .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(node_id, node.clone())])), true)
                .await
                .map_err(write_error)?;
            node_id
        }
        None => {
            // Ids are never reused: above every current id and above the log index, which only grows, so a removed
            // node's id never comes back for another node.
            check_room(&membership)?;
            let last_log_index = handles.raft.metrics().borrow().last_log_index.unwrap_or(0);
            let node_id = membership.nodes().map(|(id, _)| *id).max().unwrap_or(0).max(last_log_index) + 1;
            // Spent before the node is added: a failure after this costs the token a use, never admits for free.
            context.tokens.admit(accessor, node_id, timeout).await?;
            handles.raft.add_learner(node_id, node.clone(), false).await.map_err(write_error)?;
            node_id
        }
    };
    let mut members: Vec<TicketNode> =
        membership.nodes().map(|(id, member)| TicketNode { node_id: *id, node: member.clone() }).collect();
    members.retain(|member| member.node_id != node_id);
    members.push(TicketNode { node_id, node });
    tracing::info!(node_id, "node joined as a learner");
    Ok(ClusterResponse::Joined {
        node_id,
        cluster_id: Bytes::from(context.cluster_id.clone()),
        member_secret: Bytes::from(context.member_secret.to_vec()),
        members,
    })
}

/// Refuses a new member once the cluster has [`CLUSTER_MEMBERS_MAX`] (so every ticket can list every member).
fn check_room(membership: &openraft::Membership<NodeId, MemberNode>) -> Result<(), WireError> {
    let members = membership.nodes().count();
    if members >= CLUSTER_MEMBERS_MAX {
        return Err(WireError::too_large(format!(
            "the cluster has {members} members, the most it admits ({CLUSTER_MEMBERS_MAX}); remove one first"
        )));
    }
    Ok(())
}

async fn add_learner(
    context: &ClusterService,
    node_id: NodeId,
    node: MemberNode,
) -> Result<ClusterResponse, WireError> {
    validate_node(&node)?;
    let LeaderView { handles, membership, _guard } = leader_view(context).await?;
    if membership.get_node(&node_id).is_some() {
        return Err(WireError::new(ErrorCode::Conflict, format!("node {node_id} is already a member")));
    }
    if let Some((other, _)) = membership.nodes().find(|(_, member)| member.public_key == node.public_key) {
        return Err(WireError::new(ErrorCode::Conflict, format!("node {other} already has this public key")));
    }
    check_room(&membership)?;
    let response = handles.raft.add_learner(node_id, node, false).await.map_err(write_error)?;
    Ok(ClusterResponse::MembershipChanged { log_index: response.log_id.index })
}

async fn promote(context: &ClusterService, node_id: NodeId) -> Result<ClusterResponse, WireError> {
    let LeaderView { handles, membership, _guard } = leader_view(context).await?;
    let metrics = handles.raft.metrics().borrow().clone();
    if membership.get_node(&node_id).is_none() {
        return Err(WireError::new(ErrorCode::NotFound, format!("node {node_id} is not a member")));
    }
    if membership.voter_ids().any(|voter| voter == node_id) {
        return Ok(ClusterResponse::MembershipChanged {
            log_index: metrics.membership_config.log_id().map_or(0, |id| id.index),
        });
    }
    let matched = metrics.replication.as_ref().and_then(|replication| replication.get(&node_id).copied()).flatten();
    let lag = metrics.last_log_index.unwrap_or(0).saturating_sub(matched.map_or(0, |log_id| log_id.index));
    if matched.is_none() || lag > PROMOTE_LAG_COUNT_MAX {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            format!("learner {node_id} has not caught up ({lag} entries behind); retry when it has"),
        ));
    }
    let response = handles
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), true)
        .await
        .map_err(write_error)?;
    tracing::info!(node_id, "learner promoted to voter");
    Ok(ClusterResponse::MembershipChanged { log_index: response.log_id.index })
}

async fn remove(context: &ClusterService, node_id: NodeId) -> Result<ClusterResponse, WireError> {
    let LeaderView { handles, membership, _guard } = leader_view(context).await?;
    if membership.get_node(&node_id).is_none() {
        return Err(WireError::new(ErrorCode::NotFound, format!("node {node_id} is not a member")));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&node_id) {
        if voters.len() == 1 {
            return Err(WireError::invalid("cannot remove the last voter"));
        }
        // retain = false: the removed voter does not stay on as a learner.
        handles.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])), false).await
    } else {
        handles.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false).await
    };
    let response = change.map_err(write_error)?;
    // Its key stops authenticating once it is out of the membership; what its join token granted goes too.
    if let Err(error) = context.tokens.forget_node(node_id, Duration::from_secs(5)).await {
        tracing::warn!(node_id, %error, "removed node's grants not forgotten (harmless: ids are never reused)");
    }
    tracing::info!(node_id, "node removed");
    Ok(ClusterResponse::MembershipChanged { log_index: response.log_id.index })
}

async fn update_address(
    context: &ClusterService,
    node_id: NodeId,
    node: MemberNode,
) -> Result<ClusterResponse, WireError> {
    validate_node(&node)?;
    let LeaderView { handles, membership, _guard } = leader_view(context).await?;
    match membership.get_node(&node_id) {
        None => return Err(WireError::new(ErrorCode::NotFound, format!("node {node_id} is not a member"))),
        Some(current) if current.public_key != node.public_key => {
            return Err(WireError::new(ErrorCode::Unauthorized, format!("node {node_id} has another identity")));
        }
        Some(current) if current.addrs == node.addrs => {
            return Ok(ClusterResponse::MembershipChanged { log_index: 0 });
        }
        Some(_) => {}
    }
    let changed = set_node(&handles, node_id, node).await?;
    tracing::info!(node_id, "member address updated");
    Ok(changed)
}

/// Replaces what the membership says about member `node_id` (its key or addresses; not its role).
async fn set_node(handles: &RaftCore, node_id: NodeId, node: MemberNode) -> Result<ClusterResponse, WireError> {
    let response = handles
        .raft
        .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(node_id, node)])), true)
        .await
        .map_err(write_error)?;
    Ok(ClusterResponse::MembershipChanged { log_index: response.log_id.index })
}

/// Registers `public_key` as member `node_id`'s key once `proof` shows the caller holds it. Asking again after the
/// change committed answers at once (a node that crashed before it switched keys asks again).
async fn rotate_node_key(
    context: &ClusterService,
    node_id: NodeId,
    public_key: Bytes,
    proof: Bytes,
) -> Result<ClusterResponse, WireError> {
    register_node_key(&context.raft, &context.cluster_id, node_id, public_key, proof).await
}

/// The leader's part of a key rotation, also called in-process by a leader that rotates its own key (it cannot call
/// itself over the network as its own key): checks the proof, then commits the member's new key with its addresses.
pub async fn register_node_key(
    raft: &RaftHandle,
    cluster_id: &[u8],
    node_id: NodeId,
    public_key: Bytes,
    proof: Bytes,
) -> Result<ClusterResponse, WireError> {
    let key: [u8; 32] =
        public_key.as_slice().try_into().map_err(|_| WireError::invalid("a node's public key is 32 bytes"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| WireError::invalid("not an ed25519 key"))?;
    let signature = ed25519_dalek::Signature::from_slice(&proof)
        .map_err(|_| WireError::invalid("a proof is a 64-byte signature"))?;
    let message = pando_protocol::cluster::node_key_rotation_message(cluster_id, node_id, &public_key);
    key.verify_strict(&message, &signature)
        .map_err(|_| WireError::new(ErrorCode::Unauthorized, "the proof is not the new key's signature"))?;
    let handles = raft.core()?;
    let _guard = raft.lock_membership().await;
    handles.ensure_leader().await?;
    let membership = handles.raft.metrics().borrow().membership_config.membership().clone();
    let Some(current) = membership.get_node(&node_id) else {
        return Err(WireError::new(ErrorCode::NotFound, format!("node {node_id} is not a member")));
    };
    if current.public_key == public_key {
        return Ok(ClusterResponse::MembershipChanged { log_index: 0 });
    }
    if membership.nodes().any(|(other, node)| *other != node_id && node.public_key == public_key) {
        return Err(WireError::new(ErrorCode::Conflict, "another member has this key"));
    }
    let changed = set_node(&handles, node_id, MemberNode { public_key, addrs: current.addrs.clone() }).await?;
    tracing::info!(node_id, "member key replaced");
    Ok(changed)
}

/// Prometheus text exposition (version 0.0.4) of this node's Raft metrics.
async fn metrics(context: &ClusterService) -> Result<ClusterResponse, WireError> {
    let status = status(context)?;
    let mut text = String::new();
    let node = status.node_id;
    let gauge = |text: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}");
    };
    gauge(&mut text, "pando_raft_term", "Current Raft term.", status.term);
    gauge(&mut text, "pando_raft_is_leader", "1 when this node is the leader.", u64::from(status.role == "Leader"));
    gauge(&mut text, "pando_raft_last_log_index", "Last log index.", status.last_log_index.unwrap_or(0));
    gauge(&mut text, "pando_raft_last_applied_index", "Last applied index.", status.last_applied_index.unwrap_or(0));
    gauge(
        &mut text,
        "pando_raft_snapshot_index",
        "Last index in the latest snapshot.",
        status.snapshot_index.unwrap_or(0),
    );
    gauge(&mut text, "pando_raft_members", "Members in the current membership.", status.members.len() as u64);
    gauge(&mut text, "pando_kv_revision", "KV store revision.", status.revision);
    let _ = writeln!(
        text,
        "# HELP pando_raft_member_lag Entries a member is behind the leader.\n# TYPE pando_raft_member_lag gauge"
    );
    for member in &status.members {
        if let Some(lag) = member.lag {
            let _ = writeln!(text, "pando_raft_member_lag{{node=\"{node}\",member=\"{}\"}} {lag}", member.node_id);
        }
    }
    if let Ok(stores) = context.storage.stores() {
        let times = stores.log.checkpoint_times();
        let _ = writeln!(
            text,
            "# HELP pando_storage_checkpoint_seconds Time each state-machine checkpoint held the database's write lock \
             (applies wait for it).\n# TYPE pando_storage_checkpoint_seconds summary\n\
             pando_storage_checkpoint_seconds_sum{{node=\"{node}\"}} {}\n\
             pando_storage_checkpoint_seconds_count{{node=\"{node}\"}} {}",
            times.held_seconds_total, times.count
        );
        let _ = writeln!(
            text,
            "# HELP pando_storage_checkpoint_seconds_max The longest checkpoint since the node started.\n\
             # TYPE pando_storage_checkpoint_seconds_max gauge\n\
             pando_storage_checkpoint_seconds_max{{node=\"{node}\"}} {}",
            times.held_seconds_max
        );
    }
    job_metrics(context, &mut text)?;
    actor_metrics(context, &mut text).await;
    Ok(ClusterResponse::Metrics { text })
}

/// Every actor of the tree as `pando actors` shows it (`path` labels as it prints them): what an alert on a stuck or
/// flapping subsystem watches (a growing queue, a long busy time, restarts). Left out when the tree does not answer,
/// so the rest of a scrape still arrives.
async fn actor_metrics(context: &ClusterService, text: &mut String) {
    let Ok(nodes) = tree(context).await else { return };
    let mut reports = Vec::new();
    flatten(ROOT, nodes, &mut reports);
    let node = context.node_id;
    type Value = fn(&ActorReport) -> Option<String>;
    let families: [(&str, &str, &str, Value); 5] = [
        ("pando_actor_up", "gauge", "1 while the actor runs.", |actor| Some(u64::from(actor.alive).to_string())),
        ("pando_actor_restarts_total", "counter", "Restarts of the actor by its supervisor.", |actor| {
            Some(actor.restarts.to_string())
        }),
        ("pando_actor_mailbox_queued", "gauge", "Messages waiting in the actor's mailbox.", |actor| {
            actor.mailbox.as_ref().map(|mailbox| mailbox.queued.to_string())
        }),
        (
            "pando_actor_messages_handled_total",
            "counter",
            "Messages the running instance of the actor handled (from 0 after a restart).",
            |actor| actor.mailbox.as_ref().map(|mailbox| mailbox.handled.to_string()),
        ),
        (
            "pando_actor_busy_seconds",
            "gauge",
            "How long the message in the actor's handler has run (0 while it waits for one).",
            |actor| {
                let mailbox = actor.mailbox.as_ref()?;
                Some(format!("{:.3}", mailbox.busy_ms.unwrap_or(0) as f64 / 1_000.0))
            },
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for actor in &reports {
            if let Some(value) = value(actor) {
                let path = actor.path.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = writeln!(text, "{name}{{node=\"{node}\",path=\"{path}\"}} {value}");
            }
        }
    }
}

/// The jobs of every queue by state (`pando_jobs{state="dead"}` is the dead-letter list's depth), their totals, and
/// this node's worker counters.
fn job_metrics(context: &ClusterService, text: &mut String) -> Result<(), WireError> {
    use pando_protocol::job::{JobQuery, JobQueryResponse, StateName};
    let node = context.node_id;
    let reader = context.storage.reader()?;
    let stats = reader.jobs(&JobQuery::Stats).map_err(|fault| WireError::internal(fault.to_string()))?;
    let Ok(JobQueryResponse::Stats(queues)) = stats else {
        return Err(WireError::internal("job stats answered something else"));
    };
    let _ = writeln!(text, "# HELP pando_jobs Jobs in each state, per queue.\n# TYPE pando_jobs gauge");
    for queue in &queues {
        for state in StateName::ALL {
            let _ = writeln!(
                text,
                "pando_jobs{{node=\"{node}\",queue=\"{}\",state=\"{}\"}} {}",
                queue.queue,
                state.as_str(),
                queue.count(state)
            );
        }
    }
    for (name, help, value) in [
        (
            "pando_job_attempts_total",
            "Attempts begun.",
            &(|queue: &pando_protocol::job::QueueStats| queue.attempts_total)
                as &dyn Fn(&pando_protocol::job::QueueStats) -> u64,
        ),
        ("pando_job_failed_attempts_total", "Attempts that failed.", &|queue| queue.failed_attempts_total),
        ("pando_job_lease_expiries_total", "Attempts rescued after their lease lapsed.", &|queue| {
            queue.lease_expiries_total
        }),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
        for queue in &queues {
            let _ = writeln!(text, "{name}{{node=\"{node}\",queue=\"{}\"}} {}", queue.queue, value(queue));
        }
    }
    let counters = &context.jobs;
    let get = crate::jobs::JobCounters::get;
    for (name, help, value) in [
        ("pando_job_claims_total", "Claims this node's dispatcher proposed.", get(&counters.claims)),
        ("pando_job_claimed_total", "Jobs this node's claims took.", get(&counters.claimed)),
        ("pando_job_completed_total", "Runs on this node that completed.", get(&counters.completed)),
        ("pando_job_run_failures_total", "Runs on this node that failed.", get(&counters.failed)),
        (
            "pando_job_stale_fence_refusals_total",
            "Heartbeats and results of this node refused because their attempt was over.",
            get(&counters.stale_refusals),
        ),
        (
            "pando_job_runs_stopped_total",
            "Runs this node stopped (cancelled, or a lease it could not keep).",
            get(&counters.stopped),
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {value}");
    }
    Ok(())
}

/// Most actors one `Actors` answer lists (the tree is walked depth first and cut there).
pub const ACTOR_REPORTS_COUNT_MAX: usize = 1_024;
/// How long the whole tree gets to report (each actor has its own, shorter, deadline).
const TREE_STATUS_TIMEOUT_MS: u64 = 10_000;

/// The supervision tree as every actor in it reports itself (the control message's status), from the root down.
async fn tree(context: &ClusterService) -> Result<Vec<ActorNode>, WireError> {
    let root = context.tree.root()?;
    // The root's answer may wait behind its mailbox; its children are asked with their own, shorter, deadlines.
    let answer_by =
        tokio::time::Instant::now() + Duration::from_millis(TREE_STATUS_TIMEOUT_MS - STATUS_LEVEL_MARGIN_MS);
    let asked = root
        .call(
            |reply| SupervisorMsg::Control(Control::Status(reply, answer_by)),
            Some(Duration::from_millis(TREE_STATUS_TIMEOUT_MS)),
        )
        .await;
    match asked {
        Ok(ractor::rpc::CallResult::Success(detail)) => Ok(detail.children),
        _ => Err(WireError::new(ErrorCode::Unavailable, "the supervision tree did not answer")),
    }
}

/// Depth first, each actor before its children, paths from `prefix`.
fn flatten(prefix: &str, nodes: Vec<ActorNode>, reports: &mut Vec<ActorReport>) {
    for node in nodes {
        if reports.len() >= ACTOR_REPORTS_COUNT_MAX {
            return;
        }
        let path = format!("{prefix}/{}", node.id);
        reports.push(ActorReport {
            path: path.clone(),
            alive: node.alive,
            restarts: node.restarts,
            actor_id: node.actor_id,
            detail: node.detail,
            mailbox: node.mailbox,
            last_failure: node.last_failure,
            current: node.current,
        });
        flatten(&path, node.children, reports);
    }
}

/// Every actor of the tree, from the root down (nested supervisors and the children actors run themselves included).
async fn actors(context: &ClusterService) -> Result<ClusterResponse, WireError> {
    let mut reports = Vec::new();
    flatten(ROOT, tree(context).await?, &mut reports);
    Ok(ClusterResponse::Actors { actors: reports, node_id: Some(context.node_id) })
}

/// The root supervisor's name: every path starts with it.
const ROOT: &str = "node";

/// Panics the actor at `actor`: a path such as `node/raft` (or `raft`), or a bare name found anywhere in the tree.
/// Every supervisor child answers the control message, so no actor needs a case of its own here.
async fn inject_panic(context: &ClusterService, actor: &str) -> Result<ClusterResponse, WireError> {
    if !context.fault_injection {
        return Err(WireError::invalid("fault injection is off; start the node with --enable-fault-injection"));
    }
    let mut reports = Vec::new();
    flatten(ROOT, tree(context).await?, &mut reports);
    let wanted = format!("{ROOT}/{}", actor.trim_start_matches(&format!("{ROOT}/")));
    let path = reports
        .iter()
        .map(|report| report.path.as_str())
        .find(|path| *path == wanted || (!actor.contains('/') && path.rsplit('/').next() == Some(actor)))
        .map(str::to_string);
    let unknown = || {
        let known: Vec<&str> = reports.iter().map(|report| report.path.as_str()).collect();
        WireError::invalid(format!("no actor `{actor}` in this node's tree; known: {}", known.join(", ")))
    };
    let path = path.ok_or_else(unknown)?;
    let mut segments: Vec<&str> = path.split('/').skip(1).collect();
    let child = segments.pop().ok_or_else(unknown)?.to_string();
    let mut supervisor = context.tree.root()?;
    for segment in segments {
        let cell = supervisor
            .call(|reply| SupervisorMsg::Child(segment.to_string(), reply), Some(Duration::from_secs(5)))
            .await;
        supervisor = match cell {
            Ok(ractor::rpc::CallResult::Success(Some(cell)))
                if cell.is_message_type_of::<SupervisorMsg>() == Some(true) =>
            {
                ractor::ActorRef::from(cell)
            }
            _ => {
                return Err(WireError::invalid(format!(
                    "`{path}` is run by `{segment}` itself, not by a supervisor; a panic reaches supervised actors only"
                )));
            }
        };
    }
    let delivered = supervisor
        .call(
            |reply| SupervisorMsg::ControlChild { id: child.clone(), control: Control::InjectPanic, reply },
            Some(Duration::from_secs(5)),
        )
        .await;
    if !matches!(delivered, Ok(ractor::rpc::CallResult::Success(true))) {
        return Err(WireError::new(ErrorCode::Unavailable, format!("the actor `{path}` is not running")));
    }
    tracing::warn!(actor = %path, "fault injection: actor told to panic");
    Ok(ClusterResponse::Injected)
}

/// The mesh's sessions, and a ping from this node to every node agent in the cluster-wide process group.
async fn mesh(context: &ClusterService) -> Result<ClusterResponse, WireError> {
    let status = context.mesh.status().await?;
    let pings = context.mesh.ping_all(context.node_id).await?;
    Ok(ClusterResponse::Mesh(MeshReport {
        node_id: context.node_id,
        sessions: status.sessions,
        unconnected: status.unconnected,
        group: crate::mesh::NODES_GROUP.to_string(),
        pings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_at_its_member_limit_admits_nobody_more() {
        let membership = |count: u64| {
            let nodes: BTreeMap<NodeId, MemberNode> = (1..=count).map(|id| (id, crate::sim::member(id))).collect();
            openraft::Membership::new(vec![BTreeSet::from([1])], nodes)
        };
        let full = membership(CLUSTER_MEMBERS_MAX as u64);
        assert_eq!(check_room(&full).unwrap_err().code, ErrorCode::TooLarge);
        assert!(check_room(&membership(CLUSTER_MEMBERS_MAX as u64 - 1)).is_ok());
    }
}
