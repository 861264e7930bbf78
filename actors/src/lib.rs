//! Pando's actors: one module per subsystem, each a thin shell around a core from `pando-protocol` or around one
//! external resource (a redb database, an openraft instance, an iroh endpoint).

pub mod blobs;
pub mod clock;
pub mod commit_stream;
pub mod endpoint;
pub mod fuse;
pub mod hooks;
pub mod jobs;
pub mod live;
pub mod mesh;
pub mod plugins;
pub mod process;
pub mod raft;
pub mod retention;
pub mod rpc;
pub mod seeded_rng;
pub mod services;
pub mod sim;
pub mod storage;
pub mod storage_actor;
pub mod supervision;
pub mod tree;
