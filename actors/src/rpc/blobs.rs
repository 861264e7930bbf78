//! Blob requests: streamed adds and gets on the request's own stream, the bookkeeping requests, and large KV values
//! stored as blobs.
//!
//! A streamed add is the request frame, then data frames (raw bytes behind the usual length prefix, at most
//! [`BLOB_DATA_FRAME_BYTES_MAX`] each), then an empty frame; the node answers once the blob is verified, recorded and
//! (if asked) attached to its key. A streamed get is answered with [`BlobResponse::Stream`], then data frames, then an
//! empty frame. Memory stays bounded by a few frames per transfer whatever the blob's size.

use std::time::Duration;

use bytes::Bytes as DataBytes;
use pando_protocol::blob::{BlobHash, BlobRef, BlobRequest, BlobResponse, LocalBlob};
use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame::LENGTH_PREFIX_BYTES;
use pando_protocol::kv::{Bytes, Consistency, KvRequest, KvResponse};
use pando_protocol::limits::{
    BLOB_DATA_FRAME_BYTES_MAX, BLOB_DATA_FRAME_TIMEOUT_MS, BLOB_UPLOAD_DEADLINE_MS, BLOB_UPLOAD_RATE_BYTES_PER_S_MIN,
    BLOB_UPLOAD_RATE_GRACE_MS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::RpcContext;
use super::link::{StreamRecv, StreamSend};
use super::stream::write_response;
use crate::services::BlobService;

/// Whether a request streams data on its own stream (served by [`serve_stream`]).
pub(crate) fn is_streamed(envelope: &RequestEnvelope) -> bool {
    matches!(envelope.body, Request::Blob(BlobRequest::Add { .. } | BlobRequest::Get { .. }))
}

/// Serves a checked streamed add or get, then finishes the stream.
pub(crate) async fn serve_stream(
    context: &RpcContext,
    envelope: RequestEnvelope,
    mut send: StreamSend,
    mut recv: StreamRecv,
) {
    let request_id = envelope.request_id;
    let blobs = &context.services.blobs;
    let result = match envelope.body {
        Request::Blob(request @ BlobRequest::Add { .. }) => add(blobs, request, &mut recv).await,
        Request::Blob(BlobRequest::Get { hash, key }) => {
            match get(context, blobs, hash, key, request_id, &mut send).await {
                // The data went out; the stream is finished.
                Ok(None) => return,
                Ok(Some(response)) => Ok(response),
                Err(error) => Err(error),
            }
        }
        _ => Err(WireError::internal("not a streamed request")),
    };
    write_response(&mut send, &ResponseEnvelope { request_id, body: result.map(Response::Blob) }).await;
}

/// Refuses an upload that passed its deadline, or that keeps a slower average rate than the minimum after its grace
/// period: a trickling client must not hold a transfer slot for hours.
fn upload_pace(elapsed: Duration, received: u64) -> Result<(), WireError> {
    if elapsed > Duration::from_millis(BLOB_UPLOAD_DEADLINE_MS) {
        return Err(WireError::new(ErrorCode::Timeout, format!("a blob upload may take {BLOB_UPLOAD_DEADLINE_MS} ms")));
    }
    let floor = (elapsed.as_millis() as u64).saturating_sub(BLOB_UPLOAD_RATE_GRACE_MS)
        * BLOB_UPLOAD_RATE_BYTES_PER_S_MIN
        / 1_000;
    if received < floor {
        return Err(WireError::new(
            ErrorCode::Timeout,
            format!(
                "upload slower than {BLOB_UPLOAD_RATE_BYTES_PER_S_MIN} bytes/s after {BLOB_UPLOAD_RATE_GRACE_MS} ms \
                 ({received} bytes in {} ms)",
                elapsed.as_millis()
            ),
        ));
    }
    Ok(())
}

/// Reads one data frame: `Ok(None)` at the empty frame that ends the data.
async fn read_data_frame(recv: &mut StreamRecv) -> Result<Option<DataBytes>, WireError> {
    let read = async {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        recv.read_exact(&mut prefix).await.map_err(|error| {
            WireError::new(ErrorCode::Malformed, format!("blob data ended without its end frame: {error}"))
        })?;
        let length = u32::from_be_bytes(prefix) as usize;
        if length == 0 {
            return Ok(None);
        }
        if length > BLOB_DATA_FRAME_BYTES_MAX {
            return Err(WireError::too_large(format!(
                "blob data frame of {length} bytes, the limit is {BLOB_DATA_FRAME_BYTES_MAX}"
            )));
        }
        let mut data = vec![0u8; length];
        recv.read_exact(&mut data)
            .await
            .map_err(|error| WireError::new(ErrorCode::Malformed, format!("blob data frame cut short: {error}")))?;
        Ok(Some(DataBytes::from(data)))
    };
    match tokio::time::timeout(Duration::from_millis(BLOB_DATA_FRAME_TIMEOUT_MS), read).await {
        Ok(result) => result,
        Err(_) => Err(WireError::new(
            ErrorCode::Timeout,
            format!("no blob data for {BLOB_DATA_FRAME_TIMEOUT_MS} ms; the upload was abandoned"),
        )),
    }
}

async fn add(blobs: &BlobService, request: BlobRequest, recv: &mut StreamRecv) -> Result<BlobResponse, WireError> {
    let BlobRequest::Add { replicas, pin, expected, attach, ack_copies } = request else {
        return Err(WireError::internal("not an add"));
    };
    blobs.check_takes_writes()?;
    let node = blobs.node()?;
    let _permit = BlobService::transfer_permit(&node)?;
    // The import pulls from a small channel while this task reads frames into it: a few frames in memory at most.
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<DataBytes>>(4);
    let store = node.store.clone();
    let import =
        tokio::spawn(
            async move { store.add_stream(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))).await },
        );
    let mut size: u64 = 0;
    let size_max = node.config.max_blob_bytes;
    let started = tokio::time::Instant::now();
    let read = loop {
        if let Err(error) = upload_pace(started.elapsed(), size) {
            let _ = sender.send(Err(std::io::Error::other(error.message.clone()))).await;
            break Err(error);
        }
        match read_data_frame(recv).await {
            Ok(Some(data)) if size + data.len() as u64 > size_max => {
                let error = WireError::too_large(format!("blob exceeds this node's limit of {size_max} bytes"));
                let _ = sender.send(Err(std::io::Error::other(error.message.clone()))).await;
                break Err(error);
            }
            Ok(Some(data)) => {
                size += data.len() as u64;
                if sender.send(Ok(data)).await.is_err() {
                    break Err(WireError::internal("the blob store stopped taking data"));
                }
            }
            Ok(None) => break Ok(()),
            Err(error) => {
                let _ = sender.send(Err(std::io::Error::other(error.message.clone()))).await;
                break Err(error);
            }
        }
    };
    drop(sender);
    let imported = import.await.map_err(|error| WireError::internal(format!("import task failed: {error}")))?;
    read?;
    let (hash, held) = imported.map_err(|error| WireError::internal(format!("cannot store the blob: {error}")))?;
    if let Some(expected) = expected
        && expected != hash
    {
        // The data stays unreferenced (only this request's temporary tag held it) and is collected.
        return Err(WireError::invalid(format!("the data hashes to {hash}, not the expected {expected}")));
    }
    let blob = BlobRef { hash, size };
    let attach = attach.map(|attach| (attach.key, attach.lease));
    let (record, revision) = blobs.record_and_attach(blob, replicas, pin, ack_copies, attach).await?;
    drop(held);
    Ok(BlobResponse::Added { hash, record, revision })
}

/// Streams a blob out. `Ok(None)`: the data was sent (or the client went away); `Ok(Some)` never happens today but
/// keeps the answer shape open; `Err`: answered with an error frame by the caller.
async fn get(
    context: &RpcContext,
    blobs: &BlobService,
    hash: BlobHash,
    key: Option<Bytes>,
    request_id: u64,
    send: &mut StreamSend,
) -> Result<Option<BlobResponse>, WireError> {
    if let Some(key) = &key {
        let request = KvRequest::Get { key: key.clone(), consistency: Consistency::Stale };
        let entry = context.services.kv.execute(request, Duration::from_millis(BLOB_DATA_FRAME_TIMEOUT_MS)).await?;
        let points_here = matches!(
            entry,
            KvResponse::Entry { entry: Some(ref entry) } if entry.blob.is_some_and(|blob| blob.hash == hash)
        );
        if !points_here {
            return Err(WireError::new(ErrorCode::Conflict, "the key no longer holds this blob; read it again"));
        }
    }
    let node = blobs.node()?;
    let _permit = BlobService::transfer_permit(&node)?;
    let record = blobs.record(hash).await?;
    let holders = record.as_ref().map(|record| record.holders.clone()).unwrap_or_default();
    let local = node.local(&hash).await?;
    if record.is_none() && !matches!(local, LocalBlob::Complete { .. }) {
        return Err(WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster")));
    }
    let size = record.as_ref().map_or(0, |record| record.size);
    if crate::sim::planted_bug(crate::sim::PlantedBug::BlobReadLocalOnly)
        && !matches!(local, LocalBlob::Complete { .. })
    {
        return Err(WireError::new(ErrorCode::NotFound, format!("blob {hash} is not on this node")));
    }
    let _pin = node.ensure_local(&hash, size, &holders).await?;
    let size = match node.local(&hash).await? {
        LocalBlob::Complete { size } => size,
        _ => return Err(WireError::new(ErrorCode::Unavailable, format!("blob {hash} is not complete on this node"))),
    };
    let header = ResponseEnvelope { request_id, body: Ok(Response::Blob(BlobResponse::Stream { hash, size })) };
    let header = pando_protocol::frame::encode(&header).map_err(|error| WireError::internal(error.to_string()))?;
    let mut reader = node.store.reader(hash).await?;
    // A client that stops reading gives up its transfer slot after the frame timeout.
    let frame_timeout = Duration::from_millis(BLOB_DATA_FRAME_TIMEOUT_MS);
    let stream = async {
        send.write_all(&header).await.map_err(|error| error.to_string())?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut sent: u64 = 0;
        loop {
            let read = reader.read(&mut buffer).await.map_err(|error| format!("reading the blob: {error}"))?;
            if read == 0 {
                break;
            }
            let frame = async {
                send.write_all(&(read as u32).to_be_bytes()).await?;
                send.write_all(&buffer[..read]).await
            };
            match tokio::time::timeout(frame_timeout, frame).await {
                Ok(written) => written.map_err(|error| error.to_string())?,
                Err(_) => return Err(format!("the client took no data for {frame_timeout:?}")),
            }
            sent += read as u64;
        }
        if sent != size {
            return Err(format!("read {sent} bytes of a {size}-byte blob"));
        }
        send.write_all(&0u32.to_be_bytes()).await.map_err(|error| error.to_string())?;
        send.shutdown().await.map_err(|error| error.to_string())
    };
    if let Err(error) = stream.await {
        // Without the end frame the client knows the data is incomplete.
        tracing::warn!(%hash, %error, "streaming a blob out failed");
        send.abort();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_must_keep_the_minimum_rate_after_its_grace_and_end_by_its_deadline() {
        let at = |ms: u64| Duration::from_millis(ms);
        assert!(upload_pace(at(BLOB_UPLOAD_RATE_GRACE_MS), 0).is_ok());
        let one_second_late = BLOB_UPLOAD_RATE_GRACE_MS + 1_000;
        assert!(upload_pace(at(one_second_late), BLOB_UPLOAD_RATE_BYTES_PER_S_MIN).is_ok());
        let error = upload_pace(at(one_second_late), BLOB_UPLOAD_RATE_BYTES_PER_S_MIN - 1).unwrap_err();
        assert_eq!(error.code, ErrorCode::Timeout);
        assert!(upload_pace(at(BLOB_UPLOAD_DEADLINE_MS + 1), u64::MAX).is_err());
    }
}
