//! An in-memory twin of the node's KV tables, for tests, property tests and the simulator.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use crate::coord::{CoordEvent, CoordRead, CoordWrite, RowVisitor};
use crate::state_machine::{KvRead, KvWrite, StorageFault, scan_start};
use crate::stored_value::StoredValue;
use crate::watch::KvEvent;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTables {
    pub rows: BTreeMap<Vec<u8>, StoredValue>,
    /// Coordination rows (leases, locks, counters, sequences).
    pub coord: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Events emitted since the last `take_events`.
    pub events: Vec<CoordEvent>,
    /// The change history: (revision, position within it) to the event.
    pub history: BTreeMap<(u64, u32), KvEvent>,
}

impl CoordRead for MemoryTables {
    fn coord_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        Ok(self.coord.get(key).cloned())
    }

    fn coord_scan_from(&self, prefix: &[u8], start: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StorageFault> {
        for (key, value) in self.coord.range::<[u8], _>((Bound::Included(start.max(prefix)), Bound::Unbounded)) {
            if !key.starts_with(prefix) || visit(key, value).is_break() {
                break;
            }
        }
        Ok(())
    }
}

impl CoordWrite for MemoryTables {
    fn coord_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageFault> {
        self.coord.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn coord_delete(&mut self, key: &[u8]) -> Result<bool, StorageFault> {
        Ok(self.coord.remove(key).is_some())
    }

    fn emit(&mut self, event: CoordEvent) {
        self.events.push(event);
    }

    fn take_events(&mut self) -> Vec<CoordEvent> {
        std::mem::take(&mut self.events)
    }
}

impl KvRead for MemoryTables {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageFault> {
        Ok(self.rows.get(key).cloned())
    }

    fn history(&self, from: u64, visit: &mut dyn FnMut(KvEvent) -> ControlFlow<()>) -> Result<(), StorageFault> {
        for event in self.history.range((from, 0)..).map(|(_, event)| event) {
            if visit(event.clone()).is_break() {
                break;
            }
        }
        Ok(())
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

    fn record(&mut self, event: &KvEvent) -> Result<(), StorageFault> {
        let revision = event.revision();
        let index = self.history.range((revision, 0)..=(revision, u32::MAX)).next_back().map_or(0, |((_, i), _)| i + 1);
        self.history.insert((revision, index), event.clone());
        Ok(())
    }

    fn forget_history(&mut self, below: u64) -> Result<u64, StorageFault> {
        let kept = self.history.split_off(&(below, 0));
        let dropped = self.history.len() as u64;
        self.history = kept;
        Ok(dropped)
    }
}
