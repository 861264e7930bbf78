//! Where a plugin call goes on this node: the generation serving each plugin, with its bounded queue, or why none
//! does (quarantined, disabled, unknown, or the supervisor still starting). The supervisor alone changes the routes;
//! the RPC gateway, the services, timers and hooks read them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use pando_protocol::error::{ErrorCode, WireError};

use super::instance::Job;
use crate::sim::{PlantedBug, planted_bug, planted_coin};

/// Where calls go: the generation serving each plugin on this node, or why none does.
#[derive(Clone)]
pub(super) enum Route {
    /// `stale`: only under the planted bug [`PlantedBug::PluginOldGenerationServes`]: the previous generation and its
    /// queue, wrongly kept open.
    Serving {
        generation: u64,
        queue: Sender<Job>,
        stale: Option<(u64, Sender<Job>)>,
    },
    Quarantined {
        generation: u64,
        reason: String,
    },
    Disabled {
        generation: u64,
    },
}

/// The call routes of one node, shared by the RPC gateway, timers and the supervisor (which alone changes them).
#[derive(Clone, Default)]
pub struct PluginRoutes(Arc<RwLock<Table>>);

#[derive(Default)]
struct Table {
    routes: BTreeMap<String, Route>,
    /// From the supervisor's start until it has caught up with the cluster and loaded what the registry then named:
    /// every call is refused `UNAVAILABLE` (a member back from a crash may have applied less than it had, and must
    /// not answer with a generation older than one it already answered with).
    starting: bool,
}

impl PluginRoutes {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set(&self, name: &str, route: Option<Route>) {
        let mut table = self.write();
        let routes = &mut table.routes;
        let route = match (route, routes.get(name)) {
            (
                Some(Route::Serving { generation, queue, .. }),
                Some(Route::Serving { generation: old, queue: old_queue, .. }),
            ) if *old != generation && planted_bug(PlantedBug::PluginOldGenerationServes) => {
                Some(Route::Serving { generation, queue, stale: Some((*old, old_queue.clone())) })
            }
            (route, _) => route,
        };
        match route {
            Some(route) => routes.insert(name.to_string(), route),
            None => routes.remove(name),
        };
    }

    /// No routes, and calls refused as starting until [`PluginRoutes::started`]: a supervisor starts (or stopped).
    pub(super) fn starting(&self) {
        let mut table = self.write();
        table.routes.clear();
        table.starting = true;
    }

    /// Calls go by the routes again.
    pub(super) fn started(&self) {
        self.write().starting = false;
    }

    /// Whether calls are refused as starting.
    pub fn is_starting(&self) -> bool {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).starting
    }

    /// The route of `name`; `Err` while the supervisor starts.
    fn route(&self, name: &str) -> Result<Option<Route>, ()> {
        let table = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if table.starting { Err(()) } else { Ok(table.routes.get(name).cloned()) }
    }

    /// Queues a job on the generation serving `name` (only on `generation` when given), answering which one.
    pub(crate) fn submit_to(&self, name: &str, generation: Option<u64>, job: Job) -> Result<u64, Refused> {
        let refused = |code, message: String| Err(Refused::Error(WireError::new(code, message)));
        let Ok(route) = self.route(name) else {
            return refused(
                ErrorCode::Unavailable,
                format!(
                    "plugins on this member are starting: `{name}` is served once the member has caught up with \
                     the cluster and loaded what it names; try again or another member"
                ),
            );
        };
        match route {
            Some(Route::Serving { generation: serving, queue, stale }) if generation.is_none_or(|g| g == serving) => {
                // Under the planted bug, every other call goes to the old generation (and names it).
                let (serving, queue) = match stale {
                    Some(stale) if planted_coin() => stale,
                    _ => (serving, queue),
                };
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
    /// `scope`: the capabilities of the client the call runs for, intersected with the plugin's own (`None`: the
    /// plugin's own only).
    pub async fn call(
        &self,
        name: &str,
        function: &str,
        input: Vec<u8>,
        timeout: Duration,
        scope: Option<super::host::CallScope>,
    ) -> Result<(Vec<u8>, u64), WireError> {
        // On the runtime's clock (the simulator's, in a simulated world); instances compare it as a std instant.
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut job =
            Job { function: function.to_string(), input, deadline: deadline.into_std(), reply: Some(reply), scope };
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
        match tokio::time::timeout_at(deadline, answer).await {
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
