//! Loading a generation: its wasm fetched from the cluster (verified against the hash the log names), checked
//! against this node's caps, and compiled once with the host functions bound to the plugin.

use std::sync::Arc;
use std::time::Duration;

use extism::CompiledPlugin;
use pando_protocol::plugin::{PluginManifest, PluginRecord};

use super::host;
use super::{PluginConfig, PluginsArgs};

pub struct Compiled {
    pub(super) module: Module,
    pub(super) host: Arc<host::HostContext>,
}

/// What runs a plugin's code: extism on a node; in the simulated world a deterministic stand-in
/// ([`super::sim_engine`]), because wasmtime's threads and clocks cannot replay from a seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PluginEngine {
    #[default]
    Extism,
    Simulated,
}

/// A generation's code, compiled once and instantiated by each of its instances.
#[derive(Clone)]
pub(super) enum Module {
    /// Wasm compiled by extism (wasmtime).
    Wasm(Arc<CompiledPlugin>),
    /// The simulator's deterministic stand-in ([`super::sim_engine`]).
    Simulated(Arc<super::sim_engine::SimModule>),
}

#[derive(Debug)]
pub struct LoadError {
    pub(super) message: String,
    /// Worth another try later (the wasm could not be fetched), as opposed to a module that will never load.
    pub(super) transient: bool,
}

/// The import module of WASI preview 1.
const WASI_MODULE: &[u8] = b"wasi_snapshot_preview1";

/// Fetches a generation's wasm (from the cluster when this node has no copy) and compiles it.
pub(super) async fn load(record: &PluginRecord, args: &PluginsArgs) -> Result<Compiled, LoadError> {
    check_caps(&record.manifest, &args.config)?;
    let wasm = fetch_wasm(record, args).await.map_err(|message| LoadError { message, transient: true })?;
    compile(record, wasm, args).await
}

pub(super) fn check_caps(manifest: &PluginManifest, config: &PluginConfig) -> Result<(), LoadError> {
    let caps = [
        ("memory pages", manifest.memory_pages, config.memory_pages_max),
        ("ms of timeout", manifest.timeout_ms, config.timeout_ms_max),
    ];
    for (what, asked, allowed) in caps {
        if asked > allowed {
            return Err(LoadError {
                message: format!("the manifest asks for {asked} {what}; this node allows {allowed}"),
                transient: false,
            });
        }
    }
    Ok(())
}

/// Compiles a generation once, with the manifest's limits and the host functions bound to the plugin.
pub(super) async fn compile(record: &PluginRecord, wasm: Vec<u8>, args: &PluginsArgs) -> Result<Compiled, LoadError> {
    let manifest = &record.manifest;
    let fatal = |message: String| LoadError { message, transient: false };
    let host = Arc::new(host::HostContext::new(manifest.clone(), record.generation, args));
    if args.engine == PluginEngine::Simulated {
        let module = super::sim_engine::compile(&wasm)?;
        return Ok(Compiled { module: Module::Simulated(Arc::new(module)), host });
    }
    // A module built for wasm32-wasip1 imports WASI: it gets extism's WASI context, which has a clock and randomness
    // but no files, environment, network or output. Modules without WASI imports run without it.
    let wasi = wasm.windows(WASI_MODULE.len()).any(|window| window == WASI_MODULE);
    let extism_manifest = extism::Manifest::new([extism::Wasm::data(wasm)])
        .with_memory_max(manifest.memory_pages)
        .with_timeout(Duration::from_millis(manifest.timeout_ms.into()));
    let functions = host::functions(host.clone());
    let fuel = manifest.fuel;
    let compiled = tokio::task::spawn_blocking(move || {
        let mut builder =
            extism::PluginBuilder::new(extism_manifest).with_wasi(wasi).with_cache_disabled().with_functions(functions);
        if fuel > 0 {
            builder = builder.with_fuel_limit(fuel);
        }
        builder.compile()
    })
    .await
    .map_err(|error| fatal(format!("compiling panicked: {error}")))?
    .map_err(|error| fatal(format!("the wasm does not compile: {error:#}")))?;
    Ok(Compiled { module: Module::Wasm(Arc::new(compiled)), host })
}

/// The wasm bytes of a generation, verified against the hash the log names.
async fn fetch_wasm(record: &PluginRecord, args: &PluginsArgs) -> Result<Vec<u8>, String> {
    let node = args.blobs.node().map_err(|unavailable| unavailable.to_string())?;
    let reader = args.storage.reader().map_err(|unavailable| unavailable.to_string())?;
    let holders =
        reader.blob(&record.wasm).map_err(|fault| fault.to_string())?.map(|blob| blob.holders).unwrap_or_default();
    let _pin = node
        .ensure_local(&record.wasm, record.wasm_size, &holders)
        .await
        .map_err(|error| format!("cannot fetch the wasm blob {}: {error}", record.wasm))?;
    let bytes = node
        .store
        .get(record.wasm)
        .await
        .map_err(|error| format!("cannot read the wasm blob {}: {error}", record.wasm))?;
    if blake3::hash(&bytes).as_bytes() != record.wasm.as_bytes() {
        return Err(format!("the wasm blob {} does not match its hash", record.wasm));
    }
    Ok(bytes.to_vec())
}
