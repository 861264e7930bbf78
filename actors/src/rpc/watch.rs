//! The watch stream: a watch (or an observation) request on its own stream, answered by [`WatchResponse`] (or
//! [`ObserveResponse`]) frames for as long as both sides keep it open. The watcher ends it by finishing (or resetting) its side; the node by a `Canceled` frame.
//!
//! A frame the watcher does not take within [`WATCH_SEND_STALL_MS_MAX`] cancels the watch (`SLOW_CONSUMER`, with the
//! revision to resume from). Until then the watcher holds up only its own stream: QUIC flow control stops this task,
//! not the node, and the feed behind it catches up from the history once the watcher reads again.

use std::time::Duration;

use pando_protocol::envelope::{Request, RequestEnvelope, Response, ResponseEnvelope};
use pando_protocol::error::{ErrorCode, WireError};
use pando_protocol::frame;
use pando_protocol::limits::WATCH_SEND_STALL_MS_MAX;
use pando_protocol::observe::ObserveResponse;
use pando_protocol::watch::WatchResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handler::RpcContext;
use super::link::{StreamRecv, StreamSend};
use super::stream::write_response;
use crate::services::{Observer, Watcher};

/// How long the last frame (a cancellation) may take to go out.
const CANCEL_WRITE_MS: u64 = 1_000;

/// Whether a request opens a watch or an observation (served by [`serve_stream`]).
pub(crate) fn is_watch(envelope: &RequestEnvelope) -> bool {
    matches!(envelope.body, Request::Watch(_) | Request::Observe(_))
}

/// A long-lived answer on one stream.
enum Subscription {
    Watch(Watcher),
    Observe(Observer),
}

impl Subscription {
    fn open(context: &RpcContext, body: Request) -> Result<Subscription, WireError> {
        match body {
            Request::Watch(request) => context.services.watch.open(request).map(Subscription::Watch),
            Request::Observe(request) => context.services.watch.observe(request).map(Subscription::Observe),
            _ => Err(WireError::internal("not a watch request")),
        }
    }

    /// The next frame, and whether it is the last (a cancellation).
    async fn next(&mut self) -> Option<(Response, bool)> {
        match self {
            Subscription::Watch(watcher) => watcher.next().await.map(|frame| {
                let last = matches!(frame, WatchResponse::Canceled { .. });
                (Response::Watch(frame), last)
            }),
            Subscription::Observe(observer) => observer.next().await.map(|frame| {
                let last = matches!(frame, ObserveResponse::Canceled { .. });
                (Response::Observe(frame), last)
            }),
        }
    }

    /// The frame that cancels it with `error` (a watch names the revision to resume from).
    fn canceled(&self, error: WireError) -> Response {
        match self {
            Subscription::Watch(watcher) => {
                Response::Watch(WatchResponse::Canceled { error, next_revision: watcher.next_revision() })
            }
            Subscription::Observe(_) => Response::Observe(ObserveResponse::Canceled { error }),
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
        let Some((frame, last)) = next else { break };
        match send_frame(&mut send, request_id, frame, |error| subscription.canceled(error)).await {
            Sent::Taken if !last => {}
            Sent::Taken | Sent::Stalled => break,
            Sent::Gone => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(CANCEL_WRITE_MS), send.shutdown()).await;
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

/// Sends one frame within the stall bound; past it, sends the cancellation `canceled` makes of `SLOW_CONSUMER`.
async fn send_frame(
    send: &mut StreamSend,
    request_id: u64,
    frame: Response,
    canceled: impl FnOnce(WireError) -> Response,
) -> Sent {
    let stall = Duration::from_millis(WATCH_SEND_STALL_MS_MAX);
    match tokio::time::timeout(stall, write_frame(send, request_id, frame)).await {
        Ok(Ok(())) => Sent::Taken,
        Ok(Err(())) => Sent::Gone,
        Err(_) => {
            let error = WireError::new(
                ErrorCode::SlowConsumer,
                format!("the watcher took no frame for {WATCH_SEND_STALL_MS_MAX} ms; resume where it stopped"),
            );
            let cancel = canceled(error);
            let _ = tokio::time::timeout(Duration::from_millis(CANCEL_WRITE_MS), write_frame(send, request_id, cancel))
                .await;
            Sent::Stalled
        }
    }
}

/// Writes one frame, keeping the stream open.
async fn write_frame(send: &mut StreamSend, request_id: u64, frame: Response) -> Result<(), ()> {
    let response = ResponseEnvelope { request_id, body: Ok(frame) };
    let bytes = frame::encode(&response).map_err(|error| tracing::error!(%error, "cannot encode a watch frame"))?;
    send.write_all(&bytes).await.map_err(|_| ())?;
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

    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_takes_no_frame_within_the_bound_is_cancelled_slow_consumer() {
        let mut send: StreamSend = Box::new(Stuck);
        let started = tokio::time::Instant::now();
        let frame = Response::Watch(WatchResponse::Progress { next_revision: 7 });
        let canceled = |error| Response::Watch(WatchResponse::Canceled { error, next_revision: 7 });
        assert_eq!(send_frame(&mut send, 1, frame, canceled).await, Sent::Stalled);
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
        let progress = || Response::Watch(WatchResponse::Progress { next_revision: 3 });
        let canceled = |error| Response::Watch(WatchResponse::Canceled { error, next_revision: 3 });
        assert_eq!(send_frame(&mut send, 1, progress(), canceled).await, Sent::Taken);
        let mut prefix = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut prefix).await.unwrap();
        assert!(u32::from_be_bytes(prefix) > 0, "a framed response arrived");
        drop(far);
        assert_eq!(send_frame(&mut send, 1, progress(), canceled).await, Sent::Gone);
    }
}
