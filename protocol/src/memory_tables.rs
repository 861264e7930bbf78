//! An in-memory twin of the node's KV tables, for tests, property tests and the simulator.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use crate::state_machine::{KvRead, KvWrite, StorageFault, scan_start};
use crate::stored_value::StoredValue;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTables {
    pub rows: BTreeMap<Vec<u8>, StoredValue>,
}

impl KvRead for MemoryTables {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageFault> {
        Ok(self.rows.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], StoredValue) -> ControlFlow<()>,
    ) -> Result<(), StorageFault> {
        let start = scan_start(prefix, after);
        for (key, row) in self.rows.range::<[u8], _>((start, Bound::Unbounded)) {
            if !key.starts_with(prefix) || visit(key, row.clone()).is_break() {
                break;
            }
        }
        Ok(())
    }
}

impl KvWrite for MemoryTables {
    fn put(&mut self, key: &[u8], value: &StoredValue) -> Result<(), StorageFault> {
        self.rows.insert(key.to_vec(), value.clone());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StorageFault> {
        Ok(self.rows.remove(key).is_some())
    }
}
