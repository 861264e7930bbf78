//! Plugins as the replicated state sees them: manifests, the registry of installed plugins and their generations,
//! what each node reports running, and the permission and prefix checks of every KV access a plugin makes.
//!
//! A plugin is a record `P/<name>` (its manifest, the BLAKE3 hash of its wasm blob, whether it is enabled, and a
//! generation) plus the blob itself, which the record references like a KV value does, so it is never collected
//! while installed. Every lifecycle change (install, upgrade, enable, disable, remove) takes the next cluster-wide
//! generation, so a node can tell "the plugin I run" from "the plugin the log says" by one number, even across a
//! remove and a reinstall. Each node reports what it runs (`Ps/<name>/<node>`), through the log too.

pub mod sealed;

use serde::{Deserialize, Serialize};

use crate::blob::{BlobHash, BlobRef};
use crate::coord::keys::with;
use crate::coord::{CoordEvent, CoordRead, CoordWrite};
use crate::error::{ErrorCode, WireError};
use crate::kv::{Bytes, KvRequest};
use crate::state_machine::StorageFault;

/// Longest plugin name.
pub const PLUGIN_NAME_BYTES_MAX: usize = 64;
pub const PLUGIN_VERSION_BYTES_MAX: usize = 64;
pub const PLUGIN_DESCRIPTION_BYTES_MAX: usize = 1024;
/// Most KV prefixes one plugin may own.
pub const PLUGIN_KV_PREFIXES_MAX: usize = 8;
pub const PLUGIN_KV_PREFIX_BYTES_MAX: usize = 256;
/// Most wasm memory one instance may use, in 64 KiB pages (256 MiB).
pub const PLUGIN_MEMORY_PAGES_MAX: u32 = 4096;
pub const PLUGIN_MEMORY_PAGES_DEFAULT: u32 = 256;
/// Longest one call may run.
pub const PLUGIN_TIMEOUT_MS_MAX: u32 = 60_000;
pub const PLUGIN_TIMEOUT_MS_DEFAULT: u32 = 1_000;
/// Fuel (wasm instructions, roughly) one call may burn; 0 = unmetered (then only the timeout bounds a call).
pub const PLUGIN_FUEL_MAX: u64 = 1 << 40;
pub const PLUGIN_FUEL_DEFAULT: u64 = 1_000_000_000;
/// Most instances of one plugin per node.
pub const PLUGIN_INSTANCES_MAX: u32 = 16;
/// Most calls of one plugin waiting on one node; more are answered `BUSY`.
pub const PLUGIN_QUEUE_MAX: u32 = 4096;
pub const PLUGIN_QUEUE_DEFAULT: u32 = 64;
/// Largest wasm module.
pub const PLUGIN_WASM_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest exported function name a call may name.
pub const PLUGIN_FUNCTION_BYTES_MAX: usize = 128;
/// Largest call input and output.
pub const PLUGIN_CALL_BYTES_MAX: usize = 1024 * 1024;
/// Most plugins installed in a cluster.
pub const PLUGINS_MAX: usize = 256;
/// Longest error a node reports.
pub const PLUGIN_REPORT_ERROR_BYTES_MAX: usize = 1024;
/// The namespace of plugin-owned keys: `plugin/<name>/`.
pub const PLUGIN_KEY_NAMESPACE: &str = "plugin/";

/// Something a plugin may do. Everything is denied unless its manifest asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    KvRead,
    KvWrite,
    BlobRead,
    BlobWrite,
    ClusterInfo,
    Randomness,
    Signing,
    Timers,
    Hooks,
    /// Rows of the plugin's own that no client request reads ([`sealed`]).
    SealedStorage,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::KvRead,
        Permission::KvWrite,
        Permission::BlobRead,
        Permission::BlobWrite,
        Permission::ClusterInfo,
        Permission::Randomness,
        Permission::Signing,
        Permission::Timers,
        Permission::Hooks,
        Permission::SealedStorage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::KvRead => "kv_read",
            Permission::KvWrite => "kv_write",
            Permission::BlobRead => "blob_read",
            Permission::BlobWrite => "blob_write",
            Permission::ClusterInfo => "cluster_info",
            Permission::Randomness => "randomness",
            Permission::Signing => "signing",
            Permission::Timers => "timers",
            Permission::Hooks => "hooks",
            Permission::SealedStorage => "sealed_storage",
        }
    }
}

/// What a plugin is and what it may do, as its author declares it (`plugin.toml` or JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Key prefixes the plugin may read and write (with the permissions). Empty: `plugin/<name>/`.
    #[serde(default)]
    pub kv_prefixes: Vec<String>,
    #[serde(default = "default_memory_pages")]
    pub memory_pages: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    #[serde(default = "default_instances")]
    pub instances: u32,
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// Subject patterns whose events the plugin's `on_hook` export receives, each through a durable hook
    /// (`plugin-<name>-<i>`): once per event cluster-wide, with retries and a dead-letter list. Needs the `hooks`
    /// permission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
}

fn default_memory_pages() -> u32 {
    PLUGIN_MEMORY_PAGES_DEFAULT
}
fn default_timeout_ms() -> u32 {
    PLUGIN_TIMEOUT_MS_DEFAULT
}
fn default_fuel() -> u64 {
    PLUGIN_FUEL_DEFAULT
}
fn default_instances() -> u32 {
    1
}
fn default_queue() -> u32 {
    PLUGIN_QUEUE_DEFAULT
}

impl PluginManifest {
    /// A manifest with every default: no permissions, the plugin's own prefix.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> PluginManifest {
        PluginManifest {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            permissions: Vec::new(),
            kv_prefixes: Vec::new(),
            memory_pages: PLUGIN_MEMORY_PAGES_DEFAULT,
            timeout_ms: PLUGIN_TIMEOUT_MS_DEFAULT,
            fuel: PLUGIN_FUEL_DEFAULT,
            instances: 1,
            queue: PLUGIN_QUEUE_DEFAULT,
            hooks: Vec::new(),
        }
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_name(&self.name)?;
        let field = |what: &str, message: String| WireError::invalid(format!("manifest `{what}`: {message}"));
        if self.version.is_empty()
            || self.version.len() > PLUGIN_VERSION_BYTES_MAX
            || self.version.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(field(
                "version",
                format!("must be 1 to {PLUGIN_VERSION_BYTES_MAX} bytes without spaces, got {:?}", self.version),
            ));
        }
        if self.description.len() > PLUGIN_DESCRIPTION_BYTES_MAX {
            return Err(field("description", format!("longer than {PLUGIN_DESCRIPTION_BYTES_MAX} bytes")));
        }
        let mut seen = Vec::new();
        for permission in &self.permissions {
            if seen.contains(permission) {
                return Err(field("permissions", format!("`{}` is listed twice", permission.as_str())));
            }
            seen.push(*permission);
        }
        if self.kv_prefixes.len() > PLUGIN_KV_PREFIXES_MAX {
            return Err(field("kv_prefixes", format!("more than {PLUGIN_KV_PREFIXES_MAX} prefixes")));
        }
        for prefix in &self.kv_prefixes {
            check_prefix(&self.name, prefix).map_err(|message| field("kv_prefixes", message))?;
        }
        if !(1..=PLUGIN_MEMORY_PAGES_MAX).contains(&self.memory_pages) {
            return Err(field(
                "memory_pages",
                format!("must be 1 to {PLUGIN_MEMORY_PAGES_MAX} (64 KiB pages), got {}", self.memory_pages),
            ));
        }
        if !(1..=PLUGIN_TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(field("timeout_ms", format!("must be 1 to {PLUGIN_TIMEOUT_MS_MAX}, got {}", self.timeout_ms)));
        }
        if self.fuel > PLUGIN_FUEL_MAX {
            return Err(field("fuel", format!("at most {PLUGIN_FUEL_MAX} (0: unmetered), got {}", self.fuel)));
        }
        if !(1..=PLUGIN_INSTANCES_MAX).contains(&self.instances) {
            return Err(field("instances", format!("must be 1 to {PLUGIN_INSTANCES_MAX}, got {}", self.instances)));
        }
        if !(1..=PLUGIN_QUEUE_MAX).contains(&self.queue) {
            return Err(field("queue", format!("must be 1 to {PLUGIN_QUEUE_MAX}, got {}", self.queue)));
        }
        if !self.hooks.is_empty() && !self.allows(Permission::Hooks) {
            return Err(field("hooks", "subscribing to hook events needs the `hooks` permission".into()));
        }
        if self.hooks.len() > crate::plugin_abi::HOOK_SUBSCRIPTIONS_MAX {
            return Err(field("hooks", format!("more than {} patterns", crate::plugin_abi::HOOK_SUBSCRIPTIONS_MAX)));
        }
        for (index, pattern) in self.hooks.iter().enumerate() {
            if self.hooks[..index].contains(pattern) {
                return Err(field("hooks", format!("{pattern:?} is listed twice")));
            }
            crate::hook::subject::validate_pattern(pattern).map_err(|error| field("hooks", error.message))?;
        }
        Ok(())
    }

    /// The prefixes the plugin owns: the declared ones, or its own namespace.
    pub fn prefixes(&self) -> Vec<Vec<u8>> {
        if self.kv_prefixes.is_empty() {
            vec![own_prefix(&self.name).into_bytes()]
        } else {
            self.kv_prefixes.iter().map(|prefix| prefix.as_bytes().to_vec()).collect()
        }
    }

    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// `plugin/<name>/`.
pub fn own_prefix(name: &str) -> String {
    format!("{PLUGIN_KEY_NAMESPACE}{name}/")
}

/// A prefix may be the plugin's own namespace (or under it), or anything that overlaps no plugin namespace at all.
fn check_prefix(name: &str, prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > PLUGIN_KV_PREFIX_BYTES_MAX {
        return Err(format!("a prefix is 1 to {PLUGIN_KV_PREFIX_BYTES_MAX} bytes, got {} bytes", prefix.len()));
    }
    let own = own_prefix(name);
    if prefix.starts_with(&own) {
        return Ok(());
    }
    if prefix.starts_with(PLUGIN_KEY_NAMESPACE) || PLUGIN_KEY_NAMESPACE.starts_with(prefix) {
        return Err(format!("`{prefix}` reaches into other plugins' keys; a plugin's keys live under `{own}`"));
    }
    Ok(())
}

/// Names are 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), WireError> {
    let valid = !name.is_empty()
        && name.len() <= PLUGIN_NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(WireError::invalid(format!(
            "plugin name {name:?} is not 1 to {PLUGIN_NAME_BYTES_MAX} of a-z, 0-9, '-', '_' starting with a letter"
        )))
    }
}

/// An installed plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub manifest: PluginManifest,
    pub wasm: BlobHash,
    pub wasm_size: u64,
    /// Changes with every install, upgrade, enable and disable; unique across the cluster's history.
    pub generation: u64,
    pub enabled: bool,
    pub installed_ms: u64,
    pub updated_ms: u64,
}

/// What one node runs of a plugin, as it last reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePluginStatus {
    pub node: u64,
    /// The generation serving calls on that node (0: none).
    pub running: u64,
    pub state: NodePluginState,
    /// The generation the report is about (the one that failed to load, or was quarantined).
    pub generation: u64,
    pub error: Option<String>,
    pub reported_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePluginState {
    /// Serving the committed generation.
    Running,
    /// The committed generation failed to load there; `running` (if any) is still served.
    LoadFailed,
    /// Too many failures: no calls served until an operator enables the plugin again.
    Quarantined,
    /// Disabled: nothing served.
    Stopped,
}

impl NodePluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodePluginState::Running => "running",
            NodePluginState::LoadFailed => "load_failed",
            NodePluginState::Quarantined => "quarantined",
            NodePluginState::Stopped => "stopped",
        }
    }
}

/// A replicated plugin command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginCommand {
    /// Installs a plugin, or upgrades it when the name is taken. The wasm blob must be in the cluster.
    Install {
        manifest: PluginManifest,
        wasm: BlobHash,
    },
    SetEnabled {
        name: String,
        enabled: bool,
    },
    /// Removes the plugin and its reports (its KV keys stay).
    Remove {
        name: String,
    },
    /// What `node` runs of the plugin.
    Report {
        name: String,
        status: NodePluginStatus,
    },
    /// A KV request a plugin makes: refused unless the plugin's record allows the access and every key is under one
    /// of its prefixes.
    Kv {
        plugin: String,
        request: KvRequest,
    },
    /// A write to the plugin's sealed storage: checks, then puts and deletes, all or nothing ([`sealed`]).
    Sealed {
        plugin: String,
        ops: Vec<sealed::SealedOp>,
    },
}

/// A client request about plugins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginRequest {
    /// Install or upgrade; the wasm is added as a blob first.
    Install {
        manifest: PluginManifest,
        wasm: BlobHash,
    },
    List,
    Info {
        name: String,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    Remove {
        name: String,
    },
    /// Calls an exported function on the node that receives the request.
    Call {
        name: String,
        function: String,
        input: Bytes,
    },
}

impl PluginRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            PluginRequest::Install { manifest, .. } => manifest.validate(),
            PluginRequest::List => Ok(()),
            PluginRequest::Info { name }
            | PluginRequest::Enable { name }
            | PluginRequest::Disable { name }
            | PluginRequest::Remove { name } => validate_name(name),
            PluginRequest::Call { name, function, input } => {
                validate_name(name)?;
                validate_function(function)?;
                if input.len() > PLUGIN_CALL_BYTES_MAX {
                    return Err(WireError::new(
                        ErrorCode::TooLarge,
                        format!("call input of {} bytes exceeds {PLUGIN_CALL_BYTES_MAX}", input.len()),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Whether it changes the registry (an administrator's request).
    pub fn is_admin(&self) -> bool {
        !matches!(self, PluginRequest::List | PluginRequest::Info { .. } | PluginRequest::Call { .. })
    }
}

/// A function a client may call: a wasm export name that is not one of the host's own entry points.
pub fn validate_function(function: &str) -> Result<(), WireError> {
    if function.is_empty()
        || function.len() > PLUGIN_FUNCTION_BYTES_MAX
        || !function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(WireError::invalid(format!(
            "function name {function:?} is not 1 to {PLUGIN_FUNCTION_BYTES_MAX} of a-z, A-Z, 0-9, '_', '-', '.'"
        )));
    }
    use crate::plugin_abi::exports;
    if [exports::INIT, exports::ON_TIMER, exports::ON_HOOK].contains(&function) || function.starts_with('_') {
        return Err(WireError::invalid(format!("`{function}` is called by the node, not by clients")));
    }
    Ok(())
}

/// A plugin and what every node runs of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub record: PluginRecord,
    pub nodes: Vec<NodePluginStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginResponse {
    /// The record after a lifecycle change.
    Record(PluginRecord),
    Removed {
        name: String,
        generation: u64,
    },
    List(Vec<PluginInfo>),
    Info(PluginInfo),
    /// What a call returned, and which node and generation answered it.
    Output {
        output: Bytes,
        node: u64,
        generation: u64,
    },
    /// A report was recorded.
    Reported,
    /// A sealed write landed.
    Sealed(sealed::SealedWritten),
}

mod keys {
    pub const RECORD: &[u8] = b"P/";
    pub const STATUS: &[u8] = b"Ps/";
    pub const NEXT_GENERATION: &[u8] = b"m/plugin_generation";
}

fn record_key(name: &str) -> Vec<u8> {
    with(keys::RECORD, name.as_bytes())
}

/// The status rows of a plugin: `Ps/<name>/`, then the node id (names cannot contain `/`).
fn status_prefix(name: &str) -> Vec<u8> {
    let mut key = with(keys::STATUS, name.as_bytes());
    key.push(b'/');
    key
}

pub fn load(store: &impl CoordRead, name: &str) -> Result<Option<PluginRecord>, StorageFault> {
    crate::coord::load(store, &record_key(name))
}

/// Every installed plugin, in name order.
pub fn list(store: &impl CoordRead) -> Result<Vec<PluginRecord>, StorageFault> {
    Ok(crate::coord::load_under(store, keys::RECORD, PLUGINS_MAX)?.0)
}

pub fn info(store: &impl CoordRead, record: PluginRecord) -> Result<PluginInfo, StorageFault> {
    let (nodes, _) = crate::coord::load_under(store, &status_prefix(&record.manifest.name), 1024)?;
    Ok(PluginInfo { record, nodes })
}

fn not_found(name: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no plugin `{name}` is installed"))
}

fn next_generation(store: &mut impl CoordWrite) -> Result<u64, StorageFault> {
    let current: u64 = crate::coord::load(store, keys::NEXT_GENERATION)?.unwrap_or(0);
    let next = current + 1;
    crate::coord::save(store, keys::NEXT_GENERATION, &next)?;
    Ok(next)
}

/// Applies a plugin command at log time `now`.
pub fn apply(
    store: &mut (impl crate::state_machine::KvWrite + CoordWrite),
    revision: &mut u64,
    now: u64,
    command: &PluginCommand,
) -> Result<Result<crate::command::CommandOutput, WireError>, StorageFault> {
    use crate::command::CommandOutput;
    let response = match command {
        PluginCommand::Install { manifest, wasm } => {
            if let Err(error) = manifest.validate() {
                return Ok(Err(error));
            }
            let blob = match crate::blob::attachable(store, wasm)? {
                Ok(blob) => blob,
                Err(error) => return Ok(Err(error)),
            };
            if blob.size > PLUGIN_WASM_BYTES_MAX {
                return Ok(Err(WireError::new(
                    ErrorCode::TooLarge,
                    format!("wasm of {} bytes exceeds {PLUGIN_WASM_BYTES_MAX}", blob.size),
                )));
            }
            let old = load(store, &manifest.name)?;
            if old.is_none() && list(store)?.len() >= PLUGINS_MAX {
                return Ok(Err(WireError::new(ErrorCode::TooLarge, format!("{PLUGINS_MAX} plugins are installed"))));
            }
            let hooks = &manifest.hooks;
            if let Err(error) =
                crate::hook::durable::sync_plugin(store, now, &manifest.name, hooks, manifest.timeout_ms, true)?
            {
                return Ok(Err(error));
            }
            let old_blob = old.as_ref().map(|old| BlobRef { hash: old.wasm, size: old.wasm_size });
            crate::blob::replace_reference(store, None, old_blob, Some(blob))?;
            let record = PluginRecord {
                manifest: manifest.clone(),
                wasm: *wasm,
                wasm_size: blob.size,
                generation: next_generation(store)?,
                enabled: true,
                installed_ms: old.as_ref().map_or(now, |old| old.installed_ms),
                updated_ms: now,
            };
            save(store, &record)?;
            PluginResponse::Record(record)
        }
        PluginCommand::SetEnabled { name, enabled } => {
            let Some(mut record) = load(store, name)? else { return Ok(Err(not_found(name))) };
            // Enabling an enabled plugin still takes a new generation: it is how an operator lifts a quarantine.
            record.enabled = *enabled;
            record.generation = next_generation(store)?;
            record.updated_ms = now;
            let manifest = &record.manifest;
            if let Err(error) =
                crate::hook::durable::sync_plugin(store, now, name, &manifest.hooks, manifest.timeout_ms, *enabled)?
            {
                return Ok(Err(error));
            }
            save(store, &record)?;
            PluginResponse::Record(record)
        }
        PluginCommand::Remove { name } => {
            let Some(record) = load(store, name)? else { return Ok(Err(not_found(name))) };
            crate::blob::replace_reference(
                store,
                None,
                Some(BlobRef { hash: record.wasm, size: record.wasm_size }),
                None,
            )?;
            store.coord_delete(&record_key(name))?;
            // Its hooks go with it (their dead letters too).
            let _ = crate::hook::durable::sync_plugin(store, now, name, &[], record.manifest.timeout_ms, false)?;
            let mut reports = Vec::new();
            store.coord_scan(&status_prefix(name), &mut |key, _| {
                reports.push(key.to_vec());
                std::ops::ControlFlow::Continue(())
            })?;
            for key in reports {
                store.coord_delete(&key)?;
            }
            let generation = next_generation(store)?;
            store.emit(CoordEvent::PluginChanged { name: name.clone(), generation });
            PluginResponse::Removed { name: name.clone(), generation }
        }
        PluginCommand::Report { name, status } => {
            if load(store, name)?.is_none() {
                return Ok(Err(not_found(name)));
            }
            let mut status = status.clone();
            if let Some(error) = &mut status.error {
                truncate(error, PLUGIN_REPORT_ERROR_BYTES_MAX);
            }
            status.reported_ms = now;
            let mut key = status_prefix(name);
            key.extend_from_slice(&status.node.to_be_bytes());
            crate::coord::save(store, &key, &status)?;
            PluginResponse::Reported
        }
        PluginCommand::Kv { plugin, request } => {
            if let Err(error) = check_kv(store, plugin, request)? {
                return Ok(Err(error));
            }
            return crate::state_machine::apply_command(
                store,
                revision,
                now,
                &crate::command::Command::Kv(request.clone()),
            );
        }
        PluginCommand::Sealed { plugin, ops } => match sealed::apply(store, plugin, ops)? {
            Ok(written) => PluginResponse::Sealed(written),
            Err(error) => return Ok(Err(error)),
        },
    };
    Ok(Ok(CommandOutput::Plugin(response)))
}

fn save(store: &mut impl CoordWrite, record: &PluginRecord) -> Result<(), StorageFault> {
    crate::coord::save(store, &record_key(&record.manifest.name), record)?;
    store.emit(CoordEvent::PluginChanged { name: record.manifest.name.clone(), generation: record.generation });
    Ok(())
}

fn truncate(text: &mut String, most: usize) {
    if text.len() > most {
        let mut end = most;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Whether `plugin` may make `request`: installed and enabled, holding the permission (`kv_write` for writes,
/// `kv_read` or `kv_write` for reads), and every key (a scan's prefix) under one of its prefixes. Blob-valued puts
/// are not open to plugins. Enforced when the command is applied (writes) and by the node's read path (reads).
pub fn check_kv(
    store: &impl CoordRead,
    plugin: &str,
    request: &KvRequest,
) -> Result<Result<(), WireError>, StorageFault> {
    let Some(record) = load(store, plugin)? else { return Ok(Err(not_found(plugin))) };
    if !record.enabled {
        return Ok(Err(WireError::new(ErrorCode::Unavailable, format!("plugin `{plugin}` is disabled"))));
    }
    Ok(kv_allowed(&record.manifest, request))
}

/// The manifest half of [`check_kv`].
pub fn kv_allowed(manifest: &PluginManifest, request: &KvRequest) -> Result<(), WireError> {
    if matches!(request, KvRequest::PutBlob { .. }) {
        return Err(WireError::new(ErrorCode::Unauthorized, "plugins cannot point keys at blobs"));
    }
    let write = request.is_write();
    let permitted = if write {
        manifest.allows(Permission::KvWrite)
    } else {
        manifest.allows(Permission::KvRead) || manifest.allows(Permission::KvWrite)
    };
    if !permitted {
        let needed = if write { "kv_write" } else { "kv_read" };
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("plugin `{}` lacks the `{needed}` permission", manifest.name),
        ));
    }
    let prefixes = manifest.prefixes();
    for key in request.keys() {
        if !prefixes.iter().any(|prefix| key.starts_with(prefix)) {
            return Err(WireError::new(
                ErrorCode::Unauthorized,
                format!(
                    "plugin `{}` may not touch key {:?}: outside its prefixes {:?}",
                    manifest.name,
                    String::from_utf8_lossy(key),
                    prefixes.iter().map(|prefix| String::from_utf8_lossy(prefix).into_owned()).collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
