//! `pando blob ...`: content-addressed blobs, streamed through any node, replicated across the cluster.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use pando_client::pando_protocol::blob::{
    BlobHash, BlobRecord, BlobRequest, BlobResponse, LocalBlob, Replica, ReplicationReport,
};
use pando_client::pando_protocol::kv::Bytes;
use pando_client::{Client, ClientError};
use serde_json::{Value, json};

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Add a file (or stdin with `-`) and print its BLAKE3 hash.
    Add {
        /// A file, or `-` for stdin.
        path: PathBuf,
        /// Copies the cluster keeps (the node's default when absent).
        #[arg(long)]
        replicas: Option<u8>,
        /// Refuse the data unless it hashes to this.
        #[arg(long)]
        expect: Option<String>,
        /// Return once this many nodes hold it (default: 2 when it should have 2 or more copies).
        #[arg(long)]
        ack_copies: Option<u8>,
    },
    /// Write a blob to a file (`-o`) or stdout, verified against its hash as it streams.
    Get {
        hash: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Whether the cluster (and the node asked) has a blob.
    Has { hash: String },
    /// List the cluster's blobs.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        after: Option<String>,
    },
    /// What the cluster knows about a blob, and what the node asked has of it.
    Status { hash: String },
    /// Never collect the blob, referenced or not.
    Protect { hash: String },
    /// Collect the blob again once nothing references it.
    Unprotect { hash: String },
    /// Drop your reference; the blob is collected after the grace period unless something else references it.
    Delete { hash: String },
    /// Which nodes hold the blob, against its desired copies (as the leader sees them). `--set N` changes the count.
    Replication {
        hash: String,
        #[arg(long)]
        set: Option<u8>,
    },
}

fn parse_hash(text: &str) -> anyhow::Result<BlobHash> {
    BlobHash::parse(text).map_err(|error| ClientError::Wire(error).into())
}

pub fn record_json(record: &BlobRecord) -> Value {
    json!({
        "size": record.size,
        "replicas": record.replicas,
        "holders": record.holders,
        "assigned": record.assigned,
        "pinned": record.pinned,
        "protected": record.protected,
        "kv_refs": record.kv_refs,
        "created_ms": record.created_ms,
        "collect_at_ms": record.collect_at_ms,
    })
}

fn local_json(local: &LocalBlob) -> Value {
    match local {
        LocalBlob::Complete { size } => json!({ "state": "complete", "size": size }),
        LocalBlob::Partial => json!({ "state": "partial" }),
        LocalBlob::Absent => json!({ "state": "absent" }),
    }
}

fn replicas_json(replicas: &[Replica]) -> Value {
    json!(
        replicas.iter().map(|replica| json!({ "node_id": replica.node_id, "live": replica.live })).collect::<Vec<_>>()
    )
}

fn report_json(report: &ReplicationReport) -> Value {
    json!({
        "hash": report.hash.to_string(),
        "size": report.size,
        "desired": report.desired,
        "live_holders": report.live_holders,
        "holders": replicas_json(&report.holders),
        "assigned": replicas_json(&report.assigned),
        "reported_by": report.reported_by,
    })
}

/// A progress bar on stderr, only when stdout is a terminal (so scripts and pipes see clean output).
pub fn progress_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Uploads a file or stdin (`-`) with an add `request`.
pub async fn upload(client: &Client, path: &Path, request: BlobRequest) -> anyhow::Result<BlobResponse> {
    let response = if path == Path::new("-") {
        let bar = progress_bar(None);
        let response = client
            .blob_add(tokio::io::stdin(), request, |sent| bar.iter().for_each(|bar| bar.set_position(sent)))
            .await;
        bar.iter().for_each(|bar| bar.finish_and_clear());
        response?
    } else {
        let file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata().await.map(|meta| meta.len()).ok();
        let bar = progress_bar(size);
        let reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        let response = client.blob_add(reader, request, |sent| bar.iter().for_each(|bar| bar.set_position(sent))).await;
        bar.iter().for_each(|bar| bar.finish_and_clear());
        response?
    };
    Ok(response)
}

/// Downloads a blob to `output` (written to a temporary file beside it, renamed only once verified) or stdout.
pub async fn download(
    client: &Client,
    hash: BlobHash,
    key: Option<Bytes>,
    output: Option<&Path>,
) -> anyhow::Result<u64> {
    let bar = progress_bar(None);
    let on_progress = |received: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(received);
        }
    };
    let result = match output {
        Some(path) if path != Path::new("-") => {
            let partial = path.with_extension(format!(
                "{}pando-partial",
                path.extension().map(|ext| format!("{}.", ext.to_string_lossy())).unwrap_or_default()
            ));
            let file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
            match client.blob_get(hash, key, &mut writer, on_progress).await {
                Ok(size) => {
                    drop(writer);
                    tokio::fs::rename(&partial, path)
                        .await
                        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
                    Ok(size)
                }
                Err(error) => {
                    drop(writer);
                    let _ = tokio::fs::remove_file(&partial).await;
                    Err(error)
                }
            }
        }
        _ => {
            let mut stdout = tokio::io::stdout();
            client.blob_get(hash, key, &mut stdout, on_progress).await
        }
    };
    bar.iter().for_each(|bar| bar.finish_and_clear());
    Ok(result?)
}

pub async fn blob(client: &Client, command: BlobCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        BlobCommand::Add { path, replicas, expect, ack_copies } => {
            let expected = expect.as_deref().map(parse_hash).transpose()?;
            let request = BlobRequest::Add { replicas, pin: true, expected, attach: None, ack_copies };
            match upload(client, &path, request).await? {
                BlobResponse::Added { hash, record, .. } => {
                    if json_output {
                        print_json(&json!({ "hash": hash.to_string(), "record": record_json(&record) }));
                    } else {
                        println!("{hash}");
                    }
                }
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
        BlobCommand::Get { hash, output } => {
            let hash = parse_hash(&hash)?;
            let to_stdout = output.as_deref().is_none_or(|path| path == Path::new("-"));
            let size = download(client, hash, None, output.as_deref()).await?;
            if json_output && !to_stdout {
                print_json(&json!({ "hash": hash.to_string(), "size": size }));
            }
        }
        BlobCommand::Has { hash } => {
            let hash = parse_hash(&hash)?;
            match client.blob(BlobRequest::Has { hash }).await? {
                BlobResponse::Has { cluster, local } => {
                    if json_output {
                        print_json(&json!({ "cluster": cluster, "local": local }));
                    } else {
                        println!("{}", if cluster { "yes" } else { "no" });
                    }
                }
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
        BlobCommand::List { limit, after } => {
            let after = after.as_deref().map(parse_hash).transpose()?;
            match client.blob(BlobRequest::List { after, limit }).await? {
                BlobResponse::Page { blobs, next } => {
                    if json_output {
                        let blobs: Vec<Value> = blobs
                            .iter()
                            .map(|(hash, record)| json!({ "hash": hash.to_string(), "record": record_json(record) }))
                            .collect();
                        print_json(&json!({ "blobs": blobs, "next": next.map(|next| next.to_string()) }));
                    } else {
                        for (hash, record) in &blobs {
                            let flags = [(record.pinned, "pinned"), (record.protected, "protected")]
                                .iter()
                                .filter(|(on, _)| *on)
                                .map(|(_, name)| *name)
                                .collect::<Vec<_>>()
                                .join(",");
                            println!(
                                "{hash} {:>14} bytes  {}/{} copies  refs {}  {flags}",
                                record.size,
                                record.holders.len(),
                                record.replicas,
                                record.kv_refs
                            );
                        }
                        if let Some(next) = next {
                            eprintln!("more: --after {next}");
                        }
                    }
                }
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
        BlobCommand::Status { hash } => {
            let hash = parse_hash(&hash)?;
            match client.blob(BlobRequest::Status { hash }).await? {
                BlobResponse::Status { hash, record, local, node_id, transfers } => {
                    if json_output {
                        print_json(&json!({
                            "hash": hash.to_string(),
                            "record": record.as_ref().map(record_json),
                            "local": local_json(&local),
                            "node_id": node_id,
                            "transfers": {
                                "fetches_ok": transfers.fetches_ok,
                                "fetch_failures": transfers.fetch_failures,
                                "fetch_corrupt": transfers.fetch_corrupt,
                                "bytes_fetched": transfers.bytes_fetched,
                            },
                        }));
                    } else {
                        match &record {
                            Some(record) => println!(
                                "{hash}: {} bytes, {} of {} copies on nodes {}, assigned {}, pinned {}, protected {}, kv refs {}",
                                record.size,
                                record.holders.len(),
                                record.replicas,
                                crate::output::list(&record.holders),
                                crate::output::list(&record.assigned),
                                record.pinned,
                                record.protected,
                                record.kv_refs
                            ),
                            None => println!("{hash}: not in the cluster"),
                        }
                        println!("node {node_id}: {}", local_json(&local)["state"].as_str().unwrap_or("?"));
                    }
                    if record.is_none() {
                        return Err(ClientError::Wire(pando_client::pando_protocol::WireError::new(
                            pando_client::pando_protocol::ErrorCode::NotFound,
                            format!("no blob {hash} in the cluster"),
                        ))
                        .into());
                    }
                }
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
        BlobCommand::Protect { hash } => {
            change(client, BlobRequest::Protect { hash: parse_hash(&hash)? }, json_output).await?
        }
        BlobCommand::Unprotect { hash } => {
            change(client, BlobRequest::Unprotect { hash: parse_hash(&hash)? }, json_output).await?
        }
        BlobCommand::Delete { hash } => {
            change(client, BlobRequest::Delete { hash: parse_hash(&hash)? }, json_output).await?
        }
        BlobCommand::Replication { hash, set } => {
            let hash = parse_hash(&hash)?;
            if let Some(replicas) = set {
                client.blob(BlobRequest::SetReplicas { hash, replicas }).await?;
            }
            match client.blob(BlobRequest::Replication { hash }).await? {
                BlobResponse::Replication(report) => {
                    if json_output {
                        print_json(&report_json(&report));
                    } else {
                        let list = |replicas: &[Replica]| {
                            crate::output::list(replicas.iter().map(|replica| {
                                format!("{}{}", replica.node_id, if replica.live { "" } else { " (down)" })
                            }))
                        };
                        println!(
                            "{}: {}/{} live copies (holders: {}; fetching: {}) as seen by leader {}",
                            report.hash,
                            report.live_holders,
                            report.desired,
                            list(&report.holders),
                            list(&report.assigned),
                            report.reported_by
                        );
                    }
                }
                other => anyhow::bail!("unexpected response {other:?}"),
            }
        }
    }
    Ok(())
}

async fn change(client: &Client, request: BlobRequest, json_output: bool) -> anyhow::Result<()> {
    match client.blob(request).await? {
        BlobResponse::Record { hash, record } => {
            if json_output {
                print_json(&json!({ "hash": hash.to_string(), "record": record_json(&record) }));
            } else {
                let collect = record
                    .collect_at_ms
                    .map(|at| format!(", unreferenced: collected at {at} ms unless referenced again"))
                    .unwrap_or_default();
                println!(
                    "{hash}: pinned {}, protected {}, kv refs {}{collect}",
                    record.pinned, record.protected, record.kv_refs
                );
            }
            Ok(())
        }
        other => anyhow::bail!("unexpected response {other:?}"),
    }
}
