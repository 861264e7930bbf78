//! The control message every supervised actor answers: its status for `pando actors`, and a panic for fault
//! injection. A supervisor answers it too (with its children's answers), so the whole tree is reported, and any actor
//! reached by its path, through one message, with no special case per subsystem: a new subsystem appears in
//! `pando actors` and can be panicked by name as soon as its message type converts from [`Control`].

use std::time::Duration;

use ractor::{ActorCell, ActorRef, Message, RpcReplyPort};
use serde::Serialize;

/// How long one actor gets to say how it is.
pub const CONTROL_STATUS_TIMEOUT_MS: u64 = 2_000;

/// What every supervised actor takes.
#[derive(Debug)]
pub enum Control {
    /// Say how you are: a detail line and the children you run yourself.
    Status(RpcReplyPort<ActorDetail>),
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
}

/// Delivers a [`Control`] to an actor of a known message type; `false` when the actor is gone.
pub type ControlFn = std::sync::Arc<dyn Fn(&ActorCell, Control) -> bool + Send + Sync>;

/// Sends `control` to the actor behind `cell`, whose message type converts from [`Control`].
pub(crate) fn send<M: Message + From<Control>>(cell: &ActorCell, control: Control) -> bool {
    ActorRef::<M>::from(cell.clone()).cast(M::from(control)).is_ok()
}

/// Asks the actor behind `cell` how it is, through `send`, within [`CONTROL_STATUS_TIMEOUT_MS`]. `None`: it did not
/// answer in time (or is gone).
pub(crate) async fn ask_status(cell: &ActorCell, send: &ControlFn) -> Option<ActorDetail> {
    let (reply, answer) = ractor::concurrency::oneshot();
    if !send(cell, Control::Status(reply.into())) {
        return None;
    }
    tokio::time::timeout(Duration::from_millis(CONTROL_STATUS_TIMEOUT_MS), answer).await.ok()?.ok()
}

impl ActorDetail {
    /// A detail line and no children.
    pub fn line(detail: impl Into<String>) -> ActorDetail {
        ActorDetail { detail: Some(detail.into()), children: Vec::new() }
    }
}
