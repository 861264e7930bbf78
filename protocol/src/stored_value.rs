//! The on-disk form of one KV row: three revisions and the value, in a fixed layout that needs no decoder.
//!
//! Layout: `create_revision` (u64 BE) | `mod_revision` (u64 BE) | `version` (u64 BE) | value bytes.
//!
//! A value stored as a blob sets the top bit of the version word ([`BLOB_FLAG`]; a key's version never gets near
//! it) and its value bytes are the blob's hash (32 bytes) and size (u64 BE). Rows written before blobs existed read
//! the same.

use crate::blob::{BLOB_HASH_BYTES, BlobHash, BlobRef};
use crate::kv::{Bytes, KvEntry};

const HEADER_BYTES: usize = 24;
/// Marks a row whose value is a blob reference.
pub const BLOB_FLAG: u64 = 1 << 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The inline value (empty when the value is a blob).
    pub value: Vec<u8>,
    /// The value is this blob.
    pub blob: Option<BlobRef>,
}

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        match &self.blob {
            None => {
                out.extend_from_slice(&self.version.to_be_bytes());
                out.extend_from_slice(&self.value);
            }
            Some(blob) => {
                out.extend_from_slice(&(self.version | BLOB_FLAG).to_be_bytes());
                out.extend_from_slice(blob.hash.as_bytes());
                out.extend_from_slice(&blob.size.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a row; `None` means the row is corrupt (shorter than its header).
    pub fn decode(bytes: &[u8]) -> Option<StoredValue> {
        if bytes.len() < HEADER_BYTES {
            return None;
        }
        let word = |index: usize| {
            let start = index * 8;
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[start..start + 8]);
            u64::from_be_bytes(buf)
        };
        let version = word(2);
        let rest = &bytes[HEADER_BYTES..];
        if version & BLOB_FLAG == 0 {
            return Some(StoredValue {
                create_revision: word(0),
                mod_revision: word(1),
                version,
                value: rest.to_vec(),
                blob: None,
            });
        }
        if rest.len() != BLOB_HASH_BYTES + 8 {
            return None;
        }
        let hash = BlobHash::from_slice(&rest[..BLOB_HASH_BYTES])?;
        let size = u64::from_be_bytes(rest[BLOB_HASH_BYTES..].try_into().ok()?);
        Some(StoredValue {
            create_revision: word(0),
            mod_revision: word(1),
            version: version & !BLOB_FLAG,
            value: Vec::new(),
            blob: Some(BlobRef { hash, size }),
        })
    }

    pub fn into_entry(self, key: &[u8]) -> KvEntry {
        KvEntry {
            key: Bytes::from(key.to_vec()),
            value: Bytes::from(self.value),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            blob: self.blob,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(create in any::<u64>(), modified in any::<u64>(), version in 0..BLOB_FLAG, value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let stored = StoredValue { create_revision: create, mod_revision: modified, version, value, blob: None };
            prop_assert_eq!(StoredValue::decode(&stored.encode()), Some(stored));
        }

        #[test]
        fn blob_rows_round_trip(create in any::<u64>(), version in 0..BLOB_FLAG, hash in any::<[u8; 32]>(), size in any::<u64>()) {
            let stored = StoredValue {
                create_revision: create,
                mod_revision: create,
                version,
                value: Vec::new(),
                blob: Some(BlobRef { hash: BlobHash(hash), size }),
            };
            prop_assert_eq!(StoredValue::decode(&stored.encode()), Some(stored));
        }
    }

    #[test]
    fn short_rows_are_corrupt() {
        assert_eq!(StoredValue::decode(&[0u8; 23]), None);
        let mut blob_row = vec![0u8; 24];
        blob_row[16] = 0x80;
        assert_eq!(StoredValue::decode(&blob_row), None, "a blob row without its reference is corrupt");
    }
}
