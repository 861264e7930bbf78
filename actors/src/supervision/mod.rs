//! A reusable supervisor with OTP semantics on ractor.
//!
//! ractor's default supervisor stops itself when any child exits. This one implements Erlang/OTP's policies instead:
//! one_for_one, one_for_all and rest_for_one strategies; permanent, transient and temporary children; a restart
//! intensity (at most `restarts_max` restarts within `period`) past which the supervisor gives up and escalates to its
//! own parent by failing; children started in order and stopped in reverse order.
//!
//! A child is described by a [`ChildSpec`] whose start function captures the child's arguments, so a restart starts
//! the child exactly as it was first started. Children can be added and removed at run time; a [`Pool`] is N
//! identical workers under one such supervisor. Every child answers the [`Control`] message (status, panic injection).

pub mod control;
mod intensity;
pub mod pool;
mod spec;
mod supervisor;

pub use control::{ActorDetail, ActorNode, Control};
pub use intensity::{Intensity, RestartWindow};
pub use pool::{Pool, PoolError};
pub use spec::{ChildSpec, Restart, StartFn, Strategy, SupervisorOptions};
pub(crate) use supervisor::spawn_error_text;
pub use supervisor::{
    ChildError, ChildStatus, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorStatus, TreeHandle,
};

#[cfg(test)]
mod tests;
