//! Property tests of the job core against a model of who holds what: random submits (with priorities, unique keys
//! and dependencies), claims by several nodes, heartbeats, completions and failures under current and stale fences,
//! cancels, retries and time passing (leases lapse, retries come due). After every step: at most one holder per job,
//! fences strictly increase, a fenced command is accepted exactly when the model says its fence is current, attempts
//! never exceed the maximum, no job runs before its dependencies completed, and every index agrees with the rows.
//! A second property: a cron schedule inserts each instant once, whatever the gaps between ticks.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{Jobs, T0, cron_instants, shell};
use super::*;

#[derive(Clone, Debug)]
enum Op {
    Submit { priority: u8, max_attempts: u32, unique: Option<u8>, depend: Option<usize> },
    Claim { node: u64, most: u32 },
    Heartbeat { pick: usize, stale: bool },
    Complete { pick: usize, stale: bool },
    Fail { pick: usize, stale: bool },
    Cancel { pick: usize },
    Retry { pick: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 1u32..4, proptest::option::weighted(0.3, 0u8..3), proptest::option::weighted(0.3, 0usize..64))
            .prop_map(|(priority, max_attempts, unique, depend)| Op::Submit { priority, max_attempts, unique, depend }),
        3 => (1u64..4, 1u32..4).prop_map(|(node, most)| Op::Claim { node, most }),
        1 => (0usize..64, any::<bool>()).prop_map(|(pick, stale)| Op::Heartbeat { pick, stale }),
        3 => (0usize..64, proptest::bool::weighted(0.2)).prop_map(|(pick, stale)| Op::Complete { pick, stale }),
        2 => (0usize..64, proptest::bool::weighted(0.2)).prop_map(|(pick, stale)| Op::Fail { pick, stale }),
        1 => (0usize..64).prop_map(|pick| Op::Cancel { pick }),
        1 => (0usize..64).prop_map(|pick| Op::Retry { pick }),
        2 => (1u64..15_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the model knows: each job's current holder (fence, lease end) and who completed.
#[derive(Default)]
struct Model {
    ids: Vec<u64>,
    held: BTreeMap<u64, (u64, u64)>,
    completed: BTreeSet<u64>,
    depends: BTreeMap<u64, Vec<u64>>,
    max_attempts: BTreeMap<u64, u32>,
    last_fence: u64,
}

impl Model {
    /// Leases that ended by `now` are over (the state machine fires them before the proposal's commands).
    fn lapse(&mut self, now: u64) {
        self.held.retain(|_, (_, until)| *until > now);
    }

    fn pick(&self, pick: usize) -> Option<u64> {
        (!self.ids.is_empty()).then(|| self.ids[pick % self.ids.len()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn holders_fences_attempts_and_dependencies_hold_against_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut jobs = Jobs::default();
        let mut model = Model::default();
        let mut now = T0;
        for op in ops {
            now += 1;
            model.lapse(now);
            match op {
                Op::Submit { priority, max_attempts, unique, depend } => {
                    let depends_on: Vec<u64> = depend.and_then(|pick| model.pick(pick)).into_iter().collect();
                    let spec = JobSpec {
                        priority,
                        max_attempts,
                        unique_key: unique.map(|key| format!("u{key}")),
                        depends_on: depends_on.clone(),
                        timeout_ms: 60_000,
                        backoff: Backoff { base_ms: 1_000, max_ms: 4_000 },
                        ..shell()
                    };
                    if let Ok(JobResponse::Submitted { id, duplicate: false, .. }) = jobs.run(now, JobCommand::Submit { spec }) {
                        model.ids.push(id);
                        model.depends.insert(id, depends_on);
                        model.max_attempts.insert(id, max_attempts);
                    }
                }
                Op::Claim { node, most } => {
                    let command = JobCommand::Claim { node, worker: 0, queues: vec!["default".into()], most, lease_ms: 5_000 };
                    let Ok(JobResponse::Claimed(claimed)) = jobs.run(now, command) else { panic!("a claim is answered") };
                    for claim in claimed {
                        prop_assert!(!model.held.contains_key(&claim.id), "job {} handed to a second holder", claim.id);
                        prop_assert!(claim.fence > model.last_fence, "fences strictly increase");
                        model.last_fence = claim.fence;
                        prop_assert!(claim.attempt <= model.max_attempts[&claim.id], "attempts past the maximum");
                        for dependency in &model.depends[&claim.id] {
                            prop_assert!(model.completed.contains(dependency), "job {} ran before {dependency}", claim.id);
                        }
                        model.held.insert(claim.id, (claim.fence, claim.until_ms));
                    }
                }
                Op::Heartbeat { pick, stale } | Op::Complete { pick, stale } | Op::Fail { pick, stale }
                    if model.pick(pick).is_some() =>
                {
                    let id = model.pick(pick).unwrap();
                    let current = model.held.get(&id).map(|(fence, _)| *fence);
                    let fence = match (current, stale) {
                        (Some(fence), false) => fence,
                        (Some(fence), true) => fence.saturating_sub(1),
                        (None, _) => model.last_fence,
                    };
                    let accepted_by_model = current == Some(fence);
                    let result = match op {
                        Op::Heartbeat { .. } => jobs.run(now, JobCommand::Heartbeat { id, fence, lease_ms: 5_000 }),
                        Op::Complete { .. } => jobs.complete(now, id, fence),
                        _ => jobs.fail(now, id, fence),
                    };
                    prop_assert_eq!(result.is_ok(), accepted_by_model, "{:?} of job {} under fence {}: {:?}", op, id, fence, result);
                    if result.is_ok() {
                        match op {
                            Op::Heartbeat { .. } => {
                                let Ok(JobResponse::Extended { until_ms }) = result else { panic!() };
                                model.held.insert(id, (fence, until_ms));
                            }
                            Op::Complete { .. } => {
                                model.held.remove(&id);
                                model.completed.insert(id);
                            }
                            _ => {
                                model.held.remove(&id);
                            }
                        }
                    }
                }
                Op::Cancel { pick } => {
                    if let Some(id) = model.pick(pick)
                        && jobs.run(now, JobCommand::Cancel { id }).is_ok()
                    {
                        model.held.remove(&id);
                    }
                }
                Op::Retry { pick } => {
                    if let Some(id) = model.pick(pick) {
                        let _ = jobs.run(now, JobCommand::Retry { id });
                        // A retried job runs without waiting for its dependencies again.
                        model.depends.insert(id, Vec::new());
                    }
                }
                Op::Advance { ms } => {
                    now += ms;
                    model.lapse(now);
                    jobs.tick(now);
                }
                _ => {}
            }
            // What runs is what the model says is held.
            for &id in &model.ids {
                let job = jobs.job(id);
                let running = matches!(job.state, JobState::Running { .. });
                prop_assert_eq!(running, model.held.contains_key(&id), "job {}: {:?}", id, job.state);
                prop_assert!(job.attempt <= job.spec.max_attempts);
            }
            jobs.check_indexes();
        }
    }

    /// Whatever the gaps between ticks (under the on-time window), a schedule inserts each instant exactly once.
    #[test]
    fn cron_inserts_each_instant_once(gaps in proptest::collection::vec(1u64..9_000, 1..40)) {
        let mut jobs = Jobs::default();
        let spec = shell();
        let command = JobCommand::CronCreate { name: "c".into(), schedule: "*/2 * * * * *".into(), missed: Missed::Skip, spec };
        jobs.run(T0, command).unwrap();
        let mut now = T0;
        for gap in gaps {
            now += gap;
            jobs.tick(now);
        }
        let expected: Vec<u64> = (1..).map(|step| T0 + step * 2_000).take_while(|at| *at <= now).collect();
        prop_assert_eq!(cron_instants(&jobs), expected);
    }
}
