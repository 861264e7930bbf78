//! Coordination primitives inside the replicated state machine: leases, locks with fencing tokens, counters and
//! sequences. One module per primitive, each a pure function of the coordination rows and the proposal's clock.
//!
//! **Time comes from the log.** Every proposal carries its leader's timestamp; the state machine keeps the largest one
//! it has applied ([`advance_clock`]) so time never runs backwards across leaders, and judges every TTL against it.
//! Before the commands of a proposal run, every lease whose deadline has passed is revoked ([`expire_due`]); the leader
//! proposes an empty [`CoordRequest::Tick`] when a deadline passes on a quiet cluster, so expiry never waits for
//! traffic. No replica reads its own clock while applying.
//!
//! **Fencing.** Every lock acquisition returns a token one larger than any token that lock gave before; a token is never
//! reused, even after the lock's lease expires.

pub mod counter;
pub mod election;
pub mod lease;
pub mod lock;
pub mod ratelimit;
pub mod rwlock;
pub mod semaphore;
pub mod sequence;

use std::ops::ControlFlow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::kv::Bytes;
use crate::limits::KEY_SIZE_BYTES_MAX;
use crate::state_machine::{KvWrite, StorageFault};

pub use counter::CounterValue;
pub use election::ElectionInfo;
pub use lease::LeaseInfo;
pub use lock::LockInfo;
pub use ratelimit::RateLimitInfo;
pub use rwlock::{RwLockInfo, RwMode};
pub use semaphore::SemaphoreInfo;

/// Called with each row of a scan (key, value); breaks to stop.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// Read access to the coordination rows (a table of its own, next to the KV rows).
pub trait CoordRead {
    fn coord_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault>;
    /// Visits rows whose key starts with `prefix`, in byte order, until `visit` breaks.
    fn coord_scan(&self, prefix: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StorageFault>;
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
/// later the hook router, subscribe to it). Derived from applying, so every replica produces the same events.
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
}

/// Coordination requests. Names share the key namespace for access control: a token that may write `jobs/` may take
/// the lock `jobs/main`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordRequest {
    /// Grants a lease that expires `ttl_ms` after the proposal's time unless kept alive.
    LeaseGrant {
        ttl_ms: u64,
    },
    /// Pushes a lease's deadline to `ttl_ms` (its own TTL) after now.
    LeaseKeepAlive {
        lease: u64,
    },
    /// Revokes a lease and releases everything attached to it, in one entry.
    LeaseRevoke {
        lease: u64,
    },
    /// Reads one lease.
    LeaseGet {
        lease: u64,
    },
    /// Reads every lease (at most [`LEASE_LIST_COUNT_MAX`](lease::LEASE_LIST_COUNT_MAX)).
    LeaseList,
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
    Ticked,
}

impl CoordRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        if let Some(name) = self.name() {
            validate_name(name)?;
        }
        match self {
            CoordRequest::LeaseGrant { ttl_ms } => lease::validate_ttl(*ttl_ms),
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
            _ => Ok(()),
        }
    }

    fn validate_wait(&self) -> Result<(), WireError> {
        if self.wait_ms() > LOCK_WAIT_MS_MAX {
            return Err(WireError::invalid(format!("a wait is at most {LOCK_WAIT_MS_MAX} ms")));
        }
        Ok(())
    }

    /// How long the node may park this acquisition while the resource is taken (0 for everything else).
    pub fn wait_ms(&self) -> u32 {
        match self {
            CoordRequest::LockAcquire { wait_ms, .. }
            | CoordRequest::RwLockAcquire { wait_ms, .. }
            | CoordRequest::ElectionCampaign { wait_ms, .. }
            | CoordRequest::SemaphoreAcquire { wait_ms, .. } => *wait_ms,
            _ => 0,
        }
    }

    /// The request as it goes into the log: the wait is the node's business, never replicated.
    pub fn without_wait(&self) -> CoordRequest {
        let mut request = self.clone();
        if let CoordRequest::LockAcquire { wait_ms, .. }
        | CoordRequest::RwLockAcquire { wait_ms, .. }
        | CoordRequest::ElectionCampaign { wait_ms, .. }
        | CoordRequest::SemaphoreAcquire { wait_ms, .. } = &mut request
        {
            *wait_ms = 0;
        }
        request
    }

    /// Whether `event` may have freed what this parked acquisition waits for, so it should try again.
    pub fn woken_by(&self, event: &CoordEvent) -> bool {
        match (self, event) {
            (CoordRequest::LockAcquire { name, .. }, CoordEvent::LockReleased { name: freed, .. })
            | (CoordRequest::RwLockAcquire { name, .. }, CoordEvent::RwLockReleased { name: freed, .. })
            | (CoordRequest::ElectionCampaign { name, .. }, CoordEvent::LeaderResigned { name: freed, .. })
            | (CoordRequest::SemaphoreAcquire { name, .. }, CoordEvent::SemaphoreReleased { name: freed, .. }) => {
                name == freed
            }
            _ => false,
        }
    }

    /// Whether the request changes state and therefore goes through the Raft log.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            CoordRequest::LeaseGet { .. }
                | CoordRequest::LeaseList
                | CoordRequest::LockGet { .. }
                | CoordRequest::SemaphoreGet { .. }
                | CoordRequest::RwLockGet { .. }
                | CoordRequest::RateLimitGet { .. }
                | CoordRequest::ElectionGet { .. }
                | CoordRequest::CounterGet { .. }
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
            | CoordRequest::SequenceNext { name, .. } => Some(name),
            CoordRequest::LeaseGrant { .. }
            | CoordRequest::LeaseKeepAlive { .. }
            | CoordRequest::LeaseRevoke { .. }
            | CoordRequest::LeaseGet { .. }
            | CoordRequest::LeaseList
            | CoordRequest::Tick => None,
        }
    }

    /// Bytes the request weighs in a log entry.
    pub fn payload_bytes(&self) -> usize {
        self.name().map_or(0, <[u8]>::len) + 32
    }
}

/// Longest an acquisition (lock, read-write lock, semaphore) may wait (also bounded by the request's deadline).
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

    pub fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + rest.len());
        key.extend_from_slice(prefix);
        key.extend_from_slice(rest);
        key
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

/// Revokes every lease whose deadline is at or before `now` (at most
/// [`EXPIRIES_PER_PROPOSAL_MAX`](lease::EXPIRIES_PER_PROPOSAL_MAX); the next proposal takes the rest).
pub fn expire_due(tables: &mut (impl KvWrite + CoordWrite), revision: &mut u64, now: u64) -> Result<u32, StorageFault> {
    lease::expire_due(tables, revision, now)
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
        CoordRequest::LeaseGrant { ttl_ms } => lease::grant(store, now, *ttl_ms),
        CoordRequest::LeaseKeepAlive { lease } => lease::keep_alive(store, now, *lease),
        CoordRequest::LeaseRevoke { lease } => lease::revoke_request(store, revision, *lease),
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
        CoordRequest::Tick => Ok(Ok(CoordResponse::Ticked)),
        CoordRequest::LeaseGet { .. }
        | CoordRequest::LeaseList
        | CoordRequest::LockGet { .. }
        | CoordRequest::SemaphoreGet { .. }
        | CoordRequest::RwLockGet { .. }
        | CoordRequest::RateLimitGet { .. }
        | CoordRequest::ElectionGet { .. }
        | CoordRequest::CounterGet { .. } => read(store, request),
    }
}

/// Answers a read-only coordination request from the applied state.
pub fn read(store: &impl CoordRead, request: &CoordRequest) -> Result<Result<CoordResponse, WireError>, StorageFault> {
    if let Err(error) = request.validate() {
        return Ok(Err(error));
    }
    match request {
        CoordRequest::LeaseGet { lease } => lease::get(store, *lease),
        CoordRequest::LeaseList => lease::list(store),
        CoordRequest::LockGet { name } => lock::get(store, name),
        CoordRequest::SemaphoreGet { name } => semaphore::get(store, name),
        CoordRequest::RwLockGet { name } => rwlock::get(store, name),
        CoordRequest::RateLimitGet { name } => ratelimit::get(store, name),
        CoordRequest::ElectionGet { name } => election::get(store, name),
        CoordRequest::CounterGet { name } => counter::get(store, name),
        _ => Ok(Err(WireError::invalid("not a read request"))),
    }
}

#[cfg(test)]
mod tests;
