//! One plugin instance: a PluginActor owning one extism `Plugin` (instantiated from its generation's
//! `CompiledPlugin`) and the OS thread that runs it (in the simulated world, a task of the simulator's stand-in
//! engine instead: [`super::sim_engine`]).
//!
//! The wasm never runs on an actor's mailbox: the instance's worker thread takes calls from the generation's bounded
//! queue (shared by every instance of that generation) and answers each caller directly. The actor owns the thread's
//! lifetime and is the unit of failure: a call that traps, times out or runs out of fuel or memory is answered with
//! its error, then the worker reports the failure and the actor fails, so its generation's pool replaces the instance
//! (a fresh `Plugin` from the same compiled module) and counts the failure against the plugin's restart intensity.
//! Once the generation's queue is closed and empty the actor stops normally, which ends it for good (it is transient).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use extism::{CompiledPlugin, Plugin};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::plugin_abi::exports;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::load::Module;
use crate::supervision::control::current_call;
use crate::supervision::{ActorDetail, Control};

/// One call waiting for an instance.
pub struct Job {
    pub function: String,
    pub input: Vec<u8>,
    /// When the caller stops waiting; a job still queued then is dropped unrun. On the runtime's clock, as a std instant
    /// (`tokio::time::Instant::into_std`): the wall clock on a node, the paused clock in the simulator.
    pub deadline: Instant,
    /// `None`: nobody waits for the answer (a timer firing).
    pub reply: Option<tokio::sync::oneshot::Sender<Result<Vec<u8>, WireError>>>,
    /// The scope of the client the call runs for (`None`: the plugin's own scope only).
    pub scope: Option<super::host::CallScope>,
}

#[derive(Clone)]
pub struct InstanceArgs {
    pub plugin: String,
    pub generation: u64,
    pub index: usize,
    pub module: Module,
    pub queue: Receiver<Job>,
    pub timeout_ms: u32,
    pub fuel: u64,
    pub memory_pages: u32,
    /// Counts the calls this generation served, across instances.
    pub calls: Arc<AtomicU64>,
}

pub enum InstanceMsg {
    /// The worker's call failed in a way that leaves the instance suspect.
    Failed(String),
    /// The generation's queue closed and emptied: a newer generation (or nothing) serves now.
    Drained,
    /// Status for `pando actors`, and fault injection.
    Control(Control),
}

impl ractor::Message for InstanceMsg {}

impl From<Control> for InstanceMsg {
    fn from(control: Control) -> InstanceMsg {
        InstanceMsg::Control(control)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PluginActor;

pub struct InstanceState {
    stop: Arc<AtomicBool>,
    generation: u64,
    current: Current,
}

/// The function the worker thread runs now and since when, for `pando actors` (set and cleared around each call).
type Current = Arc<Mutex<Option<(String, Instant)>>>;

impl Drop for InstanceState {
    /// However the actor ends (stopped, failed, panicked or killed, the last two skipping `post_stop`), its worker
    /// finishes the call it is in (bounded by the plugin's timeout) and exits.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Actor for PluginActor {
    type Msg = InstanceMsg;
    type State = InstanceState;
    type Arguments = InstanceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let stop = Arc::new(AtomicBool::new(false));
        let current = Current::default();
        let compiled = match &args.module {
            Module::Wasm(compiled) => compiled.clone(),
            Module::Simulated(module) => {
                // The simulator's stand-in runs as a task on the (simulated) runtime, never on a thread of its own.
                tokio::spawn(super::sim_engine::serve(module.clone(), args.clone(), stop.clone(), myself));
                return Ok(InstanceState { stop, generation: args.generation, current });
            }
        };
        // Instantiating and `init` run wasm: on a blocking thread, never on the mailbox's.
        let plugin = tokio::task::spawn_blocking(move || instantiate(&compiled))
            .await
            .map_err(|error| format!("instantiating panicked: {error}"))??;
        let worker = Worker { args: args.clone(), plugin, stop: stop.clone(), actor: myself, current: current.clone() };
        std::thread::Builder::new()
            .name(format!("plugin-{}-{}", args.plugin, args.index))
            .spawn(move || worker.run())
            .map_err(|error| format!("cannot start the instance's thread: {error}"))?;
        Ok(InstanceState { stop, generation: args.generation, current })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            InstanceMsg::Failed(reason) => Err(reason.into()),
            InstanceMsg::Drained => {
                // A normal stop: the pool does not replace it.
                myself.stop(None);
                Ok(())
            }
            InstanceMsg::Control(Control::Status(reply, _)) => {
                let current = state
                    .current
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .as_ref()
                    .map(|(function, since)| current_call(format!("call {function}"), *since));
                let _ = reply.send(ActorDetail::line(format!("generation {}", state.generation)).running(current));
                Ok(())
            }
            InstanceMsg::Control(Control::InjectPanic) => panic!("fault injection: plugin instance panics on request"),
        }
    }
}

/// A fresh instance, with `init` run when the plugin exports it.
pub(crate) fn instantiate(compiled: &CompiledPlugin) -> Result<Plugin, String> {
    let mut plugin = Plugin::new_from_compiled(compiled).map_err(|error| format!("cannot instantiate: {error:#}"))?;
    if plugin.function_exists(exports::INIT) {
        plugin
            .call_get_error_code::<&[u8], Vec<u8>>(exports::INIT, &[])
            .map_err(|(error, _)| format!("init failed: {error:#}"))?;
    }
    Ok(plugin)
}

struct Worker {
    args: InstanceArgs,
    plugin: Plugin,
    stop: Arc<AtomicBool>,
    actor: ActorRef<InstanceMsg>,
    current: Current,
}

impl Worker {
    fn set_current(&self, current: Option<(String, Instant)>) {
        *self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = current;
    }

    fn run(mut self) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let job = match self.args.queue.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.actor.cast(InstanceMsg::Drained);
                    return;
                }
            };
            if job.reply.as_ref().is_some_and(|reply| reply.is_closed()) || Instant::now() >= job.deadline {
                // The caller gave up while the job was queued: running it would only answer nobody.
                continue;
            }
            self.set_current(Some((job.function.clone(), Instant::now())));
            let plugin = &mut self.plugin;
            let outcome = super::host::with_call_scope(job.scope.clone(), || {
                plugin.call_get_error_code::<&[u8], Vec<u8>>(&job.function, &job.input)
            });
            self.set_current(None);
            self.args.calls.fetch_add(1, Ordering::Relaxed);
            let (answer, fatal) = match outcome {
                Ok(output) => (Ok(output), None),
                Err((error, code)) => {
                    let (error, fatal) = classify(&error, code, &self.args);
                    let reason = fatal.then(|| error.to_string());
                    (Err(error), reason)
                }
            };
            if let Some(reply) = job.reply {
                let _ = reply.send(answer);
            } else if let Err(error) = &answer {
                tracing::warn!(plugin = %self.args.plugin, function = %job.function, %error, "plugin call failed");
            }
            if let Some(reason) = fatal {
                tracing::warn!(
                    plugin = %self.args.plugin,
                    generation = self.args.generation,
                    instance = self.args.index,
                    %reason,
                    "plugin instance failed; replacing it"
                );
                let _ = self.actor.cast(InstanceMsg::Failed(reason));
                return;
            }
        }
    }
}

/// Error codes a plugin may pass through from its own answer (`CODE: message`, as the SDK formats errors).
const PASSED_THROUGH: [ErrorCode; 7] = [
    ErrorCode::Unauthorized,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::InvalidArgument,
    ErrorCode::TooLarge,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
];

/// What the caller is told, and whether the instance must be replaced (`true` for anything that stopped the wasm
/// mid-flight: a trap, the timeout, fuel exhaustion).
fn classify(error: &extism::Error, code: i32, args: &InstanceArgs) -> (WireError, bool) {
    let message = format!("{error:#}");
    let plugin = &args.plugin;
    if message == "timeout" || message.starts_with("timeout:") {
        return (
            WireError::new(
                ErrorCode::Timeout,
                format!("plugin `{plugin}` exceeded its {} ms timeout; the call was stopped", args.timeout_ms),
            ),
            true,
        );
    }
    if message.contains("ran out of fuel") {
        return (
            WireError::new(
                ErrorCode::PluginFailed,
                format!("plugin `{plugin}` ran out of fuel ({} units per call); the call was stopped", args.fuel),
            ),
            true,
        );
    }
    if message.starts_with("Function not found") {
        return (WireError::new(ErrorCode::NotFound, format!("plugin `{plugin}` has no such function")), false);
    }
    if code > 0 && code != 134 {
        // The plugin answered with an error of its own: the instance is fine.
        let (code, text) = match message.split_once(": ") {
            Some((prefix, rest)) => match PASSED_THROUGH.iter().find(|known| known.as_str() == prefix) {
                Some(known) => (*known, rest.to_string()),
                None => (ErrorCode::PluginFailed, message.clone()),
            },
            None => (ErrorCode::PluginFailed, message.clone()),
        };
        return (WireError::new(code, format!("plugin `{plugin}`: {text}")), false);
    }
    if message == "oom" || message.starts_with("oom:") {
        return (
            WireError::new(
                ErrorCode::PluginFailed,
                format!(
                    "plugin `{plugin}` ran out of memory ({} pages of 64 KiB); the call was stopped",
                    args.memory_pages
                ),
            ),
            true,
        );
    }
    // Rust guests abort (a wasm `unreachable`) on a panic and on an allocation the memory limit refused.
    let hint = if message.contains("unreachable") { " (a panic, an abort, or memory beyond its limit)" } else { "" };
    // The root cause names the trap (`wasm trap: ...`); the wasm backtrace above it stays in the node's log.
    tracing::debug!(plugin = %plugin, %message, "plugin trap");
    let cause = error.root_cause().to_string();
    (WireError::new(ErrorCode::PluginFailed, format!("plugin `{plugin}` trapped{hint}: {cause}")), true)
}
