//! Finishing a joint membership that its caller left behind. openraft 0.9 changes membership in two steps, both driven
//! by the caller of `change_membership`: a joint configuration (old and new voters), then the new one. When that caller
//! goes away between the two (a request that reached its deadline, a leader that crashed or lost its leadership), the
//! cluster stays joint for good: every decision then needs a majority of both halves, and a removed voter still counts.
//! The leader finishes such a configuration itself (found by simulator seed 22, once the harness stopped taking a joint
//! configuration's union of voters for the finished change).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::ChangeMembers;

use super::type_config::Raft;

/// What the leader saw at its last check.
#[derive(Debug, Default)]
pub(crate) struct JointWatch {
    /// The log index of a committed joint configuration seen at the previous check.
    seen: Option<u64>,
    /// A finishing change is under way.
    busy: Arc<AtomicBool>,
}

impl JointWatch {
    /// Called on every expiry-check interval: on the leader, a joint configuration that was already committed at the
    /// previous check (so its own caller had that interval to propose the second step) is moved to its new voters.
    pub(crate) fn check(&mut self, raft: &Raft) {
        let joint = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let stored = &metrics.membership_config;
            let configs = stored.membership().get_joint_config();
            let committed = stored
                .log_id()
                .is_some_and(|log_id| metrics.last_applied.is_some_and(|applied| applied.index >= log_id.index));
            let leads = metrics.state == openraft::ServerState::Leader;
            match (leads && committed && configs.len() > 1, stored.log_id(), configs.last()) {
                (true, Some(log_id), Some(goal)) => Some((log_id.index, goal.clone())),
                _ => None,
            }
        };
        let Some((index, goal)) = joint else {
            self.seen = None;
            return;
        };
        if self.seen.replace(index) != Some(index) || self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let raft = raft.clone();
        let busy = self.busy.clone();
        tokio::spawn(async move {
            tracing::info!(index, voters = ?goal, "finishing a joint membership its caller left behind");
            // Voters that leave are dropped from the membership, as `pando cluster remove` drops them.
            if let Err(error) = raft.change_membership(ChangeMembers::ReplaceAllVoters(goal), false).await {
                tracing::warn!(%error, "cannot finish the joint membership yet");
            }
            busy.store(false, Ordering::Release);
        });
    }
}
