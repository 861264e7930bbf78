//! `pando bench watch`: W watchers on one prefix while C writers put to it, for a fixed duration. Prints the events
//! delivered per second (all watchers together), the commit-to-delivery latency (from the write's acknowledgement to
//! each watcher's delivery of that revision; a delivery that beats the acknowledgement counts as 1 µs) and the
//! writes' own latency, so a run with and without watchers shows what watching costs the writers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use pando_client::pando_protocol::watch::{WatchRange, WatchRequest};
use pando_client::{Client, ClientOptions, WatchItem};
use serde_json::json;

/// Watches sharing one connection (each is a stream of its own).
const WATCHES_PER_CONNECTION_MAX: usize = 64;
/// Writers sharing one connection.
const WRITERS_PER_CONNECTION_MAX: usize = 32;
/// Most watchers accepted.
const BENCH_WATCHERS_MAX: usize = 10_000;
/// Highest latency recorded exactly (microseconds).
const LATENCY_US_MAX: u64 = 60_000_000;
/// How long the watchers get to deliver what was written before the run's end.
const DRAIN_MS: u64 = 2_000;

#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    /// Watchers, each with its own watch on the prefix.
    #[arg(long, default_value_t = 1)]
    watchers: usize,
    /// Concurrent writers, each with one put outstanding.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The prefix written and watched.
    #[arg(long, default_value = "bench/watch/")]
    prefix: String,
}

/// When each revision was acknowledged to its writer: a monotonic instant (for readers in this process) and the wall
/// clock in microseconds (for what another process records).
pub(crate) type Acked = Arc<Mutex<HashMap<u64, (Instant, u64)>>>;

/// `concurrency` writers putting `value_size`-byte values under `prefix` (a thousand keys each) until `deadline`,
/// each pausing `pause` between puts, recording every acknowledged revision in `acked`. Answers the writes' latency,
/// their errors, and the writers' clients (to close once the caller is done).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_until(
    ticket: &str,
    options: &ClientOptions,
    concurrency: usize,
    prefix: &str,
    value_size: usize,
    deadline: Instant,
    pause: Duration,
    acked: Acked,
) -> anyhow::Result<(Histogram<u64>, u64, Vec<Arc<Client>>)> {
    let mut clients = Vec::new();
    for _ in 0..concurrency.div_ceil(WRITERS_PER_CONNECTION_MAX) {
        clients.push(Arc::new(Client::new(ticket, options.clone()).await?));
    }
    let value = vec![b'x'; value_size];
    let mut writers = Vec::new();
    for writer in 0..concurrency {
        let client = clients[writer / WRITERS_PER_CONNECTION_MAX].clone();
        let (acked, value, prefix) = (acked.clone(), value.clone(), prefix.to_string());
        writers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let key = format!("{prefix}{writer}/{}", sequence % 1_000);
                let begun = Instant::now();
                match client.put(key.as_bytes(), &value).await {
                    Ok(revision) => {
                        let now = Instant::now();
                        let wall = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |since| since.as_micros() as u64);
                        acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(revision, (now, wall));
                        latency.saturating_record((now - begun).as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            (latency, errors)
        }));
    }
    let mut writes = histogram();
    let mut write_errors = 0;
    for writer in writers {
        let (latency, errors) = writer.await?;
        writes.add(&latency)?;
        write_errors += errors;
    }
    Ok((writes, write_errors, clients))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

pub async fn run(ticket: &str, options: ClientOptions, args: WatchBenchArgs, json_output: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.watchers <= BENCH_WATCHERS_MAX, "--watchers must be 0..={BENCH_WATCHERS_MAX}");
    anyhow::ensure!((1..=4_096).contains(&args.concurrency), "--concurrency must be 1..=4096");
    anyhow::ensure!((1..=3_600).contains(&args.duration), "--duration must be 1..=3600 seconds");
    // When each revision was acknowledged to its writer.
    let acked: Acked = Arc::default();
    let mut watch_clients = Vec::new();
    for _ in 0..args.watchers.div_ceil(WATCHES_PER_CONNECTION_MAX) {
        watch_clients.push(Arc::new(Client::new(ticket, options.clone()).await?));
    }
    // The watches start right after this write, so each sees exactly the bench's writes.
    let first = match watch_clients.first() {
        Some(client) => client.put(b"bench/watch-start", b"").await? + 1,
        None => 0,
    };
    let writing = Duration::from_secs(args.duration);
    let stop_at = Instant::now() + writing + Duration::from_millis(DRAIN_MS);
    let mut watchers = Vec::new();
    for watcher in 0..args.watchers {
        let client = watch_clients[watcher / WATCHES_PER_CONNECTION_MAX].clone();
        let acked = acked.clone();
        let request = WatchRequest {
            range: WatchRange::Prefix(args.prefix.clone().into_bytes().into()),
            start_revision: first,
            prev_kv: false,
            only: None,
            progress_ms: 200,
        };
        watchers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut events = 0u64;
            let mut watch = client.watch(request);
            while Instant::now() < stop_at {
                match watch.next().await {
                    Ok(WatchItem::Events { revision, events: delivered }) => {
                        let now = Instant::now();
                        events += delivered.len() as u64;
                        let at = acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&revision).copied();
                        let micros = at.map_or(1, |(at, _)| now.saturating_duration_since(at).as_micros() as u64);
                        latency.saturating_record(micros.max(1));
                    }
                    // Progress, and re-reads (not asked for here).
                    Ok(WatchItem::Progress { .. } | WatchItem::Reread { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            watch.cancel().await;
            Ok((events, latency))
        }));
    }
    let started = Instant::now();
    let (writes, write_errors, write_clients) = write_until(
        ticket,
        &options,
        args.concurrency,
        &args.prefix,
        args.value_size,
        started + writing,
        Duration::ZERO,
        acked.clone(),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut delivery = histogram();
    let mut delivered = 0u64;
    let mut watch_errors = Vec::new();
    for watcher in watchers {
        match watcher.await? {
            Ok((events, latency)) => {
                delivered += events;
                delivery.add(&latency)?;
            }
            Err(error) => watch_errors.push(error.to_string()),
        }
    }
    for client in watch_clients.iter().chain(&write_clients) {
        client.close().await;
    }
    let ms = |histogram: &Histogram<u64>, quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let report = json!({
        "op": "watch",
        "watchers": args.watchers,
        "writers": args.concurrency,
        "duration_s": elapsed,
        "writes_per_s": writes.len() as f64 / elapsed,
        "write_p50_ms": ms(&writes, 0.5),
        "write_p99_ms": ms(&writes, 0.99),
        "write_errors": write_errors,
        "events_delivered": delivered,
        "events_per_s": delivered as f64 / elapsed,
        "delivery_p50_ms": ms(&delivery, 0.5),
        "delivery_p99_ms": ms(&delivery, 0.99),
        "delivery_max_ms": delivery.max() as f64 / 1000.0,
        "watch_errors": watch_errors,
        // The whole process's CPU (watchers and writers alike), as bench/etcd-watch reports its own.
        "loadgen_cpu_s": crate::bench::client_cpu_ms().map(|ms| ms as f64 / 1000.0),
    });
    if json_output {
        println!("{report}");
    } else {
        println!(
            "{} watchers, {} writers, {elapsed:.1} s: {:.0} writes/s (p50 {:.2} ms, p99 {:.2} ms, {write_errors} errors); \
             {delivered} events delivered, {:.0} events/s, commit-to-delivery p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            args.watchers,
            args.concurrency,
            writes.len() as f64 / elapsed,
            ms(&writes, 0.5),
            ms(&writes, 0.99),
            delivered as f64 / elapsed,
            ms(&delivery, 0.5),
            ms(&delivery, 0.99),
            delivery.max() as f64 / 1000.0,
        );
        for error in &watch_errors {
            eprintln!("watch failed: {error}");
        }
    }
    anyhow::ensure!(watch_errors.is_empty(), "{} watches failed", watch_errors.len());
    Ok(())
}
