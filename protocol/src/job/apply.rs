//! The job state machine: every transition of a job goes through [`set_state`], which keeps the indexes, timers,
//! counts, unique keys and dependents in step with the job's row, so no command can leave them apart.
//!
//! Rows of the coordination table:
//! - `J/<id>` the job; `Jx/<state><id>` one row per job in its state's index (the dead-letter list is the `dead` one);
//!   `Ja/<queue><priority><id>` the available jobs a claim takes, in order;
//! - `Ju/<key>` a unique key, pointing at the job that holds it while it has not finished;
//! - `Jd/<dependency><dependent>` who waits for whom; `Jq/<queue>` a queue's counts; `Jc/<name>` cron schedules;
//!   `Jw/<node>` a node's worker pool as it last reported it;
//! - `m/job_next`, `m/job_fence`, `m/job_count`: the next id, the last fence, the jobs kept.
//!
//! Deadlines run on [timers](crate::coord::timer) of the log clock: a scheduled or retrying job's start, a running
//! attempt's lease, a cron schedule's next instant. A timer that fires after its state moved on is ignored.

use std::ops::ControlFlow;

use super::cron::Schedule;
use super::{
    Attempt, AttemptOutcome, Claimed, CronRecord, Job, JobCommand, JobOutput, JobQuery, JobQueryResponse, JobResponse,
    JobSpec, JobState, Missed, QueueStats, StateName, WorkerPool,
};
use crate::coord::keys::{scoped, with};
use crate::coord::timer::{self, TimerKind};
use crate::coord::{CoordEvent, CoordRead, CoordWrite, JobEventKind, decode, load, load_under, save};
use crate::error::{ErrorCode, WireError};
use crate::limits::{
    JOB_CRON_CATCH_UP_MAX, JOB_CRON_COUNT_MAX, JOB_CRON_ON_TIME_MS, JOB_DEPENDENTS_MAX, JOB_ERROR_BYTES_MAX,
    JOB_HISTORY_MAX, JOB_POOLS_MAX, JOB_TIMEOUT_GRACE_MS, JOBS_COUNT_MAX, SCAN_RESPONSE_BYTES_MAX,
};
use crate::state_machine::StorageFault;

const JOB: &[u8] = b"J/";
const STATE: &[u8] = b"Jx/";
const AVAILABLE: &[u8] = b"Ja/";
const UNIQUE: &[u8] = b"Ju/";
const DEPENDENTS: &[u8] = b"Jd/";
const QUEUE: &[u8] = b"Jq/";
const CRON: &[u8] = b"Jc/";
const POOL: &[u8] = b"Jw/";
const NEXT_ID: &[u8] = b"m/job_next";
const LAST_FENCE: &[u8] = b"m/job_fence";
const COUNT: &[u8] = b"m/job_count";

fn job_key(id: u64) -> Vec<u8> {
    with(JOB, &id.to_be_bytes())
}

fn state_key(state: StateName, id: u64) -> Vec<u8> {
    let mut key = with(STATE, &[state as u8]);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn available_key(job: &Job) -> Vec<u8> {
    let mut key = scoped(AVAILABLE, job.spec.queue.as_bytes());
    key.push(job.spec.priority);
    key.extend_from_slice(&job.id.to_be_bytes());
    key
}

fn dependent_key(dependency: u64, dependent: u64) -> Vec<u8> {
    let mut key = with(DEPENDENTS, &dependency.to_be_bytes());
    key.extend_from_slice(&dependent.to_be_bytes());
    key
}

fn queue_key(queue: &str) -> Vec<u8> {
    with(QUEUE, queue.as_bytes())
}

fn counter(store: &impl CoordRead, key: &[u8]) -> Result<u64, StorageFault> {
    Ok(load::<u64>(store, key)?.unwrap_or(0))
}

pub(crate) fn load_job(store: &impl CoordRead, id: u64) -> Result<Option<Job>, StorageFault> {
    load(store, &job_key(id))
}

fn stats(store: &impl CoordRead, queue: &str) -> Result<QueueStats, StorageFault> {
    Ok(load(store, &queue_key(queue))?.unwrap_or_else(|| QueueStats { queue: queue.to_string(), ..Default::default() }))
}

fn update_stats(
    store: &mut impl CoordWrite,
    queue: &str,
    change: impl FnOnce(&mut QueueStats),
) -> Result<(), StorageFault> {
    let mut row = stats(store, queue)?;
    change(&mut row);
    save(store, &queue_key(queue), &row)
}

fn emit(store: &mut impl CoordWrite, job: &Job, kind: JobEventKind) {
    store.emit(CoordEvent::Job { id: job.id, queue: job.spec.queue.clone(), kind });
}

fn cut(text: &str, most: usize) -> String {
    if text.len() <= most {
        return text.to_string();
    }
    let mut end = most;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn conflict(job: &Job, fence: u64) -> WireError {
    let now = match &job.state {
        JobState::Running { fence: current, .. } => {
            format!("running attempt {} under fence {current}", job.attempt)
        }
        state => state.name().as_str().to_string(),
    };
    WireError::new(
        ErrorCode::Conflict,
        format!("job {} is {now}, not under fence {fence}: the attempt is over", job.id),
    )
}

fn not_found(id: u64) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no job {id}"))
}

/// Moves `job` from its state (`None`: a new job) to `next`, keeping every index, timer and count in step, and saves
/// it. A job that finishes releases its unique key and settles its dependents: they go on once it completed, and are
/// dead once it is dead or cancelled (in cascade).
fn set_state(store: &mut impl CoordWrite, job: &mut Job, next: JobState, now: u64) -> Result<(), StorageFault> {
    let mut work = vec![(std::mem::replace(job, placeholder()), next)];
    let mut first = None;
    while let Some((mut job, next)) = work.pop() {
        let before = leave(store, &job, now)?;
        job.state = next;
        enter(store, &job, before)?;
        if job.state.name().is_final() {
            for dependent in settle_dependents(store, &job, now)? {
                work.push(dependent);
            }
        }
        save(store, &job_key(job.id), &job)?;
        first.get_or_insert(job);
    }
    *job = first.expect("the first job went through");
    Ok(())
}

fn placeholder() -> Job {
    Job {
        id: 0,
        spec: JobSpec::new(super::JobKind::Plugin { plugin: String::new(), function: String::new() }),
        state: JobState::Waiting,
        attempt: 0,
        submitted_ms: 0,
        pending_dependencies: 0,
        history: Vec::new(),
        rescues: 0,
        output: None,
        cron: None,
    }
}

/// Takes `job` out of its state's index and timers; answers that state (`None` for a job not saved yet).
fn leave(store: &mut impl CoordWrite, job: &Job, _now: u64) -> Result<Option<StateName>, StorageFault> {
    if store.coord_get(&job_key(job.id))?.is_none() {
        return Ok(None);
    }
    let name = job.state.name();
    store.coord_delete(&state_key(name, job.id))?;
    match &job.state {
        JobState::Available => {
            store.coord_delete(&available_key(job))?;
        }
        JobState::Scheduled { at_ms } | JobState::Retrying { at_ms } => {
            timer::disarm(store, *at_ms, TimerKind::JobDue, &job.id.to_be_bytes())?
        }
        JobState::Running { until_ms, .. } => {
            timer::disarm(store, *until_ms, TimerKind::JobLease, &job.id.to_be_bytes())?
        }
        _ => {}
    }
    Ok(Some(name))
}

fn enter(store: &mut impl CoordWrite, job: &Job, before: Option<StateName>) -> Result<(), StorageFault> {
    let name = job.state.name();
    store.coord_put(&state_key(name, job.id), &[])?;
    match &job.state {
        JobState::Available => store.coord_put(&available_key(job), &[])?,
        JobState::Scheduled { at_ms } | JobState::Retrying { at_ms } => {
            timer::arm(store, *at_ms, TimerKind::JobDue, &job.id.to_be_bytes())?
        }
        JobState::Running { until_ms, .. } => timer::arm(store, *until_ms, TimerKind::JobLease, &job.id.to_be_bytes())?,
        _ => {}
    }
    if name.is_final()
        && let Some(key) = &job.spec.unique_key
        && load::<u64>(store, &with(UNIQUE, key.as_bytes()))? == Some(job.id)
    {
        store.coord_delete(&with(UNIQUE, key.as_bytes()))?;
    }
    update_stats(store, &job.spec.queue, |stats| {
        if let Some(before) = before {
            *stats.count_mut(before) = stats.count(before).saturating_sub(1);
        }
        *stats.count_mut(name) += 1;
    })
}

/// A finished job's dependents, each with the state it goes to; a job that finished while it waited leaves the
/// dependents lists of its own dependencies.
fn settle_dependents(store: &mut impl CoordWrite, job: &Job, now: u64) -> Result<Vec<(Job, JobState)>, StorageFault> {
    for dependency in &job.spec.depends_on {
        store.coord_delete(&dependent_key(*dependency, job.id))?;
    }
    let prefix = with(DEPENDENTS, &job.id.to_be_bytes());
    let mut dependents = Vec::new();
    store.coord_scan(&prefix, &mut |key, _| {
        if let Some(id) = key.get(prefix.len()..).and_then(|raw| raw.try_into().ok()).map(u64::from_be_bytes) {
            dependents.push(id);
        }
        ControlFlow::Continue(())
    })?;
    let mut moves = Vec::new();
    for id in dependents {
        store.coord_delete(&dependent_key(job.id, id))?;
        let Some(mut dependent) = load_job(store, id)? else { continue };
        if dependent.state != JobState::Waiting {
            continue;
        }
        match job.state {
            JobState::Completed { .. } => {
                dependent.pending_dependencies = dependent.pending_dependencies.saturating_sub(1);
                if dependent.pending_dependencies == 0 {
                    let next = ready_state(&dependent, now);
                    if next == JobState::Available {
                        emit(store, &dependent, JobEventKind::Ready);
                    }
                    moves.push((dependent, next));
                } else {
                    save(store, &job_key(id), &dependent)?;
                }
            }
            _ => {
                let reason = format!("dependency {} is {}", job.id, job.state.name().as_str());
                emit(store, &dependent, JobEventKind::Dead);
                moves.push((dependent, JobState::Dead { ended_ms: now, reason }));
            }
        }
    }
    Ok(moves)
}

/// Where a job whose dependencies are met goes: scheduled until its start, else available.
fn ready_state(job: &Job, now: u64) -> JobState {
    let at_ms = job.submitted_ms.saturating_add(job.spec.delay_ms);
    if at_ms > now { JobState::Scheduled { at_ms } } else { JobState::Available }
}

/// Keeps `output` as the job's last output: its blob is protected from collection, the blob of the output it
/// replaces released (an unknown blob is no fault: it may have been collected already).
fn keep_output(store: &mut impl CoordWrite, now: u64, job: &mut Job, output: JobOutput) -> Result<(), StorageFault> {
    let old = job.output.as_ref().and_then(|output| output.blob);
    if let Some(hash) = output.blob {
        let _ = crate::blob::apply(store, now, &crate::blob::BlobCommand::Protect { hash, protected: true })?;
    }
    if let Some(hash) = old.filter(|old| Some(*old) != output.blob) {
        let _ = crate::blob::apply(store, now, &crate::blob::BlobCommand::Protect { hash, protected: false })?;
    }
    job.output = Some(output);
    Ok(())
}

fn record_attempt(job: &mut Job, now: u64, outcome: AttemptOutcome) {
    if let JobState::Running { node, fence, started_ms, .. } = job.state {
        job.history.push(Attempt { attempt: job.attempt, fence, node, started_ms, ended_ms: now, outcome });
        if job.history.len() > JOB_HISTORY_MAX {
            job.history.remove(0);
        }
    }
}

/// Applies one job command at log time `now`. A caller's mistake is an answer; only storage faults are `Err`.
pub fn apply(
    store: &mut impl CoordWrite,
    now: u64,
    command: &JobCommand,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    if let Err(error) = command.validate() {
        return Ok(Err(error));
    }
    match command {
        JobCommand::Submit { spec } => submit(store, now, spec.clone(), None),
        JobCommand::Claim { node, worker, queues, most, lease_ms } => {
            claim(store, now, *node, *worker, queues, *most, *lease_ms).map(Ok)
        }
        JobCommand::Heartbeat { id, fence, lease_ms } => heartbeat(store, now, *id, *fence, *lease_ms),
        JobCommand::Complete { id, fence, output } => finish(store, now, *id, *fence, Ok(output.clone())),
        JobCommand::Fail { id, fence, error, output, retryable } => {
            finish(store, now, *id, *fence, Err((error.clone(), output.clone(), *retryable)))
        }
        JobCommand::Cancel { id } => cancel(store, now, *id),
        JobCommand::Retry { id } => {
            let Some(mut job) = load_job(store, *id)? else { return Ok(Err(not_found(*id))) };
            Ok(retry(store, now, &mut job)?.map(|()| JobResponse::Job(Box::new(job))))
        }
        JobCommand::Redrive { queue, most } => redrive(store, now, queue.as_deref(), *most),
        JobCommand::Purge { state, older_than_ms, queue, most } => {
            purge(store, now, *state, *older_than_ms, queue.as_deref(), *most)
        }
        JobCommand::CronCreate { name, schedule, missed, spec } => {
            cron_create(store, now, name, schedule, *missed, spec.clone())
        }
        JobCommand::CronDelete { name } => {
            let key = with(CRON, name.as_bytes());
            let Some(record) = load::<CronRecord>(store, &key)? else {
                return Ok(Err(WireError::new(ErrorCode::NotFound, format!("no cron schedule {name:?}"))));
            };
            timer::disarm(store, record.next_ms, TimerKind::Cron, name.as_bytes())?;
            store.coord_delete(&key)?;
            Ok(Ok(JobResponse::Done))
        }
        JobCommand::Pool { node, workers, queues, lease_ms } => {
            let key = with(POOL, &node.to_be_bytes());
            if load::<WorkerPool>(store, &key)?.is_none() && load_under::<WorkerPool>(store, POOL, JOB_POOLS_MAX - 1)?.1
            {
                return Ok(Err(WireError::new(
                    ErrorCode::TooLarge,
                    format!("the cluster keeps the worker pools of at most {JOB_POOLS_MAX} nodes"),
                )));
            }
            let pool = WorkerPool {
                node: *node,
                workers: *workers,
                queues: queues.clone(),
                lease_ms: *lease_ms,
                reported_ms: now,
            };
            save(store, &key, &pool)?;
            Ok(Ok(JobResponse::Done))
        }
    }
}

fn submit(
    store: &mut impl CoordWrite,
    now: u64,
    spec: JobSpec,
    cron: Option<(String, u64)>,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    if let Some(key) = &spec.unique_key
        && let Some(holder) = load::<u64>(store, &with(UNIQUE, key.as_bytes()))?
        && let Some(job) = load_job(store, holder)?
        && !job.state.name().is_final()
    {
        return Ok(Ok(JobResponse::Submitted { id: holder, duplicate: true, state: job.state.name() }));
    }
    let count = counter(store, COUNT)?;
    if count >= JOBS_COUNT_MAX {
        return Ok(Err(WireError::new(
            ErrorCode::Busy,
            format!("the cluster keeps {JOBS_COUNT_MAX} jobs already: purge finished ones (pando job purge)"),
        )));
    }
    let mut pending = 0;
    for dependency in &spec.depends_on {
        let Some(job) = load_job(store, *dependency)? else {
            return Ok(Err(WireError::new(ErrorCode::NotFound, format!("dependency {dependency} does not exist"))));
        };
        match job.state.name() {
            StateName::Completed => {}
            StateName::Dead | StateName::Cancelled => {
                return Ok(Err(WireError::new(
                    ErrorCode::Conflict,
                    format!("dependency {dependency} is {}: the job could never run", job.state.name().as_str()),
                )));
            }
            _ => {
                let mut dependents = 0u64;
                store.coord_scan(&with(DEPENDENTS, &dependency.to_be_bytes()), &mut |_, _| {
                    dependents += 1;
                    if dependents >= JOB_DEPENDENTS_MAX { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                })?;
                if dependents >= JOB_DEPENDENTS_MAX {
                    return Ok(Err(WireError::new(
                        ErrorCode::Busy,
                        format!("job {dependency} has {JOB_DEPENDENTS_MAX} dependents already"),
                    )));
                }
                pending += 1;
            }
        }
    }
    let id = counter(store, NEXT_ID)?.max(1);
    save(store, NEXT_ID, &(id + 1))?;
    save(store, COUNT, &(count + 1))?;
    let mut job = Job {
        id,
        spec,
        state: JobState::Waiting,
        attempt: 0,
        submitted_ms: now,
        pending_dependencies: pending,
        history: Vec::new(),
        rescues: 0,
        output: None,
        cron,
    };
    for dependency in &job.spec.depends_on {
        if load_job(store, *dependency)?.is_some_and(|job| !job.state.name().is_final()) {
            store.coord_put(&dependent_key(*dependency, id), &[])?;
        }
    }
    if let Some(key) = &job.spec.unique_key {
        save(store, &with(UNIQUE, key.as_bytes()), &id)?;
    }
    update_stats(store, &job.spec.queue, |stats| stats.submitted_total += 1)?;
    let state = if pending > 0 { JobState::Waiting } else { ready_state(&job, now) };
    emit(store, &job, JobEventKind::Submitted);
    set_state(store, &mut job, state, now)?;
    Ok(Ok(JobResponse::Submitted { id, duplicate: false, state: job.state.name() }))
}

fn claim(
    store: &mut impl CoordWrite,
    now: u64,
    node: u64,
    worker: u32,
    queues: &[String],
    most: u32,
    lease_ms: u64,
) -> Result<JobResponse, StorageFault> {
    let mut ids = Vec::new();
    for queue in queues {
        let prefix = scoped(AVAILABLE, queue.as_bytes());
        store.coord_scan(&prefix, &mut |key, _| {
            if ids.len() >= most as usize {
                return ControlFlow::Break(());
            }
            if let Some(id) = key.get(prefix.len() + 1..).and_then(|raw| raw.try_into().ok()).map(u64::from_be_bytes) {
                ids.push(id);
            }
            ControlFlow::Continue(())
        })?;
    }
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(mut job) = load_job(store, id)? else {
            return Err(StorageFault(format!("available index names job {id}, which has no row")));
        };
        let fence = counter(store, LAST_FENCE)? + 1;
        save(store, LAST_FENCE, &fence)?;
        job.attempt += 1;
        let until_ms = (now + lease_ms).min(now + job.spec.timeout_ms + JOB_TIMEOUT_GRACE_MS);
        update_stats(store, &job.spec.queue, |stats| stats.attempts_total += 1)?;
        emit(store, &job, JobEventKind::Started { attempt: job.attempt, node });
        set_state(store, &mut job, JobState::Running { node, worker, fence, started_ms: now, until_ms }, now)?;
        claimed.push(Claimed { id, attempt: job.attempt, fence, until_ms, spec: job.spec });
    }
    Ok(JobResponse::Claimed(claimed))
}

/// The current attempt of job `id` under `fence`, or the answer that it is over.
fn current(store: &impl CoordRead, id: u64, fence: u64) -> Result<Result<Job, WireError>, StorageFault> {
    let Some(job) = load_job(store, id)? else { return Ok(Err(not_found(id))) };
    match job.state {
        JobState::Running { fence: current, .. } if current == fence => Ok(Ok(job)),
        _ => Ok(Err(conflict(&job, fence))),
    }
}

fn heartbeat(
    store: &mut impl CoordWrite,
    now: u64,
    id: u64,
    fence: u64,
    lease_ms: u64,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let mut job = match current(store, id, fence)? {
        Ok(job) => job,
        Err(error) => return Ok(Err(error)),
    };
    let JobState::Running { node, worker, started_ms, until_ms, .. } = job.state else { unreachable!("current") };
    let cap = started_ms + job.spec.timeout_ms + JOB_TIMEOUT_GRACE_MS;
    let extended = (now + lease_ms).min(cap).max(until_ms);
    if extended != until_ms {
        set_state(store, &mut job, JobState::Running { node, worker, fence, started_ms, until_ms: extended }, now)?;
    }
    Ok(Ok(JobResponse::Extended { until_ms: extended }))
}

/// A completion (`Ok`) or failure (`Err((error, output, retryable))`) of the attempt under `fence`.
fn finish(
    store: &mut impl CoordWrite,
    now: u64,
    id: u64,
    fence: u64,
    outcome: Result<JobOutput, (String, JobOutput, bool)>,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let mut job = match current(store, id, fence)? {
        Ok(job) => job,
        Err(error) => return Ok(Err(error)),
    };
    match outcome {
        Ok(output) => {
            record_attempt(&mut job, now, AttemptOutcome::Completed);
            keep_output(store, now, &mut job, output)?;
            emit(store, &job, JobEventKind::Completed { attempt: job.attempt });
            set_state(store, &mut job, JobState::Completed { ended_ms: now }, now)?;
        }
        Err((error, output, retryable)) => {
            let error = cut(&error, JOB_ERROR_BYTES_MAX);
            record_attempt(&mut job, now, AttemptOutcome::Failed { error: error.clone() });
            keep_output(store, now, &mut job, output)?;
            update_stats(store, &job.spec.queue, |stats| stats.failed_attempts_total += 1)?;
            let reason = if retryable { format!("failed {} attempts: {error}", job.attempt) } else { error };
            fail_or_retry(store, now, &mut job, fence, retryable, reason)?;
        }
    }
    Ok(Ok(JobResponse::Job(Box::new(job))))
}

/// After a failed attempt: retry after the backoff while attempts are left (and the failure allows), else dead.
fn fail_or_retry(
    store: &mut impl CoordWrite,
    now: u64,
    job: &mut Job,
    fence: u64,
    retryable: bool,
    reason: String,
) -> Result<(), StorageFault> {
    if retryable && job.attempt < job.spec.max_attempts {
        let at_ms = now + job.spec.backoff.delay_ms(job.id, job.attempt, fence);
        emit(store, job, JobEventKind::Failed { attempt: job.attempt, retry_at_ms: Some(at_ms) });
        set_state(store, job, JobState::Retrying { at_ms }, now)
    } else {
        emit(store, job, JobEventKind::Failed { attempt: job.attempt, retry_at_ms: None });
        emit(store, job, JobEventKind::Dead);
        set_state(store, job, JobState::Dead { ended_ms: now, reason }, now)
    }
}

fn cancel(store: &mut impl CoordWrite, now: u64, id: u64) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let Some(mut job) = load_job(store, id)? else { return Ok(Err(not_found(id))) };
    if job.state.name().is_final() {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("job {id} is {} already", job.state.name().as_str()),
        )));
    }
    record_attempt(&mut job, now, AttemptOutcome::Cancelled);
    emit(store, &job, JobEventKind::Cancelled);
    set_state(store, &mut job, JobState::Cancelled { ended_ms: now }, now)?;
    Ok(Ok(JobResponse::Job(Box::new(job))))
}

/// A dead or cancelled job runs again with fresh attempts (its dependencies are not waited for again).
fn retry(store: &mut impl CoordWrite, now: u64, job: &mut Job) -> Result<Result<(), WireError>, StorageFault> {
    if !matches!(job.state.name(), StateName::Dead | StateName::Cancelled) {
        return Ok(Err(WireError::new(
            ErrorCode::Conflict,
            format!("job {} is {}: only dead or cancelled jobs are retried", job.id, job.state.name().as_str()),
        )));
    }
    if let Some(key) = &job.spec.unique_key {
        let unique = with(UNIQUE, key.as_bytes());
        if let Some(holder) = load::<u64>(store, &unique)?
            && holder != job.id
            && load_job(store, holder)?.is_some_and(|holder| !holder.state.name().is_final())
        {
            return Ok(Err(WireError::new(
                ErrorCode::Conflict,
                format!("job {holder} holds unique key {key:?} now; job {} cannot run beside it", job.id),
            )));
        }
        save(store, &unique, &job.id)?;
    }
    job.attempt = 0;
    job.pending_dependencies = 0;
    emit(store, job, JobEventKind::Ready);
    set_state(store, job, JobState::Available, now)?;
    Ok(Ok(()))
}

/// Ids in state `state`'s index after `after`, at most `most`, and whether more are left.
fn ids_in(store: &impl CoordRead, state: StateName, after: u64, most: usize) -> Result<(Vec<u64>, bool), StorageFault> {
    let prefix = with(STATE, &[state as u8]);
    let (mut ids, mut more) = (Vec::new(), false);
    store.coord_scan_from(&prefix, &state_key(state, after.saturating_add(1)), &mut |key, _| {
        if ids.len() >= most {
            more = true;
            return ControlFlow::Break(());
        }
        if let Some(id) = key.get(prefix.len()..).and_then(|raw| raw.try_into().ok()).map(u64::from_be_bytes) {
            ids.push(id);
        }
        ControlFlow::Continue(())
    })?;
    Ok((ids, more))
}

/// Jobs of `state` (by id), those of `queue` when given, that `keep` takes: at most `most`, reading at most
/// [`crate::limits::HOOK_SCAN_ROWS_MAX`] index rows, and whether more are left.
fn jobs_in(
    store: &impl CoordRead,
    state: StateName,
    queue: Option<&str>,
    most: u32,
    keep: impl Fn(&Job) -> bool,
) -> Result<(Vec<Job>, bool), StorageFault> {
    let (ids, mut more) = ids_in(store, state, 0, crate::limits::HOOK_SCAN_ROWS_MAX)?;
    let mut jobs = Vec::new();
    for id in ids {
        let Some(job) = load_job(store, id)? else { continue };
        if queue.is_none_or(|queue| job.spec.queue == queue) && keep(&job) {
            if jobs.len() == most as usize {
                more = true;
                break;
            }
            jobs.push(job);
        }
    }
    Ok((jobs, more))
}

fn redrive(
    store: &mut impl CoordWrite,
    now: u64,
    queue: Option<&str>,
    most: u32,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let (jobs, more) = jobs_in(store, StateName::Dead, queue, most, |_| true)?;
    let mut count = 0;
    for mut job in jobs {
        // A job whose unique key another job holds now stays dead (its retry says why).
        if retry(store, now, &mut job)?.is_ok() {
            count += 1;
        }
    }
    Ok(Ok(JobResponse::Count { count, more }))
}

fn purge(
    store: &mut impl CoordWrite,
    now: u64,
    state: StateName,
    older_than_ms: u64,
    queue: Option<&str>,
    most: u32,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let old_enough = |job: &Job| job.state.ended_ms().is_some_and(|ended| ended.saturating_add(older_than_ms) <= now);
    let (jobs, more) = jobs_in(store, state, queue, most, old_enough)?;
    for job in &jobs {
        if let Some(hash) = job.output.as_ref().and_then(|output| output.blob) {
            let _ = crate::blob::apply(store, now, &crate::blob::BlobCommand::Protect { hash, protected: false })?;
        }
        store.coord_delete(&state_key(state, job.id))?;
        store.coord_delete(&job_key(job.id))?;
        update_stats(store, &job.spec.queue, |stats| *stats.count_mut(state) = stats.count(state).saturating_sub(1))?;
    }
    let count = counter(store, COUNT)?;
    save(store, COUNT, &count.saturating_sub(jobs.len() as u64))?;
    Ok(Ok(JobResponse::Count { count: jobs.len() as u64, more }))
}

/// A scheduled or retrying job's start came: it is available.
pub(crate) fn due(store: &mut impl CoordWrite, now: u64, deadline: u64, subject: &[u8]) -> Result<(), StorageFault> {
    let Some(mut job) = load_job(store, id_of(subject)?)? else { return Ok(()) };
    match job.state {
        JobState::Scheduled { at_ms } | JobState::Retrying { at_ms } if at_ms == deadline => {
            emit(store, &job, JobEventKind::Ready);
            set_state(store, &mut job, JobState::Available, now)
        }
        _ => Ok(()),
    }
}

/// A running attempt's lease lapsed: the job is rescued (claimable at once) or, out of attempts, dead.
pub(crate) fn lapsed(store: &mut impl CoordWrite, now: u64, deadline: u64, subject: &[u8]) -> Result<(), StorageFault> {
    let Some(mut job) = load_job(store, id_of(subject)?)? else { return Ok(()) };
    let JobState::Running { until_ms, started_ms, fence, node, .. } = job.state else { return Ok(()) };
    if until_ms != deadline {
        return Ok(());
    }
    let timed_out = until_ms >= started_ms + job.spec.timeout_ms + JOB_TIMEOUT_GRACE_MS;
    let outcome = if timed_out { AttemptOutcome::TimedOut } else { AttemptOutcome::LeaseExpired };
    record_attempt(&mut job, now, outcome);
    job.rescues += 1;
    update_stats(store, &job.spec.queue, |stats| stats.lease_expiries_total += 1)?;
    emit(store, &job, JobEventKind::Rescued { attempt: job.attempt, node });
    let why = if timed_out { "ran past its timeout" } else { "lost its lease" };
    if job.attempt < job.spec.max_attempts && !timed_out {
        set_state(store, &mut job, JobState::Available, now)
    } else {
        let reason = format!("attempt {} (fence {fence}, node {node}) {why}", job.attempt);
        fail_or_retry(store, now, &mut job, fence, timed_out, reason)
    }
}

fn id_of(subject: &[u8]) -> Result<u64, StorageFault> {
    subject
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageFault(format!("a job timer names {subject:?}, which is not a job id")))
}

fn cron_create(
    store: &mut impl CoordWrite,
    now: u64,
    name: &str,
    schedule: &str,
    missed: Missed,
    spec: JobSpec,
) -> Result<Result<JobResponse, WireError>, StorageFault> {
    let parsed = match Schedule::parse(schedule) {
        Ok(parsed) => parsed,
        Err(error) => return Ok(Err(error)),
    };
    let key = with(CRON, name.as_bytes());
    let previous = load::<CronRecord>(store, &key)?;
    if previous.is_none() {
        let (crons, _) = load_under::<CronRecord>(store, CRON, JOB_CRON_COUNT_MAX)?;
        if crons.len() >= JOB_CRON_COUNT_MAX {
            return Ok(Err(WireError::new(
                ErrorCode::Busy,
                format!("the cluster has {JOB_CRON_COUNT_MAX} cron schedules already"),
            )));
        }
    }
    let Some(next_ms) = parsed.next_after(now) else {
        return Ok(Err(WireError::invalid(format!("cron schedule {schedule:?} never fires again"))));
    };
    if let Some(previous) = &previous {
        timer::disarm(store, previous.next_ms, TimerKind::Cron, name.as_bytes())?;
    }
    let record = CronRecord {
        name: name.to_string(),
        schedule: schedule.to_string(),
        missed,
        spec,
        created_ms: previous.as_ref().map_or(now, |previous| previous.created_ms),
        next_ms,
        last_ms: previous.as_ref().and_then(|previous| previous.last_ms),
        fired_total: previous.as_ref().map_or(0, |previous| previous.fired_total),
        skipped_total: previous.as_ref().map_or(0, |previous| previous.skipped_total),
    };
    save(store, &key, &record)?;
    timer::arm(store, next_ms, TimerKind::Cron, name.as_bytes())?;
    Ok(Ok(JobResponse::Cron(Box::new(record))))
}

/// A cron schedule's instant came (its timer fired at log time `now`): submits one job per instant due by the
/// missed-run policy, then waits for the first instant after `now`. Instants up to [`JOB_CRON_ON_TIME_MS`] late are
/// on time; earlier ones were missed.
pub(crate) fn cron_fire(
    store: &mut impl CoordWrite,
    now: u64,
    deadline: u64,
    subject: &[u8],
) -> Result<(), StorageFault> {
    let key = with(CRON, subject);
    let Some(mut record) = load::<CronRecord>(store, &key)? else { return Ok(()) };
    if record.next_ms != deadline {
        return Ok(());
    }
    let schedule = Schedule::parse(&record.schedule)
        .map_err(|error| StorageFault(format!("cron schedule {:?} no longer parses: {error}", record.name)))?;
    let on_time_from = now.saturating_sub(JOB_CRON_ON_TIME_MS);
    let (mut missed, mut missed_more, mut on_time) = (Vec::new(), false, Vec::new());
    let mut instant = Some(record.next_ms);
    while let Some(at) = instant.filter(|at| *at <= now) {
        if at >= on_time_from {
            on_time.push(at);
        } else if missed.len() < JOB_CRON_CATCH_UP_MAX {
            missed.push(at);
        } else {
            missed_more = true;
            // Jump to the on-time window rather than walking every missed instant.
            instant = schedule.next_after(on_time_from.saturating_sub(1));
            continue;
        }
        instant = schedule.next_after(at);
    }
    let mut fire = match record.missed {
        Missed::Skip => Vec::new(),
        Missed::Once => missed.last().copied().into_iter().collect(),
        Missed::All => missed.clone(),
    };
    record.skipped_total += (missed.len() - fire.len()) as u64 + u64::from(missed_more);
    fire.extend(on_time);
    for at in fire {
        let mut spec = record.spec.clone();
        spec.unique_key = spec.unique_key.map(|key| format!("{key}:{at}"));
        match submit(store, now, spec, Some((record.name.clone(), at)))? {
            Ok(_) => {
                record.fired_total += 1;
                record.last_ms = Some(at);
            }
            // The cluster is full of jobs: the instant is skipped, and counted.
            Err(_) => record.skipped_total += 1,
        }
    }
    match instant {
        Some(next) => {
            record.next_ms = next;
            timer::arm(store, next, TimerKind::Cron, subject)?;
        }
        // Never again (a date past the search horizon): the schedule stays, idle.
        None => record.next_ms = u64::MAX,
    }
    save(store, &key, &record)
}

/// Answers a job read from the applied state.
pub fn query(store: &impl CoordRead, query: &JobQuery) -> Result<Result<JobQueryResponse, WireError>, StorageFault> {
    if let Err(error) = query.validate() {
        return Ok(Err(error));
    }
    Ok(Ok(match query {
        JobQuery::Get { id } => match load_job(store, *id)? {
            Some(job) => JobQueryResponse::Job(Box::new(job)),
            None => return Ok(Err(not_found(*id))),
        },
        JobQuery::List { state, queue, after, limit } => {
            let (mut jobs, mut more, mut bytes) = (Vec::new(), false, 0usize);
            let mut take = |job: Job, jobs: &mut Vec<Job>| {
                if queue.as_deref().is_some_and(|queue| job.spec.queue != queue) {
                    return ControlFlow::Continue(());
                }
                if jobs.len() >= *limit as usize || bytes > SCAN_RESPONSE_BYTES_MAX / 2 {
                    more = true;
                    return ControlFlow::Break(());
                }
                let job = summary(job);
                bytes += 512 + job.history.iter().map(|attempt| 64 + error_len(&attempt.outcome)).sum::<usize>();
                jobs.push(job);
                ControlFlow::Continue(())
            };
            match state {
                Some(state) => {
                    let (ids, _) = ids_in(store, *state, *after, crate::limits::HOOK_SCAN_ROWS_MAX)?;
                    for id in ids {
                        if let Some(job) = load_job(store, id)?
                            && take(job, &mut jobs).is_break()
                        {
                            break;
                        }
                    }
                }
                None => {
                    let mut fault = None;
                    store.coord_scan_from(
                        JOB,
                        &job_key(after.saturating_add(1)),
                        &mut |key, bytes| match decode::<Job>(key, bytes) {
                            Ok(job) => take(job, &mut jobs),
                            Err(error) => {
                                fault = Some(error);
                                ControlFlow::Break(())
                            }
                        },
                    )?;
                    if let Some(fault) = fault {
                        return Err(fault);
                    }
                }
            }
            JobQueryResponse::List { jobs, more }
        }
        JobQuery::Stats => JobQueryResponse::Stats(load_under(store, QUEUE, usize::MAX)?.0),
        JobQuery::CronList => JobQueryResponse::Crons(load_under(store, CRON, JOB_CRON_COUNT_MAX)?.0),
        JobQuery::Pools => JobQueryResponse::Pools(load_under(store, POOL, JOB_POOLS_MAX)?.0),
    }))
}

fn error_len(outcome: &AttemptOutcome) -> usize {
    match outcome {
        AttemptOutcome::Failed { error } => error.len(),
        _ => 0,
    }
}

/// A job as a listing shows it: without its payload and output, with its last attempt only.
fn summary(mut job: Job) -> Job {
    job.spec.payload = Default::default();
    job.output = None;
    if job.history.len() > 1 {
        job.history.drain(..job.history.len() - 1);
    }
    job
}

/// The current fence of job `id`'s running attempt, if it runs.
pub fn running_fence(store: &impl CoordRead, id: u64) -> Result<Option<u64>, StorageFault> {
    Ok(load_job(store, id)?.and_then(|job| match job.state {
        JobState::Running { fence, .. } => Some(fence),
        _ => None,
    }))
}
