//! Watches over the KV: the event every committed change of a key produces, and the history that lets a watch start
//! (or resume) at any revision at or above the compacted one.
//!
//! The state machine records one [`KvEvent`] per changed key into the history as it applies a command, in the same
//! transaction as the rows, so every replica holds the same history and the commit stream publishes the same events.
//! All events of one revision come from one command (a transaction, a batch, a lease's end) and are delivered
//! together. `KvRequest::Compact` drops the history below a revision on every replica at the same log position; a
//! watch asking for less is answered `COMPACTED`, naming the oldest revision still held and the current one.
//!
//! A watch ([`WatchRequest`]) runs on its own stream: the request, then [`WatchResponse`] frames until either side
//! ends it. Many watches share one connection, each on its own stream, so a watcher that stops reading holds up only
//! its own stream; the node catches it up from the history when it reads again, or cancels it with `SLOW_CONSUMER`
//! once it stalled too long. A watch on a node that lost its leader is cancelled with `NO_LEADER` (resume elsewhere,
//! from the `next_revision` the cancellation names).

use serde::{Deserialize, Serialize};

use crate::coord::{CoordRead, CoordWrite};
use crate::error::WireError;
use crate::kv::{Bytes, KvEntry};
use crate::limits::{KEY_SIZE_BYTES_MAX, WATCH_PROGRESS_MS_MIN};
use crate::state_machine::StorageFault;

/// The coordination row holding the compacted revision: the oldest revision whose events the history still holds.
const COMPACTED_ROW: &[u8] = b"m/kv_compacted";

/// The oldest revision the history holds events for (1 until the first compaction).
pub fn compacted_revision(store: &impl CoordRead) -> Result<u64, StorageFault> {
    match store.coord_get(COMPACTED_ROW)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StorageFault("compacted revision row is not 8 bytes".into()))?,
        )),
        None => Ok(1),
    }
}

/// Records that the history starts at `revision`.
pub fn set_compacted_revision(store: &mut impl CoordWrite, revision: u64) -> Result<(), StorageFault> {
    store.coord_put(COMPACTED_ROW, &revision.to_be_bytes())
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Put => "PUT",
            EventKind::Delete => "DELETE",
        }
    }
}

/// One change of one key, at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    pub kind: EventKind,
    /// For a put, the key's new row (its `mod_revision` is the event's revision). For a delete, the key with the
    /// deletion's revision as `mod_revision`, an empty value and version 0, as etcd reports it.
    pub entry: KvEntry,
    /// The key's `mod_revision` before this change (0: it did not exist): where its previous value is in the
    /// history, for watches that ask for it.
    pub prev_revision: u64,
    /// The state machine's clock (log time, ms since the Unix epoch) when the change was applied: the same on every
    /// replica, and what age-based history retention compares.
    pub time_ms: u64,
}

impl KvEvent {
    pub fn revision(&self) -> u64 {
        self.entry.mod_revision
    }

    pub fn key(&self) -> &Bytes {
        &self.entry.key
    }

    /// A deletion of `key` at `revision`, of a row last modified at `prev_revision`.
    pub fn delete(key: &[u8], revision: u64, prev_revision: u64, time_ms: u64) -> KvEvent {
        KvEvent {
            kind: EventKind::Delete,
            entry: KvEntry {
                key: Bytes::from(key.to_vec()),
                value: Bytes::default(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                blob: None,
            },
            prev_revision,
            time_ms,
        }
    }
}

/// Bytes of a history key: the revision, then the event's position within its revision (both big-endian, so the
/// table's order is the history's order).
pub const HISTORY_KEY_BYTES: usize = 12;

/// The history key of the `index`th event of `revision`.
pub fn history_key(revision: u64, index: u32) -> [u8; HISTORY_KEY_BYTES] {
    let mut key = [0u8; HISTORY_KEY_BYTES];
    key[..8].copy_from_slice(&revision.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The revision and position a history key names (`None`: not a history key).
pub fn parse_history_key(key: &[u8]) -> Option<(u64, u32)> {
    let key: &[u8; HISTORY_KEY_BYTES] = key.try_into().ok()?;
    let revision = u64::from_be_bytes(key[..8].try_into().ok()?);
    let index = u32::from_be_bytes(key[8..].try_into().ok()?);
    Some((revision, index))
}

/// Encodes an event for the history table.
pub fn encode_event(event: &KvEvent) -> Vec<u8> {
    rmp_serde::to_vec_named(event).expect("a KvEvent always encodes")
}

/// Decodes a history row; `None` means the row is corrupt.
pub fn decode_event(bytes: &[u8]) -> Option<KvEvent> {
    rmp_serde::from_slice(bytes).ok()
}

/// Which keys a watch sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchRange {
    /// Exactly this key.
    Key(Bytes),
    /// Every key starting with this prefix (the empty prefix: every key).
    Prefix(Bytes),
    /// Keys from `start` (included) to `end` (excluded) in byte order; an empty `end` has no upper bound.
    Range { start: Bytes, end: Bytes },
}

impl WatchRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            WatchRange::Key(wanted) => key == wanted.as_slice(),
            WatchRange::Prefix(prefix) => key.starts_with(prefix),
            WatchRange::Range { start, end } => key >= start.as_slice() && (end.is_empty() || key < end.as_slice()),
        }
    }

    /// What the watch needs read access to: a prefix every key it can see starts with (for a range, the longest prefix
    /// its two ends share, since every key between them shares it; an open-ended range needs the whole keyspace).
    pub fn access_prefix(&self) -> &[u8] {
        match self {
            WatchRange::Key(key) | WatchRange::Prefix(key) => key,
            WatchRange::Range { end, .. } if end.is_empty() => &[],
            WatchRange::Range { start, end } => {
                let shared = start.iter().zip(end.iter()).take_while(|(a, b)| a == b).count();
                &start[..shared]
            }
        }
    }
}

/// A watch: which keys, from which revision, with what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    pub range: WatchRange,
    /// The first revision to deliver; 0: the next one to commit.
    pub start_revision: u64,
    /// Each event carries the key's previous entry, while the history still holds it.
    pub prev_kv: bool,
    /// Only events of this kind (`None`: both).
    pub only: Option<EventKind>,
    /// A progress notification after this many ms without a delivered revision (0: none).
    pub progress_ms: u32,
}

impl WatchRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        match &self.range {
            WatchRange::Key(key) => crate::kv::validate_key(key)?,
            WatchRange::Prefix(prefix) if prefix.len() > KEY_SIZE_BYTES_MAX => {
                return Err(WireError::too_large(format!("prefix is longer than {KEY_SIZE_BYTES_MAX} bytes")));
            }
            WatchRange::Prefix(_) => {}
            WatchRange::Range { start, end } => {
                if start.len() > KEY_SIZE_BYTES_MAX || end.len() > KEY_SIZE_BYTES_MAX {
                    return Err(WireError::too_large(format!("a range end is longer than {KEY_SIZE_BYTES_MAX} bytes")));
                }
                if !end.is_empty() && start >= end {
                    return Err(WireError::invalid("a watch range needs its start before its end"));
                }
            }
        }
        if self.progress_ms != 0 && self.progress_ms < WATCH_PROGRESS_MS_MIN {
            return Err(WireError::invalid(format!(
                "progress notifications come at most every {WATCH_PROGRESS_MS_MIN} ms, asked every {} ms",
                self.progress_ms
            )));
        }
        Ok(())
    }
}

/// One event as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub event: KvEvent,
    /// The key's entry before this change (asked for with `prev_kv`; `None` when the key did not exist, or when the
    /// history no longer holds it).
    pub prev: Option<KvEntry>,
}

/// The frames a watch answers with on its stream, after its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchResponse {
    /// The watch runs: revisions from `start_revision` on follow; the store is at `current`.
    Created { start_revision: u64, current: u64 },
    /// Matching events of one revision. With `more`, the revision did not fit one frame: the rest follows.
    Events { revision: u64, events: Vec<WatchEvent>, more: bool },
    /// Every revision before `next_revision` was delivered or held nothing this watch matches.
    Progress { next_revision: u64 },
    /// The watch ended: why (`COMPACTED`, `SLOW_CONSUMER`, `NO_LEADER`, `UNAVAILABLE`), and where to resume.
    Canceled { error: WireError, next_revision: u64 },
}

#[cfg(test)]
mod tests;
