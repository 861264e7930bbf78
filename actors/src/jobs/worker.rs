//! The job pool's actors: a dispatcher that claims for the idle workers of its node, and the workers that run what
//! it hands them.
//!
//! The dispatcher follows the commit stream: a job of this node's queues that became claimable (`job.submitted`,
//! `job.ready`, `job.rescued`) marks that there may be work, and while there may be and a worker is idle it claims
//! as many jobs as workers are idle in one proposal, handing one to each. A claim that finds fewer jobs than it asked
//! for means the queues are drained until the next such event. A worker runs its job in a task of its own,
//! heartbeating every third of the lease; when the run ends it reports the result under the claim's fence and tells
//! the dispatcher it is idle again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::coord::{CoordEvent, JobEventKind};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::job::{Claimed, JobCommand, JobResponse};
use pando_protocol::limits::JOB_CLAIM_COUNT_MAX;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{IDLE_CLAIM_MS, JobCounters, JobsArgs, RunResult};
use crate::supervision::control::current_call;
use crate::supervision::{ActorDetail, Control};

/// How long one proposal of a worker or the dispatcher may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the dispatcher waits after a claim failed (no leader, say) before it tries again.
const CLAIM_RETRY: Duration = Duration::from_secs(1);
/// How long a worker keeps trying to report its result (the job is rescued anyway if it cannot).
const REPORT_ATTEMPTS_MAX: u32 = 10;

/// The idle workers of one node, shared by its dispatcher and workers.
#[derive(Default)]
pub struct Dispatch {
    idle: Mutex<Vec<ActorRef<JobWorkerMsg>>>,
    all: Mutex<Vec<ActorRef<JobWorkerMsg>>>,
    became_idle: Notify,
}

impl Dispatch {
    fn idle(&self, worker: ActorRef<JobWorkerMsg>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|other| other.get_id() != worker.get_id());
            idle.push(worker);
        }
        self.became_idle.notify_one();
    }

    fn join(&self, worker: &ActorRef<JobWorkerMsg>) {
        if let Ok(mut all) = self.all.lock() {
            all.retain(|other| other.get_status() != ractor::ActorStatus::Stopped);
            all.push(worker.clone());
        }
    }

    fn take_idle(&self, most: usize) -> Vec<ActorRef<JobWorkerMsg>> {
        let Ok(mut idle) = self.idle.lock() else { return Vec::new() };
        idle.retain(|worker| {
            !matches!(worker.get_status(), ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping)
        });
        let take = idle.len().min(most);
        idle.drain(..take).collect()
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn broadcast(&self, message: impl Fn() -> JobWorkerMsg) {
        if let Ok(all) = self.all.lock() {
            for worker in all.iter() {
                let _ = worker.cast(message());
            }
        }
    }
}

pub enum JobWorkerMsg {
    /// Run this claimed job.
    Run(Box<Claimed>),
    /// Job `id` was cancelled: stop it if it runs here.
    Cancelled(u64),
    /// The run of job `id` ended and was reported (or could not be); the line says how.
    Finished {
        id: u64,
        line: String,
        completed: bool,
    },
    Control(Control),
}

impl ractor::Message for JobWorkerMsg {}

impl From<Control> for JobWorkerMsg {
    fn from(control: Control) -> JobWorkerMsg {
        JobWorkerMsg::Control(control)
    }
}

#[derive(Clone)]
pub struct JobWorkerArgs {
    pub index: u32,
    pub shared: JobsArgs,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct JobWorkerActor;

struct Running {
    id: u64,
    attempt: u32,
    fence: u64,
    queue: String,
    since: std::time::Instant,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A worker's run ends with it, however the worker ends (a panic included, where no `post_stop` runs): dropping the
/// run kills its process group, and the job is claimed again once its lease lapses.
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct WorkerState {
    args: JobWorkerArgs,
    running: Option<Running>,
    completed: u64,
    failed: u64,
    last: Option<String>,
}

impl Actor for JobWorkerActor {
    type Msg = JobWorkerMsg;
    type State = WorkerState;
    type Arguments = JobWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobWorkerMsg>,
        args: JobWorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        args.shared.dispatch.join(&myself);
        args.shared.dispatch.idle(myself);
        Ok(WorkerState { args, running: None, completed: 0, failed: 0, last: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<JobWorkerMsg>,
        message: JobWorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JobWorkerMsg::Run(claimed) => {
                if let Some(running) = &state.running {
                    // The dispatcher handed a second job to a busy worker: a bug; the job is rescued after its lease.
                    tracing::error!(busy = running.id, handed = claimed.id, "a busy job worker was handed a job");
                    return Ok(());
                }
                let stop = CancellationToken::new();
                let task = tokio::spawn(run(state.args.shared.clone(), (*claimed).clone(), stop.clone(), myself));
                state.running = Some(Running {
                    id: claimed.id,
                    attempt: claimed.attempt,
                    fence: claimed.fence,
                    queue: claimed.spec.queue.clone(),
                    since: std::time::Instant::now(),
                    stop,
                    task,
                });
            }
            JobWorkerMsg::Cancelled(id) => {
                if let Some(running) = state.running.as_ref().filter(|running| running.id == id) {
                    running.stop.cancel();
                }
            }
            JobWorkerMsg::Finished { id, line, completed } => {
                if state.running.as_ref().is_some_and(|running| running.id == id) {
                    // The task ended already (it sent this); dropping aborts nothing.
                    state.running = None;
                }
                if completed {
                    state.completed += 1;
                } else {
                    state.failed += 1;
                }
                state.last = Some(line);
                state.args.shared.dispatch.idle(myself);
            }
            JobWorkerMsg::Control(Control::InjectPanic) => panic!("fault injection: job worker panics on request"),
            JobWorkerMsg::Control(Control::Status(reply, _)) => {
                let current = state.running.as_ref().map(|running| {
                    let what = format!(
                        "job {} attempt {} (fence {}) of queue {}",
                        running.id, running.attempt, running.fence, running.queue
                    );
                    current_call(what, running.since)
                });
                let now = if current.is_some() { "running" } else { "idle" };
                let mut line = format!("{now}; {} completed, {} failed", state.completed, state.failed);
                if let Some(last) = &state.last {
                    line.push_str(&format!("; last: {last}"));
                }
                let _ = reply.send(ActorDetail::line(line).running(current));
            }
        }
        Ok(())
    }
}

async fn propose(shared: &JobsArgs, command: JobCommand) -> Result<JobResponse, WireError> {
    shared.log.propose(command, PROPOSE_TIMEOUT).await
}

/// Runs one job: the run, its heartbeats, and its report.
async fn run(shared: JobsArgs, claimed: Claimed, stop: CancellationToken, worker: ActorRef<JobWorkerMsg>) {
    let (id, fence) = (claimed.id, claimed.fence);
    let lease_ms = shared.config.lease_ms;
    let runner = shared.runner.clone();
    let stopped = stop.clone();
    let run = runner.run(&claimed, Box::pin(async move { stopped.cancelled().await }));
    tokio::pin!(run);
    // The lease as this node last renewed it, by its own clock: past it, the job may be running elsewhere.
    let mut lease_end = tokio::time::Instant::now() + Duration::from_millis(lease_ms);
    let mut beat = tokio::time::interval(Duration::from_millis(lease_ms / 3));
    beat.tick().await;
    let result = loop {
        tokio::select! {
            biased; // tokio's unbiased choice is random per process: a simulated run must replay from its seed
            result = &mut run => break result,
            _ = beat.tick() => {
                let sent = tokio::time::Instant::now();
                match propose(&shared, JobCommand::Heartbeat { id, fence, lease_ms }).await {
                    Ok(_) => lease_end = sent + Duration::from_millis(lease_ms),
                    Err(error) if error.code == ErrorCode::Conflict || error.code == ErrorCode::NotFound => {
                        tracing::info!(id, fence, %error, "job attempt is over: stopping its run");
                        JobCounters::add(&shared.counters.stale_refusals, 1);
                        stop.cancel();
                    }
                    Err(error) if tokio::time::Instant::now() >= lease_end => {
                        tracing::warn!(id, fence, %error, "cannot renew the job's lease in time: stopping its run");
                        stop.cancel();
                    }
                    Err(error) => tracing::debug!(id, fence, %error, "a job heartbeat failed; retrying"),
                }
            }
        }
    };
    if stop.is_cancelled() {
        JobCounters::add(&shared.counters.stopped, 1);
    }
    let result = if crate::sim::planted_bug(crate::sim::PlantedBug::JobCompleteIgnoresOutcome) {
        RunResult::Completed(Default::default())
    } else {
        result
    };
    let counters = &shared.counters;
    JobCounters::add(if matches!(result, RunResult::Completed(_)) { &counters.completed } else { &counters.failed }, 1);
    let (command, completed, summary) = match result {
        RunResult::Completed(output) => (JobCommand::Complete { id, fence, output }, true, "completed".to_string()),
        RunResult::Failed { error, output, retryable } => {
            let summary = format!("failed: {error}");
            (JobCommand::Fail { id, fence, error, output, retryable }, false, summary)
        }
    };
    let mut line = format!("job {id} attempt {} {summary}", claimed.attempt);
    for attempt in 1..=REPORT_ATTEMPTS_MAX {
        match propose(&shared, command.clone()).await {
            Ok(_) => break,
            Err(error) if matches!(error.code, ErrorCode::Conflict | ErrorCode::NotFound) => {
                line = format!("job {id} attempt {} {summary}, but its result was refused: {error}", claimed.attempt);
                JobCounters::add(&shared.counters.stale_refusals, 1);
                break;
            }
            Err(error) if attempt == REPORT_ATTEMPTS_MAX => {
                line = format!("job {id} attempt {} {summary}, but it could not be reported: {error}", claimed.attempt);
            }
            Err(_) => tokio::time::sleep(CLAIM_RETRY).await,
        }
    }
    let _ = worker.cast(JobWorkerMsg::Finished { id, line, completed });
}

pub enum DispatcherMsg {
    Control(Control),
}

impl ractor::Message for DispatcherMsg {}

impl From<Control> for DispatcherMsg {
    fn from(control: Control) -> DispatcherMsg {
        DispatcherMsg::Control(control)
    }
}

/// Claims for the idle workers of its node (see the module's opening).
#[derive(Clone, Copy, Debug, Default)]
pub struct JobDispatcherActor;

pub struct DispatcherState {
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Mutex<DispatchStats>>,
}

/// The claiming task ends with the dispatcher however it ends (a panic runs no `post_stop`), so a restarted
/// dispatcher never claims beside its predecessor.
impl Drop for DispatcherState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct DispatchStats {
    claims: u64,
    claimed: u64,
    last_error: Option<String>,
}

impl Actor for JobDispatcherActor {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = JobsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<DispatcherMsg>,
        args: JobsArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let stats = Arc::new(Mutex::new(DispatchStats::default()));
        let task = tokio::spawn(dispatch(args, stats.clone()));
        Ok(DispatcherState { task, stats })
    }

    async fn handle(
        &self,
        _: ActorRef<DispatcherMsg>,
        message: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatcherMsg::Control(Control::InjectPanic) => panic!("fault injection: job dispatcher panics on request"),
            DispatcherMsg::Control(Control::Status(reply, _)) => {
                let line = match state.stats.lock() {
                    Ok(stats) => format!(
                        "{} claims took {} jobs{}",
                        stats.claims,
                        stats.claimed,
                        stats.last_error.as_ref().map(|error| format!("; last error: {error}")).unwrap_or_default()
                    ),
                    Err(_) => "status unavailable".into(),
                };
                let _ = reply.send(ActorDetail::line(line));
            }
        }
        Ok(())
    }
}

/// Whether `event` may have made a job of `queues` claimable.
fn makes_work(event: &CoordEvent, queues: &[String]) -> bool {
    matches!(
        event,
        CoordEvent::Job { queue, kind: JobEventKind::Submitted | JobEventKind::Ready | JobEventKind::Rescued { .. }, .. }
            if queues.contains(queue)
    )
}

async fn dispatch(args: JobsArgs, stats: Arc<Mutex<DispatchStats>>) {
    let mut commits = args.storage.subscribe();
    let mut backstop = tokio::time::interval(Duration::from_millis(IDLE_CLAIM_MS));
    let mut maybe_more = true;
    let mut reported = false;
    loop {
        let may_claim = args.config.followers_claim || args.raft.leads();
        if !reported && may_claim {
            // The pool's report, once per start; a failed one is tried again at the next wake-up.
            let report = JobCommand::Pool {
                node: args.node_id,
                workers: args.config.workers as u32,
                queues: args.config.queues.clone(),
                lease_ms: args.config.lease_ms,
            };
            match propose(&args, report).await {
                Ok(_) => reported = true,
                Err(error) => tracing::debug!(%error, "the job pool's report failed; trying again"),
            }
        }
        if maybe_more && may_claim && args.dispatch.idle_count() > 0 {
            let workers = args.dispatch.take_idle(JOB_CLAIM_COUNT_MAX as usize);
            if workers.is_empty() {
                continue;
            }
            let most = workers.len() as u32;
            let command = JobCommand::Claim {
                node: args.node_id,
                worker: 0,
                queues: args.config.queues.clone(),
                most,
                lease_ms: args.config.lease_ms,
            };
            let answer = propose(&args, command).await;
            JobCounters::add(&args.counters.claims, 1);
            if let Ok(JobResponse::Claimed(jobs)) = &answer {
                JobCounters::add(&args.counters.claimed, jobs.len() as u64);
            }
            if let Ok(mut stats) = stats.lock() {
                stats.claims += 1;
                match &answer {
                    Ok(JobResponse::Claimed(jobs)) => stats.claimed += jobs.len() as u64,
                    Ok(_) => {}
                    Err(error) => stats.last_error = Some(error.to_string()),
                }
            }
            match answer {
                Ok(JobResponse::Claimed(jobs)) => {
                    maybe_more = jobs.len() as u32 == most;
                    let mut workers = workers.into_iter();
                    for job in jobs {
                        // A worker that stopped since it said it was idle leaves its job to the lease.
                        if let Some(worker) = workers.next()
                            && worker.cast(JobWorkerMsg::Run(Box::new(job))).is_err()
                        {
                            tracing::warn!("a job worker stopped before it took its job; the job waits for its lease");
                        }
                    }
                    for worker in workers {
                        args.dispatch.idle(worker);
                    }
                }
                Ok(other) => tracing::error!(?other, "a claim answered something else"),
                Err(error) => {
                    for worker in workers {
                        args.dispatch.idle(worker);
                    }
                    tracing::debug!(%error, "a job claim failed; trying again");
                    tokio::time::sleep(CLAIM_RETRY).await;
                }
            }
            continue;
        }
        tokio::select! {
            biased; // replayable from a seed (tokio's unbiased choice is random per process)
            committed = commits.recv() => match committed {
                Ok(committed) => {
                    for event in &committed.coord {
                        if makes_work(event, &args.config.queues) {
                            maybe_more = true;
                        }
                        if let CoordEvent::Job { id, kind: JobEventKind::Cancelled, .. } = event {
                            let id = *id;
                            args.dispatch.broadcast(|| JobWorkerMsg::Cancelled(id));
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => maybe_more = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = args.dispatch.became_idle.notified() => {}
            _ = backstop.tick() => maybe_more = true,
        }
    }
}
