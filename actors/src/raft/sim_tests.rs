//! Real RaftActors, state machines and redb stores of three nodes in one process, on tokio's paused clock, over the
//! simulated network and disks: the first step of the cluster simulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::ErrorCode;
use pando_protocol::kv::{Consistency, KvRequest, KvResponse, bytes};
use pando_protocol::state_machine::put_request;
use ractor::{Actor, ActorRef};

use super::sim_network::{NetFaults, SimNet};
use super::transport::RaftTransport;
use super::{RaftActor, RaftArgs, RaftHandle, RaftMsg};
use crate::clock::Clock;
use crate::storage::{self, SimDisk};
use crate::storage_actor::StorageHandle;

/// The simulated wall clock starts here (2026-01-01), so stamps look like real ones.
const EPOCH_MS: u64 = 1_767_225_600_000;

struct SimNode {
    raft: RaftHandle,
    storage: StorageHandle,
    actor: ActorRef<RaftMsg>,
}

async fn start_cluster(net: &SimNet, dir: &std::path::Path, count: u64) -> BTreeMap<u64, SimNode> {
    let members: BTreeMap<u64, MemberNode> =
        (1..=count).map(|id| (id, MemberNode { public_key: bytes(vec![id as u8; 32]), addrs: vec![] })).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=count {
        let raft = RaftHandle::new(id, []);
        let storage = StorageHandle::default();
        storage.publish(storage::open_simulated(&dir.join(id.to_string()), SimDisk::new()).unwrap());
        net.attach(id, raft.clone());
        let args = RaftArgs {
            node_id: id,
            config: Arc::new(super::default_config().validate().unwrap()),
            bootstrap: (id == 1).then(|| members.clone()),
            handle: raft.clone(),
            storage: storage.clone(),
            clock: Clock::simulated(EPOCH_MS),
            network: RaftTransport::Simulated(net.transport_for(id, raft.peer_health())),
        };
        let (actor, _) = Actor::spawn(None, RaftActor, args).await.unwrap();
        nodes.insert(id, SimNode { raft, storage, actor });
    }
    nodes
}

/// The node every member agrees leads, once one does (within `within` of simulated time).
async fn agreed_leader(net: &SimNet, nodes: &BTreeMap<u64, SimNode>, among: &[u64], within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leaders: Vec<Option<u64>> = among.iter().map(|id| nodes[id].raft.leader()).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|seen| *seen == Some(*leader))
            && among.contains(leader)
        {
            return *leader;
        }
        if tokio::time::Instant::now() >= deadline {
            let metrics: Vec<String> = among
                .iter()
                .map(|id| match nodes[id].raft.metrics() {
                    Some(metrics) => {
                        format!(
                            "{id}: {:?} term {} last log {:?}",
                            metrics.state, metrics.current_term, metrics.last_log_index
                        )
                    }
                    None => format!("{id}: no raft"),
                })
                .collect();
            panic!(
                "no agreed leader among {among:?}: {leaders:?}; {metrics:?}; net {:?} {:?}",
                net.counts(),
                net.trace().iter().take(12).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put(node: &SimNode, key: &str) -> Result<CommandOutput, pando_protocol::error::WireError> {
    let command = Command::Kv(put_request(key.as_bytes(), b"v"));
    ractor::call_t!(node.actor, |reply| RaftMsg::Propose { command, reply }, 20_000).unwrap()
}

fn stored(node: &SimNode, key: &str) -> bool {
    let reader = node.storage.reader().unwrap();
    let request = KvRequest::Get { key: bytes(key), consistency: Consistency::Stale };
    matches!(reader.read(&request), Ok(Ok(KvResponse::Entry { entry: Some(_) })))
}

#[tokio::test(start_paused = true)]
async fn three_simulated_nodes_elect_replicate_and_fail_over() {
    super::runtime::seed_thread_rng(42);
    let dir = tempfile::tempdir().unwrap();
    let net = SimNet::new(42);
    net.set_faults(NetFaults { drop_per_mille: 0, duplicate_per_mille: 20, delay_ms_min: 1, delay_ms_max: 20 });
    let nodes = start_cluster(&net, dir.path(), 3).await;
    let all = [1, 2, 3];
    let leader = agreed_leader(&net, &nodes, &all, Duration::from_secs(30)).await;
    for index in 0..20 {
        let written = put(&nodes[&leader], &format!("k{index}")).await;
        assert!(matches!(written, Ok(CommandOutput::Kv(KvResponse::Written { .. }))), "{written:?}");
    }
    // The leader is cut off: the other two elect one of themselves and keep serving.
    net.isolate(&[leader]);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let successor = agreed_leader(&net, &nodes, &rest, Duration::from_secs(30)).await;
    assert_ne!(successor, leader);
    let written = put(&nodes[&successor], "after").await;
    assert!(matches!(written, Ok(CommandOutput::Kv(KvResponse::Written { .. }))), "{written:?}");
    // Healed, the old leader follows and catches up.
    net.heal();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !stored(&nodes[&leader], "after") {
        assert!(tokio::time::Instant::now() < deadline, "the old leader never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((0..20).all(|index| all.iter().all(|id| stored(&nodes[id], &format!("k{index}")))));
    let (delivered, dropped) = net.counts();
    assert!(delivered > 100 && dropped > 0, "delivered {delivered}, dropped {dropped}");
    for node in nodes.values() {
        node.actor.stop_and_wait(None, Some(Duration::from_secs(10))).await.unwrap();
    }
}

/// Elects a leader and writes through it, answering the network's trace.
async fn short_run(seed: u64) -> Vec<String> {
    super::runtime::seed_thread_rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let net = SimNet::new(seed);
    net.set_faults(NetFaults { drop_per_mille: 50, duplicate_per_mille: 20, delay_ms_min: 1, delay_ms_max: 20 });
    let nodes = start_cluster(&net, dir.path(), 3).await;
    let mut leader = agreed_leader(&net, &nodes, &[1, 2, 3], Duration::from_secs(30)).await;
    for index in 0..5 {
        // Leadership may move under these faults (a lost heartbeat or two is an election at a 100 ms heartbeat):
        // follow it, a bounded number of times.
        let mut attempts = 0;
        while let Err(error) = put(&nodes[&leader], &format!("k{index}")).await {
            attempts += 1;
            assert!(error.code == ErrorCode::NotLeader && attempts < 10, "{error:?}");
            leader = agreed_leader(&net, &nodes, &[1, 2, 3], Duration::from_secs(30)).await;
        }
    }
    for node in nodes.values() {
        node.actor.stop_and_wait(None, Some(Duration::from_secs(10))).await.unwrap();
    }
    net.trace()
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(short_run(seed))
    };
    let mut traces = Vec::new();
    for seed in [7, 8, 9] {
        let (first, second) = (run(seed), run(seed));
        let same = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
        println!("seed {seed}: traces of {} and {} messages agree on the first {same}", first.len(), second.len());
        assert_eq!(first, second, "seed {seed} diverged after {same} messages");
        traces.push(first);
    }
    assert!(traces[0] != traces[1] && traces[1] != traces[2], "different seeds make different runs");
}
