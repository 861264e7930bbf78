//! The in-memory twin of client connections, for simulation: a client dials a node through the
//! [simulated network](crate::raft::sim_network::SimNet), the node's [`RpcGateway`](super::RpcGateway) accepts the
//! connection from its [`SimRpcListener`] and serves its streams with the same code as iroh's.
//!
//! Streams are reliable, as QUIC's are: a message is never lost, only late (a lost packet costs a retransmission).
//! What one side writes reaches the other when it finishes its side of the stream, after a seeded delay, unless the
//! link is cut: then the connection breaks once an idle timeout would notice. A node going down closes its
//! connections at once. Every delivery goes into the network's trace.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::link::{Outgoing, StreamRecv, StreamSend};
use crate::raft::sim_network::SimNet;
use crate::raft::type_config::NodeId;

/// A cut link breaks a connection after this long, as QUIC's idle timeout would notice it.
pub const CUT_NOTICED_MS: u64 = 3_000;
/// A lost packet costs this much extra delay, not the message.
pub const RETRANSMIT_MS: u64 = 200;
/// Bytes a stream buffers towards a slow reader before the deliverer waits.
const PIPE_BYTES: usize = 256 * 1024;

/// The network's client-facing side: each node's port, and the connections open to it.
#[derive(Default)]
pub(crate) struct RpcPorts {
    listeners: BTreeMap<NodeId, mpsc::UnboundedSender<SimServerConnection>>,
    connections: Vec<(NodeId, Weak<Shared>)>,
    next_id: u64,
}

impl RpcPorts {
    pub(crate) fn listen(&mut self, node: NodeId) -> SimRpcListener {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.listeners.insert(node, sender);
        SimRpcListener { incoming: Arc::new(tokio::sync::Mutex::new(receiver)) }
    }

    /// A node went down: its port closes and so does every connection to it.
    pub(crate) fn node_down(&mut self, node: NodeId) {
        self.listeners.remove(&node);
        self.connections.retain(|(to, shared)| match shared.upgrade() {
            Some(shared) if *to == node => {
                shared.closed.cancel();
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    /// Opens a connection from `client` to `node`, if the node listens.
    fn connect(&mut self, client: u64, node: NodeId) -> Option<SimClientConnection> {
        let listener = self.listeners.get(&node)?;
        self.connections.retain(|(_, shared)| shared.strong_count() > 0);
        self.next_id += 1;
        let shared = Arc::new(Shared { id: self.next_id, client, node, closed: CancellationToken::new() });
        let (streams, incoming) = mpsc::unbounded_channel();
        let server = SimServerConnection { shared: shared.clone(), streams: tokio::sync::Mutex::new(incoming) };
        listener.send(server).ok()?;
        self.connections.push((node, Arc::downgrade(&shared)));
        Some(SimClientConnection { shared, streams })
    }
}

/// What both ends of a connection share.
struct Shared {
    id: u64,
    client: u64,
    node: NodeId,
    closed: CancellationToken,
}

/// A node's port on the simulated network. Made at each boot; a restarted gateway keeps taking from the same one.
#[derive(Clone)]
pub struct SimRpcListener {
    incoming: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<SimServerConnection>>>,
}

impl SimRpcListener {
    /// The next connection; `None` once the node is off the network.
    pub(crate) async fn accept(&self) -> Option<SimServerConnection> {
        self.incoming.lock().await.recv().await
    }
}

/// The node's end of a connection.
pub struct SimServerConnection {
    shared: Arc<Shared>,
    streams: tokio::sync::Mutex<mpsc::UnboundedReceiver<(StreamSend, StreamRecv)>>,
}

impl SimServerConnection {
    pub(crate) fn client(&self) -> u64 {
        self.shared.client
    }

    pub(crate) async fn accept_bi(&self) -> Result<(StreamSend, StreamRecv), String> {
        let mut streams = self.streams.lock().await;
        tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => Err("connection closed".into()),
            next = streams.recv() => next.ok_or_else(|| "connection closed".into()),
        }
    }

    pub(crate) fn close(&self) {
        self.shared.closed.cancel();
    }
}

impl Drop for SimServerConnection {
    fn drop(&mut self) {
        self.close();
    }
}

/// The client's end of a connection ([`SimNet::dial_rpc`]). Dropping it closes the connection.
pub struct SimClientConnection {
    shared: Arc<Shared>,
    streams: mpsc::UnboundedSender<(StreamSend, StreamRecv)>,
}

impl SimClientConnection {
    /// Opens a stream, as QUIC's `open_bi`: the node sees it at once, its bytes once they are delivered.
    pub fn open_bi(&self, net: &SimNet) -> Result<(StreamSend, StreamRecv), String> {
        if self.is_closed() {
            return Err(format!("connection {} to node {} is closed", self.shared.id, self.shared.node));
        }
        // One direction of a duplex pipe each way: dropping the writing end ends the reader's stream.
        let (up_write, up_read) = tokio::io::duplex(PIPE_BYTES);
        let (down_write, down_read) = tokio::io::duplex(PIPE_BYTES);
        let (client, node) = (self.shared.client, self.shared.node);
        let to_node = SimOutgoing::new(up_write, client, node, &self.shared, net);
        let to_client = SimOutgoing::new(down_write, node, client, &self.shared, net);
        self.streams
            .send((Box::new(to_client), Box::new(SimIncoming::new(up_read, &self.shared))))
            .map_err(|_| format!("connection {} to node {} is closed", self.shared.id, node))?;
        Ok((Box::new(to_node), Box::new(SimIncoming::new(down_read, &self.shared))))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    pub fn close(&self) {
        self.shared.closed.cancel();
    }
}

impl Drop for SimClientConnection {
    fn drop(&mut self) {
        self.close();
    }
}

impl SimNet {
    /// Dials `node` from `client` (a number outside the node ids). Like a QUIC handshake, it takes a round trip and
    /// never answers while the link is cut or the node is down: the caller's connect timeout decides.
    pub async fn dial_rpc(&self, client: u64, node: NodeId) -> SimClientConnection {
        loop {
            if let Some(delay) = self.stream_delay(client, node, node, "rpc connect") {
                tokio::time::sleep(delay * 2).await;
                if let Some(connection) = self.with_rpc_ports(|ports| ports.connect(client, node))
                    && self.link_up(client, node, node)
                {
                    return connection;
                }
            }
            // Unanswered: the dialer keeps trying until its caller gives up.
            tokio::time::sleep(Duration::from_millis(RETRANSMIT_MS)).await;
        }
    }
}

/// A stream's sending half: buffers what is written and hands it over, delayed, when it is flushed or finished.
/// Segments of one stream arrive in order (one delivery task per stream carries them one after the other), so a
/// stream of frames (a watch) flows as it would over QUIC; a request written and finished at once is one segment.
struct SimOutgoing {
    buffer: Vec<u8>,
    /// Where flushed segments go (`None` once finished or aborted); the delivery task starts with the first.
    segments: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    /// The pipe, until the delivery task takes it.
    pipe: Option<DuplexStream>,
    from: u64,
    to: u64,
    shared: Arc<Shared>,
    net: SimNet,
}

impl SimOutgoing {
    fn new(pipe: DuplexStream, from: u64, to: u64, shared: &Arc<Shared>, net: &SimNet) -> SimOutgoing {
        SimOutgoing {
            buffer: Vec::new(),
            segments: None,
            pipe: Some(pipe),
            from,
            to,
            shared: shared.clone(),
            net: net.clone(),
        }
    }

    /// Hands the buffered bytes to the delivery task (started on first use).
    fn send_segment(&mut self) {
        if self.segments.is_none()
            && let Some(pipe) = self.pipe.take()
        {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(deliver(self.net.clone(), self.from, self.to, self.shared.clone(), receiver, pipe));
            self.segments = Some(sender);
        }
        let bytes = std::mem::take(&mut self.buffer);
        if !bytes.is_empty()
            && let Some(segments) = &self.segments
        {
            let _ = segments.send(bytes);
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some() || self.segments.is_some()
    }
}

impl AsyncWrite for SimOutgoing {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.is_open() || this.shared.closed.is_cancelled() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")));
        }
        this.buffer.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffer.is_empty() {
            this.send_segment();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_open() {
            this.send_segment();
            // Dropping the sender finishes the stream once every segment arrived.
            this.segments = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl Outgoing for SimOutgoing {
    fn abort(&mut self) {
        // The reader sees the stream end without the bytes it waits for (segments already handed over still arrive).
        self.pipe = None;
        self.segments = None;
        self.buffer = Vec::new();
    }
}

/// Carries one stream's segments in order, each after its own delay; finishes the stream when the sender is gone.
async fn deliver(
    net: SimNet,
    from: u64,
    to: u64,
    shared: Arc<Shared>,
    mut segments: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    mut pipe: DuplexStream,
) {
    while let Some(bytes) = segments.recv().await {
        let what = format!("rpc {} {} bytes", shared.id, bytes.len());
        let Some(delay) = net.stream_delay(from, to, shared.node, &what) else {
            return cut_noticed(&shared.closed).await;
        };
        tokio::time::sleep(delay).await;
        if !net.link_up(from, to, shared.node) {
            return cut_noticed(&shared.closed).await;
        }
        if shared.closed.is_cancelled() {
            return;
        }
        // A reader that went away (a client that gave up) makes the write fail; a connection closing stops it.
        tokio::select! {
            biased;
            () = shared.closed.cancelled() => return,
            written = pipe.write_all(&bytes) => if written.is_err() { return },
        }
    }
    let _ = pipe.shutdown().await;
}

/// A connection over a cut link breaks once an idle timeout would notice: `closed` is cancelled after
/// [`CUT_NOTICED_MS`] unless it closes sooner.
pub(crate) async fn cut_noticed(closed: &CancellationToken) {
    tokio::select! {
        biased;
        () = tokio::time::sleep(Duration::from_millis(CUT_NOTICED_MS)) => closed.cancel(),
        () = closed.cancelled() => {}
    }
}

/// A stream's receiving half: reads what was delivered, then fails once the connection is closed.
struct SimIncoming {
    pipe: DuplexStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl SimIncoming {
    fn new(pipe: DuplexStream, shared: &Shared) -> SimIncoming {
        SimIncoming { pipe, closed: Box::pin(shared.closed.clone().cancelled_owned()) }
    }
}

impl AsyncRead for SimIncoming {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.pipe).poll_read(cx, buf) {
            Poll::Pending if this.closed.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection closed")))
            }
            ready_or_pending => ready_or_pending,
        }
    }
}
