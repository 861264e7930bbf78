//! Micro benchmarks of the hot path's pure parts: framing a put request, decoding it, and applying a batch of puts
//! through the state machine core (in memory, so storage is excluded).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pando_protocol::command::{Command, Proposal};
use pando_protocol::envelope::{PROTOCOL_VERSION, Request, RequestEnvelope};
use pando_protocol::frame;
use pando_protocol::kv::{KvRequest, bytes};
use pando_protocol::memory_tables::MemoryTables;
use pando_protocol::state_machine::apply_proposal;

fn put(index: u64) -> KvRequest {
    KvRequest::Put { key: bytes(format!("bench/{index:016x}")), value: bytes(vec![b'x'; 256]), lease: None }
}

fn codec(c: &mut Criterion) {
    let envelope = RequestEnvelope {
        version: PROTOCOL_VERSION,
        request_id: 1,
        timeout_ms: 1_000,
        token: None,
        body: Request::Kv(put(1)),
    };
    let encoded = frame::encode(&envelope).unwrap();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode put 256B", |b| b.iter(|| frame::encode(black_box(&envelope)).unwrap()));
    group.bench_function("decode put 256B", |b| b.iter(|| RequestEnvelope::decode(black_box(&encoded[4..])).unwrap()));
    group.finish();

    let proposal = Proposal { stamp_ms: 0, commands: (0..64).map(|index| Command::Kv(put(index))).collect() };
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(64));
    group.bench_function("apply 64 puts", |b| {
        b.iter(|| {
            let (mut tables, mut revision) = (MemoryTables::default(), 0);
            apply_proposal(&mut tables, &mut revision, black_box(&proposal)).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
