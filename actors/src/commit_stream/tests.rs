//! Feeds over a real redb state machine, entries applied directly (no Raft): replay then live, every revision once
//! and whole; a feed that lagged the live stream catches up from the history; a storage restart under a feed; a
//! compacted start is refused with the oldest and current revisions; a snapshot carries the history.

use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use pando_protocol::command::{Command, Proposal};
use pando_protocol::kv::{KvRequest, WriteOp, bytes};
use pando_protocol::state_machine::put_request;
use pando_protocol::watch::EventKind;

use super::*;
use crate::raft::type_config::Entry;
use crate::storage;

/// A node's storage handle over a fresh database, and its state machine.
fn open(dir: &std::path::Path) -> (StorageHandle, crate::storage::StateMachineStore) {
    let handle = StorageHandle::default();
    handle.publish(storage::open(dir).unwrap());
    let state_machine = handle.stores().unwrap().state_machine;
    (handle, state_machine)
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands }),
    }
}

/// Applies one put per entry, from log index `first`.
async fn puts(state_machine: &mut crate::storage::StateMachineStore, first: u64, count: u64) {
    let entries = (first..first + count)
        .map(|index| entry(index, vec![Command::Kv(put_request(format!("k{index}").as_bytes(), b"v"))]))
        .collect::<Vec<_>>();
    state_machine.apply(entries).await.unwrap();
}

async fn next(feed: &mut KvFeed) -> Arc<RevisionEvents> {
    tokio::time::timeout(Duration::from_secs(5), feed.next()).await.expect("a revision within 5 s").unwrap()
}

#[tokio::test]
async fn a_feed_replays_the_history_then_follows_live_without_a_gap_or_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut state_machine) = open(dir.path());
    puts(&mut state_machine, 1, 5).await;
    let mut feed = storage.feed(3);
    for expected in 3..=5 {
        assert_eq!(next(&mut feed).await.revision, expected);
    }
    // One entry with a batch (one revision, three events) and a put (the next revision).
    let batch = KvRequest::BatchWrite {
        ops: vec![
            WriteOp::Put { key: bytes("a"), value: bytes("1") },
            WriteOp::Put { key: bytes("b"), value: bytes("1") },
            WriteOp::Delete { key: bytes("k1") },
        ],
    };
    let commands = vec![Command::Kv(batch), Command::Kv(put_request(b"c", b"1"))];
    state_machine.apply(vec![entry(6, commands)]).await.unwrap();
    let six = next(&mut feed).await;
    assert_eq!(six.revision, 6);
    let kinds: Vec<_> = six.events.iter().map(|event| (event.kind, event.key().to_vec())).collect();
    assert_eq!(
        kinds,
        vec![(EventKind::Put, b"a".to_vec()), (EventKind::Put, b"b".to_vec()), (EventKind::Delete, b"k1".to_vec())]
    );
    assert_eq!(next(&mut feed).await.revision, 7);
    assert_eq!(feed.next_revision(), 8);
    assert!(tokio::time::timeout(Duration::from_millis(200), feed.next()).await.is_err(), "nothing more to deliver");
}

#[tokio::test]
async fn a_feed_that_lagged_the_live_stream_catches_up_from_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut state_machine) = open(dir.path());
    let mut feed = storage.feed(1);
    puts(&mut state_machine, 1, 1).await;
    assert_eq!(next(&mut feed).await.revision, 1);
    // Far more entries than the live stream buffers, while the feed reads nothing.
    let count = COMMIT_STREAM_CAPACITY as u64 + 200;
    for chunk in 0..count / 100 {
        puts(&mut state_machine, 2 + chunk * 100, 100).await;
    }
    let last = 1 + (count / 100) * 100;
    for expected in 2..=last {
        assert_eq!(next(&mut feed).await.revision, expected);
    }
}

#[tokio::test]
async fn a_feed_lives_through_a_storage_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut state_machine) = open(dir.path());
    puts(&mut state_machine, 1, 2).await;
    let mut feed = storage.feed(1);
    assert_eq!(next(&mut feed).await.revision, 1);
    storage.retract();
    drop(state_machine);
    // The database reopens (as a restarted StorageActor would) and applies more.
    let reopened = loop {
        match storage::open(dir.path()) {
            Ok(stores) => break stores,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    storage.publish(reopened);
    let mut state_machine = storage.stores().unwrap().state_machine;
    puts(&mut state_machine, 3, 2).await;
    for expected in 2..=4 {
        assert_eq!(next(&mut feed).await.revision, expected);
    }
}

#[tokio::test]
async fn a_feed_from_a_compacted_revision_is_refused_with_the_oldest_and_current() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut state_machine) = open(dir.path());
    puts(&mut state_machine, 1, 6).await;
    state_machine.apply(vec![entry(7, vec![Command::Kv(KvRequest::Compact { revision: 4 })])]).await.unwrap();
    let mut feed = storage.feed(2);
    let refused = tokio::time::timeout(Duration::from_secs(5), feed.next()).await.unwrap().unwrap_err();
    assert_eq!(refused, FeedError::Compacted { requested: 2, compacted: 4, current: 6 });
    let wire = WireError::from(refused);
    assert_eq!(wire.code, ErrorCode::Compacted);
    assert_eq!(wire.detail, Some(ErrorDetail::Compacted { compacted: 4, current: 6 }));
    let mut from_oldest = storage.feed(4);
    assert_eq!(next(&mut from_oldest).await.revision, 4);
}

#[tokio::test]
async fn a_snapshot_carries_the_history_and_its_compaction_point() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut state_machine) = open(dir.path());
    puts(&mut state_machine, 1, 5).await;
    state_machine.apply(vec![entry(6, vec![Command::Kv(KvRequest::Compact { revision: 3 })])]).await.unwrap();
    let snapshot = state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (target, mut target_machine) = open(target_dir.path());
    target_machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let page = target.reader().unwrap().history(1, 100).unwrap();
    assert_eq!((page.compacted, page.current, page.complete), (3, 5, true));
    assert_eq!(page.events.iter().map(|event| event.revision()).collect::<Vec<_>>(), vec![3, 4, 5]);
}

#[tokio::test]
async fn the_commit_stream_carries_membership_changes_with_their_log_index() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut state_machine) = open(dir.path());
    let mut live = storage.subscribe();
    let nodes = std::collections::BTreeMap::from([(1, crate::sim::member(1)), (2, crate::sim::member(2))]);
    let membership = openraft::Membership::new(vec![std::collections::BTreeSet::from([1])], nodes);
    let entry = Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Membership(membership),
    };
    state_machine.apply(vec![entry]).await.unwrap();
    let committed = live.recv().await.unwrap();
    assert_eq!(committed.index, 1);
    let change = committed.membership.clone().expect("a membership change");
    assert_eq!(change.voters.into_iter().collect::<Vec<_>>(), vec![1]);
    assert_eq!(change.learners.into_iter().collect::<Vec<_>>(), vec![2]);
}
