//! The node's supervision tree: the endpoint's protocol router, then storage, raft, the RPC gateway, the actor mesh,
//! blobs and plugins, under a rest_for_one root (the node adds its membership duties at run time, last). The mesh, the blob store and the plugins come last: their restarts never
//! disturb client connections, and a plugin supervisor that gives up takes nothing else down with it.
//!
//! The simulator builds the same tree in a [simulated world](World::Simulated): storage on a simulated disk, clients,
//! the actor mesh's sessions and members' blob fetches over the simulated network, and the blob store on its
//! in-memory twin ([`crate::blobs::sim_store`]), and the plugins on the simulator's stand-in for extism
//! ([`crate::plugins::sim_engine`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;

use crate::blobs::sim_store::SimBlobDisk;
use crate::blobs::{BlobActor, BlobArgs, BlobBackend, BlobConfig, BlobsHandle};
use crate::clock::Clock;
use crate::endpoint::{EndpointActor, EndpointArgs};
use crate::hooks::delivery::{NodeRunner, Runner};
use crate::hooks::exec::ExecConfig;
use crate::hooks::{HookRouterActor, HookRouterArgs, HooksHandle};
use crate::mesh::{MeshArgs, MeshHandle, MeshNet, Proposer};
use crate::plugins::{PluginConfig, PluginEngine, PluginSupervisor, PluginsArgs, PluginsHandle};
use crate::raft::sim_network::SimNet;
use crate::raft::transport::RaftTransport;
use crate::raft::{RaftActor, RaftArgs, RaftHandle};
use crate::retention::{RetentionActor, RetentionArgs, RetentionConfig};
use crate::rpc::sim_link::SimRpcListener;
use crate::rpc::{GatewayHandle, RpcArgs, RpcContext, RpcGateway, RpcListener};
use crate::services::tokens::TokenRandomness;
use crate::services::{
    BlobService, ClusterService, CoordService, HookService, KvService, PluginService, Services, ServicesHost,
    TokenService, WatchService,
};
use crate::storage::SimDisk;
use crate::storage_actor::{StorageActor, StorageArgs, StorageHandle};
use crate::supervision::{ChildSpec, Restart, Strategy, SupervisorArgs, SupervisorOptions, TreeHandle};

/// Restarts the root tolerates within [`ROOT_RESTART_PERIOD_MS`] before the node exits.
pub const ROOT_RESTARTS_MAX: u32 = 5;
pub const ROOT_RESTART_PERIOD_MS: u64 = 30_000;

/// Every subsystem's handle, built once per node: the tree hands each child the ones it depends on (readable from
/// its `Args`), and the code that started the node keeps them to watch it.
#[derive(Clone)]
pub struct Handles {
    pub storage: StorageHandle,
    pub raft: RaftHandle,
    pub mesh: MeshHandle,
    pub blobs: BlobsHandle,
    pub plugins: PluginsHandle,
    pub gateway: GatewayHandle,
    pub tree: TreeHandle,
    pub hooks: HooksHandle,
    /// This node's job counters (its workers count, the metrics read).
    pub jobs: Arc<crate::jobs::JobCounters>,
}

/// What differs between the services of a real node and a simulated one.
#[derive(Clone, Copy, Debug)]
pub struct ServiceOptions {
    /// Whether panics may be injected (`--enable-fault-injection`).
    pub fault_injection: bool,
    pub randomness: TokenRandomness,
    /// The node process's CPU time for the status (nothing in the simulator, whose nodes share a process).
    pub process_cpu_ms: fn() -> Option<u64>,
}

impl Handles {
    /// The handles of node `node_id`, whose Raft also serves `trusted_peers` (the members named when it joined).
    pub fn new(node_id: u64, trusted_peers: impl IntoIterator<Item = [u8; 32]>) -> Handles {
        Handles {
            storage: StorageHandle::default(),
            raft: RaftHandle::new(node_id, trusted_peers),
            mesh: MeshHandle::default(),
            blobs: BlobsHandle::default(),
            plugins: PluginsHandle::default(),
            gateway: GatewayHandle::default(),
            tree: TreeHandle::default(),
            hooks: HooksHandle::default(),
            jobs: Arc::default(),
        }
    }

    /// Proposes node-internal commands from this node, wherever the leader is.
    pub fn proposer(&self) -> Proposer {
        Proposer::new(self.raft.clone(), self.mesh.clone())
    }

    /// The services of node `node_id` over these handles (`keys` are the cluster's identity).
    pub fn services(&self, node_id: u64, keys: &ClusterKeys, options: ServiceOptions) -> Services {
        let (kv, blobs) = self.kv_and_blobs(node_id);
        let tokens = TokenService::new(self.raft.clone(), self.storage.clone(), self.proposer(), options.randomness);
        let watch = WatchService::new(self.storage.clone(), self.raft.clone());
        Services {
            kv,
            coord: CoordService::new(self.raft.clone(), self.storage.clone()),
            hooks: HookService::new(self.raft.clone(), self.storage.clone(), self.hooks.clone(), watch.clone()),
            jobs: crate::services::JobService::new(self.raft.clone(), self.storage.clone(), self.proposer()),
            watch,
            plugins: PluginService::new(node_id, self.raft.clone(), self.storage.clone(), self.plugins.clone()),
            cluster: ClusterService::new(
                node_id,
                keys.cluster_id.clone(),
                keys.member_secret,
                tokens.clone(),
                options.fault_injection,
                options.process_cpu_ms,
                self.raft.clone(),
                self.storage.clone(),
                self.mesh.clone(),
                self.tree.clone(),
            )
            .with_job_counters(self.jobs.clone()),
            fs: self.fs(node_id),
            blobs,
            tokens,
        }
    }

    /// The file-system service (its chunk cache is its own: the mount uses the one in [`Handles::services`]).
    pub fn fs(&self, node_id: u64) -> crate::services::FsService {
        let (_, blobs) = self.kv_and_blobs(node_id);
        crate::services::FsService::new(self.storage.clone(), self.proposer(), blobs)
    }

    /// The KV and blob services (stateless: every pair built from the same handles serves the same node).
    pub fn kv_and_blobs(&self, node_id: u64) -> (KvService, BlobService) {
        let blobs =
            BlobService::new(node_id, self.raft.clone(), self.storage.clone(), self.proposer(), self.blobs.clone());
        (KvService::new(self.raft.clone(), self.storage.clone(), self.proposer(), blobs.clone()), blobs)
    }

    /// What the plugin supervisor of node `node_id` runs on.
    pub fn plugins_args(
        &self,
        node_id: u64,
        clock: Clock,
        config: PluginConfig,
        cluster_secret: [u8; 32],
    ) -> PluginsArgs {
        let (kv, blobs) = self.kv_and_blobs(node_id);
        PluginsArgs {
            node_id,
            clock,
            storage: self.storage.clone(),
            raft: self.raft.clone(),
            proposer: self.proposer(),
            host: Arc::new(ServicesHost::new(kv, blobs)),
            blobs: self.blobs.clone(),
            handle: self.plugins.clone(),
            config,
            cluster_secret,
            engine: PluginEngine::Extism,
        }
    }
}

/// The cluster's identity as this node serves it.
#[derive(Clone)]
pub struct ClusterKeys {
    pub cluster_id: Vec<u8>,
    /// The secret every member shares to serve: the actor mesh's cookie and the plugins' signing keys derive from it.
    /// It mints no credential (tokens are records in the replicated state).
    pub member_secret: [u8; 32],
}

pub struct TreeConfig {
    pub data_dir: PathBuf,
    pub node_id: u64,
    pub raft_config: Arc<openraft::Config>,
    pub bootstrap: Option<BTreeMap<u64, MemberNode>>,
    pub network: RaftTransport,
    pub keys: ClusterKeys,
    /// Whether `InjectPanic` is served (`--enable-fault-injection`).
    pub fault_injection: bool,
    pub clock: Clock,
    pub handles: Handles,
    pub world: World,
    /// What the KV change history keeps (the leader compacts the rest).
    pub retention: RetentionConfig,
}

/// What the node runs on.
pub enum World {
    /// Production: redb on the data directory, one iroh endpoint for clients and peers.
    Iroh {
        endpoint: iroh::Endpoint,
        blobs: BlobConfig,
        plugins: PluginConfig,
        exec: ExecConfig,
        jobs: crate::jobs::JobsConfig,
        /// The file system's mount on this node (`--mount`), if any.
        mount: Option<crate::fuse::MountConfig>,
    },
    /// The simulator: redb on a simulated disk, clients, mesh sessions and blob fetches over the simulated network, the
    /// blob store's in-memory twin on a blob disk that outlives crashes.
    Simulated { disk: SimDisk, listener: SimRpcListener, net: SimNet, blobs: BlobConfig, blob_disk: SimBlobDisk },
}

pub fn root(config: TreeConfig) -> SupervisorArgs {
    let handles = config.handles;
    let storage = ChildSpec::new(
        "storage",
        Restart::Permanent,
        StorageActor,
        StorageArgs {
            dir: config.data_dir.join("db"),
            handle: handles.storage.clone(),
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
            handle: handles.raft.clone(),
            storage: handles.storage.clone(),
            clock: config.clock,
            network: config.network,
        },
    )
    .with_shutdown_timeout(Duration::from_secs(10));
    let listener = match &config.world {
        World::Iroh { .. } => RpcListener::Router(handles.gateway.clone()),
        World::Simulated { listener, .. } => RpcListener::Simulated(listener.clone()),
    };
    let node_id = config.node_id;
    let cluster_secret = config.keys.member_secret;
    let (randomness, process_cpu_ms): (_, fn() -> Option<u64>) = match &config.world {
        World::Iroh { .. } => (TokenRandomness::Os, crate::services::cluster::own_process_cpu_ms),
        World::Simulated { .. } => (TokenRandomness::Seeded, || None),
    };
    let options = ServiceOptions { fault_injection: config.fault_injection, randomness, process_cpu_ms };
    let mut services = handles.services(node_id, &config.keys, options);
    services.fs = services.fs.with_capacity_of(&config.data_dir);
    let context = RpcContext { clock: config.clock, services: services.clone() };
    let rpc = ChildSpec::new("rpc", Restart::Permanent, RpcGateway, RpcArgs { listener, context });
    let mut children = Vec::new();
    if let World::Iroh { endpoint, .. } = &config.world {
        // First: a restart of any other subsystem leaves the router, and the other protocols' connections, alone.
        let args = EndpointArgs {
            endpoint: endpoint.clone(),
            gateway: handles.gateway.clone(),
            raft: handles.raft.clone(),
            mesh: handles.mesh.clone(),
            blobs: handles.blobs.clone(),
        };
        children.push(ChildSpec::new("endpoint", Restart::Permanent, EndpointActor, args));
    }
    children.extend([storage, raft, rpc]);
    let mesh_net = match &config.world {
        World::Iroh { endpoint, .. } => MeshNet::Iroh(endpoint.clone()),
        World::Simulated { net, .. } => MeshNet::Simulated(net.clone()),
    };
    children.push(mesh(node_id, &handles, cluster_secret, mesh_net));
    let retention = RetentionArgs {
        config: config.retention,
        raft: handles.raft.clone(),
        storage: handles.storage.clone(),
        clock: config.clock,
    };
    children.push(ChildSpec::new("retention", Restart::Permanent, RetentionActor, retention));
    let runner: Arc<dyn Runner> = match &config.world {
        World::Iroh { exec, .. } => Arc::new(NodeRunner {
            exec: exec.clone(),
            plugins: Some(handles.plugins.clone()),
            mesh: handles.mesh.clone(),
        }),
        World::Simulated { .. } => Arc::new(crate::sim::SimHookRunner),
    };
    let hooks = HookRouterArgs {
        node_id,
        handle: handles.hooks.clone(),
        storage: handles.storage.clone(),
        raft: handles.raft.clone(),
        proposer: handles.proposer(),
        clock: config.clock,
        runner,
        followers_deliver: matches!(config.world, World::Iroh { .. }),
    };
    let (jobs_config, job_runner): (_, Arc<dyn crate::jobs::JobRunner>) = match &config.world {
        World::Iroh { exec, jobs, .. } => (
            jobs.clone(),
            Arc::new(crate::jobs::NodeJobRunner {
                reaper: exec.reaper.clone(),
                plugins: Some(handles.plugins.clone()),
                outputs: Some(Arc::new(crate::services::jobs::BlobOutputs {
                    blobs: services.blobs.clone(),
                    timeout: Duration::from_secs(60),
                })),
            }),
        ),
        World::Simulated { .. } => (crate::sim::job_config(), Arc::new(crate::sim::SimJobRunner)),
    };
    let jobs = crate::jobs::JobsArgs {
        node_id,
        log: Arc::new(crate::services::jobs::WorkerLog {
            service: services.jobs.clone(),
            forward: jobs_config.followers_claim,
        }),
        config: jobs_config,
        raft: handles.raft.clone(),
        storage: handles.storage.clone(),
        runner: job_runner,
        dispatch: Default::default(),
        counters: handles.jobs.clone(),
    };
    let hooks = ChildSpec::new("hooks", Restart::Permanent, HookRouterActor, hooks)
        .with_shutdown_timeout(Duration::from_secs(5));
    let mut mount = None;
    match config.world {
        World::Iroh { endpoint, blobs, plugins, mount: mount_config, .. } => {
            mount = mount_config;
            children.push(blob_store(node_id, &handles, blobs, BlobBackend::Iroh(endpoint)));
            let plugins_args = handles.plugins_args(node_id, config.clock, plugins, cluster_secret);
            children.push(
                ChildSpec::new("plugins", Restart::Permanent, PluginSupervisor, plugins_args)
                    .with_shutdown_timeout(Duration::from_secs(10)),
            );
        }
        World::Simulated { net, blobs, blob_disk, .. } => {
            net.attach_blobs(node_id, handles.blobs.clone());
            children.push(blob_store(node_id, &handles, blobs, BlobBackend::Simulated { disk: blob_disk, net }));
            let plugins_args = PluginsArgs {
                engine: PluginEngine::Simulated,
                ..handles.plugins_args(node_id, config.clock, crate::sim::plugin_config(), cluster_secret)
            };
            children.push(
                ChildSpec::new("plugins", Restart::Permanent, PluginSupervisor, plugins_args)
                    .with_shutdown_timeout(Duration::from_secs(10)),
            );
        }
    }
    // After the plugins, which hooks and jobs call; their restarts touch nothing else.
    children.push(hooks);
    children.push(crate::jobs::child_spec(jobs));
    if let Some(config) = mount {
        // Last: it stops first, so its buffered writes are flushed while everything it needs still runs.
        let view = crate::fuse::view::ViewSources {
            coord: services.coord.clone(),
            jobs: services.jobs.clone(),
            plugins: services.plugins.clone(),
            cluster: services.cluster.clone(),
        };
        let fs = services.fs.clone();
        let storage = handles.storage.clone();
        children.push(crate::fuse::child_spec(crate::fuse::FuseArgs { config, fs, view, storage }));
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

fn mesh(node_id: u64, handles: &Handles, cluster_secret: [u8; 32], net: MeshNet) -> ChildSpec {
    let cookie = crate::mesh::cookie(&cluster_secret);
    let args = MeshArgs { node_id, net, raft: handles.raft.clone(), handle: handles.mesh.clone(), cookie };
    crate::mesh::child_spec("mesh", args)
}

/// The blob store (the plugins, after it, load their wasm from blobs).
fn blob_store(node_id: u64, handles: &Handles, config: BlobConfig, backend: BlobBackend) -> ChildSpec {
    let args = BlobArgs {
        node_id,
        config,
        storage: handles.storage.clone(),
        raft: handles.raft.clone(),
        proposer: handles.proposer(),
        handle: handles.blobs.clone(),
        backend,
    };
    ChildSpec::new("blobs", Restart::Permanent, BlobActor, args).with_shutdown_timeout(Duration::from_secs(10))
}
