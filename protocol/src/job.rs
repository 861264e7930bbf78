//! Jobs: durable units of work in the replicated state, claimed by worker pools on every node under fenced leases,
//! retried with backoff, scheduled by cron, ordered by dependencies.
//!
//! The anchors are Oban, River, Sidekiq and Temporal activities; the state machine gets right what their users
//! report going wrong:
//! - **Fencing.** A claim hands out (id, attempt, fence) under a lease; every claim of any job takes the next fence
//!   of one cluster-wide counter. A heartbeat, completion or failure naming a fence that is not the job's current one
//!   is refused (`CONFLICT`), so a worker that was paused past its lease (and whose job was rescued and run again)
//!   cannot record its result over the rescuer's.
//! - **Nothing stuck in running.** A lease lapses on a timer of the log clock; the job is claimable again at once
//!   (within the lease plus one tick), its history says the attempt was rescued, and the rescue is counted.
//! - **Uniqueness covers running.** A unique key is held in every state before a job finishes: waiting, scheduled,
//!   available, running and retrying. A duplicate submit answers the holder's id and says it is a duplicate.
//! - **Cron inserts each instant once**, whatever leadership changes happen: the firing is a timer applied by the
//!   state machine, not a leader's loop, and a schedule's next instant only moves forward.
//!
//! Time is the log's clock ([`crate::coord`]); jitter is drawn from a hash of the job, attempt and fence, so every
//! replica computes the same delay. Rows live in the coordination table (see [`apply`] for the layout).

pub mod apply;
pub mod cron;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::{
    JOB_ARGV_BYTES_MAX, JOB_BACKOFF_MS_MAX, JOB_BACKOFF_MS_MIN, JOB_CLAIM_COUNT_MAX, JOB_CLAIM_QUEUES_MAX,
    JOB_DELAY_MS_MAX, JOB_DEPENDENCIES_MAX, JOB_ERROR_BYTES_MAX, JOB_LEASE_MS_MAX, JOB_LEASE_MS_MIN,
    JOB_LIST_COUNT_MAX, JOB_MAX_ATTEMPTS_MAX, JOB_NAME_BYTES_MAX, JOB_OUTPUT_TAIL_BYTES_MAX, JOB_PAYLOAD_BYTES_MAX,
    JOB_PRIORITY_MAX, JOB_TIMEOUT_MS_MAX, JOB_WORKERS_MAX,
};

/// What a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// A command on the claiming node: `argv` as given (no shell), `env` added to the node's environment, in `cwd`
    /// (the node's working directory when `None`), the payload on stdin.
    Shell { argv: Vec<String>, env: Vec<(String, String)>, cwd: Option<String> },
    /// A function of an installed plugin, called with the payload as its input.
    Plugin { plugin: String, function: String },
}

/// The retry curve: the delay before retry `k` is `base_ms * 2^(k-1)`, capped at `max_ms`, then drawn between half
/// of it and all of it ("equal jitter"), so a crowd of failed jobs does not retry in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base_ms: 1_000, max_ms: 10 * 60 * 1000 }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1 for the first) of job `id` after attempt `fence`'s failure.
    pub fn delay_ms(&self, id: u64, retry: u32, fence: u64) -> u64 {
        let exponent = retry.saturating_sub(1).min(63);
        let full = self.base_ms.saturating_mul(1u64.checked_shl(exponent).unwrap_or(u64::MAX)).min(self.max_ms);
        let mut seed = [0u8; 20];
        seed[..8].copy_from_slice(&id.to_be_bytes());
        seed[8..12].copy_from_slice(&retry.to_be_bytes());
        seed[12..].copy_from_slice(&fence.to_be_bytes());
        let draw = u64::from_be_bytes(blake3::hash(&seed).as_bytes()[..8].try_into().expect("8 bytes"));
        let half = full / 2;
        half + draw % (full - half + 1)
    }
}

/// What a submit asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    pub payload: Bytes,
    pub queue: String,
    /// 0 runs first, [`JOB_PRIORITY_MAX`] last; within a priority, in submit order.
    pub priority: u8,
    /// Not claimable before this long after the submit (log time).
    pub delay_ms: u64,
    /// Attempts before the job is dead (a rescued attempt counts).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long one attempt may run; the worker kills it then, and the state machine stops taking its heartbeats
    /// [`JOB_TIMEOUT_GRACE_MS`](crate::limits::JOB_TIMEOUT_GRACE_MS) later.
    pub timeout_ms: u64,
    /// While a job with this key has not finished, a submit naming it answers that job's id instead.
    pub unique_key: Option<String>,
    /// Jobs that must complete first. Only existing jobs can be named, so dependencies never form a cycle.
    pub depends_on: Vec<u64>,
    /// The capabilities a plugin job's call runs with, as a client's plugin call does: its submitter's, set by the
    /// node that took the submit (a client's own value is replaced). `None`: every capability (an admin's submit, a
    /// cron schedule's run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<crate::token::Capability>>,
}

impl JobSpec {
    /// A job of `kind` on queue `default` with the defaults of every other field.
    pub fn new(kind: JobKind) -> JobSpec {
        JobSpec {
            kind,
            payload: Bytes::default(),
            queue: "default".into(),
            priority: 0,
            delay_ms: 0,
            max_attempts: crate::limits::JOB_MAX_ATTEMPTS_DEFAULT,
            backoff: Backoff::default(),
            timeout_ms: crate::limits::JOB_TIMEOUT_MS_DEFAULT,
            unique_key: None,
            depends_on: Vec::new(),
            scope: None,
        }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        match &self.kind {
            JobKind::Shell { argv, env, cwd } => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(WireError::invalid("a shell job needs a command"));
                }
                let bytes: usize = argv.iter().map(String::len).sum::<usize>()
                    + env.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
                    + cwd.as_ref().map_or(0, String::len);
                if bytes > JOB_ARGV_BYTES_MAX {
                    return Err(WireError::too_large(format!(
                        "a shell job's command line and environment are {bytes} bytes, more than {JOB_ARGV_BYTES_MAX}"
                    )));
                }
                if let Some((name, _)) = env.iter().find(|(name, _)| name.is_empty() || name.contains(['=', '\0'])) {
                    return Err(WireError::invalid(format!("environment variable name {name:?} is not valid")));
                }
                if argv.iter().chain(cwd).any(|arg| arg.contains('\0')) {
                    return Err(WireError::invalid("a shell job's arguments and directory cannot hold NUL bytes"));
                }
            }
            JobKind::Plugin { plugin, function } => {
                crate::plugin::validate_name(plugin)?;
                crate::plugin::validate_function(function)?;
            }
        }
        validate_name("queue", &self.queue)?;
        if let Some(key) = &self.unique_key {
            validate_name("unique key", key)?;
        }
        if self.payload.len() > JOB_PAYLOAD_BYTES_MAX {
            return Err(WireError::too_large(format!(
                "a job's payload is {} bytes, more than {JOB_PAYLOAD_BYTES_MAX}",
                self.payload.len()
            )));
        }
        if self.priority > JOB_PRIORITY_MAX {
            return Err(WireError::invalid(format!("priority {} is not 0 to {JOB_PRIORITY_MAX}", self.priority)));
        }
        if self.delay_ms > JOB_DELAY_MS_MAX {
            return Err(WireError::invalid(format!("a job can be scheduled at most {JOB_DELAY_MS_MAX} ms ahead")));
        }
        if !(1..=JOB_MAX_ATTEMPTS_MAX).contains(&self.max_attempts) {
            return Err(WireError::invalid(format!("max attempts must be 1 to {JOB_MAX_ATTEMPTS_MAX}")));
        }
        let Backoff { base_ms, max_ms } = self.backoff;
        if !(JOB_BACKOFF_MS_MIN..=JOB_BACKOFF_MS_MAX).contains(&base_ms)
            || max_ms < base_ms
            || max_ms > JOB_BACKOFF_MS_MAX
        {
            return Err(WireError::invalid(format!(
                "backoff {base_ms}..{max_ms} ms must start at {JOB_BACKOFF_MS_MIN} ms or more and end at or after its \
                 start, at most {JOB_BACKOFF_MS_MAX} ms"
            )));
        }
        if !(1..=JOB_TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(WireError::invalid(format!("a job's timeout must be 1 to {JOB_TIMEOUT_MS_MAX} ms")));
        }
        if self.depends_on.len() > JOB_DEPENDENCIES_MAX {
            return Err(WireError::invalid(format!("a job may depend on at most {JOB_DEPENDENCIES_MAX} jobs")));
        }
        let mut seen = self.depends_on.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.depends_on.len() {
            return Err(WireError::invalid("a dependency is named twice"));
        }
        if self.scope.as_ref().is_some_and(|scope| scope.len() > crate::limits::TOKEN_CAPABILITIES_COUNT_MAX) {
            return Err(WireError::invalid("a job's scope holds more capabilities than a token may"));
        }
        Ok(())
    }
}

/// A queue name, unique key or cron name: 1 to [`JOB_NAME_BYTES_MAX`] bytes of `[A-Za-z0-9_.:/-]`.
pub fn validate_name(what: &str, name: &str) -> Result<(), WireError> {
    if name.is_empty()
        || name.len() > JOB_NAME_BYTES_MAX
        || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_.:/-".contains(&byte))
    {
        return Err(WireError::invalid(format!(
            "{what} {name:?} is not 1 to {JOB_NAME_BYTES_MAX} of a-z, A-Z, 0-9, '_', '.', ':', '/', '-'"
        )));
    }
    Ok(())
}

/// Where a job is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Behind dependencies that have not completed.
    Waiting,
    /// Claimable from `at_ms` (log time).
    Scheduled {
        at_ms: u64,
    },
    Available,
    /// Held by a worker on `node` under `fence` until `until_ms`, unless it heartbeats.
    Running {
        node: u64,
        worker: u32,
        fence: u64,
        started_ms: u64,
        until_ms: u64,
    },
    /// An attempt failed; claimable again from `at_ms`.
    Retrying {
        at_ms: u64,
    },
    Completed {
        ended_ms: u64,
    },
    /// Out of attempts, or a dependency failed: in the dead-letter list until retried, redriven or purged.
    Dead {
        ended_ms: u64,
        reason: String,
    },
    Cancelled {
        ended_ms: u64,
    },
}

/// The states by name, for listings and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Waiting = 1,
    Scheduled = 2,
    Available = 3,
    Running = 4,
    Retrying = 5,
    Completed = 6,
    Dead = 7,
    Cancelled = 8,
}

impl StateName {
    pub const ALL: [StateName; 8] = [
        StateName::Waiting,
        StateName::Scheduled,
        StateName::Available,
        StateName::Running,
        StateName::Retrying,
        StateName::Completed,
        StateName::Dead,
        StateName::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Waiting => "waiting",
            StateName::Scheduled => "scheduled",
            StateName::Available => "available",
            StateName::Running => "running",
            StateName::Retrying => "retrying",
            StateName::Completed => "completed",
            StateName::Dead => "dead",
            StateName::Cancelled => "cancelled",
        }
    }

    /// A state by name; `failed` is `retrying` (Oban's `retryable`).
    pub fn parse(name: &str) -> Option<StateName> {
        match name {
            "failed" | "retryable" => Some(StateName::Retrying),
            "done" => Some(StateName::Completed),
            "discarded" => Some(StateName::Dead),
            _ => StateName::ALL.into_iter().find(|state| state.as_str() == name),
        }
    }

    /// Whether the job is over (its unique key is free, and only retry, redrive or purge touch it).
    pub fn is_final(self) -> bool {
        matches!(self, StateName::Completed | StateName::Dead | StateName::Cancelled)
    }
}

impl JobState {
    pub fn name(&self) -> StateName {
        match self {
            JobState::Waiting => StateName::Waiting,
            JobState::Scheduled { .. } => StateName::Scheduled,
            JobState::Available => StateName::Available,
            JobState::Running { .. } => StateName::Running,
            JobState::Retrying { .. } => StateName::Retrying,
            JobState::Completed { .. } => StateName::Completed,
            JobState::Dead { .. } => StateName::Dead,
            JobState::Cancelled { .. } => StateName::Cancelled,
        }
    }

    /// When the job ended, if it did.
    pub fn ended_ms(&self) -> Option<u64> {
        match self {
            JobState::Completed { ended_ms } | JobState::Dead { ended_ms, .. } | JobState::Cancelled { ended_ms } => {
                Some(*ended_ms)
            }
            _ => None,
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Completed,
    Failed {
        error: String,
    },
    /// Its lease lapsed (the worker's node died, stopped or lost contact): the job was rescued.
    LeaseExpired,
    /// It ran past the job's timeout plus the grace and its heartbeat was refused.
    TimedOut,
    Cancelled,
}

/// One attempt, as the job's history keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub fence: u64,
    pub node: u64,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub outcome: AttemptOutcome,
}

/// What a finished attempt reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    /// A shell job's exit code (`None`: killed by a signal, or not a shell job).
    pub exit_code: Option<i32>,
    /// The last bytes of its output (stdout and stderr as they came), or a plugin's answer.
    pub tail: Bytes,
    /// The output (up to [`JOB_OUTPUT_BYTES_MAX`](crate::limits::JOB_OUTPUT_BYTES_MAX)) as a blob, when it was
    /// larger than the tail. The state machine protects it once the result is recorded, and releases it when the
    /// job is purged or a later attempt's output replaces it; a blob of a refused result is collected after the
    /// grace.
    pub blob: Option<crate::blob::BlobHash>,
    /// Bytes of output the attempt wrote in all (the blob holds the first of them, the tail the last).
    #[serde(default)]
    pub bytes: u64,
}

impl JobOutput {
    pub fn validate(&self) -> Result<(), WireError> {
        if self.tail.len() > JOB_OUTPUT_TAIL_BYTES_MAX {
            return Err(WireError::too_large(format!(
                "an output tail is {} bytes, more than {JOB_OUTPUT_TAIL_BYTES_MAX}",
                self.tail.len()
            )));
        }
        Ok(())
    }
}

/// A job as the state machine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub spec: JobSpec,
    pub state: JobState,
    /// Attempts begun since the job was submitted or last retried.
    pub attempt: u32,
    pub submitted_ms: u64,
    /// Dependencies that have not completed yet.
    pub pending_dependencies: u32,
    /// The last attempts, oldest first (at most [`JOB_HISTORY_MAX`](crate::limits::JOB_HISTORY_MAX)).
    pub history: Vec<Attempt>,
    /// Attempts rescued after their lease lapsed, ever.
    pub rescues: u32,
    /// The last attempt's output.
    pub output: Option<JobOutput>,
    /// The cron schedule and instant that inserted it.
    pub cron: Option<(String, u64)>,
}

/// What a claim hands a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    pub id: u64,
    pub attempt: u32,
    pub fence: u64,
    pub until_ms: u64,
    pub spec: JobSpec,
}

/// A queue's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue: String,
    /// Jobs in each state now, by [`StateName`] order.
    pub waiting: u64,
    pub scheduled: u64,
    pub available: u64,
    pub running: u64,
    pub retrying: u64,
    pub completed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Totals since the queue's first job.
    pub submitted_total: u64,
    pub attempts_total: u64,
    pub failed_attempts_total: u64,
    pub lease_expiries_total: u64,
}

impl QueueStats {
    pub fn count(&self, state: StateName) -> u64 {
        match state {
            StateName::Waiting => self.waiting,
            StateName::Scheduled => self.scheduled,
            StateName::Available => self.available,
            StateName::Running => self.running,
            StateName::Retrying => self.retrying,
            StateName::Completed => self.completed,
            StateName::Dead => self.dead,
            StateName::Cancelled => self.cancelled,
        }
    }

    fn count_mut(&mut self, state: StateName) -> &mut u64 {
        match state {
            StateName::Waiting => &mut self.waiting,
            StateName::Scheduled => &mut self.scheduled,
            StateName::Available => &mut self.available,
            StateName::Running => &mut self.running,
            StateName::Retrying => &mut self.retrying,
            StateName::Completed => &mut self.completed,
            StateName::Dead => &mut self.dead,
            StateName::Cancelled => &mut self.cancelled,
        }
    }

    /// Jobs not yet finished.
    pub fn depth(&self) -> u64 {
        self.waiting + self.scheduled + self.available + self.running + self.retrying
    }
}

/// What to do with cron instants that passed while nothing fired them (the cluster was down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Insert nothing for them.
    Skip,
    /// Insert one job, for the latest of them.
    Once,
    /// Insert one job for each (at most [`JOB_CRON_CATCH_UP_MAX`](crate::limits::JOB_CRON_CATCH_UP_MAX)).
    All,
}

/// A cron schedule as the state machine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRecord {
    pub name: String,
    pub schedule: String,
    pub missed: Missed,
    /// What each firing submits (its unique key, if any, is suffixed with the instant).
    pub spec: JobSpec,
    pub created_ms: u64,
    /// The next instant it fires at (log time, UTC).
    pub next_ms: u64,
    /// The last instant it inserted a job for.
    pub last_ms: Option<u64>,
    pub fired_total: u64,
    pub skipped_total: u64,
}

/// Replicated job commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    Submit {
        spec: JobSpec,
    },
    /// Worker `worker` of node `node` takes up to `most` available jobs from `queues` (in that order; within a
    /// queue by priority, then id), each under a lease of `lease_ms`.
    Claim {
        node: u64,
        worker: u32,
        queues: Vec<String>,
        most: u32,
        lease_ms: u64,
    },
    /// Extends the lease of the attempt under `fence` by `lease_ms` from now.
    Heartbeat {
        id: u64,
        fence: u64,
        lease_ms: u64,
    },
    Complete {
        id: u64,
        fence: u64,
        output: JobOutput,
    },
    /// The attempt failed: retry after the backoff, or dead once out of attempts (at once when not `retryable`).
    Fail {
        id: u64,
        fence: u64,
        error: String,
        output: JobOutput,
        retryable: bool,
    },
    Cancel {
        id: u64,
    },
    /// A dead or cancelled job runs again with fresh attempts.
    Retry {
        id: u64,
    },
    /// Dead jobs of `queue` (or every queue) run again with fresh attempts, at most `most` of them.
    Redrive {
        queue: Option<String>,
        most: u32,
    },
    /// Deletes jobs in `state` (a final one) that ended at least `older_than_ms` ago, at most `most` of them.
    Purge {
        state: StateName,
        older_than_ms: u64,
        queue: Option<String>,
        most: u32,
    },
    CronCreate {
        name: String,
        schedule: String,
        missed: Missed,
        spec: JobSpec,
    },
    CronDelete {
        name: String,
    },
    /// Node `node` runs `workers` job workers claiming from `queues` under leases of `lease_ms` (its dispatcher says
    /// so when it starts; what `pando job workers` lists). Only nodes propose it.
    Pool {
        node: u64,
        workers: u32,
        queues: Vec<String>,
        lease_ms: u64,
    },
}

impl JobCommand {
    /// Bytes the command weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        match self {
            JobCommand::Submit { spec } | JobCommand::CronCreate { spec, .. } => 1024 + spec.payload.len(),
            JobCommand::Complete { output, .. } | JobCommand::Fail { output, .. } => 256 + output.tail.len(),
            _ => 256,
        }
    }

    /// Checks what can be checked without the state.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            JobCommand::Submit { spec } => spec.validate(),
            JobCommand::Claim { queues, most, lease_ms, .. } => {
                if queues.is_empty() || queues.len() > JOB_CLAIM_QUEUES_MAX {
                    return Err(WireError::invalid(format!("a claim names 1 to {JOB_CLAIM_QUEUES_MAX} queues")));
                }
                for queue in queues {
                    validate_name("queue", queue)?;
                }
                validate_count(*most, JOB_CLAIM_COUNT_MAX)?;
                validate_lease(*lease_ms)
            }
            JobCommand::Heartbeat { lease_ms, .. } => validate_lease(*lease_ms),
            JobCommand::Complete { output, .. } => output.validate(),
            JobCommand::Fail { output, error, .. } => {
                if error.len() > JOB_ERROR_BYTES_MAX {
                    return Err(WireError::too_large(format!("an error is more than {JOB_ERROR_BYTES_MAX} bytes")));
                }
                output.validate()
            }
            JobCommand::Cancel { .. } | JobCommand::Retry { .. } => Ok(()),
            JobCommand::Redrive { queue, most } => {
                if let Some(queue) = queue {
                    validate_name("queue", queue)?;
                }
                validate_count(*most, JOB_LIST_COUNT_MAX)
            }
            JobCommand::Purge { state, queue, most, .. } => {
                if !state.is_final() {
                    return Err(WireError::invalid(format!(
                        "only completed, dead or cancelled jobs can be purged, not {}",
                        state.as_str()
                    )));
                }
                if let Some(queue) = queue {
                    validate_name("queue", queue)?;
                }
                validate_count(*most, JOB_LIST_COUNT_MAX)
            }
            JobCommand::CronCreate { name, schedule, spec, .. } => {
                validate_name("cron name", name)?;
                cron::Schedule::parse(schedule)?;
                if !spec.depends_on.is_empty() {
                    return Err(WireError::invalid("a cron schedule's jobs cannot depend on other jobs"));
                }
                spec.validate()
            }
            JobCommand::CronDelete { name } => validate_name("cron name", name),
            JobCommand::Pool { workers, queues, lease_ms, .. } => {
                if *workers > JOB_WORKERS_MAX {
                    return Err(WireError::invalid(format!("a node runs at most {JOB_WORKERS_MAX} job workers")));
                }
                if queues.len() > JOB_CLAIM_QUEUES_MAX || (*workers > 0 && queues.is_empty()) {
                    return Err(WireError::invalid(format!("workers claim from 1 to {JOB_CLAIM_QUEUES_MAX} queues")));
                }
                for queue in queues {
                    validate_name("queue", queue)?;
                }
                validate_lease(*lease_ms)
            }
        }
    }
}

fn validate_count(count: u32, most: u32) -> Result<(), WireError> {
    if !(1..=most).contains(&count) {
        return Err(WireError::invalid(format!("a count must be 1 to {most}")));
    }
    Ok(())
}

fn validate_lease(lease_ms: u64) -> Result<(), WireError> {
    if !(JOB_LEASE_MS_MIN..=JOB_LEASE_MS_MAX).contains(&lease_ms) {
        return Err(WireError::invalid(format!("a lease must be {JOB_LEASE_MS_MIN} to {JOB_LEASE_MS_MAX} ms")));
    }
    Ok(())
}

/// What a job command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobResponse {
    /// The job's id; `duplicate` when a job holding the spec's unique key answered instead.
    Submitted {
        id: u64,
        duplicate: bool,
        state: StateName,
    },
    Claimed(Vec<Claimed>),
    Extended {
        until_ms: u64,
    },
    /// The job's state after the command.
    Job(Box<Job>),
    /// How many jobs a redrive or purge took, and whether more are left.
    Count {
        count: u64,
        more: bool,
    },
    Cron(Box<CronRecord>),
    Done,
}

/// Job reads (served from a member's applied state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobQuery {
    Get {
        id: u64,
    },
    /// Jobs by id from `after` on (exclusive), in `state` and `queue` when given, at most `limit`.
    List {
        state: Option<StateName>,
        queue: Option<String>,
        after: u64,
        limit: u32,
    },
    Stats,
    CronList,
    /// The nodes' worker pools, as each last reported it.
    Pools,
}

impl JobQuery {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            JobQuery::List { queue, limit, .. } => {
                if let Some(queue) = queue {
                    validate_name("queue", queue)?;
                }
                validate_count(*limit, JOB_LIST_COUNT_MAX)
            }
            _ => Ok(()),
        }
    }
}

/// What a job read answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobQueryResponse {
    Job(Box<Job>),
    /// A page of jobs (payloads left out past the first few, to bound the frame), and whether more are left.
    List {
        jobs: Vec<Job>,
        more: bool,
    },
    Stats(Vec<QueueStats>),
    Crons(Vec<CronRecord>),
    Pools(Vec<WorkerPool>),
}

/// A node's job workers, as its dispatcher last reported them (a node's running jobs are in the jobs' states).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPool {
    pub node: u64,
    pub workers: u32,
    pub queues: Vec<String>,
    /// The lease each claim asks for, renewed every third of it.
    pub lease_ms: u64,
    /// When the report was applied (log time): the node's last start.
    pub reported_ms: u64,
}

/// A client's job request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobRequest {
    Command(JobCommand),
    Query(JobQuery),
}

impl JobRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            JobRequest::Command(JobCommand::Pool { .. }) => {
                Err(WireError::invalid("a worker pool is reported by its node, not by a client"))
            }
            JobRequest::Command(command) => command.validate(),
            JobRequest::Query(query) => query.validate(),
        }
    }

    /// What the request needs its token to allow.
    pub fn required(&self) -> Vec<crate::token::Access<'_>> {
        use crate::token::Access;
        match self {
            JobRequest::Command(JobCommand::Submit { spec }) => match &spec.kind {
                JobKind::Shell { .. } => vec![Access::JobShell],
                JobKind::Plugin { plugin, .. } => vec![Access::JobSubmit(&spec.queue), Access::PluginCall(plugin)],
            },
            JobRequest::Command(JobCommand::CronCreate { spec, .. }) => match &spec.kind {
                JobKind::Shell { .. } => vec![Access::JobAdmin, Access::JobShell],
                JobKind::Plugin { .. } => vec![Access::JobAdmin],
            },
            JobRequest::Command(_) => vec![Access::JobAdmin],
            JobRequest::Query(_) => vec![Access::JobRead],
        }
    }
}

/// What a job request answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobReply {
    Command(JobResponse),
    Query(JobQueryResponse),
}
