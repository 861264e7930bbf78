//! Executes one decoded request: authenticate, check it against the [access table](super::access), call the
//! service that serves it. Nothing else happens here: what a request does is the services' business.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::limits::{REQUEST_TIMEOUT_MS_DEFAULT, REQUEST_TIMEOUT_MS_MAX};
use pando_protocol::token::{Access, CapabilityToken, TokenClaims};

use super::access;
use crate::clock::Clock;
use crate::services::Services;

/// What the gateway needs to serve requests: how to check tokens, and the services requests go to.
#[derive(Clone)]
pub struct RpcContext {
    pub cluster_id: Vec<u8>,
    /// Verifies capability tokens.
    pub cluster_key: VerifyingKey,
    /// Token expiry is judged by it.
    pub clock: Clock,
    pub services: Services,
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
    let body = match check(context, cache, &envelope) {
        Ok(_) => {
            let work = execute(context, envelope.body, Duration::from_millis(timeout_ms.into()));
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

/// Everything a request passes before a service sees it, whichever way it is served (one answer, or a stream of its
/// own): a token that verifies, valid input, and every access the request needs.
pub(crate) fn check(
    context: &RpcContext,
    cache: &Mutex<TokenCache>,
    envelope: &RequestEnvelope,
) -> Result<Arc<TokenClaims>, WireError> {
    let claims = authenticate(context, cache, envelope.token.as_ref())?;
    access::validate(&envelope.body)?;
    for needed in access::required(&envelope.body) {
        authorise(&claims, needed)?;
    }
    Ok(claims)
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
    let now_ms = context.clock.now_ms();
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

/// Calls the service that serves a checked request.
async fn execute(context: &RpcContext, body: Request, timeout: Duration) -> Result<Response, WireError> {
    let services = &context.services;
    match body {
        Request::Kv(request) => services.kv.execute(request, timeout).await.map(Response::Kv),
        Request::Blob(request) => services.blobs.execute(request, timeout).await.map(Response::Blob),
        Request::Plugin(request) => services.plugins.execute(request, timeout).await.map(Response::Plugin),
        Request::Coord(request) => services.coord.execute(request, timeout).await.map(Response::Coord),
        Request::Cluster(request) => services.cluster.execute(request).await.map(Response::Cluster),
        // Served on its own stream (`rpc::watch`), never as one request and one answer.
        Request::Watch(_) | Request::Observe(_) => {
            Err(WireError::internal("a watch was routed to the single-answer path"))
        }
    }
}
