//! Where a node's actors find each other's current handles.
//!
//! A supervised actor gets a new `ActorRef` every time it restarts, so others look it up here instead of holding a
//! stale reference. One directory per node (not ractor's global registry), so several nodes can share a process.

use std::sync::{Arc, RwLock};

use ractor::ActorRef;

use crate::clock::Clock;
use crate::mesh::MeshMsg;
use crate::raft::RaftMsg;
use crate::raft::type_config::Raft;
use crate::storage::{LogStore, StateMachineStore, StateReader, Stores};
use crate::supervision::SupervisorMsg;

/// The live Raft instance and the actor that owns it.
#[derive(Clone)]
pub struct RaftHandles {
    pub raft: Raft,
    pub actor: ActorRef<RaftMsg>,
}

/// Clones of the open stores (they share one database handle).
#[derive(Clone)]
pub struct StoreHandles {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub reader: StateReader,
}

#[derive(Clone, Default)]
pub struct Directory {
    raft: Arc<RwLock<Option<RaftHandles>>>,
    stores: Arc<RwLock<Option<StoreHandles>>>,
    /// Public keys allowed to send Raft traffic besides the members in the log (the peers named when joining).
    trusted_peers: Arc<RwLock<std::collections::BTreeSet<[u8; 32]>>>,
    /// The node's root supervisor, for status trees.
    root: Arc<RwLock<Option<ActorRef<SupervisorMsg>>>>,
    /// The live actor mesh, which takes the sessions members open to this node, and its process-group scope.
    mesh: Arc<RwLock<Option<LiveMesh>>>,
    /// How the node tells the time of day (the wall clock, or a simulated one).
    clock: Clock,
    /// The live blob store and its worker's shared state.
    blobs: Arc<RwLock<Option<crate::blobs::BlobNode>>>,
    /// When each peer last answered a Raft RPC (the leader's view of who is alive).
    peer_health: PeerHealth,
    /// Where plugin calls go on this node.
    plugins: crate::plugins::PluginRoutes,
    plugin_supervisor: Arc<RwLock<Option<ActorRef<crate::plugins::PluginsMsg>>>>,
}

/// The live mesh actor and its process-group scope.
type LiveMesh = (ActorRef<MeshMsg>, String);

/// When each peer last answered one of this node's Raft RPCs.
pub type PeerHealth = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>>;

impl Directory {
    /// A directory whose node tells time by `clock`.
    pub fn with_clock(clock: Clock) -> Directory {
        Directory { clock, ..Directory::default() }
    }

    /// Milliseconds since the Unix epoch by the node's clock: what the leader stamps proposals with.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn peer_health(&self) -> PeerHealth {
        self.peer_health.clone()
    }

    /// Whether `node` answered a Raft RPC of this node within `within`.
    pub fn peer_heard_within(&self, node: u64, within: std::time::Duration) -> bool {
        let heard = self.peer_health.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&node).copied();
        heard.is_some_and(|at| at.elapsed() <= within)
    }

    pub fn plugins(&self) -> crate::plugins::PluginRoutes {
        self.plugins.clone()
    }

    pub fn plugin_supervisor(&self) -> Option<ActorRef<crate::plugins::PluginsMsg>> {
        self.plugin_supervisor.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn set_plugin_supervisor(&self, supervisor: Option<ActorRef<crate::plugins::PluginsMsg>>) {
        *self.plugin_supervisor.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = supervisor;
    }

    pub fn blobs(&self) -> Option<crate::blobs::BlobNode> {
        self.blobs.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn set_blobs(&self, blobs: Option<crate::blobs::BlobNode>) {
        *self.blobs.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = blobs;
    }

    pub fn set_root(&self, root: ActorRef<SupervisorMsg>) {
        *self.root.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(root);
    }

    pub fn root(&self) -> Option<ActorRef<SupervisorMsg>> {
        self.root.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn mesh(&self) -> Option<ActorRef<MeshMsg>> {
        self.mesh.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|(mesh, _)| mesh.clone())
    }

    /// The process-group scope the live mesh's sessions are confined to ([`crate::mesh::scope`]).
    pub fn mesh_scope(&self) -> Option<String> {
        self.mesh.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|(_, scope)| scope.clone())
    }

    pub(crate) fn set_mesh(&self, mesh: ActorRef<MeshMsg>, scope: String) {
        *self.mesh.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((mesh, scope));
    }

    /// Forgets `mesh` if it is still the registered one (a restarted mesh may have registered already).
    pub(crate) fn clear_mesh(&self, mesh: &ActorRef<MeshMsg>) {
        let mut slot = self.mesh.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_ref().is_some_and(|(current, _)| current.get_id() == mesh.get_id()) {
            *slot = None;
        }
    }

    pub fn trust_peer(&self, public_key: [u8; 32]) {
        self.trusted_peers.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(public_key);
    }

    pub fn is_trusted_peer(&self, public_key: &[u8; 32]) -> bool {
        self.trusted_peers.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(public_key)
    }

    pub fn stores(&self) -> Option<StoreHandles> {
        self.stores.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn set_stores(&self, stores: Stores) {
        let handles = StoreHandles { log: stores.log, state_machine: stores.state_machine, reader: stores.reader };
        *self.stores.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handles);
    }

    pub(crate) fn clear_stores(&self) {
        *self.stores.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    pub fn raft(&self) -> Option<RaftHandles> {
        self.raft.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn set_raft(&self, handles: RaftHandles) {
        *self.raft.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handles);
    }

    pub(crate) fn take_raft(&self) -> Option<RaftHandles> {
        self.raft.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}
