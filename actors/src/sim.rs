//! Real nodes for the cluster simulator: each [`SimNode`] is a node's supervision tree (storage, raft, RPC gateway,
//! actor mesh, blob store, plugin supervisor, hooks, jobs; the real [`tree::root`]) with its RaftActor, state machine and redb stores, on a [simulated
//! disk](crate::storage::SimDisk) (and the blob store's twin on a [blob disk](SimBlobDisk)), reached by peers and clients over the [simulated
//! network](crate::raft::sim_network::SimNet), telling time by tokio's (paused) clock. The simulator drives them from
//! one thread and one seed, and talks to them with the real client library; this module only starts, crashes and
//! restarts them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pando_protocol::cluster::MemberNode;
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::error::WireError;
use pando_protocol::kv::bytes;
use pando_protocol::ticket::{Ticket, TicketNode};
use pando_protocol::token::{ACCESSOR_BYTES, Capability, CapabilityToken, SECRET_BYTES};

use crate::services::tokens::create_command;
use ractor::{Actor, ActorRef};

use crate::blobs::sim_store::SimBlobDisk;
use crate::clock::Clock;
use crate::raft::sim_network::SimNet;
use crate::raft::transport::RaftTransport;
use crate::raft::type_config::NodeId;
use crate::storage::SimDisk;
use crate::supervision::{Supervisor, SupervisorMsg};
use crate::tree::{self, ClusterKeys, Handles, TreeConfig, World};

/// Deliberate bugs the simulator's own tests switch on, to show its checkers catch them. Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Every node answers a linearizable read from its own state machine, without confirming it still leads.
    LocalReads = 1,
    /// The leader acknowledges a put as soon as it takes it, before the entry commits.
    AckBeforeCommit = 2,
    /// An unconditional transaction's writes are proposed one by one, each committed on its own.
    TornTxns = 4,
    /// A commit-stream feed skips every revision divisible by 7 that reaches it live (watchers see a gap).
    SkipRevision = 8,
    /// A connection trusts the token it verified once for good, never checking it against the records again (a
    /// revoked token keeps working on connections opened before the revocation).
    TokenCachedForever = 16,
    /// An election observer reads the election once, when it opens, and never again (it only repeats that state as
    /// its heartbeat).
    ObserveStale = 32,
    /// The KV service drops the fencing conditions of a transaction before proposing it (a write fenced by a lock
    /// token lands whoever holds the lock).
    FenceDropped = 64,
    /// The coordination service replaces a queue ack's delivery token with the message's current one (a late ack from
    /// a consumer whose delivery timed out takes the message from the consumer that holds it now).
    StaleAckAccepted = 128,
    /// The coordination service asks for one permit more of capacity than a semaphore acquisition names.
    SemaphoreOverCapacity = 256,
    /// The coordination service answers a sequence reservation with the number it read before proposing, not the one
    /// the log gave (two reservations on one leader can get the same numbers).
    SequenceReadBeforeWrite = 512,
    /// The coordination service asks for twice the burst a rate-limit acquisition names.
    RateLimitBurstDoubled = 1024,
    /// A hook worker answers every attempt with an ack, whatever its run said.
    HookAckIgnoresOutcome = 2048,
    /// A job worker reports every run as completed, whatever it said.
    JobCompleteIgnoresOutcome = 4096,
    /// The file-system service proposes a `RENAME_EXCHANGE` as a rename over its target (the target is destroyed).
    FsExchangeAsReplace = 8192,
    /// The file-system service answers a lock request the state machine refused (`EAGAIN`) as granted.
    FileLockConflictIgnored = 16384,
    /// The coordination service proposes an exclusive read-write lock acquisition as a shared one.
    RwLockWriteAsRead = 32768,
    /// The coordination service answers a lease keep-alive from the lease as this node has it, without proposing it
    /// (the holder believes it extended a lease that lapses on its old deadline).
    KeepAliveNotProposed = 65536,
    /// A parked coordination request ignores the commit-stream events that would wake it (it is answered only when
    /// its wait runs out).
    WaiterNotWoken = 131072,
    /// The coordination service asks for one party fewer than a barrier enter names (rounds open short).
    BarrierOpensShort = 262144,
    /// A node asked to stream a blob it has no copy of answers `NOT_FOUND` instead of fetching it from a holder
    /// (a blob reads only through the nodes that hold it).
    BlobReadLocalOnly = 524288,
    /// The blob sweep stops keeping blobs their records still place on the node (the store then collects copies the
    /// cluster counts).
    BlobSweepDropsPlaced = 1048576,
    /// The leader assigns one copy fewer than a blob's live copies lack (replication settles short).
    BlobPlacementShort = 2097152,
    /// A plugin upgrade keeps the old generation's queue open beside the new one, and every other call still goes to
    /// it (the old generation goes on answering after the new one has).
    PluginOldGenerationServes = 4194304,
    /// A node's plugin supervisor takes a plugin it serves in any generation as settled (upgrades never load there).
    PluginReconcileSkipsUpgrade = 8388608,
    /// The coordination service answers a won election campaign with the previous term's token (two leaders hold one
    /// token).
    ElectionTokenReused = 16777216,
    /// The coordination service answers every other queue dequeue with the last delivery it handed out of that queue
    /// (still in flight with its consumer), without proposing anything: one delivery held by two consumers.
    QueueDeliveryShared = 33554432,
    /// Before every other lock acquisition that would wait for another holder, the coordination service revokes the
    /// holder's lease (the lock changes hands while its holder's lease still runs).
    LockReleasedEarly = 67108864,
    /// The coordination service answers an exclusive read-write lock acquisition with the previous write token (two
    /// writers told one token).
    RwLockTokenReused = 134217728,
    /// The file-system service answers a request to keep a file open past its last unlink as done, without proposing
    /// it (the file goes at its unlink under its open handles).
    KeepOpenIgnored = 268435456,
}

thread_local! {
    /// Planted bugs are per thread: a simulation runs every node on its own current-thread runtime, so tests that
    /// plant bugs and tests that must not see them can share a process.
    static PLANTED_BUGS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// Flips at every [`planted_coin`] (deterministic: a simulation runs on one thread).
    static PLANTED_COIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Alternates true and false, for planted bugs that strike every other time.
pub(crate) fn planted_coin() -> bool {
    PLANTED_COIN.with(|coin| {
        coin.set(!coin.get());
        coin.get()
    })
}

/// Starts the [`planted_coin`] afresh (each run, so a seed replays alone as it ran in a sweep).
pub fn reset_planted_coin() {
    PLANTED_COIN.with(|coin| coin.set(false));
    PLANTED_DELIVERY.with(|delivery| *delivery.borrow_mut() = None);
}

thread_local! {
    /// The last queue delivery the coordination service handed out, for [`PlantedBug::QueueDeliveryShared`].
    static PLANTED_DELIVERY: std::cell::RefCell<Option<(pando_protocol::kv::Bytes, pando_protocol::coord::QueueMessage)>> =
        const { std::cell::RefCell::new(None) };
}

/// Remembers a delivery of queue `name` for [`PlantedBug::QueueDeliveryShared`].
pub(crate) fn planted_remember_delivery(
    name: &pando_protocol::kv::Bytes,
    message: &pando_protocol::coord::QueueMessage,
) {
    PLANTED_DELIVERY.with(|delivery| *delivery.borrow_mut() = Some((name.clone(), message.clone())));
}

/// The delivery of queue `name` last remembered, handed out once more.
pub(crate) fn planted_shared_delivery(name: &[u8]) -> Option<pando_protocol::coord::QueueMessage> {
    PLANTED_DELIVERY.with(|delivery| {
        delivery.borrow_mut().take_if(|(queue, _)| queue.as_slice() == name).map(|(_, message)| message)
    })
}

/// Switches a planted bug on or off for simulations run on this thread.
pub fn plant_bug(bug: PlantedBug, on: bool) {
    PLANTED_BUGS.with(|bugs| bugs.set(if on { bugs.get() | bug as u32 } else { bugs.get() & !(bug as u32) }));
}

pub(crate) fn planted_bug(bug: PlantedBug) -> bool {
    PLANTED_BUGS.with(|bugs| bugs.get() & bug as u32 != 0)
}

/// One delivery attempt a simulated hook ran, as the stand-in runner saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimHookRun {
    pub hook: String,
    pub seq: u64,
    pub attempt: u32,
    pub fence: u64,
    /// The event's subject.
    pub subject: String,
    /// What the runner answered: `true` ack, `false` nack (a stall answers nothing within the ack wait); an attempt
    /// the worker failed unrun (no time left in its ack wait) counts as `false`.
    pub acked: Option<bool>,
}

thread_local! {
    /// The hook runs of the simulation on this thread, in the order they started.
    static HOOK_RUNS: std::cell::RefCell<Vec<SimHookRun>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per mille of runs that fail, and of runs that stall past their ack wait; the generator that decides.
    static HOOK_FAILURES: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 1)) };
}

/// Sets how the simulated hook runner behaves on this thread: `fail` and `stall` per mille of runs, decided by a
/// generator seeded with `seed`; clears the recorded runs.
pub fn configure_hook_runs(fail: u64, stall: u64, seed: u64) {
    HOOK_FAILURES.with(|failures| failures.set((fail, stall, crate::seeded_rng::mix_seed(seed) | 1)));
    HOOK_RUNS.with(|runs| runs.borrow_mut().clear());
}

/// The hook runs recorded on this thread so far.
pub fn hook_runs() -> Vec<SimHookRun> {
    HOOK_RUNS.with(|runs| runs.borrow().clone())
}

/// The simulator's stand-in for commands and plugins: records every attempt, then acks, fails or stalls as the
/// seeded generator says (deterministic: the simulation runs on one thread).
pub struct SimHookRunner;

impl crate::hooks::delivery::Runner for SimHookRunner {
    fn run(
        &self,
        _target: &pando_protocol::hook::durable::HookTarget,
        delivery: &pando_protocol::hook::durable::Delivery,
        limit: Duration,
    ) -> futures::future::BoxFuture<'static, crate::hooks::exec::Outcome> {
        use crate::hooks::exec::Outcome;
        let (fail, stall) = HOOK_FAILURES.with(|failures| {
            let (fail, stall, mut state) = failures.get();
            let mut rng = crate::seeded_rng::SeededRng::from_state(state);
            let decided = (rng.per_mille(fail), rng.per_mille(stall));
            state = rng.next_u64() | 1;
            failures.set((fail, stall, state));
            decided
        });
        let index = HOOK_RUNS.with(|runs| {
            let mut runs = runs.borrow_mut();
            runs.push(SimHookRun {
                hook: delivery.hook.clone(),
                seq: delivery.event.seq,
                attempt: delivery.attempt,
                fence: delivery.fence,
                subject: delivery.event.subject.clone(),
                acked: None,
            });
            runs.len() - 1
        });
        Box::pin(async move {
            // Some work takes time; a stall takes longer than the attempt may.
            tokio::time::sleep(if stall { limit + Duration::from_millis(50) } else { Duration::from_millis(5) }).await;
            HOOK_RUNS.with(|runs| runs.borrow_mut()[index].acked = Some(!fail));
            if fail { Outcome::Nack("simulated failure".into()) } else { Outcome::Ack }
        })
    }

    fn unrun(&self, delivery: &pando_protocol::hook::durable::Delivery) {
        HOOK_RUNS.with(|runs| {
            runs.borrow_mut().push(SimHookRun {
                hook: delivery.hook.clone(),
                seq: delivery.event.seq,
                attempt: delivery.attempt,
                fence: delivery.fence,
                subject: delivery.event.subject.clone(),
                acked: Some(false),
            })
        });
    }
}

/// One job run the simulated job runner made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimJobRun {
    pub id: u64,
    pub attempt: u32,
    pub fence: u64,
    /// What the runner answered (`None`: the run was stopped, or its worker went, before it ended).
    pub succeeded: Option<bool>,
}

thread_local! {
    /// The job runs of the simulation on this thread, in the order they started.
    static JOB_RUNS: std::cell::RefCell<Vec<SimJobRun>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per mille of job runs that fail, and the generator that decides, and the workers per node (0: none).
    static JOB_BEHAVIOUR: std::cell::Cell<(u64, u64, usize)> = const { std::cell::Cell::new((0, 1, 0)) };
}

/// Sets how simulated job workers behave on this thread: `workers` per node (0: the nodes run no jobs), `fail` per
/// mille of runs failing, decided by a generator seeded with `seed`; clears the recorded runs. Takes effect for
/// nodes (re)started after the call.
pub fn configure_job_runs(workers: usize, fail: u64, seed: u64) {
    JOB_BEHAVIOUR.with(|behaviour| behaviour.set((fail, crate::seeded_rng::mix_seed(seed) | 1, workers)));
    JOB_RUNS.with(|runs| runs.borrow_mut().clear());
}

/// The job runs recorded on this thread so far.
pub fn job_runs() -> Vec<SimJobRun> {
    JOB_RUNS.with(|runs| runs.borrow().clone())
}

/// The job workers of a simulated node: as configured, leader-only, with one-second leases.
pub fn job_config() -> crate::jobs::JobsConfig {
    crate::jobs::JobsConfig {
        workers: JOB_BEHAVIOUR.with(|behaviour| behaviour.get().2),
        queues: vec!["default".into()],
        lease_ms: 1_000,
        followers_claim: false,
    }
}

/// The simulator's stand-in for job commands and plugins: records every run, then succeeds or fails after a few
/// milliseconds as the seeded generator says.
pub struct SimJobRunner;

impl crate::jobs::JobRunner for SimJobRunner {
    fn run(
        &self,
        job: &pando_protocol::job::Claimed,
        stop: futures::future::BoxFuture<'static, ()>,
    ) -> futures::future::BoxFuture<'static, crate::jobs::RunResult> {
        use crate::jobs::RunResult;
        let (fail, took) = JOB_BEHAVIOUR.with(|behaviour| {
            let (fail, state, workers) = behaviour.get();
            let mut rng = crate::seeded_rng::SeededRng::from_state(state);
            let decided = (rng.per_mille(fail), 5 + rng.below(50));
            behaviour.set((fail, rng.next_u64() | 1, workers));
            decided
        });
        let index = JOB_RUNS.with(|runs| {
            let mut runs = runs.borrow_mut();
            runs.push(SimJobRun { id: job.id, attempt: job.attempt, fence: job.fence, succeeded: None });
            runs.len() - 1
        });
        Box::pin(async move {
            tokio::select! {
                biased; // replayable from the seed (tokio's unbiased choice is random per process)
                () = tokio::time::sleep(Duration::from_millis(took)) => {}
                () = stop => return RunResult::Failed {
                    error: "stopped".into(),
                    output: Default::default(),
                    retryable: true,
                },
            }
            JOB_RUNS.with(|runs| runs.borrow_mut()[index].succeeded = Some(!fail));
            if fail {
                RunResult::Failed { error: "simulated failure".into(), output: Default::default(), retryable: true }
            } else {
                RunResult::Completed(Default::default())
            }
        })
    }
}

/// How a simulated node runs plugins: the node's defaults, reconciling every second and retrying a failed fetch
/// after half a second (a run lasts seconds).
pub fn plugin_config() -> crate::plugins::PluginConfig {
    crate::plugins::PluginConfig {
        reconcile_interval: Duration::from_secs(1),
        fetch_retry: Duration::from_millis(500),
        ..crate::plugins::PluginConfig::default()
    }
}

/// How a simulated node keeps blobs: the node's defaults, with garbage collected within seconds (so a run sees
/// collections) and repairs every second.
pub fn blob_config(dir: &Path) -> crate::blobs::BlobConfig {
    crate::blobs::BlobConfig {
        gc_grace: Duration::from_secs(SIM_BLOB_GC_GRACE_MS / 1_000),
        // Apart from the repair worker's beat, so a collection never ties with a sweep.
        store_gc_interval: Duration::from_millis(700),
        repair_interval: Duration::from_secs(1),
        ..crate::blobs::BlobConfig::new(dir.join("blobs"))
    }
}

/// How long an unreferenced blob survives in a simulated cluster.
pub const SIM_BLOB_GC_GRACE_MS: u64 = 3_000;

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

/// The members of a simulated cluster of `count` nodes (ids 1..=count, made-up keys and addresses): node `id` is
/// [`member`]`(id)`.
pub fn members(count: u64) -> BTreeMap<NodeId, MemberNode> {
    (1..=count).map(|id| (id, member(id))).collect()
}

/// What membership records about simulated node `id`.
pub fn member(id: NodeId) -> MemberNode {
    // The address is never dialled (the simulated network routes by id), but membership changes want one.
    let addr = std::net::SocketAddr::from(([10, 0, (id >> 8) as u8, id as u8], 7000));
    MemberNode { public_key: bytes(node_key(id).public().as_bytes().to_vec()), addrs: vec![addr] }
}

/// The node key of simulated node `id` (made up, as its address is): what it signs its forwarded proposals with.
pub fn node_key(id: NodeId) -> iroh::SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&id.to_le_bytes());
    seed[8..].copy_from_slice(b"pando simulated node key");
    iroh::SecretKey::from_bytes(&seed)
}

/// The cluster's identity in a simulation: its id, the members' shared secret and the admin token, all from the seed.
#[derive(Clone)]
pub struct SimIdentity {
    pub cluster_id: Vec<u8>,
    pub member_secret: [u8; 32],
    /// Recorded by [`SimIdentity::admin_command`] once the cluster has a leader.
    pub admin: CapabilityToken,
}

impl SimIdentity {
    pub fn from_seed(seed: u64) -> SimIdentity {
        let mut material = [0u8; 16];
        material[..8].copy_from_slice(&seed.to_le_bytes());
        material[8..].copy_from_slice(b"pandosim");
        let member_secret = blake3::derive_key("pando simulated member secret", &material);
        let mut random = [0u8; ACCESSOR_BYTES + SECRET_BYTES];
        blake3::Hasher::new_derive_key("pando simulated admin token")
            .update(&material)
            .finalize_xof()
            .fill(&mut random);
        SimIdentity {
            cluster_id: format!("sim-{seed}").into_bytes(),
            member_secret,
            admin: CapabilityToken::from_random(random),
        }
    }

    /// A ticket for clients: every node of `members`, and the admin token.
    pub fn admin_ticket(&self, members: &BTreeMap<NodeId, MemberNode>) -> Ticket {
        Ticket {
            cluster_id: bytes(self.cluster_id.clone()),
            nodes: members.iter().map(|(node_id, node)| TicketNode { node_id: *node_id, node: node.clone() }).collect(),
            token: Some(self.admin.clone()),
        }
    }

    /// The log command that records the admin token (every capability, no expiry).
    pub fn admin_command(&self) -> Command {
        Command::Token(create_command(&self.admin, "simulated admin".into(), vec![Capability::All], Some(0), None))
    }
}

/// One simulated node: its disk outlives crashes; everything else is rebuilt on restart.
pub struct SimNode {
    pub id: NodeId,
    pub disk: SimDisk,
    /// The blob store's disk: survives crashes as `disk` does.
    pub blob_disk: SimBlobDisk,
    dir: PathBuf,
    clock: Clock,
    net: SimNet,
    identity: SimIdentity,
    /// `None` while the node is down.
    running: Option<(Handles, ActorRef<SupervisorMsg>)>,
}

impl SimNode {
    /// Starts node `id` (the first start of node 1 with `bootstrap` initialises the cluster).
    pub async fn start(
        id: NodeId,
        dir: &Path,
        clock: Clock,
        net: &SimNet,
        identity: &SimIdentity,
        bootstrap: Option<BTreeMap<NodeId, MemberNode>>,
    ) -> Result<SimNode, String> {
        let mut node = SimNode {
            id,
            disk: SimDisk::new(),
            blob_disk: SimBlobDisk::new(),
            dir: dir.join(id.to_string()),
            clock,
            net: net.clone(),
            identity: identity.clone(),
            running: None,
        };
        node.boot(bootstrap).await?;
        Ok(node)
    }

    /// Starts the node's real supervision tree in the simulated world (one more boot).
    async fn boot(&mut self, bootstrap: Option<BTreeMap<NodeId, MemberNode>>) -> Result<(), String> {
        let handles = Handles::new(self.id, []);
        self.net.attach(self.id, handles.raft.clone());
        let keys =
            ClusterKeys { cluster_id: self.identity.cluster_id.clone(), member_secret: self.identity.member_secret };
        let config = TreeConfig {
            data_dir: self.dir.clone(),
            node_id: self.id,
            raft_config: Arc::new(sim_config().validate().map_err(|error| error.to_string())?),
            bootstrap,
            network: RaftTransport::Simulated(self.net.transport_for(self.id, handles.raft.peer_health())),
            keys,
            fault_injection: true,
            clock: self.clock,
            handles: handles.clone(),
            world: World::Simulated {
                disk: self.disk.clone(),
                listener: self.net.rpc_listener(self.id),
                net: self.net.clone(),
                blobs: blob_config(&self.dir),
                blob_disk: self.blob_disk.clone(),
            },
            retention: crate::retention::RetentionConfig::default(),
        };
        let (root, _) = Actor::spawn(None, Supervisor, tree::root(config)).await.map_err(|error| error.to_string())?;
        handles.tree.set_root(root.clone());
        self.running = Some((handles, root));
        Ok(())
    }

    /// Proposes `command` through this node's Raft (answers `NOT_LEADER` unless it leads; `UNAVAILABLE` while down).
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<CommandOutput, WireError> {
        match self.handles() {
            Some(handles) => handles.raft.propose(command, timeout).await,
            None => Err(WireError::new(pando_protocol::error::ErrorCode::Unavailable, "node is down")),
        }
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// The node's subsystem handles, while it is up.
    pub fn handles(&self) -> Option<&Handles> {
        self.running.as_ref().map(|(handles, _)| handles)
    }

    /// The node's Raft metrics, while it is up and its Raft runs.
    pub fn metrics(&self) -> Option<openraft::RaftMetrics<NodeId, MemberNode>> {
        self.running.as_ref()?.0.raft.metrics()
    }

    /// Power fails: the disk keeps only what was synced (and the unsynced writes `survives` picks), the node leaves
    /// the network (its client connections break), and its whole tree dies without a chance to write anything.
    pub async fn crash(&mut self, survives: impl FnMut() -> bool) {
        let Some((handles, root)) = self.running.take() else { return };
        self.disk.crash(survives);
        self.blob_disk.crash();
        self.net.detach(self.id);
        // Killing the root kills every actor under it, skipping their `post_stop`.
        root.kill();
        if let Some(core) = handles.raft.take() {
            let _ = tokio::time::timeout(Duration::from_millis(CRASH_SHUTDOWN_MS), core.raft.shutdown()).await;
        }
        handles.storage.retract();
    }

    /// Starts the node again on what its disk kept.
    pub async fn restart(&mut self) -> Result<(), String> {
        if self.running.is_none() {
            self.boot(None).await?;
        }
        Ok(())
    }

    /// Stops the node cleanly (end of a run): the tree stops its children in reverse order.
    pub async fn stop(&mut self) {
        if let Some((handles, root)) = self.running.take() {
            let _ = root.stop_and_wait(None, Some(Duration::from_secs(30))).await;
            if let Some(core) = handles.raft.take() {
                let _ = tokio::time::timeout(Duration::from_millis(CRASH_SHUTDOWN_MS), core.raft.shutdown()).await;
            }
            self.net.detach(self.id);
        }
    }
}
