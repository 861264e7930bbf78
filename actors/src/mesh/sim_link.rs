//! The in-memory twin of the actor mesh's transport, for simulation: a member dials another through the
//! [simulated network](crate::raft::sim_network::SimNet) and both hand their end, a [`SimMeshStream`], to
//! ractor_cluster, exactly as they hand it an iroh bi-stream in production.
//!
//! A session stream is reliable and ordered, as a QUIC stream is: every write is delivered after a seeded delay,
//! never before the write before it, and a lost packet costs a retransmission, not the bytes. A cut link breaks the
//! stream once an idle timeout would notice; a node going down breaks every stream it holds at once. The network
//! tells the acceptor who dialled (iroh's TLS identity does this in production), and each delivery goes into the
//! network's trace.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::session_label;
use crate::raft::sim_network::SimNet;
use crate::raft::type_config::NodeId;
use crate::rpc::sim_link::{RETRANSMIT_MS, cut_noticed};

/// Bytes a session stream buffers towards a slow reader before the deliverer waits.
const PIPE_BYTES: usize = 1024 * 1024;

/// The network's mesh side: each node's mesh port, and the session streams open between nodes.
#[derive(Default)]
pub(crate) struct MeshPorts {
    listeners: BTreeMap<NodeId, mpsc::UnboundedSender<(NodeId, SimMeshStream)>>,
    links: Vec<Weak<Link>>,
    next_id: u64,
}

impl MeshPorts {
    pub(crate) fn listen(&mut self, node: NodeId) -> SimMeshListener {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.listeners.insert(node, sender);
        SimMeshListener { incoming: receiver }
    }

    /// A node went down: its port closes and every session stream it holds breaks.
    pub(crate) fn node_down(&mut self, node: NodeId) {
        self.listeners.remove(&node);
        self.links.retain(|link| match link.upgrade() {
            Some(link) if link.ends.contains(&node) => {
                link.closed.cancel();
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    /// Opens a session stream from `from` to `to`, if `to`'s mesh listens: `to` gets its end, `from` the other.
    fn connect(&mut self, from: NodeId, to: NodeId, net: &SimNet) -> Option<SimMeshStream> {
        let listener = self.listeners.get(&to)?;
        self.links.retain(|link| link.strong_count() > 0);
        self.next_id += 1;
        let link = Arc::new(Link { id: self.next_id, ends: [from, to], closed: CancellationToken::new() });
        let (up_write, up_read) = tokio::io::duplex(PIPE_BYTES);
        let (down_write, down_read) = tokio::io::duplex(PIPE_BYTES);
        let dialer = SimMeshStream::new(&link, net, from, to, up_write, down_read);
        let acceptor = SimMeshStream::new(&link, net, to, from, down_write, up_read);
        listener.send((from, acceptor)).ok()?;
        self.links.push(Arc::downgrade(&link));
        Some(dialer)
    }
}

/// What both ends of one session stream share.
struct Link {
    id: u64,
    ends: [NodeId; 2],
    closed: CancellationToken,
}

/// A node's mesh port: the session streams other members open to it, each with the dialler's node id.
pub struct SimMeshListener {
    incoming: mpsc::UnboundedReceiver<(NodeId, SimMeshStream)>,
}

impl SimMeshListener {
    /// The next session stream; `None` once the node is off the network (or listens on a newer port).
    pub(crate) async fn accept(&mut self) -> Option<(NodeId, SimMeshStream)> {
        self.incoming.recv().await
    }
}

/// One end of a session stream between two members.
pub struct SimMeshStream {
    link: Arc<Link>,
    net: SimNet,
    me: NodeId,
    peer: NodeId,
    /// Where this end's writes go, through the network.
    write: DuplexStream,
    /// What the other end's writes became, once delivered.
    read: DuplexStream,
}

impl SimMeshStream {
    fn new(
        link: &Arc<Link>,
        net: &SimNet,
        me: NodeId,
        peer: NodeId,
        write: DuplexStream,
        read: DuplexStream,
    ) -> SimMeshStream {
        SimMeshStream { link: link.clone(), net: net.clone(), me, peer, write, read }
    }

    /// Breaks the stream for both ends (a refused session).
    pub(crate) fn close(&self) {
        self.link.closed.cancel();
    }
}

impl ClusterBidiStream for SimMeshStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let SimMeshStream { link, net, me, peer, write, read } = *self;
        let (chunks, queue) = mpsc::unbounded_channel();
        tokio::spawn(deliver(queue, write, link.clone()));
        let reader = SimMeshRead { read, closed: Box::pin(link.closed.clone().cancelled_owned()), link: link.clone() };
        let writer = SimMeshWrite { chunks, link, net, me, peer, last_arrival: Instant::now(), cut: false };
        (Box::new(reader), Box::new(writer))
    }

    fn peer_label(&self) -> Option<String> {
        Some(session_label(self.peer))
    }

    fn local_label(&self) -> Option<String> {
        Some(session_label(self.me))
    }
}

/// The reading half: what was delivered, then an error once the stream is broken. Dropping it (the session ended)
/// breaks the stream for the other end too, as closing the QUIC connection does.
struct SimMeshRead {
    read: DuplexStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    link: Arc<Link>,
}

impl AsyncRead for SimMeshRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "session stream broken")));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl Drop for SimMeshRead {
    fn drop(&mut self) {
        self.link.closed.cancel();
    }
}

/// The writing half: each write becomes one delivery, due after a seeded delay and never before the previous one.
struct SimMeshWrite {
    chunks: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    link: Arc<Link>,
    net: SimNet,
    me: NodeId,
    peer: NodeId,
    last_arrival: Instant,
    /// A write met a cut link: the stream is about to break, and what follows is lost with it.
    cut: bool,
}

impl AsyncWrite for SimMeshWrite {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.link.closed.is_cancelled() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "session stream broken")));
        }
        if this.cut {
            return Poll::Ready(Ok(data.len()));
        }
        // No byte count: ractor_cluster's pings carry the real clock's time, whose encoded size varies.
        let what = format!("mesh {} write", this.link.id);
        match this.net.stream_delay(this.me, this.peer, this.peer, &what) {
            Some(delay) => {
                let arrival = (Instant::now() + delay).max(this.last_arrival);
                this.last_arrival = arrival;
                let _ = this.chunks.send((arrival, data.to_vec()));
            }
            // The bytes wait for a link that is down; the stream breaks once an idle timeout notices.
            None => {
                this.cut = true;
                let link = this.link.clone();
                tokio::spawn(async move { cut_noticed(&link.closed).await });
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Hands each write to the other end when it is due, in order, while the stream holds.
async fn deliver(mut queue: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>, mut pipe: DuplexStream, link: Arc<Link>) {
    loop {
        let next = tokio::select! {
            biased;
            () = link.closed.cancelled() => return,
            next = queue.recv() => next,
        };
        let Some((arrival, bytes)) = next else { return };
        let write = async {
            tokio::time::sleep_until(arrival).await;
            pipe.write_all(&bytes).await
        };
        tokio::select! {
            biased;
            () = link.closed.cancelled() => return,
            written = write => if written.is_err() { return },
        }
    }
}

impl SimNet {
    /// The port node `node_id`'s mesh takes session streams from (a fresh one each time its mesh starts).
    pub fn mesh_listener(&self, node_id: NodeId) -> SimMeshListener {
        self.with_mesh_ports(|ports| ports.listen(node_id))
    }

    /// Opens a session stream from `from` to `to`. Like a QUIC handshake it takes a round trip, and it never
    /// answers while the link is cut or `to` is down: the caller's connect timeout decides.
    pub async fn dial_mesh(&self, from: NodeId, to: NodeId) -> SimMeshStream {
        loop {
            if let Some(delay) = self.stream_delay(from, to, to, "mesh connect") {
                tokio::time::sleep(delay * 2).await;
                if self.link_up(to, from, from)
                    && let Some(stream) = self.with_mesh_ports(|ports| ports.connect(from, to, self))
                {
                    return stream;
                }
            }
            tokio::time::sleep(Duration::from_millis(RETRANSMIT_MS)).await;
        }
    }
}
