//! The control message every supervised actor answers: its status for `pando actors`, and a panic for fault
//! injection. A supervisor answers it too (with its children's answers), so the whole tree is reported, and any actor
//! reached by its path, through one message, with no special case per subsystem: a new subsystem appears in
//! `pando actors` and can be panicked by name as soon as its message type converts from [`Control`].

use std::time::Duration;

use tokio::time::Instant;

use pando_protocol::cluster::{CurrentCall, FailureReport, MailboxReport};
use ractor::{ActorCell, ActorRef, Message, RpcReplyPort};
use serde::Serialize;

/// How long one actor gets to say how it is.
pub const CONTROL_STATUS_TIMEOUT_MS: u64 = 2_000;
/// How much sooner than it must answer an actor that asks others (a supervisor) needs their answers: the time to put
/// its own together and send it. Each level of the tree takes this off the deadline it passes down, so a stuck actor
/// deep in the tree costs its own branch, never its ancestors' answers.
pub const STATUS_LEVEL_MARGIN_MS: u64 = 250;

/// What every supervised actor takes.
#[derive(Debug)]
pub enum Control {
    /// Say how you are: a detail line and the children you run yourself, before the instant given (an actor that
    /// asks others in turn passes them an earlier one: [`ask`]).
    Status(RpcReplyPort<ActorDetail>, Instant),
    /// Fault injection: panic in the handler, as a bug would (the supervisor restarts the actor).
    InjectPanic,
}

/// What an actor says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActorDetail {
    /// One line of state (counters, a plugin's generation), if the actor has more to say than alive or not.
    pub detail: Option<String>,
    /// Children reported under it: a supervisor's children, or what an actor runs itself (plugin instances).
    pub children: Vec<ActorNode>,
    /// The call it runs for someone else right now (a plugin instance's function, a job worker's job).
    pub current: Option<CurrentCall>,
}

/// One actor in the reported tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActorNode {
    pub id: String,
    pub alive: bool,
    pub restarts: u64,
    /// ractor's id of the live instance.
    pub actor_id: Option<String>,
    pub detail: Option<String>,
    pub children: Vec<ActorNode>,
    /// Counted by the actor runtime, so known even when the actor is too busy to answer.
    pub mailbox: Option<MailboxReport>,
    pub last_failure: Option<FailureReport>,
    pub current: Option<CurrentCall>,
}

/// Delivers a [`Control`] to an actor of a known message type; `false` when the actor is gone.
pub type ControlFn = std::sync::Arc<dyn Fn(&ActorCell, Control) -> bool + Send + Sync>;

/// Sends `control` to the actor behind `cell`, whose message type converts from [`Control`].
pub(crate) fn send<M: Message + From<Control>>(cell: &ActorCell, control: Control) -> bool {
    ActorRef::<M>::from(cell.clone()).cast(M::from(control)).is_ok()
}

/// Asks the actor behind `cell` how it is, through `send` ([`ask`]).
pub(crate) async fn ask_status(cell: &ActorCell, send: &ControlFn, deadline: Instant) -> Option<ActorDetail> {
    ask(|control| send(cell, control), deadline).await
}

/// Asks an actor how it is through `send`, waiting until `deadline` or [`CONTROL_STATUS_TIMEOUT_MS`], whichever
/// comes first; the actor is asked to answer [`STATUS_LEVEL_MARGIN_MS`] sooner. `None`: it did not answer in time
/// (or is gone).
pub(crate) async fn ask(send: impl FnOnce(Control) -> bool, deadline: Instant) -> Option<ActorDetail> {
    let wait_until = deadline.min(Instant::now() + Duration::from_millis(CONTROL_STATUS_TIMEOUT_MS));
    let answer_by = wait_until.checked_sub(Duration::from_millis(STATUS_LEVEL_MARGIN_MS)).unwrap_or(wait_until);
    let (reply, answer) = ractor::concurrency::oneshot();
    if !send(Control::Status(reply.into(), answer_by)) {
        return None;
    }
    tokio::time::timeout_at(wait_until, answer).await.ok()?.ok()
}

/// Whether an actor whose runtime counts say `mailbox` is worth asking: one that has been in a single message for
/// longer than an answer may take cannot answer in time, and the question would only queue behind it (so watching a
/// stuck actor would grow its queue).
pub(crate) fn worth_asking(mailbox: &MailboxReport) -> bool {
    mailbox.busy_ms.is_none_or(|busy| busy < CONTROL_STATUS_TIMEOUT_MS)
}

impl ActorDetail {
    /// A detail line and no children.
    pub fn line(detail: impl Into<String>) -> ActorDetail {
        ActorDetail { detail: Some(detail.into()), ..ActorDetail::default() }
    }

    /// Adds the call the actor runs now.
    pub fn running(mut self, current: Option<CurrentCall>) -> ActorDetail {
        self.current = current;
        self
    }
}

/// The mailbox of the actor behind `cell`, as the actor runtime counts it (a patch of ractor's: see
/// `vendor/ractor/PANDO-PATCH.md`).
pub fn mailbox(cell: &ActorCell) -> MailboxReport {
    let counts = cell.message_counts();
    MailboxReport {
        queued: counts.queued,
        handled: counts.handled,
        busy_ms: counts.busy_for.map(|busy| busy.as_millis() as u64),
    }
}

/// A call that started at `since` (a plugin instance's or job worker's current work).
pub fn current_call(what: String, since: std::time::Instant) -> CurrentCall {
    CurrentCall { what, running_ms: since.elapsed().as_millis() as u64 }
}
