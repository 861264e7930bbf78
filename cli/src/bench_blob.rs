//! `pando bench blob`: blob throughput against baselines measured in the same run: hashing the file with BLAKE3
//! alone (what an add cannot beat), and a raw iroh stream of the same size between two endpoints on loopback (what
//! a fetch between nodes cannot beat).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use pando_client::pando_protocol::blob::{BlobHash, BlobRequest, BlobResponse};
use pando_client::{Client, node_quic_transport_config};
use serde_json::json;

/// Longest the bench waits for the second copy.
const REPLICATION_WAIT_MAX: Duration = Duration::from_secs(600);
const RAW_ALPN: &[u8] = b"pando/bench-raw/1";

#[derive(Debug, Args)]
pub struct BlobBenchArgs {
    /// The file to add (its size is the transfer size).
    #[arg(long)]
    file: PathBuf,
    /// Skip the raw iroh baseline.
    #[arg(long)]
    no_baseline: bool,
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

pub async fn run(client: &Client, args: BlobBenchArgs, json_output: bool) -> anyhow::Result<()> {
    let size = std::fs::metadata(&args.file)?.len();

    // Baseline 1: BLAKE3 over the file, single-threaded, from the page cache.
    let path = args.file.clone();
    let started = Instant::now();
    let local_hash = tokio::task::spawn_blocking(move || -> anyhow::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        Ok(hasher.finalize())
    })
    .await??;
    let hash_time = started.elapsed();

    // Add with one copy, so the time is the upload, the import and the record only.
    let request = BlobRequest::Add { replicas: Some(1), pin: true, expected: None, attach: None, ack_copies: Some(1) };
    let file = tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::open(&args.file).await?);
    let started = Instant::now();
    let (hash, holders_before) = match client.blob_add(file, request, |_| {}).await? {
        BlobResponse::Added { hash, record, .. } => (hash, record.holders.len()),
        other => anyhow::bail!("unexpected response {other:?}"),
    };
    anyhow::ensure!(
        holders_before == 1,
        "blob {hash} was already in the cluster on {holders_before} nodes (an earlier run within the grace period?): \
         the copy would not be measured; bench a file with other content"
    );
    let add_time = started.elapsed();
    anyhow::ensure!(hash == BlobHash(*local_hash.as_bytes()), "the node hashed the file to {hash}");

    // A second copy: one member fetches it from the other (verified as it streams).
    let started = Instant::now();
    client.blob(BlobRequest::SetReplicas { hash, replicas: 2 }).await?;
    loop {
        if let BlobResponse::Replication(report) = client.blob(BlobRequest::Replication { hash }).await?
            && report.holders.len() >= 2
        {
            break;
        }
        anyhow::ensure!(started.elapsed() < REPLICATION_WAIT_MAX, "no second copy after {REPLICATION_WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetch_time = started.elapsed();

    // Read it back through the node the client talks to.
    let started = Instant::now();
    let mut sink = tokio::io::sink();
    client.blob_get(hash, None, &mut sink, |_, _| {}).await?;
    let get_time = started.elapsed();

    let raw_time = if args.no_baseline { None } else { Some(raw_iroh_stream(size).await?) };

    // Leave the cluster as it was.
    client.blob(BlobRequest::Delete { hash }).await?;

    let mib = size as f64 / (1024.0 * 1024.0);
    if json_output {
        println!(
            "{}",
            json!({
                "bytes": size,
                "blake3_mib_s": rate(size, hash_time),
                "add_mib_s": rate(size, add_time),
                "node_to_node_fetch_mib_s": rate(size, fetch_time),
                "get_mib_s": rate(size, get_time),
                "raw_iroh_stream_mib_s": raw_time.map(|time| rate(size, time)),
            })
        );
    } else {
        println!("blob bench: {mib:.0} MiB ({hash})");
        println!(
            "  blake3 hash of the file        {:>8.1} MiB/s  {:>7.2} s",
            rate(size, hash_time),
            hash_time.as_secs_f64()
        );
        println!(
            "  blob add (client -> node)      {:>8.1} MiB/s  {:>7.2} s",
            rate(size, add_time),
            add_time.as_secs_f64()
        );
        println!(
            "  second copy (node -> node)     {:>8.1} MiB/s  {:>7.2} s",
            rate(size, fetch_time),
            fetch_time.as_secs_f64()
        );
        println!(
            "  blob get (node -> client)      {:>8.1} MiB/s  {:>7.2} s",
            rate(size, get_time),
            get_time.as_secs_f64()
        );
        if let Some(raw_time) = raw_time {
            println!(
                "  raw iroh stream, same size     {:>8.1} MiB/s  {:>7.2} s",
                rate(size, raw_time),
                raw_time.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Sends `size` bytes over one QUIC stream between two fresh endpoints on loopback (same transport settings as the
/// nodes), and answers how long until the receiver had them all.
async fn raw_iroh_stream(size: u64) -> anyhow::Result<Duration> {
    use iroh::endpoint::presets;
    let bind = |alpns: Vec<Vec<u8>>| async move {
        iroh::Endpoint::builder(presets::Minimal)
            .alpns(alpns)
            .transport_config(node_quic_transport_config())
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")?
            .bind()
            .await
            .map_err(anyhow::Error::from)
    };
    let server = bind(vec![RAW_ALPN.to_vec()]).await?;
    let client = bind(vec![]).await?;
    let addr = iroh::EndpointAddr::new(server.id()).with_ip_addr(*server.bound_sockets().first().unwrap());
    let receiver = tokio::spawn(async move {
        let incoming = server.accept().await.ok_or_else(|| anyhow::anyhow!("no connection"))?;
        let connection = incoming.await?;
        let mut recv = connection.accept_uni().await?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received: u64 = 0;
        while let Some(read) = recv.read(&mut buffer).await? {
            received += read as u64;
        }
        connection.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(received)
    });
    let started = Instant::now();
    let connection = client.connect(addr, RAW_ALPN).await?;
    let mut send = connection.open_uni().await?;
    let block = vec![0x5au8; 256 * 1024];
    let mut sent: u64 = 0;
    while sent < size {
        let take = block.len().min((size - sent) as usize);
        send.write_all(&block[..take]).await?;
        sent += take as u64;
    }
    send.finish()?;
    let received = receiver.await??;
    let elapsed = started.elapsed();
    anyhow::ensure!(received == size, "raw stream delivered {received} of {size} bytes");
    client.close().await;
    Ok(elapsed)
}
