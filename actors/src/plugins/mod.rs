//! Plugins: a PluginSupervisor per node, converging to the plugin registry in the replicated state, and for every
//! enabled plugin a pool of PluginActors (one extism instance each) serving calls from a bounded queue.
//!
//! **Generations.** Every lifecycle change in the log carries a new generation. The supervisor follows the commit
//! stream: when the committed generation of a plugin differs from the one it serves, it fetches the wasm blob,
//! compiles it once, starts the new generation's instances (running `init` in each) and only then routes calls to
//! them. The old generation's queue is closed at that moment, so its instances finish what was already queued and
//! stop: no call is lost and none is answered by a half-loaded plugin. A generation that fails to load here is
//! reported (through the log) and the node keeps serving the previous one.
//!
//! **Catching up first.** A supervisor serves nothing until its node has caught up with the cluster (a read-index
//! round, through the leader when it does not lead) and it has loaded what the registry named then; calls meanwhile
//! are refused `UNAVAILABLE`. State-machine writes are not synced, so a member restarted after a crash may have
//! applied less than it had before it: serving at once, it answered with generation 1 after it had answered with 2
//! (simulator seed 995). Caught up, it has applied every registry change it ever served, and never goes back.
//!
//! **Failures.** A generation's instances are a [`Pool`] on the generic supervisor, linked to the PluginSupervisor. A
//! call that traps, times out or exhausts its fuel or memory fails alone; its instance fails and the pool replaces it.
//! More than `restart_intensity` replacements within `restart_period` and the pool gives up (fails): the
//! PluginSupervisor then quarantines the plugin on this node, and calls are refused with the reason until an operator
//! enables it again (a new generation). A draining generation's instances end normally once its queue is empty, and
//! its pool stops with the last of them.

pub mod host;
mod instance;
mod lifecycle;
mod load;
mod routes;
pub mod sim_engine;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crossbeam_channel::Receiver;
use pando_protocol::coord::CoordEvent;
use pando_protocol::limits::{PLUGIN_CATCH_UP_RETRY_MS, PLUGIN_CATCH_UP_WAIT_MS};
use pando_protocol::plugin::PluginRecord;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

pub use host::{BoxFuture, PluginHost, plugin_signing_key};
pub use instance::Job;
pub use load::{Compiled, LoadError, PluginEngine};
use load::{check_caps, compile};
pub use routes::PluginRoutes;
pub use status::{InstanceStatus, LocalPluginStatus};

use crate::blobs::BlobsHandle;
use crate::clock::Clock;
use crate::live::Live;
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, Control, SupervisorMsg};

/// Node-wide plugin settings.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Instance replacements of one plugin tolerated within `restart_period` before it is quarantined.
    pub restart_intensity: u32,
    pub restart_period: Duration,
    /// How often the supervisor compares what it runs with the registry, besides following the commit stream.
    pub reconcile_interval: Duration,
    /// Caps on what a manifest may ask for on this node.
    pub memory_pages_max: u32,
    pub timeout_ms_max: u32,
    /// Wait before trying again to load a generation whose wasm could not be fetched.
    pub fetch_retry: Duration,
}

impl Default for PluginConfig {
    fn default() -> PluginConfig {
        PluginConfig {
            restart_intensity: 5,
            restart_period: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(5),
            memory_pages_max: pando_protocol::plugin::PLUGIN_MEMORY_PAGES_MAX,
            timeout_ms_max: pando_protocol::plugin::PLUGIN_TIMEOUT_MS_MAX,
            fetch_retry: Duration::from_secs(5),
        }
    }
}

/// This node's plugins as the other subsystems reach them: the call routes (valid across the supervisor's restarts;
/// refusing calls as starting from a supervisor's start until it caught up and loaded) and the running supervisor.
#[derive(Clone)]
pub struct PluginsHandle {
    routes: PluginRoutes,
    supervisor: Live<ActorRef<PluginsMsg>>,
}

impl Default for PluginsHandle {
    fn default() -> PluginsHandle {
        PluginsHandle { routes: PluginRoutes::default(), supervisor: Live::new("plugin supervisor") }
    }
}

impl PluginsHandle {
    /// Where calls to this node's plugins go.
    pub fn routes(&self) -> &PluginRoutes {
        &self.routes
    }

    /// What this node runs of each plugin, from its supervisor (`None` while it is not running or does not answer).
    pub async fn status(&self) -> Option<Vec<LocalPluginStatus>> {
        let supervisor = self.supervisor.current()?;
        ractor::call_t!(supervisor, PluginsMsg::Status, 2_000).ok()
    }

    /// The running supervisor.
    pub fn supervisor(&self) -> Option<ActorRef<PluginsMsg>> {
        self.supervisor.current()
    }
}

#[derive(Clone)]
pub struct PluginsArgs {
    pub node_id: u64,
    /// What plugins read as the time of day.
    pub clock: Clock,
    /// The registry, and the commit stream that wakes reconciles.
    pub storage: StorageHandle,
    /// The leader, for `node_info`.
    pub raft: RaftHandle,
    /// This node's state reports, from any member.
    pub proposer: Proposer,
    /// What the host functions reach: KV and blobs on a plugin's behalf (the node's services).
    pub host: Arc<dyn PluginHost>,
    /// Where wasm modules are fetched from.
    pub blobs: BlobsHandle,
    /// Where the routes and the running supervisor are published.
    pub handle: PluginsHandle,
    pub config: PluginConfig,
    /// The cluster secret, from which each plugin's signing key is derived.
    pub cluster_secret: [u8; 32],
    /// What runs the plugins' code.
    pub engine: PluginEngine,
}

pub enum PluginsMsg {
    /// Compare what runs with the registry and start or stop generations.
    Reconcile,
    /// A generation's wasm was fetched and compiled (or could not be).
    Compiled {
        record: PluginRecord,
        result: Result<Compiled, LoadError>,
    },
    Status(RpcReplyPort<Vec<LocalPluginStatus>>),
    /// This node has caught up with the cluster since the supervisor started: reconciles may load what it applied.
    CaughtUp,
    /// Status for `pando actors` (each plugin and its instances as children), and fault injection.
    Control(Control),
    /// Tests and benchmarks: run a generation from local wasm bytes, as if the registry named it, and serve calls at
    /// once (without a cluster to catch up with). On a node the next reconcile stops it again (the registry does not
    /// name it).
    #[doc(hidden)]
    Preload {
        record: PluginRecord,
        wasm: Vec<u8>,
    },
}

impl ractor::Message for PluginsMsg {}

impl From<Control> for PluginsMsg {
    fn from(control: Control) -> PluginsMsg {
        PluginsMsg::Control(control)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PluginSupervisor;

/// One running generation of a plugin.
struct Generation {
    generation: u64,
    host: Arc<host::HostContext>,
    queue: Receiver<Job>,
    /// The supervisor of its instances.
    pool: ActorRef<SupervisorMsg>,
    calls: Arc<AtomicU64>,
}

#[derive(Default)]
struct LocalPlugin {
    serving: Option<Generation>,
    /// Older generations finishing the calls queued before the switch.
    draining: Vec<Generation>,
    /// The generation being fetched and compiled.
    loading: Option<u64>,
    /// A generation that failed to load here, why, and when to try again (transient failures only).
    failed: Option<(u64, String, Option<Instant>)>,
    quarantined: Option<(u64, String)>,
    disabled: Option<u64>,
    last_error: Option<String>,
}

pub struct PluginsState {
    args: PluginsArgs,
    plugins: BTreeMap<String, LocalPlugin>,
    /// Every live pool: its plugin and generation.
    pools: HashMap<ActorId, (String, u64)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The node caught up with the cluster since this supervisor started (see the module's docs).
    caught_up: bool,
}

impl Drop for PluginsState {
    /// A panicking supervisor skips `post_stop`: its commit-stream follower and reconcile timer end with it all the
    /// same (its pools are linked children, stopped by ractor).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Actor for PluginSupervisor {
    type Msg = PluginsMsg;
    type State = PluginsState;
    type Arguments = PluginsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.handle.routes.starting();
        args.handle.supervisor.publish(myself.clone());
        let mut tasks = Vec::new();
        // Catches up with the cluster before anything is served, trying until it can (an isolated member serves no
        // plugin until it can reach a leader).
        let proposer = args.proposer.clone();
        let actor = myself.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match proposer.linearize_anywhere(Duration::from_millis(PLUGIN_CATCH_UP_WAIT_MS)).await {
                    Ok(()) => {
                        let _ = actor.cast(PluginsMsg::CaughtUp);
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "plugins: could not catch up with the cluster yet");
                        tokio::time::sleep(Duration::from_millis(PLUGIN_CATCH_UP_RETRY_MS)).await;
                    }
                }
            }
        }));
        // Follows the commit stream: every registry change wakes a reconcile.
        let storage = args.storage.clone();
        let actor = myself.clone();
        tasks.push(tokio::spawn(async move {
            let mut events = storage.subscribe();
            loop {
                match events.recv().await {
                    Ok(committed) => {
                        if committed.coord.iter().any(|event| matches!(event, CoordEvent::PluginChanged { .. })) {
                            let _ = actor.cast(PluginsMsg::Reconcile);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = actor.cast(PluginsMsg::Reconcile);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }));
        // And looks again now and then: after a restart, a lagged stream, or a fetch that failed.
        let interval = args.config.reconcile_interval;
        let actor = myself.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let _ = actor.cast(PluginsMsg::Reconcile);
                tokio::time::sleep(interval).await;
            }
        }));
        Ok(PluginsState { args, plugins: BTreeMap::new(), pools: HashMap::new(), tasks, caught_up: false })
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        // The pools are linked children: they stop with the supervisor. Calls are refused as starting meanwhile.
        state.args.handle.routes.starting();
        state.args.handle.supervisor.retract_if(|supervisor| supervisor.get_id() == myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PluginsMsg::Reconcile => state.reconcile(&myself),
            PluginsMsg::CaughtUp => {
                state.caught_up = true;
                state.reconcile(&myself);
            }
            PluginsMsg::Compiled { record, result } => {
                state.compiled(&myself, record, result).await;
                state.start_serving_once_loaded();
            }
            PluginsMsg::Control(Control::InjectPanic) => panic!("fault injection: plugin supervisor panics on request"),
            PluginsMsg::Control(Control::Status(reply, deadline)) => {
                // Answered from a task: the pools are asked meanwhile, and reconciles go on.
                let snapshot = state.snapshot();
                tokio::spawn(async move {
                    let children = status::nodes(snapshot, deadline).await;
                    let _ = reply.send(ActorDetail { children, ..ActorDetail::default() });
                });
            }
            PluginsMsg::Status(reply) => {
                let snapshot = state.snapshot();
                tokio::spawn(async move {
                    let _ = reply.send(status::statuses(snapshot).await);
                });
            }
            PluginsMsg::Preload { record, wasm } => {
                state.plugins.entry(record.manifest.name.clone()).or_default().loading = Some(record.generation);
                let result = match check_caps(&record.manifest, &state.args.config) {
                    Ok(()) => compile(&record, wasm, &state.args).await,
                    Err(error) => Err(error),
                };
                state.compiled(&myself, record, result).await;
                state.routes().started();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = myself;
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => state.pool_ended(cell.get_id(), None),
            SupervisionEvent::ActorFailed(cell, error) => state.pool_ended(cell.get_id(), Some(error.to_string())),
            _ => {}
        }
        Ok(())
    }
}
