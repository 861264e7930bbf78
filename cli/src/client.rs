//! The client: one QUIC connection (reused for every request), one bi-stream per request, deadlines on every stage.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::sync::Arc;

use pando_protocol::cluster::{ActorReport, ClusterRequest, ClusterResponse, ClusterStatus, MemberNode};
use pando_protocol::coord::{CoordRequest, CoordResponse};
use pando_protocol::envelope::{PROTOCOL_VERSION, Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, ErrorDetail};
use pando_protocol::frame::{self, LENGTH_PREFIX_BYTES};
use pando_protocol::kv::{Bytes, Compare, Consistency, KvEntry, KvRequest, KvResponse, TxnOp, TxnOpResult, WriteOp};
use pando_protocol::limits::REQUEST_TIMEOUT_MS_DEFAULT;
use pando_protocol::ticket::{Ticket, TicketNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::error::ClientError;
use crate::transport::{IrohTransport, Link, RecvHalf, SendHalf, Transport};

/// One page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    pub entries: Vec<KvEntry>,
    /// Where the next page starts (pass it as `after`) when more keys may follow.
    pub next: Option<Vec<u8>>,
    /// The store's revision the page was read at.
    pub revision: u64,
}

/// How long establishing a connection to one node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_500;
/// How long each node of the ticket is dialled alone before the next one is dialled too.
pub const CONNECT_HEAD_START_MS: u64 = 250;
/// Longest wait for a graceful close of the client's endpoint.
pub const CLOSE_TIMEOUT_MS: u64 = 250;
/// Attempts per request (redirects to the leader and moves to another node included).
pub const ATTEMPTS_MAX: usize = 64;
/// A node that could not be reached is tried last (and not followed as leader) for this long.
pub const UNREACHABLE_BACKOFF_MS: u64 = 3_000;
/// Pause before asking again when no leader is known (an election is under way).
pub const ELECTION_BACKOFF_MS: u64 = 150;
/// Answers in a row from one node that it knows no leader before the client asks another node.
pub const LEADERLESS_ANSWERS_MAX: u32 = 3;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one request, all stages included; also sent to the node.
    pub timeout: Duration,
    /// How long a request may go on without reaching any node of the ticket before it fails `UNAVAILABLE`, naming
    /// the addresses it dialled (`None`: the whole deadline). A client that must ride out a restart of every node
    /// leaves it unset; a command line sets it short, so a typo or a stopped node is reported in seconds.
    pub connect_timeout: Option<Duration>,
}

impl ClientOptions {
    /// Options with a request deadline of `timeout` and no separate connect timeout.
    pub fn new(timeout: Duration) -> ClientOptions {
        ClientOptions { timeout, connect_timeout: None }
    }

    /// These options, failing a request that reached no node within `connect_timeout`.
    pub fn with_connect_timeout(self, connect_timeout: Duration) -> ClientOptions {
        ClientOptions { connect_timeout: Some(connect_timeout), ..self }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions::new(Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT.into()))
    }
}

/// Keep-alive on a node's connections (Raft, the actor mesh, blob copies, and its side of client connections).
pub const NODE_QUIC_KEEP_ALIVE_MS: u64 = 500;
/// A node closes a connection that heard nothing for this long: a killed peer is noticed within seconds (Raft's own
/// timeouts act sooner), and a node that a loaded machine stalls for a second keeps its sessions.
pub const NODE_QUIC_IDLE_TIMEOUT_MS: u64 = 3_000;
/// Keep-alive on a client's connections.
pub const CLIENT_QUIC_KEEP_ALIVE_MS: u64 = 250;
/// A client's connection closes after this long without a word from its node (QUIC takes the lower of the two
/// sides' idle timeouts). It is about the Raft election timeout: by the time a client notices a killed leader, a new
/// one is usually elected (failover from `kill -9` to the first write through the new leader within 1.5 s).
pub const CLIENT_QUIC_IDLE_TIMEOUT_MS: u64 = 1_000;
// Several keep-alives fit in each idle timeout, so one lost or late keep-alive closes nothing.
const _: () = assert!(CLIENT_QUIC_IDLE_TIMEOUT_MS >= 4 * CLIENT_QUIC_KEEP_ALIVE_MS);
const _: () = assert!(NODE_QUIC_IDLE_TIMEOUT_MS >= 4 * NODE_QUIC_KEEP_ALIVE_MS);
const _: () = assert!(CLIENT_QUIC_IDLE_TIMEOUT_MS <= NODE_QUIC_IDLE_TIMEOUT_MS);

/// QUIC settings of a node's endpoint: keep-alives and a short idle timeout, so a peer that died without closing its
/// connections (`kill -9`, a cut cable) is noticed in seconds rather than QUIC's default half a minute.
pub fn node_quic_transport_config() -> iroh::endpoint::QuicTransportConfig {
    quic_transport_config(NODE_QUIC_KEEP_ALIVE_MS, NODE_QUIC_IDLE_TIMEOUT_MS)
}

/// QUIC settings of a client's endpoint: a killed node is noticed within a second.
pub fn client_quic_transport_config() -> iroh::endpoint::QuicTransportConfig {
    quic_transport_config(CLIENT_QUIC_KEEP_ALIVE_MS, CLIENT_QUIC_IDLE_TIMEOUT_MS)
}

fn quic_transport_config(keep_alive_ms: u64, idle_timeout_ms: u64) -> iroh::endpoint::QuicTransportConfig {
    let idle = iroh::endpoint::IdleTimeout::try_from(Duration::from_millis(idle_timeout_ms))
        .expect("a few seconds is a valid idle timeout");
    iroh::endpoint::QuicTransportConfig::builder()
        .keep_alive_interval(Duration::from_millis(keep_alive_ms))
        .max_idle_timeout(Some(idle))
        .build()
}

pub struct Client {
    transport: Box<dyn Transport>,
    ticket: Ticket,
    options: ClientOptions,
    /// The node requests go to, and the connection to it.
    connection: Mutex<Option<(TicketNode, Arc<dyn Link>)>>,
    /// Index into the ticket's nodes to try first when no connection is open.
    next_node: AtomicUsize,
    pub(crate) next_request_id: AtomicU64,
    /// Nodes that could not be reached lately, and when; skipped for [`UNREACHABLE_BACKOFF_MS`].
    unreachable: std::sync::Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>,
    /// Why the last dial of each node failed, for the error that names them when none can be reached.
    dial_errors: std::sync::Mutex<std::collections::BTreeMap<u64, String>>,
}

/// Why one attempt failed, and whether another attempt is safe.
enum Attempt {
    /// Nothing reached the node: retry elsewhere.
    NotSent(ClientError),
    /// The node refused without applying anything and named (or did not know) the leader.
    Redirect(Option<TicketNode>),
    /// Final: success or an error the caller must see.
    Done(Result<Response, ClientError>),
}

impl Client {
    /// Creates a client for the cluster in `ticket`. Connects lazily, on the first request.
    pub async fn new(ticket: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let ticket = Ticket::decode(ticket).map_err(|error| ClientError::Invalid(format!("bad ticket: {error}")))?;
        Ok(Client::with_transport(ticket, options, Box::new(IrohTransport::bind(None).await?)))
    }

    /// A client whose connections authenticate with `secret_key` (a node calling its cluster as itself: the node's
    /// key is its credential, and a joining node proves it holds the key it registers).
    pub async fn new_as(ticket: &str, options: ClientOptions, secret_key: [u8; 32]) -> Result<Client, ClientError> {
        let ticket = Ticket::decode(ticket).map_err(|error| ClientError::Invalid(format!("bad ticket: {error}")))?;
        Ok(Client::with_transport(ticket, options, Box::new(IrohTransport::bind(Some(secret_key)).await?)))
    }

    /// A client that reaches the ticket's nodes through `transport` (the simulator's network, in tests).
    pub fn with_transport(ticket: Ticket, options: ClientOptions, transport: Box<dyn Transport>) -> Client {
        Client {
            transport,
            ticket,
            options,
            connection: Mutex::new(None),
            next_node: AtomicUsize::new(0),
            next_request_id: AtomicU64::new(1),
            unreachable: std::sync::Mutex::default(),
            dial_errors: std::sync::Mutex::default(),
        }
    }

    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Closes the connection and the local endpoint. Waits at most [`CLOSE_TIMEOUT_MS`]: a graceful close also waits
    /// for peers that never answered (a dead node dialled in parallel), which would otherwise hold a CLI invocation
    /// for the whole idle timeout.
    pub async fn close(&self) {
        if let Some((_, connection)) = self.connection.lock().await.take() {
            connection.close();
        }
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_TIMEOUT_MS), self.transport.close()).await;
    }

    pub(crate) async fn connection(&self) -> Result<Arc<dyn Link>, ClientError> {
        let mut cached = self.connection.lock().await;
        if let Some((_, connection)) = cached.as_ref()
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let nodes = &self.ticket.nodes;
        let start = self.next_node.load(Ordering::Relaxed);
        let order: Vec<usize> = (0..nodes.len()).map(|offset| (start + offset) % nodes.len()).collect();
        // Happy eyeballs: nodes not known to be down are dialled in ticket order, each a short head start after the
        // previous, and the first to answer wins. A live first node is always the one used (so a ticket that names
        // a node first talks to that node), and a dead one costs a head start instead of a connect timeout. If all
        // fail, the recently failed nodes get their turn.
        let (fresh, stale): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|index| !self.recently_unreachable(nodes[*index].node_id));
        let mut last_error = None;
        for group in [fresh, stale] {
            if group.is_empty() {
                continue;
            }
            let attempts = group.iter().enumerate().map(|(position, index)| {
                let index = *index;
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(CONNECT_HEAD_START_MS * position as u64)).await;
                    self.connect(&nodes[index]).await.map(|connection| (index, connection))
                })
            });
            match futures::future::select_ok(attempts).await {
                Ok(((index, connection), _)) => {
                    self.next_node.store(index, Ordering::Relaxed);
                    *cached = Some((nodes[index].clone(), connection.clone()));
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Invalid("ticket lists no nodes".into())))
    }

    /// Forgets the current connection; the next attempt starts with the following node of the ticket.
    pub(crate) async fn drop_connection(&self) {
        if self.connection.lock().await.take().is_some() {
            self.next_node.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a connection a request failed on. A closed one means its node died or cannot be reached (a killed
    /// leader is noticed by the QUIC idle timeout): the node is then tried last and not followed as leader for
    /// [`UNREACHABLE_BACKOFF_MS`], so a follower that still names it sends the client into a short election backoff
    /// instead of a connect timeout.
    async fn drop_failed_connection(&self) {
        let closed = {
            let cached = self.connection.lock().await;
            cached.as_ref().filter(|(_, link)| link.is_closed()).map(|(node, _)| node.node_id)
        };
        if let Some(node_id) = closed {
            let mut unreachable = self.unreachable.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            unreachable.insert(node_id, tokio::time::Instant::now());
        }
        self.drop_connection().await;
    }

    async fn use_node(&self, node: TicketNode) -> Result<(), ClientError> {
        let connection = self.connect(&node).await?;
        if let Some(index) = self.ticket.nodes.iter().position(|known| known.node_id == node.node_id) {
            self.next_node.store(index, Ordering::Relaxed);
        }
        *self.connection.lock().await = Some((node, connection));
        Ok(())
    }

    fn recently_unreachable(&self, node_id: u64) -> bool {
        let unreachable = self.unreachable.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        unreachable.get(&node_id).is_some_and(|at| at.elapsed() < Duration::from_millis(UNREACHABLE_BACKOFF_MS))
    }

    async fn connect(&self, node: &TicketNode) -> Result<Arc<dyn Link>, ClientError> {
        let result = self.connect_once(node).await;
        let mut unreachable = self.unreachable.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut dial_errors = self.dial_errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &result {
            Ok(_) => {
                unreachable.remove(&node.node_id);
                dial_errors.remove(&node.node_id);
            }
            Err(error) => {
                unreachable.insert(node.node_id, tokio::time::Instant::now());
                let reason = match error {
                    ClientError::Transport(reason) | ClientError::Timeout(reason) => reason.clone(),
                    other => other.to_string(),
                };
                dial_errors.insert(node.node_id, reason);
            }
        };
        result
    }

    /// The error of a request that reached no node: every node of the ticket with its addresses and why its last
    /// dial failed, and what to check.
    fn unreachable_error(&self, waited: Duration) -> ClientError {
        let dial_errors = self.dial_errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let nodes: Vec<String> = self
            .ticket
            .nodes
            .iter()
            .map(|node| {
                let addrs: Vec<String> = node.node.addrs.iter().map(ToString::to_string).collect();
                let addrs = if addrs.is_empty() { "no address".to_string() } else { addrs.join(", ") };
                let why = dial_errors.get(&node.node_id).map_or("no answer", String::as_str);
                format!("node {} at {addrs} ({why})", node.node_id)
            })
            .collect();
        ClientError::Unreachable(format!(
            "reached no node of the ticket within {} ms: {}. Check that pando-node is running and listening on that \
             address (QUIC over UDP; a firewall must let UDP through), and that the ticket is current: the founding \
             node rewrites <data-dir>/ticket when members change",
            waited.as_millis(),
            nodes.join("; ")
        ))
    }

    async fn connect_once(&self, node: &TicketNode) -> Result<Arc<dyn Link>, ClientError> {
        let connect = self.transport.connect(node);
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(format!("no answer within {CONNECT_TIMEOUT_MS} ms"))),
        }
    }

    /// Opens a stream for one request; a failure drops the connection, so the next attempt dials again.
    pub(crate) async fn open(&self) -> Result<(SendHalf, RecvHalf), ClientError> {
        let connection = self.connection().await?;
        match connection.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(error) => {
                self.drop_failed_connection().await;
                Err(ClientError::Transport(format!("cannot open a stream: {error}")))
            }
        }
    }

    /// Opens a stream for a long-lived request (a watch, an observation) or a blob transfer. With a connect timeout,
    /// an open that reaches no node within it fails [`ClientError::Unreachable`], naming every address of the
    /// ticket, as a request does.
    pub(crate) async fn open_stream(&self) -> Result<(SendHalf, RecvHalf), ClientError> {
        let Some(limit) = self.options.connect_timeout else { return self.open().await };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(limit, self.connection()).await {
            Ok(Ok(_)) => self.open().await,
            Ok(Err(_)) | Err(_) => Err(self.unreachable_error(started.elapsed())),
        }
    }

    /// Sends one request and waits for its response, within the client's deadline. Follows `NOT_LEADER` to the
    /// leader and moves to another node when one cannot be reached; never resends a request that may have been applied.
    pub async fn request(&self, body: Request) -> Result<Response, ClientError> {
        self.request_within(body, self.options.timeout).await
    }

    /// [`Client::request`] with a deadline of its own instead of the client's.
    pub async fn request_within(&self, body: Request, timeout: Duration) -> Result<Response, ClientError> {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Whether a stream to a node opened for this request (set before the request is written, so a request that
        // may have been applied always counts): until one has, failures are about reaching the cluster. With a
        // connect timeout, such a request fails when it runs out, naming the addresses dialled.
        let reached = std::sync::atomic::AtomicBool::new(false);
        let connect_deadline = self.options.connect_timeout.map(|limit| started + limit);
        let unreachable = || connect_deadline.is_some() && !reached.load(Ordering::Relaxed);
        let attempts = async {
            let mut last_error = None;
            // Answers in a row from the current node that it knows no leader.
            let mut leaderless = 0;
            for _ in 0..ATTEMPTS_MAX {
                match self.attempt(&body, deadline, &reached, connect_deadline).await {
                    Attempt::Done(result) => return result,
                    Attempt::NotSent(error) => {
                        self.drop_connection().await;
                        if unreachable() && connect_deadline.is_some_and(|limit| tokio::time::Instant::now() >= limit) {
                            return Err(self.unreachable_error(started.elapsed()));
                        }
                        last_error = Some(error);
                    }
                    Attempt::Redirect(Some(leader)) if self.recently_unreachable(leader.node_id) => {
                        // The node still names a leader that just failed us: an election is probably under way.
                        tokio::time::sleep(Duration::from_millis(ELECTION_BACKOFF_MS)).await;
                    }
                    Attempt::Redirect(Some(leader)) => {
                        if let Err(error) = self.use_node(leader).await {
                            self.drop_connection().await;
                            last_error = Some(error);
                        }
                    }
                    Attempt::Redirect(None) => {
                        // An election is under way: give it a moment. A node that keeps knowing no leader may have
                        // left the cluster (it never will): the next node is asked.
                        leaderless += 1;
                        if leaderless % LEADERLESS_ANSWERS_MAX == 0 {
                            self.drop_connection().await;
                        }
                        tokio::time::sleep(Duration::from_millis(ELECTION_BACKOFF_MS)).await;
                        continue;
                    }
                }
                leaderless = 0;
            }
            if unreachable() {
                return Err(self.unreachable_error(started.elapsed()));
            }
            Err(last_error.unwrap_or_else(|| ClientError::Transport("no leader found".into())))
        };
        match tokio::time::timeout_at(deadline, attempts).await {
            Ok(result) => result,
            Err(_) if unreachable() => Err(self.unreachable_error(timeout)),
            Err(_) => Err(ClientError::Timeout(format!("no response within {} ms", timeout.as_millis()))),
        }
    }

    /// One try: open a stream (within `connect_deadline` while `reached` is unset), mark `reached`, send, read.
    async fn attempt(
        &self,
        body: &Request,
        deadline: tokio::time::Instant,
        reached: &std::sync::atomic::AtomicBool,
        connect_deadline: Option<tokio::time::Instant>,
    ) -> Attempt {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms: remaining.as_millis().clamp(1, u32::MAX as u128) as u32,
            token: self.ticket.token.clone(),
            body: body.clone(),
        };
        let frame = match frame::encode(&envelope) {
            Ok(frame) => frame,
            Err(error) => return Attempt::Done(Err(ClientError::Invalid(error.to_string()))),
        };
        let opened = match connect_deadline.filter(|_| !reached.load(Ordering::Relaxed)) {
            Some(limit) => tokio::time::timeout_at(limit, self.open()).await.unwrap_or_else(|_| {
                Err(ClientError::Timeout("no node answered within the connect timeout".to_string()))
            }),
            None => self.open().await,
        };
        let (mut send, mut recv) = match opened {
            Ok(streams) => streams,
            Err(error) => return Attempt::NotSent(error),
        };
        reached.store(true, Ordering::Relaxed);
        if let Err(error) = send.write_all(&frame).await {
            return Attempt::Done(Err(ClientError::Transport(format!("cannot send request: {error}"))));
        }
        if let Err(error) = send.shutdown().await {
            return Attempt::Done(Err(ClientError::Transport(format!("cannot finish request: {error}"))));
        }
        let response = read_response(&mut recv, request_id).await;
        take_end(&mut recv);
        match response {
            Err(error) => {
                // The connection may be dead: the next request dials again.
                self.drop_failed_connection().await;
                Attempt::Done(Err(error))
            }
            Ok(Ok(response)) => Attempt::Done(Ok(response)),
            Ok(Err(error)) if error.code == ErrorCode::NotLeader => match &error.detail {
                Some(ErrorDetail::Leader { node_id, public_key, addrs }) => Attempt::Redirect(Some(TicketNode {
                    node_id: *node_id,
                    node: MemberNode { public_key: Bytes::from(public_key.clone()), addrs: addrs.clone() },
                })),
                _ => Attempt::Redirect(None),
            },
            Ok(Err(error)) => Attempt::Done(Err(ClientError::Wire(error))),
        }
    }

    async fn kv(&self, request: KvRequest) -> Result<KvResponse, ClientError> {
        match self.request(Request::Kv(request)).await? {
            Response::Kv(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<KvEntry>, ClientError> {
        match self.kv(KvRequest::Get { key: bytes(key), consistency }).await? {
            KvResponse::Entry { entry } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Stores `value` under `key`; returns the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        written(self.kv(KvRequest::Put { key: bytes(key), value: bytes(value), lease: None }).await?)
    }

    /// Sets `key` tied to `lease`: the key is deleted when the lease is revoked or lapses.
    pub async fn put_leased(&self, key: &[u8], value: &[u8], lease: u64) -> Result<u64, ClientError> {
        written(self.kv(KvRequest::Put { key: bytes(key), value: bytes(value), lease: Some(lease) }).await?)
    }

    /// Deletes `key`; returns the revision and whether the key existed.
    pub async fn delete(&self, key: &[u8]) -> Result<(u64, bool), ClientError> {
        match self.kv(KvRequest::Delete { key: bytes(key) }).await? {
            KvResponse::Deleted { revision, existed } => Ok((revision, existed)),
            other => Err(unexpected(&other)),
        }
    }

    /// Compare-and-swap; a mismatch is `CONFLICT` with the current entry in the error detail.
    pub async fn cas(&self, key: &[u8], expected: Option<&[u8]>, value: &[u8]) -> Result<u64, ClientError> {
        written(self.kv(KvRequest::Cas { key: bytes(key), expected: expected.map(bytes), value: bytes(value) }).await?)
    }

    /// Compare-and-delete; a mismatch is `CONFLICT` with the current entry in the error detail.
    pub async fn cad(&self, key: &[u8], expected: &[u8]) -> Result<u64, ClientError> {
        match self.kv(KvRequest::Cad { key: bytes(key), expected: bytes(expected) }).await? {
            KvResponse::Deleted { revision, .. } => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops the change history below `revision` on every member; answers where the history now starts and the
    /// current revision. Compacting to or below the compacted revision changes nothing.
    pub async fn compact(&self, revision: u64) -> Result<(u64, u64), ClientError> {
        match self.kv(KvRequest::Compact { revision }).await? {
            KvResponse::Compacted { compacted, revision } => Ok((compacted, revision)),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of keys starting with `prefix`, after `after` (see [`ScanPage`]).
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: u32,
        after: Option<&[u8]>,
        consistency: Consistency,
    ) -> Result<ScanPage, ClientError> {
        let request = KvRequest::Scan { prefix: bytes(prefix), limit, after: after.map(bytes), consistency };
        match self.kv(request).await? {
            KvResponse::ScanPage { entries, next, revision } => {
                Ok(ScanPage { entries, next: next.map(Bytes::into_vec), revision })
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn batch_get(
        &self,
        keys: &[Vec<u8>],
        consistency: Consistency,
    ) -> Result<Vec<Option<KvEntry>>, ClientError> {
        let request = KvRequest::BatchGet { keys: keys.iter().map(|key| bytes(key)).collect(), consistency };
        match self.kv(request).await? {
            KvResponse::Entries { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Applies every operation atomically; returns the revision.
    pub async fn batch_write(&self, ops: Vec<WriteOp>) -> Result<u64, ClientError> {
        written(self.kv(KvRequest::BatchWrite { ops }).await?)
    }

    /// Runs a transaction; returns whether the compares held, the revision and each operation's result.
    pub async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<(bool, u64, Vec<TxnOpResult>), ClientError> {
        match self.kv(KvRequest::Txn { compares, success, failure }).await? {
            KvResponse::Txn { succeeded, revision, results } => Ok((succeeded, revision, results)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cluster(&self, request: ClusterRequest) -> Result<ClusterResponse, ClientError> {
        match self.request(Request::Cluster(request)).await? {
            Response::Cluster(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn coord(&self, request: CoordRequest) -> Result<CoordResponse, ClientError> {
        match self.request(Request::Coord(request)).await? {
            Response::Coord(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The supervision tree of the node that answers, depth first, and that node's id (`None` from nodes older than
    /// the field).
    pub async fn actors(&self) -> Result<(Option<u64>, Vec<ActorReport>), ClientError> {
        match self.request(Request::Cluster(ClusterRequest::Actors)).await? {
            Response::Cluster(ClusterResponse::Actors { actors, node_id }) => Ok((node_id, actors)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(Request::Cluster(ClusterRequest::Status)).await? {
            Response::Cluster(ClusterResponse::Status(status)) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }
}

fn bytes(data: &[u8]) -> Bytes {
    Bytes::from(data.to_vec())
}

fn written(response: KvResponse) -> Result<u64, ClientError> {
    match response {
        KvResponse::Written { revision } => Ok(revision),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn unexpected(response: &impl std::fmt::Debug) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

/// Takes the end of a one-response stream if it already arrived, without waiting: a QUIC stream dropped before its
/// end was read sends the node a `STOP_SENDING`, which the node acknowledges (two packets per request for nothing).
fn take_end(recv: &mut RecvHalf) {
    let mut past = [0u8; 1];
    let _ = futures::FutureExt::now_or_never(recv.read(&mut past));
}

/// Reads the response frame of request `request_id` from its stream.
pub(crate) async fn read_response(
    recv: &mut RecvHalf,
    request_id: u64,
) -> Result<Result<Response, pando_protocol::error::WireError>, ClientError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(|error| {
        ClientError::Transport(format!("no response (the request may or may not have been applied): {error}"))
    })?;
    let length = frame::body_length(prefix).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let mut body = vec![0u8; length];
    recv.read_exact(&mut body).await.map_err(|error| ClientError::Transport(format!("response cut short: {error}")))?;
    let response: ResponseEnvelope = frame::decode(&body).map_err(|error| ClientError::Protocol(error.to_string()))?;
    if response.request_id != request_id && response.request_id != 0 {
        return Err(ClientError::Protocol(format!(
            "response for request {} arrived on the stream of request {request_id}",
            response.request_id
        )));
    }
    Ok(response.body)
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
