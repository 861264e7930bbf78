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
mod load;
mod routes;
pub mod sim_engine;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::Receiver;
use pando_protocol::cluster::FailureReport;
use pando_protocol::command::Command;
use pando_protocol::coord::CoordEvent;
use pando_protocol::error::ErrorCode;
use pando_protocol::limits::{PLUGIN_CATCH_UP_RETRY_MS, PLUGIN_CATCH_UP_WAIT_MS};
use pando_protocol::plugin::{NodePluginState, NodePluginStatus, PluginCommand, PluginRecord};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::time::Instant;

pub use host::{BoxFuture, PluginHost, plugin_signing_key};
pub use instance::Job;
use instance::{InstanceArgs, PluginActor};
pub use load::{Compiled, LoadError, PluginEngine};
use load::{check_caps, compile, load};
pub use routes::PluginRoutes;
use routes::Route;

use crate::blobs::BlobsHandle;
use crate::clock::Clock;
use crate::live::Live;
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::sim::{PlantedBug, planted_bug};
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, ActorNode, ChildSpec, Control, Intensity, Pool, Restart, SupervisorMsg, pool};

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

/// What one node runs of one plugin, for `pando actors` and `pando plugin info`.
#[derive(Clone, Debug, Serialize)]
pub struct LocalPluginStatus {
    pub name: String,
    pub state: NodePluginState,
    /// The generation serving calls (0: none).
    pub generation: u64,
    pub instances: Vec<InstanceStatus>,
    pub restarts: u64,
    pub calls: u64,
    pub queued: usize,
    pub last_error: Option<String>,
    pub hooks: Vec<String>,
    pub timers: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub index: usize,
    pub actor_id: String,
}

/// This node's plugins as the other subsystems reach them: the call routes (valid across the supervisor's restarts;
/// empty while it restarts, so calls are refused as not running here) and the running supervisor.
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
                    let children = nodes(snapshot, deadline).await;
                    let _ = reply.send(ActorDetail { children, ..ActorDetail::default() });
                });
            }
            PluginsMsg::Status(reply) => {
                let snapshot = state.snapshot();
                tokio::spawn(async move {
                    let _ = reply.send(statuses(snapshot).await);
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

impl PluginsState {
    fn routes(&self) -> PluginRoutes {
        self.args.handle.routes.clone()
    }

    /// Calls go by the routes once the node caught up and nothing is loading: every plugin the registry named then is
    /// served, or refused with the reason.
    fn start_serving_once_loaded(&self) {
        if self.caught_up && self.plugins.values().all(|local| local.loading.is_none()) {
            self.routes().started();
        }
    }

    /// Starts loading every generation the registry wants and this node does not run; stops what it no longer
    /// wants. Nothing before the node caught up with the cluster.
    fn reconcile(&mut self, myself: &ActorRef<PluginsMsg>) {
        if !self.caught_up {
            return;
        }
        self.reconcile_caught_up(myself);
        self.start_serving_once_loaded();
    }

    fn reconcile_caught_up(&mut self, myself: &ActorRef<PluginsMsg>) {
        let Ok(reader) = self.args.storage.reader() else { return };
        let records = match reader.plugins() {
            Ok(records) => records,
            Err(fault) => {
                tracing::error!(%fault, "cannot read the plugin registry");
                return;
            }
        };
        let wanted: std::collections::BTreeSet<&str> =
            records.iter().map(|record| record.manifest.name.as_str()).collect();
        let removed: Vec<String> =
            self.plugins.keys().filter(|name| !wanted.contains(name.as_str())).cloned().collect();
        for name in removed {
            tracing::info!(plugin = %name, "plugin removed; stopping it");
            self.stop_serving(&name);
            self.routes().set(&name, None);
            if let Some(local) = self.plugins.get_mut(&name) {
                // Draining generations finish what they hold; the entry goes once they are gone.
                *local = LocalPlugin { draining: std::mem::take(&mut local.draining), ..LocalPlugin::default() };
            }
            self.plugins.retain(|key, local| key != &name || !local.draining.is_empty());
        }
        for record in records {
            let name = record.manifest.name.clone();
            let generation = record.generation;
            let local = self.plugins.entry(name.clone()).or_default();
            if !record.enabled {
                if local.disabled != Some(generation) {
                    local.disabled = Some(generation);
                    local.loading = None;
                    local.quarantined = None;
                    local.failed = None;
                    self.stop_serving(&name);
                    self.routes().set(&name, Some(Route::Disabled { generation }));
                    self.report(&name, generation, NodePluginState::Stopped, None);
                }
                continue;
            }
            local.disabled = None;
            let current = local.serving.as_ref().map(|serving| serving.generation);
            let settled = current == Some(generation)
                || (current.is_some() && planted_bug(PlantedBug::PluginReconcileSkipsUpgrade))
                || local.loading == Some(generation)
                || local.quarantined.as_ref().is_some_and(|(quarantined, _)| *quarantined == generation)
                || local.failed.as_ref().is_some_and(|(failed, _, retry)| {
                    *failed == generation && retry.is_none_or(|at| Instant::now() < at)
                });
            if settled {
                continue;
            }
            local.loading = Some(generation);
            tracing::info!(plugin = %name, generation, "loading plugin generation");
            let args = self.args.clone();
            let actor = myself.clone();
            tokio::spawn(async move {
                let result = load(&record, &args).await;
                let _ = actor.cast(PluginsMsg::Compiled { record, result });
            });
        }
    }

    /// A generation compiled (or failed to): start its instances and switch calls to it.
    async fn compiled(
        &mut self,
        myself: &ActorRef<PluginsMsg>,
        record: PluginRecord,
        result: Result<Compiled, LoadError>,
    ) {
        let name = record.manifest.name.clone();
        let generation = record.generation;
        let Some(local) = self.plugins.get_mut(&name) else { return };
        if local.loading != Some(generation) {
            // Superseded (a newer generation, a disable or a removal) while it loaded.
            return;
        }
        local.loading = None;
        let compiled = match result {
            Ok(compiled) => compiled,
            Err(error) => {
                self.load_failed(&name, generation, error);
                return;
            }
        };
        let manifest = record.manifest.clone();
        let (sender, queue) = crossbeam_channel::bounded(manifest.queue as usize);
        let calls = Arc::new(AtomicU64::new(0));
        let instance = InstanceArgs {
            plugin: name.clone(),
            generation,
            index: 0,
            module: compiled.module,
            queue: queue.clone(),
            timeout_ms: manifest.timeout_ms,
            fuel: manifest.fuel,
            memory_pages: manifest.memory_pages,
            calls: calls.clone(),
        };
        let config = &self.args.config;
        let intensity = Intensity { restarts_max: config.restart_intensity, period: config.restart_period };
        // Transient: an instance that ends normally (its queue closed and emptied) is done; one that fails is replaced.
        let pool =
            Pool::new(format!("plugin {name} generation {generation}"), manifest.instances as usize, intensity, {
                move |index| {
                    ChildSpec::new(
                        "instance",
                        Restart::Transient,
                        PluginActor,
                        InstanceArgs { index, ..instance.clone() },
                    )
                }
            });
        let pool = match pool.spawn_linked(myself.get_cell()).await {
            Ok(pool) => pool,
            Err(error) => {
                let message = crate::supervision::spawn_error_text(&error);
                self.load_failed(&name, generation, LoadError { message, transient: false });
                return;
            }
        };
        self.pools.insert(pool.get_id(), (name.clone(), generation));
        let serving = Generation { generation, host: compiled.host, queue, pool, calls };
        // Every instance is up: switch calls over. Dropping the old route closes the old queue; its instances drain.
        self.routes().set(&name, Some(Route::Serving { generation, queue: sender, stale: None }));
        let local = self.plugins.entry(name.clone()).or_default();
        if let Some(old) = local.serving.replace(serving) {
            local.draining.push(old);
        }
        local.failed = None;
        local.quarantined = None;
        tracing::info!(plugin = %name, generation, "plugin generation serving");
        self.report(&name, generation, NodePluginState::Running, None);
    }

    fn load_failed(&mut self, name: &str, generation: u64, error: LoadError) {
        tracing::warn!(plugin = %name, generation, error = %error.message, "plugin generation failed to load");
        let Some(local) = self.plugins.get_mut(name) else { return };
        let retry = error.transient.then(|| Instant::now() + self.args.config.fetch_retry);
        local.failed = Some((generation, error.message.clone(), retry));
        local.last_error = Some(error.message.clone());
        if !error.transient {
            self.report(name, generation, NodePluginState::LoadFailed, Some(error.message));
        }
    }

    /// A generation's pool ended: normally once its instances drained (or it was stopped), with `failure` when its
    /// instances failed past the restart intensity, which quarantines the plugin if that generation was serving.
    fn pool_ended(&mut self, id: ActorId, failure: Option<String>) {
        let Some((name, generation)) = self.pools.remove(&id) else { return };
        let routes = self.routes();
        let Some(local) = self.plugins.get_mut(&name) else { return };
        local.draining.retain(|draining| draining.pool.get_id() != id);
        let was_serving = local.serving.as_ref().is_some_and(|serving| serving.pool.get_id() == id);
        if was_serving {
            local.serving = None;
            routes.set(&name, None);
            match failure {
                Some(error) => {
                    let reason = format!("its instances failed too often ({error})");
                    tracing::error!(plugin = %name, generation, %reason, "plugin quarantined");
                    local.last_error = Some(error);
                    local.quarantined = Some((generation, reason.clone()));
                    routes.set(&name, Some(Route::Quarantined { generation, reason: reason.clone() }));
                    self.report(&name, generation, NodePluginState::Quarantined, Some(reason));
                }
                // Not expected while the route holds its queue open; the next reconcile loads the generation again.
                None => tracing::warn!(plugin = %name, generation, "a serving plugin generation's pool stopped"),
            }
        }
        self.plugins.retain(|_, local| {
            local.serving.is_some()
                || !local.draining.is_empty()
                || local.loading.is_some()
                || local.failed.is_some()
                || local.quarantined.is_some()
                || local.disabled.is_some()
        });
    }

    /// Stops the serving generation's instances and drops its route (the caller sets the new one).
    fn stop_serving(&mut self, name: &str) {
        let Some(local) = self.plugins.get_mut(name) else { return };
        if let Some(serving) = local.serving.take() {
            serving.pool.stop(Some("plugin stopped".into()));
            // Forgotten once its pool has stopped.
            local.draining.push(serving);
        }
        self.routes().set(name, None);
    }

    /// Reports, through the log, what this node runs of a plugin. Retried a few times; the periodic reconcile does
    /// not re-report, so a lost report shows as stale in `pando plugin info` until the next change.
    fn report(&self, name: &str, generation: u64, state: NodePluginState, error: Option<String>) {
        let running = self.plugins.get(name).and_then(|local| local.serving.as_ref()).map_or(0, |s| s.generation);
        let status = NodePluginStatus { node: self.args.node_id, running, state, generation, error, reported_ms: 0 };
        let command = Command::Plugin(PluginCommand::Report { name: name.to_string(), status });
        let proposer = self.args.proposer.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                match proposer.propose_anywhere(command.clone(), Duration::from_secs(5)).await {
                    Ok(_) => return,
                    Err(error) if error.code == ErrorCode::NotFound => return,
                    Err(error) => {
                        tracing::debug!(plugin = %name, %error, attempt, "plugin report not recorded yet");
                        tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
                    }
                }
            }
            tracing::warn!(plugin = %name, "gave up reporting the plugin's state");
        });
    }

    /// What this node runs of each plugin, as far as the supervisor knows without asking the pools.
    fn snapshot(&self) -> Vec<(LocalPluginStatus, Option<ActorRef<SupervisorMsg>>)> {
        self.plugins
            .iter()
            .map(|(name, local)| {
                let state = if local.quarantined.is_some() {
                    NodePluginState::Quarantined
                } else if local.disabled.is_some() {
                    NodePluginState::Stopped
                } else if local.failed.is_some() {
                    NodePluginState::LoadFailed
                } else if local.serving.is_some() {
                    NodePluginState::Running
                } else {
                    NodePluginState::Stopped
                };
                let serving = local.serving.as_ref();
                let status = LocalPluginStatus {
                    name: name.clone(),
                    state,
                    generation: serving.map_or(0, |serving| serving.generation),
                    instances: Vec::new(),
                    restarts: 0,
                    calls: serving.map_or(0, |serving| serving.calls.load(Ordering::Relaxed)),
                    queued: serving.map_or(0, |serving| serving.queue.len()),
                    last_error: local.last_error.clone(),
                    hooks: serving.map(|serving| serving.host.hook_subscriptions()).unwrap_or_default(),
                    timers: serving.map_or(0, |serving| serving.host.pending_timers()),
                };
                (status, serving.map(|serving| serving.pool.clone()))
            })
            .collect()
    }
}

/// Completes a snapshot with what each serving generation's pool says: its live instances, their restarts and the
/// last failure.
async fn statuses(snapshot: Vec<(LocalPluginStatus, Option<ActorRef<SupervisorMsg>>)>) -> Vec<LocalPluginStatus> {
    let mut statuses = Vec::with_capacity(snapshot.len());
    for (mut status, pool) in snapshot {
        if let Some(pool) = pool.as_ref()
            && let Some(workers) = pool::status(pool).await
        {
            status.restarts = workers.children.iter().map(|child| child.restarts).sum();
            status.instances = workers
                .children
                .iter()
                .filter_map(|child| {
                    Some(InstanceStatus { index: child.id.parse().ok()?, actor_id: child.actor_id.clone()? })
                })
                .collect();
            if workers.last_failure.is_some() {
                status.last_error = workers.last_failure;
            }
        }
        statuses.push(status);
    }
    statuses
}

/// Each plugin as `pando actors` shows it: its state, generation and counters, and its pool's instances under it.
async fn nodes(
    snapshot: Vec<(LocalPluginStatus, Option<ActorRef<SupervisorMsg>>)>,
    deadline: tokio::time::Instant,
) -> Vec<ActorNode> {
    let pools: Vec<_> = snapshot.iter().map(|(_, pool)| pool.clone()).collect();
    let asked = statuses(snapshot).await.into_iter().zip(pools).map(|(plugin, pool)| async move {
        let instances = match &pool {
            Some(pool) => {
                let send = |control| pool.cast(SupervisorMsg::Control(control)).is_ok();
                crate::supervision::control::ask(send, deadline).await.map(|detail| detail.children).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let detail = format!(
            "{} generation {} calls {} queued {}",
            plugin.state.as_str(),
            plugin.generation,
            plugin.calls,
            plugin.queued
        );
        ActorNode {
            id: plugin.name,
            alive: !plugin.instances.is_empty(),
            restarts: plugin.restarts,
            actor_id: pool.as_ref().map(|pool| pool.get_id().to_string()),
            detail: Some(detail),
            children: instances,
            mailbox: pool.as_ref().map(|pool| crate::supervision::control::mailbox(&pool.get_cell())),
            last_failure: plugin.last_error.map(|reason| FailureReport { reason, ago_ms: None }),
            current: None,
        }
    });
    futures::future::join_all(asked).await
}
