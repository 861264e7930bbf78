//! History retention: while this node leads, it compacts the KV change history to what the policy keeps (the last
//! `keep_revisions` revisions, and revisions younger than `keep_age`; a revision goes once either says so) by
//! proposing `KvRequest::Compact`, which every member applies at the same log position. Only the leader proposes; a
//! new leader picks up at its next check. The age is judged by log time (the leader's stamp each change carries).

use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::hook::durable::{HookCommand, HookResponse};
use pando_protocol::kv::KvRequest;
use pando_protocol::limits::{HOOK_LOG_KEEP_EVENTS_DEFAULT, HOOK_TRIM_ROWS_PER_PROPOSAL_MAX};
use pando_protocol::state_machine::StorageFault;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::clock::Clock;
use crate::raft::RaftHandle;
use crate::storage::StateReader;
use crate::storage_actor::StorageHandle;
use crate::supervision::{ActorDetail, Control};

/// How often the leader compares the history with the policy.
pub const RETENTION_CHECK_MS: u64 = 5_000;
/// Revisions kept when the node is not told otherwise.
pub const HISTORY_KEEP_REVISIONS_DEFAULT: u64 = 100_000;
/// Events one check reads looking for the first young enough revision (the next check reads on).
const AGE_SCAN_EVENTS_MAX: usize = 10_000;
/// How long a compaction proposal may take.
const COMPACT_TIMEOUT_MS: u64 = 5_000;

/// What the history keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    /// The last this many revisions (0: no limit by count).
    pub keep_revisions: u64,
    /// Revisions younger than this (`None`: no limit by age).
    pub keep_age: Option<Duration>,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig { keep_revisions: HISTORY_KEEP_REVISIONS_DEFAULT, keep_age: None }
    }
}

impl RetentionConfig {
    /// The revision the history should start at, given the current revision, the compacted one and the reader (for
    /// the age). Never past the current revision: the latest revision is always kept.
    pub fn target(&self, reader: &StateReader, now_ms: u64) -> Result<Option<u64>, StorageFault> {
        let current = reader.revision()?;
        let compacted = reader.compacted_revision()?;
        let mut target = compacted;
        if self.keep_revisions > 0 {
            target = target.max(current.saturating_sub(self.keep_revisions) + 1);
        }
        if let Some(age) = self.keep_age {
            let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
            let page = reader.history(compacted, AGE_SCAN_EVENTS_MAX)?;
            let young = page.events.iter().find(|event| event.time_ms >= cutoff).map(|event| event.revision());
            let by_age = match (young, page.events.last()) {
                (Some(revision), _) => revision,
                // Every event read is older: drop them all, and look further at the next check.
                (None, Some(last)) => last.revision() + 1,
                (None, None) => current + 1,
            };
            target = target.max(by_age);
        }
        let target = target.min(current);
        Ok((target > compacted).then_some(target))
    }
}

#[derive(Clone)]
pub struct RetentionArgs {
    pub config: RetentionConfig,
    pub raft: RaftHandle,
    pub storage: StorageHandle,
    pub clock: Clock,
}

pub enum RetentionMsg {
    Check,
    Control(Control),
}

impl ractor::Message for RetentionMsg {}

impl From<Control> for RetentionMsg {
    fn from(control: Control) -> RetentionMsg {
        RetentionMsg::Control(control)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RetentionActor;

pub struct RetentionState {
    args: RetentionArgs,
    compactions: u64,
    last: Option<String>,
    /// The hook log's next sequence when a trim last dropped nothing (a durable hook holds the log): no new trim
    /// until the log grew by [`HOOK_TRIM_SLACK`] more.
    hook_trim_blocked_at: Option<u64>,
}

/// Trims one check proposes at most.
const HOOK_TRIMS_PER_CHECK_MAX: usize = 16;
/// Events the hook log may hold past its policy before the leader trims it (so a trim drops many rows at once).
const HOOK_TRIM_SLACK: u64 = 1_000;

impl Actor for RetentionActor {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = RetentionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RetentionMsg>,
        args: RetentionArgs,
    ) -> Result<RetentionState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(RETENTION_CHECK_MS), || RetentionMsg::Check);
        Ok(RetentionState { args, compactions: 0, last: None, hook_trim_blocked_at: None })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RetentionMsg>,
        message: RetentionMsg,
        state: &mut RetentionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RetentionMsg::Check => state.check().await,
            RetentionMsg::Control(Control::InjectPanic) => panic!("fault injection: retention actor panics on request"),
            RetentionMsg::Control(Control::Status(reply, _)) => {
                let config = state.args.config;
                let mut detail = format!(
                    "keeps {} revisions{}; {} compactions proposed",
                    match config.keep_revisions {
                        0 => "all".to_string(),
                        count => format!("the last {count}"),
                    },
                    config.keep_age.map(|age| format!(" and {}s of history", age.as_secs())).unwrap_or_default(),
                    state.compactions
                );
                if let Some(last) = &state.last {
                    detail.push_str(&format!("; last: {last}"));
                }
                let _ = reply.send(ActorDetail::line(detail));
            }
        }
        Ok(())
    }
}

impl RetentionState {
    async fn check(&mut self) {
        if !self.args.raft.leads() {
            return;
        }
        self.trim_hook_log().await;
        let Ok(reader) = self.args.storage.reader() else { return };
        let target = match self.args.config.target(&reader, self.args.clock.now_ms()) {
            Ok(Some(target)) => target,
            Ok(None) => return,
            Err(fault) => {
                tracing::error!(%fault, "cannot read the history to apply its retention");
                return;
            }
        };
        let command = Command::Kv(KvRequest::Compact { revision: target });
        match self.args.raft.propose(command, Duration::from_millis(COMPACT_TIMEOUT_MS)).await {
            Ok(_) => {
                self.compactions += 1;
                self.last = Some(format!("compacted to {target}"));
                tracing::debug!(target, "history compacted by the retention policy");
            }
            Err(error) => {
                self.last = Some(format!("compaction to {target} failed: {error}"));
                tracing::debug!(target, %error, "history compaction not done; the next check tries again");
            }
        }
    }
}

impl RetentionState {
    /// Trims the hook log to the last [`HOOK_LOG_KEEP_EVENTS_DEFAULT`] events (the state machine keeps what a durable
    /// hook has yet to begin).
    async fn trim_hook_log(&mut self) {
        let Ok(reader) = self.args.storage.reader() else { return };
        let Ok(log) = reader.hook_log(u64::MAX, 0) else { return };
        let keep = HOOK_LOG_KEEP_EVENTS_DEFAULT;
        if log.next.saturating_sub(log.floor) <= keep + HOOK_TRIM_SLACK
            || self.hook_trim_blocked_at.is_some_and(|at| log.next < at + HOOK_TRIM_SLACK)
        {
            return;
        }
        // A trim drops a bounded number of rows; a busy cluster may need several per check.
        for _ in 0..HOOK_TRIMS_PER_CHECK_MAX {
            let command = Command::Hook(HookCommand::Trim { keep_events: keep });
            match self.args.raft.propose(command, Duration::from_millis(COMPACT_TIMEOUT_MS)).await {
                Ok(CommandOutput::Hook(HookResponse::Trimmed { dropped, floor })) => {
                    self.hook_trim_blocked_at = (dropped == 0).then_some(log.next);
                    tracing::debug!(dropped, floor, "hook log trimmed");
                    if dropped < HOOK_TRIM_ROWS_PER_PROPOSAL_MAX {
                        return;
                    }
                }
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "hook log trim not done; the next check tries again");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
