//! `pando bench job`: jobs submitted and completed per second, and where a job's time goes.
//!
//! `--count` no-op jobs (`true` shell jobs, or the `echo` plugin's `echo` with `--kind plugin`, installed first) are
//! submitted by `--concurrency` submitters on queue `default` (what the nodes' workers claim from); the benchmark
//! waits until the queue completed them all. It reports submits/s and the submit latency, jobs completed per second
//! from the first submit to the last completion, and from each job's own record (the log clock): the wait from
//! submit to claim, and from claim to the recorded completion (start, run and report).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use pando_client::pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_client::pando_protocol::job::{JobKind, JobSpec, StateName};
use pando_client::pando_protocol::plugin::{PluginManifest, PluginRequest, PluginResponse};
use pando_client::{Client, ClientOptions};
use serde_json::json;

const LATENCY_US_MAX: u64 = 600_000_000;
/// How long the jobs may take to complete after the last submit.
const SETTLE: Duration = Duration::from_secs(600);
const BENCH_PLUGIN: &str = "bench-job-echo";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum JobBenchKind {
    Shell,
    Plugin,
}

impl JobBenchKind {
    fn name(self) -> &'static str {
        match self {
            JobBenchKind::Shell => "shell",
            JobBenchKind::Plugin => "plugin",
        }
    }
}

#[derive(Debug, Args)]
pub struct JobBenchArgs {
    #[arg(long, value_enum, default_value = "shell")]
    kind: JobBenchKind,
    #[arg(long, default_value_t = 2_000)]
    count: u64,
    /// Concurrent submitters, each with one submit outstanding.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The `echo` plugin's wasm (with `--kind plugin`).
    #[arg(long, default_value = "fixtures/wasm/echo.wasm")]
    wasm: std::path::PathBuf,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

async fn install_echo(admin: &Client, wasm: &std::path::Path) -> anyhow::Result<()> {
    let add = BlobRequest::Add { replicas: None, pin: false, expected: None, attach: None, ack_copies: None };
    let hash = match crate::blob::upload(admin, wasm, add).await? {
        BlobResponse::Added { hash, .. } => hash,
        other => anyhow::bail!("the wasm upload answered {other:?}"),
    };
    let manifest = PluginManifest { timeout_ms: 10_000, ..PluginManifest::new(BENCH_PLUGIN, "bench") };
    admin.plugin(PluginRequest::Install { manifest, wasm: hash }).await?;
    // Every member must run it: any member's workers may claim a job.
    let members = admin.cluster_status().await?.members.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let PluginResponse::Info(info) = admin.plugin(PluginRequest::Info { name: BENCH_PLUGIN.into() }).await?
            && info.nodes.iter().filter(|node| node.running == info.record.generation).count() >= members
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the echo plugin did not start on all {members} members in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finished(client: &Client) -> anyhow::Result<u64> {
    let stats = client.job_stats().await?;
    Ok(stats
        .iter()
        .filter(|queue| queue.queue == "default")
        .map(|queue| queue.count(StateName::Completed) + queue.count(StateName::Dead))
        .sum())
}

pub async fn run(ticket: &str, options: ClientOptions, args: JobBenchArgs, json_output: bool) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1_000_000).contains(&args.count), "--count must be 1..=1000000");
    anyhow::ensure!((1..=1_024).contains(&args.concurrency), "--concurrency must be 1..=1024");
    let admin = Client::new(ticket, options.clone()).await?;
    let spec = match args.kind {
        JobBenchKind::Shell => JobSpec::new(JobKind::Shell { argv: vec!["true".into()], env: Vec::new(), cwd: None }),
        JobBenchKind::Plugin => {
            install_echo(&admin, &args.wasm).await?;
            JobSpec {
                payload: b"{}".to_vec().into(),
                ..JobSpec::new(JobKind::Plugin { plugin: BENCH_PLUGIN.into(), function: "echo".into() })
            }
        }
    };
    let before = finished(&admin).await?;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.concurrency {
        let (client, spec, next, count) =
            (Client::new(ticket, options.clone()).await?, spec.clone(), next.clone(), args.count);
        submitters.push(tokio::spawn(async move {
            let (mut latency, mut ids) = (histogram(), Vec::new());
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let sent = Instant::now();
                let submitted = client.job_submit(spec.clone()).await?;
                latency.record(sent.elapsed().as_micros() as u64).ok();
                ids.push(submitted.id);
            }
            anyhow::Ok((latency, ids))
        }));
    }
    let (mut submit_latency, mut ids) = (histogram(), Vec::new());
    for submitter in submitters {
        let (latency, mut submitted) = submitter.await??;
        submit_latency.add(&latency)?;
        ids.append(&mut submitted);
    }
    let submitted_in = started.elapsed();
    let deadline = Instant::now() + SETTLE;
    while finished(&admin).await? < before + args.count {
        anyhow::ensure!(Instant::now() < deadline, "the jobs did not finish within {} s", SETTLE.as_secs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed_in = started.elapsed();
    // Each job's own record: submit to claim, claim to recorded completion.
    ids.sort_unstable();
    let (mut wait, mut run) = (histogram(), histogram());
    let mut after = ids.first().map_or(0, |first| first - 1);
    let last = ids.last().copied().unwrap_or(0);
    'pages: loop {
        let (jobs, more) = admin.job_list(Some(StateName::Completed), Some("default".into()), after, 1_000).await?;
        for job in &jobs {
            if job.id > last {
                break 'pages;
            }
            if let Some(attempt) = job.history.last() {
                wait.record(attempt.started_ms.saturating_sub(job.submitted_ms).max(1) * 1000).ok();
                run.record(attempt.ended_ms.saturating_sub(attempt.started_ms).max(1) * 1000).ok();
            }
        }
        match jobs.last() {
            Some(job) if more => after = job.id,
            _ => break,
        }
    }
    let count = args.count as f64;
    if json_output {
        crate::output::print_json(&json!({
            "kind": args.kind.name(),
            "count": args.count,
            "concurrency": args.concurrency,
            "submits_per_s": count / submitted_in.as_secs_f64(),
            "submit_p50_ms": ms(&submit_latency, 0.5),
            "submit_p99_ms": ms(&submit_latency, 0.99),
            "completed_per_s": count / completed_in.as_secs_f64(),
            "submit_to_claim_p50_ms": ms(&wait, 0.5),
            "submit_to_claim_p99_ms": ms(&wait, 0.99),
            "claim_to_done_p50_ms": ms(&run, 0.5),
            "claim_to_done_p99_ms": ms(&run, 0.99),
        }));
    } else {
        println!(
            "{} {} jobs, {} submitters: {:.0} submits/s (p50 {:.2} ms, p99 {:.2} ms); {:.0} completed/s",
            args.count,
            args.kind.name(),
            args.concurrency,
            count / submitted_in.as_secs_f64(),
            ms(&submit_latency, 0.5),
            ms(&submit_latency, 0.99),
            count / completed_in.as_secs_f64()
        );
        println!(
            "  submit to claim p50 {:.0} ms, p99 {:.0} ms; claim to recorded completion p50 {:.0} ms, p99 {:.0} ms \
             (log clock, 1 ms resolution)",
            ms(&wait, 0.5),
            ms(&wait, 0.99),
            ms(&run, 0.5),
            ms(&run, 0.99)
        );
    }
    Ok(())
}
