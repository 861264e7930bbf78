//! The RaftActor on a real single-node openraft over redb: group commit packs concurrent proposals into few batches,
//! every proposal gets its own result, a lone proposal skips the actor (the direct path), and a restarted actor takes
//! over the storage from its predecessor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::kv::{KvResponse, bytes};
use pando_protocol::state_machine::put_request;
use ractor::{Actor, ActorRef};

use super::raft_actor::RaftActorStatus;
use super::transport::IrohNetwork;
use super::{RaftActor, RaftArgs, RaftHandle, RaftMsg};
use crate::clock::Clock;
use crate::storage;
use crate::storage_actor::StorageHandle;

const PROPOSALS_COUNT: usize = 400;

/// The handles a node's tree would hand the RaftActor.
#[derive(Clone)]
struct Node {
    raft: RaftHandle,
    storage: StorageHandle,
}

impl Node {
    fn new() -> Node {
        Node { raft: RaftHandle::new(1, []), storage: StorageHandle::default() }
    }
}

/// The revisions the spawned writes `calls` were answered with, sorted.
async fn revisions_of(
    calls: Vec<tokio::task::JoinHandle<Result<CommandOutput, pando_protocol::error::WireError>>>,
) -> Vec<u64> {
    let mut revisions = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(CommandOutput::Kv(KvResponse::Written { revision })) => revisions.push(revision),
            other => panic!("unexpected {other:?}"),
        }
    }
    revisions.sort_unstable();
    revisions
}

async fn start(dir: &std::path::Path, node: &Node) -> ActorRef<RaftMsg> {
    let args = RaftArgs {
        node_id: 1,
        config: Arc::new(super::default_config().validate().unwrap()),
        bootstrap: Some(BTreeMap::from([(1, MemberNode { public_key: bytes(vec![1; 32]), addrs: vec![] })])),
        handle: node.raft.clone(),
        storage: node.storage.clone(),
        clock: Clock::Wall,
        network: IrohNetwork::new(
            iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
                .clear_ip_transports()
                .bind_addr("127.0.0.1:0")
                .unwrap()
                .bind()
                .await
                .unwrap(),
            node.raft.peer_health(),
        )
        .into(),
    };
    if node.storage.stores().is_err() {
        node.storage.publish(storage::open(dir).unwrap());
    }
    let (actor, _) = Actor::spawn(None, RaftActor, args).await.unwrap();
    let raft = node.raft.core().unwrap().raft;
    raft.wait(Some(Duration::from_secs(10))).current_leader(1, "single node elects itself").await.unwrap();
    actor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_batches_and_each_gets_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let actor = start(dir.path(), &node).await;
    let mut calls = Vec::new();
    for index in 0..PROPOSALS_COUNT {
        let actor = actor.clone();
        calls.push(tokio::spawn(async move {
            let command = Command::Kv(put_request(format!("k{index}").as_bytes(), b"v"));
            ractor::call_t!(actor, |reply| RaftMsg::Propose { command, reply }, 10_000).unwrap()
        }));
    }
    let revisions = revisions_of(calls).await;
    assert_eq!(revisions, (1..=PROPOSALS_COUNT as u64).collect::<Vec<_>>(), "each write got its own revision");
    let status: RaftActorStatus = ractor::call_t!(actor, RaftMsg::Status, 1_000).unwrap();
    assert_eq!(status.commands_total, PROPOSALS_COUNT as u64);
    assert!(
        status.batches_total < PROPOSALS_COUNT as u64 / 4,
        "group commit should pack proposals: {} batches for {PROPOSALS_COUNT} writes",
        status.batches_total
    );
    actor.stop_and_wait(None, Some(Duration::from_secs(10))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_proposal_is_written_by_its_caller_and_a_crowd_still_shares_batches() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let actor = start(dir.path(), &node).await;
    let timeout = Duration::from_secs(10);
    for index in 0..20u64 {
        let command = Command::Kv(put_request(format!("alone{index}").as_bytes(), b"v"));
        let written = node.raft.propose(command, timeout).await.unwrap();
        assert_eq!(written, CommandOutput::Kv(KvResponse::Written { revision: index + 1 }));
    }
    let alone: RaftActorStatus = ractor::call_t!(actor, RaftMsg::Status, 1_000).unwrap();
    assert_eq!(alone.direct_total, 20, "one at a time, every proposal skipped the actor: {alone:?}");
    assert_eq!((alone.batches_total, alone.commands_total, alone.in_flight_count), (20, 20, 0));

    let mut calls = Vec::new();
    for index in 0..PROPOSALS_COUNT {
        let raft = node.raft.clone();
        calls.push(tokio::spawn(async move {
            let command = Command::Kv(put_request(format!("crowd{index}").as_bytes(), b"v"));
            raft.propose(command, timeout).await
        }));
    }
    let revisions = revisions_of(calls).await;
    assert_eq!(revisions, (21..=20 + PROPOSALS_COUNT as u64).collect::<Vec<_>>(), "each write got its own revision");
    let crowd: RaftActorStatus = ractor::call_t!(actor, RaftMsg::Status, 1_000).unwrap();
    assert_eq!(crowd.commands_total, 20 + PROPOSALS_COUNT as u64);
    assert_eq!((crowd.in_flight_count, crowd.pending_count), (0, 0), "every slot is free again: {crowd:?}");
    assert!(
        crowd.batches_total - alone.batches_total < PROPOSALS_COUNT as u64 / 4,
        "proposals that found others waiting joined their batches: {crowd:?}"
    );
    actor.stop_and_wait(None, Some(Duration::from_secs(10))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_actor_takes_over_after_a_panic_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let first = start(dir.path(), &node).await;
    let command = Command::Kv(put_request(b"before", b"1"));
    ractor::call_t!(first, |reply| RaftMsg::Propose { command, reply }, 10_000).unwrap().unwrap();
    // Kill without post_stop, as a panic would: the next instance must shut the old Raft down itself.
    first.kill_and_wait(Some(Duration::from_secs(5))).await.unwrap();
    let second = start(dir.path(), &node).await;
    let command = Command::Kv(put_request(b"after", b"2"));
    let result = ractor::call_t!(second, |reply| RaftMsg::Propose { command, reply }, 10_000).unwrap();
    assert_eq!(result, Ok(CommandOutput::Kv(KvResponse::Written { revision: 2 })));
    second.stop_and_wait(None, Some(Duration::from_secs(10))).await.unwrap();
}
