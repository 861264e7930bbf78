//! `pando bench hook`: commit-to-delivery latency and throughput of hooks while writers put under a prefix.
//!
//! - `--target stream`: `--streams` hook streams (`pando hook watch`) on the prefix's `kv.put` subjects; events/s
//!   delivered (all streams together) and the latency from each write's acknowledgement to each stream's delivery.
//! - `--target exec`: one durable shell hook on those subjects whose command appends its event's revision and the
//!   wall clock to a file; the latency from each write's acknowledgement to its command's run, and the events/s the
//!   hook acked (begin, run, ack: two log entries and a process per event, strictly in order).
//!
//! The writes' own latency is reported too, so a run with `--streams 0` is the baseline of what hooks cost writers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use pando_client::pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_client::pando_protocol::hook::durable::{HookSpec, HookTarget, StartAt};
use pando_client::pando_protocol::hook::subject::encode_key;
use pando_client::pando_protocol::plugin::{Permission, PluginManifest, PluginRequest, PluginResponse};
use pando_client::{Client, ClientOptions};

use crate::bench_watch::{Acked, write_until};
use serde_json::json;

const STREAMS_PER_CONNECTION_MAX: usize = 64;
const BENCH_STREAMS_MAX: usize = 10_000;
const LATENCY_US_MAX: u64 = 600_000_000;
const DRAIN_MS: u64 = 2_000;
/// How long a shell hook may take to catch up after the writes.
const EXEC_SETTLE_MS: u64 = 300_000;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HookBenchTarget {
    Stream,
    Exec,
    Plugin,
}

impl HookBenchTarget {
    fn name(self) -> &'static str {
        match self {
            HookBenchTarget::Stream => "stream",
            HookBenchTarget::Exec => "exec",
            HookBenchTarget::Plugin => "plugin",
        }
    }
}

#[derive(Debug, Args)]
pub struct HookBenchArgs {
    #[arg(long, value_enum, default_value = "stream")]
    target: HookBenchTarget,
    /// Hook streams (with `--target stream`).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Concurrent writers, each with one put outstanding.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Pause between a writer's puts, in ms (0: closed loop). A shell hook runs one event at a time: pace the
    /// writers below its rate to measure latency rather than a queue.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The key prefix written (its `kv.put` subjects are what the hooks match).
    #[arg(long, default_value = "bench/hook/")]
    prefix: String,
    /// The `kv-counter` plugin's wasm (with `--target plugin`: installed subscribed to the prefix; its `on_hook`
    /// records each event under `plugin/kv-counter/seen/`, and the latency runs to that record's commit).
    #[arg(long, default_value = "fixtures/wasm/kv-counter.wasm")]
    wasm: std::path::PathBuf,
}

/// How long the plugin's streams wait past the writes for the plugin to catch up.
const PLUGIN_DRAIN: Duration = Duration::from_secs(20);

/// Installs `kv-counter` subscribed to `pattern` and waits until it answers here.
async fn install_counter(admin: &Client, wasm: &std::path::Path, pattern: &str) -> anyhow::Result<()> {
    let add = BlobRequest::Add { replicas: None, pin: false, expected: None, attach: None, ack_copies: None };
    let hash = match crate::blob::upload(admin, wasm, add).await? {
        BlobResponse::Added { hash, .. } => hash,
        other => anyhow::bail!("unexpected response {other:?}"),
    };
    let manifest = PluginManifest {
        permissions: vec![Permission::KvRead, Permission::KvWrite, Permission::Hooks],
        hooks: vec![pattern.to_string()],
        timeout_ms: 10_000,
        ..PluginManifest::new("kv-counter", "bench")
    };
    admin.plugin(PluginRequest::Install { manifest, wasm: hash }).await?;
    // Every member must run it: the node that delivers the hook may be any of them.
    let members = admin.cluster_status().await?.members.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let PluginResponse::Info(info) = admin.plugin(PluginRequest::Info { name: "kv-counter".into() }).await?
            && info.nodes.iter().filter(|node| node.running == info.record.generation).count() >= members
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "kv-counter did not start on all {members} members within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

pub async fn run(ticket: &str, options: ClientOptions, args: HookBenchArgs, json_output: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.streams <= BENCH_STREAMS_MAX, "--streams must be 0..={BENCH_STREAMS_MAX}");
    anyhow::ensure!((1..=4_096).contains(&args.concurrency), "--concurrency must be 1..=4096");
    anyhow::ensure!((1..=3_600).contains(&args.duration), "--duration must be 1..=3600 seconds");
    anyhow::ensure!(args.prefix.ends_with('/') && args.prefix.len() > 1, "--prefix must end with `/`");
    let pattern = format!("kv.put.{}.>", encode_key(args.prefix.trim_end_matches('/').as_bytes()));
    // When each revision was acknowledged: a monotonic instant (streams, same process) and the wall clock (shell
    // hooks, another process).
    let acked: Acked = Arc::default();
    let admin = Client::new(ticket, options.clone()).await?;
    let first = admin.hook_publish("bench.hook.start", b"{}").await? + 1;
    let writing = Duration::from_secs(args.duration);
    let stop_at = Instant::now() + writing + Duration::from_millis(DRAIN_MS);
    let scratch = std::env::temp_dir().join(format!("pando-bench-hook-{}", std::process::id()));
    let hook_name = format!("bench-exec-{}", std::process::id());
    let mut stream_clients = Vec::new();
    let mut streams = Vec::new();
    match args.target {
        HookBenchTarget::Stream => {
            for _ in 0..args.streams.div_ceil(STREAMS_PER_CONNECTION_MAX) {
                stream_clients.push(Arc::new(Client::new(ticket, options.clone()).await?));
            }
            for index in 0..args.streams {
                let client = stream_clients[index / STREAMS_PER_CONNECTION_MAX].clone();
                let (acked, pattern) = (acked.clone(), pattern.clone());
                streams.push(tokio::spawn(async move {
                    let mut latency = histogram();
                    let mut events = 0u64;
                    let mut watch = client.hook_watch(&pattern, first);
                    loop {
                        let remaining = stop_at.saturating_duration_since(Instant::now());
                        let Ok(next) = tokio::time::timeout(remaining, watch.next()).await else { break };
                        let event = next?;
                        let now = Instant::now();
                        events += 1;
                        let at =
                            acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&event.revision).copied();
                        let micros = at.map_or(1, |(at, _)| now.saturating_duration_since(at).as_micros() as u64);
                        latency.saturating_record(micros.max(1));
                    }
                    watch.cancel().await;
                    Ok::<_, pando_client::ClientError>((events, latency))
                }));
            }
        }
        // Installed right after this match, before the writers start.
        HookBenchTarget::Plugin => {}
        HookBenchTarget::Exec => {
            let _ = std::fs::remove_file(&scratch);
            let line = format!("echo \"$PANDO_REVISION $(date +%s%N)\" >> {}", scratch.display());
            let spec = HookSpec {
                pattern: pattern.clone(),
                target: HookTarget::Exec { argv: vec![line], shell: true, timeout_ms: 30_000 },
                ack_wait_ms: 30_000,
                max_deliver: 3,
                backoff_ms: Vec::new(),
                max_in_flight: 1,
            };
            admin.hook_create(&hook_name, spec, StartAt::Seq(first)).await?;
        }
    }
    // With a plugin: every event's sequence and revision (stream A), and when the plugin's record of each arrived
    // (stream B).
    let mut plugin_streams = None;
    if let HookBenchTarget::Plugin = args.target {
        install_counter(&admin, &args.wasm, &pattern).await?;
        let seen_pattern = "kv.put.plugin.kv-counter.seen.>".to_string();
        let events = {
            let (client, pattern) = (Arc::new(Client::new(ticket, options.clone()).await?), pattern.clone());
            stream_clients.push(client.clone());
            tokio::spawn(async move {
                let mut revisions = HashMap::new();
                let mut watch = client.hook_watch(&pattern, first);
                while let Ok(Ok(event)) =
                    tokio::time::timeout(stop_at.saturating_duration_since(Instant::now()) + PLUGIN_DRAIN, watch.next())
                        .await
                {
                    revisions.insert(event.seq, event.revision);
                }
                revisions
            })
        };
        let records = {
            let client = Arc::new(Client::new(ticket, options.clone()).await?);
            stream_clients.push(client.clone());
            tokio::spawn(async move {
                let mut arrived = Vec::new();
                let mut watch = client.hook_watch(&seen_pattern, first);
                while let Ok(Ok(event)) =
                    tokio::time::timeout(stop_at.saturating_duration_since(Instant::now()) + PLUGIN_DRAIN, watch.next())
                        .await
                {
                    let seq = event.subject.rsplit('.').next().and_then(|seq| seq.parse::<u64>().ok());
                    if let Some(seq) = seq {
                        arrived.push((seq, Instant::now()));
                    }
                }
                arrived
            })
        };
        plugin_streams = Some((events, records));
    }
    let started = Instant::now();
    let (writes, write_errors, write_clients) = write_until(
        ticket,
        &options,
        args.concurrency,
        &args.prefix,
        args.value_size,
        started + writing,
        Duration::from_millis(args.pause_ms),
        acked.clone(),
    )
    .await?;
    let written = started.elapsed().as_secs_f64();
    let mut delivery = histogram();
    let mut delivered = 0u64;
    let mut errors = Vec::new();
    let delivered_over;
    match args.target {
        HookBenchTarget::Stream => {
            for stream in streams {
                match stream.await? {
                    Ok((events, latency)) => {
                        delivered += events;
                        delivery.add(&latency)?;
                    }
                    Err(error) => errors.push(error.to_string()),
                }
            }
            delivered_over = written;
        }
        HookBenchTarget::Plugin => {
            let (events, records) = plugin_streams.take().expect("started above");
            let (revisions, arrived) = (events.await?, records.await?);
            let acked = acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            for (seq, at) in &arrived {
                delivered += 1;
                if let Some((acked_at, _)) = revisions.get(seq).and_then(|revision| acked.get(revision)) {
                    delivery.saturating_record(at.saturating_duration_since(*acked_at).as_micros().max(1) as u64);
                }
            }
            delivered_over = started.elapsed().as_secs_f64();
            admin.plugin(PluginRequest::Remove { name: "kv-counter".into() }).await?;
        }
        HookBenchTarget::Exec => {
            // Wait for the hook to run everything written, then read what the command recorded.
            let settle = Instant::now() + Duration::from_millis(EXEC_SETTLE_MS);
            loop {
                let info = admin.hook_info(&hook_name).await?;
                if info.record.position + 1 >= info.log_next && info.record.pending == 0 {
                    break;
                }
                anyhow::ensure!(Instant::now() < settle, "the shell hook did not catch up: {:?}", info.record);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            delivered_over = started.elapsed().as_secs_f64();
            let acked = acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            for line in std::fs::read_to_string(&scratch).unwrap_or_default().lines() {
                let mut parts = line.split_whitespace();
                let (Some(revision), Some(nanos)) = (parts.next(), parts.next()) else { continue };
                let (Ok(revision), Ok(nanos)) = (revision.parse::<u64>(), nanos.parse::<u64>()) else { continue };
                delivered += 1;
                if let Some((_, at)) = acked.get(&revision) {
                    delivery.saturating_record((nanos / 1_000).saturating_sub(*at).max(1));
                }
            }
            admin.hook_delete(&hook_name).await?;
            let _ = std::fs::remove_file(&scratch);
        }
    }
    for client in stream_clients.iter().chain(&write_clients) {
        client.close().await;
    }
    admin.close().await;
    let report = json!({
        "op": "hook",
        "target": args.target.name(),
        "streams": args.streams,
        "writers": args.concurrency,
        "duration_s": written,
        "writes_per_s": writes.len() as f64 / written,
        "write_p50_ms": ms(&writes, 0.5),
        "write_p99_ms": ms(&writes, 0.99),
        "write_errors": write_errors,
        "events_delivered": delivered,
        "events_per_s": delivered as f64 / delivered_over,
        "delivery_p50_ms": ms(&delivery, 0.5),
        "delivery_p99_ms": ms(&delivery, 0.99),
        "delivery_max_ms": delivery.max() as f64 / 1000.0,
        "errors": errors,
    });
    if json_output {
        println!("{report}");
    } else {
        println!(
            "hook {}: {} streams, {} writers, {written:.1} s: {:.0} writes/s (p50 {:.2} ms, p99 {:.2} ms, {write_errors} \
             errors); {delivered} events delivered, {:.0} events/s, commit-to-delivery p50 {:.2} ms p99 {:.2} ms max \
             {:.2} ms",
            args.target.name(),
            args.streams,
            args.concurrency,
            writes.len() as f64 / written,
            ms(&writes, 0.5),
            ms(&writes, 0.99),
            delivered as f64 / delivered_over,
            ms(&delivery, 0.5),
            ms(&delivery, 0.99),
            delivery.max() as f64 / 1000.0,
        );
        for error in &errors {
            eprintln!("stream failed: {error}");
        }
    }
    anyhow::ensure!(errors.is_empty(), "{} streams failed", errors.len());
    Ok(())
}
