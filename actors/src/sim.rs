//! Real nodes for the cluster simulator: each [`SimNode`] is a node's RaftActor, state machine and redb stores, as in
//! production, on a [simulated disk](crate::storage::SimDisk), reached over the [simulated Raft
//! network](crate::raft::sim_network::SimNet), telling time by tokio's (paused) clock. The simulator drives them from
//! one thread and one seed; this module only starts, crashes and restarts them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandResult};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::bytes;
use ractor::{Actor, ActorRef};

use crate::clock::Clock;
use crate::directory::Directory;
use crate::raft::sim_network::SimNet;
use crate::raft::transport::RaftTransport;
use crate::raft::type_config::NodeId;
use crate::raft::{RaftActor, RaftArgs, RaftMsg};
use crate::storage::{self, SimDisk};

/// Deliberate bugs the simulator's own tests switch on, to show its checkers catch them. Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Every node answers a linearizable read from its own state machine, without the log.
    LocalReads = 1,
    /// The leader acknowledges a put as soon as it takes it, before the entry commits.
    AckBeforeCommit = 2,
}

static PLANTED_BUGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Switches a planted bug on or off (for the whole process: a test process of its own).
pub fn plant_bug(bug: PlantedBug, on: bool) {
    if on {
        PLANTED_BUGS.fetch_or(bug as u32, std::sync::atomic::Ordering::SeqCst);
    } else {
        PLANTED_BUGS.fetch_and(!(bug as u32), std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) fn planted_bug(bug: PlantedBug) -> bool {
    PLANTED_BUGS.load(std::sync::atomic::Ordering::Relaxed) & bug as u32 != 0
}

/// How long a crashed node's Raft core gets to stop (it can no longer write: its disk handles are dead).
const CRASH_SHUTDOWN_MS: u64 = 5_000;

/// Raft timing for simulated nodes: the real configuration, with snapshots taken often enough to be exercised.
pub fn sim_config() -> openraft::Config {
    openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(200),
        max_in_snapshot_log_to_keep: 50,
        ..crate::raft::default_config()
    }
}

/// The members of a simulated cluster of `count` nodes (ids 1..=count, made-up keys, no addresses).
pub fn members(count: u64) -> BTreeMap<NodeId, MemberNode> {
    (1..=count).map(|id| (id, MemberNode { public_key: bytes(vec![id as u8; 32]), addrs: vec![] })).collect()
}

/// Proposes `command` through a node's RaftActor: `UNAVAILABLE` if the actor is gone and `TIMEOUT` after `timeout`
/// (both mean the command may or may not have been applied).
pub async fn propose(actor: &ActorRef<RaftMsg>, command: Command, timeout: Duration) -> CommandResult {
    match actor.call(|reply| RaftMsg::Propose { command, reply }, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(ractor::rpc::CallResult::Timeout) => Err(WireError::new(ErrorCode::Timeout, "no answer in time")),
        _ => Err(WireError::new(ErrorCode::Unavailable, "the node went down")),
    }
}

/// A linearizable read the way the RPC handler serves one: this node confirms it still leads (a heartbeat round to a
/// quorum, `ensure_linearizable`), waits until it applied everything committed before, then reads its own state.
pub async fn linearizable_read(
    directory: &Directory,
    request: &pando_protocol::kv::KvRequest,
) -> Result<pando_protocol::kv::KvResponse, WireError> {
    let handles = directory.raft().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "raft is not running"))?;
    crate::rpc::cluster::ensure_leader(&handles).await?;
    let stores = directory.stores().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "storage is not open"))?;
    stores.reader.read(request).map_err(|fault| WireError::internal(fault.to_string()))?
}

/// One simulated node: its disk outlives crashes; everything else is rebuilt on restart.
pub struct SimNode {
    pub id: NodeId,
    pub disk: SimDisk,
    dir: PathBuf,
    clock: Clock,
    net: SimNet,
    /// `None` while the node is down.
    running: Option<(Directory, ActorRef<RaftMsg>)>,
}

impl SimNode {
    /// Starts node `id` (the first start of node 1 with `bootstrap` initialises the cluster).
    pub async fn start(
        id: NodeId,
        dir: &Path,
        clock: Clock,
        net: &SimNet,
        bootstrap: Option<BTreeMap<NodeId, MemberNode>>,
    ) -> Result<SimNode, String> {
        let mut node =
            SimNode { id, disk: SimDisk::new(), dir: dir.join(id.to_string()), clock, net: net.clone(), running: None };
        node.boot(bootstrap).await?;
        Ok(node)
    }

    async fn boot(&mut self, bootstrap: Option<BTreeMap<NodeId, MemberNode>>) -> Result<(), String> {
        let directory = Directory::with_clock(self.clock);
        let stores = storage::open_simulated(&self.dir, self.disk.clone()).map_err(|error| error.to_string())?;
        directory.set_stores(stores);
        self.net.attach(self.id, directory.clone());
        let args = RaftArgs {
            node_id: self.id,
            config: Arc::new(sim_config().validate().map_err(|error| error.to_string())?),
            bootstrap,
            directory: directory.clone(),
            network: RaftTransport::Simulated(self.net.transport_for(self.id)),
        };
        let (actor, _) = Actor::spawn(None, RaftActor, args).await.map_err(|error| error.to_string())?;
        self.running = Some((directory, actor));
        Ok(())
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    pub fn directory(&self) -> Option<&Directory> {
        self.running.as_ref().map(|(directory, _)| directory)
    }

    /// The node's Raft metrics, while it is up.
    pub fn metrics(&self) -> Option<openraft::RaftMetrics<NodeId, MemberNode>> {
        let (directory, _) = self.running.as_ref()?;
        Some(directory.raft()?.raft.metrics().borrow().clone())
    }

    /// The node's RaftActor, while it is up: [`propose`] through it.
    pub fn actor(&self) -> Option<ActorRef<RaftMsg>> {
        self.running.as_ref().map(|(_, actor)| actor.clone())
    }

    /// Power fails: the disk keeps only what was synced (and the unsynced writes `survives` picks), the node leaves
    /// the network, its actor and Raft core stop without a chance to write anything.
    pub async fn crash(&mut self, survives: impl FnMut() -> bool) {
        let Some((directory, actor)) = self.running.take() else { return };
        self.disk.crash(survives);
        self.net.detach(self.id);
        actor.kill();
        if let Some(handles) = directory.take_raft() {
            let _ = tokio::time::timeout(Duration::from_millis(CRASH_SHUTDOWN_MS), handles.raft.shutdown()).await;
        }
        directory.clear_stores();
    }

    /// Starts the node again on what its disk kept.
    pub async fn restart(&mut self) -> Result<(), String> {
        if self.running.is_none() {
            self.boot(None).await?;
        }
        Ok(())
    }

    /// Stops the node cleanly (end of a run).
    pub async fn stop(&mut self) {
        if let Some((directory, actor)) = self.running.take() {
            let _ = actor.stop_and_wait(None, Some(Duration::from_secs(10))).await;
            if let Some(handles) = directory.take_raft() {
                let _ = tokio::time::timeout(Duration::from_millis(CRASH_SHUTDOWN_MS), handles.raft.shutdown()).await;
            }
            self.net.detach(self.id);
        }
    }
}
