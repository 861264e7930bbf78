//! The actor mesh: ractor_cluster sessions between members, carried over iroh bi-streams (ALPN `pando/actors/1`),
//! so ractor process groups span the cluster. An actor joined to a group on one node is a member of that group on
//! every connected node, and a message sent to it from anywhere reaches it. Hook fan-out and job dispatch use this.
//!
//! Who may connect is decided by membership, not by ractor_cluster: a peer's iroh identity (its TLS-authenticated
//! public key) must be a node of the current Raft membership, and its session is labelled with that node's id. The
//! ractor_cluster cookie (derived from the cluster key) is a second check. Sessions of removed members are stopped.
//!
//! Each node's sessions are confined to the node's own process-group scope ([`scope`], a patch of ractor_cluster's
//! `NodeServer::with_scope`): a peer reaches only the actors this node put in that scope, and several simulated nodes
//! can share one process, each with its own view of the groups. In the simulator the session streams run over the
//! simulated network ([`sim_link`]) instead of iroh; everything else is the same code.
//!
//! Each pair of members holds one session; the member with the lower id dials. The mesh is one supervised unit
//! ([`child_spec`]): a generic one_for_all supervisor over ractor_cluster's `NodeServer`, this node's
//! [`agent::NodeAgent`] and the [`MeshActor`] that keeps the sessions; if any of them dies all three restart, and the
//! sessions come back on the next reconcile.

pub mod agent;
mod handle;
mod mesh_actor;
pub mod sim_link;
mod stream;

pub use handle::{MeshHandle, Proposer};
pub use stream::MeshStream;

pub use mesh_actor::{
    MeshActor, MeshArgs, MeshMsg, MeshNet, MeshStatus, PeerStream, SessionsArgs, accept_peer, child_spec, cookie,
};

/// How long dialling a member and opening the session stream may take.
pub const MESH_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How often the mesh compares its sessions with the membership.
pub const MESH_RECONCILE_INTERVAL_MS: u64 = 1_000;
/// First wait before redialling a member after a failed or lost session; doubles up to the maximum.
pub const MESH_REDIAL_BACKOFF_MS_MIN: u64 = 250;
pub const MESH_REDIAL_BACKOFF_MS_MAX: u64 = 10_000;
/// Largest ractor_cluster frame a peer may send (checked before the payload is allocated).
pub const MESH_FRAME_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Sessions one member may hold to this node at once (one is normal; two while a reconnect replaces a dead one).
pub const MESH_SESSIONS_PER_PEER_MAX: usize = 2;
/// First bytes on a session stream: names the sub-protocol version and makes the stream visible to the acceptor.
pub const MESH_PREAMBLE: &[u8; 8] = b"pando-a1";
/// How long an accepted connection may take to open its stream and send the preamble.
pub const MESH_PREAMBLE_TIMEOUT_MS: u64 = 5_000;
/// Deadline of a ping to one node agent.
pub const MESH_PING_TIMEOUT_MS: u64 = 2_000;
/// Most group members one ping round contacts.
pub const MESH_PING_TARGETS_MAX: usize = 64;
/// Restarts of the mesh's children (all three restart together) tolerated within [`MESH_RESTART_PERIOD_MS`]; one more
/// and the mesh fails to the node's root supervisor, which restarts it under its own intensity.
pub const MESH_RESTARTS_MAX: u32 = 5;
pub const MESH_RESTART_PERIOD_MS: u64 = 30_000;
/// The process group every node's agent joins.
pub const NODES_GROUP: &str = "pando.nodes";

/// The process-group scope of node `node_id`'s agent and of every actor its sessions bring in from other members. A
/// simulated cluster's nodes add their network's id ([`SimNet::id`](crate::raft::sim_network::SimNet::id)), so two
/// simulations in one process never share a group.
pub fn scope(node_id: u64, simulation: Option<u64>) -> String {
    match simulation {
        None => format!("pando.mesh.{node_id}"),
        Some(net) => format!("pando.sim{net}.mesh.{node_id}"),
    }
}

/// The session label (and so the identity) of a member: set by this node from the peer's authenticated iroh key.
pub(crate) fn session_label(node_id: u64) -> String {
    format!("node-{node_id}")
}

pub(crate) fn node_of_label(label: &str) -> Option<u64> {
    label.strip_prefix("node-")?.parse().ok()
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
