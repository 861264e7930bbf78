//! Hooks: every event the cluster commits, on a subject, in one ordered log, for the hook router to deliver.
//!
//! The state machine gives every event it commits (a KV change, a coordination event, a membership change, a new
//! leader, a user event from `pando hook publish`, a dead letter) the next number of the **hook log**, its
//! *sequence*, and a subject ([`subject`]), and records it in the same transaction as the change, so every replica
//! holds the same log and a snapshot carries it. Within one command, its KV changes come first, then its
//! coordination events. The log is trimmed by the leader's retention (never past an event a durable subscription
//! still has to begin, up to [`HOOK_LOG_EVENTS_MAX`](crate::limits::HOOK_LOG_EVENTS_MAX) events).
//!
//! Subjects (documented in the README, tested in `tests.rs`):
//!
//! | event | subject |
//! |---|---|
//! | KV put / delete | `kv.put.<key>`, `kv.delete.<key>` (the key's tokens, [`subject::encode_key`]) |
//! | lease | `lease.granted.<id>`, `lease.revoked.<id>`, `lease.expired.<id>` |
//! | lock, rwlock | `lock.acquired.<name>`, `lock.released.<name>`, `rwlock.acquired.<name>`, `rwlock.released.<name>` |
//! | election | `election.elected.<name>`, `election.resigned.<name>`, `election.proclaimed.<name>` |
//! | semaphore, counter, sequence, rate limit | `semaphore.acquired.<name>`, `semaphore.released.<name>`, `counter.changed.<name>`, `sequence.advanced.<name>`, `ratelimit.taken.<name>`, `ratelimit.reset.<name>` |
//! | queue | `queue.<created, enqueued, delivered, acked, returned, dead, redriven, deleted>.<name>` |
//! | barrier | `barrier.<entered, left, opened, closed>.<name>` |
//! | service | `service.<registered, health, deregistered>.<service>` |
//! | plugin | `plugin.changed.<plugin>` |
//! | blob | `blob.<held, assigned, released, collected>.<hash>` |
//! | token | `token.revoked.<accessor hex>` |
//! | cluster | `cluster.leader_elected`, `cluster.member.changed` |
//! | hooks | `sys.hook.dlq.<hook>` (an event went to a hook's dead-letter list) |
//! | user | anything else, from `pando hook publish` |
//!
//! Names are bytes and go through the same token encoding as keys.

pub mod api;
pub mod durable;
pub mod json;
pub mod subject;

use serde::{Deserialize, Serialize};

use crate::coord::{CoordEvent, CoordRead, CoordWrite, decode, save};
use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::{HOOK_PAYLOAD_BYTES_MAX, HOOK_TRIM_ROWS_PER_PROPOSAL_MAX};
use crate::state_machine::StorageFault;
use crate::watch::{EventKind, KvEvent};

/// Rows of the hook log, keyed by sequence (8 bytes, big-endian).
pub(crate) const LOG: &[u8] = b"h/";
/// The next sequence to give out (absent: 1).
const NEXT_SEQ: &[u8] = b"m/hook_seq";
/// The oldest sequence the log may still hold (absent: 1): everything below was trimmed.
const FLOOR: &[u8] = b"m/hook_floor";

/// First tokens the cluster publishes on; a user event may not use them.
pub const RESERVED_ROOTS: [&str; 18] = [
    "kv",
    "fs",
    "lease",
    "lock",
    "rwlock",
    "election",
    "semaphore",
    "counter",
    "sequence",
    "ratelimit",
    "queue",
    "barrier",
    "service",
    "plugin",
    "blob",
    "token",
    "cluster",
    "sys",
];

/// One committed event, as the hook log holds it and every subscriber receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookEvent {
    /// Its position in the hook log: consecutive, the same on every replica.
    pub seq: u64,
    pub subject: String,
    /// Log time when it was applied.
    pub time_ms: u64,
    /// The KV revision once its entry was applied (for a KV change, the change's own revision).
    pub revision: u64,
    pub body: EventBody,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    Kv(KvEvent),
    Coord(CoordEvent),
    Cluster(ClusterEvent),
    /// An event of the hook system itself.
    Hook(HookNotice),
    /// Published by a client: opaque bytes (JSON by convention).
    User {
        data: Bytes,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterEvent {
    /// A leader committed its first entry of `term`.
    LeaderElected { node: u64, term: u64 },
    /// The membership changed: who votes and who learns from now on.
    MembershipChanged { voters: Vec<u64>, learners: Vec<u64> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookNotice {
    /// Event `seq` went to hook `hook`'s dead-letter list after `attempts` attempts.
    DeadLettered { hook: String, seq: u64, attempts: u32, error: String },
}

/// The subject of a KV change.
pub fn kv_subject(event: &KvEvent) -> String {
    let mut subject = String::from(if event.kind == EventKind::Put { "kv.put" } else { "kv.delete" });
    subject::push_key_tokens(&mut subject, event.key());
    subject
}

fn named(root: &str, what: &str, name: &[u8]) -> String {
    let mut subject = format!("{root}.{what}");
    subject::push_key_tokens(&mut subject, name);
    subject
}

/// The subject of every change to the file system (inodes and entries that changed, for the mounts' caches).
pub const FS_CHANGED_SUBJECT: &str = "fs.changed";

/// The subject of a coordination event.
pub fn coord_subject(event: &CoordEvent) -> String {
    use CoordEvent as E;
    match event {
        E::LeaseGranted { lease, .. } => format!("lease.granted.{lease}"),
        E::LeaseEnded { lease, expired: true } => format!("lease.expired.{lease}"),
        E::LeaseEnded { lease, expired: false } => format!("lease.revoked.{lease}"),
        E::LockAcquired { name, .. } => named("lock", "acquired", name),
        E::LockReleased { name, .. } => named("lock", "released", name),
        E::RwLockAcquired { name, .. } => named("rwlock", "acquired", name),
        E::RwLockReleased { name, .. } => named("rwlock", "released", name),
        E::LeaderElected { name, .. } => named("election", "elected", name),
        E::LeaderResigned { name, .. } => named("election", "resigned", name),
        E::LeaderProclaimed { name, .. } => named("election", "proclaimed", name),
        E::SemaphoreAcquired { name, .. } => named("semaphore", "acquired", name),
        E::SemaphoreReleased { name, .. } => named("semaphore", "released", name),
        E::CounterChanged { name, .. } => named("counter", "changed", name),
        E::SequenceAdvanced { name, .. } => named("sequence", "advanced", name),
        E::RateLimitTaken { name, .. } => named("ratelimit", "taken", name),
        E::RateLimitReset { name } => named("ratelimit", "reset", name),
        E::QueueCreated { name } => named("queue", "created", name),
        E::QueueEnqueued { name, .. } => named("queue", "enqueued", name),
        E::QueueDelivered { name, .. } => named("queue", "delivered", name),
        E::QueueAcked { name, .. } => named("queue", "acked", name),
        E::QueueReturned { name, .. } => named("queue", "returned", name),
        E::QueueDeadLettered { name, .. } => named("queue", "dead", name),
        E::QueueRedriven { name, .. } => named("queue", "redriven", name),
        E::QueueDeleted { name } => named("queue", "deleted", name),
        E::BarrierEntered { name, .. } => named("barrier", "entered", name),
        E::BarrierLeft { name, .. } => named("barrier", "left", name),
        E::BarrierOpened { name, .. } => named("barrier", "opened", name),
        E::BarrierClosed { name, .. } => named("barrier", "closed", name),
        E::TokenRevoked { accessor } => format!("token.revoked.{}", hex(accessor)),
        E::PluginChanged { name, .. } => named("plugin", "changed", name.as_bytes()),
        E::BlobHeld { hash, .. } => format!("blob.held.{}", hash.to_hex()),
        E::BlobAssigned { hash, .. } => format!("blob.assigned.{}", hash.to_hex()),
        E::BlobReleased { hash, .. } => format!("blob.released.{}", hash.to_hex()),
        E::BlobCollected { hash } => format!("blob.collected.{}", hash.to_hex()),
        E::ServiceRegistered { service, .. } => named("service", "registered", service),
        E::ServiceHealthChanged { service, .. } => named("service", "health", service),
        E::ServiceDeregistered { service, .. } => named("service", "deregistered", service),
        E::Job { queue, kind, .. } => named("job", kind.as_str(), queue.as_bytes()),
        E::FsChanged { .. } => FS_CHANGED_SUBJECT.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The subject of a cluster event.
pub fn cluster_subject(event: &ClusterEvent) -> String {
    match event {
        ClusterEvent::LeaderElected { .. } => "cluster.leader_elected".to_string(),
        ClusterEvent::MembershipChanged { .. } => "cluster.member.changed".to_string(),
    }
}

/// The subject of a hook notice.
pub fn notice_subject(notice: &HookNotice) -> String {
    match notice {
        HookNotice::DeadLettered { hook, .. } => format!("sys.hook.dlq.{hook}"),
    }
}

/// Checks a user event before it is proposed: a valid subject outside the cluster's own roots, a bounded payload.
pub fn validate_publish(subject: &str, data: &[u8]) -> Result<(), WireError> {
    subject::validate_subject(subject)?;
    let root = subject.split('.').next().unwrap_or_default();
    if RESERVED_ROOTS.contains(&root) {
        return Err(WireError::invalid(format!(
            "subjects under `{root}.` are the cluster's own; publish under another first token"
        )));
    }
    if data.len() > HOOK_PAYLOAD_BYTES_MAX {
        return Err(WireError::too_large(format!(
            "an event's payload is {} bytes, the limit is {HOOK_PAYLOAD_BYTES_MAX}",
            data.len()
        )));
    }
    Ok(())
}

fn read_u64(store: &impl CoordRead, row: &[u8], default: u64) -> Result<u64, StorageFault> {
    match store.coord_get(row)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| StorageFault(format!("{} is not 8 bytes", String::from_utf8_lossy(row))))?,
        )),
        None => Ok(default),
    }
}

/// The sequence the next event will take.
pub fn next_seq(store: &impl CoordRead) -> Result<u64, StorageFault> {
    read_u64(store, NEXT_SEQ, 1)
}

/// The oldest sequence the log may hold: everything below it was trimmed.
pub fn floor(store: &impl CoordRead) -> Result<u64, StorageFault> {
    read_u64(store, FLOOR, 1)
}

fn log_key(seq: u64) -> Vec<u8> {
    crate::coord::keys::with(LOG, &seq.to_be_bytes())
}

/// Gives each of `bodies` the next sequence, records it in the log at log time `now`, and answers the events.
pub fn record(
    store: &mut impl CoordWrite,
    now: u64,
    revision: u64,
    bodies: impl IntoIterator<Item = (String, EventBody)>,
) -> Result<Vec<HookEvent>, StorageFault> {
    let mut seq = next_seq(store)?;
    let first = seq;
    let mut events = Vec::new();
    for (subject, body) in bodies {
        let event = HookEvent { seq, subject, time_ms: now, revision, body };
        save(store, &log_key(seq), &event)?;
        events.push(event);
        seq += 1;
    }
    if seq != first {
        store.coord_put(NEXT_SEQ, &seq.to_be_bytes())?;
    }
    Ok(events)
}

/// The bodies of what one command changed: its KV events, then its coordination events.
pub fn bodies_of(kv: Vec<KvEvent>, coord: &[CoordEvent]) -> Vec<(String, EventBody)> {
    let mut bodies = Vec::with_capacity(kv.len() + coord.len());
    for event in kv {
        bodies.push((kv_subject(&event), EventBody::Kv(event)));
    }
    for event in coord {
        bodies.push((coord_subject(event), EventBody::Coord(event.clone())));
    }
    bodies
}

/// Visits the log's events from `from` on, in order, until `visit` breaks; `visit` also gets the row's size, so a
/// reader can bound the bytes it takes ([`HOOK_LOG_READ_BYTES_MAX`](crate::limits::HOOK_LOG_READ_BYTES_MAX)).
pub fn scan_log(
    store: &impl CoordRead,
    from: u64,
    visit: &mut dyn FnMut(HookEvent, usize) -> std::ops::ControlFlow<()>,
) -> Result<(), StorageFault> {
    // Rows are keyed by sequence, so a scan of the prefix from `from` is in order; skip what comes before it.
    let mut fault = None;
    let start = from.max(floor(store)?);
    let mut scan_from = |key: &[u8], bytes: &[u8]| {
        let Some(seq) = key.get(LOG.len()..).and_then(|raw| raw.try_into().ok()).map(u64::from_be_bytes) else {
            fault = Some(StorageFault("a hook log row has a malformed key".into()));
            return std::ops::ControlFlow::Break(());
        };
        if seq < start {
            return std::ops::ControlFlow::Continue(());
        }
        match decode::<HookEvent>(key, bytes) {
            Ok(event) => visit(event, bytes.len()),
            Err(error) => {
                fault = Some(error);
                std::ops::ControlFlow::Break(())
            }
        }
    };
    store.coord_scan_from(LOG, &log_key(start), &mut scan_from)?;
    fault.map_or(Ok(()), Err)
}

/// Reads at most `most` events from `from` on, and about [`HOOK_LOG_READ_BYTES_MAX`] bytes of them (at least one).
///
/// [`HOOK_LOG_READ_BYTES_MAX`]: crate::limits::HOOK_LOG_READ_BYTES_MAX
pub fn read_log(store: &impl CoordRead, from: u64, most: usize) -> Result<Vec<HookEvent>, StorageFault> {
    let mut events = Vec::new();
    let mut bytes = 0;
    if most == 0 {
        return Ok(events);
    }
    scan_log(store, from, &mut |event, size| {
        events.push(event);
        bytes += size;
        if events.len() >= most || bytes >= crate::limits::HOOK_LOG_READ_BYTES_MAX {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    Ok(events)
}

/// Drops log rows below `below` (at most [`HOOK_TRIM_ROWS_PER_PROPOSAL_MAX`] per call; the next trim takes the
/// rest) and answers how many went.
pub(crate) fn trim_below(store: &mut impl CoordWrite, below: u64) -> Result<u64, StorageFault> {
    let old_floor = floor(store)?;
    let below = below.min(next_seq(store)?);
    if below <= old_floor {
        return Ok(0);
    }
    let until = below.min(old_floor.saturating_add(HOOK_TRIM_ROWS_PER_PROPOSAL_MAX));
    let mut dropped = 0;
    for seq in old_floor..until {
        if store.coord_delete(&log_key(seq))? {
            dropped += 1;
        }
    }
    store.coord_put(FLOOR, &until.to_be_bytes())?;
    Ok(dropped)
}

#[cfg(test)]
mod tests;
