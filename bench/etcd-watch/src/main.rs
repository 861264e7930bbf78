//! `etcd-watch`: etcd's side of `pando bench watch` (cli/src/bench_watch.rs), so the two systems' watch paths can be
//! compared on the same workload. W watchers on one prefix while C writers put to it, for a fixed duration. Prints
//! the events delivered per second (all watchers together), the commit-to-delivery latency (from the write's
//! acknowledgement to each watcher's delivery of that revision; a delivery that beats the acknowledgement counts as
//! 1 µs) and the writes' own latency, so a run with and without watchers shows what watching costs the writers.
//!
//! Same structure as Pando's bench: watchers share connections (64 watch streams per etcd `Client`, each watcher
//! its own stream), writers share connections (32 per `Client`), every connection goes to the first endpoint; the
//! watches start right after a `bench/watch-start` put, writers put `{prefix}{writer}/{seq % 1000}` closed loop, and
//! the watchers get 2 s after the writing to deliver what was written. Output keys match `pando bench watch --json`,
//! plus `system` ("etcd") and `loadgen_cpu_s` (this process's CPU seconds, as in the etcd loadgen).
//!
//!   etcd-watch --endpoints http://127.0.0.1:23781 --watchers 100 --concurrency 16 --duration 10 --json

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, ConnectOptions, GetOptions, WatchClient, WatchOptions};
use hdrhistogram::Histogram;
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
/// Bound on establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one unary request (and on a watch stream's creation: tonic's timeout covers the response headers only,
/// and sends no grpc-timeout to the server, so it does not cut an open watch stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// When each revision was acknowledged to its writer.
type Acked = Arc<Mutex<HashMap<u64, Instant>>>;

#[derive(Parser, Debug)]
#[command(about = "etcd watch load generator: W watchers on one prefix while C writers put to it")]
struct Args {
    /// Comma-separated client URLs; only the first is used (like `pando bench`, which talks to one member).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:23791")]
    endpoints: Vec<String>,
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
    /// Print one JSON line instead of the human summary.
    #[arg(long)]
    json: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// utime+stime of this process in seconds, from /proc/self/stat (assumes CLK_TCK = 100), as in the etcd loadgen.
fn self_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that closes the command name; utime/stime are fields 14/15 overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// One etcd `Client` (one HTTP/2 connection) to `endpoint`, with the connection established: etcd-client connects
/// lazily, so one serializable read makes it up front (the counterpart of Pando's `Client::new` handshake).
async fn connect(endpoint: &str) -> Result<Client, BoxError> {
    let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT);
    let client = match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(options))).await {
        Ok(client) => client?,
        Err(_) => return Err(format!("connecting to {endpoint} timed out").into()),
    };
    let mut kv = client.kv_client();
    let warm = kv.get("bench/watch-start", Some(GetOptions::new().with_serializable()));
    match tokio::time::timeout(REQUEST_TIMEOUT, warm).await {
        Ok(response) => response.map(|_| client).map_err(|error| -> BoxError { format!("{endpoint}: {error}").into() }),
        Err(_) => Err(format!("{endpoint}: first request timed out").into()),
    }
}

/// One watcher: its own watch stream on the prefix from `first`, until `stop_at`. Returns the events delivered and
/// the commit-to-delivery latencies (one per revision), or why the watch failed.
async fn watch_one(
    mut client: WatchClient,
    prefix: String,
    first: i64,
    acked: Acked,
    stop_at: Instant,
) -> Result<(u64, Histogram<u64>), String> {
    let mut latency = histogram();
    let mut events = 0u64;
    let options = WatchOptions::new().with_prefix().with_start_revision(first);
    let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, client.watch(prefix, Some(options))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(format!("creating the watch: {error}")),
        Err(_) => return Err("creating the watch timed out".to_string()),
    };
    let deadline = tokio::time::Instant::from_std(stop_at);
    let mut watch_id = None;
    // Highest revision already recorded: each revision's delivery counts once per watcher.
    let mut recorded = 0i64;
    while Instant::now() < stop_at {
        let response = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => break,
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => return Err(format!("watch stream ended early ({events} events)")),
            Ok(Err(error)) => return Err(format!("watch failed after {events} events: {error}")),
        };
        if response.created() {
            watch_id = Some(response.watch_id());
        }
        if response.canceled() {
            return Err(format!(
                "watch canceled after {events} events: {} (compact revision {})",
                response.cancel_reason(),
                response.compact_revision()
            ));
        }
        if response.events().is_empty() {
            continue;
        }
        let now = Instant::now();
        events += response.events().len() as u64;
        let acked_at = acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // One response may carry several revisions (in order); each gets one latency sample.
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision <= recorded {
                continue;
            }
            recorded = revision;
            let at = acked_at.get(&(revision as u64)).copied();
            let micros = at.map_or(1, |at| now.saturating_duration_since(at).as_micros() as u64);
            latency.saturating_record(micros.max(1));
        }
        drop(acked_at);
    }
    if let Some(id) = watch_id {
        // Only queues the cancel request on the stream; dropping the stream then closes it.
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.cancel(id)).await;
    }
    Ok((events, latency))
}

/// Runs the bench; returns whether every watch succeeded.
async fn run(args: Args) -> Result<bool, BoxError> {
    if args.watchers > BENCH_WATCHERS_MAX {
        return Err(format!("--watchers must be 0..={BENCH_WATCHERS_MAX}").into());
    }
    if !(1..=4_096).contains(&args.concurrency) {
        return Err("--concurrency must be 1..=4096".into());
    }
    if !(1..=3_600).contains(&args.duration) {
        return Err("--duration must be 1..=3600 seconds".into());
    }
    let endpoint = args.endpoints.first().filter(|e| !e.is_empty()).ok_or("--endpoints is empty")?.clone();
    let cpu0 = self_cpu_seconds();
    let acked: Acked = Arc::default();
    let mut watch_clients = Vec::new();
    for _ in 0..args.watchers.div_ceil(WATCHES_PER_CONNECTION_MAX) {
        watch_clients.push(connect(&endpoint).await?);
    }
    // The watches start right after this write, so each sees exactly the bench's writes.
    let first: i64 = match watch_clients.first() {
        Some(client) => {
            let mut kv = client.kv_client();
            let put = kv.put("bench/watch-start", "", None);
            let response =
                tokio::time::timeout(REQUEST_TIMEOUT, put).await.map_err(|_| "bench/watch-start put timed out")??;
            response.header().ok_or("bench/watch-start put: response without a header")?.revision() + 1
        }
        None => 0,
    };
    let writing = Duration::from_secs(args.duration);
    let stop_at = Instant::now() + writing + Duration::from_millis(DRAIN_MS);
    let mut watchers = Vec::new();
    for watcher in 0..args.watchers {
        let client = watch_clients[watcher / WATCHES_PER_CONNECTION_MAX].watch_client();
        let (acked, prefix) = (acked.clone(), args.prefix.clone());
        watchers.push(tokio::spawn(watch_one(client, prefix, first, acked, stop_at)));
    }
    let mut write_clients = Vec::new();
    for _ in 0..args.concurrency.div_ceil(WRITERS_PER_CONNECTION_MAX) {
        write_clients.push(connect(&endpoint).await?);
    }
    let value = vec![b'x'; args.value_size];
    let started = Instant::now();
    let deadline = started + writing;
    let mut writers = Vec::new();
    for writer in 0..args.concurrency {
        let mut kv = write_clients[writer / WRITERS_PER_CONNECTION_MAX].kv_client();
        let (acked, value, prefix) = (acked.clone(), value.clone(), args.prefix.clone());
        writers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let key = format!("{prefix}{writer}/{}", sequence % 1_000);
                let begun = Instant::now();
                // Bounded by the connection's request timeout (REQUEST_TIMEOUT).
                match kv.put(key, value.clone(), None).await {
                    Ok(response) => {
                        let now = Instant::now();
                        if let Some(header) = response.header() {
                            let revision = header.revision() as u64;
                            acked.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(revision, now);
                        }
                        latency.saturating_record((now - begun).as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (latency, errors)
        }));
    }
    let mut writes = histogram();
    let mut write_errors = 0u64;
    for writer in writers {
        let (latency, errors) = writer.await?;
        writes.add(&latency)?;
        write_errors += errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut delivery = histogram();
    let mut delivered = 0u64;
    let mut watch_errors: Vec<String> = Vec::new();
    for watcher in watchers {
        match watcher.await? {
            Ok((events, latency)) => {
                delivered += events;
                delivery.add(&latency)?;
            }
            Err(error) => watch_errors.push(error),
        }
    }
    drop((watch_clients, write_clients));
    let loadgen_cpu_s = match (cpu0, self_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let ms = |histogram: &Histogram<u64>, quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let report = json!({
        "op": "watch",
        "system": "etcd",
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
        "loadgen_cpu_s": loadgen_cpu_s,
    });
    if args.json {
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
    }
    for error in &watch_errors {
        eprintln!("watch failed: {error}");
    }
    if !watch_errors.is_empty() {
        eprintln!("{} watches failed", watch_errors.len());
    }
    Ok(watch_errors.is_empty())
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("etcd-watch failed: {error}");
            std::process::exit(1);
        }
    }
}
