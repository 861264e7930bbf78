//! The storage half of a put, per batch: a log append made durable (the syncer's fsync), the commit index saved, and
//! the apply, for batches of 1 and 32 puts of 256 bytes, against the disk alone (the same bytes written and
//! `fdatasync`ed to a plain file) in the same run. Prints batches/s, puts/s and p50/p99 per batch.
//!
//! `cargo bench -p pando-actors --bench storage_path` (release). `PANDO_BENCH_BATCHES` sets the batches per case
//! (default 2,000). Under `cargo test --benches` it runs a smoke pass of 20 batches.

use std::io::Write;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use pando_actors::raft::type_config::Entry;
use pando_protocol::command::{Command, Proposal};

const VALUE_BYTES: usize = 256;

fn batch(index: u64, puts: usize) -> Entry {
    let value = vec![b'v'; VALUE_BYTES];
    let commands = (0..puts)
        .map(|put| {
            let key = format!("bench/{index}/{put}");
            Command::Kv(pando_protocol::state_machine::put_request(key.as_bytes(), &value))
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands }),
    }
}

fn report(case: &str, puts: usize, mut took: Vec<Duration>) {
    took.sort();
    let total: Duration = took.iter().sum();
    let per_second = took.len() as f64 / total.as_secs_f64();
    let at = |quantile: f64| took[((took.len() - 1) as f64 * quantile) as usize].as_secs_f64() * 1e3;
    println!(
        "{case:<44} {per_second:>9.0} batches/s {:>9.0} puts/s   p50 {:.3} ms  p99 {:.3} ms",
        per_second * puts as f64,
        at(0.5),
        at(0.99)
    );
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let batches: u64 = if measuring {
        std::env::var("PANDO_BENCH_BATCHES").ok().and_then(|value| value.parse().ok()).unwrap_or(2_000)
    } else {
        20
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        for puts in [1usize, 32] {
            // The disk alone: the encoded batch appended to a file and fdatasynced, as a log with no index would.
            let dir = tempfile::tempdir().unwrap();
            let mut file = std::fs::File::create(dir.path().join("plain.log")).unwrap();
            let mut took = Vec::new();
            for index in 1..=batches {
                let bytes = rmp_serde::to_vec_named(&batch(index, puts)).unwrap();
                let started = Instant::now();
                file.write_all(&bytes).unwrap();
                file.sync_data().unwrap();
                took.push(started.elapsed());
            }
            report(&format!("baseline: file write + fdatasync, {puts} put(s)"), puts, took);

            // Pando: append (synced by the syncer), save the commit index, apply.
            let dir = tempfile::tempdir().unwrap();
            let stores = pando_actors::storage::open(dir.path()).unwrap();
            let (mut log, mut machine) = (stores.log, stores.state_machine);
            let mut appended = Vec::new();
            let mut applied = Vec::new();
            for index in 1..=batches {
                let entry = batch(index, puts);
                let started = Instant::now();
                log.blocking_append([entry.clone()]).await.unwrap();
                let durable = started.elapsed();
                log.save_committed(Some(entry.log_id)).await.unwrap();
                let outcomes = machine.apply([entry]).await.unwrap();
                assert!(outcomes[0].results.iter().all(Result::is_ok));
                appended.push(durable);
                applied.push(started.elapsed() - durable);
            }
            let both: Vec<Duration> = appended.iter().zip(&applied).map(|(a, b)| *a + *b).collect();
            report(&format!("pando: durable append, {puts} put(s)"), puts, appended);
            report(&format!("pando: commit + apply, {puts} put(s)"), puts, applied);
            report(&format!("pando: append + commit + apply, {puts} put(s)"), puts, both);
        }
    });
}
