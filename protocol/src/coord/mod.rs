//! Coordination primitives inside the replicated state machine: leases, locks with fencing tokens, read-write locks,
//! semaphores, elections, rate limits, counters, sequences, queues, barriers and a service registry. One module per
//! primitive, each a pure function of the coordination rows and the proposal's clock.
//!
//! **Time comes from the log.** Every proposal carries its leader's timestamp; the state machine keeps the largest one
//! it has applied ([`advance_clock`]) so time never runs backwards across leaders, and judges every TTL against it.
//! Before the commands of a proposal run, every lease whose deadline has passed is revoked ([`expire_due`]); the leader
//! proposes an empty [`CoordRequest::Tick`] when a deadline passes on a quiet cluster, so expiry never waits for
//! traffic. The same goes for the other deadlines (queue visibility, deduplication windows, service TTLs), which run
//! on [timers](timer) of the log clock. No replica reads its own clock while applying.
//!
//! **Fencing.** Every acquisition (lock, read-write lock, semaphore permit, leadership, queue delivery) returns a token
//! larger than any token that resource gave before; a token is never reused, even after the holder's lease expires.

pub mod barrier;
pub mod counter;
pub mod election;
pub mod lease;
pub mod lock;
pub mod queue;
pub mod ratelimit;
pub mod rwlock;
pub mod semaphore;
pub mod sequence;
pub mod service;
pub mod timer;

use std::ops::ControlFlow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::KEY_SIZE_BYTES_MAX;
use crate::state_machine::{KvWrite, StorageFault};

pub use barrier::BarrierInfo;
pub use counter::CounterValue;
pub use election::ElectionInfo;
pub use lease::LeaseInfo;
pub use lock::LockInfo;
pub use queue::{MessageState, QueueInfo, QueueMessage};
pub use ratelimit::RateLimitInfo;
pub use rwlock::{RwLockInfo, RwMode};
pub use semaphore::SemaphoreInfo;
pub use service::{Health, ServiceInstance, ServiceRef};

/// What happened to a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEventKind {
    Submitted,
    /// It became claimable (its start came, its dependencies completed, its retry came, or it was retried).
    Ready,
    Started {
        attempt: u32,
        node: u64,
    },
    Completed {
        attempt: u32,
    },
    /// An attempt failed; it runs again at `retry_at_ms`, or (`None`) it is dead.
    Failed {
        attempt: u32,
        retry_at_ms: Option<u64>,
    },
    /// An attempt's lease lapsed (its worker's node died or stalled); the job was taken back.
    Rescued {
        attempt: u32,
        node: u64,
    },
    Dead,
    Cancelled,
}

impl JobEventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobEventKind::Submitted => "submitted",
            JobEventKind::Ready => "ready",
            JobEventKind::Started { .. } => "started",
            JobEventKind::Completed { .. } => "completed",
            JobEventKind::Failed { .. } => "failed",
            JobEventKind::Rescued { .. } => "rescued",
            JobEventKind::Dead => "dead",
            JobEventKind::Cancelled => "cancelled",
        }
    }
}

/// Called with each row of a scan (key, value); breaks to stop.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// Read access to the coordination rows (a table of its own, next to the KV rows).
pub trait CoordRead {
    fn coord_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault>;
    /// Visits rows whose key starts with `prefix`, in byte order, until `visit` breaks.
    fn coord_scan(&self, prefix: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StorageFault> {
        self.coord_scan_from(prefix, prefix, visit)
    }
    /// Visits rows whose key starts with `prefix` and is at or after `start`, in byte order, until `visit` breaks.
    fn coord_scan_from(&self, prefix: &[u8], start: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StorageFault>;
}

/// Write access to the coordination rows, and the sink for what changed.
pub trait CoordWrite: CoordRead {
    fn coord_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageFault>;
    fn coord_delete(&mut self, key: &[u8]) -> Result<bool, StorageFault>;
    /// Records an event; [`crate::state_machine::apply_proposal`] collects them into the proposal's outcome.
    fn emit(&mut self, event: CoordEvent);
    /// Takes the events recorded since the last call.
    fn take_events(&mut self) -> Vec<CoordEvent>;
}

/// What a coordination command changed, published on the commit stream after the entry is applied (waiters, and
/// later the hook router, subscribe to it). Derived from applying, so every replica produces the same events. Reads,
/// refusals and renewals that only move a deadline (lease keep-alives, service heartbeats that leave the health as it
/// was, delivery extensions) publish nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordEvent {
    LeaseGranted {
        lease: u64,
        deadline_ms: u64,
    },
    /// A lease ended: revoked by a client, or lapsed (`expired`).
    LeaseEnded {
        lease: u64,
        expired: bool,
    },
    LockAcquired {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    LockReleased {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    RwLockAcquired {
        name: Bytes,
        lease: u64,
        mode: RwMode,
    },
    /// A lease gave up its hold (or its write hold, on a downgrade).
    RwLockReleased {
        name: Bytes,
        lease: u64,
    },
    LeaderElected {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    LeaderResigned {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    /// The leader campaigned again: its proclaimed value changed, its token did not.
    LeaderProclaimed {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    SemaphoreAcquired {
        name: Bytes,
        lease: u64,
        permits: u32,
        token: u64,
    },
    SemaphoreReleased {
        name: Bytes,
        lease: u64,
    },
    CounterChanged {
        name: Bytes,
        value: CounterValue,
    },
    SequenceAdvanced {
        name: Bytes,
        next: u64,
    },
    /// `count` tokens were taken from a rate-limit bucket.
    RateLimitTaken {
        name: Bytes,
        count: u32,
    },
    RateLimitReset {
        name: Bytes,
    },
    QueueCreated {
        name: Bytes,
    },
    QueueEnqueued {
        name: Bytes,
        id: u64,
    },
    QueueDelivered {
        name: Bytes,
        id: u64,
        token: u64,
        delivery: u32,
    },
    QueueAcked {
        name: Bytes,
        id: u64,
        token: u64,
    },
    /// A delivery ended unacked (nacked or timed out) and the message is back in the queue.
    QueueReturned {
        name: Bytes,
        id: u64,
        token: u64,
    },
    QueueDeadLettered {
        name: Bytes,
        id: u64,
        deliveries: u32,
    },
    QueueRedriven {
        name: Bytes,
        count: u32,
    },
    QueueDeleted {
        name: Bytes,
    },
    /// A party entered; `arrived` parties are in the round now.
    BarrierEntered {
        name: Bytes,
        lease: u64,
        arrived: u32,
    },
    /// A party left (or its lease ended).
    BarrierLeft {
        name: Bytes,
        lease: u64,
    },
    /// Every party entered: round `generation` is open.
    BarrierOpened {
        name: Bytes,
        generation: u64,
    },
    /// Every party of round `generation` left.
    BarrierClosed {
        name: Bytes,
        generation: u64,
    },
    /// A token was revoked: connections that verified it must check it again.
    TokenRevoked {
        accessor: Bytes,
    },
    /// A plugin was installed, upgraded, enabled, disabled or removed; `generation` is the new one.
    PluginChanged {
        name: String,
        generation: u64,
    },
    /// A node reported a verified copy of a blob (or added it).
    BlobHeld {
        hash: crate::blob::BlobHash,
        node: u64,
    },
    /// Nodes were asked to fetch a copy.
    BlobAssigned {
        hash: crate::blob::BlobHash,
        nodes: Vec<u64>,
    },
    /// A node no longer counts as a holder of a blob.
    BlobReleased {
        hash: crate::blob::BlobHash,
        node: u64,
    },
    /// An unreferenced blob's grace period ended: every node drops its copy.
    BlobCollected {
        hash: crate::blob::BlobHash,
    },
    ServiceRegistered {
        service: Bytes,
        instance: Bytes,
    },
    ServiceHealthChanged {
        service: Bytes,
        instance: Bytes,
        health: Health,
    },
    ServiceDeregistered {
        service: Bytes,
        instance: Bytes,
    },
    /// A job changed (see [`crate::job`]); its queue names the subject `job.<kind>.<queue>`.
    Job {
        id: u64,
        queue: String,
        kind: JobEventKind,
    },
    /// File-system inodes and directory entries (parent, name) changed: the mounts drop what they cached of them.
    FsChanged {
        inodes: Vec<u64>,
        entries: Vec<(u64, String)>,
    },
}

/// Coordination requests. Names share the key namespace for access control: a token that may write `jobs/` may take
/// the lock `jobs/main`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordRequest {
    /// Grants a lease that expires `ttl_ms` after the proposal's time unless kept alive.
    /// The lease belongs to `prefix` (empty: the whole keyspace): it holds only keys and names under it, and granting
    /// it needs write access to `prefix`, so a token scoped to `jobs/` can take the lock `jobs/main`.
    LeaseGrant {
        ttl_ms: u64,
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Pushes a lease's deadline to `ttl_ms` (its own TTL) after now. `prefix` is what the caller has access to: a
    /// lease that does not belong under it answers as one that does not exist (as do `LeaseRevoke` and `LeaseGet`).
    LeaseKeepAlive {
        lease: u64,
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Revokes a lease and releases everything attached to it, in one entry.
    LeaseRevoke {
        lease: u64,
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Reads one lease.
    LeaseGet {
        lease: u64,
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Reads the leases that belong to `prefix` (their own prefix starts with it; empty: every lease), at most
    /// [`LEASE_LIST_COUNT_MAX`](lease::LEASE_LIST_COUNT_MAX), so a scoped token lists only its own part.
    LeaseList {
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Takes `name` for `lease` if it is free; answers `CONFLICT` naming the holder if not. Taking a lock the lease
    /// already holds answers the same token again.
    LockAcquire {
        name: Bytes,
        lease: u64,
        /// How long the node may park the request while the lock is held (0: answer at once). Served by the node
        /// (woken by the release on the commit stream, no client polling); always 0 in the log.
        #[serde(default)]
        wait_ms: u32,
    },
    /// Takes read-write lock `name` for `lease`, shared (`Read`) or exclusive (`Write`), or answers `CONFLICT`.
    RwLockAcquire {
        name: Bytes,
        lease: u64,
        mode: RwMode,
        /// As for [`CoordRequest::LockAcquire`].
        #[serde(default)]
        wait_ms: u32,
    },
    /// Turns `lease`'s write hold into a read hold.
    RwLockDowngrade {
        name: Bytes,
        lease: u64,
    },
    RwLockRelease {
        name: Bytes,
        lease: u64,
    },
    RwLockGet {
        name: Bytes,
    },
    /// Leads election `name` with `lease`, proclaiming `value`, if nobody leads (or `CONFLICT` naming the leader;
    /// parked by the node with `wait_ms`). The leader campaigning again updates its value.
    ElectionCampaign {
        name: Bytes,
        lease: u64,
        value: Bytes,
        /// As for [`CoordRequest::LockAcquire`].
        #[serde(default)]
        wait_ms: u32,
    },
    /// Ends `lease`'s leadership of `name`.
    ElectionResign {
        name: Bytes,
        lease: u64,
    },
    /// The current leader, its value and token.
    ElectionGet {
        name: Bytes,
    },
    /// Takes `count` tokens from bucket `name` (refilling at `rate_per_s`, holding at most `burst`), or answers
    /// `CONFLICT` saying when enough tokens will be there. The first use fixes the bucket's rate and burst.
    RateLimitAcquire {
        name: Bytes,
        rate_per_s: u32,
        burst: u32,
        count: u32,
    },
    /// The bucket's tokens as of the last applied entry.
    RateLimitGet {
        name: Bytes,
    },
    /// Forgets the bucket (its next use starts full, with that use's rate and burst).
    RateLimitReset {
        name: Bytes,
    },
    /// Takes `permits` of semaphore `name` (of `capacity` permits, fixed by the first acquisition) for `lease`, or
    /// answers `CONFLICT` if they do not fit.
    SemaphoreAcquire {
        name: Bytes,
        lease: u64,
        permits: u32,
        capacity: u32,
        /// As for [`CoordRequest::LockAcquire`].
        #[serde(default)]
        wait_ms: u32,
    },
    /// Returns every permit `lease` holds of semaphore `name`.
    SemaphoreRelease {
        name: Bytes,
        lease: u64,
    },
    SemaphoreGet {
        name: Bytes,
    },
    /// Frees `name` if `lease` holds it with `token`.
    LockRelease {
        name: Bytes,
        lease: u64,
        token: u64,
    },
    /// Reads a lock's holder and last token.
    LockGet {
        name: Bytes,
    },
    /// Adds `delta` (negative: subtracts); a counter that does not exist starts at zero of `initial`'s kind.
    CounterAdd {
        name: Bytes,
        delta: i64,
        initial: CounterValue,
    },
    CounterSet {
        name: Bytes,
        value: CounterValue,
    },
    /// Sets `value` only if the counter is `expected` (a missing counter is zero).
    CounterCas {
        name: Bytes,
        expected: CounterValue,
        value: CounterValue,
    },
    CounterGet {
        name: Bytes,
    },
    /// Hands out `count` consecutive numbers, the first of them answered. A sequence starts at 1.
    SequenceNext {
        name: Bytes,
        count: u32,
    },
    /// Answers the election once it differs from what the observer saw last (`last_token`, and whether someone
    /// `leading`): at once if it already does, otherwise parked by the node for up to `wait_ms`. A read.
    ElectionObserve {
        name: Bytes,
        last_token: u64,
        leading: bool,
        #[serde(default)]
        wait_ms: u32,
    },
    /// Creates a queue (or answers the existing one if its configuration is the same).
    QueueCreate {
        name: Bytes,
        visibility_ms: u64,
        max_deliveries: u32,
    },
    /// Appends a message; a `dedup_id` seen in the deduplication window answers the first message instead; messages of
    /// one `group` are delivered one at a time, in order.
    QueueEnqueue {
        name: Bytes,
        body: Bytes,
        dedup_id: Option<Bytes>,
        group: Option<Bytes>,
    },
    /// Delivers up to `count` ready messages for `visibility_ms` (0: the queue's own), each with a new delivery
    /// token. With `wait_ms` the node parks the request while the queue has nothing ready.
    QueueDequeue {
        name: Bytes,
        count: u32,
        visibility_ms: u64,
        /// Who took the messages (shown by `peek`/status); any label, may be empty.
        consumer: Bytes,
        #[serde(default)]
        wait_ms: u32,
    },
    /// Ends delivery `token` of message `id` successfully: the message is gone.
    QueueAck {
        name: Bytes,
        id: u64,
        token: u64,
    },
    /// Ends delivery `token` of message `id` unsuccessfully: it is ready again (or dead after its last delivery).
    QueueNack {
        name: Bytes,
        id: u64,
        token: u64,
    },
    /// Keeps message `id` with delivery `token` for `visibility_ms` (0: the queue's own) from now.
    QueueExtend {
        name: Bytes,
        id: u64,
        token: u64,
        visibility_ms: u64,
    },
    /// The first `count` ready messages, without delivering them.
    QueuePeek {
        name: Bytes,
        count: u32,
    },
    /// The first `count` dead letters.
    QueueDeadLetters {
        name: Bytes,
        count: u32,
    },
    /// Returns up to `count` dead letters to the queue, their delivery counts reset.
    QueueRedrive {
        name: Bytes,
        count: u32,
    },
    QueueGet {
        name: Bytes,
    },
    /// Deletes the queue and every message in it.
    QueueDelete {
        name: Bytes,
    },
    /// The locks and read-write locks held now whose names start with `prefix` (empty: all of them), at most
    /// [`LOCK_LIST_COUNT_MAX`](lock::LOCK_LIST_COUNT_MAX) of each.
    LockList {
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// The queues whose names start with `prefix` (empty: every queue), at most
    /// [`QUEUE_LIST_COUNT_MAX`](queue::QUEUE_LIST_COUNT_MAX).
    QueueList {
        #[serde(default, skip_serializing_if = "crate::kv::no_bytes")]
        prefix: Bytes,
    },
    /// Enters `lease` into barrier `name` of `parties`; the answer says whether the round is open. With `wait_ms` the
    /// node parks the request until it opens.
    BarrierEnter {
        name: Bytes,
        lease: u64,
        parties: u32,
        #[serde(default)]
        wait_ms: u32,
    },
    BarrierLeave {
        name: Bytes,
        lease: u64,
    },
    BarrierGet {
        name: Bytes,
    },
    /// Registers (or re-registers) `instance` of `service`, passing, with a TTL; tied to `lease` if given.
    ServiceRegister {
        service: Bytes,
        instance: Bytes,
        address: String,
        tags: Vec<String>,
        ttl_ms: u64,
        /// How long the instance stays listed (critical) after its TTL passes without a heartbeat.
        deregister_after_ms: u64,
        lease: Option<u64>,
    },
    /// Restarts the instance's TTL and makes it passing.
    ServiceHeartbeat {
        service: Bytes,
        instance: Bytes,
    },
    /// Sets the instance's health and note (and restarts its TTL).
    ServiceHealth {
        service: Bytes,
        instance: Bytes,
        health: Health,
        note: String,
    },
    ServiceDeregister {
        service: Bytes,
        instance: Bytes,
    },
    /// The service's instances, or only the passing ones.
    ServiceDiscover {
        service: Bytes,
        passing_only: bool,
    },
    /// Proposed by the leader when a lease deadline has passed: runs expiry, changes nothing else.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordResponse {
    Lease {
        lease: LeaseInfo,
    },
    Leases {
        leases: Vec<LeaseInfo>,
        truncated: bool,
    },
    /// A lease was revoked; these locks were released and these keys deleted with it.
    Revoked {
        released_locks: Vec<Bytes>,
        deleted_keys: Vec<Bytes>,
    },
    Lock {
        lock: LockInfo,
    },
    Semaphore {
        semaphore: SemaphoreInfo,
    },
    RwLock {
        rwlock: RwLockInfo,
    },
    RateLimit {
        limit: RateLimitInfo,
    },
    Election {
        election: ElectionInfo,
    },
    Released,
    Counter {
        value: Option<CounterValue>,
    },
    Sequence {
        first: u64,
        count: u32,
    },
    Queue {
        queue: QueueInfo,
    },
    Queues {
        queues: Vec<QueueInfo>,
        truncated: bool,
    },
    /// The held locks and read-write locks of a [`CoordRequest::LockList`].
    Locks {
        locks: Vec<LockInfo>,
        rwlocks: Vec<RwLockInfo>,
        truncated: bool,
    },
    Enqueued {
        id: u64,
        /// The deduplication id was seen before: `id` is the first message's, nothing was added.
        duplicate: bool,
    },
    /// What a dequeue handed out (possibly nothing).
    Delivered {
        messages: Vec<QueueMessage>,
    },
    QueueMessage {
        message: QueueMessage,
    },
    QueueMessages {
        messages: Vec<QueueMessage>,
        truncated: bool,
    },
    Acked {
        id: u64,
    },
    Redriven {
        count: u32,
    },
    Barrier {
        barrier: BarrierInfo,
    },
    Service {
        instance: ServiceInstance,
    },
    Services {
        instances: Vec<ServiceInstance>,
    },
    Ticked,
}

impl CoordRequest {
    /// A lease of the whole keyspace (what an admin grants; a scoped token names its prefix in `LeaseGrant`).
    pub fn lease_grant(ttl_ms: u64) -> CoordRequest {
        CoordRequest::LeaseGrant { ttl_ms, prefix: Bytes::new() }
    }

    /// Keeps lease `lease` alive, as a caller with access to the whole keyspace.
    pub fn lease_keep_alive(lease: u64) -> CoordRequest {
        CoordRequest::LeaseKeepAlive { lease, prefix: Bytes::new() }
    }

    /// Revokes lease `lease`, as a caller with access to the whole keyspace.
    pub fn lease_revoke(lease: u64) -> CoordRequest {
        CoordRequest::LeaseRevoke { lease, prefix: Bytes::new() }
    }

    /// Reads lease `lease`, as a caller with access to the whole keyspace.
    pub fn lease_get(lease: u64) -> CoordRequest {
        CoordRequest::LeaseGet { lease, prefix: Bytes::new() }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        if let Some(name) = self.name() {
            validate_name(name)?;
        }
        match self {
            CoordRequest::LeaseGrant { ttl_ms, .. } => lease::validate_ttl(*ttl_ms),
            CoordRequest::LockAcquire { .. } | CoordRequest::RwLockAcquire { .. } => self.validate_wait(),
            CoordRequest::ElectionCampaign { value, .. } => {
                election::validate_value(value)?;
                self.validate_wait()
            }
            CoordRequest::SemaphoreAcquire { permits, capacity, .. } => {
                semaphore::validate(*permits, *capacity)?;
                self.validate_wait()
            }
            CoordRequest::RateLimitAcquire { rate_per_s, burst, count, .. } => {
                ratelimit::validate(*rate_per_s, *burst, *count)
            }
            CoordRequest::CounterCas { expected, value, .. } => counter::same_kind(expected, value),
            CoordRequest::SequenceNext { count, .. } => sequence::validate_count(*count),
            CoordRequest::ElectionObserve { .. } => self.validate_wait(),
            CoordRequest::QueueCreate { visibility_ms, max_deliveries, .. } => {
                queue::validate_config(*visibility_ms, *max_deliveries)
            }
            CoordRequest::QueueEnqueue { body, dedup_id, group, .. } => {
                queue::validate_body(body)?;
                queue::validate_tag("deduplication id", dedup_id.as_deref().map(|id| id.as_slice()))?;
                queue::validate_tag("group", group.as_deref().map(|group| group.as_slice()))
            }
            CoordRequest::QueueDequeue { count, visibility_ms, consumer, .. } => {
                queue::validate_count(*count, queue::QUEUE_DEQUEUE_COUNT_MAX)?;
                queue::validate_visibility_override(*visibility_ms)?;
                if consumer.len() > queue::QUEUE_TAG_BYTES_MAX {
                    return Err(WireError::too_large("consumer name is too long"));
                }
                self.validate_wait()
            }
            CoordRequest::QueueExtend { visibility_ms, .. } => queue::validate_visibility_override(*visibility_ms),
            CoordRequest::QueuePeek { count, .. }
            | CoordRequest::QueueDeadLetters { count, .. }
            | CoordRequest::QueueRedrive { count, .. } => queue::validate_count(*count, queue::QUEUE_LIST_COUNT_MAX),
            CoordRequest::BarrierEnter { parties, .. } => {
                barrier::validate_parties(*parties)?;
                self.validate_wait()
            }
            CoordRequest::ServiceRegister { instance, address, tags, ttl_ms, deregister_after_ms, .. } => {
                service::validate_registration(instance, address, tags, *ttl_ms, *deregister_after_ms)
            }
            CoordRequest::ServiceHeartbeat { instance, .. } | CoordRequest::ServiceDeregister { instance, .. } => {
                service::validate_instance(instance)
            }
            CoordRequest::ServiceHealth { instance, note, .. } => {
                service::validate_instance(instance)?;
                service::validate_field("note", note.as_bytes())
            }
            _ => Ok(()),
        }
    }

    fn validate_wait(&self) -> Result<(), WireError> {
        if self.wait_ms() > LOCK_WAIT_MS_MAX {
            return Err(WireError::invalid(format!("a wait is at most {LOCK_WAIT_MS_MAX} ms")));
        }
        Ok(())
    }

    /// How long the node may park this request while what it waits for is not there (0 for everything else).
    pub fn wait_ms(&self) -> u32 {
        match self {
            CoordRequest::LockAcquire { wait_ms, .. }
            | CoordRequest::RwLockAcquire { wait_ms, .. }
            | CoordRequest::ElectionCampaign { wait_ms, .. }
            | CoordRequest::SemaphoreAcquire { wait_ms, .. }
            | CoordRequest::ElectionObserve { wait_ms, .. }
            | CoordRequest::QueueDequeue { wait_ms, .. }
            | CoordRequest::BarrierEnter { wait_ms, .. } => *wait_ms,
            _ => 0,
        }
    }

    /// Whether parked requests of one resource on one node take turns, first come first served: acquisitions and
    /// dequeues do (one release or message wakes one of them); barrier parties and election observers do not (they
    /// all wait for the same thing, and a barrier's parties must each get to enter).
    pub fn takes_turns(&self) -> bool {
        !matches!(self, CoordRequest::BarrierEnter { .. } | CoordRequest::ElectionObserve { .. })
    }

    /// Whether a successful answer ends a parked wait: a dequeue that got nothing, an enter of a barrier that has not
    /// opened and an observation of an unchanged election wait on.
    pub fn satisfied_by(&self, response: &CoordResponse) -> bool {
        match (self, response) {
            (CoordRequest::QueueDequeue { .. }, CoordResponse::Delivered { messages }) => !messages.is_empty(),
            (CoordRequest::BarrierEnter { .. }, CoordResponse::Barrier { barrier }) => barrier.open,
            (CoordRequest::ElectionObserve { last_token, leading, .. }, CoordResponse::Election { election }) => {
                election.last_token != *last_token || election.leader.is_some() != *leading
            }
            _ => true,
        }
    }

    /// The request as it goes into the log: the wait is the node's business, never replicated.
    pub fn without_wait(&self) -> CoordRequest {
        let mut request = self.clone();
        if let CoordRequest::LockAcquire { wait_ms, .. }
        | CoordRequest::RwLockAcquire { wait_ms, .. }
        | CoordRequest::ElectionCampaign { wait_ms, .. }
        | CoordRequest::SemaphoreAcquire { wait_ms, .. }
        | CoordRequest::ElectionObserve { wait_ms, .. }
        | CoordRequest::QueueDequeue { wait_ms, .. }
        | CoordRequest::BarrierEnter { wait_ms, .. } = &mut request
        {
            *wait_ms = 0;
        }
        request
    }

    /// Whether `event` may have brought what this parked request waits for, so it should try again.
    pub fn woken_by(&self, event: &CoordEvent) -> bool {
        match (self, event) {
            (CoordRequest::LockAcquire { name, .. }, CoordEvent::LockReleased { name: freed, .. })
            | (CoordRequest::RwLockAcquire { name, .. }, CoordEvent::RwLockReleased { name: freed, .. })
            | (CoordRequest::ElectionCampaign { name, .. }, CoordEvent::LeaderResigned { name: freed, .. })
            | (CoordRequest::SemaphoreAcquire { name, .. }, CoordEvent::SemaphoreReleased { name: freed, .. })
            | (CoordRequest::ElectionObserve { name, .. }, CoordEvent::LeaderElected { name: freed, .. })
            | (CoordRequest::ElectionObserve { name, .. }, CoordEvent::LeaderResigned { name: freed, .. })
            | (CoordRequest::BarrierEnter { name, .. }, CoordEvent::BarrierOpened { name: freed, .. })
            | (CoordRequest::BarrierEnter { name, .. }, CoordEvent::BarrierClosed { name: freed, .. })
            // A message becomes ready when enqueued or returned, and when one before it in its group is done.
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueEnqueued { name: freed, .. })
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueReturned { name: freed, .. })
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueAcked { name: freed, .. })
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueDeadLettered { name: freed, .. })
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueRedriven { name: freed, .. })
            | (CoordRequest::QueueDequeue { name, .. }, CoordEvent::QueueDeleted { name: freed }) => name == freed,
            _ => false,
        }
    }

    /// Whether the request changes state and therefore goes through the Raft log.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            CoordRequest::LeaseGet { .. }
                | CoordRequest::LeaseList { .. }
                | CoordRequest::LockGet { .. }
                | CoordRequest::SemaphoreGet { .. }
                | CoordRequest::RwLockGet { .. }
                | CoordRequest::RateLimitGet { .. }
                | CoordRequest::ElectionGet { .. }
                | CoordRequest::CounterGet { .. }
                | CoordRequest::ElectionObserve { .. }
                | CoordRequest::QueuePeek { .. }
                | CoordRequest::QueueDeadLetters { .. }
                | CoordRequest::QueueGet { .. }
                | CoordRequest::QueueList { .. }
                | CoordRequest::LockList { .. }
                | CoordRequest::BarrierGet { .. }
                | CoordRequest::ServiceDiscover { .. }
        )
    }

    /// The resource the request names (`None` for lease operations and ticks, which name none).
    pub fn name(&self) -> Option<&[u8]> {
        match self {
            CoordRequest::LockAcquire { name, .. }
            | CoordRequest::LockRelease { name, .. }
            | CoordRequest::LockGet { name }
            | CoordRequest::SemaphoreAcquire { name, .. }
            | CoordRequest::SemaphoreRelease { name, .. }
            | CoordRequest::SemaphoreGet { name }
            | CoordRequest::RwLockAcquire { name, .. }
            | CoordRequest::RwLockDowngrade { name, .. }
            | CoordRequest::RwLockRelease { name, .. }
            | CoordRequest::RwLockGet { name }
            | CoordRequest::RateLimitAcquire { name, .. }
            | CoordRequest::RateLimitGet { name }
            | CoordRequest::RateLimitReset { name }
            | CoordRequest::ElectionCampaign { name, .. }
            | CoordRequest::ElectionResign { name, .. }
            | CoordRequest::ElectionGet { name }
            | CoordRequest::CounterAdd { name, .. }
            | CoordRequest::CounterSet { name, .. }
            | CoordRequest::CounterCas { name, .. }
            | CoordRequest::CounterGet { name }
            | CoordRequest::SequenceNext { name, .. }
            | CoordRequest::ElectionObserve { name, .. }
            | CoordRequest::QueueCreate { name, .. }
            | CoordRequest::QueueEnqueue { name, .. }
            | CoordRequest::QueueDequeue { name, .. }
            | CoordRequest::QueueAck { name, .. }
            | CoordRequest::QueueNack { name, .. }
            | CoordRequest::QueueExtend { name, .. }
            | CoordRequest::QueuePeek { name, .. }
            | CoordRequest::QueueDeadLetters { name, .. }
            | CoordRequest::QueueRedrive { name, .. }
            | CoordRequest::QueueGet { name }
            | CoordRequest::QueueDelete { name }
            | CoordRequest::BarrierEnter { name, .. }
            | CoordRequest::BarrierLeave { name, .. }
            | CoordRequest::BarrierGet { name }
            | CoordRequest::ServiceRegister { service: name, .. }
            | CoordRequest::ServiceHeartbeat { service: name, .. }
            | CoordRequest::ServiceHealth { service: name, .. }
            | CoordRequest::ServiceDeregister { service: name, .. }
            | CoordRequest::ServiceDiscover { service: name, .. } => Some(name),
            // A lease's name is its prefix, a listing's the prefix it lists; the whole keyspace when there is none.
            CoordRequest::LeaseGrant { prefix, .. }
            | CoordRequest::LeaseKeepAlive { prefix, .. }
            | CoordRequest::LeaseRevoke { prefix, .. }
            | CoordRequest::LeaseGet { prefix, .. }
            | CoordRequest::LeaseList { prefix }
            | CoordRequest::QueueList { prefix }
            | CoordRequest::LockList { prefix } => (!prefix.is_empty()).then_some(prefix.as_slice()),
            CoordRequest::Tick => None,
        }
    }

    /// Bytes the request weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        let carried = match self {
            CoordRequest::ElectionCampaign { value, .. } => value.len(),
            CoordRequest::QueueEnqueue { body, dedup_id, group, .. } => {
                body.len() + dedup_id.as_ref().map_or(0, |id| id.len()) + group.as_ref().map_or(0, |group| group.len())
            }
            CoordRequest::QueueDequeue { consumer, .. } => consumer.len(),
            CoordRequest::ServiceRegister { instance, address, tags, .. } => {
                instance.len() + address.len() + tags.iter().map(String::len).sum::<usize>()
            }
            CoordRequest::ServiceHeartbeat { instance, .. } | CoordRequest::ServiceDeregister { instance, .. } => {
                instance.len()
            }
            CoordRequest::ServiceHealth { instance, note, .. } => instance.len() + note.len(),
            _ => 0,
        };
        self.name().map_or(0, <[u8]>::len) + carried + 32
    }
}

/// Longest a request may be parked (also bounded by the request's deadline).
pub const LOCK_WAIT_MS_MAX: u32 = 5 * 60 * 1000;

pub fn validate_name(name: &[u8]) -> Result<(), WireError> {
    if name.is_empty() {
        return Err(WireError::invalid("name must not be empty"));
    }
    if name.len() > KEY_SIZE_BYTES_MAX {
        return Err(WireError::too_large(format!("name is {} bytes, the limit is {KEY_SIZE_BYTES_MAX}", name.len())));
    }
    Ok(())
}

/// Row key prefixes of the coordination table.
pub(crate) mod keys {
    pub const CLOCK: &[u8] = b"m/clock";
    pub const NEXT_LEASE: &[u8] = b"m/next_lease";
    pub const LEASE: &[u8] = b"l/";
    pub const EXPIRY: &[u8] = b"x/";
    pub const LOCK: &[u8] = b"k/";
    pub const COUNTER: &[u8] = b"c/";
    pub const SEQUENCE: &[u8] = b"s/";
    pub const SEMAPHORE: &[u8] = b"p/";
    pub const RWLOCK: &[u8] = b"r/";
    pub const RATE_LIMIT: &[u8] = b"t/";
    pub const ELECTION: &[u8] = b"e/";
    /// KV key to the lease it is tied to.
    pub const KEY_LEASE: &[u8] = b"kl/";
    /// Timers of the log clock: deadline, kind, subject (see [`super::timer`]).
    pub const TIMER: &[u8] = b"w/";
    pub const QUEUE: &[u8] = b"q/";
    /// Rows of one queue are keyed by [`scoped`] queue name, then the message id.
    pub const QUEUE_MESSAGE: &[u8] = b"qm/";
    pub const QUEUE_READY: &[u8] = b"qr/";
    pub const QUEUE_DEAD: &[u8] = b"qd/";
    pub const QUEUE_GROUP: &[u8] = b"qg/";
    pub const QUEUE_GROUP_WAITING: &[u8] = b"qw/";
    pub const QUEUE_DEDUP: &[u8] = b"qu/";
    pub const BARRIER: &[u8] = b"b/";
    /// Registrations, keyed by [`scoped`] service name, then the instance.
    pub const SERVICE: &[u8] = b"v/";
    /// Blob records, keyed by hash (see [`crate::blob`]).
    pub const BLOB: &[u8] = b"B/";
    /// Which node holds or was assigned which blob: node id (8 bytes), then the hash.
    pub const BLOB_NODE: &[u8] = b"Bn/";
    /// Which KV key points at which blob: the hash (32 bytes), then the key. Token scopes over blobs read it.
    pub const BLOB_KEY: &[u8] = b"Bk/";

    pub fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + rest.len());
        key.extend_from_slice(prefix);
        key.extend_from_slice(rest);
        key
    }

    /// `prefix`, then `name` behind its length (two bytes, big-endian), so that the rows of one name are a prefix of
    /// their own that no other name's rows start with. Names are at most 4 KiB, so the length always fits.
    pub fn scoped(prefix: &[u8], name: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + 2 + name.len() + 8);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&(name.len() as u16).to_be_bytes());
        key.extend_from_slice(name);
        key
    }

    /// Splits a [`scoped`] name off the front of `rest`, answering the name and what follows it.
    pub fn unscope(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let length = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        Some((rest.get(2..2 + length)?, rest.get(2 + length..)?))
    }
}

pub(crate) fn load<T: DeserializeOwned>(store: &impl CoordRead, key: &[u8]) -> Result<Option<T>, StorageFault> {
    match store.coord_get(key)? {
        Some(bytes) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StorageFault> {
    rmp_serde::from_slice(bytes)
        .map_err(|error| StorageFault(format!("corrupt coordination row {}: {error}", String::from_utf8_lossy(key))))
}

/// The rows under `prefix`, decoded, in key order: at most `most` of them, and whether more were left out.
pub(crate) fn load_under<T: DeserializeOwned>(
    store: &impl CoordRead,
    prefix: &[u8],
    most: usize,
) -> Result<(Vec<T>, bool), StorageFault> {
    load_under_where(store, prefix, most, usize::MAX, |_| true)
}

/// The rows under `prefix` that `keep` takes, decoded, in key order: at most `most` of them, reading at most
/// `scan_max` rows, and whether more were left out (by either limit).
pub(crate) fn load_under_where<T: DeserializeOwned>(
    store: &impl CoordRead,
    prefix: &[u8],
    most: usize,
    scan_max: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, bool), StorageFault> {
    let mut rows = Vec::new();
    let (mut scanned, mut truncated, mut fault) = (0usize, false, None);
    store.coord_scan(prefix, &mut |key, bytes| {
        if rows.len() >= most || scanned >= scan_max {
            truncated = true;
            return ControlFlow::Break(());
        }
        scanned += 1;
        match decode(key, bytes) {
            Ok(row) => {
                if keep(&row) {
                    rows.push(row);
                }
                ControlFlow::Continue(())
            }
            Err(error) => {
                fault = Some(error);
                ControlFlow::Break(())
            }
        }
    })?;
    match fault {
        Some(fault) => Err(fault),
        None => Ok((rows, truncated)),
    }
}

pub(crate) fn save<T: Serialize>(store: &mut impl CoordWrite, key: &[u8], value: &T) -> Result<(), StorageFault> {
    let bytes =
        rmp_serde::to_vec_named(value).map_err(|error| StorageFault(format!("cannot encode a row: {error}")))?;
    store.coord_put(key, &bytes)
}

/// The state machine's clock after a proposal stamped `stamp_ms`: never earlier than any stamp applied before.
pub fn advance_clock(store: &mut impl CoordWrite, stamp_ms: u64) -> Result<u64, StorageFault> {
    let now = clock(store)?.max(stamp_ms);
    store.coord_put(keys::CLOCK, &now.to_be_bytes())?;
    Ok(now)
}

/// The state machine's clock as last applied.
pub fn clock(store: &impl CoordRead) -> Result<u64, StorageFault> {
    match store.coord_get(keys::CLOCK)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StorageFault("clock row is not 8 bytes".into()))?,
        )),
        None => Ok(0),
    }
}

/// Revokes every lease whose deadline is at or before `now` and fires every timer due by then (at most
/// [`EXPIRIES_PER_PROPOSAL_MAX`](lease::EXPIRIES_PER_PROPOSAL_MAX) leases and
/// [`TIMERS_PER_PROPOSAL_MAX`](timer::TIMERS_PER_PROPOSAL_MAX) timers; the next proposal takes the rest).
pub fn expire_due(tables: &mut (impl KvWrite + CoordWrite), revision: &mut u64, now: u64) -> Result<(), StorageFault> {
    lease::expire_due(tables, revision, now)?;
    timer::fire_due(tables, now)?;
    Ok(())
}

/// The earliest deadline of a lease or timer: the leader proposes a tick once its clock passes it.
pub fn next_deadline(store: &impl CoordRead) -> Result<Option<u64>, StorageFault> {
    let lease = lease::next_deadline(store)?;
    let timer = timer::next_deadline(store)?;
    Ok(match (lease, timer) {
        (Some(lease), Some(timer)) => Some(lease.min(timer)),
        (one, other) => one.or(other),
    })
}

/// Applies one coordination command at time `now`. Errors that are the caller's (unknown lease, held lock, overflow)
/// are answers; only storage faults are `Err`.
pub fn apply(
    store: &mut (impl KvWrite + CoordWrite),
    revision: &mut u64,
    now: u64,
    request: &CoordRequest,
) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if let Err(error) = request.validate() {
        return Ok(Err(error));
    }
    match request {
        CoordRequest::LeaseGrant { ttl_ms, prefix } => lease::grant(store, now, *ttl_ms, prefix),
        CoordRequest::LeaseKeepAlive { lease, prefix } => lease::keep_alive(store, now, *lease, prefix),
        CoordRequest::LeaseRevoke { lease, prefix } => lease::revoke_request(store, revision, *lease, prefix),
        CoordRequest::LockAcquire { name, lease, .. } => lock::acquire(store, now, name, *lease),
        CoordRequest::LockRelease { name, lease, token } => lock::release(store, name, *lease, *token),
        CoordRequest::SemaphoreAcquire { name, lease, permits, capacity, .. } => {
            semaphore::acquire(store, name, *lease, *permits, *capacity)
        }
        CoordRequest::SemaphoreRelease { name, lease } => semaphore::release(store, name, *lease),
        CoordRequest::RwLockAcquire { name, lease, mode, .. } => rwlock::acquire(store, name, *lease, *mode),
        CoordRequest::RwLockDowngrade { name, lease } => rwlock::downgrade(store, name, *lease),
        CoordRequest::RwLockRelease { name, lease } => rwlock::release(store, name, *lease),
        CoordRequest::RateLimitAcquire { name, rate_per_s, burst, count } => {
            ratelimit::try_acquire(store, now, name, *rate_per_s, *burst, *count)
        }
        CoordRequest::RateLimitReset { name } => ratelimit::reset(store, name),
        CoordRequest::ElectionCampaign { name, lease, value, .. } => {
            election::campaign(store, now, name, *lease, value)
        }
        CoordRequest::ElectionResign { name, lease } => election::resign(store, name, *lease),
        CoordRequest::CounterAdd { name, delta, initial } => counter::add(store, name, *delta, initial),
        CoordRequest::CounterSet { name, value } => counter::set(store, name, value),
        CoordRequest::CounterCas { name, expected, value } => counter::cas(store, name, expected, value),
        CoordRequest::SequenceNext { name, count } => sequence::next(store, name, *count),
        CoordRequest::QueueCreate { name, visibility_ms, max_deliveries } => {
            queue::create(store, now, name, *visibility_ms, *max_deliveries)
        }
        CoordRequest::QueueEnqueue { name, body, dedup_id, group } => queue::enqueue(
            store,
            now,
            name,
            body,
            dedup_id.as_deref().map(|id| id.as_slice()),
            group.as_deref().map(|group| group.as_slice()),
        ),
        CoordRequest::QueueDequeue { name, count, visibility_ms, consumer, .. } => {
            queue::dequeue(store, now, name, *count, *visibility_ms, consumer)
        }
        CoordRequest::QueueAck { name, id, token } => queue::ack(store, name, *id, *token),
        CoordRequest::QueueNack { name, id, token } => queue::nack(store, name, *id, *token),
        CoordRequest::QueueExtend { name, id, token, visibility_ms } => {
            queue::extend(store, now, name, *id, *token, *visibility_ms)
        }
        CoordRequest::QueueRedrive { name, count } => queue::redrive(store, name, *count),
        CoordRequest::QueueDelete { name } => queue::delete(store, name),
        CoordRequest::BarrierEnter { name, lease, parties, .. } => barrier::enter(store, name, *lease, *parties),
        CoordRequest::BarrierLeave { name, lease } => barrier::leave(store, name, *lease),
        CoordRequest::ServiceRegister { service, instance, address, tags, ttl_ms, deregister_after_ms, lease } => {
            service::register(store, now, service, instance, address, tags, *ttl_ms, *deregister_after_ms, *lease)
        }
        CoordRequest::ServiceHeartbeat { service, instance } => service::heartbeat(store, now, service, instance, None),
        CoordRequest::ServiceHealth { service, instance, health, note } => {
            service::heartbeat(store, now, service, instance, Some((*health, note)))
        }
        CoordRequest::ServiceDeregister { service, instance } => service::deregister(store, service, instance),
        CoordRequest::Tick => Ok(Ok(CoordResponse::Ticked)),
        // The rest are reads (`is_write` is false): answered from the state as it is.
        _ => read(store, request),
    }
}

/// Whether `token` is current at resource `name` of `kind`: the condition of a [`Fence`](crate::kv::CompareTarget::Fence).
pub fn fence_holds(
    store: &impl CoordRead,
    name: &[u8],
    kind: crate::kv::FenceKind,
    token: u64,
) -> Result<bool, StorageFault> {
    use crate::kv::FenceKind;
    Ok(match kind {
        FenceKind::Lock => lock::current_token(store, name)? == Some(token),
        FenceKind::RwLock => rwlock::write_token(store, name)? == Some(token),
        FenceKind::Semaphore => semaphore::holds_token(store, name, token)?,
        FenceKind::Election => election::leader_token(store, name)? == Some(token),
        FenceKind::QueueMessage(id) => queue::delivery_token(store, name, id)? == Some(token),
    })
}

/// The number sequence `name` hands out next.
pub fn sequence_peek(store: &impl CoordRead, name: &[u8]) -> Result<u64, StorageFault> {
    sequence::peek(store, name)
}

/// The token of message `id`'s current delivery from queue `name`, if it is in flight.
pub fn queue_delivery_token(store: &impl CoordRead, name: &[u8], id: u64) -> Result<Option<u64>, StorageFault> {
    queue::delivery_token(store, name, id)
}

/// Answers a read-only coordination request from the applied state.
pub fn read(store: &impl CoordRead, request: &CoordRequest) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if let Err(error) = request.validate() {
        return Ok(Err(error));
    }
    match request {
        CoordRequest::LeaseGet { lease, prefix } => lease::get(store, *lease, prefix),
        CoordRequest::LeaseList { prefix } => lease::list(store, prefix),
        CoordRequest::LockGet { name } => lock::get(store, name),
        CoordRequest::SemaphoreGet { name } => semaphore::get(store, name),
        CoordRequest::RwLockGet { name } => rwlock::get(store, name),
        CoordRequest::RateLimitGet { name } => ratelimit::get(store, name),
        CoordRequest::ElectionGet { name } | CoordRequest::ElectionObserve { name, .. } => election::get(store, name),
        CoordRequest::CounterGet { name } => counter::get(store, name),
        CoordRequest::QueuePeek { name, count } => queue::list_messages(store, name, *count, false),
        CoordRequest::QueueDeadLetters { name, count } => queue::list_messages(store, name, *count, true),
        CoordRequest::QueueGet { name } => queue::get(store, name),
        CoordRequest::QueueList { prefix } => queue::list(store, prefix),
        CoordRequest::LockList { prefix } => lock::list(store, prefix),
        CoordRequest::BarrierGet { name } => barrier::get(store, name),
        CoordRequest::ServiceDiscover { service, passing_only } => service::discover(store, service, *passing_only),
        _ => Ok(Err(WireError::invalid("not a read request"))),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod queue_tests;
