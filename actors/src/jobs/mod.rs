//! Job workers: a pool of [`JobWorkerActor`]s on every node (a `supervision::Pool`, child `jobs` of the root), each
//! running one job at a time from the node's queues, heartbeating its lease while it runs, and reporting its result
//! under its fence. Claims, heartbeats and results go through the services layer ([`JobLog`], implemented by the
//! job service), which proposes them on the leader or forwards them to it; this subsystem imports no service.
//!
//! - **Woken, not polling.** A worker claims when it starts, when the commit stream shows a job of its queues became
//!   claimable (`job.submitted`, `job.ready`, `job.rescued`), when its own job ended, and after a failed claim. A
//!   backstop claim every [`IDLE_CLAIM_MS`] covers a wake-up lost to a storage restart.
//! - **Fenced.** Heartbeats, completions and failures carry the claim's fence; the state machine refuses them once
//!   the attempt is over (the job was cancelled, or its lease lapsed and it was rescued), and a refused heartbeat, a
//!   cancellation seen on the commit stream, or a lease this node could not renew in time stops the run at once
//!   (`SIGTERM` to its process group, `SIGKILL` after [`STOP_GRACE_MS`]), so a job rarely runs twice at once and
//!   never records two results.
//! - **Supervised.** A worker that panics is replaced by the pool; its run is dropped with it (its process group is
//!   killed), and its job is claimed again once the lease lapses. A node that dies takes its commands with it (the
//!   [reaper](crate::process)), and its jobs are claimable again within their lease plus one tick.

mod worker;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use pando_protocol::error::WireError;
use pando_protocol::job::{Claimed, JobCommand, JobKind, JobOutput, JobResponse};
use pando_protocol::limits::{JOB_OUTPUT_BYTES_MAX, JOB_OUTPUT_TAIL_BYTES_MAX};

use crate::plugins::PluginsHandle;
use crate::process::{self, Ended, Reaper, Spawn};
use crate::storage_actor::StorageHandle;
use crate::supervision::{
    ChildSpec, Intensity, Pool, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorOptions,
};
pub use worker::{Dispatch, JobDispatcherActor, JobWorkerActor, JobWorkerArgs, JobWorkerMsg};

/// A claim every this long when nothing woke a worker (a backstop, not the way work arrives).
pub const IDLE_CLAIM_MS: u64 = 30_000;
/// How long a stopped job's process group has between `SIGTERM` and `SIGKILL`.
pub const STOP_GRACE_MS: u64 = 5_000;
/// The exit status with which a shell job says it can never succeed: dead at once, no retry (sysexits' `EX_DATAERR`,
/// as shell hooks use it).
pub const EXIT_DISCARD: i32 = 65;
/// The most workers a node may run (`--job-workers`).
pub const JOB_WORKERS_MAX: usize = pando_protocol::limits::JOB_WORKERS_MAX as usize;
/// Worker restarts the pool takes within [`POOL_RESTART_PERIOD`] before it fails (and the root restarts it).
const POOL_RESTARTS_MAX: u32 = 10;
const POOL_RESTART_PERIOD: Duration = Duration::from_secs(30);

/// How this node runs jobs.
#[derive(Clone)]
pub struct JobsConfig {
    /// Workers in the pool (0: this node runs no jobs).
    pub workers: usize,
    /// Queues the workers claim from, in order.
    pub queues: Vec<String>,
    /// The lease each claim asks for (renewed every third of it).
    pub lease_ms: u64,
    /// Whether a follower claims too (its claims and reports travel to the leader as signed forwards over the actor
    /// mesh). `false` in the simulator, where forwards over the simulated mesh do not replay exactly under load (as
    /// for hooks, see `HookRouterArgs::followers_deliver`): there the leader alone claims, and proposes locally.
    pub followers_claim: bool,
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            workers: 4,
            queues: vec!["default".into()],
            lease_ms: pando_protocol::limits::JOB_LEASE_MS_DEFAULT,
            followers_claim: true,
        }
    }
}

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunResult {
    Completed(JobOutput),
    Failed { error: String, output: JobOutput, retryable: bool },
}

/// Runs one claimed job until it ends or `stop` resolves.
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, job: &Claimed, stop: BoxFuture<'static, ()>) -> BoxFuture<'static, RunResult>;
}

/// How the workers' claims, heartbeats, results and pool reports reach the log: the services layer's job service
/// (proposed here when this node leads, else forwarded to the leader when the node's workers claim as followers).
pub trait JobLog: Send + Sync + 'static {
    fn propose(&self, command: JobCommand, timeout: Duration) -> BoxFuture<'static, Result<JobResponse, WireError>>;
}

/// Where a job's whole output goes when it is larger than its tail: a blob (the services layer adds it).
pub trait OutputStore: Send + Sync + 'static {
    fn put(&self, bytes: Vec<u8>) -> BoxFuture<'static, Result<pando_protocol::blob::BlobHash, WireError>>;
}

/// Commands on this machine and plugins of this node.
pub struct NodeJobRunner {
    pub reaper: Reaper,
    pub plugins: Option<PluginsHandle>,
    /// Where outputs larger than the tail go (`None`: only the tail is kept).
    pub outputs: Option<Arc<dyn OutputStore>>,
}

impl JobRunner for NodeJobRunner {
    fn run(&self, job: &Claimed, stop: BoxFuture<'static, ()>) -> BoxFuture<'static, RunResult> {
        let (job, reaper, plugins, outputs) =
            (job.clone(), self.reaper.clone(), self.plugins.clone(), self.outputs.clone());
        Box::pin(async move {
            let limit = Duration::from_millis(job.spec.timeout_ms);
            match &job.spec.kind {
                JobKind::Shell { argv, env, cwd } => {
                    let mut env = env.clone();
                    env.extend([
                        ("PANDO_JOB_ID".to_string(), job.id.to_string()),
                        ("PANDO_JOB_ATTEMPT".to_string(), job.attempt.to_string()),
                        ("PANDO_JOB_FENCE".to_string(), job.fence.to_string()),
                        ("PANDO_JOB_QUEUE".to_string(), job.spec.queue.clone()),
                    ]);
                    let spawn = Spawn {
                        argv: argv.clone(),
                        env,
                        cwd: cwd.as_ref().map(Into::into),
                        stdin: job.spec.payload.to_vec(),
                        capture_stdout: true,
                        tail_max: JOB_OUTPUT_TAIL_BYTES_MAX,
                        keep_max: if outputs.is_some() { JOB_OUTPUT_BYTES_MAX } else { 0 },
                    };
                    let mut ran = process::run(spawn, &reaper, limit, Duration::from_millis(STOP_GRACE_MS), stop).await;
                    let mut blob = None;
                    if let Some(outputs) = outputs
                        && ran.output_bytes > JOB_OUTPUT_TAIL_BYTES_MAX as u64
                    {
                        match outputs.put(std::mem::take(&mut ran.kept)).await {
                            Ok(hash) => blob = Some(hash),
                            Err(error) => tracing::warn!(id = job.id, %error, "cannot keep a job's output as a blob"),
                        }
                    }
                    shell_result(ran, blob)
                }
                JobKind::Plugin { plugin, function } => {
                    let Some(plugins) = plugins else {
                        return failed("this node runs no plugins", JobOutput::default(), true);
                    };
                    // The call runs with its submitter's scope, as that client's own plugin call would.
                    let scope = job.spec.scope.clone().map(Into::into);
                    let call = plugins.routes().call(plugin, function, job.spec.payload.to_vec(), limit, scope);
                    tokio::select! {
                        biased; // replayable from a seed (tokio's unbiased choice is random per process)
                        answer = call => match answer {
                            Ok((output, _generation)) => RunResult::Completed(JobOutput {
                                exit_code: None,
                                tail: tail(&output).into(),
                                blob: None,
                                bytes: output.len() as u64,
                            }),
                            Err(error) => failed(&error.to_string(), JobOutput::default(), true),
                        },
                        () = stop => failed("stopped: cancelled, or its lease was lost", JobOutput::default(), true),
                    }
                }
            }
        })
    }
}

fn tail(bytes: &[u8]) -> Vec<u8> {
    bytes[bytes.len().saturating_sub(JOB_OUTPUT_TAIL_BYTES_MAX)..].to_vec()
}

fn failed(error: &str, output: JobOutput, retryable: bool) -> RunResult {
    RunResult::Failed { error: error.to_string(), output, retryable }
}

fn shell_result(ran: process::Ran, blob: Option<pando_protocol::blob::BlobHash>) -> RunResult {
    let exit_code = match ran.ended {
        Ended::Exited(code) => Some(code),
        _ => None,
    };
    let output = JobOutput { exit_code, tail: ran.tail.into(), blob, bytes: ran.output_bytes };
    match ran.ended {
        Ended::Exited(0) => RunResult::Completed(output),
        Ended::Exited(EXIT_DISCARD) => failed(&format!("exit status {EXIT_DISCARD} (discard)"), output, false),
        Ended::Exited(code) => failed(&format!("exit status {code}"), output, true),
        Ended::Signalled => failed("killed by a signal", output, true),
        Ended::Overran => failed("ran past its timeout; its process group was killed", output, true),
        Ended::Stopped => failed("stopped: cancelled, or its lease was lost", output, true),
        Ended::CannotStart(error) | Ended::CannotWait(error) => failed(&error, output, true),
    }
}

/// This node's job counters, for `pando cluster metrics` (the queues' own counts come from the applied state).
#[derive(Debug, Default)]
pub struct JobCounters {
    /// Claims the dispatcher proposed, and the jobs they took.
    pub claims: std::sync::atomic::AtomicU64,
    pub claimed: std::sync::atomic::AtomicU64,
    pub completed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Heartbeats and results refused because the attempt was over (its lease lapsed, or it was cancelled).
    pub stale_refusals: std::sync::atomic::AtomicU64,
    /// Runs stopped before they ended (cancelled, or a lease this node could not keep).
    pub stopped: std::sync::atomic::AtomicU64,
}

impl JobCounters {
    pub fn add(counter: &std::sync::atomic::AtomicU64, count: u64) {
        counter.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the pool's workers share.
#[derive(Clone)]
pub struct JobsArgs {
    pub node_id: u64,
    pub config: JobsConfig,
    /// Claims, heartbeats, results and pool reports go through it.
    pub log: Arc<dyn JobLog>,
    /// Whether this node leads (in the simulator only the leader claims).
    pub raft: crate::raft::RaftHandle,
    pub storage: StorageHandle,
    pub runner: Arc<dyn JobRunner>,
    /// The node's idle workers, for its dispatcher.
    pub dispatch: Arc<Dispatch>,
    pub counters: Arc<JobCounters>,
}

/// The node's job subsystem as a child of the root: a supervisor (rest_for_one) of the worker pool, then the
/// dispatcher that claims for it. A node that runs no workers has the dispatcher alone, which reports the empty pool
/// (so `pando job workers` does not show an earlier start's).
pub fn child_spec(mut args: JobsArgs) -> ChildSpec {
    let intensity = Intensity { restarts_max: POOL_RESTARTS_MAX, period: POOL_RESTART_PERIOD };
    args.config.workers = args.config.workers.min(JOB_WORKERS_MAX);
    let mut children = Vec::with_capacity(2);
    if args.config.workers > 0 {
        let shared = args.clone();
        let pool = Pool::new("workers", args.config.workers, intensity, move |index| {
            let args = JobWorkerArgs { index: index as u32, shared: shared.clone() };
            ChildSpec::new(index.to_string(), Restart::Permanent, JobWorkerActor, args)
        });
        children.push(pool.child_spec("workers", Restart::Permanent));
    }
    children.push(ChildSpec::new("dispatcher", Restart::Permanent, JobDispatcherActor, args));
    let options = SupervisorOptions::new(Strategy::RestForOne, intensity.restarts_max, intensity.period);
    ChildSpec::new("jobs", Restart::Permanent, Supervisor, SupervisorArgs { name: "jobs".into(), options, children })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(kind: JobKind, timeout_ms: u64) -> Claimed {
        let spec = pando_protocol::job::JobSpec {
            timeout_ms,
            payload: b"hello".to_vec().into(),
            ..pando_protocol::job::JobSpec::new(kind)
        };
        Claimed { id: 42, attempt: 2, fence: 9, until_ms: 0, spec }
    }

    fn sh(line: &str) -> JobKind {
        JobKind::Shell {
            argv: vec!["/bin/sh".into(), "-c".into(), line.into()],
            env: vec![("MODE".into(), "x".into())],
            cwd: Some("/".into()),
        }
    }

    async fn run(kind: JobKind, timeout_ms: u64, stop: BoxFuture<'static, ()>) -> RunResult {
        NodeJobRunner { reaper: Reaper::none(), plugins: None, outputs: None }
            .run(&claimed(kind, timeout_ms), stop)
            .await
    }

    #[tokio::test]
    async fn a_shell_job_gets_its_payload_environment_and_directory_and_its_output_is_kept() {
        let line =
            r#"read input; echo "$input $PANDO_JOB_ID $PANDO_JOB_ATTEMPT $PANDO_JOB_FENCE $MODE $(pwd)"; echo err >&2"#;
        let RunResult::Completed(output) = run(sh(line), 5_000, Box::pin(std::future::pending())).await else {
            panic!("the job completes")
        };
        assert_eq!(output.exit_code, Some(0));
        let text = String::from_utf8_lossy(&output.tail);
        assert!(text.contains("hello 42 2 9 x /"), "{text}");
        assert!(text.contains("err"), "stderr is kept with stdout: {text}");
    }

    #[tokio::test]
    async fn exit_statuses_timeouts_and_stops_fail_the_attempt_as_they_should() {
        let pending = || -> BoxFuture<'static, ()> { Box::pin(std::future::pending()) };
        let RunResult::Failed { error, retryable: true, output } = run(sh("exit 3"), 5_000, pending()).await else {
            panic!()
        };
        assert_eq!((error.as_str(), output.exit_code), ("exit status 3", Some(3)));
        assert!(matches!(run(sh("exit 65"), 5_000, pending()).await, RunResult::Failed { retryable: false, .. }));
        let overran = run(sh("sleep 30"), 200, pending()).await;
        assert!(matches!(overran, RunResult::Failed { ref error, .. } if error.contains("timeout")), "{overran:?}");
        let stop: BoxFuture<'static, ()> = Box::pin(tokio::time::sleep(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let stopped = run(sh("sleep 30"), 60_000, stop).await;
        assert!(matches!(stopped, RunResult::Failed { ref error, .. } if error.contains("stopped")), "{stopped:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM ended it within the grace");
        let missing = JobKind::Shell { argv: vec!["/nonexistent/job".into()], env: vec![], cwd: None };
        assert!(
            matches!(run(missing, 5_000, pending()).await, RunResult::Failed { ref error, .. } if error.contains("cannot start"))
        );
    }
}
