//! `pando job …`: submit shell and plugin jobs, follow them, and manage the dead-letter list and cron schedules.

use clap::{Args, Subcommand, ValueEnum};
use pando_client::Client;
use pando_client::pando_protocol::job::{
    AttemptOutcome, Backoff, CronRecord, Job, JobCommand, JobKind, JobSpec, JobState, Missed, StateName, WorkerPool,
};
use pando_client::pando_protocol::limits::{JOB_LIST_COUNT_MAX, JOB_MAX_ATTEMPTS_DEFAULT, JOB_TIMEOUT_MS_DEFAULT};
use serde_json::{Value, json};

use crate::coord::parse_duration_ms;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum JobCommandArgs {
    /// Submit a job; prints its id (or the id of the unfinished job holding its --unique-key).
    Submit(SubmitArgs),
    /// One job: its state, attempts, and the output of its last attempt.
    Status { id: u64 },
    /// The output of a job's last attempt; with --follow, waits for the job to finish first.
    Logs {
        id: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Jobs by id, in a state and queue when given.
    List {
        /// waiting, scheduled, available, running, retrying (or failed), completed (or done), dead, cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cancel a job that has not finished (a running one is killed by its worker).
    Cancel { id: u64 },
    /// Run a dead or cancelled job again, with fresh attempts.
    Retry { id: u64 },
    /// The dead-letter list: jobs out of attempts, or whose dependency failed.
    Dlq {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Run every dead job again (of one queue when given), with fresh attempts.
    Redrive {
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete finished jobs.
    Purge {
        /// completed (done), dead or cancelled.
        #[arg(long)]
        state: String,
        /// Only those that ended at least this long ago, such as 7d.
        #[arg(long, default_value = "0s")]
        older_than: String,
        #[arg(long)]
        queue: Option<String>,
    },
    /// Per queue: jobs in each state, attempts, failures, lease expiries.
    Stats,
    /// Per node: its pool (workers, queues, lease, as the node reported it when it started), busy and idle workers,
    /// and the jobs its workers hold now with their attempts, fences, last heartbeats and lease deadlines.
    Workers,
    /// Schedules that submit a job at each instant of a cron expression (UTC).
    #[command(subcommand)]
    Cron(CronCommand),
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Create or replace a schedule: `pando job cron create nightly --schedule '0 3 * * *' -- ./nightly.sh`.
    Create {
        name: String,
        /// Five fields (minute hour day month weekday) or six (a leading second), or @hourly, @daily …
        #[arg(long)]
        schedule: String,
        /// Instants missed while the cluster was down: skip them, run once for them, or run each.
        #[arg(long, value_enum, default_value = "skip")]
        missed: MissedArg,
        #[command(flatten)]
        job: JobArgs,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MissedArg {
    Skip,
    Once,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Shell,
    Plugin,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Not before this long from now, such as 10m.
    #[arg(long)]
    not_before: Option<String>,
    /// While a job with this key has not finished, a submit answers that job instead.
    #[arg(long)]
    unique_key: Option<String>,
    /// Jobs that must complete first (ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    depends_on: Vec<u64>,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// What the job runs: a command (`-- program args…`) or a plugin function.
    #[arg(long = "type", value_enum, default_value = "shell")]
    kind: KindArg,
    #[arg(long, default_value = "default")]
    queue: String,
    /// 0 runs first, 9 last.
    #[arg(long, default_value_t = 0)]
    priority: u8,
    #[arg(long, default_value_t = JOB_MAX_ATTEMPTS_DEFAULT)]
    max_attempts: u32,
    /// The retry delays: doubling from the first to at most the second, such as 2s..10m.
    #[arg(long, default_value = "1s..10m")]
    backoff: String,
    /// How long one attempt may run before its process group is killed (default 15m).
    #[arg(long)]
    timeout: Option<String>,
    /// The payload: a shell job's stdin, a plugin job's input; `@FILE` reads a file.
    #[arg(long)]
    input: Option<String>,
    #[arg(long)]
    plugin: Option<String>,
    #[arg(long)]
    function: Option<String>,
    /// Environment variables of a shell job (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Working directory of a shell job on the node that runs it.
    #[arg(long)]
    cwd: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    argv: Vec<String>,
}

fn duration(text: &str) -> anyhow::Result<u64> {
    parse_duration_ms(text).map_err(|error| anyhow::anyhow!(error))
}

fn state(text: &str) -> anyhow::Result<StateName> {
    StateName::parse(text).ok_or_else(|| {
        let names: Vec<&str> = StateName::ALL.iter().map(|state| state.as_str()).collect();
        anyhow::anyhow!("no job state {text:?}; use one of {}", names.join(", "))
    })
}

impl JobArgs {
    fn spec(&self) -> anyhow::Result<JobSpec> {
        let kind = match self.kind {
            KindArg::Shell => {
                anyhow::ensure!(!self.argv.is_empty(), "a shell job needs its command after `--`");
                anyhow::ensure!(self.plugin.is_none() && self.function.is_none(), "--plugin is for --type plugin");
                let env = self
                    .env
                    .iter()
                    .map(|pair| {
                        pair.split_once('=')
                            .map(|(name, value)| (name.to_string(), value.to_string()))
                            .ok_or_else(|| anyhow::anyhow!("--env takes NAME=VALUE, not {pair:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                JobKind::Shell { argv: self.argv.clone(), env, cwd: self.cwd.clone() }
            }
            KindArg::Plugin => {
                anyhow::ensure!(self.argv.is_empty(), "a plugin job takes --input, not a command");
                let (Some(plugin), Some(function)) = (&self.plugin, &self.function) else {
                    anyhow::bail!("a plugin job needs --plugin NAME and --function NAME");
                };
                JobKind::Plugin { plugin: plugin.clone(), function: function.clone() }
            }
        };
        let payload = match self.input.as_deref() {
            None => Vec::new(),
            Some(text) => match text.strip_prefix('@') {
                Some(path) => std::fs::read(path).map_err(|error| anyhow::anyhow!("cannot read {path}: {error}"))?,
                None => text.as_bytes().to_vec(),
            },
        };
        let (base, max) = self
            .backoff
            .split_once("..")
            .ok_or_else(|| anyhow::anyhow!("--backoff takes FIRST..MOST, such as 2s..10m"))?;
        Ok(JobSpec {
            kind,
            payload: payload.into(),
            queue: self.queue.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            backoff: Backoff { base_ms: duration(base)?, max_ms: duration(max)? },
            timeout_ms: self.timeout.as_deref().map(duration).transpose()?.unwrap_or(JOB_TIMEOUT_MS_DEFAULT),
            ..JobSpec::new(JobKind::Plugin { plugin: String::new(), function: String::new() })
        })
    }
}

fn kind_text(kind: &JobKind) -> String {
    match kind {
        JobKind::Shell { argv, .. } => argv.join(" "),
        JobKind::Plugin { plugin, function } => format!("plugin {plugin}.{function}"),
    }
}

fn state_text(state: &JobState) -> String {
    match state {
        JobState::Scheduled { at_ms } => format!("scheduled for {}", crate::output::utc(*at_ms)),
        JobState::Running { node, fence, until_ms, .. } => {
            format!("running on node {node} under fence {fence}, lease until {}", crate::output::utc(*until_ms))
        }
        JobState::Retrying { at_ms } => format!("retrying at {}", crate::output::utc(*at_ms)),
        JobState::Dead { reason, .. } => format!("dead: {reason}"),
        other => other.name().as_str().to_string(),
    }
}

/// A log-clock time as UTC, to the millisecond.
/// One node's line of `pando job workers`: its reported pool (if any) and the jobs it holds.
struct PoolRow<'a> {
    node: u64,
    pool: Option<&'a WorkerPool>,
    jobs: &'a [Job],
}

fn pool_rows<'a>(pools: &'a [WorkerPool], running: &'a std::collections::BTreeMap<u64, Vec<Job>>) -> Vec<PoolRow<'a>> {
    let mut nodes: std::collections::BTreeSet<u64> = pools.iter().map(|pool| pool.node).collect();
    nodes.extend(running.keys());
    nodes
        .into_iter()
        .map(|node| PoolRow {
            node,
            pool: pools.iter().find(|pool| pool.node == node),
            jobs: running.get(&node).map(Vec::as_slice).unwrap_or_default(),
        })
        .collect()
}

impl PoolRow<'_> {
    /// When the running attempt's lease was last renewed (its start or its last heartbeat), given the pool's lease.
    fn heartbeat_ms(&self, started_ms: u64, until_ms: u64) -> Option<u64> {
        self.pool.map(|pool| until_ms.saturating_sub(pool.lease_ms).max(started_ms))
    }

    fn json(&self) -> Value {
        let running: Vec<Value> = self
            .jobs
            .iter()
            .filter_map(|job| match job.state {
                JobState::Running { worker, fence, started_ms, until_ms, .. } => Some(json!({
                    "id": job.id,
                    "queue": job.spec.queue,
                    "attempt": job.attempt,
                    "worker": worker,
                    "fence": fence,
                    "started_ms": started_ms,
                    "heartbeat_ms": self.heartbeat_ms(started_ms, until_ms),
                    "lease_until_ms": until_ms,
                })),
                _ => None,
            })
            .collect();
        json!({
            "node": self.node,
            "workers": self.pool.map(|pool| pool.workers),
            "queues": self.pool.map(|pool| pool.queues.clone()),
            "lease_ms": self.pool.map(|pool| pool.lease_ms),
            "reported_ms": self.pool.map(|pool| pool.reported_ms),
            "busy": self.jobs.len(),
            "idle": self.pool.map(|pool| (pool.workers as usize).saturating_sub(self.jobs.len())),
            "running": running,
        })
    }

    fn print(&self) {
        match self.pool {
            Some(pool) if pool.workers == 0 => {
                println!("node {}: runs no job workers (reported {})", self.node, crate::output::utc(pool.reported_ms))
            }
            Some(pool) => println!(
                "node {}: {} worker{} on {}, {} busy, {} idle; lease {} ms; reported {}",
                self.node,
                pool.workers,
                if pool.workers == 1 { "" } else { "s" },
                pool.queues.join(", "),
                self.jobs.len(),
                (pool.workers as usize).saturating_sub(self.jobs.len()),
                pool.lease_ms,
                crate::output::utc(pool.reported_ms)
            ),
            None => println!("node {}: no pool reported; {} busy", self.node, self.jobs.len()),
        }
        for job in self.jobs {
            if let JobState::Running { fence, started_ms, until_ms, .. } = job.state {
                let heartbeat = match self.heartbeat_ms(started_ms, until_ms) {
                    Some(at) => format!(", last heartbeat {}", crate::output::utc(at)),
                    None => String::new(),
                };
                println!(
                    "  job {} ({}) attempt {} fence {}, since {}{heartbeat}, lease until {}",
                    job.id,
                    job.spec.queue,
                    job.attempt,
                    fence,
                    crate::output::utc(started_ms),
                    crate::output::utc(until_ms)
                );
            }
        }
    }
}

fn outcome_text(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Completed => "completed".into(),
        AttemptOutcome::Failed { error } => format!("failed: {error}"),
        AttemptOutcome::LeaseExpired => "rescued: its lease lapsed".into(),
        AttemptOutcome::TimedOut => "ran past its timeout".into(),
        AttemptOutcome::Cancelled => "cancelled".into(),
    }
}

fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "queue": job.spec.queue,
        "kind": kind_text(&job.spec.kind),
        "priority": job.spec.priority,
        "state": job.state.name().as_str(),
        "detail": state_text(&job.state),
        "attempt": job.attempt,
        "max_attempts": job.spec.max_attempts,
        "submitted_ms": job.submitted_ms,
        "ended_ms": job.state.ended_ms(),
        "rescues": job.rescues,
        "depends_on": job.spec.depends_on,
        "unique_key": job.spec.unique_key,
        "cron": job.cron.as_ref().map(|(name, at)| json!({ "schedule": name, "instant_ms": at })),
        "history": job.history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "fence": attempt.fence,
            "node": attempt.node,
            "started_ms": attempt.started_ms,
            "ended_ms": attempt.ended_ms,
            "outcome": outcome_text(&attempt.outcome),
        })).collect::<Vec<_>>(),
        "exit_code": job.output.as_ref().and_then(|output| output.exit_code),
        "output_bytes": job.output.as_ref().map(|output| output.bytes),
        "output_blob": job.output.as_ref().and_then(|output| output.blob.map(|blob| blob.to_hex())),
        "output": job.output.as_ref().map(|output| String::from_utf8_lossy(&output.tail).into_owned()),
    })
}

fn print_line(job: &Job) {
    println!(
        "{}\t{}\t{}\tattempt {}/{}\t{}",
        job.id,
        job.spec.queue,
        state_text(&job.state),
        job.attempt,
        job.spec.max_attempts,
        kind_text(&job.spec.kind)
    );
}

fn print_page(jobs: &[Job], more: bool, json_output: bool) {
    if json_output {
        print_json(&json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(), "more": more }));
        return;
    }
    if jobs.is_empty() {
        println!("no jobs");
    }
    for job in jobs {
        print_line(job);
    }
    if more && let Some(last) = jobs.last() {
        println!("(more: --after {})", last.id);
    }
}

fn cron_json(cron: &CronRecord) -> Value {
    json!({
        "name": cron.name,
        "schedule": cron.schedule,
        "missed": format!("{:?}", cron.missed).to_lowercase(),
        "queue": cron.spec.queue,
        "kind": kind_text(&cron.spec.kind),
        "next_ms": cron.next_ms,
        "last_ms": cron.last_ms,
        "fired": cron.fired_total,
        "skipped": cron.skipped_total,
    })
}

pub async fn job(client: &Client, command: JobCommandArgs, json_output: bool) -> anyhow::Result<()> {
    match command {
        JobCommandArgs::Submit(args) => {
            let mut spec = args.job.spec()?;
            spec.delay_ms = args.not_before.as_deref().map(duration).transpose()?.unwrap_or(0);
            spec.unique_key = args.unique_key;
            spec.depends_on = args.depends_on;
            let submitted = client.job_submit(spec).await?;
            if json_output {
                print_json(&json!({
                    "id": submitted.id,
                    "duplicate": submitted.duplicate,
                    "state": submitted.state.as_str(),
                }));
            } else if submitted.duplicate {
                println!(
                    "{} (a duplicate: job {} holds the key, {})",
                    submitted.id,
                    submitted.id,
                    submitted.state.as_str()
                );
            } else {
                println!("{}", submitted.id);
            }
        }
        JobCommandArgs::Status { id } => {
            let job = client.job(id).await?;
            if json_output {
                print_json(&job_json(&job));
            } else {
                println!("job {id} on queue {}: {}", job.spec.queue, kind_text(&job.spec.kind));
                println!("  {}", state_text(&job.state));
                println!(
                    "  attempt {} of {}, priority {}, submitted {}{}",
                    job.attempt,
                    job.spec.max_attempts,
                    job.spec.priority,
                    crate::output::utc(job.submitted_ms),
                    if job.rescues > 0 { format!(", rescued {} times", job.rescues) } else { String::new() }
                );
                if !job.spec.depends_on.is_empty() {
                    let ids: Vec<String> = job.spec.depends_on.iter().map(u64::to_string).collect();
                    println!("  depends on {}", ids.join(", "));
                }
                for attempt in &job.history {
                    println!(
                        "  attempt {} on node {} (fence {}): {} after {} ms",
                        attempt.attempt,
                        attempt.node,
                        attempt.fence,
                        outcome_text(&attempt.outcome),
                        attempt.ended_ms.saturating_sub(attempt.started_ms)
                    );
                }
                if let Some(code) = job.output.as_ref().and_then(|output| output.exit_code) {
                    println!("  exit code {code}");
                }
            }
        }
        JobCommandArgs::Logs { id, follow } => {
            let mut job = client.job(id).await?;
            // Following waits for the job to end, reading its state twice a second.
            while follow && job.state.ended_ms().is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
                job = client.job(id).await?;
            }
            match &job.output {
                Some(output) => {
                    use std::io::Write;
                    std::io::stdout().write_all(&output.tail)?;
                    if let Some(blob) = &output.blob {
                        eprintln!(
                            "(the last {} of {} bytes; the whole output: pando blob get {})",
                            output.tail.len(),
                            output.bytes,
                            blob.to_hex()
                        );
                    }
                }
                None if json_output => print_json(&json!({ "id": id, "output": null })),
                None => eprintln!("job {id} has no output yet ({})", job.state.name().as_str()),
            }
        }
        JobCommandArgs::List { state: name, queue, after, limit } => {
            let state = name.as_deref().map(state).transpose()?;
            let (jobs, more) = client.job_list(state, queue, after, limit.min(JOB_LIST_COUNT_MAX)).await?;
            print_page(&jobs, more, json_output);
        }
        JobCommandArgs::Dlq { queue, after, limit } => {
            let (jobs, more) =
                client.job_list(Some(StateName::Dead), queue, after, limit.min(JOB_LIST_COUNT_MAX)).await?;
            print_page(&jobs, more, json_output);
        }
        JobCommandArgs::Cancel { id } => {
            let job = client.job_change(JobCommand::Cancel { id }).await?;
            done(json_output, &job, &format!("job {id} cancelled"));
        }
        JobCommandArgs::Retry { id } => {
            let job = client.job_change(JobCommand::Retry { id }).await?;
            done(json_output, &job, &format!("job {id} runs again"));
        }
        JobCommandArgs::Redrive { queue } => {
            let total =
                sweep(client, || JobCommand::Redrive { queue: queue.clone(), most: JOB_LIST_COUNT_MAX }).await?;
            counted(json_output, total, "redriven");
        }
        JobCommandArgs::Purge { state: name, older_than, queue } => {
            let state = state(&name)?;
            let older_than_ms = duration(&older_than)?;
            let purge = || JobCommand::Purge { state, older_than_ms, queue: queue.clone(), most: JOB_LIST_COUNT_MAX };
            let total = sweep(client, purge).await?;
            counted(json_output, total, "purged");
        }
        JobCommandArgs::Stats => {
            let stats = client.job_stats().await?;
            if json_output {
                print_json(&Value::Array(
                    stats
                        .iter()
                        .map(|queue| {
                            let mut value = json!({
                                "queue": queue.queue,
                                "submitted": queue.submitted_total,
                                "attempts": queue.attempts_total,
                                "failed_attempts": queue.failed_attempts_total,
                                "lease_expiries": queue.lease_expiries_total,
                            });
                            for state in StateName::ALL {
                                value[state.as_str()] = json!(queue.count(state));
                            }
                            value
                        })
                        .collect(),
                ));
            } else if stats.is_empty() {
                println!("no jobs");
            } else {
                for queue in stats {
                    let counts: Vec<String> = StateName::ALL
                        .iter()
                        .map(|state| format!("{} {}", queue.count(*state), state.as_str()))
                        .collect();
                    println!(
                        "{}: {}; {} attempts, {} failed, {} lease expiries",
                        queue.queue,
                        counts.join(", "),
                        queue.attempts_total,
                        queue.failed_attempts_total,
                        queue.lease_expiries_total
                    );
                }
            }
        }
        JobCommandArgs::Workers => {
            let pools = client.job_pools().await?;
            let mut running: std::collections::BTreeMap<u64, Vec<Job>> = std::collections::BTreeMap::new();
            let mut after = 0;
            loop {
                let (jobs, more) = client.job_list(Some(StateName::Running), None, after, JOB_LIST_COUNT_MAX).await?;
                for job in &jobs {
                    if let JobState::Running { node, .. } = job.state {
                        running.entry(node).or_default().push(job.clone());
                    }
                }
                match jobs.last() {
                    Some(last) if more => after = last.id,
                    _ => break,
                }
            }
            let nodes = pool_rows(&pools, &running);
            if json_output {
                print_json(&Value::Array(nodes.iter().map(PoolRow::json).collect()));
            } else if nodes.is_empty() {
                println!("no node has reported job workers and no job is running");
            } else {
                for node in &nodes {
                    node.print();
                }
            }
        }
        JobCommandArgs::Cron(CronCommand::Create { name, schedule, missed, job }) => {
            let missed = match missed {
                MissedArg::Skip => Missed::Skip,
                MissedArg::Once => Missed::Once,
                MissedArg::All => Missed::All,
            };
            let record = client.cron_create(&name, &schedule, missed, job.spec()?).await?;
            if json_output {
                print_json(&cron_json(&record));
            } else {
                println!("cron {name} next fires at {}", crate::output::utc(record.next_ms));
            }
        }
        JobCommandArgs::Cron(CronCommand::List) => {
            let crons = client.cron_list().await?;
            if json_output {
                print_json(&Value::Array(crons.iter().map(cron_json).collect()));
            } else if crons.is_empty() {
                println!("no cron schedules");
            } else {
                for cron in crons {
                    println!(
                        "{}\t{}\tnext {}\t{} fired, {} skipped\t{}",
                        cron.name,
                        cron.schedule,
                        crate::output::utc(cron.next_ms),
                        cron.fired_total,
                        cron.skipped_total,
                        kind_text(&cron.spec.kind)
                    );
                }
            }
        }
        JobCommandArgs::Cron(CronCommand::Delete { name }) => {
            client.cron_delete(&name).await?;
            if json_output {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("cron {name} deleted");
            }
        }
    }
    Ok(())
}

/// Repeats a redrive or purge (each takes at most a page of jobs) until nothing is left; answers how many it took.
async fn sweep(client: &Client, command: impl Fn() -> JobCommand) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let (count, more) = client.job_sweep(command()).await?;
        total += count;
        if !more || count == 0 {
            return Ok(total);
        }
    }
}

fn done(json_output: bool, job: &Job, text: &str) {
    if json_output {
        print_json(&job_json(job));
    } else {
        println!("{text}");
    }
}

fn counted(json_output: bool, count: u64, what: &str) {
    if json_output {
        print_json(&json!({ what: count }));
    } else {
        println!("{count} jobs {what}");
    }
}
