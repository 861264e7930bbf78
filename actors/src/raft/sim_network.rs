//! The in-memory twin of the Raft transport, for simulation: requests travel as the same frames as over iroh, to the
//! same [`dispatch`](super::transport::dispatch) on the receiving node, through a network that can drop, delay and
//! duplicate them and cut links (partitions, in one direction or both). Every choice comes from one seeded
//! generator, and every message's fate goes into a trace, so a run is a function of its seed.
//!
//! A dropped request or response looks to the sender like a peer that never answered: the call fails once its
//! timeout has passed (on the simulated clock).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pando_protocol::frame::LENGTH_PREFIX_BYTES;

use super::handle::{PeerHealth, RaftHandle};
use super::transport::{TransportError, dispatch};
use super::type_config::NodeId;
use crate::blobs::BlobsHandle;
use crate::mesh::sim_link::MeshPorts;
use crate::rpc::sim_link::{RpcPorts, SimRpcListener};
use crate::seeded_rng::SeededRng;

/// Blob transfers that arrive corrupted on a lossy network, per thousand.
pub const BLOB_CORRUPT_PER_MILLE: u32 = 30;

/// How unreliable the network is, in parts per thousand and milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFaults {
    /// Chance a request or a response is lost.
    pub drop_per_mille: u32,
    /// Chance a delivered request is delivered a second time (its second answer is thrown away).
    pub duplicate_per_mille: u32,
    /// Each message takes between `delay_ms_min` and `delay_ms_max` (uniform).
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
}

/// The simulated network all nodes of one run share.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    /// Unique in the process: names what this network's nodes share with nothing else (their mesh scopes).
    id: u64,
}

struct NetState {
    /// When the network was made: trace lines carry the simulated time since.
    start: tokio::time::Instant,
    nodes: BTreeMap<NodeId, RaftHandle>,
    /// Links that carry nothing: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: NetFaults,
    rng: SeededRng,
    trace: Vec<String>,
    delivered: u64,
    dropped: u64,
    /// Client connections: each node's port and the connections open to it.
    rpc: RpcPorts,
    /// Actor mesh session streams: each node's mesh port and the streams open between nodes.
    mesh: MeshPorts,
    /// Each node's blob store, where members fetch copies from (while the node is up).
    blobs: BTreeMap<NodeId, BlobsHandle>,
}

impl NetState {
    /// A line in the trace for something other than a message (a node up or down, a partition).
    fn note(&mut self, what: String) {
        let at = self.start.elapsed().as_millis();
        self.trace.push(format!("{at} {what}"));
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.per_mille(u64::from(per_mille))
    }

    fn delay(&mut self) -> Duration {
        let NetFaults { delay_ms_min, delay_ms_max, .. } = self.faults;
        let spread = delay_ms_max.saturating_sub(delay_ms_min);
        let extra = if spread == 0 { 0 } else { self.rng.below(spread + 1) };
        Duration::from_millis(delay_ms_min + extra)
    }
}

/// What happens to one message.
enum Fate {
    Lost,
    Delivered { delay: Duration, duplicate: bool },
}

impl SimNet {
    /// A network whose every choice follows `seed` (0 is replaced, as xorshift needs a nonzero state).
    pub fn new(seed: u64) -> SimNet {
        let state = NetState {
            start: tokio::time::Instant::now(),
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            faults: NetFaults::default(),
            rng: SeededRng::from_state(seed),
            trace: Vec::new(),
            delivered: 0,
            dropped: 0,
            rpc: RpcPorts::default(),
            mesh: MeshPorts::default(),
            blobs: BTreeMap::new(),
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        SimNet { state: Arc::new(Mutex::new(state)), id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
    }

    /// This network's id, unique in the process (not part of any decision, so not of the trace).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `node_id` reachable: requests to it go to the Raft behind `raft` (whichever core runs there now).
    pub fn attach(&self, node_id: NodeId, raft: RaftHandle) {
        let mut state = self.lock();
        state.nodes.insert(node_id, raft);
        state.note(format!("node {node_id} up"));
    }

    /// Takes `node_id` off the network (a crashed node): requests to it are lost.
    pub fn detach(&self, node_id: NodeId) {
        let mut state = self.lock();
        state.nodes.remove(&node_id);
        state.rpc.node_down(node_id);
        state.mesh.node_down(node_id);
        state.blobs.remove(&node_id);
        state.note(format!("node {node_id} down"));
    }

    /// Makes `node_id`'s blob store reachable to members' fetches (until the node is detached).
    pub fn attach_blobs(&self, node_id: NodeId, blobs: BlobsHandle) {
        self.lock().blobs.insert(node_id, blobs);
    }

    /// The blob store of `node_id`, while the node is up.
    pub(crate) fn blobs_of(&self, node_id: NodeId) -> Option<BlobsHandle> {
        self.lock().blobs.get(&node_id).cloned()
    }

    /// Whether a blob transfer from `from` to `to` arrives with a flipped byte (a rotten disk or a broken middlebox,
    /// on a lossy network only: [`BLOB_CORRUPT_PER_MILLE`] of transfers), and where: the answer picks the byte.
    pub(crate) fn corrupts_blob_transfer(&self, from: NodeId, to: NodeId) -> Option<u64> {
        let mut state = self.lock();
        if state.faults.drop_per_mille == 0 || !state.chance(BLOB_CORRUPT_PER_MILLE) {
            return None;
        }
        let at = state.rng.next_u64();
        state.note(format!("{from}->{to} blob data corrupted"));
        Some(at)
    }

    /// The port node `node_id`'s RPC gateway takes client connections from (a fresh one at each boot).
    pub fn rpc_listener(&self, node_id: NodeId) -> SimRpcListener {
        self.lock().rpc.listen(node_id)
    }

    pub(crate) fn with_rpc_ports<T>(&self, work: impl FnOnce(&mut RpcPorts) -> T) -> T {
        work(&mut self.lock().rpc)
    }

    pub(crate) fn with_mesh_ports<T>(&self, work: impl FnOnce(&mut MeshPorts) -> T) -> T {
        work(&mut self.lock().mesh)
    }

    /// Whether bytes go from `from` to `to` now: the link is not cut and `node` (the node end) is up.
    pub(crate) fn link_up(&self, from: u64, to: u64, node: NodeId) -> bool {
        let state = self.lock();
        !state.cut.contains(&(from, to)) && state.nodes.contains_key(&node)
    }

    /// The delay of one delivery on a reliable stream, noted in the trace; `None` while the link is down. A lost
    /// packet is retransmitted: it costs [`RETRANSMIT_MS`](crate::rpc::sim_link::RETRANSMIT_MS), not the message.
    pub(crate) fn stream_delay(&self, from: u64, to: u64, node: NodeId, what: &str) -> Option<Duration> {
        let mut state = self.lock();
        let at = state.start.elapsed().as_millis();
        if state.cut.contains(&(from, to)) || !state.nodes.contains_key(&node) {
            state.trace.push(format!("{at} {from}->{to} {what} cut"));
            return None;
        }
        let drop_per_mille = state.faults.drop_per_mille;
        let mut delay = state.delay();
        if state.chance(drop_per_mille) {
            delay += Duration::from_millis(crate::rpc::sim_link::RETRANSMIT_MS);
        }
        state.delivered += 1;
        state.trace.push(format!("{at} {from}->{to} {what} after {} ms", delay.as_millis()));
        Some(delay)
    }

    /// The transport a node's Raft uses to reach the others; every answered RPC is noted in `health` (when the node
    /// last heard from each peer), as the iroh transport notes it.
    pub fn transport_for(&self, node_id: NodeId, health: PeerHealth) -> SimRaftNetwork {
        SimRaftNetwork { from: node_id, net: self.clone(), health }
    }

    pub fn set_faults(&self, faults: NetFaults) {
        self.lock().faults = faults;
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        let mut state = self.lock();
        state.cut.insert((from, to));
        state.note(format!("cut {from}->{to}"));
    }

    /// Cuts every link between `side` and the rest of the attached nodes, both ways.
    pub fn isolate(&self, side: &[NodeId]) {
        let mut state = self.lock();
        let others: Vec<NodeId> = state.nodes.keys().copied().filter(|node| !side.contains(node)).collect();
        for &inside in side {
            for &outside in &others {
                state.cut.insert((inside, outside));
                state.cut.insert((outside, inside));
            }
        }
        state.note(format!("isolate {side:?}"));
    }

    /// Restores every link (faults stay as set).
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.note("heal".into());
    }

    /// Adds a line to the trace for something the simulator did (a panic injected, a membership change).
    pub fn note(&self, what: String) {
        self.lock().note(what);
    }

    /// The fate of every message so far, one line each.
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// Messages delivered and lost so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.dropped)
    }

    /// Decides one message's fate from the generator, and notes it.
    fn fate(&self, from: NodeId, to: NodeId, what: &str) -> Fate {
        let mut state = self.lock();
        let fate = if state.cut.contains(&(from, to)) || !state.nodes.contains_key(&to) {
            Fate::Lost
        } else {
            let drop_per_mille = state.faults.drop_per_mille;
            let duplicate_per_mille = state.faults.duplicate_per_mille;
            if state.chance(drop_per_mille) {
                Fate::Lost
            } else {
                let delay = state.delay();
                Fate::Delivered { delay, duplicate: state.chance(duplicate_per_mille) }
            }
        };
        let at = state.start.elapsed().as_millis();
        let line = match &fate {
            Fate::Lost => {
                state.dropped += 1;
                format!("{at} {from}->{to} {what} lost")
            }
            Fate::Delivered { delay, duplicate } => {
                state.delivered += 1;
                let twice = if *duplicate { " twice" } else { "" };
                format!("{at} {from}->{to} {what} after {} ms{twice}", delay.as_millis())
            }
        };
        state.trace.push(line);
        fate
    }

    fn raft(&self, node_id: NodeId) -> Option<RaftHandle> {
        self.lock().nodes.get(&node_id).cloned()
    }
}

/// One node's end of the simulated network.
#[derive(Clone)]
pub struct SimRaftNetwork {
    from: NodeId,
    net: SimNet,
    health: PeerHealth,
}

impl SimRaftNetwork {
    /// Carries one request frame to `target` and answers its response's body, within `timeout`.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let bytes = frame.get(LENGTH_PREFIX_BYTES..).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        let lost = || TransportError(format!("raft rpc to node {target} timed out after {timeout:?} (lost)"));
        let (delay, duplicate) = match self.net.fate(self.from, target, "request") {
            Fate::Lost => {
                tokio::time::sleep_until(deadline).await;
                return Err(lost());
            }
            Fate::Delivered { delay, duplicate } => (delay, duplicate),
        };
        if tokio::time::timeout_at(deadline, tokio::time::sleep(delay)).await.is_err() {
            return Err(lost());
        }
        let Some(raft) = self.net.raft(target) else {
            tokio::time::sleep_until(deadline).await;
            return Err(lost());
        };
        if duplicate {
            let (raft, bytes, from) = (raft.clone(), bytes.to_vec(), self.from);
            tokio::spawn(async move {
                let _ = dispatch(&raft, &bytes, Some(from)).await;
            });
        }
        let response = match tokio::time::timeout_at(deadline, dispatch(&raft, bytes, Some(self.from))).await {
            Ok(Some(response)) => response.get(LENGTH_PREFIX_BYTES..).unwrap_or_default().to_vec(),
            Ok(None) => return Err(TransportError("the response did not fit in a frame".into())),
            Err(_) => return Err(lost()),
        };
        match self.net.fate(target, self.from, "response") {
            Fate::Lost => {
                tokio::time::sleep_until(deadline).await;
                Err(lost())
            }
            Fate::Delivered { delay, .. } => match tokio::time::timeout_at(deadline, tokio::time::sleep(delay)).await {
                Ok(()) => {
                    // Peer liveness (blob placement counts only copies on members heard from lately).
                    let mut health = self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    health.insert(target, tokio::time::Instant::now());
                    Ok(response)
                }
                Err(_) => Err(lost()),
            },
        }
    }
}
