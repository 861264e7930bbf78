//! One ractor_cluster session carried on a QUIC bi-stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use tokio::io::{AsyncRead, ReadBuf};

/// A session stream to one member. Holds the connection so it lives exactly as long as the session.
pub struct MeshStream {
    pub(crate) connection: Connection,
    pub(crate) send: SendStream,
    pub(crate) recv: RecvStream,
    /// The member at the other end ([`super::session_label`]).
    pub(crate) label: String,
}

impl ClusterBidiStream for MeshStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let MeshStream { connection, send, recv, .. } = *self;
        (Box::new(MeshRead { recv, connection }), Box::new(send))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// The read half; closing the connection when the session drops it.
struct MeshRead {
    recv: RecvStream,
    connection: Connection,
}

impl AsyncRead for MeshRead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl Drop for MeshRead {
    /// The session is over (its reader stopped): free the connection at once rather than at the idle timeout.
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"session ended");
    }
}
