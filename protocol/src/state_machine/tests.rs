//! Exact-output tests of the KV core, plus a property test against a simple model.

use proptest::prelude::*;

use super::*;
use crate::kv::{Consistency, bytes};
use crate::memory_tables::MemoryTables;

fn kv(tables: &mut MemoryTables, revision: &mut u64, request: KvRequest) -> KvResult {
    apply_command(tables, revision, 0, &Command::Kv(request)).expect("memory tables never fault").map(|output| {
        match output {
            CommandOutput::Kv(response) => response,
            other => panic!("unexpected {other:?}"),
        }
    })
}

fn get(tables: &MemoryTables, key: &[u8]) -> Option<KvEntry> {
    match read(tables, 0, &KvRequest::Get { key: bytes(key), consistency: Consistency::Stale }).unwrap().unwrap() {
        KvResponse::Entry { entry } => entry,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn put_tracks_create_mod_and_version() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    assert_eq!(kv(&mut tables, &mut revision, put_request(b"a", b"1")), Ok(KvResponse::Written { revision: 1 }));
    assert_eq!(kv(&mut tables, &mut revision, put_request(b"b", b"x")), Ok(KvResponse::Written { revision: 2 }));
    assert_eq!(kv(&mut tables, &mut revision, put_request(b"a", b"2")), Ok(KvResponse::Written { revision: 3 }));
    let entry = get(&tables, b"a").unwrap();
    assert_eq!((entry.create_revision, entry.mod_revision, entry.version), (1, 3, 2));
    assert_eq!(entry.value.as_slice(), b"2");
}

#[test]
fn delete_of_missing_key_changes_nothing() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    kv(&mut tables, &mut revision, put_request(b"a", b"1")).unwrap();
    let result = kv(&mut tables, &mut revision, KvRequest::Delete { key: bytes("zz") });
    assert_eq!(result, Ok(KvResponse::Deleted { revision: 1, existed: false }));
    let result = kv(&mut tables, &mut revision, KvRequest::Delete { key: bytes("a") });
    assert_eq!(result, Ok(KvResponse::Deleted { revision: 2, existed: true }));
    // Re-creating a deleted key restarts its version and create revision.
    kv(&mut tables, &mut revision, put_request(b"a", b"again")).unwrap();
    let entry = get(&tables, b"a").unwrap();
    assert_eq!((entry.create_revision, entry.version), (3, 1));
}

#[test]
fn cas_conflict_returns_current_and_changes_nothing() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    kv(&mut tables, &mut revision, put_request(b"counter", b"1")).unwrap();
    let before = tables.clone();
    let cas = KvRequest::Cas { key: bytes("counter"), expected: Some(bytes("7")), value: bytes("8") };
    let error = kv(&mut tables, &mut revision, cas).unwrap_err();
    assert_eq!(error.code, ErrorCode::Conflict);
    match error.detail {
        Some(ErrorDetail::Current { entry: Some(entry) }) => {
            assert_eq!(entry.value.as_slice(), b"1")
        }
        other => panic!("unexpected detail {other:?}"),
    }
    assert_eq!(tables, before);
    assert_eq!(revision, 1);
    let cas = KvRequest::Cas { key: bytes("counter"), expected: Some(bytes("1")), value: bytes("2") };
    assert_eq!(kv(&mut tables, &mut revision, cas), Ok(KvResponse::Written { revision: 2 }));
    let create = KvRequest::Cas { key: bytes("fresh"), expected: None, value: bytes("x") };
    assert_eq!(kv(&mut tables, &mut revision, create.clone()), Ok(KvResponse::Written { revision: 3 }));
    assert_eq!(kv(&mut tables, &mut revision, create).unwrap_err().code, ErrorCode::Conflict);
}

#[test]
fn cad_deletes_only_the_expected_value() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    kv(&mut tables, &mut revision, put_request(b"k", b"v")).unwrap();
    let wrong = KvRequest::Cad { key: bytes("k"), expected: bytes("w") };
    assert_eq!(kv(&mut tables, &mut revision, wrong).unwrap_err().code, ErrorCode::Conflict);
    let right = KvRequest::Cad { key: bytes("k"), expected: bytes("v") };
    assert_eq!(kv(&mut tables, &mut revision, right), Ok(KvResponse::Deleted { revision: 2, existed: true }));
    assert!(get(&tables, b"k").is_none());
}

#[test]
fn scan_paginates_with_prefix_and_continuation() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    for key in ["app/a", "app/b", "app/c", "apq", "ap"] {
        kv(&mut tables, &mut revision, put_request(key.as_bytes(), b"v")).unwrap();
    }
    let page = |after: Option<&str>| {
        let request = KvRequest::Scan {
            prefix: bytes("app/"),
            limit: 2,
            after: after.map(bytes),
            consistency: Consistency::Stale,
        };
        match read(&tables, revision, &request).unwrap().unwrap() {
            KvResponse::ScanPage { entries, next, .. } => (
                entries.into_iter().map(|e| String::from_utf8(e.key.into_vec()).unwrap()).collect::<Vec<_>>(),
                next.map(|n| String::from_utf8(n.into_vec()).unwrap()),
            ),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(page(None), (vec!["app/a".to_string(), "app/b".to_string()], Some("app/b".to_string())));
    assert_eq!(page(Some("app/b")), (vec!["app/c".to_string()], None));
}

#[test]
fn txn_takes_the_branch_its_compares_choose_at_one_revision() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    kv(&mut tables, &mut revision, put_request(b"x", b"1")).unwrap();
    let txn = |expected_version| KvRequest::Txn {
        compares: vec![Compare {
            key: bytes("x"),
            op: CompareOp::Equal,
            target: CompareTarget::Version(expected_version),
        }],
        success: vec![
            TxnOp::Put { key: bytes("x"), value: bytes("2") },
            TxnOp::Put { key: bytes("y"), value: bytes("2") },
        ],
        failure: vec![TxnOp::Get { key: bytes("x") }],
    };
    match kv(&mut tables, &mut revision, txn(5)).unwrap() {
        KvResponse::Txn { succeeded: false, revision: 1, results } => {
            assert!(matches!(&results[0], TxnOpResult::Get { entry: Some(entry) } if entry.value.as_slice() == b"1"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match kv(&mut tables, &mut revision, txn(1)).unwrap() {
        KvResponse::Txn { succeeded: true, revision: 2, .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(get(&tables, b"x").unwrap().mod_revision, 2);
    assert_eq!(get(&tables, b"y").unwrap().mod_revision, 2);
}

#[test]
fn missing_keys_compare_as_zero_and_never_equal_a_value() {
    let missing = None;
    let version = |op| Compare { key: bytes("m"), op, target: CompareTarget::Version(0) };
    assert!(evaluate(&missing, &version(CompareOp::Equal)));
    let value = Compare { key: bytes("m"), op: CompareOp::Equal, target: CompareTarget::Value(bytes("")) };
    assert!(!evaluate(&missing, &value));
}

#[test]
fn invalid_requests_change_nothing() {
    let (mut tables, mut revision) = (MemoryTables::default(), 0);
    let empty_key = kv(&mut tables, &mut revision, put_request(b"", b"v")).unwrap_err();
    assert_eq!(empty_key.code, ErrorCode::InvalidArgument);
    let huge = vec![0u8; crate::limits::VALUE_SIZE_BYTES_MAX + 1];
    assert_eq!(kv(&mut tables, &mut revision, put_request(b"k", &huge)).unwrap_err().code, ErrorCode::TooLarge);
    let ops = (0..=crate::limits::BATCH_OPS_COUNT_MAX)
        .map(|i| WriteOp::Put { key: bytes(format!("k{i}")), value: bytes("v") })
        .collect();
    assert_eq!(kv(&mut tables, &mut revision, KvRequest::BatchWrite { ops }).unwrap_err().code, ErrorCode::TooLarge);
    assert!(tables.rows.is_empty());
    assert_eq!(revision, 0);
}

#[derive(Clone, Debug)]
enum ModelOp {
    Put(u8, u8),
    Delete(u8),
    Cas(u8, Option<u8>, u8),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        (0u8..4).prop_map(ModelOp::Delete),
        (0u8..4, proptest::option::of(0u8..3), any::<u8>()).prop_map(|(k, e, v)| ModelOp::Cas(k, e, v)),
    ]
}

proptest! {
    /// The core agrees with a plain map on values, and revisions only ever grow by one per change.
    #[test]
    fn agrees_with_a_map_model(ops in proptest::collection::vec(model_op(), 1..64)) {
        let (mut tables, mut revision) = (MemoryTables::default(), 0u64);
        let mut model = std::collections::BTreeMap::<u8, u8>::new();
        for op in ops {
            let before = revision;
            let request = match &op {
                ModelOp::Put(k, v) => put_request(&[*k], &[*v]),
                ModelOp::Delete(k) => KvRequest::Delete { key: bytes(vec![*k]) },
                ModelOp::Cas(k, e, v) => KvRequest::Cas { key: bytes(vec![*k]), expected: e.map(|e| bytes(vec![e])), value: bytes(vec![*v]) },
            };
            let result = kv(&mut tables, &mut revision, request);
            let changed = match op {
                ModelOp::Put(k, v) => { model.insert(k, v); true }
                ModelOp::Delete(k) => model.remove(&k).is_some(),
                ModelOp::Cas(k, e, v) => {
                    if model.get(&k).copied() == e { model.insert(k, v); true } else {
                        prop_assert_eq!(result.unwrap_err().code, ErrorCode::Conflict);
                        false
                    }
                }
            };
            prop_assert_eq!(revision, before + u64::from(changed));
        }
        let actual: std::collections::BTreeMap<u8, u8> =
            tables.rows.iter().map(|(k, row)| (k[0], row.value[0])).collect();
        prop_assert_eq!(actual, model);
    }
}
