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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResponse {
    Status(ClusterStatus),
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
    pub members: Vec<MemberStatus>,
}

/// Lowercase hex of bytes, for ids and keys shown to people.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
