//! Blob records: placement bookkeeping, references from KV values, and collection after the grace period.

use proptest::prelude::*;

use super::*;
use crate::command::{Command, CommandOutput, Proposal, ProposalOutcome};
use crate::kv::{KvRequest, KvResponse, bytes};
use crate::memory_tables::MemoryTables;
use crate::state_machine::{KvRead, apply_proposal};

const GRACE_MS: u64 = 1_000;

fn hash(seed: u8) -> BlobHash {
    BlobHash([seed; 32])
}

fn propose(tables: &mut MemoryTables, revision: &mut u64, now: u64, command: Command) -> ProposalOutcome {
    apply_proposal(tables, revision, &Proposal { stamp_ms: now, commands: vec![command] }).expect("no faults")
}

fn blob(tables: &mut MemoryTables, now: u64, command: BlobCommand) -> Result<BlobRecord, WireError> {
    let mut outcome = propose(tables, &mut 0, now, Command::Blob(command));
    outcome.results.remove(0).map(|output| match output {
        CommandOutput::Blob(BlobResponse::Record { record, .. }) => record,
        other => panic!("unexpected {other:?}"),
    })
}

fn kv(tables: &mut MemoryTables, revision: &mut u64, now: u64, request: KvRequest) -> Result<KvResponse, WireError> {
    let mut outcome = propose(tables, revision, now, Command::Kv(request));
    outcome.results.remove(0).map(|output| match output {
        CommandOutput::Kv(response) => response,
        other => panic!("unexpected {other:?}"),
    })
}

fn added(seed: u8, holder: u64, pin: bool) -> BlobCommand {
    BlobCommand::Added {
        blob: BlobRef { hash: hash(seed), size: 100 },
        holder,
        replicas: 2,
        pin,
        gc_grace_ms: GRACE_MS,
    }
}

fn tick(tables: &mut MemoryTables, now: u64) -> ProposalOutcome {
    apply_proposal(tables, &mut 0, &Proposal { stamp_ms: now, commands: vec![] }).expect("no faults")
}

fn placed(tables: &MemoryTables, node: u64) -> Vec<BlobHash> {
    placed_on(tables, node, None, 100).unwrap()
}

#[test]
fn hashes_parse_from_hex_and_refuse_anything_else() {
    let text = "ab".repeat(32);
    assert_eq!(BlobHash::parse(&text).unwrap(), BlobHash([0xab; 32]));
    assert_eq!(BlobHash::parse(&text).unwrap().to_string(), text);
    assert_eq!(BlobHash::parse(&text.to_uppercase()).unwrap(), BlobHash([0xab; 32]));
    for bad in ["", "ab", &"zz".repeat(32), &"a".repeat(65)] {
        assert_eq!(BlobHash::parse(bad).unwrap_err().code, ErrorCode::InvalidArgument, "{bad}");
    }
    // On the wire a hash is 32 raw bytes; anything else does not decode.
    let encoded = rmp_serde::to_vec(&hash(1)).unwrap();
    assert_eq!(encoded.len(), 2 + 32);
    assert_eq!(rmp_serde::from_slice::<BlobHash>(&encoded).unwrap(), hash(1));
    let short = rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![1u8; 31])).unwrap();
    assert!(rmp_serde::from_slice::<BlobHash>(&short).is_err());
}

#[test]
fn holders_and_assignments_are_tracked_with_a_per_node_index() {
    let mut tables = MemoryTables::default();
    let record = blob(&mut tables, 10, added(1, 1, true)).unwrap();
    assert_eq!((record.holders.clone(), record.assigned.clone(), record.pinned), (vec![1], vec![], true));
    assert_eq!(placed(&tables, 1), vec![hash(1)]);

    let record = blob(&mut tables, 11, BlobCommand::Assign { hash: hash(1), nodes: vec![3, 1, 2] }).unwrap();
    assert_eq!(record.assigned, vec![2, 3], "a holder is never assigned");
    assert_eq!(placed(&tables, 3), vec![hash(1)]);

    let record = blob(&mut tables, 12, BlobCommand::Held { hash: hash(1), node: 3 }).unwrap();
    assert_eq!((record.holders.clone(), record.assigned.clone()), (vec![1, 3], vec![2]));

    let record = blob(&mut tables, 13, BlobCommand::Release { hash: hash(1), node: 2 }).unwrap();
    assert_eq!(record.assigned, Vec::<u64>::new());
    assert!(placed(&tables, 2).is_empty(), "a released node's index row goes");

    // The same content added on another node adds a holder; a size that disagrees is refused.
    let record = blob(&mut tables, 14, added(1, 2, false)).unwrap();
    assert_eq!(record.holders, vec![1, 2, 3]);
    let wrong = BlobCommand::Added {
        blob: BlobRef { hash: hash(1), size: 7 },
        holder: 4,
        replicas: 1,
        pin: true,
        gc_grace_ms: GRACE_MS,
    };
    assert_eq!(blob(&mut tables, 15, wrong).unwrap_err().code, ErrorCode::InvalidArgument);

    // Commands on an unknown blob are refused and change nothing.
    let before = tables.clone();
    assert_eq!(
        blob(&mut tables, 16, BlobCommand::Held { hash: hash(9), node: 1 }).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        blob(&mut tables, 16, BlobCommand::SetReplicas { hash: hash(1), replicas: 0 }).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let mut before = before;
    tick(&mut before, 16);
    assert_eq!(tables, before);
}

#[test]
fn an_unreferenced_blob_is_collected_after_its_grace_period_and_not_before() {
    let mut tables = MemoryTables::default();
    blob(&mut tables, 100, added(1, 1, true)).unwrap();
    let record = blob(&mut tables, 200, BlobCommand::Unpin { hash: hash(1) }).unwrap();
    assert_eq!(record.collect_at_ms, Some(200 + GRACE_MS));

    assert!(tick(&mut tables, 200 + GRACE_MS - 1).events.is_empty());
    assert!(load(&tables, &hash(1)).unwrap().is_some(), "kept during the grace period");
    let outcome = tick(&mut tables, 200 + GRACE_MS);
    assert_eq!(outcome.events, vec![CoordEvent::BlobCollected { hash: hash(1) }]);
    assert_eq!(load(&tables, &hash(1)).unwrap(), None);
    assert!(placed(&tables, 1).is_empty());
}

#[test]
fn a_reference_taken_during_the_grace_period_saves_the_blob() {
    let mut tables = MemoryTables::default();
    blob(&mut tables, 100, added(1, 1, false)).unwrap();
    let record = blob(&mut tables, 150, BlobCommand::Protect { hash: hash(1), protected: true }).unwrap();
    assert_eq!(record.collect_at_ms, None, "protecting disarms the timer");
    assert!(tick(&mut tables, 100 + GRACE_MS * 10).events.is_empty());
    assert!(load(&tables, &hash(1)).unwrap().is_some());

    // Unprotected again: a new grace period from then.
    let record = blob(&mut tables, 100_000, BlobCommand::Protect { hash: hash(1), protected: false }).unwrap();
    assert_eq!(record.collect_at_ms, Some(100_000 + GRACE_MS));
}

#[test]
fn kv_values_hold_references_until_overwritten_deleted_or_their_lease_ends() {
    let mut tables = MemoryTables::default();
    let mut revision = 0;
    // Attaching needs a recorded blob.
    let attach = |seed| KvRequest::PutBlob { key: bytes("model"), hash: hash(seed), lease: None };
    assert_eq!(kv(&mut tables, &mut revision, 10, attach(1)).unwrap_err().code, ErrorCode::NotFound);

    blob(&mut tables, 10, added(1, 1, false)).unwrap();
    blob(&mut tables, 10, added(2, 1, false)).unwrap();
    kv(&mut tables, &mut revision, 20, attach(1)).unwrap();
    let row = tables.get(b"model").unwrap().unwrap();
    assert_eq!((row.blob, row.value.len(), row.version), (Some(BlobRef { hash: hash(1), size: 100 }), 0, 1));
    assert_eq!(load(&tables, &hash(1)).unwrap().unwrap().kv_refs, 1);
    assert_eq!(load(&tables, &hash(1)).unwrap().unwrap().collect_at_ms, None);

    // A compare-and-swap against the empty value must not match a blob value; a blob differs from any bytes.
    let cas = KvRequest::Cas { key: bytes("model"), expected: Some(bytes("")), value: bytes("x") };
    assert_eq!(kv(&mut tables, &mut revision, 21, cas).unwrap_err().code, ErrorCode::Conflict);
    let row = Some(tables.get(b"model").unwrap().unwrap());
    let compare =
        |op| crate::kv::Compare { key: bytes("model"), op, target: crate::kv::CompareTarget::Value(bytes("")) };
    assert!(crate::state_machine::evaluate(&row, &compare(crate::kv::CompareOp::NotEqual)));
    for op in [crate::kv::CompareOp::Equal, crate::kv::CompareOp::Less, crate::kv::CompareOp::Greater] {
        assert!(!crate::state_machine::evaluate(&row, &compare(op)), "{op:?}");
    }

    // Overwriting with another blob moves the reference.
    kv(&mut tables, &mut revision, 30, attach(2)).unwrap();
    assert_eq!(load(&tables, &hash(1)).unwrap().unwrap().kv_refs, 0);
    assert_eq!(load(&tables, &hash(2)).unwrap().unwrap().kv_refs, 1);

    // Overwriting with bytes drops it, and the first blob is collected once its grace passes.
    kv(&mut tables, &mut revision, 40, crate::state_machine::put_request(b"model", b"small")).unwrap();
    assert_eq!(load(&tables, &hash(2)).unwrap().unwrap().kv_refs, 0);
    let events = tick(&mut tables, 40 + GRACE_MS).events;
    assert!(events.contains(&CoordEvent::BlobCollected { hash: hash(1) }), "{events:?}");
    assert!(events.contains(&CoordEvent::BlobCollected { hash: hash(2) }), "{events:?}");

    // A leased key drops its reference when the lease lapses.
    blob(&mut tables, 50_000, added(3, 1, false)).unwrap();
    let lease = match propose(
        &mut tables,
        &mut revision,
        50_000,
        Command::Coord(crate::coord::CoordRequest::lease_grant(1_000)),
    )
    .results
    .remove(0)
    .unwrap()
    {
        CommandOutput::Coord(crate::coord::CoordResponse::Lease { lease }) => lease.id,
        other => panic!("unexpected {other:?}"),
    };
    kv(&mut tables, &mut revision, 50_001, KvRequest::PutBlob { key: bytes("tmp"), hash: hash(3), lease: Some(lease) })
        .unwrap();
    assert_eq!(load(&tables, &hash(3)).unwrap().unwrap().kv_refs, 1);
    tick(&mut tables, 51_100);
    assert_eq!(tables.get(b"tmp").unwrap(), None);
    assert_eq!(load(&tables, &hash(3)).unwrap().unwrap().kv_refs, 0);
    assert_eq!(load(&tables, &hash(3)).unwrap().unwrap().collect_at_ms, Some(51_100 + GRACE_MS));
}

#[derive(Clone, Debug)]
enum Op {
    Pin(u8),
    Unpin(u8),
    Protect(u8, bool),
    Attach(u8, u8),
    Detach(u8),
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3u8).prop_map(Op::Pin),
        (0..3u8).prop_map(Op::Unpin),
        (0..3u8, any::<bool>()).prop_map(|(blob, on)| Op::Protect(blob, on)),
        (0..3u8, 0..3u8).prop_map(|(key, blob)| Op::Attach(key, blob)),
        (0..3u8).prop_map(Op::Detach),
        (0..2_000u16).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Against a model: a blob is collected exactly when it stayed unreferenced for its whole grace period, the
    /// reference counts always equal the KV values pointing at each blob, and a KV value never points at a
    /// collected blob.
    #[test]
    fn references_and_collection_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut tables = MemoryTables::default();
        let mut revision = 0;
        let mut now = 1_000;
        let mut keys: [Option<u8>; 3] = [None; 3];
        for op in ops {
            now += 1;
            match op {
                Op::Pin(seed) => { blob(&mut tables, now, added(seed, 1, true)).unwrap(); }
                Op::Unpin(seed) => { let _ = blob(&mut tables, now, BlobCommand::Unpin { hash: hash(seed) }); }
                Op::Protect(seed, on) => {
                    let _ = blob(&mut tables, now, BlobCommand::Protect { hash: hash(seed), protected: on });
                }
                Op::Attach(key, seed) => {
                    let request = KvRequest::PutBlob { key: bytes(vec![b'k', key]), hash: hash(seed), lease: None };
                    // A blob whose grace ends by this proposal's stamp is collected before its commands run.
                    let exists = load(&tables, &hash(seed))
                        .unwrap()
                        .is_some_and(|record| record.collect_at_ms.is_none_or(|deadline| deadline > now));
                    let result = kv(&mut tables, &mut revision, now, request);
                    prop_assert_eq!(result.is_ok(), exists);
                    if exists { keys[key as usize] = Some(seed); }
                }
                Op::Detach(key) => {
                    kv(&mut tables, &mut revision, now, KvRequest::Delete { key: bytes(vec![b'k', key]) }).unwrap();
                    keys[key as usize] = None;
                }
                Op::Wait(ms) => { now += u64::from(ms); tick(&mut tables, now); }
            }
            for seed in 0..3u8 {
                let refs = keys.iter().filter(|key| **key == Some(seed)).count() as u64;
                match load(&tables, &hash(seed)).unwrap() {
                    Some(record) => {
                        prop_assert_eq!(record.kv_refs, refs);
                        prop_assert_eq!(record.collect_at_ms.is_some(), !record.is_referenced());
                        if let Some(deadline) = record.collect_at_ms { prop_assert!(deadline > now); }
                    }
                    None => prop_assert_eq!(refs, 0, "a KV value points at a collected blob"),
                }
            }
        }
    }
}
