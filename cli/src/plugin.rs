//! `pando plugin ...`: install (the wasm goes up as a blob, the manifest through the log), list, info, enable,
//! disable, remove, call.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use pando_client::pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_client::pando_protocol::plugin::{
    NodePluginStatus, PLUGIN_CALL_BYTES_MAX, PLUGIN_WASM_BYTES_MAX, PluginInfo, PluginManifest, PluginRecord,
    PluginRequest, PluginResponse,
};
use pando_client::{Client, ClientError};
use serde_json::{Value, json};

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install a plugin, or upgrade it when one of that name is installed (every node switches to the new version).
    Install {
        /// The plugin's `.wasm` file.
        wasm: PathBuf,
        /// Its manifest (`.toml`, or `.json`).
        #[arg(long)]
        manifest: PathBuf,
    },
    /// Every installed plugin and what each node runs of it.
    List,
    /// One plugin: manifest, generation, and each node's running generation and state.
    Info { name: String },
    /// Serve the plugin again; also lifts a quarantine (a new generation on every node).
    Enable { name: String },
    /// Stop serving the plugin on every node (it stays installed).
    Disable { name: String },
    /// Uninstall the plugin (its KV keys stay).
    Remove { name: String },
    /// Call an exported function on the node this client talks to. The input is the argument, `@file`, or `-` for
    /// stdin; the output goes to stdout as the plugin wrote it (with `--json`: with the node and generation).
    Call { name: String, function: String, input: Option<String> },
}

/// Reads and validates a manifest, with the file named in every error.
pub fn read_manifest(path: &Path) -> anyhow::Result<PluginManifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: PluginManifest = if path.extension().is_some_and(|extension| extension == "json") {
        serde_json::from_str(&text).map_err(|error| invalid(format!("{}: {error}", path.display())))?
    } else {
        toml::from_str(&text).map_err(|error| invalid(format!("{}: {error}", path.display())))?
    };
    manifest.validate().map_err(|error| invalid(format!("{}: {}", path.display(), error.message)))?;
    Ok(manifest)
}

fn invalid(message: String) -> anyhow::Error {
    ClientError::Invalid(message).into()
}

fn record_json(record: &PluginRecord) -> Value {
    let manifest = &record.manifest;
    json!({
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "generation": record.generation,
        "enabled": record.enabled,
        "wasm": record.wasm.to_string(),
        "wasm_size": record.wasm_size,
        "permissions": manifest.permissions.iter().map(|permission| permission.as_str()).collect::<Vec<_>>(),
        "kv_prefixes": manifest.prefixes().iter().map(|prefix| String::from_utf8_lossy(prefix).into_owned()).collect::<Vec<_>>(),
        "memory_pages": manifest.memory_pages,
        "timeout_ms": manifest.timeout_ms,
        "fuel": manifest.fuel,
        "instances": manifest.instances,
        "queue": manifest.queue,
        "installed_ms": record.installed_ms,
        "updated_ms": record.updated_ms,
    })
}

fn node_json(status: &NodePluginStatus) -> Value {
    json!({
        "node": status.node,
        "running": status.running,
        "state": status.state.as_str(),
        "generation": status.generation,
        "error": status.error,
        "reported_ms": status.reported_ms,
    })
}

fn info_json(info: &PluginInfo) -> Value {
    let mut value = record_json(&info.record);
    value["nodes"] = json!(info.nodes.iter().map(node_json).collect::<Vec<_>>());
    value
}

/// `running gen 7 on 1,2,3` style summary of the node reports.
fn nodes_summary(info: &PluginInfo) -> String {
    if info.nodes.is_empty() {
        return "no node reported yet".into();
    }
    info.nodes
        .iter()
        .map(|status| {
            let mut text = format!("node {}: {} (serving gen {})", status.node, status.state.as_str(), status.running);
            if status.generation != info.record.generation {
                text.push_str(&format!(" [report is about gen {}]", status.generation));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_input(input: Option<String>) -> anyhow::Result<Vec<u8>> {
    let data = match input.as_deref() {
        None => Vec::new(),
        Some("-") => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().take(PLUGIN_CALL_BYTES_MAX as u64 + 1), &mut data)
                .context("cannot read stdin")?;
            data
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
            None => text.as_bytes().to_vec(),
        },
    };
    if data.len() > PLUGIN_CALL_BYTES_MAX {
        return Err(ClientError::Wire(pando_client::pando_protocol::WireError::too_large(format!(
            "call input exceeds {PLUGIN_CALL_BYTES_MAX} bytes"
        )))
        .into());
    }
    Ok(data)
}

use std::io::Read as _;

pub async fn plugin(client: &Client, command: PluginCommand, json_output: bool) -> anyhow::Result<()> {
    let request = match command {
        PluginCommand::Install { wasm, manifest } => {
            let manifest = read_manifest(&manifest)?;
            let size = std::fs::metadata(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?.len();
            if size > PLUGIN_WASM_BYTES_MAX {
                return Err(invalid(format!(
                    "{} is {size} bytes; plugins are at most {PLUGIN_WASM_BYTES_MAX}",
                    wasm.display()
                )));
            }
            let mut magic = [0u8; 4];
            std::fs::File::open(&wasm)
                .and_then(|mut file| file.read_exact(&mut magic))
                .with_context(|| format!("cannot read {}", wasm.display()))?;
            if &magic != b"\0asm" {
                return Err(invalid(format!("{} is not a wasm module", wasm.display())));
            }
            // Unpinned: the installed plugin references it; until then the grace period keeps it.
            let add = BlobRequest::Add { replicas: None, pin: false, expected: None, attach: None, ack_copies: None };
            let hash = match crate::blob::upload(client, &wasm, add).await? {
                BlobResponse::Added { hash, .. } => hash,
                other => anyhow::bail!("unexpected response {other:?}"),
            };
            PluginRequest::Install { manifest, wasm: hash }
        }
        PluginCommand::List => PluginRequest::List,
        PluginCommand::Info { name } => PluginRequest::Info { name },
        PluginCommand::Enable { name } => PluginRequest::Enable { name },
        PluginCommand::Disable { name } => PluginRequest::Disable { name },
        PluginCommand::Remove { name } => PluginRequest::Remove { name },
        PluginCommand::Call { name, function, input } => {
            let input = read_input(input)?;
            let (output, node, generation) = client.plugin_call(&name, &function, &input).await?;
            if json_output {
                let output = match serde_json::from_slice::<Value>(&output) {
                    Ok(value) => value,
                    Err(_) => json!(String::from_utf8_lossy(&output)),
                };
                print_json(&json!({ "output": output, "node": node, "generation": generation }));
            } else {
                use std::io::Write;
                let mut stdout = std::io::stdout();
                stdout.write_all(&output)?;
                if !output.ends_with(b"\n") && std::io::IsTerminal::is_terminal(&stdout) {
                    stdout.write_all(b"\n")?;
                }
            }
            return Ok(());
        }
    };
    match client.plugin(request).await? {
        PluginResponse::Record(record) => {
            if json_output {
                print_json(&record_json(&record));
            } else {
                let state = if record.enabled { "enabled" } else { "disabled" };
                println!(
                    "{} {} generation {} {state}",
                    record.manifest.name, record.manifest.version, record.generation
                );
            }
        }
        PluginResponse::Removed { name, generation } => {
            if json_output {
                print_json(&json!({ "removed": name, "generation": generation }));
            } else {
                println!("removed {name}");
            }
        }
        PluginResponse::List(infos) => {
            if json_output {
                print_json(&json!(infos.iter().map(info_json).collect::<Vec<_>>()));
            } else {
                for info in &infos {
                    let record = &info.record;
                    println!(
                        "{:<20} {:<10} gen {:<5} {:<8} {}",
                        record.manifest.name,
                        record.manifest.version,
                        record.generation,
                        if record.enabled { "enabled" } else { "disabled" },
                        nodes_summary(info)
                    );
                }
            }
        }
        PluginResponse::Info(info) => {
            if json_output {
                print_json(&info_json(&info));
            } else {
                let record = &info.record;
                let manifest = &record.manifest;
                println!(
                    "{} {} ({})",
                    manifest.name,
                    manifest.version,
                    if record.enabled { "enabled" } else { "disabled" }
                );
                if !manifest.description.is_empty() {
                    println!("  {}", manifest.description);
                }
                println!("  generation   {}", record.generation);
                println!("  wasm         {} ({} bytes)", record.wasm, record.wasm_size);
                let permissions: Vec<&str> =
                    manifest.permissions.iter().map(|permission| permission.as_str()).collect();
                println!(
                    "  permissions  {}",
                    if permissions.is_empty() { "none".into() } else { permissions.join(", ") }
                );
                let prefixes: Vec<String> =
                    manifest.prefixes().iter().map(|prefix| String::from_utf8_lossy(prefix).into_owned()).collect();
                println!("  kv prefixes  {}", prefixes.join(", "));
                println!(
                    "  limits       {} pages, {} ms, fuel {}, {} instances, queue {}",
                    manifest.memory_pages, manifest.timeout_ms, manifest.fuel, manifest.instances, manifest.queue
                );
                for status in &info.nodes {
                    println!(
                        "  node {:<4} {:<12} serving gen {:<5} {}",
                        status.node,
                        status.state.as_str(),
                        status.running,
                        status.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        other => anyhow::bail!("unexpected response {other:?}"),
    }
    Ok(())
}
