//! Content-addressed blobs as the replicated state sees them.
//!
//! The bytes of a blob live in each node's blob store (iroh-blobs, outside the log); the log holds what the cluster
//! must agree on: each blob's size, how many copies it should have, which nodes hold a verified copy (`holders`),
//! which were asked to fetch one (`assigned`), and who references it. One row `B/<hash>` per blob, plus an index row
//! `Bn/<node><hash>` for every node that holds or was assigned the blob, so each node finds its own work without
//! scanning every blob.
//!
//! **Garbage.** A blob is referenced while the user's reference is held (`pinned`, taken by `blob add` and dropped by
//! `blob delete`), while it is protected, or while a KV value points at it (`kv_refs`, counted by the KV state
//! machine). When the last reference goes, a timer of the log clock is armed for the blob's grace period; if the blob
//! is still unreferenced when it fires, its row is deleted and [`CoordEvent::BlobCollected`] tells every node to drop
//! its copy. A reference taken during the grace period disarms the timer.

use std::fmt;
use std::ops::ControlFlow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::coord::keys::{self, with};
use crate::coord::timer::{self, TimerKind};
use crate::coord::{CoordEvent, CoordRead, CoordWrite};
use crate::error::{ErrorCode, WireError};
use crate::kv::Bytes;
use crate::state_machine::StorageFault;

/// Bytes of a BLAKE3 hash.
pub const BLOB_HASH_BYTES: usize = 32;
/// Most copies a blob may ask for.
pub const BLOB_REPLICAS_MAX: u8 = 16;
/// Longest grace period between a blob's last reference going and its collection.
pub const BLOB_GC_GRACE_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Most blobs one list page returns.
pub const BLOB_LIST_LIMIT_MAX: u32 = 1_000;
/// Most nodes one assignment names.
pub const BLOB_ASSIGN_NODES_MAX: usize = BLOB_REPLICAS_MAX as usize;

/// A BLAKE3 hash naming a blob. Printed and parsed as 64 lowercase hex digits; MessagePack `bin` on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(pub [u8; BLOB_HASH_BYTES]);

impl BlobHash {
    pub fn as_bytes(&self) -> &[u8; BLOB_HASH_BYTES] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        crate::cluster::hex(&self.0)
    }

    /// Parses 64 hex digits, with a clear error for anything else.
    pub fn parse(text: &str) -> Result<BlobHash, WireError> {
        let text = text.trim();
        if text.len() != BLOB_HASH_BYTES * 2 {
            return Err(WireError::invalid(format!(
                "a blob hash is {} hex digits, got {} characters",
                BLOB_HASH_BYTES * 2,
                text.len()
            )));
        }
        let mut bytes = [0u8; BLOB_HASH_BYTES];
        for (index, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |byte: u8| match byte {
                b'0'..=b'9' => Some(byte - b'0'),
                b'a'..=b'f' => Some(byte - b'a' + 10),
                b'A'..=b'F' => Some(byte - b'A' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => bytes[index] = high << 4 | low,
                _ => return Err(WireError::invalid(format!("a blob hash is hex digits only, got `{text}`"))),
            }
        }
        Ok(BlobHash(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Option<BlobHash> {
        bytes.try_into().ok().map(BlobHash)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BlobHash, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        BlobHash::from_slice(&bytes).ok_or_else(|| {
            serde::de::Error::custom(format!("a blob hash is {BLOB_HASH_BYTES} bytes, got {}", bytes.len()))
        })
    }
}

/// A KV value stored as a blob: the key's row holds this instead of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: BlobHash,
    pub size: u64,
}

/// What the cluster knows about one blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// Copies the cluster keeps.
    pub replicas: u8,
    /// Nodes that hold a complete, verified copy (ascending).
    pub holders: Vec<u64>,
    /// Nodes asked to fetch a copy that have not reported one yet (ascending, disjoint from `holders`).
    pub assigned: Vec<u64>,
    /// The user's reference, taken by `blob add` and dropped by `blob delete`.
    pub pinned: bool,
    /// Never collected while set, referenced or not.
    pub protected: bool,
    /// KV values that point at the blob.
    pub kv_refs: u64,
    /// Log time the blob was first recorded.
    pub created_ms: u64,
    /// How long the blob survives without references.
    pub gc_grace_ms: u64,
    /// When the blob will be collected, while it is unreferenced.
    pub collect_at_ms: Option<u64>,
}

impl BlobRecord {
    pub fn is_referenced(&self) -> bool {
        self.pinned || self.protected || self.kv_refs > 0
    }

    /// Whether `node` holds or was asked to hold the blob.
    pub fn places(&self, node: u64) -> bool {
        self.holders.binary_search(&node).is_ok() || self.assigned.binary_search(&node).is_ok()
    }
}

/// Replicated blob commands. Clients reach them through [`BlobRequest`]; `Held`, `Assign` and `Release` are proposed
/// by nodes only (the repair worker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobCommand {
    /// `holder` imported and verified the blob: record it (or add the holder), taking the user's reference if `pin`.
    /// `replicas` and `gc_grace_ms` apply to a new record; an existing record keeps its own unless `replicas` is larger.
    Added {
        blob: BlobRef,
        holder: u64,
        replicas: u8,
        pin: bool,
        gc_grace_ms: u64,
    },
    /// `node` fetched and verified a copy.
    Held {
        hash: BlobHash,
        node: u64,
    },
    /// Asks `nodes` to fetch a copy (the leader's repair worker).
    Assign {
        hash: BlobHash,
        nodes: Vec<u64>,
    },
    /// `node` no longer holds (or should hold) a copy: it lost it, or left the cluster.
    Release {
        hash: BlobHash,
        node: u64,
    },
    Protect {
        hash: BlobHash,
        protected: bool,
    },
    /// Drops the user's reference (`blob delete`).
    Unpin {
        hash: BlobHash,
    },
    SetReplicas {
        hash: BlobHash,
        replicas: u8,
    },
}

/// Where a streamed blob is attached in the KV, in the same request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobAttach {
    pub key: Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// Blob requests from clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Streams a blob in. Data frames follow the request frame on the same stream (raw bytes, each at most
    /// [`crate::limits::BLOB_DATA_FRAME_BYTES_MAX`]), ended by an empty frame; then the node answers.
    Add {
        /// Copies to keep (the node's default when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u8>,
        /// Take the user's reference (`false` when the blob only backs a KV value).
        pin: bool,
        /// Refuse the data unless it hashes to this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<BlobHash>,
        /// Also set this key to the blob, once it is recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attach: Option<BlobAttach>,
        /// Answer only once this many nodes hold the blob (default: two when `replicas` is two or more, so an
        /// acknowledged blob survives the loss of any one node; capped by `replicas` and the membership).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack_copies: Option<u8>,
    },
    /// Streams a blob out: the answer is [`BlobResponse::Stream`], then data frames, then an empty frame. The node
    /// fetches the blob from a holder first when it has no copy.
    Get {
        hash: BlobHash,
        /// Reading a KV value stored as a blob: the key that holds it, so the key's read capability is what is
        /// checked (instead of the blob capability).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<Bytes>,
    },
    Has {
        hash: BlobHash,
    },
    Status {
        hash: BlobHash,
    },
    List {
        after: Option<BlobHash>,
        limit: u32,
    },
    Protect {
        hash: BlobHash,
    },
    Unprotect {
        hash: BlobHash,
    },
    Delete {
        hash: BlobHash,
    },
    /// Which nodes hold the blob against its desired count, with their liveness as the leader sees it.
    Replication {
        hash: BlobHash,
    },
    SetReplicas {
        hash: BlobHash,
        replicas: u8,
    },
}

impl BlobRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            BlobRequest::Add { replicas, attach, ack_copies, .. } => {
                if let Some(replicas) = replicas {
                    validate_replicas(*replicas)?;
                }
                if let Some(copies) = ack_copies {
                    validate_replicas(*copies)?;
                }
                if let Some(attach) = attach {
                    crate::kv::validate_key(&attach.key)?;
                }
                Ok(())
            }
            BlobRequest::SetReplicas { replicas, .. } => validate_replicas(*replicas),
            BlobRequest::List { limit, .. } if *limit == 0 || *limit > BLOB_LIST_LIMIT_MAX => {
                Err(WireError::invalid(format!("list limit must be between 1 and {BLOB_LIST_LIMIT_MAX}, got {limit}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether the request changes replicated state.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            BlobRequest::Add { .. }
                | BlobRequest::Protect { .. }
                | BlobRequest::Unprotect { .. }
                | BlobRequest::Delete { .. }
                | BlobRequest::SetReplicas { .. }
        )
    }
}

pub fn validate_replicas(replicas: u8) -> Result<(), WireError> {
    if replicas == 0 || replicas > BLOB_REPLICAS_MAX {
        return Err(WireError::invalid(format!("replicas must be between 1 and {BLOB_REPLICAS_MAX}, got {replicas}")));
    }
    Ok(())
}

/// What this node has of a blob in its own store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalBlob {
    Complete { size: u64 },
    Partial,
    Absent,
}

/// What one node's fetches from other members came to since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCounters {
    pub fetches_ok: u64,
    /// Fetches from one holder that failed (unreachable, cut short, or corrupt); the next holder was tried.
    pub fetch_failures: u64,
    /// Of those, the ones whose data did not match the hash.
    pub fetch_corrupt: u64,
    pub bytes_fetched: u64,
}

/// One node's copy of a blob, in a replication report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node_id: u64,
    /// Heard from recently by the reporting leader (always true for the leader itself).
    pub live: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub hash: BlobHash,
    pub size: u64,
    pub desired: u8,
    pub holders: Vec<Replica>,
    pub assigned: Vec<Replica>,
    /// Holders the leader heard from recently: the copies that count.
    pub live_holders: u32,
    /// The leader that judged liveness.
    pub reported_by: u64,
}

/// Blob responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// A streamed add was verified and recorded; `revision` is the KV revision when it was attached to a key.
    Added {
        hash: BlobHash,
        record: BlobRecord,
        revision: Option<u64>,
    },
    /// Data frames follow, `size` bytes in all, then an empty frame.
    Stream {
        hash: BlobHash,
        size: u64,
    },
    Has {
        cluster: bool,
        local: bool,
    },
    Status {
        hash: BlobHash,
        record: Option<BlobRecord>,
        local: LocalBlob,
        node_id: u64,
        /// The answering node's fetches since it started.
        #[serde(default)]
        transfers: TransferCounters,
    },
    Page {
        blobs: Vec<(BlobHash, BlobRecord)>,
        next: Option<BlobHash>,
    },
    Record {
        hash: BlobHash,
        record: BlobRecord,
    },
    Replication(ReplicationReport),
}

fn record_key(hash: &BlobHash) -> Vec<u8> {
    with(keys::BLOB, hash.as_bytes())
}

fn node_index_key(node: u64, hash: &BlobHash) -> Vec<u8> {
    let mut key = with(keys::BLOB_NODE, &node.to_be_bytes());
    key.extend_from_slice(hash.as_bytes());
    key
}

pub fn load(store: &impl CoordRead, hash: &BlobHash) -> Result<Option<BlobRecord>, StorageFault> {
    crate::coord::load(store, &record_key(hash))
}

fn not_found(hash: &BlobHash) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster"))
}

/// Writes `new` over `old` (`None`: delete), keeping the node index and the collection timer in step.
fn save(
    store: &mut impl CoordWrite,
    hash: &BlobHash,
    old: Option<&BlobRecord>,
    new: Option<&mut BlobRecord>,
    now: u64,
) -> Result<(), StorageFault> {
    let placed = |record: Option<&BlobRecord>| -> Vec<u64> {
        let mut nodes: Vec<u64> =
            record.map(|record| record.holders.iter().chain(&record.assigned).copied().collect()).unwrap_or_default();
        nodes.sort_unstable();
        nodes
    };
    let before = placed(old);
    let after = placed(new.as_deref());
    for node in before.iter().filter(|node| after.binary_search(node).is_err()) {
        store.coord_delete(&node_index_key(*node, hash))?;
    }
    for node in after.iter().filter(|node| before.binary_search(node).is_err()) {
        store.coord_put(&node_index_key(*node, hash), &[])?;
    }
    let armed = old.and_then(|record| record.collect_at_ms);
    match new {
        None => {
            if let Some(deadline) = armed {
                timer::disarm(store, deadline, TimerKind::BlobCollect, hash.as_bytes())?;
            }
            store.coord_delete(&record_key(hash))?;
        }
        Some(record) => {
            match (record.is_referenced(), armed) {
                (true, Some(deadline)) => {
                    timer::disarm(store, deadline, TimerKind::BlobCollect, hash.as_bytes())?;
                    record.collect_at_ms = None;
                }
                (false, None) => {
                    let deadline = now.saturating_add(record.gc_grace_ms);
                    timer::arm(store, deadline, TimerKind::BlobCollect, hash.as_bytes())?;
                    record.collect_at_ms = Some(deadline);
                }
                _ => {}
            }
            crate::coord::save(store, &record_key(hash), &*record)?;
        }
    }
    Ok(())
}

fn insert_sorted(nodes: &mut Vec<u64>, node: u64) -> bool {
    match nodes.binary_search(&node) {
        Ok(_) => false,
        Err(at) => {
            nodes.insert(at, node);
            true
        }
    }
}

fn remove_sorted(nodes: &mut Vec<u64>, node: u64) -> bool {
    match nodes.binary_search(&node) {
        Ok(at) => {
            nodes.remove(at);
            true
        }
        Err(_) => false,
    }
}

/// Applies one blob command at log time `now`.
pub fn apply(
    store: &mut impl CoordWrite,
    now: u64,
    command: &BlobCommand,
) -> Result<Result<BlobResponse, WireError>, StorageFault> {
    let hash = match command {
        BlobCommand::Added { blob, .. } => blob.hash,
        BlobCommand::Held { hash, .. }
        | BlobCommand::Assign { hash, .. }
        | BlobCommand::Release { hash, .. }
        | BlobCommand::Protect { hash, .. }
        | BlobCommand::Unpin { hash }
        | BlobCommand::SetReplicas { hash, .. } => *hash,
    };
    let old = load(store, &hash)?;
    if let BlobCommand::Added { blob, holder, replicas, pin, gc_grace_ms } = command {
        if let Err(error) = validate_replicas(*replicas) {
            return Ok(Err(error));
        }
        if *gc_grace_ms > BLOB_GC_GRACE_MS_MAX {
            return Ok(Err(WireError::invalid(format!("gc grace must be at most {BLOB_GC_GRACE_MS_MAX} ms"))));
        }
        let mut record = old.clone().unwrap_or(BlobRecord {
            size: blob.size,
            replicas: *replicas,
            created_ms: now,
            gc_grace_ms: *gc_grace_ms,
            ..BlobRecord::default()
        });
        if record.size != blob.size {
            return Ok(Err(WireError::invalid(format!(
                "blob {hash} is recorded with {} bytes, not {}",
                record.size, blob.size
            ))));
        }
        record.replicas = record.replicas.max(*replicas);
        record.pinned |= *pin;
        remove_sorted(&mut record.assigned, *holder);
        insert_sorted(&mut record.holders, *holder);
        save(store, &hash, old.as_ref(), Some(&mut record), now)?;
        store.emit(CoordEvent::BlobHeld { hash, node: *holder });
        return Ok(Ok(BlobResponse::Record { hash, record }));
    }
    let Some(mut record) = old.clone() else { return Ok(Err(not_found(&hash))) };
    match command {
        BlobCommand::Added { .. } => unreachable!("handled above"),
        BlobCommand::Held { node, .. } => {
            remove_sorted(&mut record.assigned, *node);
            if insert_sorted(&mut record.holders, *node) {
                store.emit(CoordEvent::BlobHeld { hash, node: *node });
            }
        }
        BlobCommand::Assign { nodes, .. } => {
            if nodes.len() > BLOB_ASSIGN_NODES_MAX {
                return Ok(Err(WireError::too_large(format!("at most {BLOB_ASSIGN_NODES_MAX} nodes per assignment"))));
            }
            let mut added = Vec::new();
            for node in nodes {
                if record.holders.binary_search(node).is_err() && insert_sorted(&mut record.assigned, *node) {
                    added.push(*node);
                }
            }
            if !added.is_empty() {
                store.emit(CoordEvent::BlobAssigned { hash, nodes: added });
            }
        }
        BlobCommand::Release { node, .. } => {
            let held = remove_sorted(&mut record.holders, *node);
            let assigned = remove_sorted(&mut record.assigned, *node);
            if held || assigned {
                store.emit(CoordEvent::BlobReleased { hash, node: *node });
            }
        }
        BlobCommand::Protect { protected, .. } => record.protected = *protected,
        BlobCommand::Unpin { .. } => record.pinned = false,
        BlobCommand::SetReplicas { replicas, .. } => {
            if let Err(error) = validate_replicas(*replicas) {
                return Ok(Err(error));
            }
            record.replicas = *replicas;
        }
    }
    save(store, &hash, old.as_ref(), Some(&mut record), now)?;
    Ok(Ok(BlobResponse::Record { hash, record }))
}

/// The coordination row that says the key-to-blob index is complete: set once a store written before the index
/// existed had it rebuilt ([`key_reference`] rows for every KV row that points at a blob), and carried by snapshots.
pub const KEY_INDEX_COMPLETE: &[u8] = b"m/blob-key-index";

/// The row saying KV key `key` points at blob `hash`.
pub fn key_reference(hash: &BlobHash, key: &[u8]) -> Vec<u8> {
    let mut row = with(keys::BLOB_KEY, hash.as_bytes());
    row.extend_from_slice(key);
    row
}

/// Visits the KV keys that point at `hash`, in key order, until `visit` breaks.
pub fn referencing_keys(
    store: &impl CoordRead,
    hash: &BlobHash,
    visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<(), StorageFault> {
    let prefix = with(keys::BLOB_KEY, hash.as_bytes());
    store.coord_scan(&prefix, &mut |row, _| visit(&row[prefix.len()..]))
}

/// A reference (KV row `key`, or a plugin's wasm when `None`) stopped or started pointing at a blob: counts it,
/// arming or disarming collection, and keeps the key-to-blob index.
pub(crate) fn replace_reference(
    store: &mut impl CoordWrite,
    key: Option<&[u8]>,
    old: Option<BlobRef>,
    new: Option<BlobRef>,
) -> Result<(), StorageFault> {
    if old == new {
        return Ok(());
    }
    if let Some(key) = key {
        if let Some(old) = old {
            store.coord_delete(&key_reference(&old.hash, key))?;
        }
        if let Some(new) = new {
            store.coord_put(&key_reference(&new.hash, key), &[])?;
        }
    }
    let now = crate::coord::clock(store)?;
    for (blob, delta) in [(old, -1i64), (new, 1)] {
        let Some(blob) = blob else { continue };
        let Some(before) = load(store, &blob.hash)? else {
            // A reference to a collected blob (it cannot be created: attaching checks the record first).
            continue;
        };
        let mut record = before.clone();
        record.kv_refs = if delta < 0 { record.kv_refs.saturating_sub(1) } else { record.kv_refs + 1 };
        save(store, &blob.hash, Some(&before), Some(&mut record), now)?;
    }
    Ok(())
}

/// The record a KV value may be attached to, or why not.
pub(crate) fn attachable(store: &impl CoordRead, hash: &BlobHash) -> Result<Result<BlobRef, WireError>, StorageFault> {
    Ok(match load(store, hash)? {
        Some(record) if !record.holders.is_empty() => Ok(BlobRef { hash: *hash, size: record.size }),
        Some(_) => Err(WireError::new(ErrorCode::Unavailable, format!("blob {hash} has no holder yet"))),
        None => Err(not_found(hash)),
    })
}

/// The collection timer of a blob fired: deletes it if it is still unreferenced and the timer is its current one.
pub(crate) fn collect_lapsed(store: &mut impl CoordWrite, deadline: u64, subject: &[u8]) -> Result<(), StorageFault> {
    let Some(hash) = BlobHash::from_slice(subject) else { return Ok(()) };
    let Some(record) = load(store, &hash)? else { return Ok(()) };
    if record.is_referenced() || record.collect_at_ms != Some(deadline) {
        return Ok(());
    }
    let mut unarmed = record.clone();
    unarmed.collect_at_ms = None;
    save(store, &hash, Some(&unarmed), None, deadline)?;
    store.emit(CoordEvent::BlobCollected { hash });
    Ok(())
}

/// One page of blob records, and the hash to continue after when more may follow.
pub type BlobPage = (Vec<(BlobHash, BlobRecord)>, Option<BlobHash>);

/// One page of blob records in hash order, strictly after `after`.
pub fn list(store: &impl CoordRead, after: Option<&BlobHash>, limit: u32) -> Result<BlobPage, StorageFault> {
    let mut page = Vec::new();
    let mut more = false;
    let mut fault = None;
    store.coord_scan(keys::BLOB, &mut |key, value| {
        let Some(hash) = BlobHash::from_slice(&key[keys::BLOB.len()..]) else { return ControlFlow::Continue(()) };
        if after.is_some_and(|after| hash <= *after) {
            return ControlFlow::Continue(());
        }
        if page.len() == limit as usize {
            more = true;
            return ControlFlow::Break(());
        }
        match crate::coord::decode::<BlobRecord>(key, value) {
            Ok(record) => page.push((hash, record)),
            Err(error) => {
                fault = Some(error);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(fault) = fault {
        return Err(fault);
    }
    let next = if more { page.last().map(|(hash, _)| *hash) } else { None };
    Ok((page, next))
}

/// The blobs `node` holds or was assigned, in hash order, strictly after `after`, at most `limit`.
pub fn placed_on(
    store: &impl CoordRead,
    node: u64,
    after: Option<&BlobHash>,
    limit: usize,
) -> Result<Vec<BlobHash>, StorageFault> {
    let prefix = with(keys::BLOB_NODE, &node.to_be_bytes());
    let mut hashes = Vec::new();
    store.coord_scan(&prefix, &mut |key, _| {
        let Some(hash) = BlobHash::from_slice(&key[prefix.len()..]) else { return ControlFlow::Continue(()) };
        if after.is_some_and(|after| hash <= *after) {
            return ControlFlow::Continue(());
        }
        if hashes.len() == limit {
            return ControlFlow::Break(());
        }
        hashes.push(hash);
        ControlFlow::Continue(())
    })?;
    Ok(hashes)
}

#[cfg(test)]
mod tests;
