//! Executes one decoded request: authenticate, check it against the [access table](super::access), call the
//! service that serves it. Nothing else happens here: what a request does is the services' business.
//!
//! Who calls: a client presents a token (accessor and secret), checked against the token records this node applied;
//! a member node presents no token and is known by the key its QUIC connection authenticated with, when the
//! membership lists that key ([`Capability::Node`]). A connection caches what it was granted and checks it again
//! every [`TOKEN_RECHECK_MS`], so a revocation or a removal reaches open connections within that once applied here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pando_protocol::blob::{BlobRequest, BlobResponse};
use pando_protocol::cluster::ClusterRequest;
use pando_protocol::envelope::{Request, RequestEnvelope, Response};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::fs::{Errno, FsQueryKind, FsRequest};
use pando_protocol::job::{JobCommand, JobRequest};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::{REQUEST_TIMEOUT_MS_DEFAULT, REQUEST_TIMEOUT_MS_MAX, TOKEN_RECHECK_MS};
use pando_protocol::token::{Access, Capability, CapabilityToken, allows};

use super::access;
use crate::clock::Clock;
use crate::services::Services;

/// What the gateway needs to serve requests: the clock token expiry is judged by, and the services.
#[derive(Clone)]
pub struct RpcContext {
    pub clock: Clock,
    pub services: Services,
}

/// Who is calling and what they may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `node N`: for errors and logs.
    pub name: String,
    pub capabilities: Vec<Capability>,
    /// When the grant lapses by this node's clock (`None`: never).
    pub expires_ms: Option<u64>,
    /// The token's accessor; `None` for a member authenticated by its key.
    pub accessor: Option<Bytes>,
    /// The key the caller's connection authenticated with (`None` over the simulated network).
    pub peer_key: Option<[u8; 32]>,
}

impl Caller {
    pub fn allows(&self, access: Access<'_>) -> bool {
        allows(&self.capabilities, access)
    }
}

/// What a connection was granted, and when that was last checked against the state.
pub(crate) struct TokenCache {
    peer_key: Option<[u8; 32]>,
    granted: Option<Granted>,
    ever_authenticated: bool,
    /// The connection's place among the unauthenticated ones, given back when it first authenticates.
    unverified: Option<super::admission::UnverifiedSlot>,
}

struct Granted {
    token: Option<CapabilityToken>,
    caller: Arc<Caller>,
    checked_at: tokio::time::Instant,
    /// The node's grants epoch read before the check: once it moves (a revocation or membership change applied
    /// here), the next request checks again.
    epoch: u64,
}

impl TokenCache {
    /// The cache of a connection whose peer authenticated with `peer_key`, holding its place among the
    /// unauthenticated connections until a token (or member key) verifies.
    pub(crate) fn for_peer(peer_key: Option<[u8; 32]>, unverified: super::admission::UnverifiedSlot) -> TokenCache {
        TokenCache { peer_key, granted: None, ever_authenticated: false, unverified: Some(unverified) }
    }

    /// Whether the connection ever presented a token (or a member key) that verified.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.ever_authenticated
    }

    fn fresh(&self, token: Option<&CapabilityToken>, now_ms: u64, epoch: u64) -> Option<Arc<Caller>> {
        let granted = self.granted.as_ref()?;
        let recheck_due = (granted.epoch != epoch
            || granted.checked_at.elapsed() >= Duration::from_millis(TOKEN_RECHECK_MS))
            && !crate::sim::planted_bug(crate::sim::PlantedBug::TokenCachedForever);
        let fresh = granted.token.as_ref() == token
            && !recheck_due
            && granted.caller.expires_ms.is_none_or(|expires_ms| now_ms < expires_ms);
        fresh.then(|| granted.caller.clone())
    }
}

fn lock(cache: &Mutex<TokenCache>) -> std::sync::MutexGuard<'_, TokenCache> {
    cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves a checked request within its deadline.
pub(crate) async fn serve(
    context: &RpcContext,
    caller: Arc<Caller>,
    envelope: RequestEnvelope,
) -> Result<Response, WireError> {
    let timeout_ms = match envelope.timeout_ms {
        0 => REQUEST_TIMEOUT_MS_DEFAULT,
        requested => requested.min(REQUEST_TIMEOUT_MS_MAX),
    };
    let work = execute(context, &caller, envelope.body, Duration::from_millis(timeout_ms.into()));
    match tokio::time::timeout(Duration::from_millis(timeout_ms.into()), work).await {
        Ok(result) => result,
        Err(_) => Err(WireError::new(
            ErrorCode::Timeout,
            format!("deadline of {timeout_ms} ms passed; a write may or may not have been applied"),
        )),
    }
}

/// Everything a request passes before a service sees it, whichever way it is served (one answer, or a stream of its
/// own): a caller that authenticates, valid input, and every access the request needs.
pub(crate) async fn check(
    context: &RpcContext,
    cache: &Mutex<TokenCache>,
    envelope: &RequestEnvelope,
) -> Result<Arc<Caller>, WireError> {
    let caller = authenticate(context, cache, envelope.token.as_ref()).await?;
    access::validate(&envelope.body)?;
    for needed in access::required(&envelope.body) {
        authorise(&caller, needed)?;
    }
    if let Request::Blob(request) = &envelope.body {
        blob_scope(context, &caller, request)?;
    }
    Ok(caller)
}

/// A blob named by its hash belongs to the keys that point at it: a caller without every capability reaches it only
/// through one of those keys its scope covers (reading it needs a readable key, changing it a writable one).
fn blob_scope(context: &RpcContext, caller: &Caller, request: &BlobRequest) -> Result<(), WireError> {
    if caller.capabilities.contains(&Capability::All) {
        return Ok(());
    }
    let (hash, write) = match request {
        BlobRequest::Get { hash, key: None }
        | BlobRequest::Has { hash }
        | BlobRequest::Status { hash }
        | BlobRequest::Replication { hash } => (hash, false),
        BlobRequest::Protect { hash }
        | BlobRequest::Unprotect { hash }
        | BlobRequest::Delete { hash }
        | BlobRequest::SetReplicas { hash, .. } => (hash, true),
        // Through a key (checked against the key), a new blob, or a page filtered after it is read.
        BlobRequest::Get { key: Some(_), .. } | BlobRequest::Add { .. } | BlobRequest::List { .. } => return Ok(()),
    };
    let allowed = |key: &[u8]| caller.allows(if write { Access::KvWrite(key) } else { Access::KvRead(key) });
    let reader = context.services.kv_reader()?;
    if reader.blob_reachable(hash, &allowed).map_err(|fault| WireError::internal(fault.to_string()))? {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::Unauthorized,
        format!("`{}` reaches blob {hash} through no key of its scope", caller.name),
    ))
}

/// Drops from a blob page what the caller's scope does not reach (see [`blob_scope`]).
fn filter_blob_page(context: &RpcContext, caller: &Caller, response: &mut BlobResponse) -> Result<(), WireError> {
    if caller.capabilities.contains(&Capability::All) {
        return Ok(());
    }
    if let BlobResponse::Page { blobs, .. } = response {
        let reader = context.services.kv_reader()?;
        let allowed = |key: &[u8]| caller.allows(Access::KvRead(key));
        let mut kept = Vec::with_capacity(blobs.len());
        for (hash, record) in blobs.drain(..) {
            if reader.blob_reachable(&hash, &allowed).map_err(|fault| WireError::internal(fault.to_string()))? {
                kept.push((hash, record));
            }
        }
        *blobs = kept;
    }
    Ok(())
}

pub(crate) async fn authenticate(
    context: &RpcContext,
    cache: &Mutex<TokenCache>,
    token: Option<&CapabilityToken>,
) -> Result<Arc<Caller>, WireError> {
    let now_ms = context.clock.now_ms();
    let epoch = context.services.tokens.grants_epoch();
    let (peer_key, known) = {
        let cache = lock(cache);
        if let Some(caller) = cache.fresh(token, now_ms, epoch) {
            return Ok(caller);
        }
        // A token this connection was granted before and that is gone now was revoked: no wait for it to arrive.
        let known = token.is_some() && cache.granted.as_ref().is_some_and(|granted| granted.token.as_ref() == token);
        (cache.peer_key, known)
    };
    // Checked outside the lock: concurrent streams of one connection never wait on each other's checks.
    let caller = match token {
        Some(token) => {
            let info = context.services.tokens.authenticate(token, now_ms, !known).await?;
            Caller {
                name: if info.name.is_empty() { format!("token {}", token.accessor_hex()) } else { info.name },
                capabilities: info.capabilities,
                expires_ms: info.expires_ms,
                accessor: Some(token.accessor.clone()),
                peer_key,
            }
        }
        None => {
            let member = peer_key.and_then(|key| context.services.cluster.member_id(&key));
            let (Some(node_id), Some(key)) = (member, peer_key) else {
                return Err(WireError::new(
                    ErrorCode::Unauthorized,
                    "no capability token; pass a ticket that carries one (--ticket or PANDO_TICKET)",
                ));
            };
            let promote = context.services.tokens.node_may_promote(node_id)?;
            Caller {
                name: format!("node {node_id}"),
                capabilities: vec![Capability::Node { node_id, promote }],
                expires_ms: None,
                accessor: None,
                peer_key: Some(key),
            }
        }
    };
    let caller = Arc::new(caller);
    let mut cache = lock(cache);
    cache.granted =
        Some(Granted { token: token.cloned(), caller: caller.clone(), checked_at: tokio::time::Instant::now(), epoch });
    cache.ever_authenticated = true;
    cache.unverified = None;
    Ok(caller)
}

pub(crate) fn authorise(caller: &Caller, access: Access<'_>) -> Result<(), WireError> {
    if caller.allows(access) {
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
        Access::TokenAdmin => "mint, list or revoke tokens",
        Access::HookAdmin => "manage hooks or publish events",
        Access::HookStream(_) => {
            "see every event this pattern matches (KV events under a prefix need read access to it)"
        }
        Access::JobSubmit(_) => "submit jobs to this queue",
        Access::JobShell => "submit shell jobs (they run commands as the node's user: admin only)",
        Access::JobRead => "read jobs",
        Access::JobAdmin => "cancel, retry, purge or schedule jobs",
        Access::NodeAddress(_) => "announce this node's address",
        Access::NodeKey(_) => "replace this node's key (only the node itself, over its current key, or an admin)",
        Access::Promote(_) => "promote this node (an admin promotes learners, unless their join token said voter)",
        Access::FsRead => "use the file system (a token of --fs read or write)",
        Access::FsWrite => "change the file system (a token of --fs write)",
    };
    Err(WireError::new(ErrorCode::Unauthorized, format!("`{}` may not {what}", caller.name)))
}

/// Calls the service that serves a checked request.
async fn execute(
    context: &RpcContext,
    caller: &Caller,
    body: Request,
    timeout: Duration,
) -> Result<Response, WireError> {
    let services = &context.services;
    match body {
        Request::Kv(request) => services.kv.execute(request, timeout).await.map(Response::Kv),
        Request::Blob(request) => {
            let mut response = services.blobs.execute(request, timeout).await?;
            filter_blob_page(context, caller, &mut response)?;
            Ok(Response::Blob(response))
        }
        Request::Plugin(request) => {
            // A call runs with the caller's scope intersected with the plugin's own.
            let scope = (!caller.capabilities.contains(&Capability::All)).then(|| caller.capabilities.clone().into());
            services.plugins.execute(request, timeout, scope).await.map(Response::Plugin)
        }
        Request::Coord(request) => {
            let who = caller
                .accessor
                .as_ref()
                .map_or_else(|| caller.name.clone(), |accessor| pando_protocol::token::hex(accessor));
            services.coord.execute(&who, request, timeout).await.map(Response::Coord)
        }
        Request::Cluster(ClusterRequest::Join { node }) => {
            let accessor = caller
                .accessor
                .clone()
                .ok_or_else(|| WireError::new(ErrorCode::Unauthorized, "joining needs a join token"))?;
            services.cluster.join(node, caller.peer_key, accessor, timeout).await.map(Response::Cluster)
        }
        Request::Cluster(request) => services.cluster.execute(request).await.map(Response::Cluster),
        Request::Token(request) => services.tokens.execute(request, timeout).await.map(Response::Token),
        Request::Hook(request) => services.hooks.execute(request, timeout).await.map(Response::Hook),
        Request::Job(mut request) => {
            // A plugin job runs with its submitter's scope (a cron schedule's with its creator's), never with one
            // the client wrote into the spec: a token that may submit jobs gets no more through a job than through
            // a call.
            let scope = (!caller.capabilities.contains(&Capability::All)).then(|| caller.capabilities.clone());
            if let JobRequest::Command(JobCommand::Submit { spec } | JobCommand::CronCreate { spec, .. }) = &mut request
            {
                spec.scope = scope;
            }
            services.jobs.execute(request, timeout).await.map(Response::Job)
        }
        Request::Fs(request) => {
            // A mount whose token may only read hears at `open` for writing that the file system is read-only (as
            // a read-only mount answers), not at the `close` that writes its buffer back.
            if let FsRequest::Query { kind: FsQueryKind::Access { mask, .. }, .. } = &request
                && mask & 2 != 0
                && !caller.allows(Access::FsWrite)
            {
                return Err(Errno::EROFS.error("this token may read the file system, not change it"));
            }
            // A token that fixes its uid and gid runs every request as them, whoever the request names.
            let squashed = pando_protocol::token::fs_ids(&caller.capabilities);
            let request = match squashed {
                Some((uid, gid)) => request.acting_as(&pando_protocol::fs::Caller::new(uid, gid)),
                None => request,
            };
            // Its mounts' lock sessions are its own: no other token's mount renews, ends or locks with them.
            let sessions = match &caller.accessor {
                _ if caller.capabilities.contains(&Capability::All) => Bytes::new(),
                Some(accessor) => pando_protocol::fs::session_prefix(accessor),
                None => pando_protocol::fs::session_prefix(caller.name.as_bytes()),
            };
            services.fs.execute(request, sessions, squashed.is_some(), timeout).await.map(Response::Fs)
        }
        // Served on its own stream (`rpc::watch`), never as one request and one answer.
        Request::Watch(_) | Request::Observe(_) | Request::HookWatch(_) => {
            Err(WireError::internal("a watch was routed to the single-answer path"))
        }
    }
}
