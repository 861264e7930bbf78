//! The node's services: typed, in-process APIs over the subsystems' handles. The RPC layer decodes, authenticates,
//! authorises and calls one of them; the plugin host functions call them on a plugin's behalf; hooks, jobs and the
//! FUSE mount are their next callers. A service validates its input (a caller's mistake is an answer that changes
//! nothing), bounds every wait by the caller's deadline, and answers [`WireError`](pando_protocol::error::WireError)s
//! with stable codes.
//!
//! **Layering:** services sit above every subsystem (storage, raft, mesh, blobs, plugins) and below the RPC layer;
//! no subsystem imports a service. The plugins' host functions reach KV and blobs through the
//! [`PluginHost`](crate::plugins::PluginHost) trait, which [`ServicesHost`] implements over these services.

pub mod blobs;
pub mod cluster;
pub mod coord;
pub mod fs;
pub mod hooks;
pub mod jobs;
pub mod kv;
pub mod plugins;
pub mod tokens;
pub mod watch;

pub use blobs::BlobService;
pub use cluster::ClusterService;
pub use coord::CoordService;
pub use fs::{FsService, SessionRequest};
pub use hooks::{HookService, HookWatcher};
pub use jobs::JobService;
pub use kv::{KvService, ScanPage};
pub use plugins::{PluginService, ServicesHost};
pub use tokens::TokenService;
pub use watch::{Observer, WatchFrame, WatchService, Watcher};

impl Services {
    /// The applied state of this node, for the RPC layer's scope checks.
    pub fn kv_reader(&self) -> Result<crate::storage::StateReader, pando_protocol::error::WireError> {
        self.kv.reader()
    }
}

/// One node's services, built once by the tree.
#[derive(Clone)]
pub struct Services {
    pub kv: KvService,
    pub coord: CoordService,
    pub blobs: BlobService,
    pub plugins: PluginService,
    pub cluster: ClusterService,
    pub watch: WatchService,
    pub tokens: TokenService,
    pub hooks: HookService,
    pub jobs: JobService,
    pub fs: FsService,
}
