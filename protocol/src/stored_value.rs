//! The on-disk form of one KV row: three revisions and the value, in a fixed layout that needs no decoder.
//!
//! Layout: `create_revision` (u64 BE) | `mod_revision` (u64 BE) | `version` (u64 BE) | value bytes.

use crate::kv::{Bytes, KvEntry};

const HEADER_BYTES: usize = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub value: Vec<u8>,
}

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.value);
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
        Some(StoredValue {
            create_revision: word(0),
            mod_revision: word(1),
            version: word(2),
            value: bytes[HEADER_BYTES..].to_vec(),
        })
    }

    pub fn into_entry(self, key: &[u8]) -> KvEntry {
        KvEntry {
            key: Bytes::from(key.to_vec()),
            value: Bytes::from(self.value),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(create in any::<u64>(), modified in any::<u64>(), version in any::<u64>(), value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let stored = StoredValue { create_revision: create, mod_revision: modified, version, value };
            prop_assert_eq!(StoredValue::decode(&stored.encode()), Some(stored));
        }
    }

    #[test]
    fn short_rows_are_corrupt() {
        assert_eq!(StoredValue::decode(&[0u8; 23]), None);
    }
}
