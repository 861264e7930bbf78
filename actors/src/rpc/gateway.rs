//! The RpcGateway actor: serves client connections (ALPN `pando/rpc/1`) and bounds what clients can make it hold.
//!
//! On iroh, the node's protocol router ([`crate::endpoint`]) accepts every connection and hands the clients' to the
//! running gateway through its [`GatewayHandle`], so a gateway restart drops client connections only, never the
//! peers'. In the simulator the gateway runs its own accept loop on the simulated network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pando_protocol::envelope::{RequestEnvelope, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admission::Unverified;
use super::handler::{RpcContext, TokenCache, check, serve};
use super::link::{ClientConnection, RpcListener, StreamRecv, StreamSend};
use super::sim_link::SimRpcListener;
use super::stream::{ReadFailure, read_request, write_response};
use super::{
    RPC_CONNECTION_AUTH_TIMEOUT_MS, RPC_CONNECTION_CHECK_INTERVAL_MS, RPC_CONNECTION_IDLE_TIMEOUT_MS,
    RPC_CONNECTIONS_MAX, RPC_EVICTION_WAIT_MS, RPC_REQUESTS_IN_FLIGHT_MAX, RPC_UNVERIFIED_STREAMS_PER_CONNECTION_MAX,
};
use crate::live::Live;
use crate::supervision::{ActorDetail, Control};

#[derive(Clone, Copy, Debug, Default)]
pub struct RpcGateway;

#[derive(Clone)]
pub struct RpcArgs {
    pub listener: RpcListener,
    pub context: RpcContext,
}

pub enum RpcMsg {
    Status(RpcReplyPort<RpcGatewayStatus>),
    /// Status for `pando actors`, and fault injection (the gateway panics; its supervisor restarts it and open
    /// connections break).
    Control(Control),
}

impl ractor::Message for RpcMsg {}

impl From<Control> for RpcMsg {
    fn from(control: Control) -> RpcMsg {
        RpcMsg::Control(control)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RpcGatewayStatus {
    pub connections_open: usize,
    /// Connections that have not presented a valid token yet.
    pub connections_unverified: usize,
    /// Unauthenticated connections closed to make room for newer ones.
    pub connections_evicted: u64,
    pub requests_in_flight: usize,
    pub requests_total: u64,
    pub requests_refused_busy: u64,
    pub frames_rejected: u64,
}

#[derive(Default)]
struct Counters {
    requests_total: AtomicU64,
    requests_refused_busy: AtomicU64,
    frames_rejected: AtomicU64,
}

struct Shared {
    context: RpcContext,
    /// Cancelled when the gateway stops: ends every connection and stream task of this instance.
    shutdown: CancellationToken,
    connections: Arc<Semaphore>,
    /// The connections that have not authenticated yet, with limits of their own.
    unverified: Arc<Unverified>,
    requests: Arc<Semaphore>,
    counters: Counters,
}

impl Shared {
    /// A connection slot: a free one, else the slot of the oldest unauthenticated connection, closed to make room.
    async fn connection_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Some(permit);
        }
        if !self.unverified.evict_oldest() {
            tracing::warn!("connection limit of {RPC_CONNECTIONS_MAX} reached, refusing a client");
            return None;
        }
        let wait = Duration::from_millis(RPC_EVICTION_WAIT_MS);
        tokio::time::timeout(wait, self.connections.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// Where the protocol router hands the running gateway its client connections.
#[derive(Clone)]
pub struct GatewayHandle {
    live: Live<Arc<Shared>>,
}

impl Default for GatewayHandle {
    fn default() -> GatewayHandle {
        GatewayHandle { live: Live::new("rpc gateway") }
    }
}

impl GatewayHandle {
    /// Serves one client connection the router accepted, within the running gateway's limits, until the client
    /// closes it, it idles, it never authenticates, or the gateway stops.
    pub async fn serve(&self, connection: iroh::endpoint::Connection) {
        let Ok(shared) = self.live.get() else {
            connection.close(2u32.into(), b"rpc gateway restarting");
            return;
        };
        let Some(permit) = shared.connection_slot().await else {
            connection.close(5u32.into(), b"too many connections");
            return;
        };
        serve_client(ClientConnection::Iroh(connection), shared, permit).await;
    }
}

pub struct RpcState {
    shared: Arc<Shared>,
    /// The simulator's accept loop; on iroh the router accepts.
    accept_loop: Option<JoinHandle<()>>,
    /// Where this instance is published (on iroh).
    handle: Option<GatewayHandle>,
}

impl RpcState {
    fn shutdown(&self) {
        if let Some(handle) = &self.handle {
            handle.live.retract_if(|shared| Arc::ptr_eq(shared, &self.shared));
        }
        self.shared.shutdown.cancel();
        if let Some(accept_loop) = &self.accept_loop {
            accept_loop.abort();
        }
    }
}

impl Drop for RpcState {
    /// A killed gateway skips `post_stop`; its tasks must still end so a restart never doubles the limits.
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Actor for RpcGateway {
    type Msg = RpcMsg;
    type State = RpcState;
    type Arguments = RpcArgs;

    async fn pre_start(&self, _myself: ActorRef<RpcMsg>, args: RpcArgs) -> Result<RpcState, ActorProcessingErr> {
        let shared = Arc::new(Shared {
            context: args.context,
            shutdown: CancellationToken::new(),
            connections: Arc::new(Semaphore::new(RPC_CONNECTIONS_MAX)),
            unverified: Arc::default(),
            requests: Arc::new(Semaphore::new(RPC_REQUESTS_IN_FLIGHT_MAX)),
            counters: Counters::default(),
        });
        match args.listener {
            RpcListener::Router(handle) => {
                handle.live.publish(shared.clone());
                Ok(RpcState { shared, accept_loop: None, handle: Some(handle) })
            }
            RpcListener::Simulated(listener) => {
                let accept_loop = tokio::spawn(accept_loop(listener, shared.clone()));
                Ok(RpcState { shared, accept_loop: Some(accept_loop), handle: None })
            }
        }
    }

    async fn post_stop(&self, _myself: ActorRef<RpcMsg>, state: &mut RpcState) -> Result<(), ActorProcessingErr> {
        state.shutdown();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RpcMsg>,
        message: RpcMsg,
        state: &mut RpcState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RpcMsg::Control(Control::InjectPanic) => panic!("fault injection: rpc gateway panics on request"),
            RpcMsg::Control(Control::Status(reply, _)) => {
                let shared = &state.shared;
                let _ = reply.send(ActorDetail::line(format!(
                    "{} connections, {} requests in flight, {} served, {} refused busy",
                    RPC_CONNECTIONS_MAX - shared.connections.available_permits(),
                    RPC_REQUESTS_IN_FLIGHT_MAX - shared.requests.available_permits(),
                    shared.counters.requests_total.load(Ordering::Relaxed),
                    shared.counters.requests_refused_busy.load(Ordering::Relaxed)
                )));
            }
            RpcMsg::Status(reply) => {
                let shared = &state.shared;
                let (connections_unverified, connections_evicted) = shared.unverified.counts();
                let _ = reply.send(RpcGatewayStatus {
                    connections_open: RPC_CONNECTIONS_MAX - shared.connections.available_permits(),
                    connections_unverified,
                    connections_evicted,
                    requests_in_flight: RPC_REQUESTS_IN_FLIGHT_MAX - shared.requests.available_permits(),
                    requests_total: shared.counters.requests_total.load(Ordering::Relaxed),
                    requests_refused_busy: shared.counters.requests_refused_busy.load(Ordering::Relaxed),
                    frames_rejected: shared.counters.frames_rejected.load(Ordering::Relaxed),
                });
            }
        }
        Ok(())
    }
}

/// Takes simulated connections while the listener lives; each is served in its own task holding one connection slot.
async fn accept_loop(listener: SimRpcListener, shared: Arc<Shared>) {
    while let Some(connection) = listener.accept().await {
        let Some(permit) = shared.connection_slot().await else {
            connection.close();
            continue;
        };
        tokio::spawn(serve_client(ClientConnection::Simulated(connection), shared.clone(), permit));
    }
}

/// Serves one client connection holding one connection slot, until it ends or the gateway stops.
async fn serve_client(connection: ClientConnection, shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) {
    let _permit = permit;
    let shutdown = shared.shutdown.clone();
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => connection.close(2, b"node stopping"),
        () = serve_connection(&connection, shared) => {}
    }
}

/// Serves the streams of one connection until the client closes it, it idles, or it never authenticates.
async fn serve_connection(connection: &ClientConnection, shared: Arc<Shared>) {
    let remote = connection.remote();
    tracing::debug!(%remote, "client connected");
    // Until its first token verifies, the connection is one of the unauthenticated ones: it may be closed to make
    // room for a newer connection (see `admission`).
    let (slot, evicted) = shared.unverified.admit(connection.source());
    let mut evicted = Some(evicted);
    // Streams of one connection share its token cache, which gives the slot back once a token verifies.
    let cache = Arc::new(std::sync::Mutex::new(TokenCache::for_peer(connection.peer_key(), slot)));
    // Streams still being read and authenticated, per connection: a client that opens streams and stalls them (or
    // presents no valid token) holds these, never the node's request slots.
    let unverified = Arc::new(Semaphore::new(RPC_UNVERIFIED_STREAMS_PER_CONNECTION_MAX));
    let streams_open = Arc::new(AtomicUsize::new(0));
    let connected_at = tokio::time::Instant::now();
    let mut last_stream_at = connected_at;
    loop {
        let accepted = tokio::select! {
            biased;
            () = async { match &evicted { Some(evicted) => evicted.cancelled().await, None => std::future::pending().await } } => {
                // Picked in the moment it authenticated: it keeps its place (and is no longer evictable).
                if cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_authenticated() {
                    evicted = None;
                    continue;
                }
                tracing::debug!(%remote, "closing an unauthenticated connection to make room for a newer one");
                connection.close(7, b"unauthenticated connections at their limit");
                return;
            }
            accepted = connection.accept_bi() => accepted,
            () = tokio::time::sleep(Duration::from_millis(RPC_CONNECTION_CHECK_INTERVAL_MS)) => {
                // A slot held by a client that never proves who it is, or that went quiet, is a slot another client lacks.
                let authenticated = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_authenticated();
                if !authenticated && connected_at.elapsed() >= Duration::from_millis(RPC_CONNECTION_AUTH_TIMEOUT_MS) {
                    tracing::debug!(%remote, "closing a connection that presented no valid token");
                    connection.close(3, b"no valid token presented");
                    return;
                }
                if streams_open.load(Ordering::Relaxed) == 0
                    && last_stream_at.elapsed() >= Duration::from_millis(RPC_CONNECTION_IDLE_TIMEOUT_MS)
                {
                    tracing::debug!(%remote, "closing an idle connection");
                    connection.close(4, b"idle");
                    return;
                }
                continue;
            }
        };
        let (send, recv) = match accepted {
            Ok(streams) => streams,
            Err(error) => {
                tracing::debug!(%remote, %error, "client connection closed");
                return;
            }
        };
        last_stream_at = tokio::time::Instant::now();
        let shared = shared.clone();
        let cache = cache.clone();
        let unverified = unverified.clone();
        let shutdown = shared.shutdown.clone();
        let streams_open = streams_open.clone();
        streams_open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                () = serve_stream(send, recv, shared, cache, unverified) => {}
            }
            streams_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serves one stream: reads and checks its request holding one of the connection's unverified slots, then serves it
/// holding one of the node's request slots (a watch holds one of the watch service's instead).
async fn serve_stream(
    mut send: StreamSend,
    mut recv: StreamRecv,
    shared: Arc<Shared>,
    cache: Arc<std::sync::Mutex<TokenCache>>,
    unverified: Arc<Semaphore>,
) {
    let Ok(slot) = unverified.acquire_owned().await else { return };
    let body = match read_request(&mut recv).await {
        Ok(body) => body,
        Err(ReadFailure::Gone) => return,
        Err(ReadFailure::Refused(error)) => {
            shared.counters.frames_rejected.fetch_add(1, Ordering::Relaxed);
            write_response(&mut send, &ResponseEnvelope { request_id: 0, body: Err(error) }).await;
            return;
        }
    };
    let envelope = match RequestEnvelope::decode(&body) {
        Ok(envelope) => envelope,
        Err(rejected) => {
            shared.counters.frames_rejected.fetch_add(1, Ordering::Relaxed);
            let response = ResponseEnvelope { request_id: rejected.request_id.unwrap_or(0), body: Err(rejected.error) };
            write_response(&mut send, &response).await;
            return;
        }
    };
    shared.counters.requests_total.fetch_add(1, Ordering::Relaxed);
    let request_id = envelope.request_id;
    let caller = match check(&shared.context, &cache, &envelope).await {
        Ok(caller) => caller,
        Err(error) => {
            write_response(&mut send, &ResponseEnvelope { request_id, body: Err(error) }).await;
            return;
        }
    };
    drop(slot);
    if super::watch::is_watch(&envelope) {
        // A watch lives long: it holds one of the watch service's slots, not one of the node's request slots.
        super::watch::serve_stream(&shared.context, envelope, send, recv).await;
        return;
    }
    let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
        shared.counters.requests_refused_busy.fetch_add(1, Ordering::Relaxed);
        let error = WireError::new(ErrorCode::Busy, "node is at its request limit, retry with backoff");
        write_response(&mut send, &ResponseEnvelope { request_id, body: Err(error) }).await;
        return;
    };
    if super::blobs::is_streamed(&envelope) {
        super::blobs::serve_stream(&shared.context, envelope, send, recv).await;
        return;
    }
    let body = serve(&shared.context, caller, envelope).await;
    write_response(&mut send, &ResponseEnvelope { request_id, body }).await;
    super::stream::take_end(&mut recv);
    drop(permit);
}
