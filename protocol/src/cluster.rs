//! Cluster requests, the membership node record, and the status snapshot `pando cluster status` prints.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::kv::Bytes;

/// What membership records about each node: its iroh identity and where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The node's ed25519 public key (32 bytes); also its iroh endpoint id.
    pub public_key: Bytes,
    /// Socket addresses the node was last known to listen on.
    pub addrs: Vec<SocketAddr>,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{:?}", hex(&self.public_key), self.addrs)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    Status,
    /// A new node asks to join; needs a join token, and `node.public_key` must be the key the node's connection
    /// authenticated with. The leader spends one use of the token, assigns an id and adds the node as a learner.
    Join {
        node: MemberNode,
    },
    /// Adds a node as a learner under a chosen id.
    AddLearner {
        node_id: u64,
        node: MemberNode,
    },
    /// Makes a learner a voter once it has caught up.
    Promote {
        node_id: u64,
    },
    /// Removes a node from the cluster (voter or learner).
    Remove {
        node_id: u64,
    },
    /// A member announces the addresses it listens on now (after a restart on another port).
    UpdateAddress {
        node_id: u64,
        node: MemberNode,
    },
    /// Replaces member `node_id`'s key (its iroh identity and credential) with `public_key`. Asked by the member
    /// over its current key, or by an admin; `proof` is the new key's signature over
    /// [`node_key_rotation_message`], so nobody registers a key they do not hold. From the commit on, the old key
    /// is refused on every protocol and the node serves under the new one.
    RotateNodeKey {
        node_id: u64,
        public_key: Bytes,
        proof: Bytes,
    },
    /// Prometheus text exposition of this node's metrics.
    Metrics,
    /// The node's supervision tree: each child, whether it runs, how often it restarted.
    Actors,
    /// Makes an actor of this node panic, to exercise supervision. Refused unless the node runs with
    /// `--enable-fault-injection`.
    InjectPanic {
        actor: String,
    },
    /// The node's actor mesh: its ractor_cluster sessions to other members, and a ping of every node agent in the
    /// cluster-wide process group, sent from this node.
    Mesh,
    /// The answering node's build and the protocol version it speaks.
    Version,
}

/// What a node's new key signs to prove it holds the key it asks to be registered under (the cluster and the node are
/// in it, so a proof cannot be replayed for another node or cluster).
pub fn node_key_rotation_message(cluster_id: &[u8], node_id: u64, public_key: &[u8]) -> Vec<u8> {
    let mut message = b"pando node key rotation v1\0".to_vec();
    message.extend_from_slice(&(cluster_id.len() as u64).to_be_bytes());
    message.extend_from_slice(cluster_id);
    message.extend_from_slice(&node_id.to_be_bytes());
    message.extend_from_slice(public_key);
    message
}

/// One ractor_cluster session as the mesh report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSession {
    /// The member at the other end, as its authenticated iroh identity says.
    pub node_id: Option<u64>,
    /// The name the peer gave in the ractor_cluster handshake (`None` until it has authenticated).
    pub peer_name: Option<String>,
    /// Whether the peer dialled this node.
    pub incoming: bool,
}

/// One node agent's answer to a ping through the process group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPing {
    /// The node the answering agent runs on (from its answer; `None` if it did not answer).
    pub node_id: Option<u64>,
    /// Whether the agent is on this node.
    pub local: bool,
    pub round_trip_us: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshReport {
    pub node_id: u64,
    pub sessions: Vec<MeshSession>,
    /// Members other than this node with no session yet.
    pub unconnected: Vec<u64>,
    /// The process group every node agent joins.
    pub group: String,
    pub pings: Vec<MeshPing>,
}

/// One supervised actor as `pando actors` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorReport {
    /// Path in the tree, such as `node/raft`.
    pub path: String,
    pub alive: bool,
    pub restarts: u64,
    /// ractor's id of the live instance.
    pub actor_id: Option<String>,
    /// What the actor is doing, when it says more than alive or not (a plugin's generation, state and last error).
    #[serde(default)]
    pub detail: Option<String>,
    /// Its mailbox, counted by the actor runtime; `None` for an actor that is not running, and from nodes older than
    /// the field.
    #[serde(default)]
    pub mailbox: Option<MailboxReport>,
    /// Why it last ended abnormally (the restart that followed is counted in `restarts`).
    #[serde(default)]
    pub last_failure: Option<FailureReport>,
    /// The call it runs now: a plugin instance's function, a job worker's job.
    #[serde(default)]
    pub current: Option<CurrentCall>,
}

/// An actor's mailbox as its runtime counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxReport {
    /// Messages waiting to be handled.
    pub queued: u64,
    /// Messages handled since this instance started (a restart starts from 0).
    pub handled: u64,
    /// How long the message in its handler has run, in milliseconds; `None` while it waits for one.
    pub busy_ms: Option<u64>,
}

/// An abnormal end of an actor: its panic message or error, or why its restart failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    pub reason: String,
    /// How long ago, in milliseconds, when the supervisor saw it happen.
    pub ago_ms: Option<u64>,
}

/// Work an actor runs right now on behalf of someone else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentCall {
    /// What runs, in words: `call echo.run`, `job 42 attempt 1 (fence 7) of queue mail`.
    pub what: String,
    /// For how long, in milliseconds.
    pub running_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResponse {
    Status(ClusterStatus),
    /// Answer to [`ClusterRequest::Join`]: the new node's id and what it needs to act as a member.
    Joined {
        node_id: u64,
        cluster_id: Bytes,
        /// The secret every member shares to serve (the actor mesh's cookie and plugins' signing keys derive from it);
        /// it mints no credential: tokens are records in the replicated state.
        member_secret: Bytes,
        /// Current members, which the joiner trusts for Raft traffic until its own log holds the membership.
        members: Vec<crate::ticket::TicketNode>,
    },
    /// A membership change committed at this log index.
    MembershipChanged {
        log_index: u64,
    },
    Metrics {
        text: String,
    },
    Actors {
        actors: Vec<ActorReport>,
        /// The node whose tree this is (`None` from nodes older than the field).
        #[serde(default)]
        node_id: Option<u64>,
    },
    /// The panic was injected.
    Injected,
    Mesh(MeshReport),
    /// Answer to [`ClusterRequest::Version`].
    Version(NodeVersion),
}

/// What a node runs: its build's version and the wire protocol version it speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVersion {
    pub node_id: u64,
    /// The node's package version (`pando-node --version`).
    pub version: String,
    /// [`crate::PROTOCOL_VERSION`] of the node's build.
    pub protocol: u16,
}

/// One member as the status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    /// Hex of the node's public key.
    pub public_key: String,
    pub addrs: Vec<SocketAddr>,
    /// Voters count toward quorum; learners only replicate.
    pub voter: bool,
    /// On the leader: the last log index known replicated to this member.
    pub matched_index: Option<u64>,
    /// On the leader: how many entries this member is behind the leader's last log index.
    pub lag: Option<u64>,
}

/// A node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Hex of the cluster id.
    pub cluster_id: String,
    /// The answering node.
    pub node_id: u64,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The KV store revision at the last applied entry.
    pub revision: u64,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index purged from this node's log.
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Hex of the digest of every entry this node applied, in order, up to `applied_digest_index` (read together).
    /// Two replicas showing the same index show the same digest unless their states diverged.
    #[serde(default)]
    pub applied_digest: String,
    #[serde(default)]
    pub applied_digest_index: Option<u64>,
    /// CPU time (user and system) the answering node's process has used since it started, in milliseconds, where the
    /// platform says (Linux): `pando bench` shows each member's CPU beside its ops/s.
    #[serde(default)]
    pub process_cpu_ms: Option<u64>,
}

/// User plus system CPU time in milliseconds from the text of a Linux `/proc/<pid>/stat` (fields 14 and 15, in
/// clock ticks of 1/100 s, the `USER_HZ` every Linux architecture reports). `None` when the text is not one.
pub fn cpu_ms_from_proc_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself: count after the last.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) * 10)
}

/// Lowercase hex of bytes, for ids and keys shown to people.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
