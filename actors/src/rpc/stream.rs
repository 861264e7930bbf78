//! Reading one request frame from a stream and writing one response frame, each with a deadline.

use std::time::Duration;

use pando_protocol::envelope::ResponseEnvelope;
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame::{self, FrameError, LENGTH_PREFIX_BYTES};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::link::{StreamRecv, StreamSend};
use super::{RPC_REQUEST_READ_TIMEOUT_MS, RPC_RESPONSE_WRITE_TIMEOUT_MS};

/// Takes the end of a stream that carried one frame, if it already arrived (its FIN came with the frame or just
/// after), without waiting. A QUIC stream dropped before its end was read sends the peer a `STOP_SENDING`, and the
/// peer acknowledges it: two packets per stream for nothing (a quarter of the datagrams of a put at one client,
/// measured: 12.5 to 9.5).
/// Bytes past the frame are left: the stream is then stopped as before.
pub(crate) fn take_end<R: tokio::io::AsyncRead + Unpin + ?Sized>(recv: &mut R) {
    let mut past = [0u8; 1];
    let _ = futures::FutureExt::now_or_never(recv.read(&mut past));
}

/// Buffer reserved up front for a request body; larger bodies grow as their bytes arrive.
const BODY_CAPACITY_BYTES_INITIAL: usize = 64 * 1024;

/// Why no request body could be read.
pub(crate) enum ReadFailure {
    /// The client went away or the stream broke: nobody to answer.
    Gone,
    /// The client sent something we can answer with an error.
    Refused(WireError),
}

/// Reads one length-prefixed frame body within the read deadline, refusing oversized frames before reading them.
pub(crate) async fn read_request(recv: &mut StreamRecv) -> Result<Vec<u8>, ReadFailure> {
    let read = async {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        let mut filled = 0;
        while filled < LENGTH_PREFIX_BYTES {
            match recv.read(&mut prefix[filled..]).await {
                Ok(0) => return Err(truncated(filled)),
                Ok(read) => filled += read,
                Err(_) => return Err(ReadFailure::Gone),
            }
        }
        let length = frame::body_length(prefix).map_err(|error| match error {
            FrameError::TooLarge { .. } => ReadFailure::Refused(WireError::too_large(error.to_string())),
            other => ReadFailure::Refused(WireError::new(ErrorCode::Malformed, other.to_string())),
        })?;
        // Grow with the bytes that actually arrive, so a prefix alone cannot make the node allocate the limit.
        let mut body = Vec::with_capacity(length.min(BODY_CAPACITY_BYTES_INITIAL));
        let read = (&mut *recv).take(length as u64).read_to_end(&mut body).await.map_err(|_| ReadFailure::Gone)?;
        if read < length {
            return Err(truncated(LENGTH_PREFIX_BYTES + read));
        }
        Ok(body)
    };
    match tokio::time::timeout(Duration::from_millis(RPC_REQUEST_READ_TIMEOUT_MS), read).await {
        Ok(result) => result,
        Err(_) => Err(ReadFailure::Refused(WireError::new(
            ErrorCode::Timeout,
            format!("request frame not received within {RPC_REQUEST_READ_TIMEOUT_MS} ms"),
        ))),
    }
}

/// The client finished its side of the stream `read_bytes` into a frame.
fn truncated(read_bytes: usize) -> ReadFailure {
    ReadFailure::Refused(WireError::new(
        ErrorCode::Malformed,
        format!("stream finished after {read_bytes} bytes, inside a frame"),
    ))
}

/// Writes one response frame and finishes the stream, within the write deadline.
pub(crate) async fn write_response(send: &mut StreamSend, response: &ResponseEnvelope) {
    let bytes = match frame::encode(response) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "cannot encode response");
            let fallback = ResponseEnvelope {
                request_id: response.request_id,
                body: Err(WireError::internal(format!("response cannot be encoded: {error}"))),
            };
            match frame::encode(&fallback) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        }
    };
    let write = async {
        send.write_all(&bytes).await.ok()?;
        send.shutdown().await.ok()
    };
    if tokio::time::timeout(Duration::from_millis(RPC_RESPONSE_WRITE_TIMEOUT_MS), write).await.is_err() {
        tracing::debug!("client did not take its response in time");
    }
}
