//! Where the gateway's clients come from: the node's iroh endpoint, or in simulation the in-memory network
//! ([`SimNet`](crate::raft::sim_network::SimNet)). Either way a connection hands out bi-streams as plain byte streams,
//! so everything past the accept loop (limits, token cache, framing, handlers) is the same code.

use iroh::endpoint::Connection;
use tokio::io::{AsyncRead, AsyncWrite};

use super::sim_link::{SimRpcListener, SimServerConnection};

/// The sending half of a request's stream.
pub trait Outgoing: AsyncWrite + Send + Unpin {
    /// Ends the stream abnormally, so the peer sees an error rather than a clean end (best effort).
    fn abort(&mut self);
}

impl Outgoing for iroh::endpoint::SendStream {
    fn abort(&mut self) {
        let _ = self.reset(1u32.into());
    }
}

pub type StreamSend = Box<dyn Outgoing>;
pub type StreamRecv = Box<dyn AsyncRead + Send + Unpin>;

/// What the gateway takes client connections from.
#[derive(Clone)]
pub enum RpcListener {
    /// The node's protocol router ([`crate::endpoint`]), which hands client connections to the gateway published in
    /// this handle.
    Router(super::GatewayHandle),
    /// The simulated network's port for this node.
    Simulated(SimRpcListener),
}

/// One client connection, whichever network it came over.
pub(crate) enum ClientConnection {
    Iroh(Connection),
    Simulated(SimServerConnection),
}

impl ClientConnection {
    /// Where the connection comes from, for the limits on unauthenticated connections: the address of the path it
    /// uses (the client's key over a relay), or the simulated client.
    pub(crate) fn source(&self) -> super::admission::Source {
        use super::admission::Source;
        match self {
            ClientConnection::Iroh(connection) => {
                let paths = connection.paths();
                let path = paths.iter().find(|path| path.is_selected()).or_else(|| paths.iter().next());
                match path.as_ref().map(|path| path.remote_addr()) {
                    Some(iroh::TransportAddr::Ip(addr)) => Source::ip(addr.ip()),
                    _ => Source::Key(*connection.remote_id().as_bytes()),
                }
            }
            ClientConnection::Simulated(connection) => Source::Simulated(connection.client()),
        }
    }

    /// Who is on the other end, for logs.
    pub(crate) fn remote(&self) -> String {
        match self {
            ClientConnection::Iroh(connection) => connection.remote_id().to_string(),
            ClientConnection::Simulated(connection) => format!("simulated client {}", connection.client()),
        }
    }

    /// The key the client's QUIC handshake proved it holds (`None` over the simulated network, whose clients have
    /// no keys).
    pub(crate) fn peer_key(&self) -> Option<[u8; 32]> {
        match self {
            ClientConnection::Iroh(connection) => Some(*connection.remote_id().as_bytes()),
            ClientConnection::Simulated(_) => None,
        }
    }

    /// The next stream the client opens; `Err` once the connection is closed.
    pub(crate) async fn accept_bi(&self) -> Result<(StreamSend, StreamRecv), String> {
        match self {
            ClientConnection::Iroh(connection) => match connection.accept_bi().await {
                Ok((send, recv)) => Ok((Box::new(send), Box::new(recv))),
                Err(error) => Err(error.to_string()),
            },
            ClientConnection::Simulated(connection) => connection.accept_bi().await,
        }
    }

    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            ClientConnection::Iroh(connection) => connection.close(code.into(), reason),
            ClientConnection::Simulated(connection) => connection.close(),
        }
    }
}
