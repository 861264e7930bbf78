//! The node's supervision tree: storage, then raft, then the RPC gateway, then the actor mesh, then blobs, then
//! plugins, under a rest_for_one root. The mesh, the blob store and the plugins come last: their restarts never
//! disturb client connections, and a plugin supervisor that gives up takes nothing else down with it.
//!
//! The simulator builds the same tree in a [simulated world](World::Simulated): storage on a simulated disk, clients
//! and the actor mesh's sessions over the simulated network. The blob store and the plugins need iroh (they have no
//! in-memory twin yet) and are left out there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;

use crate::blobs::{BlobActor, BlobArgs, BlobConfig};
use crate::directory::Directory;
use crate::mesh::{MeshActor, MeshArgs, MeshNet};
use crate::plugins::{PluginConfig, PluginSupervisor, PluginsArgs};
use crate::raft::sim_network::SimNet;
use crate::raft::transport::RaftTransport;
use crate::raft::{RaftActor, RaftArgs};
use crate::rpc::sim_link::SimRpcListener;
use crate::rpc::{RpcArgs, RpcContext, RpcGateway, RpcListener};
use crate::storage::SimDisk;
use crate::storage_actor::{StorageActor, StorageArgs};
use crate::supervision::{ChildSpec, Restart, Strategy, SupervisorArgs, SupervisorOptions};

/// Restarts the root tolerates within [`ROOT_RESTART_PERIOD_MS`] before the node exits.
pub const ROOT_RESTARTS_MAX: u32 = 5;
pub const ROOT_RESTART_PERIOD_MS: u64 = 30_000;

pub struct TreeConfig {
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub raft_config: Arc<openraft::Config>,
    pub bootstrap: Option<BTreeMap<u64, MemberNode>>,
    pub network: RaftTransport,
    pub context: RpcContext,
    pub directory: Directory,
    pub world: World,
}

/// What the node runs on.
pub enum World {
    /// Production: redb on the data directory, one iroh endpoint for clients and peers.
    Iroh { endpoint: iroh::Endpoint, blobs: BlobConfig, plugins: PluginConfig },
    /// The simulator: redb on a simulated disk, clients and mesh sessions over the simulated network.
    Simulated { disk: SimDisk, listener: SimRpcListener, net: SimNet },
}

pub fn root(config: TreeConfig) -> SupervisorArgs {
    let storage = ChildSpec::new(
        "storage",
        Restart::Permanent,
        StorageActor,
        StorageArgs {
            dir: config.data_dir.join("db"),
            directory: config.directory.clone(),
            disk: match &config.world {
                World::Iroh { .. } => None,
                World::Simulated { disk, .. } => Some(disk.clone()),
            },
        },
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
    let listener = match &config.world {
        World::Iroh { endpoint, .. } => RpcListener::Iroh(endpoint.clone()),
        World::Simulated { listener, .. } => RpcListener::Simulated(listener.clone()),
    };
    let node_id = config.node_id;
    let directory = config.directory.clone();
    let cluster_secret = config.context.cluster_secret_key;
    let rpc = ChildSpec::new("rpc", Restart::Permanent, RpcGateway, RpcArgs { listener, context: config.context });
    let mut children = vec![storage, raft, rpc];
    match config.world {
        World::Iroh { endpoint, blobs, plugins } => {
            children.push(mesh(node_id, directory.clone(), cluster_secret, MeshNet::Iroh(endpoint.clone())));
            children.extend(blobs_and_plugins(node_id, directory, cluster_secret, endpoint, blobs, plugins));
        }
        World::Simulated { net, .. } => {
            children.push(mesh(node_id, directory, cluster_secret, MeshNet::Simulated(net)))
        }
    }
    SupervisorArgs {
        name: "node".into(),
        options: SupervisorOptions::new(
            Strategy::RestForOne,
            ROOT_RESTARTS_MAX,
            Duration::from_millis(ROOT_RESTART_PERIOD_MS),
        ),
        children,
    }
}

fn mesh(node_id: u64, directory: Directory, cluster_secret: [u8; 32], net: MeshNet) -> ChildSpec {
    let cookie = crate::mesh::cookie(&cluster_secret);
    ChildSpec::new("mesh", Restart::Permanent, MeshActor, MeshArgs { node_id, net, directory, cookie })
}

/// The children that need iroh: the blob store, and the plugins (their wasm comes from blobs).
fn blobs_and_plugins(
    node_id: u64,
    directory: Directory,
    cluster_secret: [u8; 32],
    endpoint: iroh::Endpoint,
    blobs: BlobConfig,
    plugins: PluginConfig,
) -> [ChildSpec; 2] {
    let blobs = ChildSpec::new(
        "blobs",
        Restart::Permanent,
        BlobActor,
        BlobArgs { node_id, config: blobs, endpoint, directory: directory.clone() },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    let plugins = ChildSpec::new(
        "plugins",
        Restart::Permanent,
        PluginSupervisor,
        PluginsArgs { node_id, directory, config: plugins, cluster_secret },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    [blobs, plugins]
}
