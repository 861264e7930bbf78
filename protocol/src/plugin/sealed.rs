//! Sealed storage: a key-value namespace of each plugin's own that no client request can reach.
//!
//! A plugin that keeps secrets (the secrets engine's key rings and KV v2 records) cannot keep them in the KV: an
//! admin's token reads every key, a watch or a hook stream of `kv.>` carries every value, and the file system's
//! `.pando/` view lists what the KV holds. So each plugin with the `sealed_storage` permission gets rows in the
//! coordination table instead (`PS/<plugin>/<key>`), which no client request reads: not `kv get`, not a scan of the
//! whole keyspace, not a watch, a transaction or a hook event. Only the plugin's own host functions reach them, and
//! only its own rows. The plugin decides what each caller may do with them (see `plugin_abi::CallerCheck`).
//!
//! Writes are one replicated command, [`super::PluginCommand::Sealed`]: guards ([`SealedOp::Check`]) then puts and
//! deletes, all or nothing, so a compare-and-swap, a conditional delete and a multi-row update are each one entry.
//! Every plugin's rows are bounded in count and bytes ([`PLUGIN_SEALED_ROWS_MAX`], [`PLUGIN_SEALED_BYTES_MAX`]),
//! tracked by a usage row updated in the same entry. Rows stay when the plugin is removed, as its KV keys do:
//! installing a plugin of the same name again finds them (an admin can install any code under a name, so sealed
//! storage protects against the cluster's clients, not against its plugin administrators).

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use crate::coord::{CoordRead, CoordWrite};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::limits::{
    KEY_SIZE_BYTES_MAX, PLUGIN_SEALED_BYTES_MAX, PLUGIN_SEALED_OPS_MAX, PLUGIN_SEALED_ROWS_MAX,
    PLUGIN_SEALED_WRITE_BYTES_MAX, SCAN_LIMIT_COUNT_MAX, SCAN_RESPONSE_BYTES_MAX, VALUE_SIZE_BYTES_MAX,
};
use crate::state_machine::StorageFault;

use super::{Permission, PluginRecord};

/// One step of a sealed write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealedOp {
    /// The write goes ahead only if `key` holds `expected` (`None`: does not exist).
    Check {
        key: Bytes,
        expected: Option<Bytes>,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
}

impl SealedOp {
    pub fn key(&self) -> &[u8] {
        match self {
            SealedOp::Check { key, .. } | SealedOp::Put { key, .. } | SealedOp::Delete { key } => key,
        }
    }

    /// The value a put writes or a check expects.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            SealedOp::Put { value, .. } | SealedOp::Check { expected: Some(value), .. } => Some(value.as_slice()),
            _ => None,
        }
    }
}

/// What a sealed write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedWritten {
    /// Rows put or deleted (a delete of a missing row counts nothing).
    pub changed: u32,
    /// The plugin's rows and bytes afterwards.
    pub usage: SealedUsage,
}

/// How much sealed storage a plugin holds: rows, and the bytes of their keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedUsage {
    pub rows: u64,
    pub bytes: u64,
}

/// One page of a sealed scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealedPage {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// More rows follow: scan again after this key.
    pub next: Option<Vec<u8>>,
}

/// A read of sealed storage, as the node's read path serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedRead {
    Get { key: Vec<u8> },
    Scan { prefix: Vec<u8>, after: Option<Vec<u8>>, limit: u32 },
}

/// What a [`SealedRead`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedReadAnswer {
    Value(Option<Vec<u8>>),
    Page(SealedPage),
}

/// Serves `read` for `plugin` from `store`, after [`check_plugin`] in the same snapshot.
pub fn read(
    store: &impl CoordRead,
    plugin: &str,
    read: &SealedRead,
) -> Result<Result<SealedReadAnswer, WireError>, StorageFault> {
    Ok(match read {
        SealedRead::Get { key } => get(store, plugin, key)?.map(SealedReadAnswer::Value),
        SealedRead::Scan { prefix, after, limit } => {
            scan(store, plugin, prefix, after.as_deref(), *limit)?.map(SealedReadAnswer::Page)
        }
    })
}

const ROW: &[u8] = b"PS/";
const USAGE: &[u8] = b"PSu/";

/// `PS/<plugin>/`: plugin names cannot contain `/`, so no plugin's rows start with another's prefix.
fn plugin_prefix(plugin: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(ROW.len() + plugin.len() + 1);
    prefix.extend_from_slice(ROW);
    prefix.extend_from_slice(plugin.as_bytes());
    prefix.push(b'/');
    prefix
}

fn row_key(plugin: &str, key: &[u8]) -> Vec<u8> {
    let mut row = plugin_prefix(plugin);
    row.extend_from_slice(key);
    row
}

fn usage_key(plugin: &str) -> Vec<u8> {
    crate::coord::keys::with(USAGE, plugin.as_bytes())
}

/// The plugin's usage as recorded.
pub fn usage(store: &impl CoordRead, plugin: &str) -> Result<SealedUsage, StorageFault> {
    Ok(crate::coord::load(store, &usage_key(plugin))?.unwrap_or_default())
}

/// Checks a key a plugin names: not empty, within the KV's key limit.
fn validate_key(key: &[u8]) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(WireError::invalid("a sealed key must not be empty"));
    }
    if key.len() > KEY_SIZE_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "a sealed key is {} bytes, the limit is {KEY_SIZE_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a write before it is proposed and again when it is applied: 1 to [`PLUGIN_SEALED_OPS_MAX`] steps with at
/// least one put or delete, valid keys, values within the KV's limit, the whole within
/// [`PLUGIN_SEALED_WRITE_BYTES_MAX`].
pub fn validate_write(ops: &[SealedOp]) -> Result<(), WireError> {
    if ops.is_empty() || ops.len() > PLUGIN_SEALED_OPS_MAX {
        return Err(WireError::invalid(format!(
            "a sealed write takes 1 to {PLUGIN_SEALED_OPS_MAX} steps, got {}",
            ops.len()
        )));
    }
    if ops.iter().all(|op| matches!(op, SealedOp::Check { .. })) {
        return Err(WireError::invalid("a sealed write of checks alone changes nothing: read instead"));
    }
    let mut bytes = 0usize;
    for op in ops {
        validate_key(op.key())?;
        let value = op.value().map_or(0, <[u8]>::len);
        if value > VALUE_SIZE_BYTES_MAX {
            return Err(WireError::too_large(format!(
                "a sealed value is {value} bytes, the limit is {VALUE_SIZE_BYTES_MAX}"
            )));
        }
        bytes += op.key().len() + value;
    }
    if bytes > PLUGIN_SEALED_WRITE_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "a sealed write carries {bytes} bytes, the limit is {PLUGIN_SEALED_WRITE_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Whether `plugin` may use sealed storage: installed, enabled, and holding the `sealed_storage` permission.
pub fn check_plugin(store: &impl CoordRead, plugin: &str) -> Result<Result<PluginRecord, WireError>, StorageFault> {
    let Some(record) = super::load(store, plugin)? else { return Ok(Err(super::not_found(plugin))) };
    if !record.enabled {
        return Ok(Err(WireError::new(ErrorCode::Unavailable, format!("plugin `{plugin}` is disabled"))));
    }
    if !record.manifest.allows(Permission::SealedStorage) {
        return Ok(Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("plugin `{plugin}` lacks the `sealed_storage` permission"),
        )));
    }
    Ok(Ok(record))
}

/// One row of `plugin`'s sealed storage, after [`check_plugin`].
pub fn get(
    store: &impl CoordRead,
    plugin: &str,
    key: &[u8],
) -> Result<Result<Option<Vec<u8>>, WireError>, StorageFault> {
    if let Err(error) = check_plugin(store, plugin)?.and_then(|_| validate_key(key)) {
        return Ok(Err(error));
    }
    Ok(Ok(store.coord_get(&row_key(plugin, key))?))
}

/// A page of `plugin`'s rows whose key starts with `prefix`, strictly after `after`, at most `limit` of them (1 to
/// [`SCAN_LIMIT_COUNT_MAX`]) and [`SCAN_RESPONSE_BYTES_MAX`] bytes, after [`check_plugin`].
pub fn scan(
    store: &impl CoordRead,
    plugin: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: u32,
) -> Result<Result<SealedPage, WireError>, StorageFault> {
    if let Err(error) = check_plugin(store, plugin)? {
        return Ok(Err(error));
    }
    if prefix.len() > KEY_SIZE_BYTES_MAX || after.is_some_and(|after| after.len() > KEY_SIZE_BYTES_MAX) {
        return Ok(Err(WireError::too_large(format!(
            "a sealed scan's prefix and start are at most {KEY_SIZE_BYTES_MAX} bytes"
        ))));
    }
    let limit = limit.clamp(1, SCAN_LIMIT_COUNT_MAX) as usize;
    let own = plugin_prefix(plugin);
    let full_prefix = row_key(plugin, prefix);
    let start = match after {
        // Strictly after `after`: its key with a zero byte appended is the first key that can follow it.
        Some(after) if after >= prefix => [row_key(plugin, after).as_slice(), &[0]].concat(),
        _ => full_prefix.clone(),
    };
    let mut page = SealedPage::default();
    let mut bytes = 0usize;
    let mut more = false;
    store.coord_scan_from(&full_prefix, &start, &mut |key, value| {
        if page.entries.len() == limit || bytes >= SCAN_RESPONSE_BYTES_MAX {
            more = true;
            return ControlFlow::Break(());
        }
        let key = key[own.len()..].to_vec();
        bytes += key.len() + value.len();
        page.entries.push((key, value.to_vec()));
        ControlFlow::Continue(())
    })?;
    if more {
        page.next = page.entries.last().map(|(key, _)| key.clone());
    }
    Ok(Ok(page))
}

/// Applies a sealed write of `plugin`: every check must hold, then every put and delete lands, in order, in this one
/// entry. A failed check answers `CONFLICT` naming the key, a write past the plugin's bounds `TOO_LARGE`; either
/// changes nothing.
pub fn apply(
    store: &mut impl CoordWrite,
    plugin: &str,
    ops: &[SealedOp],
) -> Result<Result<SealedWritten, WireError>, StorageFault> {
    if let Err(error) = check_plugin(store, plugin)?.and_then(|_| validate_write(ops)) {
        return Ok(Err(error));
    }
    // Every check against the rows as they were before this write (checks name the state the caller read).
    for op in ops {
        if let SealedOp::Check { key, expected } = op {
            let current = store.coord_get(&row_key(plugin, key))?;
            if current.as_deref() != expected.as_ref().map(|expected| expected.as_slice()) {
                let state = if current.is_some() { "holds another value" } else { "does not exist" };
                return Ok(Err(WireError::new(
                    ErrorCode::Conflict,
                    format!("sealed key {:?} {state}", String::from_utf8_lossy(key)),
                )));
            }
        }
    }
    // The usage afterwards, computed before anything is written so a write past the bounds changes nothing. A key
    // written twice in one write is counted as the last step leaves it.
    let before = usage(store, plugin)?;
    let mut after = before;
    let mut pending: std::collections::BTreeMap<&[u8], Option<usize>> = std::collections::BTreeMap::new();
    for op in ops {
        let key: &[u8] = op.key();
        let new = match op {
            SealedOp::Check { .. } => continue,
            SealedOp::Put { value, .. } => Some(key.len() + value.len()),
            SealedOp::Delete { .. } => None,
        };
        let old = match pending.get(key) {
            Some(size) => *size,
            None => store.coord_get(&row_key(plugin, key))?.map(|value| key.len() + value.len()),
        };
        if let Some(size) = old {
            after.rows = after.rows.saturating_sub(1);
            after.bytes = after.bytes.saturating_sub(size as u64);
        }
        if let Some(size) = new {
            after.rows += 1;
            after.bytes += size as u64;
        }
        pending.insert(key, new);
    }
    let grows = after.rows > before.rows || after.bytes > before.bytes;
    if grows && (after.rows > PLUGIN_SEALED_ROWS_MAX || after.bytes > PLUGIN_SEALED_BYTES_MAX) {
        return Ok(Err(WireError::too_large(format!(
            "plugin `{plugin}` would hold {} sealed rows of {} bytes; the limits are {PLUGIN_SEALED_ROWS_MAX} rows and \
             {PLUGIN_SEALED_BYTES_MAX} bytes",
            after.rows, after.bytes
        ))));
    }
    let mut changed = 0u32;
    for op in ops {
        match op {
            SealedOp::Check { .. } => {}
            SealedOp::Put { key, value } => {
                store.coord_put(&row_key(plugin, key), value)?;
                changed += 1;
            }
            SealedOp::Delete { key } => {
                if store.coord_delete(&row_key(plugin, key))? {
                    changed += 1;
                }
            }
        }
    }
    if after != before {
        if after == SealedUsage::default() {
            store.coord_delete(&usage_key(plugin))?;
        } else {
            crate::coord::save(store, &usage_key(plugin), &after)?;
        }
    }
    Ok(Ok(SealedWritten { changed, usage: after }))
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
