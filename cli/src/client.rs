//! The client: one QUIC connection (reused for every request), one bi-stream per request, deadlines on every stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iroh::endpoint::{Connection, presets};
use iroh::{Endpoint, EndpointAddr, PublicKey};
use pando_protocol::alpn;
use pando_protocol::cluster::{ClusterRequest, ClusterResponse, ClusterStatus};
use pando_protocol::envelope::{PROTOCOL_VERSION, Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::frame::{self, LENGTH_PREFIX_BYTES};
use pando_protocol::kv::{Bytes, Compare, Consistency, KvEntry, KvRequest, KvResponse, TxnOp, TxnOpResult, WriteOp};
use pando_protocol::limits::REQUEST_TIMEOUT_MS_DEFAULT;
use pando_protocol::ticket::{Ticket, TicketNode};
use tokio::sync::Mutex;

use crate::error::ClientError;

/// How long establishing a connection to one node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one request, all stages included; also sent to the node.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT.into()) }
    }
}

pub struct Client {
    endpoint: Endpoint,
    ticket: Ticket,
    options: ClientOptions,
    connection: Mutex<Option<Connection>>,
    next_request_id: AtomicU64,
}

impl Client {
    /// Creates a client for the cluster in `ticket`. Connects lazily, on the first request.
    pub async fn new(ticket: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let ticket = Ticket::decode(ticket).map_err(|error| ClientError::Invalid(format!("bad ticket: {error}")))?;
        let endpoint = Endpoint::builder(presets::Minimal)
            .bind()
            .await
            .map_err(|error| ClientError::Transport(format!("cannot open a local endpoint: {error}")))?;
        Ok(Client { endpoint, ticket, options, connection: Mutex::new(None), next_request_id: AtomicU64::new(1) })
    }

    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// Closes the connection and the local endpoint.
    pub async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            connection.close(0u32.into(), b"client closed");
        }
        self.endpoint.close().await;
    }

    async fn connection(&self) -> Result<Connection, ClientError> {
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let mut last_error = None;
        for node in &self.ticket.nodes {
            match self.connect(node).await {
                Ok(connection) => {
                    *cached = Some(connection.clone());
                    return Ok(connection);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Invalid("ticket lists no nodes".into())))
    }

    async fn connect(&self, node: &TicketNode) -> Result<Connection, ClientError> {
        let key: [u8; 32] = node
            .node
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Invalid(format!("ticket has a bad key for node {}", node.node_id)))?;
        let key =
            PublicKey::from_bytes(&key).map_err(|error| ClientError::Invalid(format!("bad node key: {error}")))?;
        let mut addr = EndpointAddr::new(key);
        for socket in &node.node.addrs {
            addr = addr.with_ip_addr(*socket);
        }
        let connect = self.endpoint.connect(addr, alpn::RPC);
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(ClientError::Transport(format!("cannot connect to node {}: {error}", node.node_id))),
            Err(_) => Err(ClientError::Timeout(format!(
                "connecting to node {} took over {CONNECT_TIMEOUT_MS} ms",
                node.node_id
            ))),
        }
    }

    /// Sends one request and waits for its response, within the client's deadline.
    pub async fn request(&self, body: Request) -> Result<Response, ClientError> {
        let timeout = self.options.timeout;
        match tokio::time::timeout(timeout, self.request_inner(body, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(format!("no response within {} ms", timeout.as_millis()))),
        }
    }

    async fn request_inner(&self, body: Request, timeout: Duration) -> Result<Response, ClientError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            token: self.ticket.token.clone(),
            body,
        };
        let frame = frame::encode(&envelope).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let connection = self.connection().await?;
        let (mut send, mut recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            Err(_) => {
                // A cached connection may have died since its last use: reconnect once. Nothing was sent yet.
                self.connection.lock().await.take();
                self.connection()
                    .await?
                    .open_bi()
                    .await
                    .map_err(|error| ClientError::Transport(format!("cannot open a stream: {error}")))?
            }
        };
        send.write_all(&frame)
            .await
            .map_err(|error| ClientError::Transport(format!("cannot send request: {error}")))?;
        send.finish().map_err(|error| ClientError::Transport(format!("cannot finish request: {error}")))?;
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        recv.read_exact(&mut prefix).await.map_err(|error| {
            ClientError::Transport(format!("no response (the request may or may not have been applied): {error}"))
        })?;
        let length = frame::body_length(prefix).map_err(|error| ClientError::Protocol(error.to_string()))?;
        let mut body = vec![0u8; length];
        recv.read_exact(&mut body)
            .await
            .map_err(|error| ClientError::Transport(format!("response cut short: {error}")))?;
        let response: ResponseEnvelope =
            frame::decode(&body).map_err(|error| ClientError::Protocol(error.to_string()))?;
        if response.request_id != request_id && response.request_id != 0 {
            return Err(ClientError::Protocol(format!(
                "response for request {} arrived on the stream of request {request_id}",
                response.request_id
            )));
        }
        response.body.map_err(ClientError::Wire)
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
        written(self.kv(KvRequest::Put { key: bytes(key), value: bytes(value) }).await?)
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

    /// One page of keys starting with `prefix`, after `after`; the second value continues the scan.
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: u32,
        after: Option<&[u8]>,
        consistency: Consistency,
    ) -> Result<(Vec<KvEntry>, Option<Vec<u8>>), ClientError> {
        let request = KvRequest::Scan { prefix: bytes(prefix), limit, after: after.map(bytes), consistency };
        match self.kv(request).await? {
            KvResponse::ScanPage { entries, next } => Ok((entries, next.map(Bytes::into_vec))),
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

fn unexpected(response: &impl std::fmt::Debug) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}
