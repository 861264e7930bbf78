//! openraft's storage conformance suite against the redb stores.

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore};
use crate::raft::type_config::{StorageError, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|error| super::write_error(&error))?;
        let stores = super::open(dir.path())?;
        Ok((dir, stores.log, stores.state_machine))
    }
}

#[test]
fn redb_storage_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(RedbBuilder)
}
