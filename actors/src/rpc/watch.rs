//! The watch stream: a watch (or an observation) request on its own stream, answered by [`WatchResponse`] (or
//! [`ObserveResponse`]) frames for as long as both sides keep it open. The watcher ends it by finishing (or resetting) its side; the node by a `Canceled` frame.
//!
//! A frame the watcher does not take within [`WATCH_SEND_STALL_MS_MAX`] cancels the watch (`SLOW_CONSUMER`, with the
//! revision to resume from). Until then the watcher holds up only its own stream: QUIC flow control stops this task,
//! not the node, and the feed behind it catches up from the history once the watcher reads again.

use std::sync::Arc;
use std::time::Duration;

use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame;
use pando_protocol::hook::api::HookStreamResponse;
use pando_protocol::limits::WATCH_SEND_STALL_MS_MAX;
use pando_protocol::observe::ObserveResponse;
use pando_protocol::watch::WatchResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::RpcContext;
use super::link::{StreamRecv, StreamSend};
use super::stream::write_response;
use crate::commit_stream::RevisionEvents;
use crate::services::watch::whole_response;
use crate::services::{HookWatcher, Observer, WatchFrame, Watcher};

/// How long the last frame (a cancellation) may take to go out.
const CANCEL_WRITE_MS: u64 = 1_000;

/// Whether a request opens a watch or an observation (served by [`serve_stream`]).
pub(crate) fn is_watch(envelope: &RequestEnvelope) -> bool {
    matches!(envelope.body, Request::Watch(_) | Request::Observe(_) | Request::HookWatch(_))
}

/// A long-lived answer on one stream.
enum Subscription {
    Watch(Watcher),
    Observe(Observer),
    Hooks(HookWatcher),
}

/// One frame to send.
enum Frame {
    Response(Response),
    /// A whole revision, encoded once for every watch that sends it ([`RevisionEvents::whole_frame`]).
    Whole(Arc<RevisionEvents>),
}

impl From<WatchFrame> for Frame {
    fn from(frame: WatchFrame) -> Frame {
        match frame {
            WatchFrame::Own(response) => Frame::Response(Response::Watch(response)),
            WatchFrame::Whole(revision) => Frame::Whole(revision),
        }
    }
}

impl Subscription {
    fn open(context: &RpcContext, body: Request) -> Result<Subscription, WireError> {
        match body {
            Request::Watch(request) => context.services.watch.open(request).map(Subscription::Watch),
            Request::Observe(request) => context.services.watch.observe(request).map(Subscription::Observe),
            Request::HookWatch(request) => context.services.hooks.open(request).map(Subscription::Hooks),
            _ => Err(WireError::internal("not a watch request")),
        }
    }

    /// The next frame, and whether it is the last (a cancellation).
    async fn next(&mut self) -> Option<(Frame, bool)> {
        match self {
            Subscription::Watch(watcher) => watcher.next_frame().await.map(|frame| {
                let last = frame.is_last();
                (frame.into(), last)
            }),
            Subscription::Observe(observer) => observer.next().await.map(|frame| {
                let last = matches!(frame, ObserveResponse::Canceled { .. });
                (Frame::Response(Response::Observe(frame)), last)
            }),
            Subscription::Hooks(watcher) => watcher.next_frame().await.map(|frame| {
                let last = matches!(frame, HookStreamResponse::Canceled { .. });
                (Frame::Response(Response::HookStream(frame)), last)
            }),
        }
    }

    /// The next frame if one is ready now (observations send one frame at a time).
    fn try_next(&mut self) -> Option<(Frame, bool)> {
        match self {
            Subscription::Watch(watcher) => watcher.try_next_frame().map(|frame| {
                let last = frame.is_last();
                (frame.into(), last)
            }),
            Subscription::Observe(_) | Subscription::Hooks(_) => None,
        }
    }

    /// The frame that cancels it with `error` (a watch names the revision to resume from).
    fn canceled(&self, error: WireError) -> Response {
        match self {
            Subscription::Watch(watcher) => {
                Response::Watch(WatchResponse::Canceled { error, next_revision: watcher.next_revision() })
            }
            Subscription::Observe(_) => Response::Observe(ObserveResponse::Canceled { error }),
            Subscription::Hooks(watcher) => {
                Response::HookStream(HookStreamResponse::Canceled { error, next_seq: watcher.next_seq() })
            }
        }
    }
}

/// Serves one checked watch or observation until either side ends it, then finishes the stream.
pub(crate) async fn serve_stream(
    context: &RpcContext,
    envelope: RequestEnvelope,
    mut send: StreamSend,
    mut recv: StreamRecv,
) {
    let request_id = envelope.request_id;
    let mut subscription = match Subscription::open(context, envelope.body) {
        Ok(subscription) => subscription,
        Err(error) => {
            write_response(&mut send, &ResponseEnvelope { request_id, body: Err(error) }).await;
            return;
        }
    };
    let mut closed = [0u8; 1];
    loop {
        let next = tokio::select! {
            // Biased: the same order every run (the simulator replays a seed exactly).
            biased;
            next = subscription.next() => next,
            // The watcher finished or reset its side: it cancelled the watch.
            _ = recv.read(&mut closed) => return,
        };
        let Some((frame, mut last)) = next else { break };
        // What else is ready goes out in the same write: a watcher that fell behind, or a burst of revisions, costs
        // one write (and one wake-up of the connection) instead of one per frame.
        let Ok(mut bytes) = encode(request_id, frame) else { return };
        while !last && bytes.len() < WATCH_WRITE_BYTES_MAX {
            let Some((frame, is_last)) = subscription.try_next() else { break };
            let Ok(more) = encode(request_id, frame) else { return };
            bytes.extend_from_slice(&more);
            last = is_last;
        }
        match send_frames(&mut send, request_id, &bytes, |error| subscription.canceled(error)).await {
            Sent::Taken if !last => {}
            Sent::Taken | Sent::Stalled => break,
            Sent::Gone => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(CANCEL_WRITE_MS), send.shutdown()).await;
}

/// Bytes of ready frames gathered into one write.
const WATCH_WRITE_BYTES_MAX: usize = 64 * 1024;

/// One frame's bytes, prefix included.
fn encode(request_id: u64, frame: Frame) -> Result<Vec<u8>, ()> {
    let encoded = match frame {
        Frame::Response(response) => frame::encode(&ResponseEnvelope { request_id, body: Ok(response) }),
        Frame::Whole(revision) => {
            whole_body(&revision).and_then(|body| frame::encode_response_around(request_id, &body))
        }
    };
    encoded.map_err(|error| tracing::error!(%error, "cannot encode a watch frame"))
}

/// The body of a whole revision's frame, encoded by the first watch that sends it.
fn whole_body(revision: &RevisionEvents) -> Result<Arc<[u8]>, frame::FrameError> {
    if let Some(body) = revision.whole_frame.get() {
        return Ok(body.clone());
    }
    let body = frame::encode_response_body(&Ok(Response::Watch(whole_response(revision))))?;
    Ok(revision.whole_frame.get_or_init(|| body.into()).clone())
}

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Taken,
    /// The watcher is gone (the stream broke).
    Gone,
    /// The watcher took nothing for [`WATCH_SEND_STALL_MS_MAX`]: it was sent `SLOW_CONSUMER` (if it takes that).
    Stalled,
}

/// Sends encoded frames within the stall bound; past it, sends the cancellation `canceled` makes of `SLOW_CONSUMER`.
async fn send_frames(
    send: &mut StreamSend,
    request_id: u64,
    bytes: &[u8],
    canceled: impl FnOnce(WireError) -> Response,
) -> Sent {
    let stall = Duration::from_millis(WATCH_SEND_STALL_MS_MAX);
    match tokio::time::timeout(stall, write_bytes(send, bytes)).await {
        Ok(Ok(())) => Sent::Taken,
        Ok(Err(())) => Sent::Gone,
        Err(_) => {
            let error = WireError::new(
                ErrorCode::SlowConsumer,
                format!("the watcher took no frame for {WATCH_SEND_STALL_MS_MAX} ms; resume where it stopped"),
            );
            if let Ok(cancel) = encode(request_id, Frame::Response(canceled(error))) {
                let _ = tokio::time::timeout(Duration::from_millis(CANCEL_WRITE_MS), write_bytes(send, &cancel)).await;
            }
            Sent::Stalled
        }
    }
}

/// Writes encoded frames, keeping the stream open.
async fn write_bytes(send: &mut StreamSend, bytes: &[u8]) -> Result<(), ()> {
    send.write_all(bytes).await.map_err(|_| ())?;
    send.flush().await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::rpc::link::Outgoing;

    /// A watcher that takes nothing: every write waits forever.
    struct Stuck;

    impl tokio::io::AsyncWrite for Stuck {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl Outgoing for Stuck {
        fn abort(&mut self) {}
    }

    #[test]
    fn a_whole_revision_is_encoded_once_into_the_frame_its_response_makes() {
        let event = |key: &str| pando_protocol::watch::KvEvent {
            kind: pando_protocol::watch::EventKind::Put,
            entry: pando_protocol::kv::KvEntry {
                key: pando_protocol::kv::bytes(key),
                value: pando_protocol::kv::bytes("v"),
                create_revision: 9,
                mod_revision: 9,
                version: 1,
                blob: None,
            },
            prev_revision: 0,
            time_ms: 1,
        };
        let revision = Arc::new(RevisionEvents::new(9, vec![event("a"), event("b")]));
        let expected = |request_id| {
            let body = Ok(Response::Watch(whole_response(&revision)));
            frame::encode(&ResponseEnvelope { request_id, body }).unwrap()
        };
        assert!(revision.whole_frame.get().is_none());
        assert_eq!(encode(5, Frame::Whole(revision.clone())).unwrap(), expected(5));
        let cached = revision.whole_frame.get().unwrap().clone();
        assert_eq!(encode(300, Frame::Whole(revision.clone())).unwrap(), expected(300));
        assert!(Arc::ptr_eq(&cached, revision.whole_frame.get().unwrap()), "the second stream reused the body");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_takes_no_frame_within_the_bound_is_cancelled_slow_consumer() {
        let mut send: StreamSend = Box::new(Stuck);
        let started = tokio::time::Instant::now();
        let frame = encode(1, Frame::Response(Response::Watch(WatchResponse::Progress { next_revision: 7 }))).unwrap();
        let canceled = |error| Response::Watch(WatchResponse::Canceled { error, next_revision: 7 });
        assert_eq!(send_frames(&mut send, 1, &frame, canceled).await, Sent::Stalled);
        assert!(started.elapsed() >= Duration::from_millis(WATCH_SEND_STALL_MS_MAX));
    }

    #[tokio::test]
    async fn frames_go_out_on_an_open_stream_and_a_broken_one_means_the_watcher_is_gone() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        struct Pipe(tokio::io::DuplexStream);
        impl tokio::io::AsyncWrite for Pipe {
            fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, data)
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
        impl Outgoing for Pipe {
            fn abort(&mut self) {}
        }
        let mut send: StreamSend = Box::new(Pipe(near));
        let progress =
            encode(1, Frame::Response(Response::Watch(WatchResponse::Progress { next_revision: 3 }))).unwrap();
        let canceled = |error| Response::Watch(WatchResponse::Canceled { error, next_revision: 3 });
        assert_eq!(send_frames(&mut send, 1, &progress, canceled).await, Sent::Taken);
        let mut prefix = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut prefix).await.unwrap();
        assert!(u32::from_be_bytes(prefix) > 0, "a framed response arrived");
        drop(far);
        assert_eq!(send_frames(&mut send, 1, &progress, canceled).await, Sent::Gone);
    }
}
