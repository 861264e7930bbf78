//! What a node runs of its plugins, for `pando plugin info` and `pando actors`: the supervisor's own view, completed
//! by asking each serving generation's pool for its instances, restarts and last failure.

use std::sync::atomic::Ordering;

use pando_protocol::cluster::FailureReport;
use pando_protocol::plugin::NodePluginState;
use ractor::ActorRef;
use serde::Serialize;

use super::PluginsState;
use crate::supervision::{ActorNode, SupervisorMsg, pool};

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

impl PluginsState {
    /// What this node runs of each plugin, as far as the supervisor knows without asking the pools.
    pub(super) fn snapshot(&self) -> Vec<(LocalPluginStatus, Option<ActorRef<SupervisorMsg>>)> {
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
pub(super) async fn statuses(
    snapshot: Vec<(LocalPluginStatus, Option<ActorRef<SupervisorMsg>>)>,
) -> Vec<LocalPluginStatus> {
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
pub(super) async fn nodes(
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
