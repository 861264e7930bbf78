//! One protocol router per endpoint: the EndpointActor runs iroh's `Router` on the node's endpoint and hands each
//! connection to the subsystem that serves its ALPN, each protocol with its own connection limit. Clients
//! (`pando/rpc/1`) go to the RPC gateway; Raft, the actor mesh and blob transfers between members go straight to
//! their own subsystems, so client load can never take the peers' connection slots, and an RPC gateway restart drops
//! only client connections.
//!
//! The router is the first child of the node's tree: a restart of any other subsystem leaves it (and so every other
//! protocol's connections) alone. It reaches the subsystems through their handles, so a connection that arrives while
//! one restarts is refused by that subsystem's own rule (a Raft request answered "not running", a mesh session
//! closed), never by the router.
//!
//! **Invariant:** no handler lets a panic reach the router (iroh's router stops, and closes the endpoint, when a
//! handler task panics): each one runs behind `catch_unwind`.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use iroh::Endpoint;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use pando_protocol::alpn;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::blobs::BlobsHandle;
use crate::mesh::MeshHandle;
use crate::raft::RaftHandle;
use crate::rpc::GatewayHandle;
use crate::supervision::{ActorDetail, Control};

/// Raft connections from members at once (each member pools one; a few more while reconnecting).
pub const RAFT_PEER_CONNECTIONS_MAX: usize = 256;
/// Actor mesh connections at once (one session per member, two while one replaces another).
pub const MESH_PEER_CONNECTIONS_MAX: usize = 256;
/// Blob transfer connections from members at once (one per fetch in progress).
pub const BLOB_PEER_CONNECTIONS_MAX: usize = 256;
/// How often the actor checks that its router still runs.
const ROUTER_CHECK_INTERVAL_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointActor;

#[derive(Clone)]
pub struct EndpointArgs {
    pub endpoint: Endpoint,
    /// Clients.
    pub gateway: GatewayHandle,
    /// Raft between members, and who is a member (the mesh and blob protocols serve members only).
    pub raft: RaftHandle,
    pub mesh: MeshHandle,
    pub blobs: BlobsHandle,
}

pub enum EndpointMsg {
    /// Fail (and be restarted) if the router stopped.
    Check,
    Control(Control),
}

impl ractor::Message for EndpointMsg {}

impl From<Control> for EndpointMsg {
    fn from(control: Control) -> EndpointMsg {
        EndpointMsg::Control(control)
    }
}

pub struct EndpointState {
    /// Dropped (not shut down) when the actor stops: dropping aborts the accept loop and its connections but leaves
    /// the endpoint open for the next router; closing the endpoint is the node's job.
    router: Router,
    limits: Vec<(&'static str, Arc<Semaphore>, usize)>,
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        let raft_slots = Arc::new(Semaphore::new(RAFT_PEER_CONNECTIONS_MAX));
        let mesh_slots = Arc::new(Semaphore::new(MESH_PEER_CONNECTIONS_MAX));
        let blob_slots = Arc::new(Semaphore::new(BLOB_PEER_CONNECTIONS_MAX));
        let raft = args.raft.clone();
        let (mesh_raft, mesh) = (args.raft.clone(), args.mesh.clone());
        let (blob_raft, blobs) = (args.raft.clone(), args.blobs.clone());
        let gateway = args.gateway.clone();
        let router = Router::builder(args.endpoint)
            .accept(
                alpn::RPC,
                Protocol::new("rpc", None, move |connection| {
                    let gateway = gateway.clone();
                    async move { gateway.serve(connection).await }.boxed()
                }),
            )
            .accept(
                alpn::RAFT,
                Protocol::new("raft", Some(raft_slots.clone()), move |connection| {
                    crate::raft::transport::serve_peer(connection, raft.clone()).boxed()
                }),
            )
            .accept(
                alpn::ACTORS,
                Protocol::new("mesh", Some(mesh_slots.clone()), move |connection| {
                    crate::mesh::accept_peer(connection, mesh_raft.clone(), mesh.clone()).boxed()
                }),
            )
            .accept(
                alpn::BLOBS,
                Protocol::new("blobs", Some(blob_slots.clone()), move |connection| {
                    crate::blobs::serve_members(connection, blob_raft.clone(), blobs.clone()).boxed()
                }),
            )
            .spawn();
        myself.send_interval(Duration::from_millis(ROUTER_CHECK_INTERVAL_MS), || EndpointMsg::Check);
        let limits = vec![
            ("raft", raft_slots, RAFT_PEER_CONNECTIONS_MAX),
            ("mesh", mesh_slots, MESH_PEER_CONNECTIONS_MAX),
            ("blobs", blob_slots, BLOB_PEER_CONNECTIONS_MAX),
        ];
        Ok(EndpointState { router, limits })
    }

    async fn handle(
        &self,
        _myself: ActorRef<EndpointMsg>,
        message: EndpointMsg,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EndpointMsg::Check if state.router.is_shutdown() => {
                return Err("the protocol router stopped".into());
            }
            EndpointMsg::Check => {}
            EndpointMsg::Control(Control::InjectPanic) => panic!("fault injection: endpoint actor panics on request"),
            EndpointMsg::Control(Control::Status(reply, _)) => {
                let peers: Vec<String> = state
                    .limits
                    .iter()
                    .map(|(name, slots, max)| format!("{name} {}", max - slots.available_permits()))
                    .collect();
                let _ = reply.send(ActorDetail::line(format!("peer connections: {}", peers.join(", "))));
            }
        }
        Ok(())
    }
}

type Serve = Arc<dyn Fn(Connection) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// One ALPN's handler: an optional connection limit, then the subsystem's own serving function.
struct Protocol {
    name: &'static str,
    slots: Option<Arc<Semaphore>>,
    serve: Serve,
}

impl Protocol {
    fn new(
        name: &'static str,
        slots: Option<Arc<Semaphore>>,
        serve: impl Fn(Connection) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Protocol {
        Protocol { name, slots, serve: Arc::new(serve) }
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protocol").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ProtocolHandler for Protocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let _slot = match &self.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::warn!(protocol = self.name, "peer connection limit reached, refusing a connection");
                    connection.close(9u32.into(), b"too many connections for this protocol");
                    return Ok(());
                }
            },
        };
        if AssertUnwindSafe((self.serve)(connection)).catch_unwind().await.is_err() {
            tracing::error!(protocol = self.name, "serving a connection panicked");
        }
        Ok(())
    }
}
