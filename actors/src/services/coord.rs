//! The coordination service: leases, locks, semaphores, elections, queues, barriers and the rest, served from the
//! replicated state machine. A request that may wait (an acquisition, a dequeue, a barrier enter, an election
//! observation) is parked on this node and woken by the commit stream, never by polling, with at most
//! [`LOCK_WAITERS_PER_NAME_MAX`] waiters per resource on one node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::coord::{CoordRequest, CoordResponse};
use pando_protocol::error::{ErrorCode, WireError};

use crate::raft::RaftHandle;
use crate::storage_actor::StorageHandle;

/// The requests parked on this node, per resource name.
type Waiters = Arc<Mutex<std::collections::BTreeMap<Vec<u8>, ResourceWaiters>>>;

#[derive(Clone)]
pub struct CoordService {
    raft: RaftHandle,
    storage: StorageHandle,
    waiters: Waiters,
    /// Requests parked on this node per caller (a token's accessor, a member's id).
    parked: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
}

/// Most requests one caller may have parked on one node at once; more are answered `BUSY`.
pub const PARKED_PER_CALLER_MAX: usize = 256;

/// One parked request of a caller, counted while it lives.
struct ParkedSlot {
    parked: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
    caller: String,
}

impl ParkedSlot {
    fn take(
        parked: &Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
        caller: &str,
    ) -> Result<ParkedSlot, WireError> {
        let mut counts = parked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(caller.to_string()).or_default();
        if *count >= PARKED_PER_CALLER_MAX {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!("{PARKED_PER_CALLER_MAX} requests of this caller already wait on this node"),
            ));
        }
        *count += 1;
        Ok(ParkedSlot { parked: parked.clone(), caller: caller.to_string() })
    }
}

impl Drop for ParkedSlot {
    fn drop(&mut self) {
        let mut counts = self.parked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

impl CoordService {
    pub fn new(raft: RaftHandle, storage: StorageHandle) -> CoordService {
        CoordService { raft, storage, waiters: Waiters::default(), parked: Arc::default() }
    }

    /// Serves one request of `caller` (who it is, for the bound on parked requests): validated, a write through the
    /// log, a read linearizably from the applied state, a request with a wait parked until it is satisfied or its
    /// wait (at most `timeout`) passes, with at most [`PARKED_PER_CALLER_MAX`] parked per caller and
    /// [`LOCK_WAITERS_PER_NAME_MAX`] per resource.
    pub async fn execute(
        &self,
        caller: &str,
        request: CoordRequest,
        timeout: Duration,
    ) -> Result<CoordResponse, WireError> {
        request.validate()?;
        if matches!(request, CoordRequest::Tick) {
            return Err(WireError::invalid("ticks are proposed by the leader only"));
        }
        if request.wait_ms() > 0 {
            let _parked = ParkedSlot::take(&self.parked, caller)?;
            let wait = Duration::from_millis(u64::from(request.wait_ms())).min(timeout);
            return self.serve_waiting(request, wait).await;
        }
        self.once(&request, timeout).await
    }

    /// Serves a coordination request once: a write through the log, a read linearizably from the applied state.
    async fn once(&self, request: &CoordRequest, timeout: Duration) -> Result<CoordResponse, WireError> {
        if !request.is_write() {
            self.raft.linearize(timeout).await?;
            let request = request.clone();
            return self.storage.read(timeout, move |reader| reader.read_coord(&request)).await?;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::KeepAliveNotProposed)
            && let CoordRequest::LeaseKeepAlive { lease, prefix } = request
        {
            let get = CoordRequest::LeaseGet { lease: *lease, prefix: prefix.clone() };
            return self.storage.reader()?.read_coord(&get).map_err(|fault| WireError::internal(fault.0))?;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::QueueDeliveryShared)
            && let CoordRequest::QueueDequeue { name, .. } = request
            && crate::sim::planted_coin()
            && let Some(message) = crate::sim::planted_shared_delivery(name)
        {
            return Ok(CoordResponse::Delivered { messages: vec![message] });
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::LockReleasedEarly)
            && let CoordRequest::LockAcquire { name, lease, .. } = request
            && let Ok(CoordResponse::Lock { lock }) = self
                .storage
                .reader()?
                .read_coord(&CoordRequest::LockGet { name: name.clone() })
                .map_err(|fault| WireError::internal(fault.0))?
            && let Some(holder) = lock.holder.filter(|holder| holder.lease != *lease)
            && crate::sim::planted_coin()
        {
            let _ = self.raft.propose(Command::Coord(CoordRequest::lease_revoke(holder.lease)), timeout).await;
        }
        let mut request = request.without_wait();
        if crate::sim::planted_bug(crate::sim::PlantedBug::StaleAckAccepted)
            && let CoordRequest::QueueAck { name, id, token } = &mut request
            && let Ok(Some(current)) = self.storage.reader()?.queue_delivery_token(name, *id)
        {
            *token = current;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::RateLimitBurstDoubled)
            && let CoordRequest::RateLimitAcquire { burst, .. } = &mut request
        {
            *burst *= 2;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::RwLockWriteAsRead)
            && let CoordRequest::RwLockAcquire { mode, .. } = &mut request
        {
            *mode = pando_protocol::coord::rwlock::RwMode::Read;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::BarrierOpensShort)
            && let CoordRequest::BarrierEnter { parties, .. } = &mut request
            && *parties > 1
        {
            *parties -= 1;
        }
        if crate::sim::planted_bug(crate::sim::PlantedBug::SemaphoreOverCapacity)
            && let CoordRequest::SemaphoreAcquire { capacity, .. } = &mut request
        {
            *capacity += 1;
        }
        let read_before = match &request {
            CoordRequest::SequenceNext { name, .. }
                if crate::sim::planted_bug(crate::sim::PlantedBug::SequenceReadBeforeWrite) =>
            {
                Some(self.storage.reader()?.sequence_peek(name).map_err(|fault| WireError::internal(fault.0))?)
            }
            _ => None,
        };
        let campaign = matches!(request, CoordRequest::ElectionCampaign { .. });
        let exclusive =
            matches!(request, CoordRequest::RwLockAcquire { mode: pando_protocol::coord::rwlock::RwMode::Write, .. });
        let shared_queue = match &request {
            CoordRequest::QueueDequeue { name, .. }
                if crate::sim::planted_bug(crate::sim::PlantedBug::QueueDeliveryShared) =>
            {
                Some(name.clone())
            }
            _ => None,
        };
        match self.raft.propose(Command::Coord(request), timeout).await? {
            CommandOutput::Coord(CoordResponse::Sequence { count, .. }) if let Some(first) = read_before => {
                Ok(CoordResponse::Sequence { first, count })
            }
            CommandOutput::Coord(CoordResponse::Election { mut election })
                if campaign && crate::sim::planted_bug(crate::sim::PlantedBug::ElectionTokenReused) =>
            {
                if let Some(leader) = &mut election.leader {
                    leader.token = leader.token.saturating_sub(1).max(1);
                }
                Ok(CoordResponse::Election { election })
            }
            CommandOutput::Coord(CoordResponse::Delivered { messages }) if let Some(name) = &shared_queue => {
                if let Some(first) = messages.first() {
                    crate::sim::planted_remember_delivery(name, first);
                }
                Ok(CoordResponse::Delivered { messages })
            }
            CommandOutput::Coord(CoordResponse::RwLock { mut rwlock })
                if exclusive && crate::sim::planted_bug(crate::sim::PlantedBug::RwLockTokenReused) =>
            {
                if let Some(writer) = &mut rwlock.writer {
                    writer.token = writer.token.saturating_sub(1).max(1);
                }
                Ok(CoordResponse::RwLock { rwlock })
            }
            CommandOutput::Coord(response) => Ok(response),
            other => Err(WireError::internal(format!("a coordination write produced {other:?}"))),
        }
    }

    /// Serves a request that may be parked (an acquisition, a dequeue, a barrier enter, an election observation) while
    /// what it waits for is not there (the answer is `CONFLICT`, or one that does not [satisfy](CoordRequest::satisfied_by)
    /// it): every event on the commit stream that may have brought it (a release, an enqueue, a barrier opening, a new
    /// leader) wakes the waiter for another attempt, until it is satisfied or `wait` passes. The client never polls; the
    /// answer after the wait is the last one.
    async fn serve_waiting(&self, request: CoordRequest, wait: Duration) -> Result<CoordResponse, WireError> {
        let deadline = tokio::time::Instant::now() + wait;
        let attempt = |remaining: Duration| self.once(&request, remaining);
        // A dequeue first tries at once, beside any parked consumers: while the queue has messages nobody waits.
        if matches!(request, CoordRequest::QueueDequeue { .. }) {
            let response = attempt(wait).await?;
            if request.satisfied_by(&response) {
                return Ok(response);
            }
        }
        let slot = WaiterSlot::take(&self.waiters, request.name().unwrap_or_default())?;
        let _turn = if request.takes_turns() {
            match tokio::time::timeout_at(deadline, slot.turnstile.lock()).await {
                Ok(turn) => Some(turn),
                Err(_) => {
                    return Err(WireError::new(
                        ErrorCode::Conflict,
                        format!("still waiting after {wait:?} behind earlier requests on this node"),
                    ));
                }
            }
        } else {
            None
        };
        // Subscribed (once it is this request's turn) before the first attempt, so a release between the attempt and the
        // wait is not missed, and releases from before the turn are not replayed.
        let mut events = self.storage.subscribe();
        loop {
            let remaining =
                deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
            let last = match attempt(remaining).await {
                Ok(response) if request.satisfied_by(&response) => return Ok(response),
                Ok(response) => Ok(response),
                Err(error) if error.code == ErrorCode::Conflict => Err(error),
                Err(error) => return Err(error),
            };
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return last,
                    Ok(Ok(committed)) => {
                        if committed.coord.iter().any(|event| request.woken_by(event))
                            && !crate::sim::planted_bug(crate::sim::PlantedBug::WaiterNotWoken)
                        {
                            break;
                        }
                    }
                    // Missed events: try again rather than risk sleeping through the release.
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    // The node is shutting down (the stream lives as long as the node's storage handle).
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return last,
                }
            }
        }
    }
}

/// Most requests one node parks waiting for the same lock; more are answered `BUSY`.
pub const LOCK_WAITERS_PER_NAME_MAX: usize = 64;

/// Holds one waiter slot of a lock for as long as a request waits.
/// The requests of one node parked on one resource.
#[derive(Default)]
pub struct ResourceWaiters {
    count: usize,
    /// Waiters take turns (first come, first served): only the head proposes and listens for releases, so a release
    /// wakes one retry instead of a herd of them.
    turnstile: Arc<tokio::sync::Mutex<()>>,
}

struct WaiterSlot {
    waiters: Waiters,
    name: Vec<u8>,
    turnstile: Arc<tokio::sync::Mutex<()>>,
}

impl WaiterSlot {
    fn take(all: &Waiters, name: &[u8]) -> Result<WaiterSlot, WireError> {
        let mut waiters = all.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let resource = waiters.entry(name.to_vec()).or_default();
        if resource.count >= LOCK_WAITERS_PER_NAME_MAX {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!("{LOCK_WAITERS_PER_NAME_MAX} requests already wait for this resource on this node"),
            ));
        }
        resource.count += 1;
        let turnstile = resource.turnstile.clone();
        Ok(WaiterSlot { waiters: all.clone(), name: name.to_vec(), turnstile })
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(resource) = waiters.get_mut(&self.name) {
            resource.count -= 1;
            if resource.count == 0 {
                waiters.remove(&self.name);
            }
        }
    }
}
