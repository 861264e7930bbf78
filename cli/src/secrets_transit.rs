//! `pando secrets transit ...`: encryption as a service on the shipped engine (Vault's transit commands), and
//! `key-usage`, which finds the key versions still protecting ciphertexts under a KV prefix, so an operator can
//! rewrap them and then raise the key's minimum decryption version without locking anything out.
//!
//! Bytes go in and come out as base64, as Vault's do (`echo -n 4111 | base64`); ciphertexts and signatures read
//! `pando:v<N>:...`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use pando_client::pando_protocol::kv::Consistency;
use pando_client::pando_protocol::{ErrorCode, WireError};
use pando_client::transit_api::{Answer, CIPHERTEXT_PREFIX, ConfigUpdate, KeyType, KeyView, Op, version_of};
use pando_client::{Client, ClientError};
use serde_json::json;

use crate::output::{print_json, utc};

/// Keys one `key-usage` page asks for.
const USAGE_SCAN_PAGE: u32 = 500;
/// Keys `key-usage` names per version (the count is complete).
const USAGE_EXAMPLES_MAX: usize = 5;

#[derive(Debug, Subcommand)]
pub enum TransitCommand {
    /// Make a key ring: aes256-gcm96 or chacha20-poly1305 (encryption) or ed25519 (signing).
    CreateKey {
        name: String,
        #[arg(long = "type", value_parser = ["aes256-gcm96", "chacha20-poly1305", "ed25519"])]
        key_type: String,
        /// Every call gives a context; the key used is derived from it (HKDF-SHA256).
        #[arg(long)]
        derived: bool,
        /// With --derived: the same plaintext and context give the same ciphertext.
        #[arg(long, requires = "derived")]
        convergent: bool,
    },
    /// The key ring's settings and versions (never key material; an ed25519 version's public key).
    Read { name: String },
    /// A new key version; new ciphertexts use it, old ones still decrypt.
    Rotate { name: String },
    /// Change the minimum versions or whether the key may be deleted.
    Config {
        name: String,
        /// Ciphertexts and signatures of older versions are refused (see key-usage before raising it).
        #[arg(long)]
        min_decryption_version: Option<u32>,
        /// The oldest version a caller may name with --key-version to encrypt or sign (0: any kept); without
        /// --key-version the latest is used.
        #[arg(long)]
        min_encryption_version: Option<u32>,
        #[arg(long)]
        deletion_allowed: Option<bool>,
    },
    /// Delete the key ring (only once config --deletion-allowed true): what it sealed is lost.
    Delete { name: String },
    /// Encrypt a base64 plaintext; prints the ciphertext.
    Encrypt {
        name: String,
        plaintext: String,
        #[command(flatten)]
        binding: Binding,
        #[arg(long)]
        key_version: Option<u32>,
    },
    /// Decrypt a ciphertext; prints the plaintext, base64.
    Decrypt {
        name: String,
        ciphertext: String,
        #[command(flatten)]
        binding: Binding,
    },
    /// Re-encrypt a ciphertext with the key's current version, on the server (the plaintext never comes back).
    Rewrap {
        name: String,
        ciphertext: String,
        #[command(flatten)]
        binding: Binding,
        #[arg(long)]
        key_version: Option<u32>,
    },
    /// A new random 256-bit data key sealed by the key ring; --plaintext shows it in the clear as well.
    Datakey {
        name: String,
        #[arg(long)]
        plaintext: bool,
        #[arg(long)]
        context: Option<String>,
    },
    /// Sign a base64 input with an ed25519 key ring; prints the signature.
    Sign {
        name: String,
        input: String,
        #[arg(long)]
        key_version: Option<u32>,
    },
    /// Check a signature of a base64 input: prints valid, or fails with INVALID_ARGUMENT.
    Verify { name: String, input: String, signature: String },
    /// Which versions still protect ciphertexts in the values under a KV prefix (read with this client's token),
    /// and the highest minimum decryption version that locks none of them out. A ciphertext does not name its
    /// key: every `pando:v<N>:` value found counts, so give a prefix that holds this key's ciphertexts only.
    KeyUsage {
        name: String,
        #[arg(long)]
        prefix: String,
    },
    /// The engine's known-answer tests (RFC 8439, NIST GCM, RFC 8032, RFC 5869), run inside the wasm on the node.
    SelfTest,
}

/// What a ciphertext is bound to besides its key: the same must be given to seal and to open it.
#[derive(Debug, Args)]
pub struct Binding {
    /// The context of a derived key, base64.
    #[arg(long)]
    context: Option<String>,
    /// Data the ciphertext is bound to without holding it, base64; decrypt must give the same.
    #[arg(long)]
    associated_data: Option<String>,
}

pub async fn transit(client: &Client, command: TransitCommand, json_output: bool) -> anyhow::Result<()> {
    let secrets = client.secrets();
    let (name, op) = match command {
        TransitCommand::CreateKey { name, key_type, derived, convergent } => {
            let key_type = match key_type.as_str() {
                "aes256-gcm96" => KeyType::Aes256Gcm96,
                "chacha20-poly1305" => KeyType::ChaCha20Poly1305,
                _ => KeyType::Ed25519,
            };
            (name, Op::Create { key_type, derived, convergent })
        }
        TransitCommand::Read { name } => (name, Op::Read),
        TransitCommand::Rotate { name } => (name, Op::Rotate),
        TransitCommand::Config { name, min_decryption_version, min_encryption_version, deletion_allowed } => {
            let update = ConfigUpdate { min_decryption_version, min_encryption_version, deletion_allowed };
            if update == ConfigUpdate::default() {
                return Err(ClientError::Invalid(
                    "nothing to change: give --min-decryption-version, --min-encryption-version or --deletion-allowed"
                        .into(),
                )
                .into());
            }
            (name, Op::Config(update))
        }
        TransitCommand::Delete { name } => (name, Op::Delete),
        TransitCommand::Encrypt { name, plaintext, binding: Binding { context, associated_data }, key_version } => {
            (name, Op::Encrypt { plaintext, context, associated_data, key_version })
        }
        TransitCommand::Decrypt { name, ciphertext, binding: Binding { context, associated_data } } => {
            (name, Op::Decrypt { ciphertext, context, associated_data })
        }
        TransitCommand::Rewrap { name, ciphertext, binding: Binding { context, associated_data }, key_version } => {
            (name, Op::Rewrap { ciphertext, context, associated_data, key_version })
        }
        TransitCommand::Datakey { name, plaintext, context } => (name, Op::DataKey { plaintext, context }),
        TransitCommand::Sign { name, input, key_version } => (name, Op::Sign { input, key_version }),
        TransitCommand::Verify { name, input, signature } => (name, Op::Verify { input, signature }),
        TransitCommand::KeyUsage { name, prefix } => return key_usage(client, &name, &prefix, json_output).await,
        TransitCommand::SelfTest => {
            let results = secrets.transit_self_test().await?;
            if json_output {
                print_json(&serde_json::to_value(&results)?);
            } else {
                for result in &results {
                    println!("passed  {}", result.name);
                }
            }
            return Ok(());
        }
    };
    let answer = secrets.transit(&name, &op).await?;
    if json_output {
        print_json(&serde_json::to_value(&answer)?);
        return Ok(());
    }
    match answer {
        Answer::Key(view) => print_key(&view),
        Answer::Deleted => println!("key {name} deleted"),
        Answer::Ciphertext { ciphertext, .. } => println!("{ciphertext}"),
        Answer::Plaintext { plaintext } => println!("{plaintext}"),
        Answer::DataKey { ciphertext, plaintext, .. } => {
            println!("ciphertext  {ciphertext}");
            if let Some(plaintext) = plaintext {
                println!("plaintext   {plaintext}");
            }
        }
        Answer::Signature { signature, .. } => println!("{signature}"),
        Answer::Verified { valid: true } => println!("valid"),
        Answer::Verified { valid: false } => {
            return Err(ClientError::Wire(WireError::new(
                ErrorCode::InvalidArgument,
                format!("the signature does not verify with key {name}"),
            ))
            .into());
        }
    }
    Ok(())
}

fn print_key(view: &KeyView) {
    println!("{} ({})", view.name, view.key_type.name());
    println!("  latest version           {}", view.latest_version);
    println!("  min decryption version   {}", view.min_decryption_version);
    let encryption = match view.min_encryption_version {
        0 => "any kept".to_string(),
        version => format!("{version} and later"),
    };
    println!("  encrypts with            the latest (a named version: {encryption})");
    println!(
        "  derived                  {}",
        if view.convergent {
            "yes, convergent"
        } else if view.derived {
            "yes"
        } else {
            "no"
        }
    );
    println!("  deletion allowed         {}", view.deletion_allowed);
    for version in &view.versions {
        let public = version.public_key.as_deref().map(|key| format!("  public key {key}")).unwrap_or_default();
        println!("  version {:<6} {}{public}", version.version, utc(version.created_ms));
    }
}

/// Every `pando:v<N>:` ciphertext or signature in `value`, by the version it names.
fn versions_in(value: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(value);
    let mut found = Vec::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find(CIPHERTEXT_PREFIX) {
        rest = &rest[at..];
        if let Some(version) = version_of(rest) {
            found.push(version);
        }
        rest = &rest[CIPHERTEXT_PREFIX.len()..];
    }
    found
}

/// Per version: how many ciphertexts name it, and a few of the keys holding them.
#[derive(Default)]
struct Usage {
    count: u64,
    keys: Vec<String>,
}

async fn key_usage(client: &Client, name: &str, prefix: &str, json_output: bool) -> anyhow::Result<()> {
    let view = match client.secrets().transit(name, &Op::Read).await? {
        Answer::Key(view) => view,
        _ => return Err(ClientError::Protocol("a key read answered something else".into()).into()),
    };
    let mut usage: BTreeMap<u32, Usage> = BTreeMap::new();
    let (mut scanned, mut in_blobs) = (0u64, 0u64);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = client.scan(prefix.as_bytes(), USAGE_SCAN_PAGE, after.as_deref(), Consistency::Linearizable).await?;
        for entry in &page.entries {
            scanned += 1;
            if entry.blob.is_some() {
                // Large values live in blobs; a ciphertext is rarely one, and reading each would cost a download.
                in_blobs += 1;
                continue;
            }
            for version in versions_in(&entry.value) {
                let used = usage.entry(version).or_default();
                used.count += 1;
                let key = String::from_utf8_lossy(&entry.key).into_owned();
                if used.keys.len() < USAGE_EXAMPLES_MAX && !used.keys.contains(&key) {
                    used.keys.push(key);
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // The minimum may rise to the oldest version in use (or the latest when none is) without locking anything out.
    let safe_minimum = usage.keys().next().copied().unwrap_or(view.latest_version).min(view.latest_version);
    if json_output {
        let versions: Vec<_> = usage
            .iter()
            .map(|(version, used)| json!({ "version": version, "ciphertexts": used.count, "keys": used.keys }))
            .collect();
        print_json(&json!({
            "key": name,
            "prefix": prefix,
            "latest_version": view.latest_version,
            "min_decryption_version": view.min_decryption_version,
            "keys_scanned": scanned,
            "values_in_blobs_skipped": in_blobs,
            "versions": versions,
            // None when values went unread: nothing is known to be safe then.
            "safe_min_decryption_version": (in_blobs == 0).then_some(safe_minimum),
        }));
        return Ok(());
    }
    println!(
        "key {name}: latest version {}, min decryption version {}; {scanned} keys under `{prefix}` scanned",
        view.latest_version, view.min_decryption_version
    );
    if usage.is_empty() {
        println!("no ciphertext of this engine found");
    }
    for (version, used) in &usage {
        let state =
            if *version < view.min_decryption_version { " (below the minimum: no longer decrypts)" } else { "" };
        println!(
            "  version {version}: {} ciphertext{}{state}, in {}",
            used.count,
            if used.count == 1 { "" } else { "s" },
            used.keys.join(", ")
        );
    }
    if in_blobs > 0 {
        println!("  {in_blobs} values stored as blobs were not read");
    }
    if in_blobs > 0 {
        // Their ciphertexts are unknown: no minimum is safe to suggest.
        println!("read the values stored as blobs before raising the minimum decryption version");
    } else if safe_minimum > view.min_decryption_version {
        println!(
            "the minimum decryption version can rise to {safe_minimum} (config {name} --min-decryption-version \
             {safe_minimum}); rewrap the older ciphertexts first to go higher"
        );
    } else {
        println!("rewrap the ciphertexts of version {safe_minimum} before raising the minimum decryption version");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::versions_in;

    #[test]
    fn ciphertexts_are_found_anywhere_in_a_value_by_the_version_they_name() {
        let value = br#"{"card":"pando:v2:AAAA","old":"pando:v1:BBBB","note":"pando:vx:not one","sig":"pando:v12:CC"}"#;
        assert_eq!(versions_in(value), vec![2, 1, 12]);
        assert!(versions_in(b"vault:v1:AAAA").is_empty());
    }
}
