//! The client against a transport that never connects, or connects and never answers: a request that reached no
//! node fails `UNAVAILABLE` at the connect timeout naming the addresses, while one that was sent is only ever a
//! `TIMEOUT` (it may have been applied), and without a connect timeout nothing changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pando_protocol::cluster::MemberNode;
use pando_protocol::envelope::Request;
use pando_protocol::kv::{Consistency, KvRequest};
use pando_protocol::ticket::{Ticket, TicketNode};
use tokio::io::DuplexStream;

use super::{Client, ClientOptions};
use crate::error::ClientError;
use crate::transport::{Link, RecvHalf, SendHalf, Transport};

/// Never connects (a stopped node: QUIC hears nothing back), or connects and swallows every request.
struct FakeTransport {
    connects: bool,
}

/// Keeps the node's ends of the streams open, so the client waits for an answer that never comes.
#[derive(Default)]
struct SilentLink {
    node_ends: Mutex<Vec<DuplexStream>>,
}

impl Transport for FakeTransport {
    fn connect<'a>(&'a self, _node: &'a TicketNode) -> BoxFuture<'a, Result<Arc<dyn Link>, ClientError>> {
        Box::pin(async move {
            if !self.connects {
                std::future::pending::<()>().await;
            }
            Ok(Arc::new(SilentLink::default()) as Arc<dyn Link>)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Link for SilentLink {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), String>> {
        Box::pin(async move {
            let (client_end, node_end) = tokio::io::duplex(1 << 16);
            self.node_ends.lock().expect("not poisoned").push(node_end);
            let (recv, send) = tokio::io::split(client_end);
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn close(&self) {}
}

fn client(connects: bool, connect_timeout: Option<Duration>) -> Client {
    let node = |node_id: u64, port: u16| TicketNode {
        node_id,
        node: MemberNode {
            public_key: vec![node_id as u8; 32].into(),
            addrs: vec![format!("127.0.0.1:{port}").parse().expect("an address")],
        },
    };
    let ticket = Ticket { cluster_id: vec![1; 16].into(), nodes: vec![node(1, 7001), node(2, 7002)], token: None };
    let mut options = ClientOptions::new(Duration::from_secs(10));
    options.connect_timeout = connect_timeout;
    Client::with_transport(ticket, options, Box::new(FakeTransport { connects }))
}

fn get() -> Request {
    Request::Kv(KvRequest::Get { key: b"k".to_vec().into(), consistency: Consistency::Linearizable })
}

#[tokio::test(start_paused = true)]
async fn a_request_that_reaches_no_node_fails_unavailable_at_the_connect_timeout_naming_every_address() {
    let client = client(false, Some(Duration::from_secs(2)));
    let started = tokio::time::Instant::now();
    let error = client.request(get()).await.expect_err("nothing answers");
    let waited = started.elapsed();
    assert!(matches!(error, ClientError::Unreachable(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("node 1 at 127.0.0.1:7001") && message.contains("node 2 at 127.0.0.1:7002"), "{message}");
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_100), "failed after {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_was_sent_is_a_timeout_never_unavailable() {
    let client = client(true, Some(Duration::from_secs(2)));
    let error = client.request(get()).await.expect_err("the node never answers");
    assert!(
        matches!(error, ClientError::Timeout(_)),
        "a request that may have been applied must not look unsent: {error}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_connect_timeout_a_request_that_reaches_no_node_waits_for_its_deadline() {
    let client = client(false, None);
    let started = tokio::time::Instant::now();
    let error = client.request(get()).await.expect_err("nothing answers");
    assert!(matches!(error, ClientError::Timeout(_)), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_watch_an_observation_and_a_blob_transfer_that_reach_no_node_fail_at_the_connect_timeout() {
    use pando_protocol::watch::{WatchRange, WatchRequest};

    let client = client(false, Some(Duration::from_secs(2)));
    let request = WatchRequest {
        range: WatchRange::Prefix(b"app/".to_vec().into()),
        start_revision: 0,
        prev_kv: false,
        only: None,
        progress_ms: 0,
    };
    let started = tokio::time::Instant::now();
    let error = client.watch(request).next().await.expect_err("nothing answers");
    assert!(matches!(error, ClientError::Unreachable(_)), "a watch that never opened does not retry for long: {error}");
    assert!(error.to_string().contains("node 2 at 127.0.0.1:7002"), "{error}");
    assert!(started.elapsed() < Duration::from_millis(2_100), "failed after {:?}", started.elapsed());

    let started = tokio::time::Instant::now();
    let error = client.observe_election(b"leader").next().await.expect_err("nothing answers");
    assert!(matches!(error, ClientError::Unreachable(_)), "{error}");
    assert!(started.elapsed() < Duration::from_millis(2_100), "failed after {:?}", started.elapsed());

    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let hash = pando_protocol::blob::BlobHash([0; 32]);
    let error = client.blob_get(hash, None, &mut out, |_, _| {}).await.expect_err("nothing answers");
    assert!(matches!(error, ClientError::Unreachable(_)), "{error}");
    assert!(started.elapsed() < Duration::from_millis(2_100), "failed after {:?}", started.elapsed());
}
