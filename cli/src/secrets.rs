//! `pando secrets ...`: the shipped secrets engine. `enable` installs the engine this `pando` carries (the wasm
//! committed as `fixtures/wasm/secrets.wasm`, checked against `fixtures/wasm/HASHES` by the tests), or upgrades the
//! cluster to it; `kv ...` is Vault's KV v2 command set on it, `transit ...` (in `secrets_transit.rs`) Vault's
//! transit commands.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use pando_client::kv2::{Answer, Config, MetadataUpdate, MetadataView, Op, ReadAnswer, VersionMeta};
use pando_client::pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_client::pando_protocol::plugin::{
    NodePluginStatus, PLUGIN_FUEL_DEFAULT, PLUGIN_MEMORY_PAGES_DEFAULT, PLUGIN_QUEUE_DEFAULT,
    PLUGIN_TIMEOUT_MS_DEFAULT, Permission, PluginInfo, PluginManifest, PluginRequest, PluginResponse,
};
use pando_client::pando_protocol::{ErrorCode, WireError};
use pando_client::{Client, ClientError, SECRETS_PLUGIN};
use serde_json::{Map, Value, json};

use crate::coord::parse_duration_ms;
use crate::output::{print_json, utc};

/// The engine this `pando` ships (built by `fixtures/plugins/build.sh`, byte for byte reproducible).
const ENGINE_WASM: &[u8] = include_bytes!("../../fixtures/wasm/secrets.wasm");
/// The engine's version, as its crate says.
const ENGINE_VERSION: &str = "0.2.0";
/// How long `enable` waits for the nodes to run the engine it installed.
const ENABLE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Install the secrets engine this pando ships, or upgrade the cluster to it; waits until the nodes run it.
    Enable {
        /// Instances of the engine per node (calls in parallel).
        #[arg(long, default_value_t = 2)]
        instances: u32,
    },
    /// Versioned key-value secrets (Vault's KV v2): put, get, patch, delete, undelete, destroy, metadata, list.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Encryption as a service (Vault's transit): key rings, encrypt, decrypt, rewrap, data keys, sign, verify,
    /// rotation, minimum versions, key-usage.
    #[command(subcommand)]
    Transit(crate::secrets_transit::TransitCommand),
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write a new version of PATH: KEY=VALUE pairs (KEY=@FILE reads the value from a file), or `-` for a JSON object
    /// on stdin.
    Put {
        path: String,
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Check-and-set: write only if PATH's current version is this (0: only if PATH has no version yet).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Read PATH's current version, or --version N.
    Get {
        path: String,
        #[arg(long)]
        version: Option<u64>,
        /// Print only this field's value (fails when the version has no data).
        #[arg(long)]
        field: Option<String>,
    },
    /// Write a new version: the current one with these KEY=VALUE pairs merged in (`-`: a JSON merge patch on stdin,
    /// where null removes a field).
    Patch {
        path: String,
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Soft-delete versions (default: the current one); undelete brings them back.
    Delete {
        path: String,
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Bring soft-deleted versions back.
    Undelete {
        path: String,
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Remove the data of versions for good.
    Destroy {
        path: String,
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// PATH's settings and every version kept: get, put, delete (removes PATH with every version).
    #[command(subcommand)]
    Metadata(MetadataCommand),
    /// The names under FOLDER (`app/`; none: the top), folders ending in `/`; every page unless --limit.
    List {
        folder: Option<String>,
        /// Every path below the folder instead of its children.
        #[arg(long)]
        recursive: bool,
        /// Names after this one (a previous page's last).
        #[arg(long)]
        after: Option<String>,
        /// At most this many names (one page); the next page's `--after` is printed on stderr.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The mount's settings, the defaults of every path: shown, or changed by the flags given.
    Config(SettingsArgs),
}

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    Get {
        path: String,
    },
    /// Change PATH's settings (only those given); creates PATH's metadata when it has none.
    Put {
        path: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// A custom metadata field, KEY=VALUE (repeatable; given at all, they replace every custom field).
        #[arg(long = "custom")]
        custom: Vec<String>,
        /// Remove every custom field.
        #[arg(long, conflicts_with = "custom")]
        clear_custom: bool,
    },
    Delete {
        path: String,
    },
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Versions kept (the oldest go first; 0: the mount's, and the mount's 0 is 10).
    #[arg(long)]
    max_versions: Option<u32>,
    /// Whether every write must give --cas.
    #[arg(long)]
    cas_required: Option<bool>,
    /// Versions delete themselves this long after their write (10m, 24h; 0: never).
    #[arg(long)]
    delete_version_after: Option<String>,
}

impl SettingsArgs {
    fn is_empty(&self) -> bool {
        self.max_versions.is_none() && self.cas_required.is_none() && self.delete_version_after.is_none()
    }

    fn delete_after_ms(&self) -> anyhow::Result<Option<u64>> {
        self.delete_version_after
            .as_deref()
            .map(|text| parse_duration_ms(text).map_err(|error| ClientError::Invalid(error).into()))
            .transpose()
    }
}

pub async fn secrets(client: &Client, command: SecretsCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Enable { instances } => enable(client, instances, json_output).await,
        SecretsCommand::Kv(command) => kv(client, command, json_output).await,
        SecretsCommand::Transit(command) => crate::secrets_transit::transit(client, command, json_output).await,
    }
}

fn manifest(instances: u32) -> PluginManifest {
    PluginManifest {
        name: SECRETS_PLUGIN.into(),
        version: ENGINE_VERSION.into(),
        description: "Secrets engine: Vault-compatible KV v2 and transit".into(),
        permissions: vec![Permission::SealedStorage, Permission::Randomness],
        kv_prefixes: Vec::new(),
        memory_pages: PLUGIN_MEMORY_PAGES_DEFAULT,
        timeout_ms: PLUGIN_TIMEOUT_MS_DEFAULT,
        fuel: PLUGIN_FUEL_DEFAULT,
        instances,
        queue: PLUGIN_QUEUE_DEFAULT,
        hooks: Vec::new(),
    }
}

/// Engine 0.1.0 kept its records, key rings included, in the KV under `plugin/secrets/`, where a token with KV access
/// there reads them and 0.2.0 does not look: say so, once the engine runs (an error of the scan itself is not this
/// command's to report).
async fn warn_of_kv_records(client: &Client) {
    let Ok(page) = client.scan(b"plugin/secrets/", 1, None, Default::default()).await else { return };
    if !page.entries.is_empty() {
        eprintln!(
            "warning: the KV holds keys under plugin/secrets/ (engine 0.1.0 kept its records and key rings there, \
             readable by any token with KV access to them; this engine keeps its own sealed and does not read \
             those): inspect them with `pando kv scan plugin/secrets/` and delete them once moved"
        );
    }
}

async fn enable(client: &Client, instances: u32, json_output: bool) -> anyhow::Result<()> {
    let manifest = manifest(instances);
    manifest.validate().map_err(ClientError::Wire)?;
    let add = BlobRequest::Add { replicas: None, pin: false, expected: None, attach: None, ack_copies: None };
    let hash = match client.blob_add(ENGINE_WASM, add, |_| {}).await? {
        BlobResponse::Added { hash, .. } => hash,
        other => return Err(ClientError::Protocol(format!("a blob add answered {other:?}")).into()),
    };
    let installed = match client.plugin(PluginRequest::Info { name: SECRETS_PLUGIN.into() }).await {
        Ok(PluginResponse::Info(info)) => Some(info.record),
        Err(ClientError::Wire(error)) if error.code == ErrorCode::NotFound => None,
        Err(error) => return Err(error.into()),
        Ok(other) => return Err(ClientError::Protocol(format!("plugin info answered {other:?}")).into()),
    };
    let unchanged =
        installed.as_ref().is_some_and(|record| record.wasm == hash && record.manifest == manifest && record.enabled);
    let request = match &installed {
        Some(record) if record.wasm == hash && record.manifest == manifest && !record.enabled => {
            PluginRequest::Enable { name: SECRETS_PLUGIN.into() }
        }
        _ => PluginRequest::Install { manifest, wasm: hash },
    };
    let generation = match (unchanged, installed) {
        (true, Some(record)) => record.generation,
        _ => match client.plugin(request).await? {
            PluginResponse::Record(record) => record.generation,
            other => return Err(ClientError::Protocol(format!("a plugin install answered {other:?}")).into()),
        },
    };
    let info = wait_running(client, generation).await?;
    warn_of_kv_records(client).await;
    let running: Vec<u64> = info
        .nodes
        .iter()
        .filter(|node| node.state.as_str() == "running" && node.generation == generation)
        .map(|node| node.node)
        .collect();
    if json_output {
        print_json(&json!({
            "name": SECRETS_PLUGIN,
            "version": ENGINE_VERSION,
            "generation": generation,
            "changed": !unchanged,
            "running_on": running,
        }));
    } else {
        let what = if unchanged { "already enabled" } else { "enabled" };
        let nodes: Vec<String> = running.iter().map(u64::to_string).collect();
        println!(
            "secrets engine {ENGINE_VERSION} {what} (generation {generation}), running on node{} {}",
            if nodes.len() == 1 { "" } else { "s" },
            nodes.join(", ")
        );
    }
    Ok(())
}

/// Waits until every node that reported runs `generation` (and one does), within [`ENABLE_WAIT`].
async fn wait_running(client: &Client, generation: u64) -> anyhow::Result<PluginInfo> {
    let deadline = Instant::now() + ENABLE_WAIT;
    loop {
        let info = match client.plugin(PluginRequest::Info { name: SECRETS_PLUGIN.into() }).await? {
            PluginResponse::Info(info) => info,
            other => return Err(ClientError::Protocol(format!("plugin info answered {other:?}")).into()),
        };
        let running = |node: &NodePluginStatus| node.generation == generation && node.state.as_str() == "running";
        let all_running = !info.nodes.is_empty() && info.nodes.iter().all(running);
        if all_running {
            return Ok(info);
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = info
                .nodes
                .iter()
                .map(|node| {
                    let error = node.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default();
                    format!("node {} {} (generation {}){error}", node.node, node.state.as_str(), node.generation)
                })
                .collect();
            return Err(ClientError::Timeout(format!(
                "the engine was installed (generation {generation}) but not every node runs it within {} s: {}",
                ENABLE_WAIT.as_secs(),
                if states.is_empty() { "no node reported".into() } else { states.join("; ") }
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// KEY=VALUE pairs (KEY=@FILE: the file's text), or `-` alone: a JSON object on stdin.
fn data_of(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    if pairs == ["-"] {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().take(1 << 20), &mut text).context("cannot read stdin")?;
        return match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(invalid("stdin must hold a JSON object")),
            Err(error) => Err(invalid(format!("stdin is not JSON: {error}"))),
        };
    }
    let mut data = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(invalid(format!("`{pair}` is not KEY=VALUE (or `-` alone for JSON on stdin)")));
        };
        if key.is_empty() {
            return Err(invalid(format!("`{pair}` has no key")));
        }
        let value = match value.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
            None => value.to_string(),
        };
        if data.insert(key.to_string(), Value::String(value)).is_some() {
            return Err(invalid(format!("`{key}` is given twice")));
        }
    }
    Ok(data)
}

use std::io::Read as _;

fn invalid(message: impl Into<String>) -> anyhow::Error {
    ClientError::Invalid(message.into()).into()
}

fn pairs_of(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| invalid(format!("`{pair}` is not KEY=VALUE")))?;
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(invalid(format!("`{key}` is given twice")));
        }
    }
    Ok(map)
}

async fn kv(client: &Client, command: KvCommand, json_output: bool) -> anyhow::Result<()> {
    let secrets = client.secrets();
    let (path, op) = match command {
        KvCommand::Put { path, pairs, cas } => (path, Op::Write { data: data_of(&pairs)?, cas }),
        KvCommand::Patch { path, pairs, cas } => (path, Op::Patch { patch: data_of(&pairs)?, cas }),
        KvCommand::Get { path, version, field } => {
            let answer = secrets.kv(&path, &Op::Read { version }).await?;
            let Answer::Read(read) = answer else { return Err(unexpected("a read", &answer)) };
            return print_read(&path, &read, field.as_deref(), json_output);
        }
        KvCommand::Delete { path, versions } => (path, Op::Delete { versions }),
        KvCommand::Undelete { path, versions } => (path, Op::Undelete { versions }),
        KvCommand::Destroy { path, versions } => (path, Op::Destroy { versions }),
        KvCommand::Metadata(MetadataCommand::Get { path }) => (path, Op::MetadataGet),
        KvCommand::Metadata(MetadataCommand::Put { path, settings, custom, clear_custom }) => {
            let custom_metadata = match (custom.is_empty(), clear_custom) {
                (_, true) => Some(BTreeMap::new()),
                (false, false) => Some(pairs_of(&custom)?),
                (true, false) => None,
            };
            if settings.is_empty() && custom_metadata.is_none() {
                return Err(invalid(
                    "nothing to change: give --max-versions, --cas-required, --delete-version-after, --custom or --clear-custom",
                ));
            }
            let update = MetadataUpdate {
                max_versions: settings.max_versions,
                cas_required: settings.cas_required,
                delete_version_after_ms: settings.delete_after_ms()?,
                custom_metadata,
            };
            (path, Op::MetadataPut(update))
        }
        KvCommand::Metadata(MetadataCommand::Delete { path }) => (path, Op::MetadataDelete),
        KvCommand::List { folder, recursive, after, limit } => {
            return list(client, folder.unwrap_or_default(), recursive, after, limit, json_output).await;
        }
        KvCommand::Config(settings) => return config(client, settings, json_output).await,
    };
    let answer = secrets.kv(&path, &op).await?;
    if json_output {
        print_json(&serde_json::to_value(&answer)?);
        return Ok(());
    }
    match (&op, &answer) {
        (_, Answer::Written(meta)) => println!("{path}: version {} written at {}", meta.version, utc(meta.created_ms)),
        (_, Answer::Metadata(view)) => print_metadata(&path, view),
        (Op::Delete { .. } | Op::Undelete { .. } | Op::Destroy { .. }, Answer::Changed(versions)) => {
            let verb = match op {
                Op::Delete { .. } => "deleted",
                Op::Undelete { .. } => "undeleted",
                _ => "destroyed",
            };
            if versions.is_empty() {
                println!("{path}: no version changed (each was {verb} already)");
            } else {
                let list: Vec<String> = versions.iter().map(u64::to_string).collect();
                println!("{path}: {verb} version{} {}", if versions.len() == 1 { "" } else { "s" }, list.join(", "));
            }
        }
        (Op::MetadataPut(_), Answer::Done) => println!("{path}: metadata updated"),
        (Op::MetadataDelete, Answer::Done) => println!("{path}: removed with every version"),
        (_, other) => return Err(unexpected("this operation", other)),
    }
    Ok(())
}

fn unexpected(what: &str, answer: &Answer) -> anyhow::Error {
    ClientError::Protocol(format!("the secrets engine answered {what} with {}", answer_kind(answer))).into()
}

fn answer_kind(answer: &Answer) -> &'static str {
    match answer {
        Answer::Written(_) => "a write",
        Answer::Read(_) => "a read",
        Answer::Metadata(_) => "metadata",
        Answer::Changed(_) => "changed versions",
        Answer::Done => "done",
    }
}

/// A `max_versions` setting as it takes effect (0: Vault's default).
fn max_versions_text(max_versions: u32) -> String {
    match max_versions {
        0 => format!("{} (the default)", pando_client::kv2::MAX_VERSIONS_DEFAULT),
        max => max.to_string(),
    }
}

fn version_state(meta: &VersionMeta) -> String {
    match (meta.destroyed, meta.deletion_ms) {
        (true, _) => "destroyed".into(),
        (false, Some(at)) => format!("deleted at {}", utc(at)),
        (false, None) => "live".into(),
    }
}

fn print_read(path: &str, read: &ReadAnswer, field: Option<&str>, json_output: bool) -> anyhow::Result<()> {
    let meta = &read.metadata;
    if let Some(field) = field {
        let Some(data) = &read.data else {
            return Err(ClientError::Wire(WireError::new(
                ErrorCode::NotFound,
                format!("version {} of {path} is {}: it has no data", meta.version, version_state(meta)),
            ))
            .into());
        };
        let value = data.get(field).ok_or_else(|| {
            ClientError::Wire(WireError::new(
                ErrorCode::NotFound,
                format!("version {} of {path} has no field `{field}`", meta.version),
            ))
        })?;
        match (value, json_output) {
            (Value::String(text), false) => println!("{text}"),
            (other, _) => println!("{other}"),
        }
        return Ok(());
    }
    if json_output {
        print_json(&serde_json::to_value(read)?);
        return Ok(());
    }
    println!("{path}: version {} written at {} ({})", meta.version, utc(meta.created_ms), version_state(meta));
    for (key, value) in &read.custom_metadata {
        println!("  custom {key} = {value}");
    }
    if let Some(data) = &read.data {
        let width = data.keys().map(String::len).max().unwrap_or(0);
        for (key, value) in data {
            match value {
                Value::String(text) => println!("{key:<width$}  {text}"),
                other => println!("{key:<width$}  {other}"),
            }
        }
    }
    Ok(())
}

fn print_metadata(path: &str, view: &MetadataView) {
    println!("{path}");
    println!("  current version   {}", view.current_version);
    println!("  oldest version    {}", view.oldest_version);
    println!("  max versions      {}", max_versions_text(view.max_versions));
    println!("  cas required      {}", view.cas_required);
    let after = match view.delete_version_after_ms {
        0 => "never".to_string(),
        ms => format!("{} s", ms / 1000),
    };
    println!("  delete after      {after}");
    println!("  created           {}", utc(view.created_ms));
    println!("  updated           {}", utc(view.updated_ms));
    for (key, value) in &view.custom_metadata {
        println!("  custom {key} = {value}");
    }
    for version in &view.versions {
        println!("  version {:<8} {}  {}", version.version, utc(version.created_ms), version_state(version));
    }
}

async fn list(
    client: &Client,
    folder: String,
    recursive: bool,
    after: Option<String>,
    limit: Option<u32>,
    json_output: bool,
) -> anyhow::Result<()> {
    let secrets = client.secrets();
    let mut after = after;
    let mut keys = Vec::new();
    loop {
        let page = secrets.kv_list(&folder, recursive, after.as_deref(), limit.unwrap_or(0)).await?;
        keys.extend(page.keys);
        match (page.next, limit) {
            (Some(next), Some(_)) => {
                if !json_output {
                    eprintln!("more names follow: --after {}", crate::output::shell_quote(&next));
                }
                after = Some(next);
                break;
            }
            (Some(next), None) => after = Some(next),
            (None, _) => {
                after = None;
                break;
            }
        }
    }
    if json_output {
        print_json(&json!({ "keys": keys, "next": after }));
    } else {
        for key in keys {
            println!("{key}");
        }
    }
    Ok(())
}

async fn config(client: &Client, settings: SettingsArgs, json_output: bool) -> anyhow::Result<()> {
    let secrets = client.secrets();
    let mut config: Config = secrets.kv_config().await?;
    if !settings.is_empty() {
        // Read, change, write: the mount's settings change rarely, by an operator; the last write wins.
        if let Some(max_versions) = settings.max_versions {
            config.max_versions = max_versions;
        }
        if let Some(cas_required) = settings.cas_required {
            config.cas_required = cas_required;
        }
        if let Some(ms) = settings.delete_after_ms()? {
            config.delete_version_after_ms = ms;
        }
        config = secrets.kv_config_put(&config).await?;
    }
    if json_output {
        print_json(&serde_json::to_value(&config)?);
    } else {
        println!("max versions  {}", max_versions_text(config.max_versions));
        println!("cas required  {}", config.cas_required);
        println!(
            "delete after  {}",
            match config.delete_version_after_ms {
                0 => "never".to_string(),
                ms => format!("{} s", ms / 1000),
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn pairs_become_string_fields_and_a_value_may_hold_an_equals_sign() {
        let data = data_of(&pairs(&["user=ada", "dsn=postgres://h/db?sslmode=require"])).unwrap();
        assert_eq!(data["user"], "ada");
        assert_eq!(data["dsn"], "postgres://h/db?sslmode=require");
    }

    #[test]
    fn a_pair_without_a_key_or_an_equals_sign_or_given_twice_is_refused() {
        for bad in [&["password"][..], &["=x"], &["a=1", "a=2"]] {
            let error = data_of(&pairs(bad)).unwrap_err();
            let error = error.downcast_ref::<ClientError>().unwrap();
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_value_from_a_file_is_its_text() {
        let dir = std::env::temp_dir().join(format!("pando-secrets-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key.pem");
        std::fs::write(&file, "-----BEGIN KEY-----\n").unwrap();
        let data = data_of(&[format!("key=@{}", file.display())]).unwrap();
        assert_eq!(data["key"], "-----BEGIN KEY-----\n");
        assert!(data_of(&[format!("key=@{}", dir.join("missing").display())]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_engine_is_a_wasm_module_with_a_valid_manifest() {
        assert_eq!(&ENGINE_WASM[..4], b"\0asm");
        manifest(2).validate().unwrap();
        let engine = include_str!("../../fixtures/plugins/secrets/Cargo.toml");
        assert!(
            engine.contains(&format!("\nversion = \"{ENGINE_VERSION}\"\n")),
            "the engine's crate has another version"
        );
    }
}
