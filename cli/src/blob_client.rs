//! Streaming blobs through a node: uploads and downloads on one request stream each, in bounded frames, with the
//! download checked against its BLAKE3 hash before the caller is told it succeeded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pando_protocol::blob::{BlobHash, BlobRequest, BlobResponse};
use pando_protocol::envelope::{PROTOCOL_VERSION, Request, RequestEnvelope, Response};
use pando_protocol::frame::{self, LENGTH_PREFIX_BYTES};
use pando_protocol::kv::Bytes;
use pando_protocol::limits::{BLOB_DATA_FRAME_BYTES_MAX, BLOB_DATA_FRAME_TIMEOUT_MS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::Client;
use crate::error::ClientError;

/// How long the node may take to verify, record and replicate a blob after its last byte.
pub const BLOB_COMMIT_TIMEOUT_MS: u64 = 120_000;

/// Data bytes per frame the client sends.
const UPLOAD_FRAME_BYTES: usize = 256 * 1024;

impl Client {
    fn envelope(&self, body: Request) -> Result<(u64, Vec<u8>), ClientError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request_id,
            timeout_ms: self.options().timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            token: self.ticket().token.clone(),
            body,
        };
        let frame = frame::encode(&envelope).map_err(|error| ClientError::Invalid(error.to_string()))?;
        Ok((request_id, frame))
    }

    /// Uploads a blob from `data` (any size; memory stays at one frame). `request` must be a
    /// [`BlobRequest::Add`]. `progress` is told the bytes sent so far. The node answers once the blob is verified
    /// and recorded; an upload that fails partway records nothing.
    pub async fn blob_add<R: AsyncRead + Unpin>(
        &self,
        mut data: R,
        request: BlobRequest,
        mut progress: impl FnMut(u64),
    ) -> Result<BlobResponse, ClientError> {
        if !matches!(request, BlobRequest::Add { .. }) {
            return Err(ClientError::Invalid("blob_add takes an add request".into()));
        }
        let (request_id, header) = self.envelope(Request::Blob(request))?;
        let (mut send, mut recv) = self.open_stream().await?;
        let upload = async {
            send.write_all(&header).await.map_err(|error| format!("cannot send the request: {error}"))?;
            let mut buffer = vec![0u8; UPLOAD_FRAME_BYTES];
            let mut sent: u64 = 0;
            loop {
                let mut filled = 0;
                while filled < buffer.len() {
                    let read =
                        data.read(&mut buffer[filled..]).await.map_err(|error| format!("reading input: {error}"))?;
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                if filled == 0 {
                    break;
                }
                send.write_all(&(filled as u32).to_be_bytes()).await.map_err(|error| format!("sending: {error}"))?;
                send.write_all(&buffer[..filled]).await.map_err(|error| format!("sending: {error}"))?;
                sent += filled as u64;
                progress(sent);
            }
            send.write_all(&0u32.to_be_bytes()).await.map_err(|error| format!("sending: {error}"))?;
            send.shutdown().await.map_err(|error| format!("sending: {error}"))
        };
        let uploaded = upload.await;
        // The node may have refused early (a bad token, busy): its answer explains the broken upload.
        let wait = if uploaded.is_ok() { BLOB_COMMIT_TIMEOUT_MS } else { 2_000 };
        let answer = read_envelope(&mut recv, request_id, Duration::from_millis(wait)).await;
        match (uploaded, answer) {
            (_, Ok(Ok(Response::Blob(response)))) => Ok(response),
            (_, Ok(Ok(other))) => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
            (_, Ok(Err(error))) => Err(ClientError::Wire(error)),
            (Err(failure), Err(_)) => {
                Err(ClientError::Transport(format!("upload failed, nothing was recorded: {failure}")))
            }
            (Ok(()), Err(error)) => Err(error),
        }
    }

    /// Downloads a blob into `out`, verifying it against `hash` as it streams; `key` names the KV key whose value
    /// it is (the key's read capability is then what the node checks). `progress` is told (bytes so far, total).
    /// Returns the size. On any error the bytes already written to `out` must be discarded.
    pub async fn blob_get<W: AsyncWrite + Unpin>(
        &self,
        hash: BlobHash,
        key: Option<Bytes>,
        out: &mut W,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ClientError> {
        let (request_id, header) = self.envelope(Request::Blob(BlobRequest::Get { hash, key }))?;
        let (mut send, mut recv) = self.open_stream().await?;
        send.write_all(&header).await.map_err(|error| ClientError::Transport(format!("cannot send: {error}")))?;
        send.shutdown().await.map_err(|error| ClientError::Transport(format!("cannot send: {error}")))?;
        // The node may first fetch the blob from another member.
        let wait = self.options().timeout.max(Duration::from_millis(BLOB_COMMIT_TIMEOUT_MS));
        let size = match read_envelope(&mut recv, request_id, wait).await? {
            Ok(Response::Blob(BlobResponse::Stream { hash: streamed, size })) if streamed == hash => size,
            Ok(other) => return Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
            Err(error) => return Err(ClientError::Wire(error)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut received: u64 = 0;
        let mut buffer = Vec::with_capacity(BLOB_DATA_FRAME_BYTES_MAX.min(256 * 1024));
        loop {
            let frame_wait = Duration::from_millis(BLOB_DATA_FRAME_TIMEOUT_MS);
            let length = tokio::time::timeout(frame_wait, async {
                let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
                recv.read_exact(&mut prefix).await.map(|_| u32::from_be_bytes(prefix) as usize)
            })
            .await
            .map_err(|_| ClientError::Timeout("the blob stopped arriving".into()))?
            .map_err(|error| ClientError::Transport(format!("blob cut short after {received} bytes: {error}")))?;
            if length == 0 {
                break;
            }
            if length > BLOB_DATA_FRAME_BYTES_MAX || received + length as u64 > size {
                return Err(ClientError::Protocol(format!("data frame of {length} bytes after {received} of {size}")));
            }
            buffer.resize(length, 0);
            tokio::time::timeout(frame_wait, recv.read_exact(&mut buffer))
                .await
                .map_err(|_| ClientError::Timeout("the blob stopped arriving".into()))?
                .map_err(|error| ClientError::Transport(format!("blob cut short after {received} bytes: {error}")))?;
            hasher.update(&buffer);
            out.write_all(&buffer)
                .await
                .map_err(|error| ClientError::Invalid(format!("cannot write output: {error}")))?;
            received += length as u64;
            progress(received, size);
        }
        out.flush().await.map_err(|error| ClientError::Invalid(format!("cannot write output: {error}")))?;
        if received != size {
            return Err(ClientError::Protocol(format!("received {received} of {size} bytes")));
        }
        let actual = BlobHash(*hasher.finalize().as_bytes());
        if actual != hash {
            return Err(ClientError::Protocol(format!("the data hashes to {actual}, not {hash}: discard it")));
        }
        Ok(size)
    }

    /// A blob request that does not stream (has, status, list, protect, unprotect, delete, replication).
    pub async fn blob(&self, request: BlobRequest) -> Result<BlobResponse, ClientError> {
        match self.request(Request::Blob(request)).await? {
            Response::Blob(response) => Ok(response),
            other => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
        }
    }

    /// A plugin request (install, list, info, enable, disable, remove, call).
    pub async fn plugin(
        &self,
        request: pando_protocol::plugin::PluginRequest,
    ) -> Result<pando_protocol::plugin::PluginResponse, ClientError> {
        match self.request(Request::Plugin(request)).await? {
            Response::Plugin(response) => Ok(response),
            other => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
        }
    }

    /// Calls `function` of plugin `name` on the node this client talks to: its output, the node and the generation.
    pub async fn plugin_call(
        &self,
        name: &str,
        function: &str,
        input: &[u8],
    ) -> Result<(Vec<u8>, u64, u64), ClientError> {
        let request = pando_protocol::plugin::PluginRequest::Call {
            name: name.into(),
            function: function.into(),
            input: input.to_vec().into(),
        };
        match self.plugin(request).await? {
            pando_protocol::plugin::PluginResponse::Output { output, node, generation } => {
                Ok((output.to_vec(), node, generation))
            }
            other => Err(ClientError::Protocol(format!("unexpected response {other:?}"))),
        }
    }
}

async fn read_envelope(
    recv: &mut crate::transport::RecvHalf,
    request_id: u64,
    wait: Duration,
) -> Result<Result<Response, pando_protocol::error::WireError>, ClientError> {
    tokio::time::timeout(wait, crate::client::read_response(recv, request_id))
        .await
        .map_err(|_| ClientError::Timeout(format!("no response within {} ms", wait.as_millis())))?
}
