//! How the client reaches nodes: QUIC over iroh in production, or any other carrier of bi-streams (the simulator's
//! in-memory network). Everything above a [`Link`] (framing, deadlines, leader following, retries) is shared.

use std::sync::Arc;

use futures::future::BoxFuture;
use iroh::endpoint::{Connection, presets};
use iroh::{Endpoint, EndpointAddr, PublicKey};
use pando_protocol::alpn;
use pando_protocol::ticket::TicketNode;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ClientError;

/// The sending half of a request's stream; shutting it down finishes the stream.
pub type SendHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a request's stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;

/// Opens connections to nodes.
pub trait Transport: Send + Sync {
    /// Connects to `node`. The caller bounds the time it may take.
    fn connect<'a>(&'a self, node: &'a TicketNode) -> BoxFuture<'a, Result<Arc<dyn Link>, ClientError>>;
    /// Releases what the transport holds (the local endpoint); the caller bounds the time it may take.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// One connection to a node, carrying one bi-stream per request.
pub trait Link: Send + Sync {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), String>>;
    /// Whether the connection is known to be dead (the next request dials again).
    fn is_closed(&self) -> bool;
    fn close(&self);
}

/// QUIC over iroh: the production transport.
pub struct IrohTransport {
    endpoint: Endpoint,
}

impl IrohTransport {
    /// Binds a local endpoint with the shared QUIC settings, under `secret_key` (a fresh key when `None`).
    pub async fn bind(secret_key: Option<[u8; 32]>) -> Result<IrohTransport, ClientError> {
        let mut builder =
            Endpoint::builder(presets::Minimal).transport_config(crate::client::client_quic_transport_config());
        if let Some(secret_key) = secret_key {
            builder = builder.secret_key(iroh::SecretKey::from_bytes(&secret_key));
        }
        let endpoint = builder
            .bind()
            .await
            .map_err(|error| ClientError::Transport(format!("cannot open a local endpoint: {error}")))?;
        Ok(IrohTransport { endpoint })
    }
}

impl Transport for IrohTransport {
    fn connect<'a>(&'a self, node: &'a TicketNode) -> BoxFuture<'a, Result<Arc<dyn Link>, ClientError>> {
        Box::pin(async move {
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
            match self.endpoint.connect(addr, alpn::RPC).await {
                Ok(connection) => Ok(Arc::new(connection) as Arc<dyn Link>),
                Err(error) => Err(ClientError::Transport(format!("cannot connect: {error}"))),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.endpoint.close())
    }
}

impl Link for Connection {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), String>> {
        Box::pin(async move {
            let (send, recv) = Connection::open_bi(self).await.map_err(|error| error.to_string())?;
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    fn close(&self) {
        Connection::close(self, 0u32.into(), b"client closed");
    }
}
