//! `pando bench plugin`: a plugin through the client and a node, from install to calls. For each instance count it
//! installs the wasm (`echo.wasm` by default) under a bench name, measures install-to-first-call through the node
//! the client talks to, the warm latency of sequential calls, and calls/s with concurrent callers, then removes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use pando_client::pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_client::pando_protocol::plugin::{PluginManifest, PluginRequest, PluginResponse};
use pando_client::{Client, ClientError};
use serde_json::json;

use crate::output::print_json;

#[derive(Debug, Args)]
pub struct PluginBenchArgs {
    /// The plugin (it must export `--function`, answering its input).
    #[arg(long)]
    wasm: PathBuf,
    #[arg(long, default_value = "echo")]
    function: String,
    /// Instance counts to measure, each installed afresh.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    instances: Vec<u32>,
    /// Sequential calls for the latency figures.
    #[arg(long, default_value_t = 2_000)]
    calls: u64,
    /// Concurrent callers for the throughput figure.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of the throughput window.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Bytes of input per call.
    #[arg(long, default_value_t = 64)]
    input_size: usize,
}

fn micros(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

pub async fn run(client: Arc<Client>, args: PluginBenchArgs, json_output: bool) -> anyhow::Result<()> {
    anyhow::ensure!((1..=256).contains(&args.concurrency), "--concurrency must be 1..=256");
    anyhow::ensure!((1..=600).contains(&args.duration), "--duration must be 1..=600 seconds");
    anyhow::ensure!(args.calls >= 1 && args.calls <= 1_000_000, "--calls must be 1..=1000000");
    let input = vec![b'x'; args.input_size];
    let add = BlobRequest::Add { replicas: None, pin: false, expected: None, attach: None, ack_copies: None };
    let started = Instant::now();
    let hash = match crate::blob::upload(&client, &args.wasm, add).await? {
        BlobResponse::Added { hash, .. } => hash,
        other => anyhow::bail!("unexpected response {other:?}"),
    };
    let upload = started.elapsed();
    let mut results = Vec::new();
    for instances in args.instances.iter().copied() {
        let name = format!("bench-{}-{instances}", args.function.to_lowercase().replace('_', "-"));
        let manifest = PluginManifest { instances, queue: 1024, ..PluginManifest::new(name.clone(), "1") };
        manifest.validate().map_err(ClientError::Wire)?;
        // Cold: from the install request to the first answer of this node (every node loads it meanwhile).
        let cold = Instant::now();
        match client.plugin(PluginRequest::Install { manifest, wasm: hash }).await? {
            PluginResponse::Record(_) => {}
            other => anyhow::bail!("unexpected response {other:?}"),
        }
        let installed = cold.elapsed();
        loop {
            match client.plugin_call(&name, &args.function, &input).await {
                Ok(_) => break,
                Err(ClientError::Wire(error)) if cold.elapsed() < Duration::from_secs(60) => {
                    if !matches!(error.code.as_str(), "NOT_FOUND" | "UNAVAILABLE") {
                        return Err(ClientError::Wire(error).into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        let first_call = cold.elapsed();

        let mut latency = Histogram::<u64>::new(3)?;
        for _ in 0..args.calls {
            let call = Instant::now();
            let (output, _, _) = client.plugin_call(&name, &args.function, &input).await?;
            latency.record(call.elapsed().as_nanos() as u64)?;
            anyhow::ensure!(output.len() == input.len(), "the plugin did not echo its input");
        }

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for _ in 0..args.concurrency {
            let (client, name, function, input) = (client.clone(), name.clone(), args.function.clone(), input.clone());
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            callers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.plugin_call(&name, &function, &input).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        let window = Duration::from_secs(args.duration);
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        for caller in callers {
            caller.await?;
        }
        let throughput = done.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
        client.plugin(PluginRequest::Remove { name: name.clone() }).await?;
        let result = json!({
            "instances": instances,
            "install_ms": installed.as_secs_f64() * 1e3,
            "install_to_first_call_ms": first_call.as_secs_f64() * 1e3,
            "latency_us": { "p50": micros(&latency, 0.5), "p99": micros(&latency, 0.99), "max": latency.max() as f64 / 1000.0 },
            "calls_per_sec": throughput,
            "concurrency": args.concurrency,
            "errors": failed.load(Ordering::Relaxed),
        });
        if !json_output {
            println!(
                "{instances} instance(s): install {:.0} ms, install->first call {:.0} ms; sequential p50 {:.0} us p99 {:.0} us; \
                 {} callers {throughput:.0} calls/s ({} errors)",
                installed.as_secs_f64() * 1e3,
                first_call.as_secs_f64() * 1e3,
                micros(&latency, 0.5),
                micros(&latency, 0.99),
                args.concurrency,
                failed.load(Ordering::Relaxed)
            );
        }
        results.push(result);
    }
    if json_output {
        print_json(&json!({ "wasm_upload_ms": upload.as_secs_f64() * 1e3, "runs": results }));
    } else {
        println!("(wasm upload with two copies acknowledged: {:.0} ms)", upload.as_secs_f64() * 1e3);
    }
    Ok(())
}
