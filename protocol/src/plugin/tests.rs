//! The plugin registry: manifest validation, generations, blob references, and the prefix and permission checks of
//! plugin KV access, applied by the state machine itself.

use super::*;
use crate::blob::{BlobCommand, BlobRef};
use crate::command::{Command, CommandOutput, Proposal};
use crate::kv::{KvResponse, bytes};
use crate::memory_tables::MemoryTables;
use crate::state_machine::{apply_proposal, put_request};

fn run(tables: &mut MemoryTables, revision: &mut u64, command: Command) -> Result<CommandOutput, WireError> {
    let mut outcome =
        apply_proposal(tables, revision, &Proposal { stamp_ms: 1_000, commands: vec![command] }).expect("no faults");
    outcome.results.remove(0)
}

fn wasm(tables: &mut MemoryTables, seed: u8) -> BlobHash {
    let hash = BlobHash([seed; 32]);
    let added =
        BlobCommand::Added { blob: BlobRef { hash, size: 1_000 }, holder: 1, replicas: 1, pin: false, gc_grace_ms: 10 };
    run(tables, &mut 0, Command::Blob(added)).unwrap();
    hash
}

fn install(tables: &mut MemoryTables, manifest: PluginManifest, wasm: BlobHash) -> Result<PluginRecord, WireError> {
    match run(tables, &mut 0, Command::Plugin(PluginCommand::Install { manifest, wasm }))? {
        CommandOutput::Plugin(PluginResponse::Record(record)) => Ok(record),
        other => panic!("unexpected {other:?}"),
    }
}

fn plugin_kv(tables: &mut MemoryTables, plugin: &str, request: KvRequest) -> Result<CommandOutput, WireError> {
    run(tables, &mut 0, Command::Plugin(PluginCommand::Kv { plugin: plugin.into(), request }))
}

fn with_permissions(name: &str, permissions: &[Permission]) -> PluginManifest {
    PluginManifest { permissions: permissions.to_vec(), ..PluginManifest::new(name, "1.0.0") }
}

#[test]
fn manifests_are_validated_field_by_field() {
    let good = PluginManifest::new("hello", "0.1.0");
    good.validate().unwrap();
    let cases: Vec<(PluginManifest, &str)> = vec![
        (PluginManifest::new("", "1"), "plugin name"),
        (PluginManifest::new("Hello", "1"), "plugin name"),
        (PluginManifest::new("a/b", "1"), "plugin name"),
        (PluginManifest::new("a".repeat(65), "1"), "plugin name"),
        (PluginManifest::new("hello", ""), "`version`"),
        (PluginManifest::new("hello", "1 2"), "`version`"),
        (PluginManifest { memory_pages: 0, ..good.clone() }, "`memory_pages`"),
        (PluginManifest { memory_pages: PLUGIN_MEMORY_PAGES_MAX + 1, ..good.clone() }, "`memory_pages`"),
        (PluginManifest { timeout_ms: 0, ..good.clone() }, "`timeout_ms`"),
        (PluginManifest { fuel: PLUGIN_FUEL_MAX + 1, ..good.clone() }, "`fuel`"),
        (PluginManifest { instances: 0, ..good.clone() }, "`instances`"),
        (PluginManifest { instances: 17, ..good.clone() }, "`instances`"),
        (PluginManifest { queue: 0, ..good.clone() }, "`queue`"),
        (PluginManifest { permissions: vec![Permission::KvRead, Permission::KvRead], ..good.clone() }, "twice"),
        (PluginManifest { kv_prefixes: vec!["plugin/other/".into()], ..good.clone() }, "other plugins"),
        (PluginManifest { kv_prefixes: vec!["plug".into()], ..good.clone() }, "other plugins"),
        (PluginManifest { kv_prefixes: vec!["plugin/hello".into()], ..good.clone() }, "other plugins"),
        (PluginManifest { kv_prefixes: vec!["".into()], ..good.clone() }, "`kv_prefixes`"),
    ];
    for (manifest, expected) in cases {
        let error = manifest.validate().expect_err(&format!("{manifest:?} should be refused"));
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.contains(expected), "{:?} does not mention {expected}", error.message);
    }
    let own = PluginManifest { kv_prefixes: vec!["plugin/hello/sub/".into(), "app/".into()], ..good.clone() };
    own.validate().unwrap();
    assert_eq!(good.prefixes(), vec![b"plugin/hello/".to_vec()]);
}

#[test]
fn install_upgrade_enable_and_remove_take_new_generations_and_move_the_wasm_reference() {
    let mut tables = MemoryTables::default();
    let v1 = wasm(&mut tables, 1);
    let v2 = wasm(&mut tables, 2);
    let first = install(&mut tables, PluginManifest::new("hello", "1"), v1).unwrap();
    assert!(first.enabled);
    assert_eq!(crate::blob::load(&tables, &v1).unwrap().unwrap().kv_refs, 1);
    let upgraded = install(&mut tables, PluginManifest::new("hello", "2"), v2).unwrap();
    assert!(upgraded.generation > first.generation);
    assert_eq!(upgraded.installed_ms, first.installed_ms);
    assert_eq!(crate::blob::load(&tables, &v1).unwrap().unwrap().kv_refs, 0);
    assert_eq!(crate::blob::load(&tables, &v2).unwrap().unwrap().kv_refs, 1);

    let disable = Command::Plugin(PluginCommand::SetEnabled { name: "hello".into(), enabled: false });
    let CommandOutput::Plugin(PluginResponse::Record(disabled)) = run(&mut tables, &mut 0, disable).unwrap() else {
        panic!()
    };
    assert!(!disabled.enabled && disabled.generation > upgraded.generation);

    let remove = Command::Plugin(PluginCommand::Remove { name: "hello".into() });
    let outcome =
        apply_proposal(&mut tables, &mut 0, &Proposal { stamp_ms: 2_000, commands: vec![remove.clone()] }).unwrap();
    assert!(matches!(outcome.events[..], [.., CoordEvent::PluginChanged { .. }]));
    assert!(load(&tables, "hello").unwrap().is_none());
    assert_eq!(crate::blob::load(&tables, &v2).unwrap().unwrap().kv_refs, 0);
    assert_eq!(run(&mut tables, &mut 0, remove).unwrap_err().code, ErrorCode::NotFound);

    // A reinstall never reuses a generation a node may still remember.
    let again = install(&mut tables, PluginManifest::new("hello", "3"), v2).unwrap();
    assert!(again.generation > disabled.generation + 1);
}

#[test]
fn installing_needs_a_wasm_blob_that_exists() {
    let mut tables = MemoryTables::default();
    let error = install(&mut tables, PluginManifest::new("hello", "1"), BlobHash([9; 32])).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(list(&tables).unwrap().is_empty());
}

#[test]
fn plugin_kv_access_is_refused_by_the_state_machine_outside_prefixes_and_permissions() {
    let mut tables = MemoryTables::default();
    let blob = wasm(&mut tables, 1);
    install(&mut tables, with_permissions("counter", &[Permission::KvRead, Permission::KvWrite]), blob).unwrap();
    install(&mut tables, with_permissions("reader", &[Permission::KvRead]), blob).unwrap();
    install(&mut tables, with_permissions("nothing", &[]), blob).unwrap();
    let mut revision = 0;
    run(&mut tables, &mut revision, Command::Kv(put_request(b"plugin/reader/x", b"theirs"))).unwrap();
    run(&mut tables, &mut revision, Command::Kv(put_request(b"config/x", b"cluster"))).unwrap();

    let own = plugin_kv(&mut tables, "counter", put_request(b"plugin/counter/n", b"1")).unwrap();
    assert!(matches!(own, CommandOutput::Kv(KvResponse::Written { .. })));

    let refused = [
        ("counter", put_request(b"plugin/reader/x", b"stolen")),
        ("counter", put_request(b"config/x", b"stolen")),
        ("counter", KvRequest::Delete { key: bytes(b"plugin/reader/x") }),
        ("counter", KvRequest::Get { key: bytes(b"plugin/reader/x"), consistency: Default::default() }),
        (
            "counter",
            KvRequest::Scan { prefix: bytes(b"plugin/"), limit: 10, after: None, consistency: Default::default() },
        ),
        (
            "counter",
            KvRequest::BatchWrite {
                ops: vec![
                    crate::kv::WriteOp::Put { key: bytes(b"plugin/counter/a"), value: bytes(b"1") },
                    crate::kv::WriteOp::Put { key: bytes(b"plugin/reader/a"), value: bytes(b"1") },
                ],
            },
        ),
        ("reader", put_request(b"plugin/reader/y", b"no write permission")),
        ("nothing", KvRequest::Get { key: bytes(b"plugin/nothing/a"), consistency: Default::default() }),
        ("ghost", put_request(b"plugin/ghost/a", b"not installed")),
    ];
    for (plugin, request) in refused {
        let error = plugin_kv(&mut tables, plugin, request.clone()).expect_err(&format!("{plugin} {request:?}"));
        assert!(matches!(error.code, ErrorCode::Unauthorized | ErrorCode::NotFound), "{error}");
    }
    // Nothing a refused request named changed.
    use crate::state_machine::KvRead;
    assert_eq!(tables.get(b"plugin/reader/x").unwrap().unwrap().value, b"theirs");
    assert_eq!(tables.get(b"config/x").unwrap().unwrap().value, b"cluster");
    assert!(tables.get(b"plugin/counter/a").unwrap().is_none());

    // A disabled plugin's writes are refused too.
    run(&mut tables, &mut 0, Command::Plugin(PluginCommand::SetEnabled { name: "counter".into(), enabled: false }))
        .unwrap();
    let error = plugin_kv(&mut tables, "counter", put_request(b"plugin/counter/n", b"2")).unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
}

#[test]
fn plugin_calls_name_client_functions_only() {
    for bad in ["", "init", "on_timer", "on_hook", "_start", "a b", &"f".repeat(129)] {
        let request = PluginRequest::Call { name: "hello".into(), function: bad.into(), input: bytes(b"") };
        assert_eq!(request.validate().unwrap_err().code, ErrorCode::InvalidArgument, "{bad:?}");
    }
    let big = PluginRequest::Call {
        name: "hello".into(),
        function: "greet".into(),
        input: Bytes::from(vec![0; PLUGIN_CALL_BYTES_MAX + 1]),
    };
    assert_eq!(big.validate().unwrap_err().code, ErrorCode::TooLarge);
}

#[test]
fn reports_are_kept_per_node_and_cut_to_size() {
    let mut tables = MemoryTables::default();
    let blob = wasm(&mut tables, 1);
    let record = install(&mut tables, PluginManifest::new("hello", "1"), blob).unwrap();
    for node in [2, 1] {
        let status = NodePluginStatus {
            node,
            running: record.generation,
            state: NodePluginState::Running,
            generation: record.generation,
            error: Some("x".repeat(5_000)),
            reported_ms: 0,
        };
        run(&mut tables, &mut 0, Command::Plugin(PluginCommand::Report { name: "hello".into(), status })).unwrap();
    }
    let info = info(&tables, record).unwrap();
    assert_eq!(info.nodes.iter().map(|status| status.node).collect::<Vec<_>>(), vec![1, 2]);
    assert!(info.nodes.iter().all(|status| status.error.as_ref().unwrap().len() == PLUGIN_REPORT_ERROR_BYTES_MAX));
    assert!(info.nodes.iter().all(|status| status.reported_ms == 1_000));
}
