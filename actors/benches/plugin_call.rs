//! Warm call latency of the `echo` plugin: a direct extism call against the same call through a node's plugin pool
//! (PluginSupervisor, bounded queue, PluginActor worker), and calls/s of the pool with 1 and 4 instances.
//!
//! `cargo bench -p pando-actors --bench plugin_call` (release). `PANDO_BENCH_CALLS` sets the sequential calls
//! (default 20000), `PANDO_BENCH_MS` the throughput window (default 3000). Under `cargo test --benches` (cargo passes
//! no `--bench`, as criterion's test mode also keys on) it runs a smoke pass: 100 calls, 200 ms windows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pando_actors::clock::Clock;
use pando_actors::plugins::{PluginConfig, PluginSupervisor, PluginsMsg};
use pando_actors::tree::Handles;
use pando_protocol::blob::BlobHash;
use pando_protocol::plugin::{PluginManifest, PluginRecord};
use ractor::Actor;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn report(what: &str, histogram: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{what:<34} p50 {:>7.1} us  p99 {:>7.1} us  max {:>8.1} us  ({:.0} calls/s sequential)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        histogram.len() as f64 / elapsed.as_secs_f64()
    );
}

fn manifest(instances: u32) -> PluginManifest {
    PluginManifest { instances, queue: 1024, ..PluginManifest::new("echo", "1.0.0") }
}

fn main() {
    let wasm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wasm/echo.wasm")).expect("echo.wasm");
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let calls = env("PANDO_BENCH_CALLS", if measuring { 20_000 } else { 100 });
    let window = Duration::from_millis(env("PANDO_BENCH_MS", if measuring { 3_000 } else { 200 }));
    if !measuring {
        println!("smoke pass (no --bench): numbers are not measurements");
    }
    let input = vec![b'x'; 64];
    println!("echo, {}-byte input, {calls} sequential calls each", input.len());

    // Direct: one extism instance on this thread, with the same limits the node sets (memory, timeout, and the
    // default fuel), then the same without fuel metering (a manifest with `fuel = 0`).
    let defaults = manifest(1);
    for (what, fuel) in [("direct extism call", Some(defaults.fuel)), ("direct extism call, no fuel", None)] {
        let extism_manifest = extism::Manifest::new([extism::Wasm::data(wasm.clone())])
            .with_memory_max(defaults.memory_pages)
            .with_timeout(Duration::from_millis(defaults.timeout_ms.into()));
        let mut builder = extism::PluginBuilder::new(extism_manifest).with_wasi(false).with_cache_disabled();
        if let Some(fuel) = fuel {
            builder = builder.with_fuel_limit(fuel);
        }
        let mut direct = builder.build().expect("echo compiles");
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        let started = Instant::now();
        for _ in 0..calls {
            let call = Instant::now();
            let output: Vec<u8> = direct.call("echo", input.as_slice()).expect("echo answers");
            histogram.record(call.elapsed().as_nanos() as u64).unwrap();
            assert_eq!(output.len(), input.len());
        }
        report(what, &histogram, started.elapsed());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for instances in [1u32, 4] {
            let handles = Handles::new(1, []);
            let args = handles.plugins_args(1, Clock::Wall, PluginConfig::default(), [0; 32]);
            let (supervisor, _) = Actor::spawn(None, PluginSupervisor, args).await.unwrap();
            let record = PluginRecord {
                manifest: manifest(instances),
                wasm: BlobHash([0; 32]),
                wasm_size: 0,
                generation: 1,
                enabled: true,
                installed_ms: 0,
                updated_ms: 0,
            };
            let loading = Instant::now();
            supervisor.cast(PluginsMsg::Preload { record, wasm: wasm.clone() }).unwrap();
            let routes = handles.plugins.routes().clone();
            while routes.call("echo", "echo", input.clone(), Duration::from_secs(5), None).await.is_err() {
                tokio::task::yield_now().await;
            }
            println!("{instances} instance(s): compile + start + first call {:?}", loading.elapsed());

            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let started = Instant::now();
            for _ in 0..calls {
                let call = Instant::now();
                let (output, _) =
                    routes.call("echo", "echo", input.clone(), Duration::from_secs(5), None).await.unwrap();
                histogram.record(call.elapsed().as_nanos() as u64).unwrap();
                assert_eq!(output.len(), input.len());
            }
            report(&format!("in-process pool, {instances} instance(s)"), &histogram, started.elapsed());

            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let mut callers = Vec::new();
            for _ in 0..16 {
                let routes = routes.clone();
                let input = input.clone();
                let stop = stop.clone();
                let done = done.clone();
                callers.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if routes.call("echo", "echo", input.clone(), Duration::from_secs(5), None).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            tokio::time::sleep(window).await;
            stop.store(true, Ordering::Relaxed);
            for caller in callers {
                caller.await.unwrap();
            }
            println!(
                "in-process pool, {instances} instance(s), 16 callers: {:.0} calls/s",
                done.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
            );
            supervisor.stop(None);
        }
    });
}
