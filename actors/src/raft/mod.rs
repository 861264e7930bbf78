//! Raft: openraft's type configuration, the network between members, and the RaftActor that group-commits proposals.

pub mod handle;
pub mod raft_actor;
pub mod runtime;
pub mod sim_network;
pub mod transport;
pub mod type_config;

pub use handle::{PeerHealth, RaftCore, RaftHandle};
pub use raft_actor::{RaftActor, RaftArgs, RaftMsg};

/// Raft timing for real nodes.
pub fn default_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "pando".into(),
        // openraft bounds each AppendEntries by one heartbeat interval: long enough for a few MiB of entries.
        heartbeat_interval: 200,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
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
