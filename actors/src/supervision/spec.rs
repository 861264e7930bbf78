//! How a supervisor starts, restarts and stops its children.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};
use serde::Serialize;

use super::control::{self, ActorDetail, Control, ControlFn};

/// Which children restart when one exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// Every child: the others are stopped in reverse order, then all start in order.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

impl std::fmt::Display for Strategy {
    /// OTP's names: `one_for_one`, `one_for_all`, `rest_for_one`.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        })
    }
}

/// When a child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only when it failed (panicked, returned an error, or was killed); a normal stop is final.
    Transient,
    /// Never.
    Temporary,
}

/// Starts a child linked to the given supervisor cell.
pub type StartFn = Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children; shown in status trees.
    pub id: String,
    pub restart: Restart,
    /// How long a graceful stop may take before the child is killed.
    pub shutdown_timeout: Duration,
    pub start: StartFn,
    /// Delivers the [`Control`] message to a running instance.
    pub control: ControlFn,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec").field("id", &self.id).field("restart", &self.restart).finish()
    }
}

/// Default time a child gets to stop gracefully.
pub const CHILD_SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 5_000;

impl ChildSpec {
    /// A child that runs actor `handler` with `args`, cloned afresh for every (re)start.
    pub fn new<A>(id: impl Into<String>, restart: Restart, handler: A, args: A::Arguments) -> ChildSpec
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
        A::Msg: From<Control>,
    {
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let handler = handler.clone();
            let args = args.clone();
            Box::pin(async move {
                let (actor, _handle) = Actor::spawn_linked(None, handler, args, supervisor).await?;
                Ok(actor.get_cell())
            })
        });
        ChildSpec {
            id: id.into(),
            restart,
            shutdown_timeout: Duration::from_millis(CHILD_SHUTDOWN_TIMEOUT_MS_DEFAULT),
            start,
            control: Arc::new(control::send::<A::Msg>),
        }
    }

    /// A child whose actor takes no [`Control`] (a library's actor, such as ractor_cluster's NodeServer), started by
    /// `start`. It is listed in status trees with nothing to say; a panic request kills it, which its supervisor
    /// treats as the failure a panic would be.
    pub fn uncontrolled(id: impl Into<String>, restart: Restart, start: StartFn) -> ChildSpec {
        let control: ControlFn = Arc::new(|cell: &ActorCell, control: Control| match control {
            Control::Status(reply, _) => reply.send(ActorDetail::default()).is_ok(),
            Control::InjectPanic => {
                cell.kill();
                true
            }
        });
        ChildSpec {
            id: id.into(),
            restart,
            shutdown_timeout: Duration::from_millis(CHILD_SHUTDOWN_TIMEOUT_MS_DEFAULT),
            start,
            control,
        }
    }

    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> ChildSpec {
        self.shutdown_timeout = timeout;
        self
    }
}

/// Strategy and restart intensity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SupervisorOptions {
    pub strategy: Strategy,
    /// Most restarts tolerated within `period`; one more and the supervisor escalates.
    pub restarts_max: u32,
    pub period: Duration,
    /// Stop (normally) once every child has ended for good, as OTP's `auto_shutdown => all_significant`: a pool whose
    /// workers all finished has nothing left to supervise. Children stopped through `StopChild` do not count.
    pub auto_shutdown: bool,
}

impl SupervisorOptions {
    pub fn new(strategy: Strategy, restarts_max: u32, period: Duration) -> SupervisorOptions {
        SupervisorOptions { strategy, restarts_max, period, auto_shutdown: false }
    }

    pub fn with_auto_shutdown(mut self) -> SupervisorOptions {
        self.auto_shutdown = true;
        self
    }

    pub fn intensity(&self) -> super::Intensity {
        super::Intensity { restarts_max: self.restarts_max, period: self.period }
    }
}
