//! The supervisor actor: starts children in order, applies the restart strategy, escalates past the intensity.

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::time::Instant;

use pando_protocol::cluster::FailureReport;

use super::control::{self, ActorDetail, ActorNode, Control};
use super::intensity::RestartWindow;
use super::spec::{ChildSpec, Restart, Strategy, SupervisorOptions};
use crate::live::{Live, Unavailable};

/// Reason given to children stopped by their supervisor (a restart of a sibling, or shutdown).
const SHUTDOWN_REASON: &str = "shutdown";

#[derive(Clone, Debug)]
pub struct SupervisorArgs {
    /// Shown in status trees and logs.
    pub name: String,
    pub options: SupervisorOptions,
    /// Started in this order, stopped in reverse.
    pub children: Vec<ChildSpec>,
}

pub enum SupervisorMsg {
    Status(RpcReplyPort<SupervisorStatus>),
    /// The live cell of the child with this id.
    Child(String, RpcReplyPort<Option<ActorCell>>),
    /// Try again to start a child whose restart failed.
    RetryStart(usize),
    /// The control message every supervised actor answers; a supervisor's status holds its children's answers.
    Control(Control),
    /// Delivers `control` to the running child `id`; answers whether it was delivered.
    ControlChild {
        id: String,
        control: Control,
        reply: RpcReplyPort<bool>,
    },
    /// Starts a child at run time, after the others; it restarts by the same strategy and intensity. Refused when its
    /// id is taken.
    StartChild(ChildSpec, RpcReplyPort<Result<(), ChildError>>),
    /// Stops the child `id` (within its shutdown timeout) and forgets it.
    StopChild(String, RpcReplyPort<Result<(), ChildError>>),
}

impl ractor::Message for SupervisorMsg {}

impl From<Control> for SupervisorMsg {
    fn from(control: Control) -> SupervisorMsg {
        SupervisorMsg::Control(control)
    }
}

/// Why a child could not be started or stopped at run time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    #[error("a child `{0}` already exists")]
    Duplicate(String),
    #[error("no child `{0}`")]
    NotFound(String),
    #[error("child `{id}` did not start: {reason}")]
    StartFailed { id: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChildStatus {
    pub id: String,
    pub restart: Restart,
    pub alive: bool,
    /// ractor's id of the live instance.
    pub actor_id: Option<String>,
    pub restarts: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SupervisorStatus {
    pub name: String,
    pub options: SupervisorOptions,
    pub children: Vec<ChildStatus>,
    /// Restarts inside the current intensity window.
    pub recent_restarts: usize,
    /// The last child that failed, and why: `child ID: REASON`.
    pub last_failure: Option<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Supervisor;

/// The node's root supervisor once the tree runs: where status trees and panic injection start.
#[derive(Clone)]
pub struct TreeHandle {
    root: Live<ActorRef<SupervisorMsg>>,
}

impl Default for TreeHandle {
    fn default() -> TreeHandle {
        TreeHandle { root: Live::new("supervision tree") }
    }
}

impl TreeHandle {
    pub fn root(&self) -> Result<ActorRef<SupervisorMsg>, Unavailable> {
        self.root.get()
    }

    /// Called by whoever spawned the root (the node, the simulator) once it runs.
    pub fn set_root(&self, root: ActorRef<SupervisorMsg>) {
        self.root.publish(root);
    }
}

pub struct SupervisorState {
    name: String,
    options: SupervisorOptions,
    children: Vec<Child>,
    restarts: RestartWindow,
    /// `child ID: REASON` of the last abnormal exit, for status and for the escalation's error.
    last_failure: Option<String>,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    restarts: u64,
    /// Its last abnormal end (or failed restart) and when, for `pando actors`.
    last_failure: Option<(String, Instant)>,
}

impl Child {
    fn new(spec: ChildSpec) -> Child {
        Child { spec, cell: None, restarts: 0, last_failure: None }
    }
}

enum Exit {
    Normal,
    Abnormal(String),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: args.name,
            options: args.options,
            children: args.children.into_iter().map(Child::new).collect(),
            restarts: RestartWindow::new(args.options.intensity()),
            last_failure: None,
        };
        for index in 0..state.children.len() {
            if let Err(error) = start_child(&myself, &mut state, index).await {
                stop_children(&mut state, 0..index).await;
                return Err(format!(
                    "supervisor {}: cannot start child {}: {}",
                    state.name,
                    state.children[index].spec.id,
                    spawn_error_text(&error)
                )
                .into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        stop_children(state, 0..state.children.len()).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(status(state));
            }
            SupervisorMsg::Child(id, reply) => {
                let cell = state.children.iter().find(|child| child.spec.id == id).and_then(|child| child.cell.clone());
                let _ = reply.send(cell);
            }
            SupervisorMsg::RetryStart(index) => {
                if index < state.children.len() && state.children[index].cell.is_none() {
                    restart_from(&myself, state, index, state.options.strategy).await?;
                }
            }
            SupervisorMsg::Control(Control::Status(reply, deadline)) => report(state, reply, deadline),
            SupervisorMsg::Control(Control::InjectPanic) => {
                panic!("fault injection: supervisor {} panics on request", state.name)
            }
            SupervisorMsg::ControlChild { id, control, reply } => {
                let child = state.children.iter().find(|child| child.spec.id == id);
                let delivered = child
                    .and_then(|child| child.cell.as_ref().map(|cell| (child.spec.control)(cell, control)))
                    .unwrap_or(false);
                let _ = reply.send(delivered);
            }
            SupervisorMsg::StartChild(spec, reply) => {
                if state.children.iter().any(|child| child.spec.id == spec.id) {
                    let _ = reply.send(Err(ChildError::Duplicate(spec.id)));
                    return Ok(());
                }
                let id = spec.id.clone();
                state.children.push(Child::new(spec));
                let index = state.children.len() - 1;
                let started = start_child(&myself, state, index).await;
                if let Err(error) = &started {
                    state.children.pop();
                    tracing::warn!(supervisor = %state.name, child = %id, %error, "dynamic child did not start");
                }
                let _ = reply
                    .send(started.map_err(|error| ChildError::StartFailed { id, reason: spawn_error_text(&error) }));
            }
            SupervisorMsg::StopChild(id, reply) => {
                let Some(index) = state.children.iter().position(|child| child.spec.id == id) else {
                    let _ = reply.send(Err(ChildError::NotFound(id)));
                    return Ok(());
                };
                // Taken out of the list first: its exit is then an event about a child this supervisor no longer has.
                stop_children(state, index..index + 1).await;
                state.children.remove(index);
                let _ = reply.send(Ok(()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let exit = match reason {
                    None => Exit::Normal,
                    Some(reason) if reason == "normal" || reason == SHUTDOWN_REASON => Exit::Normal,
                    Some(reason) => Exit::Abnormal(reason),
                };
                (cell, exit)
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, Exit::Abnormal(error.to_string())),
            _ => return Ok(()),
        };
        // Events from instances this supervisor already replaced or stopped on purpose are stale.
        let Some(index) = state
            .children
            .iter()
            .position(|child| child.cell.as_ref().is_some_and(|live| live.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        state.children[index].cell = None;
        let child_id = state.children[index].spec.id.clone();
        let restart = match (state.children[index].spec.restart, &exit) {
            (Restart::Permanent, _) => true,
            (Restart::Transient, Exit::Abnormal(_)) => true,
            (Restart::Transient, Exit::Normal) | (Restart::Temporary, _) => false,
        };
        match &exit {
            Exit::Normal => {
                tracing::info!(supervisor = %state.name, child = %child_id, restart, "child stopped")
            }
            Exit::Abnormal(reason) => {
                tracing::warn!(supervisor = %state.name, child = %child_id, %reason, restart, "child failed");
                state.last_failure = Some(format!("child {child_id}: {reason}"));
                state.children[index].last_failure = Some((reason.clone(), Instant::now()));
            }
        }
        if !restart {
            if state.options.auto_shutdown && state.children.iter().all(|child| child.cell.is_none()) {
                tracing::debug!(supervisor = %state.name, "every child ended; stopping");
                myself.stop(None);
            }
            return Ok(());
        }
        restart_from(&myself, state, index, state.options.strategy).await
    }
}

/// Counts one restart against the intensity, then restarts what the strategy says. Fails (escalating to this
/// supervisor's parent) when the intensity is exceeded.
async fn restart_from(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
    strategy: Strategy,
) -> Result<(), ActorProcessingErr> {
    if !state.restarts.record(Instant::now()) {
        tracing::error!(
            supervisor = %state.name,
            child = %state.children[index].spec.id,
            restarts_max = state.options.restarts_max,
            period_ms = state.options.period.as_millis() as u64,
            "restart intensity exceeded, escalating"
        );
        stop_children(state, 0..state.children.len()).await;
        let last = state.last_failure.clone().unwrap_or_else(|| format!("child {}", state.children[index].spec.id));
        return Err(format!(
            "supervisor {}: more than {} restarts within {:?} (last: {last})",
            state.name, state.options.restarts_max, state.options.period
        )
        .into());
    }
    let first = match strategy {
        Strategy::OneForOne => index,
        Strategy::OneForAll => 0,
        Strategy::RestForOne => index,
    };
    let last = match strategy {
        Strategy::OneForOne => index,
        Strategy::OneForAll | Strategy::RestForOne => state.children.len() - 1,
    };
    stop_children(state, first..last + 1).await;
    for position in first..=last {
        let child = &state.children[position];
        let wanted = position == index || child.spec.restart != Restart::Temporary;
        if !wanted || child.cell.is_some() {
            continue;
        }
        state.children[position].restarts += 1;
        if let Err(error) = start_child(myself, state, position).await {
            let reason = spawn_error_text(&error);
            let id = state.children[position].spec.id.clone();
            tracing::warn!(supervisor = %state.name, child = %id, %reason, "restart failed");
            state.last_failure = Some(format!("child {id} did not restart: {reason}"));
            state.children[position].last_failure = Some((format!("did not restart: {reason}"), Instant::now()));
            // Retrying through the mailbox counts against the intensity again, so a child that can never start
            // escalates instead of looping.
            let _ = myself.cast(SupervisorMsg::RetryStart(position));
            return Ok(());
        }
    }
    Ok(())
}

async fn start_child(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
) -> Result<(), ractor::SpawnErr> {
    let child = &mut state.children[index];
    let cell = (child.spec.start)(myself.get_cell()).await?;
    tracing::debug!(supervisor = %state.name, child = %child.spec.id, actor = %cell.get_id(), "child started");
    child.cell = Some(cell);
    Ok(())
}

/// Stops the children in `range` in reverse start order, each within its shutdown timeout, killing it past that.
async fn stop_children(state: &mut SupervisorState, range: std::ops::Range<usize>) {
    for child in state.children[range].iter_mut().rev() {
        let Some(cell) = child.cell.take() else {
            continue;
        };
        let timeout = child.spec.shutdown_timeout;
        if cell.stop_and_wait(Some(SHUTDOWN_REASON.to_string()), Some(timeout)).await.is_err() {
            tracing::warn!(supervisor = %state.name, child = %child.spec.id, "child did not stop in time, killing it");
            let _ = cell.kill_and_wait(Some(timeout)).await;
        }
    }
}

/// Answers a status control message: this supervisor's strategy and intensity, and each child's own answer (asked
/// off the mailbox, so a slow child never holds up restarts).
fn report(state: &mut SupervisorState, reply: RpcReplyPort<ActorDetail>, deadline: Instant) {
    let intensity = state.restarts.intensity();
    let mut detail = format!(
        "{}, {} of at most {} restarts within {} s",
        state.options.strategy,
        state.restarts.recent(Instant::now()),
        intensity.restarts_max,
        intensity.period.as_secs_f64()
    );
    if let Some(failure) = &state.last_failure {
        detail.push_str(&format!("; last failure: {failure}"));
    }
    let now = Instant::now();
    let children: Vec<_> = state
        .children
        .iter()
        .map(|child| {
            let failure = child.last_failure.as_ref().map(|(reason, at)| FailureReport {
                reason: reason.clone(),
                ago_ms: Some(now.saturating_duration_since(*at).as_millis() as u64),
            });
            (child.spec.id.clone(), child.restarts, child.cell.clone(), child.spec.control.clone(), failure)
        })
        .collect();
    tokio::spawn(async move {
        // Asked all at once: a stuck child costs the report one status timeout, not one per stuck child.
        let asked = children.into_iter().map(|(id, restarts, cell, send, last_failure)| async move {
            let answer = match &cell {
                Some(cell) if control::worth_asking(&control::mailbox(cell)) => {
                    control::ask_status(cell, &send, deadline).await.unwrap_or_default()
                }
                _ => ActorDetail::default(),
            };
            ActorNode {
                id,
                alive: cell.is_some(),
                restarts,
                actor_id: cell.as_ref().map(|cell| cell.get_id().to_string()),
                detail: answer.detail,
                children: answer.children,
                // Read after the answer: the counts as they are when the report goes out.
                mailbox: cell.as_ref().map(control::mailbox),
                last_failure,
                current: answer.current,
            }
        });
        let nodes = futures::future::join_all(asked).await;
        let _ = reply.send(ActorDetail { detail: Some(detail), children: nodes, current: None });
    });
}

fn status(state: &mut SupervisorState) -> SupervisorStatus {
    SupervisorStatus {
        name: state.name.clone(),
        options: state.options,
        children: state
            .children
            .iter()
            .map(|child| ChildStatus {
                id: child.spec.id.clone(),
                restart: child.spec.restart,
                alive: child.cell.is_some(),
                actor_id: child.cell.as_ref().map(|cell| cell.get_id().to_string()),
                restarts: child.restarts,
            })
            .collect(),
        recent_restarts: state.restarts.recent(Instant::now()),
        last_failure: state.last_failure.clone(),
    }
}

/// What went wrong in a spawn, in the child's own words when its `pre_start` failed (ractor wraps them).
pub(crate) fn spawn_error_text(error: &ractor::SpawnErr) -> String {
    match error {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
