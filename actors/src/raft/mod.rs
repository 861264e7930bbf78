//! Raft: openraft's type configuration, the network between members, and the RaftActor that group-commits proposals.

mod batch;
pub mod handle;
mod joint;
pub mod raft_actor;
pub mod read_rounds;
pub mod runtime;
pub mod sim_network;
pub mod transport;
pub mod type_config;

pub use handle::{PeerHealth, RaftCore, RaftHandle};
pub use raft_actor::{RaftActor, RaftArgs, RaftMsg};

/// How often a leader tells its followers it is alive. openraft's tick (which also checks election timeouts) fires
/// every 1.5 heartbeats, so this also bounds how soon a follower notices a dead leader.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// openraft's election timeout is drawn from [min, max). A follower that knew a leader stands for election once it
/// heard nothing for the leader lease (openraft makes that the max) plus its timeout: 0.9-1.2 s here, plus up to one
/// tick. A killed leader is replaced in about a second, when a client notices it too (its QUIC idle timeout), so
/// failover from `kill -9` to the first write through the new leader stays within 1.5 s. An AppendEntries may take
/// up to the max (openraft patch, `vendor/openraft/PANDO-PATCH.md`).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 600;
// Many heartbeats fit in the shortest silence that starts an election, so a loaded leader's late heartbeats start
// none; and the timeouts stay well apart, so two followers rarely stand at once.
const _: () = assert!(ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MIN_MS >= 8 * HEARTBEAT_INTERVAL_MS);
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS >= 3 * HEARTBEAT_INTERVAL_MS);
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
