//! How the CLI shows entries and reads transactions: text is a presentation choice, bytes stay bytes.

use anyhow::{Context, bail};
use pando_client::pando_protocol::kv::{
    Bytes, Compare, CompareOp, CompareTarget, FenceKind, KvEntry, TxnOp, TxnOpResult,
};
use serde_json::{Value, json};

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// A key or value as JSON: a string when it is UTF-8, else `{"base64": ...}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => json!({ "base64": data_encoding::BASE64.encode(bytes) }),
    }
}

pub fn entry_json(entry: &KvEntry) -> Value {
    let mut value = json!({
        "key": bytes_json(&entry.key),
        "value": bytes_json(&entry.value),
        "create_revision": entry.create_revision,
        "mod_revision": entry.mod_revision,
        "version": entry.version,
    });
    if let Some(blob) = &entry.blob {
        // The bytes are a blob: `pando blob get` (or `kv get` without --json) streams them.
        value["value"] = Value::Null;
        value["blob"] = json!({ "hash": blob.hash.to_string(), "size": blob.size });
    }
    value
}

pub fn print_json(value: &Value) {
    println!("{value}");
}

pub fn txn_result_json(result: &TxnOpResult) -> Value {
    match result {
        TxnOpResult::Put => json!({ "put": true }),
        TxnOpResult::Delete { existed } => json!({ "delete": { "existed": existed } }),
        TxnOpResult::Get { entry } => json!({ "get": entry.as_ref().map(entry_json) }),
    }
}

fn text_bytes(value: &Value, what: &str) -> anyhow::Result<Bytes> {
    value.as_str().map(|text| Bytes::from(text.as_bytes().to_vec())).with_context(|| format!("{what} must be a string"))
}

fn parse_op(op: &Value) -> anyhow::Result<TxnOp> {
    if let Some(put) = op.get("put") {
        return Ok(TxnOp::Put {
            key: text_bytes(&put["key"], "put.key")?,
            value: text_bytes(&put["value"], "put.value")?,
        });
    }
    if let Some(key) = op.get("delete") {
        return Ok(TxnOp::Delete { key: text_bytes(key, "delete")? });
    }
    if let Some(key) = op.get("get") {
        return Ok(TxnOp::Get { key: text_bytes(key, "get")? });
    }
    bail!("each operation is {{\"put\": {{\"key\", \"value\"}}}}, {{\"delete\": key}} or {{\"get\": key}}, got {op}")
}

fn parse_compare(compare: &Value) -> anyhow::Result<Compare> {
    let key = text_bytes(&compare["key"], "compare.key")?;
    let op = match compare.get("op").and_then(Value::as_str).unwrap_or("==") {
        "==" | "=" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => bail!("compare.op must be ==, !=, < or >, got `{other}`"),
    };
    let number = |field: &str| {
        compare.get(field).map(|value| value.as_u64().with_context(|| format!("compare.{field} must be a number")))
    };
    let target = if let Some(value) = compare.get("value") {
        CompareTarget::Value(text_bytes(value, "compare.value")?)
    } else if let Some(version) = number("version") {
        CompareTarget::Version(version?)
    } else if let Some(revision) = number("mod_revision") {
        CompareTarget::ModRevision(revision?)
    } else if let Some(revision) = number("create_revision") {
        CompareTarget::CreateRevision(revision?)
    } else if let Some(token) = number("lock_token") {
        CompareTarget::LockToken(token?)
    } else if let Some(token) = number("rwlock_token") {
        CompareTarget::Fence { kind: FenceKind::RwLock, token: token? }
    } else if let Some(token) = number("semaphore_token") {
        CompareTarget::Fence { kind: FenceKind::Semaphore, token: token? }
    } else if let Some(token) = number("election_token") {
        CompareTarget::Fence { kind: FenceKind::Election, token: token? }
    } else if let Some(token) = number("delivery_token") {
        let message = number("message").context("a delivery_token compare needs the message id in `message`")??;
        CompareTarget::Fence { kind: FenceKind::QueueMessage(message), token: token? }
    } else {
        bail!(
            "a compare needs one of value, version, mod_revision, create_revision, lock_token, rwlock_token, \
             semaphore_token, election_token, delivery_token (with message)"
        );
    };
    Ok(Compare { key, op, target })
}

/// Parses `{"compare": [...], "success": [...], "failure": [...]}`.
pub fn parse_txn(text: &[u8]) -> anyhow::Result<(Vec<Compare>, Vec<TxnOp>, Vec<TxnOp>)> {
    let document: Value = serde_json::from_slice(text).context("transaction is not valid JSON")?;
    let list = |field: &str| document.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let compares = list("compare").iter().map(parse_compare).collect::<anyhow::Result<_>>()?;
    let success = list("success").iter().map(parse_op).collect::<anyhow::Result<_>>()?;
    let failure = list("failure").iter().map(parse_op).collect::<anyhow::Result<_>>()?;
    Ok((compares, success, failure))
}

/// Items as a person lists them, `a, b, c`, or `none` when there are none (never Rust's `[..]`).
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|item| item.to_string()).collect();
    if items.is_empty() { "none".to_string() } else { items.join(", ") }
}

/// `text` quoted for a POSIX shell (single quotes; a quote inside becomes `'\''`).
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A moment (milliseconds since the Unix epoch) as people read it: `2026-12-06T06:15:06.596Z`.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, in_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    let (year, month, day) = pando_client::pando_protocol::job::cron::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        ms % 1000
    )
}
