//! `pando bench`: a closed-loop load generator. N workers each keep one request outstanding for a fixed duration;
//! latencies go into an HDR histogram, and the run prints throughput and percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use pando_client::pando_protocol::coord::{CoordRequest, CoordResponse, CounterValue};
use pando_client::pando_protocol::kv::{Consistency, bytes};
use pando_client::{Client, ClientOptions};
use serde_json::json;

/// Workers sharing one connection (QUIC multiplexes their streams).
const WORKERS_PER_CONNECTION_MAX: usize = 32;
/// Longest run accepted, so a typo cannot start an endless load.
const BENCH_DURATION_SECONDS_MAX: u64 = 3_600;
/// Most workers accepted.
const BENCH_CONCURRENCY_MAX: usize = 4_096;
/// How long a contended lock acquisition may wait on the node.
const LOCK_WAIT_MS: u32 = 10_000;
/// Highest latency the histogram records exactly (microseconds).
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Writes of random keys.
    Put(BenchArgs),
    /// Linearizable reads of keys written beforehand.
    Get(BenchArgs),
    /// Counter increments, spread over `--keys` counters (`--keys 1`: one hot counter).
    Counter(BenchArgs),
    /// Lock acquire+release cycles. Each worker has its own lock unless `--keys 1`, when all contend for one lock
    /// (acquisitions wait on the node for the release).
    Lock(BenchArgs),
    /// One queue, `--concurrency` producers enqueueing and as many consumers each dequeueing (parked on the node
    /// while the queue is empty) and acking; the ops are messages through (dequeue+ack), the enqueues are reported
    /// beside them.
    Queue(BenchArgs),
    /// Blob add, node-to-node fetch and get of one file, against BLAKE3 hashing of the file and a raw iroh stream of
    /// the same size.
    Blob(crate::bench_blob::BlobBenchArgs),
    /// A plugin's install-to-first-call time, warm call latency and calls/s with 1 and 4 instances.
    Plugin(crate::bench_plugin::PluginBenchArgs),
    /// `--watchers` watches on one prefix while `--concurrency` writers put to it: events/s delivered,
    /// commit-to-delivery latency, and the writes' latency (run with `--watchers 0` for the baseline).
    Watch(crate::bench_watch::WatchBenchArgs),
    /// Hook streams (`--target stream --streams N`) or a durable shell hook (`--target exec`) on the `kv.put` subjects
    /// of a prefix while writers put to it: events/s, commit-to-delivery latency, and the writes' latency.
    Hook(crate::bench_hook::HookBenchArgs),
    /// `--count` no-op jobs (`true` shell jobs, or `--kind plugin`) through the nodes' workers: submits/s, completed/s,
    /// and each job's wait for a claim and its claim-to-completion time.
    Job(crate::bench_job::JobBenchArgs),
}

/// How long a bench consumer's dequeue may wait on the node for a message.
const DEQUEUE_WAIT_MS: u32 = 1_000;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent workers, each with one request outstanding.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys the workers spread over.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Key prefix, so a bench run does not touch application keys.
    #[arg(long, default_value = "bench/")]
    prefix: String,
    /// `get`: serializable reads, served from the applied state of whichever member a connection is on (they may
    /// lag the leader), instead of linearizable ones.
    #[arg(long)]
    stale: bool,
    /// Which members the connections go to: `leader` (every connection starts at the ticket's first node and follows
    /// the leader), or `all` (connection i starts at member i mod n; stale reads stay there, writes and linearizable
    /// reads are redirected to the leader).
    #[arg(long, value_enum, default_value_t = Endpoints::Leader)]
    endpoints: Endpoints,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoints {
    Leader,
    All,
}

struct WorkerResult {
    /// Whether the worker produced (queue bench): its latencies are reported beside the main ones.
    producer: bool,
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(ticket: &str, options: ClientOptions, command: BenchCommand, json_output: bool) -> anyhow::Result<()> {
    let (operation, args) = match command {
        BenchCommand::Blob(args) => {
            let client = Client::new(ticket, options).await?;
            let result = crate::bench_blob::run(&client, args, json_output).await;
            client.close().await;
            return result;
        }
        BenchCommand::Plugin(args) => {
            let client = std::sync::Arc::new(Client::new(ticket, options).await?);
            let result = crate::bench_plugin::run(client.clone(), args, json_output).await;
            client.close().await;
            return result;
        }
        BenchCommand::Watch(args) => return crate::bench_watch::run(ticket, options, args, json_output).await,
        BenchCommand::Hook(args) => return crate::bench_hook::run(ticket, options, args, json_output).await,
        BenchCommand::Job(args) => return crate::bench_job::run(ticket, options, args, json_output).await,
        BenchCommand::Put(args) => ("put", args),
        BenchCommand::Get(args) => ("get", args),
        BenchCommand::Counter(args) => ("counter", args),
        BenchCommand::Lock(args) => ("lock", args),
        BenchCommand::Queue(args) => ("queue", args),
    };
    anyhow::ensure!(
        args.concurrency >= 1 && args.concurrency <= BENCH_CONCURRENCY_MAX,
        "--concurrency must be 1..={BENCH_CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        args.duration >= 1 && args.duration <= BENCH_DURATION_SECONDS_MAX,
        "--duration must be 1..={BENCH_DURATION_SECONDS_MAX} seconds"
    );
    anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
    let workers_count = if operation == "queue" { args.concurrency * 2 } else { args.concurrency };
    let connections = workers_count.div_ceil(WORKERS_PER_CONNECTION_MAX);
    let members = Members::discover(ticket, &options).await?;
    let mut clients = Vec::with_capacity(connections);
    for connection in 0..connections {
        let client = match args.endpoints {
            Endpoints::Leader => Client::new(ticket, options.clone()).await?,
            Endpoints::All => members.client_starting_at(connection, &options).await?,
        };
        clients.push(Arc::new(client));
    }
    let value = vec![b'x'; args.value_size];
    if operation == "get" {
        // Reads need something to read: write every key once.
        let preload = args.keys.min(100_000);
        for index in 0..preload {
            clients[0].put(key(&args.prefix, index).as_bytes(), &value).await?;
        }
    }
    // Lock cycles need a lease per worker, alive for the whole run.
    let mut leases = Vec::new();
    if operation == "lock" {
        for worker in 0..args.concurrency {
            let ttl_ms = (args.duration + 60) * 1000;
            match clients[worker % connections].coord(CoordRequest::lease_grant(ttl_ms)).await? {
                CoordResponse::Lease { lease } => leases.push(lease.id),
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
    }
    let queue = format!("{}queue", args.prefix);
    if operation == "queue" {
        let create = CoordRequest::QueueCreate { name: bytes(queue.clone()), visibility_ms: 30_000, max_deliveries: 5 };
        clients[0].coord(create).await?;
    }
    let nodes_cpu_before = members.cpu_ms(&options).await;
    let client_cpu_before = client_cpu_ms();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let acks = Arc::new(AckGaps::default());
    let consistency = if args.stale { Consistency::Stale } else { Consistency::Linearizable };
    let mut workers = Vec::with_capacity(workers_count);
    for worker in 0..workers_count {
        let client = clients[worker % connections].clone();
        let value = value.clone();
        let prefix = args.prefix.clone();
        let keys = if operation == "get" { args.keys.min(100_000) } else { args.keys };
        let lease = leases.get(worker).copied().unwrap_or(0);
        let producer = operation == "queue" && worker < args.concurrency;
        let queue = bytes(queue.clone());
        let acks = acks.clone();
        workers.push(tokio::spawn(async move {
            let mut result = WorkerResult {
                producer,
                histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"),
                errors: 0,
                first_error: None,
            };
            let mut index = worker as u64;
            while Instant::now() < deadline {
                index = index.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = key(&prefix, index % keys);
                let begun = Instant::now();
                let outcome = match operation {
                    "put" => client.put(key.as_bytes(), &value).await.map(|_| true),
                    "get" => client.get(key.as_bytes(), consistency).await.map(|_| true),
                    "counter" => {
                        let request =
                            CoordRequest::CounterAdd { name: bytes(key), delta: 1, initial: CounterValue::Unsigned(0) };
                        client.coord(request).await.map(|_| true)
                    }
                    "queue" if producer => {
                        let request = CoordRequest::QueueEnqueue {
                            name: queue.clone(),
                            body: bytes(value.clone()),
                            dedup_id: None,
                            group: None,
                        };
                        client.coord(request).await.map(|_| true)
                    }
                    "queue" => consume(&client, &queue).await,
                    _ => lock_cycle(&client, &prefix, worker, keys, lease).await.map(|_| true),
                };
                match outcome {
                    // A dequeue that waited and got nothing is not an op.
                    Ok(false) => {}
                    Ok(true) => {
                        let micros = begun.elapsed().as_micros() as u64;
                        result.histogram.saturating_record(micros.max(1));
                        acks.record(started.elapsed());
                    }
                    Err(error) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
            }
            result
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut produced = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut errors = 0;
    let mut first_error = None;
    for worker in workers {
        let result = worker.await?;
        if result.producer {
            produced.add(&result.histogram)?;
        } else {
            histogram.add(&result.histogram)?;
        }
        errors += result.errors;
        if first_error.is_none() {
            first_error = result.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu_cores = client_cpu_ms().zip(client_cpu_before).map(|(after, before)| cores(after - before, elapsed));
    let nodes_cpu_after = members.cpu_ms(&options).await;
    let node_cpu_cores: serde_json::Map<String, serde_json::Value> = nodes_cpu_after
        .iter()
        .filter_map(|(node_id, after)| {
            let before = nodes_cpu_before.get(node_id)?;
            Some((node_id.to_string(), json!(cores(after.saturating_sub(*before), elapsed))))
        })
        .collect();
    for client in &clients {
        client.close().await;
    }
    let ops = histogram.len();
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let report = json!({
        "operation": operation,
        "concurrency": args.concurrency,
        "connections": connections,
        "value_size": args.value_size,
        "duration_s": elapsed,
        "ops": ops,
        "errors": errors,
        "ops_per_s": ops as f64 / elapsed,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": histogram.max() as f64 / 1000.0,
        "max_gap_ms": acks.longest_gap(Duration::from_secs_f64(elapsed)).as_secs_f64() * 1000.0,
        "stale": args.stale,
        "endpoints": format!("{:?}", args.endpoints).to_lowercase(),
        "client_cpu_cores": client_cpu_cores,
        "member_cpu_cores": node_cpu_cores,
        "first_error": first_error,
    });
    let enqueues = (operation == "queue").then(|| {
        let ms = |quantile: f64| produced.value_at_quantile(quantile) as f64 / 1000.0;
        json!({
            "ops": produced.len(),
            "ops_per_s": produced.len() as f64 / elapsed,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
        })
    });
    let mut report = report;
    if let Some(enqueues) = &enqueues {
        report["enqueues"] = enqueues.clone();
    }
    if json_output {
        println!("{report}");
    } else {
        println!(
            "{operation}: {} clients, {}{:.1} s: {ops} ops, {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, {errors} errors",
            args.concurrency,
            if matches!(operation, "put" | "get") { format!("{} B values, ", args.value_size) } else { String::new() },
            elapsed,
            ops as f64 / elapsed,
            ms(0.50),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0,
        );
        if let Some(enqueues) = &enqueues {
            println!(
                "  enqueues: {} ops, {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
                enqueues["ops"],
                enqueues["ops_per_s"].as_f64().unwrap_or_default(),
                enqueues["p50_ms"].as_f64().unwrap_or_default(),
                enqueues["p99_ms"].as_f64().unwrap_or_default(),
            );
        }
        println!(
            "  longest time without an acknowledgement: {:.1} ms; CPU cores used: client {}, {}",
            report["max_gap_ms"].as_f64().unwrap_or_default(),
            client_cpu_cores.map_or("unknown".to_string(), |cores| format!("{cores:.2}")),
            if node_cpu_cores.is_empty() {
                "nodes unknown".to_string()
            } else {
                node_cpu_cores
                    .iter()
                    .map(|(node_id, cores)| format!("node {node_id} {:.2}", cores.as_f64().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        if let Some(error) = &first_error {
            println!("first error: {error}");
        }
    }
    anyhow::ensure!(
        ops > 0,
        "no request succeeded{}",
        first_error.map(|error| format!(": {error}")).unwrap_or_default()
    );
    Ok(())
}

/// One acquire and release of a lock: the worker's own lock, or the one shared lock when `keys` is 1.
async fn lock_cycle(
    client: &Client,
    prefix: &str,
    worker: usize,
    keys: u64,
    lease: u64,
) -> Result<(), pando_client::ClientError> {
    let name = if keys == 1 { format!("{prefix}lock") } else { format!("{prefix}lock/{worker}") };
    let acquire = CoordRequest::LockAcquire { name: bytes(name.clone()), lease, wait_ms: LOCK_WAIT_MS };
    let token = match client.coord(acquire).await? {
        CoordResponse::Lock { lock } => lock.holder.map_or(0, |holder| holder.token),
        _ => 0,
    };
    client.coord(CoordRequest::LockRelease { name: bytes(name), lease, token }).await.map(|_| ())
}

/// One dequeue (parked on the node while the queue is empty) and the ack of what it got; `false` if it got nothing.
async fn consume(
    client: &Client,
    queue: &pando_client::pando_protocol::kv::Bytes,
) -> Result<bool, pando_client::ClientError> {
    let dequeue = CoordRequest::QueueDequeue {
        name: queue.clone(),
        count: 1,
        visibility_ms: 0,
        consumer: bytes("bench"),
        wait_ms: DEQUEUE_WAIT_MS,
    };
    let CoordResponse::Delivered { messages } = client.coord(dequeue).await? else { return Ok(false) };
    let Some(message) = messages.first() else { return Ok(false) };
    let ack =
        CoordRequest::QueueAck { name: queue.clone(), id: message.id, token: message.token().unwrap_or_default() };
    client.coord(ack).await.map(|_| true)
}

fn key(prefix: &str, index: u64) -> String {
    format!("{prefix}{index:016x}")
}

/// The longest stretch of a run without an acknowledged operation (across all workers): after `kill -9` of the leader,
/// the time until the first write acknowledged through the new one.
#[derive(Default)]
struct AckGaps {
    /// Microseconds from the start of the run to the latest acknowledgement.
    last_us: std::sync::atomic::AtomicU64,
    longest_us: std::sync::atomic::AtomicU64,
}

impl AckGaps {
    fn record(&self, since_start: Duration) {
        use std::sync::atomic::Ordering;
        let now = since_start.as_micros() as u64;
        let previous = self.last_us.fetch_max(now, Ordering::AcqRel);
        self.longest_us.fetch_max(now.saturating_sub(previous), Ordering::AcqRel);
    }

    /// The longest gap, the one from the last acknowledgement to the end of the run included.
    fn longest_gap(&self, run: Duration) -> Duration {
        use std::sync::atomic::Ordering;
        let tail = (run.as_micros() as u64).saturating_sub(self.last_us.load(Ordering::Acquire));
        Duration::from_micros(self.longest_us.load(Ordering::Acquire).max(tail))
    }
}

/// The cluster's members as the ticket's node sees them, to spread connections over and to ask for their CPU time.
struct Members {
    ticket: pando_client::pando_protocol::ticket::Ticket,
    nodes: Vec<pando_client::pando_protocol::ticket::TicketNode>,
}

impl Members {
    async fn discover(ticket: &str, options: &ClientOptions) -> anyhow::Result<Members> {
        let client = Client::new(ticket, options.clone()).await?;
        let status = client.cluster_status().await;
        let ticket = client.ticket().clone();
        client.close().await;
        let mut nodes = Vec::new();
        // A token that may not read the cluster status still benches: without members, nodes' CPU is unknown.
        for member in status.map(|status| status.members).unwrap_or_default() {
            let Ok(public_key) = data_encoding::HEXLOWER.decode(member.public_key.as_bytes()) else { continue };
            let node = pando_client::pando_protocol::cluster::MemberNode {
                public_key: public_key.into(),
                addrs: member.addrs,
            };
            nodes.push(pando_client::pando_protocol::ticket::TicketNode { node_id: member.node_id, node });
        }
        Ok(Members { ticket, nodes })
    }

    /// A client whose first node is member `index` mod n (the others follow, for failover).
    async fn client_starting_at(&self, index: usize, options: &ClientOptions) -> anyhow::Result<Client> {
        let mut ticket = self.ticket.clone();
        if !self.nodes.is_empty() {
            let mut nodes = self.nodes.clone();
            nodes.rotate_left(index % self.nodes.len());
            ticket.nodes = nodes;
        }
        Ok(Client::new(&ticket.encode(), options.clone()).await?)
    }

    /// Each member's process CPU time in milliseconds, for the members that answer and report it.
    async fn cpu_ms(&self, options: &ClientOptions) -> std::collections::BTreeMap<u64, u64> {
        let mut cpu = std::collections::BTreeMap::new();
        for node in &self.nodes {
            let mut ticket = self.ticket.clone();
            ticket.nodes = vec![node.clone()];
            let Ok(client) = Client::new(&ticket.encode(), options.clone()).await else { continue };
            if let Ok(status) = client.cluster_status().await
                && let Some(ms) = status.process_cpu_ms
            {
                cpu.insert(node.node_id, ms);
            }
            client.close().await;
        }
        cpu
    }
}

/// This process's CPU time in milliseconds, where the platform says (Linux).
pub(crate) fn client_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    pando_client::pando_protocol::cluster::cpu_ms_from_proc_stat(&stat)
}

fn cores(cpu_ms: u64, elapsed_s: f64) -> f64 {
    cpu_ms as f64 / 1000.0 / elapsed_s.max(f64::EPSILON)
}
