//! Raft: openraft's type configuration, the network between members, and the RaftActor that group-commits proposals.

pub mod type_config;
