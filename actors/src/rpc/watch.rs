//! The watch stream: a watch request on its own stream, answered by [`WatchResponse`] frames for as long as both
//! sides keep it open. The watcher ends it by finishing (or resetting) its side; the node by a `Canceled` frame.
//!
//! A frame the watcher does not take within [`WATCH_SEND_STALL_MS_MAX`] cancels the watch (`SLOW_CONSUMER`, with the
//! revision to resume from). Until then the watcher holds up only its own stream: QUIC flow control stops this task,
//! not the node, and the feed behind it catches up from the history once the watcher reads again.

use std::time::Duration;

use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame;
use pando_protocol::limits::WATCH_SEND_STALL_MS_MAX;
use pando_protocol::watch::WatchResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access;
use super::handler::{RpcContext, TokenCache, authenticate, authorise};
use super::link::{StreamRecv, StreamSend};
use super::stream::write_response;

/// How long the last frame (a cancellation) may take to go out.
const CANCEL_WRITE_MS: u64 = 1_000;

/// Whether a request opens a watch (served by [`serve_stream`]).
pub(crate) fn is_watch(envelope: &RequestEnvelope) -> bool {
    matches!(envelope.body, Request::Watch(_))
}

/// Serves one watch until either side ends it, then finishes the stream.
pub(crate) async fn serve_stream(
    context: &RpcContext,
    cache: &std::sync::Mutex<TokenCache>,
    envelope: RequestEnvelope,
    mut send: StreamSend,
    mut recv: StreamRecv,
) {
    let request_id = envelope.request_id;
    let checked = authenticate(context, cache, envelope.token.as_ref()).and_then(|claims| {
        access::validate(&envelope.body)?;
        access::required(&envelope.body).into_iter().try_for_each(|needed| authorise(&claims, needed))
    });
    let opened = checked.and_then(|()| match envelope.body {
        Request::Watch(request) => context.services.watch.open(request),
        _ => Err(WireError::internal("not a watch request")),
    });
    let mut watcher = match opened {
        Ok(watcher) => watcher,
        Err(error) => {
            write_response(&mut send, &ResponseEnvelope { request_id, body: Err(error) }).await;
            return;
        }
    };
    let mut closed = [0u8; 1];
    loop {
        let frame = tokio::select! {
            frame = watcher.next() => frame,
            // The watcher finished or reset its side: it cancelled the watch.
            _ = recv.read(&mut closed) => return,
        };
        let Some(frame) = frame else { break };
        let last = matches!(frame, WatchResponse::Canceled { .. });
        let stall = Duration::from_millis(WATCH_SEND_STALL_MS_MAX);
        match tokio::time::timeout(stall, write_frame(&mut send, request_id, frame)).await {
            Ok(Ok(())) if !last => {}
            Ok(Ok(())) => break,
            // The watcher is gone.
            Ok(Err(())) => return,
            Err(_) => {
                let error = WireError::new(
                    ErrorCode::SlowConsumer,
                    format!(
                        "the watcher took no frame for {WATCH_SEND_STALL_MS_MAX} ms; resume from the revision named"
                    ),
                );
                let cancel = WatchResponse::Canceled { error, next_revision: watcher.next_revision() };
                let _ = tokio::time::timeout(
                    Duration::from_millis(CANCEL_WRITE_MS),
                    write_frame(&mut send, request_id, cancel),
                )
                .await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(CANCEL_WRITE_MS), send.shutdown()).await;
}

/// Writes one frame of the watch, keeping the stream open.
async fn write_frame(send: &mut StreamSend, request_id: u64, frame: WatchResponse) -> Result<(), ()> {
    let response = ResponseEnvelope { request_id, body: Ok(Response::Watch(frame)) };
    let bytes = frame::encode(&response).map_err(|error| tracing::error!(%error, "cannot encode a watch frame"))?;
    send.write_all(&bytes).await.map_err(|_| ())?;
    send.flush().await.map_err(|_| ())
}
