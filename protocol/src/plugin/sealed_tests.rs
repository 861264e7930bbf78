//! Sealed storage: out of every client read, guarded writes that are all or nothing, one plugin's rows apart from
//! another's, bounded usage; and a random test against a map as the reference model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::blob::{BlobCommand, BlobHash, BlobRef};
use crate::command::{Command, CommandOutput, Proposal};
use crate::kv::{KvRequest, KvResponse, bytes};
use crate::memory_tables::MemoryTables;
use crate::plugin::{PluginCommand, PluginManifest, PluginResponse};
use crate::state_machine::{apply_proposal, put_request, read};

fn run(tables: &mut MemoryTables, revision: &mut u64, command: Command) -> Result<CommandOutput, WireError> {
    run_quietly(tables, revision, command, false)
}

/// Runs `command`; with `quiet`, checks that it published nothing (no hook event, no coordination event).
fn run_quietly(
    tables: &mut MemoryTables,
    revision: &mut u64,
    command: Command,
    quiet: bool,
) -> Result<CommandOutput, WireError> {
    let mut outcome =
        apply_proposal(tables, revision, &Proposal { stamp_ms: 1_000, commands: vec![command] }).expect("no faults");
    if quiet {
        assert!(outcome.hooks.is_empty() && outcome.events.is_empty(), "{:?} {:?}", outcome.hooks, outcome.events);
    }
    outcome.results.remove(0)
}

/// Installs `name` with `permissions` (a fresh wasm blob each time).
fn install(tables: &mut MemoryTables, name: &str, permissions: &[Permission]) {
    let hash = BlobHash([name.len() as u8; 32]);
    let added =
        BlobCommand::Added { blob: BlobRef { hash, size: 1_000 }, holder: 1, replicas: 1, pin: false, gc_grace_ms: 10 };
    run(tables, &mut 0, Command::Blob(added)).unwrap();
    let manifest = PluginManifest { permissions: permissions.to_vec(), ..PluginManifest::new(name, "1.0.0") };
    run(tables, &mut 0, Command::Plugin(PluginCommand::Install { manifest, wasm: hash })).unwrap();
}

fn sealed_plugin(name: &str) -> MemoryTables {
    let mut tables = MemoryTables::default();
    install(&mut tables, name, &[Permission::SealedStorage]);
    tables
}

fn write(tables: &mut MemoryTables, plugin: &str, ops: Vec<SealedOp>) -> Result<SealedWritten, WireError> {
    let mut revision = 0;
    let command = Command::Plugin(PluginCommand::Sealed { plugin: plugin.into(), ops });
    match run_quietly(tables, &mut revision, command, true)? {
        CommandOutput::Plugin(PluginResponse::Sealed(written)) => {
            assert_eq!(revision, 0, "a sealed write takes no KV revision");
            Ok(written)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn put(key: &str, value: &str) -> SealedOp {
    SealedOp::Put { key: bytes(key), value: bytes(value) }
}

fn check(key: &str, expected: Option<&str>) -> SealedOp {
    SealedOp::Check { key: bytes(key), expected: expected.map(bytes) }
}

fn value(tables: &MemoryTables, plugin: &str, key: &str) -> Option<String> {
    get(tables, plugin, key.as_bytes()).unwrap().unwrap().map(|bytes| String::from_utf8(bytes).unwrap())
}

#[test]
fn sealed_rows_are_out_of_every_client_read_of_the_keyspace() {
    let mut tables = sealed_plugin("secrets");
    write(&mut tables, "secrets", vec![put("transit/keys/payments", "key material")]).unwrap();
    assert_eq!(value(&tables, "secrets", "transit/keys/payments").as_deref(), Some("key material"));
    // A scan of the whole keyspace, as an admin's `kv scan ""` asks, and a get of where a plugin's keys would be.
    let scan = KvRequest::Scan { prefix: bytes(""), limit: 1_000, after: None, consistency: Default::default() };
    match read(&tables, 0, &scan).unwrap().unwrap() {
        KvResponse::ScanPage { entries, .. } => assert!(entries.is_empty(), "{entries:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let get = KvRequest::Get { key: bytes("plugin/secrets/transit/keys/payments"), consistency: Default::default() };
    assert_eq!(read(&tables, 0, &get).unwrap().unwrap(), KvResponse::Entry { entry: None });
}

#[test]
fn a_failed_check_refuses_the_whole_write_and_names_the_key() {
    let mut tables = sealed_plugin("secrets");
    write(&mut tables, "secrets", vec![put("a", "1")]).unwrap();
    let error = write(&mut tables, "secrets", vec![put("b", "2"), check("a", Some("0")), put("a", "3")]).unwrap_err();
    assert_eq!(error.code, ErrorCode::Conflict);
    assert!(error.message.contains("\"a\" holds another value"), "{error}");
    assert_eq!(value(&tables, "secrets", "b"), None, "nothing of a refused write lands");
    let error = write(&mut tables, "secrets", vec![check("c", Some("x")), put("c", "1")]).unwrap_err();
    assert!(error.message.contains("does not exist"), "{error}");
    // Checks that hold: a compare-and-swap, a create-if-absent and a conditional delete in one write.
    let written = write(
        &mut tables,
        "secrets",
        vec![check("a", Some("1")), put("a", "4"), check("n", None), put("n", "new"), check("a", Some("1"))],
    )
    .unwrap();
    assert_eq!(written.changed, 2);
    write(&mut tables, "secrets", vec![check("n", Some("new")), SealedOp::Delete { key: bytes("n") }]).unwrap();
    assert_eq!((value(&tables, "secrets", "a").as_deref(), value(&tables, "secrets", "n")), (Some("4"), None));
}

#[test]
fn a_plugin_reaches_only_its_own_rows_even_under_a_name_that_extends_another() {
    let mut tables = sealed_plugin("ab");
    install(&mut tables, "a", &[Permission::SealedStorage]);
    write(&mut tables, "ab", vec![put("k", "of ab")]).unwrap();
    write(&mut tables, "a", vec![put("bk", "of a")]).unwrap();
    assert_eq!(value(&tables, "a", "k"), None);
    assert_eq!(value(&tables, "ab", "k").as_deref(), Some("of ab"));
    let page = scan(&tables, "a", b"", None, 100).unwrap().unwrap();
    assert_eq!(page.entries, vec![(b"bk".to_vec(), b"of a".to_vec())]);
}

#[test]
fn sealed_storage_needs_an_enabled_plugin_with_the_permission() {
    let mut tables = MemoryTables::default();
    install(&mut tables, "plain", &[Permission::KvRead, Permission::KvWrite]);
    let error = write(&mut tables, "plain", vec![put("k", "v")]).unwrap_err();
    assert_eq!(error.code, ErrorCode::Unauthorized);
    assert!(error.message.contains("sealed_storage"), "{error}");
    assert_eq!(get(&tables, "plain", b"k").unwrap().unwrap_err().code, ErrorCode::Unauthorized);
    assert_eq!(write(&mut tables, "missing", vec![put("k", "v")]).unwrap_err().code, ErrorCode::NotFound);
    install(&mut tables, "sealed", &[Permission::SealedStorage]);
    write(&mut tables, "sealed", vec![put("k", "v")]).unwrap();
    let disable = PluginCommand::SetEnabled { name: "sealed".into(), enabled: false };
    run(&mut tables, &mut 0, Command::Plugin(disable)).unwrap();
    assert_eq!(write(&mut tables, "sealed", vec![put("k", "w")]).unwrap_err().code, ErrorCode::Unavailable);
    assert_eq!(get(&tables, "sealed", b"k").unwrap().unwrap_err().code, ErrorCode::Unavailable);
    // A client's plugin KV write cannot reach sealed rows either: it lands in the KV.
    let enable = PluginCommand::SetEnabled { name: "sealed".into(), enabled: true };
    run(&mut tables, &mut 0, Command::Plugin(enable)).unwrap();
    run(&mut tables, &mut 0, Command::Kv(put_request(b"PS/sealed/k", b"forged"))).unwrap();
    assert_eq!(value(&tables, "sealed", "k").as_deref(), Some("v"));
}

#[test]
fn malformed_writes_are_refused_with_their_reason() {
    let mut tables = sealed_plugin("p");
    let cases: Vec<(Vec<SealedOp>, ErrorCode, &str)> = vec![
        (vec![], ErrorCode::InvalidArgument, "1 to 64 steps"),
        (vec![check("a", None)], ErrorCode::InvalidArgument, "checks alone"),
        (vec![put("", "v")], ErrorCode::InvalidArgument, "must not be empty"),
        (vec![put(&"k".repeat(KEY_SIZE_BYTES_MAX + 1), "v")], ErrorCode::TooLarge, "sealed key is"),
        (vec![put("k", &"v".repeat(VALUE_SIZE_BYTES_MAX + 1))], ErrorCode::TooLarge, "sealed value is"),
        ((0..65).map(|i| put(&format!("k{i}"), "v")).collect(), ErrorCode::InvalidArgument, "1 to 64 steps"),
    ];
    for (ops, code, needle) in cases {
        let error = write(&mut tables, "p", ops).unwrap_err();
        assert_eq!(error.code, code, "{error}");
        assert!(error.message.contains(needle), "{error} lacks {needle:?}");
    }
    assert_eq!(usage(&tables, "p").unwrap(), SealedUsage::default());
}

#[test]
fn usage_counts_rows_and_bytes_and_a_write_past_the_bound_changes_nothing() {
    let mut tables = sealed_plugin("p");
    let big = "v".repeat(VALUE_SIZE_BYTES_MAX);
    let written = write(&mut tables, "p", vec![put("a", "12345"), put("b", "1")]).unwrap();
    assert_eq!(written.usage, SealedUsage { rows: 2, bytes: 8 });
    let written = write(&mut tables, "p", vec![put("a", "1"), SealedOp::Delete { key: bytes("b") }]).unwrap();
    assert_eq!(written.usage, SealedUsage { rows: 1, bytes: 2 });
    let per_write = PLUGIN_SEALED_BYTES_MAX / (VALUE_SIZE_BYTES_MAX as u64 + 4);
    for i in 0..per_write {
        write(&mut tables, "p", vec![put(&format!("{i:03}"), &big)]).unwrap();
    }
    let before = usage(&tables, "p").unwrap();
    let error = write(&mut tables, "p", vec![put("over", &big)]).unwrap_err();
    assert_eq!(error.code, ErrorCode::TooLarge, "{error}");
    assert_eq!(usage(&tables, "p").unwrap(), before);
    assert_eq!(value(&tables, "p", "over"), None);
    // Shrinking is always allowed, and deleting every row drops the usage row.
    write(&mut tables, "p", vec![put("000", "small")]).unwrap();
    let keys: Vec<Vec<u8>> = (0..per_write).map(|i| format!("{i:03}").into_bytes()).collect();
    for chunk in keys.chunks(PLUGIN_SEALED_OPS_MAX) {
        let ops = chunk.iter().map(|key| SealedOp::Delete { key: Bytes::from(key.clone()) }).collect();
        write(&mut tables, "p", ops).unwrap();
    }
    write(&mut tables, "p", vec![SealedOp::Delete { key: bytes("a") }]).unwrap();
    assert_eq!(usage(&tables, "p").unwrap(), SealedUsage::default());
    assert_eq!(tables.coord_get(&usage_key("p")).unwrap(), None);
}

#[test]
fn a_scan_pages_through_a_prefix_after_a_key() {
    let mut tables = sealed_plugin("p");
    let ops = ["kv/a", "kv/b", "kv/c", "kw", "k"].iter().map(|key| put(key, key)).collect();
    write(&mut tables, "p", ops).unwrap();
    let keys = |page: &SealedPage| {
        page.entries.iter().map(|(key, _)| String::from_utf8_lossy(key).into_owned()).collect::<Vec<_>>()
    };
    let first = scan(&tables, "p", b"kv/", None, 2).unwrap().unwrap();
    assert_eq!((keys(&first), first.next.as_deref()), (vec!["kv/a".into(), "kv/b".into()], Some(&b"kv/b"[..])));
    let second = scan(&tables, "p", b"kv/", first.next.as_deref(), 2).unwrap().unwrap();
    assert_eq!((keys(&second), second.next), (vec!["kv/c".to_string()], None));
    let after_all = scan(&tables, "p", b"kv/", Some(b"kx"), 2).unwrap().unwrap();
    assert!(after_all.entries.is_empty());
}

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    /// A check of key `.0` against the model's value when `.1`, else against a wrong one; then a put.
    CheckedPut(u8, bool, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6, 0u8..40).prop_map(|(key, size)| Step::Put(key, size)),
        (0u8..6).prop_map(Step::Delete),
        (0u8..6, any::<bool>(), 0u8..40).prop_map(|(key, right, size)| Step::CheckedPut(key, right, size)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random writes of up to four steps agree with a map: the rows, each answer, and the usage row.
    #[test]
    fn random_sealed_writes_agree_with_a_map(writes in prop::collection::vec(prop::collection::vec(step(), 1..4), 1..24)) {
        let mut tables = sealed_plugin("p");
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for steps in writes {
            let mut ops = Vec::new();
            let mut next = model.clone();
            let mut holds = true;
            for step in &steps {
                match *step {
                    Step::Put(key, size) => {
                        ops.push(SealedOp::Put { key: Bytes::from(vec![key]), value: Bytes::from(vec![7; size.into()]) });
                        next.insert(vec![key], vec![7; size.into()]);
                    }
                    Step::Delete(key) => {
                        ops.push(SealedOp::Delete { key: Bytes::from(vec![key]) });
                        next.remove(&vec![key]);
                    }
                    Step::CheckedPut(key, right, size) => {
                        // Checks see the rows before the write, as the model before this write holds them.
                        let current = model.get(&vec![key]).cloned();
                        let expected = if right { current.clone() } else { Some(vec![9; 3]) };
                        holds &= expected == current;
                        ops.push(SealedOp::Check { key: Bytes::from(vec![key]), expected: expected.map(Bytes::from) });
                        ops.push(SealedOp::Put { key: Bytes::from(vec![key]), value: Bytes::from(vec![7; size.into()]) });
                        next.insert(vec![key], vec![7; size.into()]);
                    }
                }
            }
            let answer = write(&mut tables, "p", ops);
            prop_assert_eq!(answer.is_ok(), holds, "{:?}", answer);
            if holds {
                model = next;
            }
            let page = scan(&tables, "p", b"", None, 100).unwrap().unwrap();
            let rows: BTreeMap<Vec<u8>, Vec<u8>> = page.entries.into_iter().collect();
            prop_assert_eq!(&rows, &model);
            let bytes = model.iter().map(|(key, value)| (key.len() + value.len()) as u64).sum();
            prop_assert_eq!(usage(&tables, "p").unwrap(), SealedUsage { rows: model.len() as u64, bytes });
        }
    }
}
