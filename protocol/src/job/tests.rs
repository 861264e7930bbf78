//! The job state machine over the in-memory tables: claims by priority under fresh fences, stale fences refused,
//! rescue of a lapsed lease, retries and dead letters, unique keys that cover running jobs, dependencies, cancel,
//! retry, redrive, purge, cron firings and missed-run policies, and a check that every index agrees with the rows.

use std::collections::BTreeMap;

use super::apply::query;
use super::*;
use crate::command::{Command, CommandOutput, Proposal};
use crate::coord::{CoordEvent, JobEventKind};
use crate::error::ErrorCode;
use crate::memory_tables::MemoryTables;
use crate::state_machine::apply_proposal;

/// 2026-12-04T00:00:00Z.
pub(super) const T0: u64 = 1_796_342_400_000;

#[derive(Default)]
pub(super) struct Jobs {
    pub tables: MemoryTables,
    revision: u64,
    pub events: Vec<CoordEvent>,
}

impl Jobs {
    pub fn run(&mut self, now: u64, command: JobCommand) -> Result<JobResponse, WireError> {
        let proposal = Proposal { stamp_ms: now, commands: vec![Command::Job(command)] };
        let mut outcome = apply_proposal(&mut self.tables, &mut self.revision, &proposal).expect("no faults");
        self.events.extend(outcome.events);
        outcome.results.remove(0).map(|output| match output {
            CommandOutput::Job(response) => response,
            other => panic!("unexpected {other:?}"),
        })
    }

    /// An empty proposal at `now`: fires what is due.
    pub fn tick(&mut self, now: u64) {
        let proposal = Proposal { stamp_ms: now, commands: Vec::new() };
        let outcome = apply_proposal(&mut self.tables, &mut self.revision, &proposal).expect("no faults");
        self.events.extend(outcome.events);
    }

    pub fn submit(&mut self, now: u64, spec: JobSpec) -> u64 {
        match self.run(now, JobCommand::Submit { spec }) {
            Ok(JobResponse::Submitted { id, duplicate: false, .. }) => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn claim(&mut self, now: u64, node: u64, most: u32) -> Vec<Claimed> {
        let command = JobCommand::Claim { node, worker: 0, queues: vec!["default".into()], most, lease_ms: 10_000 };
        match self.run(now, command) {
            Ok(JobResponse::Claimed(claimed)) => claimed,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn complete(&mut self, now: u64, id: u64, fence: u64) -> Result<JobResponse, WireError> {
        self.run(now, JobCommand::Complete { id, fence, output: JobOutput::default() })
    }

    pub fn fail(&mut self, now: u64, id: u64, fence: u64) -> Result<JobResponse, WireError> {
        let output = JobOutput::default();
        self.run(now, JobCommand::Fail { id, fence, error: "boom".into(), output, retryable: true })
    }

    pub fn job(&self, id: u64) -> Job {
        match query(&self.tables, &JobQuery::Get { id }).unwrap() {
            Ok(JobQueryResponse::Job(job)) => *job,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn list(&self, state: StateName) -> Vec<u64> {
        let list = JobQuery::List { state: Some(state), queue: None, after: 0, limit: 1_000 };
        match query(&self.tables, &list).unwrap() {
            Ok(JobQueryResponse::List { jobs, .. }) => jobs.iter().map(|job| job.id).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn stats(&self) -> Vec<QueueStats> {
        match query(&self.tables, &JobQuery::Stats).unwrap() {
            Ok(JobQueryResponse::Stats(stats)) => stats,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every index agrees with the job rows: one state row per job, in its state; an available row exactly for
    /// available jobs; each queue's counts are its jobs' states.
    pub fn check_indexes(&self) {
        let all =
            match query(&self.tables, &JobQuery::List { state: None, queue: None, after: 0, limit: 1_000 }).unwrap() {
                Ok(JobQueryResponse::List { jobs, more: false }) => jobs,
                other => panic!("unexpected {other:?}"),
            };
        let mut counts: BTreeMap<(String, StateName), u64> = BTreeMap::new();
        for job in &all {
            *counts.entry((job.spec.queue.clone(), job.state.name())).or_default() += 1;
        }
        for state in StateName::ALL {
            let listed = self.list(state);
            let expected: Vec<u64> = all.iter().filter(|job| job.state.name() == state).map(|job| job.id).collect();
            assert_eq!(listed, expected, "the {} index", state.as_str());
        }
        for stats in self.stats() {
            for state in StateName::ALL {
                let expected = counts.get(&(stats.queue.clone(), state)).copied().unwrap_or(0);
                assert_eq!(stats.count(state), expected, "{} {} count", stats.queue, state.as_str());
            }
        }
        let available: Vec<u64> = self.claimable("default");
        let mut expected: Vec<&Job> =
            all.iter().filter(|job| job.state == JobState::Available && job.spec.queue == "default").collect();
        expected.sort_by_key(|job| (job.spec.priority, job.id));
        assert_eq!(available, expected.iter().map(|job| job.id).collect::<Vec<_>>(), "the available index");
    }

    /// The available jobs of `queue` in claim order (read off the index without claiming).
    fn claimable(&self, queue: &str) -> Vec<u64> {
        let prefix = crate::coord::keys::scoped(b"Ja/", queue.as_bytes());
        let mut ids = Vec::new();
        crate::coord::CoordRead::coord_scan(&self.tables, &prefix, &mut |key, _| {
            ids.push(u64::from_be_bytes(key[prefix.len() + 1..].try_into().unwrap()));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        ids
    }

    pub fn job_events(&self) -> Vec<(u64, &'static str)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                CoordEvent::Job { id, kind, .. } => Some((*id, kind.as_str())),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn shell() -> JobSpec {
    JobSpec::new(JobKind::Shell { argv: vec!["true".into()], env: Vec::new(), cwd: None })
}

fn code(result: Result<JobResponse, WireError>) -> ErrorCode {
    result.expect_err("refused").code
}

#[test]
fn claims_take_jobs_by_priority_then_submit_order_each_under_a_fresh_fence() {
    let mut jobs = Jobs::default();
    let low = jobs.submit(T0, JobSpec { priority: 5, ..shell() });
    let first = jobs.submit(T0, shell());
    let second = jobs.submit(T0, shell());
    let claimed = jobs.claim(T0 + 1, 1, 2);
    assert_eq!(claimed.iter().map(|claim| claim.id).collect::<Vec<_>>(), [first, second]);
    assert!(claimed[0].fence < claimed[1].fence);
    assert_eq!((claimed[0].attempt, claimed[0].until_ms), (1, T0 + 1 + 10_000));
    let rest = jobs.claim(T0 + 2, 2, 5);
    assert_eq!(rest.iter().map(|claim| claim.id).collect::<Vec<_>>(), [low]);
    assert!(jobs.claim(T0 + 3, 2, 5).is_empty(), "nothing left to claim");
    assert!(matches!(jobs.job(first).state, JobState::Running { node: 1, .. }));
    jobs.check_indexes();
}

#[test]
fn a_stale_fence_is_refused_for_heartbeat_completion_and_failure_and_changes_nothing() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, shell());
    let claim = jobs.claim(T0, 1, 1).remove(0);
    let stale = claim.fence + 1;
    let before = jobs.job(id);
    assert_eq!(code(jobs.complete(T0 + 1, id, stale)), ErrorCode::Conflict);
    assert_eq!(code(jobs.fail(T0 + 1, id, stale)), ErrorCode::Conflict);
    assert_eq!(
        code(jobs.run(T0 + 1, JobCommand::Heartbeat { id, fence: stale, lease_ms: 5_000 })),
        ErrorCode::Conflict
    );
    assert_eq!(jobs.job(id), before);
    assert_eq!(code(jobs.complete(T0 + 1, 99, claim.fence)), ErrorCode::NotFound);
    jobs.complete(T0 + 2, id, claim.fence).unwrap();
    let error = jobs.complete(T0 + 3, id, claim.fence).unwrap_err();
    assert!(error.message.contains("completed"), "a second completion is refused: {}", error.message);
    assert_eq!(jobs.job(id).history.len(), 1);
    jobs.check_indexes();
}

#[test]
fn a_lapsed_lease_makes_the_job_claimable_at_once_and_its_old_worker_is_refused() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, shell());
    let old = jobs.claim(T0, 1, 1).remove(0);
    // A heartbeat extends the lease.
    let extended = jobs.run(T0 + 5_000, JobCommand::Heartbeat { id, fence: old.fence, lease_ms: 10_000 }).unwrap();
    assert_eq!(extended, JobResponse::Extended { until_ms: T0 + 15_000 });
    jobs.tick(T0 + 14_999);
    assert!(matches!(jobs.job(id).state, JobState::Running { .. }), "not before the lease ends");
    jobs.tick(T0 + 15_000);
    assert_eq!(jobs.job(id).state, JobState::Available, "rescued at the lease's end");
    let new = jobs.claim(T0 + 15_001, 2, 1).remove(0);
    assert_eq!((new.id, new.attempt), (id, 2));
    assert!(new.fence > old.fence);
    // The stalled worker comes back: its result is refused, the rescuer's counts.
    assert_eq!(code(jobs.complete(T0 + 16_000, id, old.fence)), ErrorCode::Conflict);
    jobs.complete(T0 + 16_001, id, new.fence).unwrap();
    let job = jobs.job(id);
    assert_eq!(job.rescues, 1);
    let outcomes: Vec<_> = job.history.iter().map(|attempt| (attempt.node, attempt.outcome.clone())).collect();
    assert_eq!(outcomes, [(1, AttemptOutcome::LeaseExpired), (2, AttemptOutcome::Completed)]);
    assert_eq!(jobs.stats()[0].lease_expiries_total, 1);
    assert!(jobs.job_events().contains(&(id, "rescued")));
    jobs.check_indexes();
}

#[test]
fn failures_retry_after_a_capped_jittered_backoff_then_the_job_is_dead() {
    let mut jobs = Jobs::default();
    let spec = JobSpec { max_attempts: 3, backoff: Backoff { base_ms: 1_000, max_ms: 1_500 }, ..shell() };
    let id = jobs.submit(T0, spec);
    let mut now = T0;
    for attempt in 1..=3u32 {
        let claim = jobs.claim(now, 1, 1).remove(0);
        assert_eq!(claim.attempt, attempt);
        jobs.fail(now, id, claim.fence).unwrap();
        match jobs.job(id).state {
            JobState::Retrying { at_ms } => {
                let delay = at_ms - now;
                let full = (1_000u64 << (attempt - 1)).min(1_500);
                assert!((full / 2..=full).contains(&delay), "attempt {attempt}: {delay} ms");
                assert!(jobs.claim(at_ms - 1, 1, 1).is_empty(), "not before the backoff");
                jobs.tick(at_ms);
                now = at_ms;
            }
            JobState::Dead { ref reason, .. } => {
                assert_eq!(attempt, 3);
                assert!(reason.contains("failed 3 attempts: boom"), "{reason}");
            }
            ref other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(jobs.list(StateName::Dead), [id], "in the dead-letter list");
    assert_eq!(jobs.stats()[0].failed_attempts_total, 3);
    // A failure that is not retryable is dead at once.
    let other = jobs.submit(now, shell());
    let claim = jobs.claim(now, 1, 1).remove(0);
    let output = JobOutput::default();
    let fail = JobCommand::Fail { id: other, fence: claim.fence, error: "bad input".into(), output, retryable: false };
    jobs.run(now, fail).unwrap();
    assert!(matches!(jobs.job(other).state, JobState::Dead { .. }));
    jobs.check_indexes();
}

#[test]
fn the_backoff_is_the_same_on_every_replica_and_spreads_a_crowd() {
    let backoff = Backoff { base_ms: 1_000, max_ms: 60_000 };
    assert_eq!(backoff.delay_ms(7, 3, 12), backoff.delay_ms(7, 3, 12));
    let delays: std::collections::BTreeSet<u64> = (1..100).map(|id| backoff.delay_ms(id, 3, id)).collect();
    assert!(delays.len() > 90, "jitter spreads retries: {} distinct of 99", delays.len());
    assert!(delays.iter().all(|delay| (2_000..=4_000).contains(delay)));
    assert!(Backoff { base_ms: 1_000, max_ms: 5_000 }.delay_ms(1, 60, 1) <= 5_000, "capped");
}

#[test]
fn a_unique_key_answers_its_holder_while_it_runs_and_is_free_once_it_finished() {
    let mut jobs = Jobs::default();
    let unique = JobSpec { unique_key: Some("build-abc".into()), ..shell() };
    let id = jobs.submit(T0, unique.clone());
    let claim = jobs.claim(T0, 1, 1).remove(0);
    let again = jobs.run(T0 + 1, JobCommand::Submit { spec: unique.clone() }).unwrap();
    assert_eq!(again, JobResponse::Submitted { id, duplicate: true, state: StateName::Running });
    jobs.complete(T0 + 2, id, claim.fence).unwrap();
    let next = jobs.submit(T0 + 3, unique);
    assert_ne!(next, id, "a finished job does not hold its key");
    jobs.check_indexes();
}

#[test]
fn dependents_wait_for_completion_and_die_in_cascade_with_a_dead_dependency() {
    let mut jobs = Jobs::default();
    let a = jobs.submit(T0, shell());
    let b = jobs.submit(T0, JobSpec { depends_on: vec![a], ..shell() });
    let c = jobs.submit(T0, JobSpec { depends_on: vec![b], ..shell() });
    assert_eq!(jobs.job(b).state, JobState::Waiting);
    let claimed: Vec<u64> = jobs.claim(T0, 1, 10).iter().map(|claim| claim.id).collect();
    assert_eq!(claimed, [a], "only the job without dependencies runs");
    let fence = jobs.job(a).history.len() as u64; // no history yet
    assert_eq!(fence, 0);
    let JobState::Running { fence, .. } = jobs.job(a).state else { panic!() };
    jobs.complete(T0 + 1, a, fence).unwrap();
    assert_eq!(jobs.job(b).state, JobState::Available, "b's dependency completed");
    assert_eq!(jobs.job(c).state, JobState::Waiting, "c still waits for b");
    jobs.run(T0 + 2, JobCommand::Cancel { id: b }).unwrap();
    match jobs.job(c).state {
        JobState::Dead { reason, .. } => assert!(reason.contains(&format!("dependency {b} is cancelled")), "{reason}"),
        other => panic!("c dies with its dependency: {other:?}"),
    }
    // Submits naming a job that does not exist, or that can never complete, are refused.
    let unknown = jobs.run(T0, JobCommand::Submit { spec: JobSpec { depends_on: vec![77], ..shell() } });
    assert_eq!(code(unknown), ErrorCode::NotFound);
    let dead = jobs.run(T0, JobCommand::Submit { spec: JobSpec { depends_on: vec![c], ..shell() } });
    assert_eq!(code(dead), ErrorCode::Conflict);
    jobs.check_indexes();
}

#[test]
fn a_cancelled_running_job_refuses_its_result_and_retry_and_redrive_give_fresh_attempts() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, JobSpec { max_attempts: 1, ..shell() });
    let claim = jobs.claim(T0, 1, 1).remove(0);
    jobs.run(T0 + 1, JobCommand::Cancel { id }).unwrap();
    assert_eq!(code(jobs.complete(T0 + 2, id, claim.fence)), ErrorCode::Conflict);
    assert_eq!(code(jobs.run(T0 + 2, JobCommand::Cancel { id })), ErrorCode::Conflict, "cancelled already");
    jobs.run(T0 + 3, JobCommand::Retry { id }).unwrap();
    let again = jobs.claim(T0 + 3, 1, 1).remove(0);
    assert_eq!(again.attempt, 1, "fresh attempts");
    jobs.fail(T0 + 4, id, again.fence).unwrap();
    assert!(matches!(jobs.job(id).state, JobState::Dead { .. }));
    assert_eq!(code(jobs.run(T0 + 5, JobCommand::Retry { id: 99 })), ErrorCode::NotFound);
    let other = jobs.submit(T0 + 5, shell());
    assert_eq!(code(jobs.run(T0 + 5, JobCommand::Retry { id: other })), ErrorCode::Conflict, "not dead");
    let redriven = jobs.run(T0 + 6, JobCommand::Redrive { queue: None, most: 10 }).unwrap();
    assert_eq!(redriven, JobResponse::Count { count: 1, more: false });
    assert_eq!(jobs.job(id).state, JobState::Available);
    jobs.check_indexes();
}

#[test]
fn purge_deletes_only_finished_jobs_older_than_asked() {
    let mut jobs = Jobs::default();
    let old = jobs.submit(T0, shell());
    let young = jobs.submit(T0, shell());
    let running = jobs.submit(T0, shell());
    for (id, at) in [(old, T0), (young, T0 + 50_000)] {
        jobs.run(at, JobCommand::Cancel { id }).unwrap();
    }
    let purge = |older_than_ms| JobCommand::Purge { state: StateName::Cancelled, older_than_ms, queue: None, most: 10 };
    assert_eq!(jobs.run(T0 + 60_000, purge(30_000)).unwrap(), JobResponse::Count { count: 1, more: false });
    assert_eq!(jobs.list(StateName::Cancelled), [young]);
    assert_eq!(jobs.job(running).state, JobState::Available);
    let refused = jobs.run(T0, JobCommand::Purge { state: StateName::Running, older_than_ms: 0, queue: None, most: 1 });
    assert_eq!(code(refused), ErrorCode::InvalidArgument);
    jobs.check_indexes();
}

#[test]
fn a_scheduled_job_is_not_claimable_before_its_start() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, JobSpec { delay_ms: 60_000, ..shell() });
    assert_eq!(jobs.job(id).state, JobState::Scheduled { at_ms: T0 + 60_000 });
    assert!(jobs.claim(T0 + 59_999, 1, 1).is_empty());
    jobs.tick(T0 + 60_000);
    assert_eq!(jobs.claim(T0 + 60_000, 1, 1)[0].id, id);
    jobs.check_indexes();
}

#[test]
fn an_attempt_past_its_timeout_can_no_longer_extend_its_lease_and_is_retried() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, JobSpec { timeout_ms: 1_000, ..shell() });
    let claim = jobs.claim(T0, 1, 1).remove(0);
    let cap = T0 + 1_000 + crate::limits::JOB_TIMEOUT_GRACE_MS;
    assert_eq!(claim.until_ms, T0 + 10_000);
    let mut until = claim.until_ms;
    for beat in 1..=3 {
        let extended = jobs.run(T0 + beat * 9_000, JobCommand::Heartbeat { id, fence: claim.fence, lease_ms: 10_000 });
        let JobResponse::Extended { until_ms } = extended.unwrap() else { panic!() };
        until = until_ms;
    }
    assert_eq!(until, cap, "never past the timeout and its grace");
    jobs.tick(cap);
    let job = jobs.job(id);
    assert_eq!(job.history[0].outcome, AttemptOutcome::TimedOut);
    assert!(matches!(job.state, JobState::Retrying { .. }), "{:?}", job.state);
    jobs.check_indexes();
}

#[test]
fn bad_specs_are_refused_with_what_is_wrong() {
    let mut jobs = Jobs::default();
    let cases: Vec<(JobSpec, &str)> = vec![
        (JobSpec::new(JobKind::Shell { argv: vec![], env: vec![], cwd: None }), "needs a command"),
        (JobSpec { queue: "has space".into(), ..shell() }, "queue"),
        (JobSpec { priority: 10, ..shell() }, "priority"),
        (JobSpec { max_attempts: 0, ..shell() }, "max attempts"),
        (JobSpec { backoff: Backoff { base_ms: 10, max_ms: 20 }, ..shell() }, "backoff"),
        (JobSpec { backoff: Backoff { base_ms: 2_000, max_ms: 1_000 }, ..shell() }, "backoff"),
        (JobSpec { timeout_ms: 0, ..shell() }, "timeout"),
        (JobSpec { depends_on: vec![1, 1], ..shell() }, "twice"),
        (JobSpec { payload: vec![0; crate::limits::JOB_PAYLOAD_BYTES_MAX + 1].into(), ..shell() }, "payload"),
        (
            JobSpec::new(JobKind::Shell { argv: vec!["x".into()], env: vec![("A=B".into(), "1".into())], cwd: None }),
            "environment",
        ),
        (JobSpec::new(JobKind::Plugin { plugin: "p".into(), function: "on_hook".into() }), "called by the node"),
    ];
    for (spec, says) in cases {
        let error = jobs.run(T0, JobCommand::Submit { spec }).unwrap_err();
        assert!(error.message.contains(says), "{says}: {}", error.message);
    }
    assert!(jobs.stats().is_empty(), "nothing was recorded");
}

#[test]
fn events_follow_a_job_through_its_life() {
    let mut jobs = Jobs::default();
    let id = jobs.submit(T0, shell());
    let claim = jobs.claim(T0, 1, 1).remove(0);
    jobs.complete(T0 + 1, id, claim.fence).unwrap();
    assert_eq!(jobs.job_events(), [(id, "submitted"), (id, "started"), (id, "completed")]);
    let subjects: Vec<String> = jobs.events.iter().map(crate::hook::coord_subject).collect();
    assert_eq!(subjects, ["job.submitted.default", "job.started.default", "job.completed.default"]);
    assert!(matches!(jobs.events[1], CoordEvent::Job { kind: JobEventKind::Started { attempt: 1, node: 1 }, .. }));
}

fn cron(jobs: &mut Jobs, now: u64, schedule: &str, missed: Missed) -> CronRecord {
    let command = JobCommand::CronCreate { name: "tick".into(), schedule: schedule.into(), missed, spec: shell() };
    match jobs.run(now, command) {
        Ok(JobResponse::Cron(record)) => *record,
        other => panic!("unexpected {other:?}"),
    }
}

/// The instants of the cron jobs submitted so far, in submit order.
pub(super) fn cron_instants(jobs: &Jobs) -> Vec<u64> {
    let list = JobQuery::List { state: None, queue: None, after: 0, limit: 1_000 };
    match query(&jobs.tables, &list).unwrap() {
        Ok(JobQueryResponse::List { jobs, .. }) => {
            jobs.iter().filter_map(|job| job.cron.as_ref()).map(|c| c.1).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_cron_schedule_submits_one_job_per_instant_and_follows_its_missed_run_policy() {
    // Every second, ticked on time: one job per instant.
    let mut jobs = Jobs::default();
    let record = cron(&mut jobs, T0, "* * * * * *", Missed::Skip);
    assert_eq!(record.next_ms, T0 + 1_000);
    for second in 1..=5 {
        jobs.tick(T0 + second * 1_000 + 300);
    }
    assert_eq!(cron_instants(&jobs), (1..=5).map(|second| T0 + second * 1_000).collect::<Vec<_>>());
    // A tick a few seconds late (a failover) is still on time for every instant it covers.
    jobs.tick(T0 + 9_500);
    assert_eq!(cron_instants(&jobs).len(), 9);

    // Down for a minute: skip inserts nothing for what was missed, once one job, all every instant.
    for (missed, expected) in [(Missed::Skip, 11), (Missed::Once, 12), (Missed::All, 60)] {
        let mut jobs = Jobs::default();
        cron(&mut jobs, T0, "* * * * * *", missed);
        jobs.tick(T0 + 60_000);
        assert_eq!(cron_instants(&jobs).len(), expected, "{missed:?}");
        let instants = cron_instants(&jobs);
        let mut unique = instants.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), instants.len(), "never an instant twice");
    }
    let error = jobs
        .run(
            T0,
            JobCommand::CronCreate {
                name: "x".into(),
                schedule: "61 * * * *".into(),
                missed: Missed::Skip,
                spec: shell(),
            },
        )
        .unwrap_err();
    assert!(error.message.contains("minute"), "{}", error.message);
    assert_eq!(jobs.run(T0, JobCommand::CronDelete { name: "nope".into() }).unwrap_err().code, ErrorCode::NotFound);
    jobs.run(T0 + 10_000, JobCommand::CronDelete { name: "tick".into() }).unwrap();
    jobs.tick(T0 + 20_000);
    assert_eq!(cron_instants(&jobs).len(), 10, "the instant of the delete's own time fired first, then no more");
}

#[test]
fn an_output_blob_is_protected_while_its_job_keeps_it_and_released_when_replaced_or_purged() {
    use crate::blob::{BlobCommand, BlobHash, BlobRef};
    let mut jobs = Jobs::default();
    let add = |jobs: &mut Jobs, byte: u8| {
        let hash = BlobHash([byte; 32]);
        let added = BlobCommand::Added {
            blob: BlobRef { hash, size: 100_000 },
            holder: 1,
            replicas: 1,
            pin: false,
            gc_grace_ms: 60_000,
        };
        let proposal = Proposal { stamp_ms: T0, commands: vec![Command::Blob(added)] };
        apply_proposal(&mut jobs.tables, &mut 0, &proposal).unwrap().results.remove(0).unwrap();
        hash
    };
    let protected =
        |jobs: &Jobs, hash| crate::blob::load(&jobs.tables, &hash).unwrap().is_some_and(|record| record.protected);
    let (first, second) = (add(&mut jobs, 1), add(&mut jobs, 2));
    let id = jobs.submit(T0, shell());
    let claim = jobs.claim(T0, 1, 1).remove(0);
    let output = |blob| JobOutput { blob: Some(blob), bytes: 100_000, ..JobOutput::default() };
    let fail = JobCommand::Fail { id, fence: claim.fence, error: "e".into(), output: output(first), retryable: true };
    jobs.run(T0 + 1, fail).unwrap();
    assert!(protected(&jobs, first), "the failed attempt's output is kept");
    let JobState::Retrying { at_ms } = jobs.job(id).state else { panic!() };
    jobs.tick(at_ms);
    let again = jobs.claim(at_ms, 1, 1).remove(0);
    jobs.run(at_ms, JobCommand::Complete { id, fence: again.fence, output: output(second) }).unwrap();
    assert!(!protected(&jobs, first), "a replaced output is released");
    assert!(protected(&jobs, second));
    let purge = JobCommand::Purge { state: StateName::Completed, older_than_ms: 0, queue: None, most: 10 };
    jobs.run(at_ms + 1, purge).unwrap();
    assert!(!protected(&jobs, second), "a purged job's output is released");
}

#[test]
fn a_nodes_pool_report_replaces_its_last_one_and_the_reports_are_bounded() {
    let mut jobs = Jobs::default();
    let pool = |node, workers| JobCommand::Pool { node, workers, queues: vec!["default".into()], lease_ms: 10_000 };
    let pools = |jobs: &Jobs| match query(&jobs.tables, &JobQuery::Pools).unwrap() {
        Ok(JobQueryResponse::Pools(pools)) => pools,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(jobs.run(T0, pool(7, 4)), Ok(JobResponse::Done));
    assert_eq!(jobs.run(T0 + 5, pool(3, 2)), Ok(JobResponse::Done));
    assert_eq!(jobs.run(T0 + 9, pool(7, 0)), Ok(JobResponse::Done), "a restart with no workers replaces the report");
    let listed = pools(&jobs);
    assert_eq!(
        listed.iter().map(|pool| (pool.node, pool.workers, pool.reported_ms)).collect::<Vec<_>>(),
        [(3, 2, T0 + 5), (7, 0, T0 + 9)]
    );

    let too_many = JobCommand::Pool { node: 1, workers: JOB_WORKERS_MAX + 1, queues: vec![], lease_ms: 10_000 };
    assert_eq!(jobs.run(T0, too_many).unwrap_err().code, ErrorCode::InvalidArgument);
    let no_queue = JobCommand::Pool { node: 1, workers: 1, queues: vec![], lease_ms: 10_000 };
    assert_eq!(jobs.run(T0, no_queue).unwrap_err().code, ErrorCode::InvalidArgument);
    let from_client = JobRequest::Command(pool(1, 1));
    assert_eq!(from_client.validate().unwrap_err().code, ErrorCode::InvalidArgument, "only nodes report pools");

    for node in 100..(100 + crate::limits::JOB_POOLS_MAX as u64 - 2) {
        jobs.run(T0, pool(node, 1)).unwrap();
    }
    assert_eq!(pools(&jobs).len(), crate::limits::JOB_POOLS_MAX);
    assert_eq!(jobs.run(T0, pool(99, 1)).unwrap_err().code, ErrorCode::TooLarge, "a new node past the bound");
    assert_eq!(jobs.run(T0 + 20, pool(7, 8)), Ok(JobResponse::Done), "a known node still reports");
}
