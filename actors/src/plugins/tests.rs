//! Plugin instances under their supervisor, in process and without a cluster: calls, every way a call can fail and
//! what happens to the instance, the bounded queue, quarantine, and generation switches under a stream of calls.
//! The wasm is the committed fixtures (`fixtures/wasm/`, rebuilt by `fixtures/plugins/build.sh`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pando_protocol::blob::BlobHash;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::plugin::{NodePluginState, Permission, PluginManifest, PluginRecord};

use super::*;

fn wasm(name: &str) -> Vec<u8> {
    let path = format!("{}/../fixtures/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn record(manifest: PluginManifest, generation: u64) -> PluginRecord {
    PluginRecord {
        manifest,
        wasm: BlobHash([0; 32]),
        wasm_size: 0,
        generation,
        enabled: true,
        installed_ms: 0,
        updated_ms: 0,
    }
}

struct Node {
    handle: PluginsHandle,
    supervisor: ActorRef<PluginsMsg>,
}

impl Node {
    /// A plugin supervisor alone: no storage, Raft or blob store runs behind its handles.
    async fn start(config: PluginConfig) -> Node {
        let handles = crate::tree::Handles::new(1, []);
        let args = handles.plugins_args(1, Clock::Wall, config, [7; 32]);
        let (supervisor, _) = Actor::spawn(None, PluginSupervisor, args).await.expect("supervisor starts");
        Node { handle: handles.plugins, supervisor }
    }

    async fn preload(&self, manifest: PluginManifest, generation: u64, wasm_name: &str) {
        let record = record(manifest, generation);
        self.supervisor.cast(PluginsMsg::Preload { record, wasm: wasm(wasm_name) }).unwrap();
        // The cast is handled in order: a status call after it answers once the generation loaded (or failed).
        self.status().await;
    }

    async fn status(&self) -> Vec<LocalPluginStatus> {
        ractor::call_t!(self.supervisor, PluginsMsg::Status, 30_000).expect("supervisor answers")
    }

    async fn plugin(&self, name: &str) -> LocalPluginStatus {
        self.status().await.into_iter().find(|status| status.name == name).expect("plugin known")
    }

    async fn call(&self, name: &str, function: &str, input: &[u8]) -> Result<(Vec<u8>, u64), WireError> {
        self.handle.routes.call(name, function, input.to_vec(), Duration::from_secs(10), None).await
    }
}

/// Waits (bounded) until the plugin's status on `node` satisfies `done`.
async fn wait_until(node: &Node, name: &str, done: impl Fn(&LocalPluginStatus) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.plugin(name).await;
        if done(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.supervisor.stop(None);
    }
}

fn manifest(name: &str) -> PluginManifest {
    PluginManifest { timeout_ms: 2_000, ..PluginManifest::new(name, "1.0.0") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_that_has_not_caught_up_with_the_cluster_serves_nothing() {
    // No Raft runs behind this node's handles, so it never catches up: every call is refused as starting, never
    // answered as not found (the plugin may well be installed) nor by what a stale state names.
    let node = Node::start(PluginConfig::default()).await;
    node.supervisor.cast(PluginsMsg::Reconcile).unwrap();
    node.status().await;
    assert!(node.handle.routes.is_starting());
    let refused = node.call("echo", "echo", b"").await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert!(refused.message.contains("starting"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_through_the_pool_and_unknown_functions_are_not_found() {
    let node = Node::start(PluginConfig::default()).await;
    node.preload(PluginManifest { instances: 2, ..manifest("echo") }, 3, "echo").await;
    let status = node.plugin("echo").await;
    assert_eq!((status.state, status.generation, status.instances.len()), (NodePluginState::Running, 3, 2));

    let (output, generation) = node.call("echo", "echo", b"hello").await.unwrap();
    assert_eq!((output.as_slice(), generation), (&b"hello"[..], 3));
    let (output, _) = node.call("echo", "tagged", br#"{"a":1}"#).await.unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&output).unwrap()["version"], "1");

    let missing = node.call("echo", "nope", b"").await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    // A plugin's own error is an answer: the instance keeps serving, nothing restarts.
    let refused = node.call("echo", "refuse", b"").await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::PluginFailed);
    assert!(refused.message.contains("refused on purpose"), "{refused}");
    assert_eq!(node.plugin("echo").await.restarts, 0);
    assert_eq!(node.call("ghost", "echo", b"").await.unwrap_err().code, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_timeouts_fuel_and_memory_fail_only_their_call_and_replace_the_instance() {
    let node = Node::start(PluginConfig { restart_intensity: 100, ..PluginConfig::default() }).await;
    node.preload(manifest("trap"), 1, "misbehave").await;
    node.preload(PluginManifest { timeout_ms: 300, fuel: 0, ..manifest("spin") }, 2, "misbehave").await;
    node.preload(PluginManifest { timeout_ms: 30_000, fuel: 50_000_000, ..manifest("fuel") }, 3, "misbehave").await;
    node.preload(PluginManifest { memory_pages: 64, ..manifest("hog") }, 4, "misbehave").await;

    let error = node.call("trap", "trap", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::PluginFailed);
    assert!(error.message.contains("trapped"), "{error}");

    let started = Instant::now();
    let error = node.call("spin", "spin", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped at {:?}", started.elapsed());

    let started = Instant::now();
    let error = node.call("fuel", "spin", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::PluginFailed);
    assert!(error.message.contains("fuel"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped at {:?}", started.elapsed());

    let error = node.call("hog", "hog", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::PluginFailed);
    assert!(error.message.contains("memory"), "{error}");

    // Each failed instance was replaced, and the replacement serves.
    for name in ["trap", "spin", "fuel", "hog"] {
        wait_until(&node, name, |status| status.restarts == 1 && status.instances.len() == 1).await;
        let (output, _) = node.call(name, "ok", b"").await.unwrap();
        assert_eq!(output, br#""ok""#, "{name}");
    }
}

/// Captures what the node logs (every thread), for tests that check a refusal is logged.
fn capture_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // Under `cargo test` every test of this crate shares the process: this must stay the only caller.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this test process");
    buffer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_the_manifest_lacks_is_refused_as_an_answer_and_logged() {
    let logs = capture_logs();
    let node = Node::start(PluginConfig::default()).await;
    node.preload(manifest("forbidden"), 1, "misbehave").await;
    let error = node.call("forbidden", "forbidden", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unauthorized, "{error}");
    assert!(error.message.contains("kv_write"), "{error}");
    assert_eq!(node.plugin("forbidden").await.restarts, 0);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("plugin host call refused") && logged.contains("forbidden") && logged.contains("kv_write"),
        "not logged: {logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_storm_quarantines_the_plugin_until_a_new_generation() {
    let node = Node::start(PluginConfig { restart_intensity: 3, ..PluginConfig::default() }).await;
    node.preload(manifest("storm"), 1, "misbehave").await;
    for failure in 1..=4u64 {
        let error = node.call("storm", "trap", b"").await.unwrap_err();
        assert_eq!(error.code, ErrorCode::PluginFailed, "{error}");
        if failure <= 3 {
            // The replacement is up before the next call, so each call meets a fresh instance.
            wait_until(&node, "storm", |status| status.restarts == failure && status.instances.len() == 1).await;
        }
    }
    wait_until(&node, "storm", |status| status.state == NodePluginState::Quarantined).await;
    let status = node.plugin("storm").await;
    assert!(status.last_error.as_deref().unwrap_or_default().contains("trapped"), "{status:?}");
    let error = node.call("storm", "ok", b"").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(error.message.contains("quarantined"), "{error}");

    // An operator's enable is a new generation: it serves again.
    node.preload(manifest("storm"), 2, "misbehave").await;
    assert_eq!(node.call("storm", "ok", b"").await.unwrap().1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_without_running_the_call() {
    let node = Node::start(PluginConfig::default()).await;
    node.preload(PluginManifest { queue: 1, timeout_ms: 1_500, fuel: 0, ..manifest("narrow") }, 1, "misbehave").await;
    let routes = node.handle.routes.clone();
    let job = |function: &str| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        (Job { function: function.into(), input: Vec::new(), deadline, reply: Some(reply), scope: None }, answer)
    };
    // One call occupies the only instance (it left the queue), one waits in the queue; the next finds it full.
    let (spin, first) = job("spin");
    assert!(routes.submit_to("narrow", None, spin).is_ok());
    wait_until(&node, "narrow", |status| status.queued == 0).await;
    let (ok, second) = job("ok");
    assert!(routes.submit_to("narrow", None, ok).is_ok());
    let third = routes.call("narrow", "ok", Vec::new(), Duration::from_secs(5), None).await.unwrap_err();
    assert_eq!(third.code, ErrorCode::Busy, "{third}");
    assert_eq!(first.await.unwrap().unwrap_err().code, ErrorCode::Timeout);
    // The queued call runs on the replacement instance.
    assert_eq!(second.await.unwrap().unwrap(), br#""ok""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_a_stream_of_calls_loses_none_and_never_goes_back() {
    let node = Node::start(PluginConfig::default()).await;
    node.preload(PluginManifest { instances: 2, ..manifest("echo") }, 1, "echo").await;
    let routes = node.handle.routes.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..4 {
        let routes = routes.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let input = format!("{{\"caller\":{caller},\"n\":{n}}}");
                let (output, generation) = routes
                    .call("echo", "tagged", input.clone().into_bytes(), Duration::from_secs(10), None)
                    .await
                    .unwrap_or_else(|error| panic!("call {n} of caller {caller} failed: {error}"));
                let output: serde_json::Value = serde_json::from_slice(&output).unwrap();
                assert_eq!(output["input"], serde_json::from_str::<serde_json::Value>(&input).unwrap());
                let version = output["version"].as_str().unwrap().to_string();
                assert_eq!(version, if generation == 1 { "1" } else { "2" }, "answered by the generation it names");
                seen.push(generation);
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.preload(PluginManifest { instances: 2, version: "2.0.0".into(), ..manifest("echo") }, 2, "echo-v2").await;
    // A new generation whose init fails is refused; calls stay on generation 2.
    node.preload(manifest("echo"), 3, "bad-init").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let seen = caller.await.unwrap();
        assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "went back a generation");
        assert_eq!(seen.first(), Some(&1));
        assert_eq!(seen.last(), Some(&2));
    }
    let status = node.plugin("echo").await;
    assert_eq!((status.state, status.generation), (NodePluginState::LoadFailed, 2));
    assert!(status.last_error.unwrap().contains("init"));
    // The old generation's instances drained and stopped, and its pool with them: one pool is left, generation 2's,
    // with its two instances.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.supervisor.get_children().len() != 1 {
        assert!(Instant::now() < deadline, "old pools still alive: {}", node.supervisor.get_children().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = node.supervisor.get_children().pop().unwrap();
    assert_eq!(pool.get_children().len(), 2);
    assert_eq!(node.plugin("echo").await.instances.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_wasi_runs_too() {
    let node = Node::start(PluginConfig::default()).await;
    node.preload(manifest("echo"), 1, "echo-wasi").await;
    assert_eq!(node.call("echo", "echo", b"wasi").await.unwrap().0, b"wasi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_beyond_the_nodes_caps_do_not_load() {
    let node = Node::start(PluginConfig { memory_pages_max: 16, ..PluginConfig::default() }).await;
    node.preload(PluginManifest { memory_pages: 17, ..manifest("big") }, 1, "echo").await;
    let status = node.plugin("big").await;
    assert_eq!(status.state, NodePluginState::LoadFailed);
    assert!(status.last_error.unwrap().contains("memory pages"));
    assert_eq!(node.call("big", "echo", b"").await.unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn plugin_signing_keys_are_per_plugin_and_never_the_secret() {
    let a = plugin_signing_key(&[1; 32], "a");
    assert_eq!(a.to_bytes(), plugin_signing_key(&[1; 32], "a").to_bytes());
    assert_ne!(a.to_bytes(), plugin_signing_key(&[1; 32], "b").to_bytes());
    assert_ne!(a.to_bytes(), plugin_signing_key(&[2; 32], "a").to_bytes());
    assert_ne!(a.to_bytes(), [1; 32]);
    let _ = Permission::ALL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_in_a_call_shows_the_function_and_for_how_long_and_its_plugin_the_last_failure() {
    let node = Node::start(PluginConfig::default()).await;
    node.preload(PluginManifest { timeout_ms: 1_500, fuel: 0, ..manifest("slow") }, 1, "misbehave").await;
    let tree = || async {
        let detail = ractor::call_t!(
            node.supervisor,
            |reply| PluginsMsg::Control(Control::Status(reply, tokio::time::Instant::now() + Duration::from_secs(9))),
            10_000
        )
        .expect("the supervisor answers");
        detail.children.into_iter().find(|plugin| plugin.id == "slow").expect("the plugin is listed")
    };
    let idle = tree().await;
    assert_eq!(idle.children.len(), 1, "one instance: {idle:?}");
    assert_eq!(idle.children[0].current, None);
    assert_eq!(idle.last_failure, None);

    let routes = node.handle.routes.clone();
    let spinning =
        tokio::spawn(async move { routes.call("slow", "spin", Vec::new(), Duration::from_secs(5), None).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    let current = loop {
        let plugin = tree().await;
        if let Some(current) = plugin.children.first().and_then(|instance| instance.current.clone())
            && current.running_ms >= 200
        {
            break current;
        }
        assert!(Instant::now() < deadline, "the call never showed: {plugin:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(current.what, "call spin");

    // The call times out, the instance is replaced, and the plugin shows why; the new instance is idle.
    assert_eq!(spinning.await.unwrap().unwrap_err().code, ErrorCode::Timeout);
    wait_until(&node, "slow", |status| status.restarts == 1 && status.instances.len() == 1).await;
    let replaced = tree().await;
    let failure = replaced.last_failure.expect("the failure is shown");
    assert!(failure.reason.contains("timeout"), "{failure:?}");
    assert_eq!(replaced.children[0].current, None);
}
