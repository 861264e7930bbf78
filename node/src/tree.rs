//! The node's supervision tree: storage, then raft, then the RPC gateway, then the actor mesh, then blobs, then
//! plugins, under a rest_for_one root. The mesh, the blob store and the plugins come last: their restarts never
//! disturb client connections, and a plugin supervisor that gives up takes nothing else down with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pando_actors::directory::Directory;
use pando_actors::mesh::{MeshActor, MeshArgs};
use pando_actors::raft::{RaftActor, RaftArgs};
use pando_actors::rpc::{RpcArgs, RpcContext, RpcGateway};
use pando_actors::storage_actor::{StorageActor, StorageArgs};
use pando_actors::supervision::{ChildSpec, Restart, Strategy, SupervisorArgs, SupervisorOptions};
use pando_protocol::cluster::MemberNode;

/// Restarts the root tolerates within [`ROOT_RESTART_PERIOD_MS`] before the node exits.
pub const ROOT_RESTARTS_MAX: u32 = 5;
pub const ROOT_RESTART_PERIOD_MS: u64 = 30_000;

pub struct TreeConfig {
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub raft_config: Arc<openraft::Config>,
    pub bootstrap: Option<BTreeMap<u64, MemberNode>>,
    pub endpoint: iroh::Endpoint,
    pub network: pando_actors::raft::transport::RaftTransport,
    pub context: RpcContext,
    pub directory: Directory,
    pub blobs: pando_actors::blobs::BlobConfig,
    pub plugins: pando_actors::plugins::PluginConfig,
}

pub fn root(config: TreeConfig) -> SupervisorArgs {
    let storage = ChildSpec::new(
        "storage",
        Restart::Permanent,
        StorageActor,
        StorageArgs { dir: config.data_dir.join("db"), directory: config.directory.clone() },
    );
    let raft = ChildSpec::new(
        "raft",
        Restart::Permanent,
        RaftActor,
        RaftArgs {
            node_id: config.node_id,
            config: config.raft_config,
            bootstrap: config.bootstrap,
            directory: config.directory.clone(),
            network: config.network,
        },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    let blobs = ChildSpec::new(
        "blobs",
        Restart::Permanent,
        pando_actors::blobs::BlobActor,
        pando_actors::blobs::BlobArgs {
            node_id: config.node_id,
            config: config.blobs,
            endpoint: config.endpoint.clone(),
            directory: config.directory.clone(),
        },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    let plugins = ChildSpec::new(
        "plugins",
        Restart::Permanent,
        pando_actors::plugins::PluginSupervisor,
        pando_actors::plugins::PluginsArgs {
            node_id: config.node_id,
            directory: config.directory.clone(),
            config: config.plugins,
            cluster_secret: config.context.cluster_secret_key,
        },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    let mesh = ChildSpec::new(
        "mesh",
        Restart::Permanent,
        MeshActor,
        MeshArgs {
            node_id: config.node_id,
            endpoint: config.endpoint.clone(),
            directory: config.directory.clone(),
            cookie: pando_actors::mesh::cookie(&config.context.cluster_secret_key),
        },
    );
    let rpc = ChildSpec::new(
        "rpc",
        Restart::Permanent,
        RpcGateway,
        RpcArgs { endpoint: config.endpoint, context: config.context },
    );
    SupervisorArgs {
        name: "node".into(),
        options: SupervisorOptions::new(
            Strategy::RestForOne,
            ROOT_RESTARTS_MAX,
            Duration::from_millis(ROOT_RESTART_PERIOD_MS),
        ),
        children: vec![storage, raft, rpc, mesh, blobs, plugins],
    }
}
