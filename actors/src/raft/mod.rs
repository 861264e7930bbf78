//! Raft: openraft's type configuration, the network between members, and the RaftActor that group-commits proposals.

pub mod handle;
mod joint;
pub mod raft_actor;
pub mod runtime;
pub mod sim_network;
pub mod transport;
pub mod type_config;

pub use handle::{PeerHealth, RaftCore, RaftHandle};
pub use raft_actor::{RaftActor, RaftArgs, RaftMsg};

/// How often a leader tells its followers it is alive. openraft's tick (which also checks election timeouts) fires
/// every 1.5 heartbeats, so this also bounds how soon a follower notices a dead leader.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// A follower that hears no leader for a random time in [min, max) stands for election. A killed leader is replaced
/// within about max + one tick; the client notices it within its QUIC idle timeout, of the same order. An
/// AppendEntries may take up to the minimum (openraft patch, `vendor/openraft/PANDO-PATCH.md`).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 1_000;
// Several heartbeats fit in the shortest election timeout, so a loaded leader's late heartbeat starts no election;
// and the timeouts stay well apart, so two followers rarely stand at once.
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS >= 5 * HEARTBEAT_INTERVAL_MS);
const _: () = assert!(ELECTION_TIMEOUT_MAX_MS >= 2 * ELECTION_TIMEOUT_MIN_MS);

/// Raft timing for real nodes.
pub fn default_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "pando".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        snapshot_max_chunk_size: pando_protocol::limits::SNAPSHOT_CHUNK_BYTES_MAX as u64,
        max_payload_entries: pando_protocol::limits::APPEND_ENTRIES_COUNT_MAX,
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim_tests;
