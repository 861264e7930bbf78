//! Raft between members over iroh (ALPN `pando/raft/1`): one pooled connection per peer, one bi-stream per RPC, a
//! deadline on every stage. Each RPC has its own QUIC stream, so a snapshot chunk or a large append never holds up a
//! heartbeat behind it (QUIC streams have no head-of-line blocking between them).
//!
//! Only members are served: the remote's iroh identity must be a node of the current membership, or a peer this node
//! was told to trust when it joined (its own log holds no membership until the leader replicates it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::{Endpoint, EndpointAddr, PublicKey};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use pando_protocol::alpn;
use pando_protocol::cluster::MemberNode;
use pando_protocol::frame::{self, LENGTH_PREFIX_BYTES};
use pando_protocol::limits::RAFT_FRAME_SIZE_BYTES_MAX;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::handle::{PeerHealth, RaftHandle};
use super::type_config::{NodeId, TypeConfig};

/// How long dialling a peer may take.
pub const RAFT_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Deadline of one RPC when openraft gives none.
pub const RAFT_RPC_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Raft RPCs one peer connection serves at once.
pub const RAFT_STREAMS_PER_PEER_MAX: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The peer would not serve the request (not running, or we are not a member).
    Refused(String),
}

/// openraft's network factory over the node's iroh endpoint.
/// One peer's pooled connection. Each peer has its own lock, so dialling a dead peer never delays RPCs to the others.
type PeerSlot = Arc<Mutex<Option<Connection>>>;

#[derive(Clone)]
pub struct IrohNetwork {
    endpoint: Endpoint,
    pool: Arc<std::sync::Mutex<BTreeMap<NodeId, PeerSlot>>>,
    /// Stamped with every answer a peer gives (see [`RaftHandle::peer_heard_within`]).
    health: PeerHealth,
}

impl IrohNetwork {
    pub fn new(endpoint: Endpoint, health: PeerHealth) -> IrohNetwork {
        IrohNetwork { endpoint, pool: Arc::default(), health }
    }
}

/// How a member's Raft reaches the others: over iroh, or through the simulation's in-memory network. Both carry the
/// same [`RaftRequest`] frames to the same [`dispatch`] on the receiving node.
#[derive(Clone)]
pub enum RaftTransport {
    Iroh(IrohNetwork),
    Simulated(super::sim_network::SimRaftNetwork),
}

impl From<IrohNetwork> for RaftTransport {
    fn from(network: IrohNetwork) -> RaftTransport {
        RaftTransport::Iroh(network)
    }
}

pub struct PeerClient {
    target: NodeId,
    node: MemberNode,
    transport: RaftTransport,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TransportError(pub(crate) String);

impl RaftNetworkFactory<TypeConfig> for RaftTransport {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        PeerClient { target, node: node.clone(), transport: self.clone() }
    }
}

impl IrohNetwork {
    fn slot(&self, target: NodeId) -> PeerSlot {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.entry(target).or_default().clone()
    }

    async fn connection(&self, target: NodeId, node: &MemberNode) -> Result<Connection, TransportError> {
        let slot = self.slot(target);
        let mut pooled = slot.lock().await;
        if let Some(connection) = pooled.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let addr = endpoint_addr(target, node).map_err(TransportError)?;
        let connect = self.endpoint.connect(addr, alpn::RAFT);
        let connection = match tokio::time::timeout(Duration::from_millis(RAFT_CONNECT_TIMEOUT_MS), connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(TransportError(format!("cannot connect to node {target}: {error}"))),
            Err(_) => return Err(TransportError(format!("connecting to node {target} timed out"))),
        };
        *pooled = Some(connection.clone());
        Ok(connection)
    }

    async fn forget(&self, target: NodeId) {
        self.slot(target).lock().await.take();
    }

    /// One RPC: a fresh stream on the pooled connection, request frame out, response frame in, within `timeout`.
    async fn call(
        &self,
        target: NodeId,
        node: &MemberNode,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let exchange = async {
            let connection = self.connection(target, node).await?;
            let (mut send, mut recv) =
                connection.open_bi().await.map_err(|error| TransportError(format!("cannot open stream: {error}")))?;
            send.write_all(bytes).await.map_err(|error| TransportError(format!("cannot send: {error}")))?;
            send.finish().map_err(|error| TransportError(format!("cannot finish: {error}")))?;
            let body = read_frame(&mut recv).await.map_err(TransportError)?;
            crate::rpc::stream::take_end(&mut recv);
            Ok(body)
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError(format!("raft rpc to node {target} timed out after {timeout:?}"))),
        };
        if result.is_err() {
            // A broken connection is redialled on the next call, with the membership's current addresses.
            self.forget(target).await;
        } else {
            self.health
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(target, tokio::time::Instant::now());
        }
        result
    }
}

impl PeerClient {
    /// One RPC over the transport: the request frame out, the response frame back, within `timeout`.
    async fn call(&self, request: &RaftRequest, timeout: Duration) -> Result<RaftResponse, TransportError> {
        let bytes = frame::encode_within(request, RAFT_FRAME_SIZE_BYTES_MAX)
            .map_err(|error| TransportError(format!("cannot encode raft request: {error}")))?;
        let body = match &self.transport {
            RaftTransport::Iroh(network) => network.call(self.target, &self.node, &bytes, timeout).await?,
            RaftTransport::Simulated(network) => network.call(self.target, &bytes, timeout).await?,
        };
        frame::decode(&body).map_err(|error| TransportError(error.to_string()))
    }
}

fn timeout_of(option: &RPCOption) -> Duration {
    let hard = option.hard_ttl();
    if hard.is_zero() { Duration::from_millis(RAFT_RPC_TIMEOUT_MS_DEFAULT) } else { hard }
}

fn unreachable<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, MemberNode, E> {
    RPCError::Unreachable(Unreachable::new(&error))
}

fn refused<E: std::error::Error>(reason: String) -> RPCError<NodeId, MemberNode, E> {
    RPCError::Network(NetworkError::new(&TransportError(reason)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        match self.call(&RaftRequest::AppendEntries(rpc), timeout_of(&option)).await.map_err(unreachable)? {
            RaftResponse::AppendEntries(result) => result.map_err(|error| RemoteError::new(self.target, error).into()),
            RaftResponse::Refused(reason) => Err(refused(reason)),
            other => Err(refused(format!("unexpected response {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        match self.call(&RaftRequest::Vote(rpc), timeout_of(&option)).await.map_err(unreachable)? {
            RaftResponse::Vote(result) => result.map_err(|error| RemoteError::new(self.target, error).into()),
            RaftResponse::Refused(reason) => Err(refused(reason)),
            other => Err(refused(format!("unexpected response {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(&RaftRequest::InstallSnapshot(rpc), timeout_of(&option)).await.map_err(unreachable)? {
            RaftResponse::InstallSnapshot(result) => {
                result.map_err(|error| RemoteError::new(self.target, error).into())
            }
            RaftResponse::Refused(reason) => Err(refused(reason)),
            other => Err(refused(format!("unexpected response {other:?}"))),
        }
    }
}

async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(|error| format!("no response: {error}"))?;
    let length = frame::body_length_within(prefix, RAFT_FRAME_SIZE_BYTES_MAX).map_err(|error| error.to_string())?;
    let mut body = Vec::with_capacity(length.min(64 * 1024));
    let read = (&mut *recv).take(length as u64).read_to_end(&mut body).await.map_err(|error| error.to_string())?;
    if read < length {
        return Err(format!("frame cut short after {read} of {length} bytes"));
    }
    Ok(body)
}

/// Where to dial a member: its public key and last known addresses.
pub(crate) fn endpoint_addr(node_id: NodeId, node: &MemberNode) -> Result<EndpointAddr, String> {
    let key: [u8; 32] =
        node.public_key.as_slice().try_into().map_err(|_| format!("node {node_id} has a malformed public key"))?;
    let key = PublicKey::from_bytes(&key).map_err(|error| format!("node {node_id} has a bad public key: {error}"))?;
    Ok(node.addrs.iter().fold(EndpointAddr::new(key), |addr, socket| addr.with_ip_addr(*socket)))
}

/// The node a Raft request speaks for: the candidate of a vote, the leader of an append or a snapshot.
fn speaks_for(request: &RaftRequest) -> Option<NodeId> {
    match request {
        RaftRequest::AppendEntries(rpc) => rpc.vote.leader_id().voted_for(),
        RaftRequest::Vote(rpc) => rpc.vote.leader_id().voted_for(),
        RaftRequest::InstallSnapshot(rpc) => rpc.vote.leader_id().voted_for(),
    }
}

/// Refuses a request that speaks for another node than its sender (`sender`: the member its connection authenticated
/// as; `None` before this node knows the membership, when only the peers it joined through reach it).
fn check_sender(request: &RaftRequest, sender: Option<NodeId>) -> Result<(), String> {
    match (sender, speaks_for(request)) {
        (Some(sender), Some(claimed)) if sender != claimed => {
            Err(format!("node {sender} sent a raft request in the name of node {claimed}"))
        }
        _ => Ok(()),
    }
}

/// Serves one Raft request frame from `sender` on this node: decodes it, checks it speaks for its sender, hands it to
/// the local Raft, answers the encoded response (`None` if the response cannot be encoded within the frame limit).
pub async fn dispatch(raft: &RaftHandle, body: &[u8], sender: Option<NodeId>) -> Option<Vec<u8>> {
    let decoded = frame::decode::<RaftRequest>(body)
        .map_err(|error| format!("malformed raft request: {error}"))
        .and_then(|request| check_sender(&request, sender).map(|()| request));
    let response = match decoded {
        Err(refusal) => {
            tracing::warn!(%refusal, "raft request refused");
            RaftResponse::Refused(refusal)
        }
        Ok(request) => match raft.core() {
            Err(unavailable) => RaftResponse::Refused(unavailable.to_string()),
            Ok(handles) => match request {
                RaftRequest::AppendEntries(rpc) => RaftResponse::AppendEntries(handles.raft.append_entries(rpc).await),
                RaftRequest::Vote(rpc) => RaftResponse::Vote(handles.raft.vote(rpc).await),
                RaftRequest::InstallSnapshot(rpc) => {
                    RaftResponse::InstallSnapshot(handles.raft.install_snapshot(rpc).await)
                }
            },
        },
    };
    frame::encode_within(&response, RAFT_FRAME_SIZE_BYTES_MAX).ok()
}

/// Serves Raft RPCs from one peer connection until it closes.
pub async fn serve_peer(connection: Connection, raft: RaftHandle) {
    let remote = connection.remote_id();
    if !raft.is_authorised_peer(remote.as_bytes()) {
        tracing::warn!(%remote, "refusing raft traffic from a node that is not a member");
        connection.close(5u32.into(), b"not a member");
        return;
    }
    let streams = Arc::new(tokio::sync::Semaphore::new(RAFT_STREAMS_PER_PEER_MAX));
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        let Ok(permit) = streams.clone().acquire_owned().await else { return };
        let raft = raft.clone();
        tokio::spawn(async move {
            serve_rpc(send, recv, &raft, &remote).await;
            drop(permit);
        });
    }
}

async fn serve_rpc(mut send: SendStream, mut recv: RecvStream, raft: &RaftHandle, remote: &PublicKey) {
    let read = tokio::time::timeout(Duration::from_millis(RAFT_RPC_TIMEOUT_MS_DEFAULT * 2), read_frame(&mut recv));
    let body = match read.await {
        Ok(Ok(body)) => body,
        _ => return,
    };
    // Membership can change while a connection lives: a removed node loses access at once.
    let bytes = if raft.is_authorised_peer(remote.as_bytes()) {
        dispatch(raft, &body, raft.peer_id(remote.as_bytes())).await
    } else {
        frame::encode_within(&RaftResponse::Refused("not a member".into()), RAFT_FRAME_SIZE_BYTES_MAX).ok()
    };
    let Some(bytes) = bytes else { return };
    let write = async {
        send.write_all(&bytes).await.ok()?;
        send.finish().ok()
    };
    let _ = tokio::time::timeout(Duration::from_millis(RAFT_RPC_TIMEOUT_MS_DEFAULT), write).await;
    crate::rpc::stream::take_end(&mut recv);
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    async fn loopback(alpn: &[u8]) -> Endpoint {
        Endpoint::builder(iroh::endpoint::presets::Minimal)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")
            .unwrap()
            .alpns(vec![alpn.to_vec()])
            .bind()
            .await
            .unwrap()
    }

    /// One request and its answer on a fresh stream, each side reading exactly one frame; with `take`, each takes
    /// its stream's end once it arrived.
    async fn exchange(client: &Connection, server: &Connection, take: bool) {
        let (mut send, mut recv) = client.open_bi().await.unwrap();
        send.write_all(&frame::encode(&7u32).unwrap()).await.unwrap();
        send.finish().unwrap();
        let (mut answer, mut request) = server.accept_bi().await.unwrap();
        read_frame(&mut request).await.unwrap();
        // The end (FIN) follows the frame on loopback within microseconds; taking it is what is tested, so it is
        // given time to arrive rather than awaited.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if take {
            crate::rpc::stream::take_end(&mut request);
        }
        drop(request);
        answer.write_all(&frame::encode(&8u32).unwrap()).await.unwrap();
        answer.finish().unwrap();
        read_frame(&mut recv).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await; // as above
        if take {
            crate::rpc::stream::take_end(&mut recv);
        }
        drop(recv);
        // Time for a STOP_SENDING, if one was sent, to arrive: the assertion that none did can only wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_read_to_its_end_is_dropped_without_a_stop_sending_to_the_peer() {
        let alpn = b"pando/test/1";
        let (near, far) = (loopback(alpn).await, loopback(alpn).await);
        let addr = EndpointAddr::new(far.id()).with_ip_addr(far.bound_sockets()[0]);
        let (client, server) = tokio::join!(near.connect(addr, alpn), async { far.accept().await.unwrap().await });
        let (client, server) = (client.unwrap(), server.unwrap());
        let stops = |connection: &Connection| connection.stats().frame_rx.stop_sending;

        exchange(&client, &server, true).await;
        assert_eq!((stops(&client), stops(&server)), (0, 0), "neither side was told to stop sending");
        // The control: a stream dropped with its end unread stops the peer (a packet, and its acknowledgement).
        exchange(&client, &server, false).await;
        assert_eq!((stops(&client), stops(&server)), (1, 1));
    }

    #[test]
    fn a_raft_request_is_refused_unless_it_speaks_for_its_sender() {
        let vote = RaftRequest::Vote(VoteRequest::new(Vote::new(3, 2), None));
        assert_eq!(check_sender(&vote, Some(2)), Ok(()));
        assert!(check_sender(&vote, Some(3)).unwrap_err().contains("in the name of node 2"));
        // Before the membership is known, only the seed peers reach this node: nothing to check against.
        assert_eq!(check_sender(&vote, None), Ok(()));
    }
}
