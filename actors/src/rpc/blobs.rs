//! Blob requests: streamed adds and gets on the request's own stream, the bookkeeping requests, and large KV values
//! stored as blobs.
//!
//! A streamed add is the request frame, then data frames (raw bytes behind the usual length prefix, at most
//! [`BLOB_DATA_FRAME_BYTES_MAX`] each), then an empty frame; the node answers once the blob is verified, recorded and
//! (if asked) attached to its key. A streamed get is answered with [`BlobResponse::Stream`], then data frames, then an
//! empty frame. Memory stays bounded by a few frames per transfer whatever the blob's size.

use std::time::Duration;

use bytes::Bytes as DataBytes;
use pando_protocol::blob::{
    BlobCommand, BlobHash, BlobRef, BlobRequest, BlobResponse, LocalBlob, Replica, ReplicationReport,
};
use pando_protocol::command::{Command, CommandOutput};
use pando_protocol::envelope::{RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame::LENGTH_PREFIX_BYTES;
use pando_protocol::kv::{Bytes, Consistency, KvRequest, KvResponse};
use pando_protocol::limits::{BLOB_DATA_FRAME_BYTES_MAX, BLOB_DATA_FRAME_TIMEOUT_MS};
use pando_protocol::token::{Access, TokenClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::{RpcContext, TokenCache, authenticate, authorise, linearize, propose, reader};
use super::link::{StreamRecv, StreamSend};
use super::stream::write_response;
use crate::blobs::{BlobNode, iroh_hash};
use crate::raft::propose_anywhere;

/// Whether a request streams data on its own stream (served by [`serve_stream`]).
pub(crate) fn is_streamed(envelope: &RequestEnvelope) -> bool {
    matches!(envelope.body, pando_protocol::envelope::Request::Blob(BlobRequest::Add { .. } | BlobRequest::Get { .. }))
}

fn blob_node(context: &RpcContext) -> Result<BlobNode, WireError> {
    context.directory.blobs().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "the blob store is not running"))
}

fn storage_fault(fault: impl std::fmt::Display) -> WireError {
    WireError::internal(fault.to_string())
}

async fn record_of(
    context: &RpcContext,
    hash: BlobHash,
) -> Result<Option<pando_protocol::blob::BlobRecord>, WireError> {
    Ok(blob_node(context)?.read(move |reader| reader.blob(&hash)).await?)
}

/// Serves a streamed add or get, then finishes the stream.
pub(crate) async fn serve_stream(
    context: &RpcContext,
    cache: &std::sync::Mutex<TokenCache>,
    envelope: RequestEnvelope,
    mut send: StreamSend,
    mut recv: StreamRecv,
) {
    let request_id = envelope.request_id;
    let claims = match authenticate(context, cache, envelope.token.as_ref()) {
        Ok(claims) => claims,
        Err(error) => {
            write_response(&mut send, &ResponseEnvelope { request_id, body: Err(error) }).await;
            return;
        }
    };
    let result = match envelope.body {
        pando_protocol::envelope::Request::Blob(request @ BlobRequest::Add { .. }) => {
            add(context, &claims, request, &mut recv).await
        }
        pando_protocol::envelope::Request::Blob(BlobRequest::Get { hash, key }) => {
            match get(context, &claims, hash, key, request_id, &mut send).await {
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

fn transfer_permit(node: &BlobNode) -> Result<tokio::sync::OwnedSemaphorePermit, WireError> {
    node.transfers.clone().try_acquire_owned().map_err(|_| {
        WireError::new(ErrorCode::Busy, "this node streams as many blobs as it may at once; retry with backoff")
    })
}

async fn add(
    context: &RpcContext,
    claims: &TokenClaims,
    request: BlobRequest,
    recv: &mut StreamRecv,
) -> Result<BlobResponse, WireError> {
    request.validate()?;
    let BlobRequest::Add { replicas, pin, expected, attach, ack_copies } = request else {
        return Err(WireError::internal("not an add"));
    };
    authorise(claims, Access::BlobWrite)?;
    if let Some(attach) = &attach {
        authorise(claims, Access::KvWrite(&attach.key))?;
    }
    let node = blob_node(context)?;
    let _permit = transfer_permit(&node)?;
    // The import pulls from a small channel while this task reads frames into it: a few frames in memory at most.
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<DataBytes>>(4);
    let store = node.store.clone();
    let import = tokio::spawn(async move {
        store.blobs().add_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.temp_tag().await
    });
    let mut size: u64 = 0;
    let size_max = node.config.max_blob_bytes;
    let read = loop {
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
    let tag = imported.map_err(|error| WireError::internal(format!("cannot store the blob: {error}")))?;
    let hash = BlobHash(*tag.hash().as_bytes());
    if let Some(expected) = expected
        && expected != hash
    {
        // The data stays unreferenced (only this request's temporary tag held it) and is collected.
        return Err(WireError::invalid(format!("the data hashes to {hash}, not the expected {expected}")));
    }
    let blob = BlobRef { hash, size };
    let attach = attach.map(|attach| (attach.key, attach.lease));
    let (record, revision) = record_and_attach(context, &node, blob, replicas, pin, ack_copies, attach).await?;
    drop(tag);
    Ok(BlobResponse::Added { hash, record, revision })
}

/// Records a blob this node holds (its copy kept first), attaches it to a key when asked, then waits until
/// `ack_copies` nodes hold it (by default two when it should have two or more, so an acknowledged blob survives the
/// loss of any one node; never more than the members).
async fn record_and_attach(
    context: &RpcContext,
    node: &BlobNode,
    blob: BlobRef,
    replicas: Option<u8>,
    pin: bool,
    ack_copies: Option<u8>,
    attach: Option<(Bytes, Option<u64>)>,
) -> Result<(pando_protocol::blob::BlobRecord, Option<u64>), WireError> {
    let timeout = Duration::from_secs(30);
    let replicas = replicas.unwrap_or(node.config.default_replicas);
    let members = crate::raft::transport::members(&context.directory).len().max(1);
    let ack_copies = usize::from(ack_copies.unwrap_or(replicas.min(2)).min(replicas)).min(members);
    let added = BlobCommand::Added {
        blob,
        holder: context.node_id,
        replicas,
        pin,
        gc_grace_ms: u64::try_from(node.config.gc_grace.as_millis()).unwrap_or(u64::MAX),
    };
    // Kept before it is recorded: once the record names this node, the copy must already be safe from a sweep.
    node.hold(blob.hash).await?;
    let mut events = context.directory.stores().map(|stores| stores.state_machine.subscribe());
    let mut record = match propose_anywhere(&context.directory, Command::Blob(added), timeout).await? {
        CommandOutput::Blob(BlobResponse::Record { record, .. }) => record,
        other => return Err(WireError::internal(format!("a blob add produced {other:?}"))),
    };
    // Attached before waiting for copies: until a key (or the user's pin) references it, the blob is only one
    // grace period away from collection.
    let revision = match attach {
        None => None,
        Some((key, lease)) => {
            let put = KvRequest::PutBlob { key, hash: blob.hash, lease };
            match propose_anywhere(&context.directory, Command::Kv(put), timeout).await? {
                CommandOutput::Kv(KvResponse::Written { revision }) => Some(revision),
                other => return Err(WireError::internal(format!("attaching a blob produced {other:?}"))),
            }
        }
    };
    let deadline = tokio::time::Instant::now() + crate::blobs::fetch_deadline(blob.size) + timeout;
    while record.holders.len() < ack_copies {
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::new(
                ErrorCode::Timeout,
                format!(
                    "blob {} is recorded but only {} of the {ack_copies} copies asked for exist yet; repair goes on, \
                     add it again to wait once more",
                    blob.hash,
                    record.holders.len()
                ),
            ));
        }
        // Woken by the commit stream, and every 200 ms anyway (this node may apply after the leader).
        let wait = tokio::time::sleep(Duration::from_millis(200));
        match events.as_mut() {
            Some(events) => {
                tokio::select! {
                    biased;
                    _ = events.recv() => {}
                    () = wait => {}
                }
            }
            None => wait.await,
        }
        match record_of(context, blob.hash).await? {
            Some(current) => record = current,
            None => {
                return Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("blob {} was collected before it had {ack_copies} copies", blob.hash),
                ));
            }
        }
    }
    Ok((record, revision))
}

/// A KV put of a value above the inline threshold, on the leader: the value becomes a blob held here and the key
/// points at it. A follower proposes it as it is, which answers `NOT_LEADER`, and the client moves to the leader.
pub(crate) async fn put_large(
    context: &RpcContext,
    node: &BlobNode,
    key: &Bytes,
    value: &Bytes,
    lease: Option<u64>,
    timeout: Duration,
) -> Result<KvResponse, WireError> {
    if !node.leads() {
        let put = KvRequest::Put { key: key.clone(), value: value.clone(), lease };
        return match propose(context, Command::Kv(put), timeout).await? {
            CommandOutput::Kv(response) => Ok(response),
            other => Err(WireError::internal(format!("a KV write produced {other:?}"))),
        };
    }
    let tag = node
        .store
        .blobs()
        .add_bytes(DataBytes::copy_from_slice(value))
        .temp_tag()
        .await
        .map_err(|error| WireError::internal(format!("cannot store the value as a blob: {error}")))?;
    let blob = BlobRef { hash: BlobHash(*tag.hash().as_bytes()), size: value.len() as u64 };
    let attach = Some((key.clone(), lease));
    let (_, revision) = record_and_attach(context, node, blob, None, false, None, attach).await?;
    drop(tag);
    Ok(KvResponse::Written { revision: revision.unwrap_or_default() })
}

/// Streams a blob out. `Ok(None)`: the data was sent (or the client went away); `Ok(Some)` never happens today but
/// keeps the answer shape open; `Err`: answered with an error frame by the caller.
async fn get(
    context: &RpcContext,
    claims: &TokenClaims,
    hash: BlobHash,
    key: Option<Bytes>,
    request_id: u64,
    send: &mut StreamSend,
) -> Result<Option<BlobResponse>, WireError> {
    match &key {
        // Reading a KV value stored as a blob needs the key, not the blob capability.
        Some(key) => {
            authorise(claims, Access::KvRead(key))?;
            let reader = reader(context)?;
            let request = KvRequest::Get { key: key.clone(), consistency: Consistency::Stale };
            let entry = crate::storage::offload(move || reader.read(&request))
                .await
                .map_err(|error| WireError::internal(error.to_string()))?
                .map_err(storage_fault)??;
            let points_here = matches!(
                entry,
                KvResponse::Entry { entry: Some(ref entry) } if entry.blob.is_some_and(|blob| blob.hash == hash)
            );
            if !points_here {
                return Err(WireError::new(ErrorCode::Conflict, "the key no longer holds this blob; read it again"));
            }
        }
        None => authorise(claims, Access::BlobRead)?,
    }
    let node = blob_node(context)?;
    let _permit = transfer_permit(&node)?;
    let record = record_of(context, hash).await?;
    let holders = record.as_ref().map(|record| record.holders.clone()).unwrap_or_default();
    let local = node.local(&hash).await?;
    if record.is_none() && !matches!(local, LocalBlob::Complete { .. }) {
        return Err(WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster")));
    }
    let size = record.as_ref().map_or(0, |record| record.size);
    let _pin = node.ensure_local(&hash, size, &holders).await?;
    let size = match node.local(&hash).await? {
        LocalBlob::Complete { size } => size,
        _ => return Err(WireError::new(ErrorCode::Unavailable, format!("blob {hash} is not complete on this node"))),
    };
    let header = ResponseEnvelope { request_id, body: Ok(Response::Blob(BlobResponse::Stream { hash, size })) };
    let header = pando_protocol::frame::encode(&header).map_err(|error| WireError::internal(error.to_string()))?;
    let mut reader = node.store.blobs().reader(iroh_hash(&hash));
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

/// The blob requests that do not stream.
pub(crate) async fn execute(
    context: &RpcContext,
    claims: &TokenClaims,
    request: BlobRequest,
    timeout: Duration,
) -> Result<BlobResponse, WireError> {
    request.validate()?;
    authorise(claims, if request.is_write() { Access::BlobWrite } else { Access::BlobRead })?;
    let write = |command: BlobCommand| async move {
        match propose(context, Command::Blob(command), timeout).await? {
            CommandOutput::Blob(response) => Ok(response),
            other => Err(WireError::internal(format!("a blob command produced {other:?}"))),
        }
    };
    match request {
        BlobRequest::Add { .. } | BlobRequest::Get { .. } => {
            Err(WireError::invalid("blob add and get stream their data on their own request stream"))
        }
        BlobRequest::Protect { hash } => write(BlobCommand::Protect { hash, protected: true }).await,
        BlobRequest::Unprotect { hash } => write(BlobCommand::Protect { hash, protected: false }).await,
        BlobRequest::Delete { hash } => write(BlobCommand::Unpin { hash }).await,
        BlobRequest::SetReplicas { hash, replicas } => write(BlobCommand::SetReplicas { hash, replicas }).await,
        BlobRequest::Has { hash } => {
            let node = blob_node(context)?;
            let cluster = record_of(context, hash).await?.is_some_and(|record| !record.holders.is_empty());
            let local = matches!(node.local(&hash).await?, LocalBlob::Complete { .. });
            Ok(BlobResponse::Has { cluster, local })
        }
        BlobRequest::Status { hash } => {
            let node = blob_node(context)?;
            let record = record_of(context, hash).await?;
            let local = node.local(&hash).await?;
            Ok(BlobResponse::Status {
                hash,
                record,
                local,
                node_id: context.node_id,
                transfers: node.transfer_counters(),
            })
        }
        BlobRequest::List { after, limit } => {
            let (blobs, next) = blob_node(context)?.read(move |reader| reader.blobs(after.as_ref(), limit)).await?;
            Ok(BlobResponse::Page { blobs, next })
        }
        BlobRequest::Replication { hash } => {
            // Liveness is the leader's view: the node that hears from every member.
            linearize(context).await?;
            let record = record_of(context, hash)
                .await?
                .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no blob {hash} in the cluster")))?;
            let node = blob_node(context)?;
            let live = |id: &u64| node.is_live(*id);
            let replicas = |nodes: &[u64]| {
                nodes.iter().map(|node| Replica { node_id: *node, live: live(node) }).collect::<Vec<_>>()
            };
            Ok(BlobResponse::Replication(ReplicationReport {
                hash,
                size: record.size,
                desired: record.replicas,
                live_holders: record.holders.iter().filter(|node| live(node)).count() as u32,
                holders: replicas(&record.holders),
                assigned: replicas(&record.assigned),
                reported_by: context.node_id,
            }))
        }
    }
}
