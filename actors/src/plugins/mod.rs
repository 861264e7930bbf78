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
//! **Failures.** A call that traps, times out or exhausts its fuel or memory fails alone; its instance is replaced.
//! More than `restart_intensity` replacements within `restart_period` quarantine the plugin on this node: calls are
//! refused with the reason until an operator enables it again (a new generation).

mod host;
mod instance;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use extism::CompiledPlugin;
use pando_protocol::command::Command;
use pando_protocol::coord::CoordEvent;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::plugin::{NodePluginState, NodePluginStatus, PluginCommand, PluginManifest, PluginRecord};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::time::Instant;

pub use host::plugin_signing_key;
pub use instance::Job;
use instance::{InstanceArgs, InstanceMsg, PluginActor};

use crate::clock::Clock;
use crate::live::Live;
use crate::mesh::Proposer;
use crate::raft::RaftHandle;
use crate::services::{BlobService, KvService};
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, ActorNode, Control, Intensity, RestartWindow};

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

/// Where calls go: the generation serving each plugin on this node, or why none does.
#[derive(Clone)]
enum Route {
    Serving { generation: u64, queue: Sender<Job> },
    Quarantined { generation: u64, reason: String },
    Disabled { generation: u64 },
}

/// The call routes of one node, shared by the RPC gateway, timers and the supervisor (which alone changes them).
#[derive(Clone, Default)]
pub struct PluginRoutes(Arc<RwLock<BTreeMap<String, Route>>>);

impl PluginRoutes {
    fn set(&self, name: &str, route: Option<Route>) {
        let mut routes = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match route {
            Some(route) => routes.insert(name.to_string(), route),
            None => routes.remove(name),
        };
    }

    fn clear(&self) {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    fn route(&self, name: &str) -> Option<Route> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }

    /// Queues a job on the generation serving `name` (only on `generation` when given), answering which one.
    pub(crate) fn submit_to(&self, name: &str, generation: Option<u64>, job: Job) -> Result<u64, Refused> {
        let refused = |code, message: String| Err(Refused::Error(WireError::new(code, message)));
        match self.route(name) {
            Some(Route::Serving { generation: serving, queue }) if generation.is_none_or(|g| g == serving) => {
                match queue.try_send(job) {
                    Ok(()) => Ok(serving),
                    Err(TrySendError::Full(_)) => refused(
                        ErrorCode::Busy,
                        format!("plugin `{name}` has {} calls queued on this node; retry with backoff", queue.len()),
                    ),
                    // The route was read just before an upgrade closed its queue.
                    Err(TrySendError::Disconnected(job)) => Err(Refused::Switching(job)),
                }
            }
            Some(Route::Serving { .. }) => {
                refused(ErrorCode::Unavailable, format!("plugin `{name}` moved to another generation"))
            }
            Some(Route::Quarantined { generation, reason }) => refused(
                ErrorCode::Unavailable,
                format!(
                    "plugin `{name}` (generation {generation}) is quarantined on this node: {reason}; \
                     `pando plugin enable {name}` lifts it"
                ),
            ),
            Some(Route::Disabled { generation }) => {
                refused(ErrorCode::Unavailable, format!("plugin `{name}` is disabled (generation {generation})"))
            }
            None => refused(ErrorCode::NotFound, format!("no plugin `{name}` runs on this node")),
        }
    }

    /// Calls `function` of plugin `name` on this node, within `timeout`; answers the output and the generation that
    /// produced it. A call that finds its generation's queue closed (an upgrade switched it in between) goes to the
    /// new one.
    pub async fn call(
        &self,
        name: &str,
        function: &str,
        input: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, u64), WireError> {
        let deadline = std::time::Instant::now() + timeout;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut job = Job { function: function.to_string(), input, deadline, reply: Some(reply) };
        let mut attempts = 0;
        let generation = loop {
            attempts += 1;
            match self.submit_to(name, None, job) {
                Ok(generation) => break generation,
                Err(Refused::Switching(returned)) if attempts < 3 => {
                    job = returned;
                    tokio::task::yield_now().await;
                }
                Err(refused) => return Err(refused.into_error(name)),
            }
        };
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result.map(|output| (output, generation)),
            // The instance was stopped with the call queued (the plugin was disabled or removed).
            Ok(Err(_)) => Err(WireError::new(
                ErrorCode::Unavailable,
                format!("plugin `{name}` stopped before running the call; it was not run"),
            )),
            Err(_) => Err(WireError::new(
                ErrorCode::Timeout,
                format!("plugin `{name}` did not answer within {} ms", timeout.as_millis()),
            )),
        }
    }
}

/// Why a job was not queued.
pub(crate) enum Refused {
    /// The generation's queue closed under the caller; the job comes back for the next one.
    Switching(Job),
    Error(WireError),
}

impl Refused {
    pub(crate) fn into_error(self, name: &str) -> WireError {
        match self {
            Refused::Switching(_) => {
                WireError::new(ErrorCode::Unavailable, format!("plugin `{name}` is switching generations; retry"))
            }
            Refused::Error(error) => error,
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
    /// Plugin KV reads and writes (the host functions).
    pub kv: KvService,
    /// Wasm modules, and plugin blob reads and writes.
    pub blobs: BlobService,
    /// Where the routes and the running supervisor are published.
    pub handle: PluginsHandle,
    pub config: PluginConfig,
    /// The cluster secret, from which each plugin's signing key is derived.
    pub cluster_secret: [u8; 32],
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
    /// Status for `pando actors` (each plugin and its instances as children), and fault injection.
    Control(Control),
    /// Tests and benchmarks: run a generation from local wasm bytes, as if the registry named it. On a node the next
    /// reconcile stops it again (the registry does not name it).
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

pub struct Compiled {
    compiled: Arc<CompiledPlugin>,
    host: Arc<host::HostContext>,
}

pub struct LoadError {
    message: String,
    /// Worth another try later (the wasm could not be fetched), as opposed to a module that will never load.
    transient: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PluginSupervisor;

/// One running generation of a plugin.
struct Generation {
    generation: u64,
    manifest: PluginManifest,
    compiled: Arc<CompiledPlugin>,
    host: Arc<host::HostContext>,
    queue: Receiver<Job>,
    /// Instance index to its actor.
    instances: BTreeMap<usize, ActorRef<InstanceMsg>>,
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
    /// Instance replacements within the plugin's restart intensity (created at the first).
    failures: Option<RestartWindow>,
    restarts: u64,
    last_error: Option<String>,
}

pub struct PluginsState {
    args: PluginsArgs,
    plugins: BTreeMap<String, LocalPlugin>,
    /// Every live instance: its plugin, generation and index.
    instances: HashMap<ActorId, (String, u64, usize)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        args.handle.routes.clear();
        args.handle.supervisor.publish(myself.clone());
        let mut tasks = Vec::new();
        // Follows the commit stream: every registry change wakes a reconcile.
        let storage = args.storage.clone();
        let actor = myself.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(mut events) = storage.subscribe() else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                loop {
                    match events.recv().await {
                        Ok(batch) => {
                            if batch.iter().any(|event| matches!(event, CoordEvent::PluginChanged { .. })) {
                                let _ = actor.cast(PluginsMsg::Reconcile);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = actor.cast(PluginsMsg::Reconcile);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
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
        Ok(PluginsState { args, plugins: BTreeMap::new(), instances: HashMap::new(), tasks })
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        // The instances are linked children: they stop with the supervisor. Calls find no route meanwhile.
        state.args.handle.routes.clear();
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
            PluginsMsg::Compiled { record, result } => state.compiled(&myself, record, result).await,
            PluginsMsg::Control(Control::InjectPanic) => panic!("fault injection: plugin supervisor panics on request"),
            PluginsMsg::Control(Control::Status(reply)) => {
                let _ =
                    reply.send(ActorDetail { detail: None, children: state.status().into_iter().map(node).collect() });
            }
            PluginsMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            PluginsMsg::Preload { record, wasm } => {
                state.plugins.entry(record.manifest.name.clone()).or_default().loading = Some(record.generation);
                let result = match check_caps(&record.manifest, &state.args.config) {
                    Ok(()) => compile(&record, wasm, &state.args).await,
                    Err(error) => Err(error),
                };
                state.compiled(&myself, record, result).await;
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
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some((name, generation, index)) = state.forget(cell.get_id()) {
                    state.instance_failed(&myself, &name, generation, index, error.to_string()).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PluginsState {
    fn routes(&self) -> PluginRoutes {
        self.args.handle.routes.clone()
    }

    /// Starts loading every generation the registry wants and this node does not run; stops what it no longer
    /// wants.
    fn reconcile(&mut self, myself: &ActorRef<PluginsMsg>) {
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
        let mut serving = Generation {
            generation,
            manifest,
            compiled: compiled.compiled,
            host: compiled.host,
            queue,
            instances: BTreeMap::new(),
            calls: Arc::new(AtomicU64::new(0)),
        };
        for index in 0..serving.manifest.instances as usize {
            match self.start_instance(myself, &name, &serving, index).await {
                Ok(actor) => {
                    serving.instances.insert(index, actor);
                }
                Err(message) => {
                    for actor in serving.instances.values() {
                        self.instances.remove(&actor.get_id());
                        actor.stop(Some("generation failed to load".into()));
                    }
                    self.load_failed(&name, generation, LoadError { message, transient: false });
                    return;
                }
            }
        }
        // Every instance is up: switch calls over. Dropping the old route closes the old queue; its instances drain.
        self.routes().set(&name, Some(Route::Serving { generation, queue: sender }));
        let local = self.plugins.entry(name.clone()).or_default();
        if let Some(old) = local.serving.replace(serving) {
            local.draining.push(old);
        }
        local.failed = None;
        local.quarantined = None;
        local.failures = None;
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

    async fn start_instance(
        &mut self,
        myself: &ActorRef<PluginsMsg>,
        name: &str,
        generation: &Generation,
        index: usize,
    ) -> Result<ActorRef<InstanceMsg>, String> {
        let args = InstanceArgs {
            plugin: name.to_string(),
            generation: generation.generation,
            index,
            compiled: generation.compiled.clone(),
            queue: generation.queue.clone(),
            timeout_ms: generation.manifest.timeout_ms,
            fuel: generation.manifest.fuel,
            memory_pages: generation.manifest.memory_pages,
            calls: generation.calls.clone(),
        };
        let (actor, _) =
            Actor::spawn_linked(None, PluginActor, args, myself.get_cell()).await.map_err(|error| match error {
                // The instance's own words (`init failed: ...`), not ractor's wrapping of them.
                ractor::SpawnErr::StartupFailed(inner) => format!("instance {index}: {inner}"),
                other => format!("instance {index} did not start: {other}"),
            })?;
        self.instances.insert(actor.get_id(), (name.to_string(), generation.generation, index));
        Ok(actor)
    }

    /// Forgets a stopped instance, answering whose it was.
    fn forget(&mut self, id: ActorId) -> Option<(String, u64, usize)> {
        let (name, generation, index) = self.instances.remove(&id)?;
        if let Some(local) = self.plugins.get_mut(&name) {
            for running in local.serving.iter_mut().chain(local.draining.iter_mut()) {
                if running.generation == generation {
                    running.instances.remove(&index);
                }
            }
            local.draining.retain(|draining| !draining.instances.is_empty());
        }
        self.plugins.retain(|_, local| {
            local.serving.is_some()
                || !local.draining.is_empty()
                || local.loading.is_some()
                || local.failed.is_some()
                || local.quarantined.is_some()
                || local.disabled.is_some()
        });
        Some((name, generation, index))
    }

    /// An instance failed: replace it, or quarantine the plugin past the restart intensity.
    async fn instance_failed(
        &mut self,
        myself: &ActorRef<PluginsMsg>,
        name: &str,
        generation: u64,
        index: usize,
        error: String,
    ) {
        let config = self.args.config.clone();
        let Some(local) = self.plugins.get_mut(name) else { return };
        let Some(serving) = local.serving.as_ref() else { return };
        if serving.generation != generation {
            return;
        }
        let now = Instant::now();
        let intensity = Intensity { restarts_max: config.restart_intensity, period: config.restart_period };
        let failures = local.failures.get_or_insert_with(|| RestartWindow::new(intensity));
        let tolerated = failures.record(now);
        local.last_error = Some(error.clone());
        if !tolerated {
            let reason =
                format!("{} instance failures within {:?}; last: {error}", failures.recent(now), config.restart_period);
            tracing::error!(plugin = %name, generation, %reason, "plugin quarantined");
            local.quarantined = Some((generation, reason.clone()));
            self.stop_serving(name);
            self.routes().set(name, Some(Route::Quarantined { generation, reason: reason.clone() }));
            self.report(name, generation, NodePluginState::Quarantined, Some(reason));
            return;
        }
        local.restarts += 1;
        let serving = local.serving.take().expect("checked above");
        let started = self.start_instance(myself, name, &serving, index).await;
        let local = self.plugins.entry(name.to_string()).or_default();
        let mut serving = serving;
        match started {
            Ok(actor) => {
                serving.instances.insert(index, actor);
            }
            Err(error) => tracing::error!(plugin = %name, generation, %error, "cannot replace a plugin instance"),
        }
        local.serving = Some(serving);
    }

    /// Stops the serving generation's instances and drops its route (the caller sets the new one).
    fn stop_serving(&mut self, name: &str) {
        let Some(local) = self.plugins.get_mut(name) else { return };
        if let Some(serving) = local.serving.take() {
            for actor in serving.instances.values() {
                actor.stop(Some("plugin stopped".into()));
            }
            // Its instances are forgotten as they terminate.
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

    fn status(&self) -> Vec<LocalPluginStatus> {
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
                LocalPluginStatus {
                    name: name.clone(),
                    state,
                    generation: serving.map_or(0, |serving| serving.generation),
                    instances: serving
                        .map(|serving| {
                            serving
                                .instances
                                .iter()
                                .map(|(index, actor)| InstanceStatus {
                                    index: *index,
                                    actor_id: actor.get_id().to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    restarts: local.restarts,
                    calls: serving.map_or(0, |serving| serving.calls.load(Ordering::Relaxed)),
                    queued: serving.map_or(0, |serving| serving.queue.len()),
                    last_error: local.last_error.clone(),
                    hooks: serving.map(|serving| serving.host.hook_subscriptions()).unwrap_or_default(),
                    timers: serving.map_or(0, |serving| serving.host.pending_timers()),
                }
            })
            .collect()
    }
}

/// One plugin as `pando actors` shows it: its state, generation and counters, and its instances under it.
fn node(plugin: LocalPluginStatus) -> ActorNode {
    let mut detail = format!(
        "{} generation {} calls {} queued {}",
        plugin.state.as_str(),
        plugin.generation,
        plugin.calls,
        plugin.queued
    );
    if let Some(error) = &plugin.last_error {
        detail.push_str(&format!(" last error: {error}"));
    }
    ActorNode {
        id: plugin.name,
        alive: !plugin.instances.is_empty(),
        restarts: plugin.restarts,
        actor_id: None,
        detail: Some(detail),
        children: plugin
            .instances
            .into_iter()
            .map(|instance| ActorNode {
                id: instance.index.to_string(),
                alive: true,
                restarts: 0,
                actor_id: Some(instance.actor_id),
                detail: None,
                children: Vec::new(),
            })
            .collect(),
    }
}

/// The import module of WASI preview 1.
const WASI_MODULE: &[u8] = b"wasi_snapshot_preview1";

/// Fetches a generation's wasm (from the cluster when this node has no copy) and compiles it.
async fn load(record: &PluginRecord, args: &PluginsArgs) -> Result<Compiled, LoadError> {
    check_caps(&record.manifest, &args.config)?;
    let wasm = fetch_wasm(record, args).await.map_err(|message| LoadError { message, transient: true })?;
    compile(record, wasm, args).await
}

fn check_caps(manifest: &PluginManifest, config: &PluginConfig) -> Result<(), LoadError> {
    let caps = [
        ("memory pages", manifest.memory_pages, config.memory_pages_max),
        ("ms of timeout", manifest.timeout_ms, config.timeout_ms_max),
    ];
    for (what, asked, allowed) in caps {
        if asked > allowed {
            return Err(LoadError {
                message: format!("the manifest asks for {asked} {what}; this node allows {allowed}"),
                transient: false,
            });
        }
    }
    Ok(())
}

/// Compiles a generation once, with the manifest's limits and the host functions bound to the plugin.
async fn compile(record: &PluginRecord, wasm: Vec<u8>, args: &PluginsArgs) -> Result<Compiled, LoadError> {
    let manifest = &record.manifest;
    let fatal = |message: String| LoadError { message, transient: false };
    let host = Arc::new(host::HostContext::new(manifest.clone(), record.generation, args));
    // A module built for wasm32-wasip1 imports WASI: it gets extism's WASI context, which has a clock and randomness
    // but no files, environment, network or output. Modules without WASI imports run without it.
    let wasi = wasm.windows(WASI_MODULE.len()).any(|window| window == WASI_MODULE);
    let extism_manifest = extism::Manifest::new([extism::Wasm::data(wasm)])
        .with_memory_max(manifest.memory_pages)
        .with_timeout(Duration::from_millis(manifest.timeout_ms.into()));
    let functions = host::functions(host.clone());
    let fuel = manifest.fuel;
    let compiled = tokio::task::spawn_blocking(move || {
        let mut builder =
            extism::PluginBuilder::new(extism_manifest).with_wasi(wasi).with_cache_disabled().with_functions(functions);
        if fuel > 0 {
            builder = builder.with_fuel_limit(fuel);
        }
        builder.compile()
    })
    .await
    .map_err(|error| fatal(format!("compiling panicked: {error}")))?
    .map_err(|error| fatal(format!("the wasm does not compile: {error:#}")))?;
    Ok(Compiled { compiled: Arc::new(compiled), host })
}

/// The wasm bytes of a generation, verified against the hash the log names.
async fn fetch_wasm(record: &PluginRecord, args: &PluginsArgs) -> Result<Vec<u8>, String> {
    let node = args.blobs.node().map_err(|unavailable| unavailable.to_string())?;
    let reader = args.storage.reader().map_err(|unavailable| unavailable.to_string())?;
    let holders =
        reader.blob(&record.wasm).map_err(|fault| fault.to_string())?.map(|blob| blob.holders).unwrap_or_default();
    let _pin = node
        .ensure_local(&record.wasm, record.wasm_size, &holders)
        .await
        .map_err(|error| format!("cannot fetch the wasm blob {}: {error}", record.wasm))?;
    let bytes = node
        .store
        .blobs()
        .get_bytes(crate::blobs::iroh_hash(&record.wasm))
        .await
        .map_err(|error| format!("cannot read the wasm blob {}: {error}", record.wasm))?;
    if blake3::hash(&bytes).as_bytes() != record.wasm.as_bytes() {
        return Err(format!("the wasm blob {} does not match its hash", record.wasm));
    }
    Ok(bytes.to_vec())
}
