//! Executes one decoded request: authenticate, authorise, validate, then route writes through the RaftActor and
//! serve reads from the applied state (after a read-index round for linearizable reads).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use pando_protocol::cluster::{ClusterRequest, ClusterResponse};
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::coord::{CoordRequest, CoordResponse};
use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::kv::{Consistency, KvRequest, KvResponse, TxnOp};
use pando_protocol::limits::{REQUEST_TIMEOUT_MS_DEFAULT, REQUEST_TIMEOUT_MS_MAX};
use pando_protocol::token::{Access, CapabilityToken, TokenClaims};

use super::cluster;
use crate::directory::Directory;
use crate::raft::type_config::NodeId;

/// What the gateway needs to serve requests.
#[derive(Clone)]
pub struct RpcContext {
    pub node_id: NodeId,
    pub cluster_id: Vec<u8>,
    /// Verifies capability tokens.
    pub cluster_key: VerifyingKey,
    /// Handed to nodes that join, so every member can issue client tickets.
    pub cluster_secret_key: [u8; 32],
    /// Serialises membership changes made through this node.
    pub membership_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether `InjectPanic` is served (`--enable-fault-injection`).
    pub fault_injection: bool,
    /// Requests parked waiting for each resource (bounded by [`LOCK_WAITERS_PER_NAME_MAX`]).
    pub lock_waiters: Arc<Mutex<std::collections::BTreeMap<Vec<u8>, ResourceWaiters>>>,
    pub directory: Directory,
}

/// The last token a connection presented and its verified claims, so a client reusing its token is verified once.
#[derive(Default)]
pub(crate) struct TokenCache {
    verified: Option<(CapabilityToken, Arc<TokenClaims>)>,
}

impl TokenCache {
    /// Whether the connection ever presented a token that verified.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.verified.is_some()
    }
}

pub(crate) async fn handle(
    context: &RpcContext,
    cache: &Mutex<TokenCache>,
    envelope: RequestEnvelope,
) -> ResponseEnvelope {
    let request_id = envelope.request_id;
    let timeout_ms = match envelope.timeout_ms {
        0 => REQUEST_TIMEOUT_MS_DEFAULT,
        requested => requested.min(REQUEST_TIMEOUT_MS_MAX),
    };
    let body = match authenticate(context, cache, envelope.token.as_ref()) {
        Ok(claims) => {
            let work = execute(context, &claims, envelope.body, Duration::from_millis(timeout_ms.into()));
            match tokio::time::timeout(Duration::from_millis(timeout_ms.into()), work).await {
                Ok(result) => result,
                Err(_) => Err(WireError::new(
                    ErrorCode::Timeout,
                    format!("deadline of {timeout_ms} ms passed; a write may or may not have been applied"),
                )),
            }
        }
        Err(error) => Err(error),
    };
    ResponseEnvelope { request_id, body }
}

pub(crate) fn authenticate(
    context: &RpcContext,
    cache: &Mutex<TokenCache>,
    token: Option<&CapabilityToken>,
) -> Result<Arc<TokenClaims>, WireError> {
    let Some(token) = token else {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            "no capability token; pass the cluster ticket (--ticket or PANDO_TICKET)",
        ));
    };
    let now_ms = context.directory.now_ms();
    {
        let cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached, claims)) = &cache.verified
            && cached == token
            // Expiry still counts for a cached token.
            && claims.expires_at_ms.is_none_or(|expires_at_ms| now_ms < expires_at_ms)
        {
            return Ok(claims.clone());
        }
    }
    // Verified outside the lock: concurrent streams of one connection never wait on each other's signature checks.
    let claims = token
        .verify(&context.cluster_key, &context.cluster_id, now_ms)
        .map_err(|error| WireError::new(ErrorCode::Unauthorized, error.to_string()))?;
    let claims = Arc::new(claims);
    cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).verified = Some((token.clone(), claims.clone()));
    Ok(claims)
}

pub(crate) fn authorise(claims: &TokenClaims, access: Access<'_>) -> Result<(), WireError> {
    if claims.allows(access) {
        return Ok(());
    }
    let what = match access {
        Access::KvRead(_) => "read this key",
        Access::KvWrite(_) => "write this key",
        Access::ClusterRead => "read cluster status",
        Access::ClusterJoin => "join the cluster",
        Access::ClusterAdmin => "change cluster membership",
        Access::BlobRead => "read blobs",
        Access::BlobWrite => "write blobs",
        Access::PluginCall(_) => "call this plugin",
        Access::PluginAdmin => "install or manage plugins",
    };
    Err(WireError::new(ErrorCode::Unauthorized, format!("token of `{}` may not {what}", claims.subject)))
}

async fn execute(
    context: &RpcContext,
    claims: &TokenClaims,
    body: Request,
    timeout: Duration,
) -> Result<Response, WireError> {
    match body {
        Request::Kv(request) => {
            request.validate()?;
            let write = request.is_write();
            for key in request.keys() {
                authorise(claims, if write { Access::KvWrite(key) } else { Access::KvRead(key) })?;
            }
            // Pointing a key at a blob reads the blob through the key later: it needs the blob capability too.
            if matches!(request, KvRequest::PutBlob { .. }) {
                authorise(claims, Access::BlobWrite)?;
            }
            if !write {
                return Ok(Response::Kv(read(context, request).await?));
            }
            if let KvRequest::Put { key, value, lease } = &request
                && let Some(blobs) = context.directory.blobs()
                && value.len() > blobs.config.kv_inline_max_bytes
            {
                return super::blobs::put_large(context, &blobs, key, value, *lease, timeout).await.map(Response::Kv);
            }
            if crate::sim::planted_bug(crate::sim::PlantedBug::TornTxns)
                && let KvRequest::Txn { compares, success, .. } = &request
                && compares.is_empty()
                && success.len() > 1
            {
                return torn_txn(context, success.clone(), timeout).await;
            }
            match propose(context, Command::Kv(request), timeout).await? {
                CommandOutput::Kv(response) => Ok(Response::Kv(response)),
                other => Err(WireError::internal(format!("a KV write produced {other:?}"))),
            }
        }
        Request::Blob(request) => super::blobs::execute(context, claims, request, timeout).await.map(Response::Blob),
        Request::Plugin(request) => {
            super::plugins::execute(context, claims, request, timeout).await.map(Response::Plugin)
        }
        Request::Coord(request) => {
            request.validate()?;
            if matches!(request, CoordRequest::Tick) {
                return Err(WireError::invalid("ticks are proposed by the leader only"));
            }
            // Leases name no resource: they need access to every key (the empty prefix).
            let name = request.name().unwrap_or_default();
            authorise(claims, if request.is_write() { Access::KvWrite(name) } else { Access::KvRead(name) })?;
            if request.wait_ms() > 0 {
                let wait = Duration::from_millis(u64::from(request.wait_ms())).min(timeout);
                return serve_waiting(context, request, wait).await.map(Response::Coord);
            }
            coord_once(context, &request, timeout).await.map(Response::Coord)
        }
        Request::Cluster(request) => {
            let response = match request {
                ClusterRequest::Status => {
                    authorise(claims, Access::ClusterRead)?;
                    ClusterResponse::Status(cluster::status(context)?)
                }
                ClusterRequest::Metrics => {
                    authorise(claims, Access::ClusterRead)?;
                    cluster::metrics(context)?
                }
                ClusterRequest::Join { node } => {
                    authorise(claims, Access::ClusterJoin)?;
                    cluster::join(context, node).await?
                }
                ClusterRequest::AddLearner { node_id, node } => {
                    authorise(claims, Access::ClusterAdmin)?;
                    cluster::add_learner(context, node_id, node).await?
                }
                ClusterRequest::Promote { node_id } => {
                    authorise(claims, Access::ClusterAdmin)?;
                    cluster::promote(context, node_id).await?
                }
                ClusterRequest::Remove { node_id } => {
                    authorise(claims, Access::ClusterAdmin)?;
                    cluster::remove(context, node_id).await?
                }
                ClusterRequest::Actors => {
                    authorise(claims, Access::ClusterRead)?;
                    cluster::actors(context).await?
                }
                ClusterRequest::InjectPanic { actor } => {
                    authorise(claims, Access::ClusterAdmin)?;
                    cluster::inject_panic(context, &actor).await?
                }
                ClusterRequest::Mesh => {
                    authorise(claims, Access::ClusterRead)?;
                    cluster::mesh(context).await?
                }
                ClusterRequest::UpdateAddress { node_id, node } => {
                    authorise(claims, Access::ClusterAdmin)?;
                    cluster::update_address(context, node_id, node).await?
                }
            };
            Ok(Response::Cluster(response))
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
    waiters: Arc<Mutex<std::collections::BTreeMap<Vec<u8>, ResourceWaiters>>>,
    name: Vec<u8>,
    turnstile: Arc<tokio::sync::Mutex<()>>,
}

impl WaiterSlot {
    fn take(context: &RpcContext, name: &[u8]) -> Result<WaiterSlot, WireError> {
        let mut waiters = context.lock_waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let resource = waiters.entry(name.to_vec()).or_default();
        if resource.count >= LOCK_WAITERS_PER_NAME_MAX {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!("{LOCK_WAITERS_PER_NAME_MAX} requests already wait for this resource on this node"),
            ));
        }
        resource.count += 1;
        let turnstile = resource.turnstile.clone();
        Ok(WaiterSlot { waiters: context.lock_waiters.clone(), name: name.to_vec(), turnstile })
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

/// Serves a coordination request once: a write through the log, a read linearizably from the applied state.
async fn coord_once(
    context: &RpcContext,
    request: &CoordRequest,
    timeout: Duration,
) -> Result<CoordResponse, WireError> {
    if !request.is_write() {
        linearize(context).await?;
        let reader = reader(context)?;
        let request = request.clone();
        let result = crate::storage::offload(move || reader.read_coord(&request))
            .await
            .map_err(|error| WireError::internal(format!("read task failed: {error}")))?;
        return result.map_err(|fault| WireError::internal(fault.to_string()))?;
    }
    match propose(context, Command::Coord(request.without_wait()), timeout).await? {
        CommandOutput::Coord(response) => Ok(response),
        other => Err(WireError::internal(format!("a coordination write produced {other:?}"))),
    }
}

/// Serves a request that may be parked (an acquisition, a dequeue, a barrier enter, an election observation) while
/// what it waits for is not there (the answer is `CONFLICT`, or one that does not [satisfy](CoordRequest::satisfied_by)
/// it): every event on the commit stream that may have brought it (a release, an enqueue, a barrier opening, a new
/// leader) wakes the waiter for another attempt, until it is satisfied or `wait` passes. The client never polls; the
/// answer after the wait is the last one.
async fn serve_waiting(
    context: &RpcContext,
    request: CoordRequest,
    wait: Duration,
) -> Result<CoordResponse, WireError> {
    let deadline = tokio::time::Instant::now() + wait;
    let attempt = |remaining: Duration| coord_once(context, &request, remaining);
    // A dequeue first tries at once, beside any parked consumers: while the queue has messages nobody waits.
    if matches!(request, CoordRequest::QueueDequeue { .. }) {
        let response = attempt(wait).await?;
        if request.satisfied_by(&response) {
            return Ok(response);
        }
    }
    let slot = WaiterSlot::take(context, request.name().unwrap_or_default())?;
    let subscribe = || {
        context
            .directory
            .stores()
            .map(|stores| stores.state_machine.subscribe())
            .ok_or_else(|| WireError::new(ErrorCode::Unavailable, "storage is not open"))
    };
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
    let mut events = subscribe()?;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
        let last = match attempt(remaining).await {
            Ok(response) if request.satisfied_by(&response) => return Ok(response),
            Ok(response) => Ok(response),
            Err(error) if error.code == ErrorCode::Conflict => Err(error),
            Err(error) => return Err(error),
        };
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return last,
                Ok(Ok(batch)) => {
                    if batch.iter().any(|event| request.woken_by(event)) {
                        break;
                    }
                }
                // Missed events: try again rather than risk sleeping through the release.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                // Storage restarted under us: a fresh stream, and another attempt.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    events = subscribe()?;
                    break;
                }
            }
        }
    }
}

/// The planted bug [`TornTxns`](crate::sim::PlantedBug::TornTxns): each operation of a transaction proposed as a
/// transaction of its own, the answers stitched together as if they were one.
async fn torn_txn(context: &RpcContext, operations: Vec<TxnOp>, timeout: Duration) -> Result<Response, WireError> {
    let mut results = Vec::new();
    let mut revision = 0;
    for operation in operations {
        let request = KvRequest::Txn { compares: Vec::new(), success: vec![operation], failure: Vec::new() };
        match propose(context, Command::Kv(request), timeout).await? {
            CommandOutput::Kv(KvResponse::Txn { results: mut one, revision: at, .. }) => {
                results.append(&mut one);
                revision = at;
            }
            other => return Err(WireError::internal(format!("a KV write produced {other:?}"))),
        }
    }
    Ok(Response::Kv(KvResponse::Txn { succeeded: true, revision, results }))
}

pub(crate) async fn propose(
    context: &RpcContext,
    command: Command,
    timeout: Duration,
) -> Result<CommandOutput, WireError> {
    crate::raft::propose_local(&context.directory, command, timeout).await
}

pub(crate) fn reader(context: &RpcContext) -> Result<crate::storage::StateReader, WireError> {
    Ok(context.directory.stores().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "storage is not open"))?.reader)
}

/// Waits until this node knows it is leader and has applied everything committed before the read started.
pub(crate) async fn linearize(context: &RpcContext) -> Result<(), WireError> {
    if crate::sim::planted_bug(crate::sim::PlantedBug::LocalReads) {
        // The planted bug: whatever this node applied is taken as current.
        return Ok(());
    }
    let handles =
        context.directory.raft().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "raft is not running"))?;
    cluster::ensure_leader_waiting_for_quorum(&handles).await
}

async fn read(context: &RpcContext, request: KvRequest) -> Result<KvResponse, WireError> {
    let consistency = match &request {
        KvRequest::Get { consistency, .. }
        | KvRequest::Scan { consistency, .. }
        | KvRequest::BatchGet { consistency, .. } => *consistency,
        _ => Consistency::Linearizable,
    };
    if consistency == Consistency::Linearizable {
        linearize(context).await?;
    }
    let reader = reader(context)?;
    let result = crate::storage::offload(move || reader.read(&request))
        .await
        .map_err(|error| WireError::internal(format!("read task failed: {error}")))?;
    match result {
        Ok(result) => result,
        Err(fault) => Err(WireError::internal(fault.to_string())),
    }
}
