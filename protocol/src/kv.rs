//! KV request and response types. Keys and values are bytes end to end; text is a presentation choice of the CLI.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::limits::{
    BATCH_OPS_COUNT_MAX, KEY_SIZE_BYTES_MAX, SCAN_LIMIT_COUNT_MAX, TXN_COMPARES_COUNT_MAX, VALUE_SIZE_BYTES_MAX,
    WRITE_PAYLOAD_BYTES_MAX,
};

/// Raw bytes of a key or value, encoded as MessagePack `bin`.
pub type Bytes = serde_bytes::ByteBuf;

/// Whether `bytes` is empty (for `skip_serializing_if`, which cannot see through `Bytes`' deref).
pub(crate) fn no_bytes(bytes: &Bytes) -> bool {
    bytes.is_empty()
}

/// One key with its value and revisions, as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: Bytes,
    pub value: Bytes,
    /// Store revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Store revision of the last write to the key.
    pub mod_revision: u64,
    /// Writes to the key since it was created, starting at 1.
    pub version: u64,
    /// The value is stored as this blob (`value` is then empty; fetch the bytes with a blob get). Absent on the wire
    /// for inline values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<crate::blob::BlobRef>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (read index through the leader).
    #[default]
    Linearizable,
    /// Served from this node's applied state, which may lag the leader.
    Stale,
}

/// A single write inside a batch or a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
    Get { key: Bytes },
}

/// What a [`TxnOp`] produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put,
    Delete { existed: bool },
    Get { entry: Option<KvEntry> },
}

/// The field of a key a [`Compare`] looks at. A key that does not exist has value `None` and revisions 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value; never equal to anything when the key does not exist.
    Value(Bytes),
    Version(u64),
    ModRevision(u64),
    CreateRevision(u64),
    /// A fencing condition: `key` names a lock, and its current token (0 when free) is compared. `Equal` with the token
    /// an acquisition returned means "only while that acquisition still holds the lock".
    LockToken(u64),
    /// A fencing condition on any primitive that hands out tokens: `key` names the resource, and the compare holds
    /// (`Equal`) while `token` is still current there: held by the lock's holder, the read-write lock's writer, one of
    /// the semaphore's holders, the election's leader, or the queue message's current delivery. `NotEqual` holds when
    /// it is not; ordering operators are refused.
    Fence {
        kind: FenceKind,
        token: u64,
    },
}

/// What a [`CompareTarget::Fence`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceKind {
    Lock,
    /// The write hold of a read-write lock.
    RwLock,
    Semaphore,
    Election,
    /// A delivery of message `id` of the queue the key names.
    QueueMessage(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A guard of a transaction: `key`'s target field compared with `op` to the given operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// KV requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    Get {
        key: Bytes,
        consistency: Consistency,
    },
    Put {
        key: Bytes,
        value: Bytes,
        /// Ties the key to a lease: it is deleted when the lease is revoked or lapses. A later put without a lease (or
        /// a delete) unties it. Absent on the wire when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    Delete {
        key: Bytes,
    },
    /// Sets `key` to a blob of the cluster (the value reads as the blob's bytes). Refused with `NOT_FOUND` unless
    /// the blob is recorded with at least one holder.
    PutBlob {
        key: Bytes,
        hash: crate::blob::BlobHash,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    /// Set `key` to `value` only if its current value is `expected` (`None`: only if the key does not exist).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        value: Bytes,
    },
    /// Delete `key` only if its current value is `expected`.
    Cad {
        key: Bytes,
        expected: Bytes,
    },
    /// Keys starting with `prefix`, in byte order, strictly after `after` when given (the continuation token).
    Scan {
        prefix: Bytes,
        limit: u32,
        after: Option<Bytes>,
        consistency: Consistency,
    },
    BatchGet {
        keys: Vec<Bytes>,
        consistency: Consistency,
    },
    /// All puts and deletes applied atomically at one revision.
    BatchWrite {
        ops: Vec<WriteOp>,
    },
    /// If every compare holds, apply `success`, else `failure`; atomically, at one revision.
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// Drops the change history below `revision` on every replica: a watch from an older revision is then refused
    /// with `COMPACTED`. At most the current revision; compacting to or below the compacted revision changes nothing.
    /// It touches every key's history, so it needs write access to the whole keyspace.
    Compact {
        revision: u64,
    },
}

/// KV responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    Entry {
        entry: Option<KvEntry>,
    },
    Entries {
        entries: Vec<Option<KvEntry>>,
    },
    /// A write took effect at `revision`.
    Written {
        revision: u64,
    },
    /// A delete ran at `revision`; `existed` says whether there was anything to delete.
    Deleted {
        revision: u64,
        existed: bool,
    },
    /// One scan page; `next` is the continuation token (the last key returned) when more keys may follow. `revision`
    /// is the store's revision the page was read at (every entry is as of it; a watch from `revision + 1` misses no
    /// change after the page).
    ScanPage {
        entries: Vec<KvEntry>,
        next: Option<Bytes>,
        #[serde(default)]
        revision: u64,
    },
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<TxnOpResult>,
    },
    /// The history now starts at `compacted`; `revision` is the current revision.
    Compacted {
        compacted: u64,
        revision: u64,
    },
}

pub fn validate_key(key: &[u8]) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(WireError::invalid("key must not be empty"));
    }
    if key.len() > KEY_SIZE_BYTES_MAX {
        return Err(WireError::too_large(format!("key is {} bytes, the limit is {KEY_SIZE_BYTES_MAX}", key.len())));
    }
    Ok(())
}

pub fn validate_value(value: &[u8]) -> Result<(), WireError> {
    if value.len() > VALUE_SIZE_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "value is {} bytes, the limit is {VALUE_SIZE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

fn validate_ops_count(count: usize, what: &str) -> Result<(), WireError> {
    if count > BATCH_OPS_COUNT_MAX {
        return Err(WireError::too_large(format!("{what} has {count} operations, the limit is {BATCH_OPS_COUNT_MAX}")));
    }
    Ok(())
}

fn validate_payload(bytes: usize) -> Result<(), WireError> {
    if bytes > WRITE_PAYLOAD_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "request carries {bytes} bytes of keys and values, the limit is {WRITE_PAYLOAD_BYTES_MAX}"
        )));
    }
    Ok(())
}

impl WriteOp {
    fn validate(&self) -> Result<usize, WireError> {
        match self {
            WriteOp::Put { key, value } => {
                validate_key(key)?;
                validate_value(value)?;
                Ok(key.len() + value.len())
            }
            WriteOp::Delete { key } => {
                validate_key(key)?;
                Ok(key.len())
            }
        }
    }
}

impl TxnOp {
    fn validate(&self) -> Result<usize, WireError> {
        match self {
            TxnOp::Put { key, value } => {
                validate_key(key)?;
                validate_value(value)?;
                Ok(key.len() + value.len())
            }
            TxnOp::Delete { key } | TxnOp::Get { key } => {
                validate_key(key)?;
                Ok(key.len())
            }
        }
    }

    fn payload_bytes(&self) -> usize {
        match self {
            TxnOp::Put { key, value } => key.len() + value.len(),
            TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
        }
    }

    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, TxnOp::Get { .. })
    }
}

impl KvRequest {
    /// Checks every limit and argument. A request that passes is also accepted by the state machine.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            KvRequest::Get { key, .. } | KvRequest::Delete { key } | KvRequest::PutBlob { key, .. } => {
                validate_key(key)
            }
            KvRequest::Put { key, value, .. } => {
                validate_key(key)?;
                validate_value(value)
            }
            KvRequest::Cas { key, expected, value } => {
                validate_key(key)?;
                validate_value(value)?;
                if let Some(expected) = expected {
                    validate_value(expected)?;
                }
                Ok(())
            }
            KvRequest::Cad { key, expected } => {
                validate_key(key)?;
                validate_value(expected)
            }
            KvRequest::Scan { prefix, limit, after, .. } => {
                if prefix.len() > KEY_SIZE_BYTES_MAX {
                    return Err(WireError::too_large(format!("prefix is longer than {KEY_SIZE_BYTES_MAX} bytes")));
                }
                if *limit == 0 || *limit > SCAN_LIMIT_COUNT_MAX {
                    return Err(WireError::invalid(format!(
                        "scan limit must be between 1 and {SCAN_LIMIT_COUNT_MAX}, got {limit}"
                    )));
                }
                if let Some(after) = after {
                    validate_key(after)?;
                }
                Ok(())
            }
            KvRequest::BatchGet { keys, .. } => {
                validate_ops_count(keys.len(), "batch read")?;
                if keys.is_empty() {
                    return Err(WireError::invalid("batch read needs at least one key"));
                }
                keys.iter().try_for_each(|key| validate_key(key))
            }
            KvRequest::BatchWrite { ops } => {
                validate_ops_count(ops.len(), "batch write")?;
                if ops.is_empty() {
                    return Err(WireError::invalid("batch write needs at least one operation"));
                }
                let mut bytes = 0;
                for op in ops {
                    bytes += op.validate()?;
                }
                validate_payload(bytes)
            }
            KvRequest::Txn { compares, success, failure } => {
                if compares.len() > TXN_COMPARES_COUNT_MAX {
                    return Err(WireError::too_large(format!(
                        "transaction has {} compares, the limit is {TXN_COMPARES_COUNT_MAX}",
                        compares.len()
                    )));
                }
                validate_ops_count(success.len(), "transaction success branch")?;
                validate_ops_count(failure.len(), "transaction failure branch")?;
                let mut bytes = 0;
                for compare in compares {
                    validate_key(&compare.key)?;
                    if matches!(compare.target, CompareTarget::Fence { .. })
                        && !matches!(compare.op, CompareOp::Equal | CompareOp::NotEqual)
                    {
                        return Err(WireError::invalid("a fencing condition compares with == or != only"));
                    }
                    bytes += compare.key.len();
                    if let CompareTarget::Value(value) = &compare.target {
                        validate_value(value)?;
                        bytes += value.len();
                    }
                }
                for op in success.iter().chain(failure) {
                    bytes += op.validate()?;
                }
                validate_payload(bytes)
            }
            KvRequest::Compact { revision } => {
                if *revision == 0 {
                    return Err(WireError::invalid("compaction needs a revision of at least 1"));
                }
                Ok(())
            }
        }
    }

    /// Bytes of keys and values the request carries (what it weighs in a log entry).
    pub fn payload_bytes(&self) -> usize {
        match self {
            KvRequest::Get { key, .. } | KvRequest::Delete { key } => key.len(),
            KvRequest::PutBlob { key, .. } => key.len() + crate::blob::BLOB_HASH_BYTES,
            KvRequest::Put { key, value, .. } => key.len() + value.len(),
            KvRequest::Cas { key, expected, value } => {
                key.len() + value.len() + expected.as_ref().map_or(0, |e| e.len())
            }
            KvRequest::Cad { key, expected } => key.len() + expected.len(),
            KvRequest::Scan { prefix, after, .. } => prefix.len() + after.as_ref().map_or(0, |a| a.len()),
            KvRequest::BatchGet { keys, .. } => keys.iter().map(|key| key.len()).sum(),
            KvRequest::BatchWrite { ops } => ops
                .iter()
                .map(|op| match op {
                    WriteOp::Put { key, value } => key.len() + value.len(),
                    WriteOp::Delete { key } => key.len(),
                })
                .sum(),
            KvRequest::Txn { compares, success, failure } => {
                compares.iter().map(|compare| compare.key.len() + compare_operand_bytes(&compare.target)).sum::<usize>()
                    + success.iter().chain(failure).map(TxnOp::payload_bytes).sum::<usize>()
            }
            KvRequest::Compact { .. } => 8,
        }
    }

    /// Whether the request changes state and therefore goes through the Raft log.
    pub fn is_write(&self) -> bool {
        match self {
            KvRequest::Get { .. } | KvRequest::Scan { .. } | KvRequest::BatchGet { .. } => false,
            KvRequest::Txn { success, failure, .. } => success.iter().chain(failure).any(TxnOp::is_write),
            KvRequest::Put { .. }
            | KvRequest::PutBlob { .. }
            | KvRequest::Delete { .. }
            | KvRequest::Cas { .. }
            | KvRequest::Cad { .. }
            | KvRequest::BatchWrite { .. }
            | KvRequest::Compact { .. } => true,
        }
    }

    /// Every key the request touches, for capability checks. Scans report their prefix.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            KvRequest::Get { key, .. }
            | KvRequest::Put { key, .. }
            | KvRequest::PutBlob { key, .. }
            | KvRequest::Delete { key }
            | KvRequest::Cas { key, .. }
            | KvRequest::Cad { key, .. } => vec![key],
            KvRequest::Scan { prefix, .. } => vec![prefix],
            KvRequest::BatchGet { keys, .. } => keys.iter().map(|key| key.as_slice()).collect(),
            KvRequest::BatchWrite { ops } => ops
                .iter()
                .map(|op| match op {
                    WriteOp::Put { key, .. } | WriteOp::Delete { key } => key.as_slice(),
                })
                .collect(),
            KvRequest::Txn { compares, success, failure } => compares
                .iter()
                .map(|compare| compare.key.as_slice())
                .chain(success.iter().chain(failure).map(TxnOp::key))
                .collect(),
            // The empty prefix: every key.
            KvRequest::Compact { .. } => vec![b"".as_slice()],
        }
    }
}

fn compare_operand_bytes(target: &CompareTarget) -> usize {
    match target {
        CompareTarget::Value(value) => value.len(),
        _ => 8,
    }
}

/// Shorthand for building [`Bytes`].
pub fn bytes(data: impl Into<Vec<u8>>) -> Bytes {
    Bytes::from(data.into())
}
