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

/// A snapshot carries every state-machine table: coordination rows survive a build on one node and an install on
/// another.
#[tokio::test]
async fn snapshots_carry_the_coordination_table() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use pando_protocol::command::{Command, Proposal};
    use pando_protocol::coord::{CoordRequest, CoordResponse, CounterValue};
    use pando_protocol::kv::bytes;

    let source_dir = tempfile::tempdir().unwrap();
    let source = super::open(source_dir.path()).unwrap();
    let commands = vec![
        Command::Coord(CoordRequest::LeaseGrant { ttl_ms: 60_000 }),
        Command::Coord(CoordRequest::LockAcquire { name: bytes("jobs/main"), lease: 1, wait_ms: 0 }),
        Command::Coord(CoordRequest::CounterAdd { name: bytes("hits"), delta: 15, initial: CounterValue::Signed(0) }),
        Command::Kv(pando_protocol::state_machine::put_request(b"k", b"v")),
    ];
    let entry = crate::raft::type_config::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Proposal { stamp_ms: 1_000, commands }),
    };
    let mut state_machine = source.state_machine.clone();
    let outcomes = state_machine.apply(vec![entry]).await.unwrap();
    assert!(outcomes[0].results.iter().all(Result::is_ok), "{outcomes:?}");
    let snapshot = state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = super::open(target_dir.path()).unwrap();
    let mut target_machine = target.state_machine.clone();
    target_machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    match target.reader.read_coord(&CoordRequest::LockGet { name: bytes("jobs/main") }).unwrap().unwrap() {
        CoordResponse::Lock { lock } => {
            assert_eq!(lock.holder.map(|holder| (holder.lease, holder.token)), Some((1, 1)))
        }
        other => panic!("unexpected {other:?}"),
    }
    match target.reader.read_coord(&CoordRequest::CounterGet { name: bytes("hits") }).unwrap().unwrap() {
        CoordResponse::Counter { value } => assert_eq!(value, Some(CounterValue::Signed(15))),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(target.reader.lease_deadline().unwrap(), Some(61_000));
}
