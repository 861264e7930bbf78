//! The history the state machine records: one event per changed key at the revision of the change, nothing for a
//! request that changed nothing, whole revisions for batches, transactions and lapsed leases; replaying the history
//! rebuilds the rows (property test); compaction.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::command::{Command, CommandOutput, CommandResult, Proposal};
use crate::coord::{CoordRequest, CoordResponse};
use crate::error::ErrorCode;
use crate::kv::{KvRequest, KvResponse, TxnOp, WriteOp, bytes};
use crate::memory_tables::MemoryTables;
use crate::state_machine::{KvRead, apply_proposal, put_request};

fn apply(tables: &mut MemoryTables, revision: &mut u64, stamp_ms: u64, command: Command) -> CommandResult {
    let proposal = Proposal { stamp_ms, commands: vec![command] };
    apply_proposal(tables, revision, &proposal).expect("memory tables never fault").results.remove(0)
}

fn kv(tables: &mut MemoryTables, revision: &mut u64, request: KvRequest) -> Result<KvResponse, crate::WireError> {
    apply(tables, revision, 1_000, Command::Kv(request)).map(|output| match output {
        CommandOutput::Kv(response) => response,
        other => panic!("unexpected {other:?}"),
    })
}

fn history(tables: &MemoryTables, from: u64) -> Vec<KvEvent> {
    let mut events = Vec::new();
    tables
        .history(from, &mut |event| {
            events.push(event);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    events
}

/// (revision, kind, key, prev_revision) of each event.
fn summary(events: &[KvEvent]) -> Vec<(u64, EventKind, String, u64)> {
    events
        .iter()
        .map(|event| {
            let key = String::from_utf8(event.key().to_vec()).unwrap();
            (event.revision(), event.kind, key, event.prev_revision)
        })
        .collect()
}

#[test]
fn every_change_is_recorded_once_at_its_revision_and_refusals_record_nothing() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    kv(&mut tables, &mut revision, put_request(b"a", b"1")).unwrap();
    kv(&mut tables, &mut revision, put_request(b"a", b"2")).unwrap();
    kv(&mut tables, &mut revision, KvRequest::Delete { key: bytes("a") }).unwrap();
    // Nothing to delete, and a compare that fails: no revision, no event.
    kv(&mut tables, &mut revision, KvRequest::Delete { key: bytes("a") }).unwrap();
    let conflict = kv(
        &mut tables,
        &mut revision,
        KvRequest::Cas { key: bytes("b"), expected: Some(bytes("x")), value: bytes("y") },
    );
    assert_eq!(conflict.unwrap_err().code, ErrorCode::Conflict);
    let batch = vec![
        WriteOp::Put { key: bytes("b"), value: bytes("1") },
        WriteOp::Put { key: bytes("c"), value: bytes("1") },
        WriteOp::Delete { key: bytes("zz") },
    ];
    kv(&mut tables, &mut revision, KvRequest::BatchWrite { ops: batch }).unwrap();
    let txn = KvRequest::Txn {
        compares: Vec::new(),
        success: vec![TxnOp::Delete { key: bytes("b") }, TxnOp::Put { key: bytes("c"), value: bytes("2") }],
        failure: Vec::new(),
    };
    kv(&mut tables, &mut revision, txn).unwrap();
    assert_eq!(revision, 5);
    let events = history(&tables, 1);
    assert_eq!(
        summary(&events),
        vec![
            (1, EventKind::Put, "a".into(), 0),
            (2, EventKind::Put, "a".into(), 1),
            (3, EventKind::Delete, "a".into(), 2),
            (4, EventKind::Put, "b".into(), 0),
            (4, EventKind::Put, "c".into(), 0),
            (5, EventKind::Delete, "b".into(), 4),
            (5, EventKind::Put, "c".into(), 4),
        ]
    );
    assert_eq!(events[1].entry.value.as_slice(), b"2");
    assert_eq!((events[1].entry.create_revision, events[1].entry.version), (1, 2));
    assert_eq!((events[2].entry.value.as_slice(), events[2].entry.version), (b"".as_slice(), 0));
    assert!(events.iter().all(|event| event.time_ms == 1_000), "log time, not the replica's clock");
    assert_eq!(summary(&history(&tables, 4)), summary(&events[3..]), "a read from a revision starts there");
}

#[test]
fn a_lapsed_lease_deletes_its_keys_at_one_revision_of_the_history() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    let lease = match apply(&mut tables, &mut revision, 0, Command::Coord(CoordRequest::lease_grant(10_000))) {
        Ok(CommandOutput::Coord(CoordResponse::Lease { lease })) => lease.id,
        other => panic!("unexpected {other:?}"),
    };
    for key in ["svc/a", "svc/b"] {
        let put = KvRequest::Put { key: bytes(key), value: bytes("up"), lease: Some(lease) };
        kv(&mut tables, &mut revision, put).unwrap();
    }
    // A proposal stamped after the deadline lapses the lease before its own command runs.
    kv(&mut tables, &mut revision, put_request(b"other", b"x")).unwrap();
    let later = apply(&mut tables, &mut revision, 20_000, Command::Kv(put_request(b"late", b"x")));
    assert!(later.is_ok());
    let tail: Vec<_> = summary(&history(&tables, 4));
    assert_eq!(
        tail,
        vec![
            (4, EventKind::Delete, "svc/a".into(), 1),
            (4, EventKind::Delete, "svc/b".into(), 2),
            (5, EventKind::Put, "late".into(), 0),
        ]
    );
}

#[test]
fn compaction_drops_older_revisions_on_every_replica_and_refuses_the_future() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    for value in 0..5u8 {
        kv(&mut tables, &mut revision, put_request(b"k", &[value])).unwrap();
    }
    assert_eq!(compacted_revision(&tables).unwrap(), 1);
    let future = kv(&mut tables, &mut revision, KvRequest::Compact { revision: 6 }).unwrap_err();
    assert_eq!(future.code, ErrorCode::InvalidArgument);
    assert_eq!(
        kv(&mut tables, &mut revision, KvRequest::Compact { revision: 4 }),
        Ok(KvResponse::Compacted { compacted: 4, revision: 5 })
    );
    assert_eq!(history(&tables, 1).iter().map(KvEvent::revision).collect::<Vec<_>>(), vec![4, 5]);
    // Compacting below the compaction point changes nothing.
    assert_eq!(
        kv(&mut tables, &mut revision, KvRequest::Compact { revision: 2 }),
        Ok(KvResponse::Compacted { compacted: 4, revision: 5 })
    );
    assert_eq!(revision, 5, "compaction is not a change of any key");
    assert_eq!(
        kv(&mut tables, &mut revision, KvRequest::Compact { revision: 0 }).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn history_keys_sort_by_revision_then_position() {
    assert!(history_key(1, u32::MAX) < history_key(2, 0));
    assert_eq!(parse_history_key(&history_key(7, 3)), Some((7, 3)));
    assert_eq!(parse_history_key(b"short"), None);
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<u8>)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0u8..6).prop_map(Op::Delete),
        proptest::collection::vec((0u8..6, proptest::option::of(any::<u8>())), 1..5).prop_map(Op::Batch),
    ]
}

proptest! {
    /// Replaying the history from the start rebuilds the rows exactly, and every revision from 1 to the current one
    /// holds at least one event (revisions are consecutive, so a reader notices any gap).
    #[test]
    fn replaying_the_history_rebuilds_the_rows(ops in proptest::collection::vec(op(), 1..48)) {
        let (mut tables, mut revision) = (MemoryTables::default(), 0u64);
        for op in ops {
            let request = match op {
                Op::Put(k, v) => put_request(&[k], &[v]),
                Op::Delete(k) => KvRequest::Delete { key: bytes(vec![k]) },
                Op::Batch(ops) => KvRequest::BatchWrite {
                    ops: ops.into_iter().map(|(k, v)| match v {
                        Some(v) => WriteOp::Put { key: bytes(vec![k]), value: bytes(vec![v]) },
                        None => WriteOp::Delete { key: bytes(vec![k]) },
                    }).collect(),
                },
            };
            kv(&mut tables, &mut revision, request).unwrap();
        }
        let mut replayed = BTreeMap::new();
        let mut revisions = std::collections::BTreeSet::new();
        for event in history(&tables, 1) {
            revisions.insert(event.revision());
            match event.kind {
                EventKind::Put => { replayed.insert(event.entry.key.to_vec(), event.entry.clone()); }
                EventKind::Delete => { replayed.remove(event.entry.key.as_slice()); }
            }
        }
        let rows: BTreeMap<Vec<u8>, _> =
            tables.rows.iter().map(|(key, row)| (key.clone(), row.clone().into_entry(key))).collect();
        prop_assert_eq!(replayed, rows);
        prop_assert_eq!(revisions.into_iter().collect::<Vec<_>>(), (1..=revision).collect::<Vec<_>>());
    }
}

#[test]
fn a_range_sees_keys_between_its_ends_and_needs_access_to_their_shared_prefix() {
    let range = |start: &str, end: &str| WatchRange::Range { start: bytes(start), end: bytes(end) };
    let app = range("app/b", "app/d");
    assert!(app.contains(b"app/b") && app.contains(b"app/c/x") && !app.contains(b"app/d") && !app.contains(b"app/a"));
    assert_eq!(app.access_prefix(), b"app/");
    assert_eq!(range("m", "").access_prefix(), b"", "an open end needs the whole keyspace");
    assert!(range("m", "").contains(b"zzz") && !range("m", "").contains(b"a"));
    let request = |range| WatchRequest { range, start_revision: 0, prev_kv: false, only: None, progress_ms: 0 };
    assert_eq!(request(range("b", "a")).validate().unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(request(range("a", "a")).validate().unwrap_err().code, ErrorCode::InvalidArgument);
    assert!(request(range("", "")).validate().is_ok(), "every key");
    let progress = WatchRequest { progress_ms: 10, ..request(WatchRange::Prefix(bytes(""))) };
    assert_eq!(progress.validate().unwrap_err().code, ErrorCode::InvalidArgument, "progress too often");
}
