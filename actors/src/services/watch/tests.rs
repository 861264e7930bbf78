//! Watches over a real redb state machine (entries applied directly, no Raft), on paused time: only the watched keys
//! and kinds, previous entries from the history, a large revision cut into frames, progress that never runs ahead of
//! the events, and `NO_LEADER` on a node without a leader.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use pando_protocol::command::{Command, Proposal};
use pando_protocol::kv::{Bytes, KvRequest, WriteOp, bytes};
use pando_protocol::state_machine::put_request;
use pando_protocol::watch::{EventKind, WatchRange};

use super::*;
use crate::raft::type_config::Entry;
use crate::storage::{self, StateMachineStore};

/// A node's storage over a fresh database, its state machine, and a watch service whose node has no leader.
fn open(dir: &std::path::Path) -> (WatchService, StateMachineStore) {
    let storage = StorageHandle::default();
    storage.publish(storage::open(dir).unwrap());
    let state_machine = storage.stores().unwrap().state_machine;
    (WatchService::new(storage, RaftHandle::new(1, [])), state_machine)
}

async fn apply(state_machine: &mut StateMachineStore, index: u64, requests: Vec<KvRequest>) {
    apply_commands(state_machine, index, requests.into_iter().map(Command::Kv).collect()).await;
}

async fn apply_commands(state_machine: &mut StateMachineStore, index: u64, commands: Vec<Command>) {
    let entry = Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { stamp_ms: index, commands }),
    };
    let outcomes = state_machine.apply(vec![entry]).await.unwrap();
    assert!(outcomes[0].results.iter().all(Result::is_ok), "{outcomes:?}");
}

fn watch(range: WatchRange, start_revision: u64) -> WatchRequest {
    WatchRequest { range, start_revision, prev_kv: false, only: None, progress_ms: 0 }
}

/// The events of an `Events` frame as (revision, kind, key, value, previous value).
fn events(frame: WatchResponse) -> Vec<(u64, EventKind, String, String, Option<String>)> {
    let text = |bytes: &Bytes| String::from_utf8(bytes.to_vec()).unwrap();
    match frame {
        WatchResponse::Events { revision, events, more: false } => events
            .into_iter()
            .map(|watched| {
                let event = watched.event;
                (
                    revision,
                    event.kind,
                    text(event.key()),
                    text(&event.entry.value),
                    watched.prev.map(|p| text(&p.value)),
                )
            })
            .collect(),
        other => panic!("expected one whole revision, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_sees_only_its_keys_and_kinds_with_their_previous_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    apply(&mut state_machine, 1, vec![put_request(b"a/1", b"one")]).await;
    apply(&mut state_machine, 2, vec![put_request(b"b/1", b"other")]).await;
    apply(&mut state_machine, 3, vec![put_request(b"a/1", b"two")]).await;
    apply(&mut state_machine, 4, vec![KvRequest::Delete { key: bytes("a/1") }]).await;

    let mut watcher =
        service.open(WatchRequest { prev_kv: true, ..watch(WatchRange::Prefix(bytes("a/")), 1) }).unwrap();
    assert_eq!(watcher.next().await, Some(WatchResponse::Created { start_revision: 1, current: 4 }));
    assert_eq!(events(watcher.next().await.unwrap()), vec![(1, EventKind::Put, "a/1".into(), "one".into(), None)]);
    assert_eq!(
        events(watcher.next().await.unwrap()),
        vec![(3, EventKind::Put, "a/1".into(), "two".into(), Some("one".into()))]
    );
    assert_eq!(
        events(watcher.next().await.unwrap()),
        vec![(4, EventKind::Delete, "a/1".into(), "".into(), Some("two".into()))]
    );
    assert_eq!(watcher.next_revision(), 5);

    let mut deletes = service
        .open(WatchRequest { only: Some(EventKind::Delete), ..watch(WatchRange::Key(bytes("a/1")), 1) })
        .unwrap();
    deletes.next().await;
    assert_eq!(events(deletes.next().await.unwrap()), vec![(4, EventKind::Delete, "a/1".into(), "".into(), None)]);
}

#[tokio::test(start_paused = true)]
async fn a_revision_larger_than_a_frame_is_cut_and_progress_follows_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    let mut watcher =
        service.open(WatchRequest { progress_ms: 500, ..watch(WatchRange::Prefix(bytes("")), 0) }).unwrap();
    assert_eq!(watcher.next().await, Some(WatchResponse::Created { start_revision: 1, current: 0 }));
    // A quiet store: progress names the revision the watch waits for.
    assert_eq!(watcher.next().await, Some(WatchResponse::Progress { next_revision: 1 }));
    let value = vec![b'v'; 512 * 1024];
    let ops = (0..5).map(|i| WriteOp::Put { key: bytes(format!("big/{i}")), value: bytes(value.clone()) }).collect();
    apply(&mut state_machine, 1, vec![KvRequest::BatchWrite { ops }]).await;
    let mut keys = Vec::new();
    loop {
        match watcher.next().await.unwrap() {
            WatchResponse::Events { revision: 1, events, more } => {
                keys.extend(events.iter().map(|watched| watched.event.key().to_vec()));
                if !more {
                    break;
                }
                assert!(events.len() < 5, "a frame holds at most about a megabyte of values");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(keys.len(), 5, "every event of the revision, once");
    assert_eq!(watcher.next().await, Some(WatchResponse::Progress { next_revision: 2 }));
}

#[tokio::test(start_paused = true)]
async fn a_watch_on_a_node_without_a_leader_is_cancelled_with_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    apply(&mut state_machine, 1, vec![put_request(b"k", b"v")]).await;
    let mut watcher = service.open(watch(WatchRange::Key(bytes("k")), 1)).unwrap();
    watcher.next().await;
    watcher.next().await;
    let started = tokio::time::Instant::now();
    match watcher.next().await {
        Some(WatchResponse::Canceled { error, next_revision: 2 }) => assert_eq!(error.code, ErrorCode::NoLeader),
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(WATCH_NO_LEADER_MS));
    assert_eq!(watcher.next().await, None, "a cancelled watch says nothing more");
}

#[tokio::test(start_paused = true)]
async fn a_watch_from_a_compacted_revision_is_cancelled_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    for index in 1..=3 {
        apply(&mut state_machine, index, vec![put_request(b"k", b"v")]).await;
    }
    apply(&mut state_machine, 4, vec![KvRequest::Compact { revision: 3 }]).await;
    let mut watcher = service.open(watch(WatchRange::Key(bytes("k")), 1)).unwrap();
    watcher.next().await;
    match watcher.next().await {
        Some(WatchResponse::Canceled { error, next_revision: 1 }) => {
            assert_eq!(error.code, ErrorCode::Compacted);
            assert!(error.message.contains("starts at revision 3"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_election_observer_sees_the_state_then_each_change_then_no_leader() {
    use pando_protocol::coord::CoordRequest;
    use pando_protocol::observe::{ObserveRequest, ObserveResponse};
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    let mut observer = service.observe(ObserveRequest::Election { name: bytes("e") }).unwrap();
    let mut next = async || match observer.next().await {
        Some(ObserveResponse::Election { election }) => {
            (election.last_token, election.leader.map(|leader| String::from_utf8(leader.value.to_vec()).unwrap()))
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(next().await, (0, None), "the state as it is when the observation opens");
    let coord = |request| vec![Command::Coord(request)];
    let campaign =
        |value: &str| CoordRequest::ElectionCampaign { name: bytes("e"), lease: 1, value: bytes(value), wait_ms: 0 };
    apply_commands(&mut state_machine, 1, coord(CoordRequest::lease_grant(60_000))).await;
    // The observer reads the state when woken (level-triggered): each change is read before the next is applied.
    apply_commands(&mut state_machine, 2, coord(campaign("a"))).await;
    assert_eq!(next().await, (1, Some("a".into())), "elected");
    // Another election's change wakes nobody here.
    let other = CoordRequest::ElectionCampaign { name: bytes("f"), lease: 1, value: bytes("x"), wait_ms: 0 };
    apply_commands(&mut state_machine, 3, coord(other)).await;
    apply_commands(&mut state_machine, 4, coord(campaign("b"))).await;
    assert_eq!(next().await, (1, Some("b".into())), "a proclaimed value is a change");
    apply_commands(&mut state_machine, 5, coord(CoordRequest::ElectionResign { name: bytes("e"), lease: 1 })).await;
    assert_eq!(next().await, (1, None), "resigned");
    let started = tokio::time::Instant::now();
    match observer.next().await {
        Some(ObserveResponse::Canceled { error }) => assert_eq!(error.code, ErrorCode::NoLeader),
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() <= Duration::from_millis(WATCH_NO_LEADER_MS + 1_000));
    assert_eq!(observer.next().await, None, "a cancelled observation says nothing more");
}

#[tokio::test(start_paused = true)]
async fn watches_that_take_a_revision_whole_share_one_frame_and_the_others_get_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    let mut first = service.open(watch(WatchRange::Prefix(bytes("a/")), 0)).unwrap();
    let mut second = service.open(watch(WatchRange::Prefix(bytes("")), 0)).unwrap();
    let mut with_prev =
        service.open(WatchRequest { prev_kv: true, ..watch(WatchRange::Prefix(bytes("")), 0) }).unwrap();
    let mut narrower = service.open(watch(WatchRange::Key(bytes("a/1")), 0)).unwrap();
    for watcher in [&mut first, &mut second, &mut with_prev, &mut narrower] {
        assert!(matches!(watcher.next().await, Some(WatchResponse::Created { .. })));
        // Caught up with the (empty) history: from here on the watch follows the live stream.
        assert!(watcher.try_next_frame().is_none());
    }
    let ops = vec![
        WriteOp::Put { key: bytes("a/1"), value: bytes("1") },
        WriteOp::Put { key: bytes("a/2"), value: bytes("2") },
    ];
    apply(&mut state_machine, 1, vec![KvRequest::BatchWrite { ops }]).await;
    let (Some(WatchFrame::Whole(a)), Some(WatchFrame::Whole(b))) =
        (first.next_frame().await, second.next_frame().await)
    else {
        panic!("both watches see every event of the revision and ask for nothing more");
    };
    assert!(Arc::ptr_eq(&a, &b), "one live revision, shared: encoded once for both");
    assert_eq!(events(whole_response(&a)).len(), 2);
    assert!(matches!(with_prev.next_frame().await, Some(WatchFrame::Own(_))), "previous entries are its own");
    match narrower.next_frame().await {
        Some(WatchFrame::Own(frame)) => {
            assert_eq!(events(frame), vec![(1, EventKind::Put, "a/1".into(), "1".into(), None)], "one event of two")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn what_is_ready_is_taken_without_waiting_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut state_machine) = open(dir.path());
    for index in 1..=3 {
        apply(&mut state_machine, index, vec![put_request(format!("k{index}").as_bytes(), b"v")]).await;
    }
    let mut watcher = service.open(watch(WatchRange::Prefix(bytes("k")), 2)).unwrap();
    let mut ready = Vec::new();
    while let Some(frame) = watcher.try_next_frame() {
        ready.push(frame.into_response());
    }
    assert!(matches!(ready[0], WatchResponse::Created { start_revision: 2, current: 3 }));
    let revisions: Vec<_> = ready[1..]
        .iter()
        .map(|frame| match frame {
            WatchResponse::Events { revision, .. } => *revision,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(revisions, vec![2, 3], "the history's revisions, in order");
    assert_eq!(watcher.next_revision(), 4);
    apply(&mut state_machine, 4, vec![put_request(b"k4", b"v")]).await;
    assert!(matches!(watcher.try_next_frame(), Some(WatchFrame::Whole(revision)) if revision.revision == 4), "live");
    assert!(watcher.try_next_frame().is_none(), "nothing more is at hand");
}
