//! `pando-node`: the composition root. Reads the configuration and data directory, loads or creates the identity,
//! binds the iroh endpoint, starts the supervision tree, writes the client ticket, and shuts down in order on
//! SIGINT/SIGTERM.

mod identity;
mod tree;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::SigningKey;
use iroh::endpoint::presets;
use iroh::{Endpoint, SecretKey};
use pando_actors::directory::Directory;
use pando_actors::rpc::RpcContext;
use pando_actors::supervision::Supervisor;
use pando_protocol::alpn;
use pando_protocol::cluster::MemberNode;
use pando_protocol::kv::Bytes;
use pando_protocol::ticket::{Ticket, TicketNode};
use pando_protocol::token::{Capability, CapabilityToken, TokenClaims};
use ractor::Actor;
use tracing_subscriber::EnvFilter;

use crate::identity::NodeRecord;

/// How long the node waits for its Raft instance to become leader of a fresh single-node cluster.
const LEADER_WAIT_MS_MAX: u64 = 30_000;
/// How long an orderly shutdown may take before the process exits anyway.
const SHUTDOWN_TIMEOUT_MS: u64 = 20_000;
/// Log filter when `PANDO_LOG` is unset: openraft narrates every election at info level.
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn";
/// Address used on first start when `--bind` is not given.
const BIND_DEFAULT: &str = "127.0.0.1:0";

#[derive(Debug, Parser)]
#[command(name = "pando-node", version, about = "Run a Pando node")]
struct Args {
    /// Directory holding the node's identity, database and ticket.
    #[arg(long, env = "PANDO_DATA_DIR")]
    data_dir: PathBuf,
    /// Socket address to listen on (UDP, QUIC). Remembered in the data directory; later starts reuse it.
    #[arg(long, env = "PANDO_BIND")]
    bind: Option<SocketAddr>,
    /// Raft snapshot after this many log entries since the last one.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_env("PANDO_LOG").unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT)))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = runtime.block_on(run(args))?;
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    identity::prepare_data_dir(&args.data_dir)?;
    let identity = identity::load_or_create(&args.data_dir)?;
    let first_start = identity.record.is_none();
    let bind = match (args.bind, &identity.record) {
        (Some(bind), _) => bind,
        (None, Some(record)) => record.bind,
        (None, None) => BIND_DEFAULT.parse().expect("default bind address parses"),
    };
    if !bind.ip().is_loopback() {
        tracing::warn!(%bind, "listening beyond loopback: clients need the ticket's token, keep the ticket secret");
    }

    let secret = SecretKey::from_bytes(&identity.node_key);
    let endpoint = Endpoint::builder(presets::Minimal)
        .secret_key(secret.clone())
        .alpns(vec![alpn::RPC.to_vec()])
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("invalid bind address {bind}"))?
        .bind()
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let bound = *endpoint.bound_sockets().first().context("endpoint has no bound socket")?;

    let record = match identity.record {
        Some(record) => NodeRecord { bind: bound, ..record },
        None => NodeRecord { node_id: 1, cluster_id: identity::new_cluster_id(), bind: bound },
    };
    // Persist the actual port, so a restart listens where clients and peers already look.
    identity::save_record(&args.data_dir, &record)?;

    let public_key = Bytes::from(secret.public().as_bytes().to_vec());
    let me = MemberNode { public_key: public_key.clone(), addrs: vec![bound] };
    let cluster_signing_key = SigningKey::from_bytes(&identity.cluster_key);
    let directory = Directory::default();
    let mut raft_config = pando_actors::raft::default_config();
    raft_config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(args.snapshot_every);
    let raft_config = Arc::new(raft_config.validate().context("invalid raft configuration")?);
    let tree = tree::root(tree::TreeConfig {
        data_dir: args.data_dir.clone(),
        node_id: record.node_id,
        raft_config,
        // Always offered: openraft refuses (and the RaftActor ignores) initialisation once the log holds a membership,
        // so a crash between writing node.json and the first membership entry cannot leave an uninitialised node.
        bootstrap: Some(BTreeMap::from([(record.node_id, me.clone())])),
        endpoint: endpoint.clone(),
        context: RpcContext {
            node_id: record.node_id,
            cluster_id: record.cluster_id.clone(),
            cluster_key: cluster_signing_key.verifying_key(),
            directory: directory.clone(),
        },
        directory: directory.clone(),
    });
    let (root, root_handle) =
        Actor::spawn(None, Supervisor, tree).await.context("cannot start the supervision tree")?;

    wait_for_leader(&directory, record.node_id).await?;
    let ticket = Ticket {
        cluster_id: Bytes::from(record.cluster_id.clone()),
        cluster_key: Bytes::from(cluster_signing_key.verifying_key().to_bytes().to_vec()),
        nodes: vec![TicketNode { node_id: record.node_id, node: me }],
        token: Some(CapabilityToken::sign(
            &TokenClaims {
                cluster_id: Bytes::from(record.cluster_id.clone()),
                subject: "admin".into(),
                capabilities: vec![Capability::All],
                issued_at_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
                expires_at_ms: None,
            },
            &cluster_signing_key,
        )),
    }
    .encode();
    let ticket_path = identity::ticket_path(&args.data_dir);
    identity::write_private(&ticket_path, ticket.as_bytes())?;
    tracing::info!(node_id = record.node_id, addr = %bound, ticket = %ticket_path.display(), first_start, "node ready");
    println!("{ticket}");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received, shutting down"); 0 }
        _ = terminate.recv() => { tracing::info!("SIGTERM received, shutting down"); 0 }
        result = root_handle => {
            // The root only exits by itself when a restart storm escalated past it.
            tracing::error!(?result, "supervision tree gave up");
            1
        }
    };
    if code == 0 {
        let stop = root.stop_and_wait(Some("shutdown".into()), Some(Duration::from_millis(SHUTDOWN_TIMEOUT_MS)));
        if stop.await.is_err() {
            tracing::warn!("supervision tree did not stop within {SHUTDOWN_TIMEOUT_MS} ms");
        }
    }
    endpoint.close().await;
    tracing::info!("stopped");
    Ok(code)
}

async fn wait_for_leader(directory: &Directory, node_id: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
    loop {
        if let Some(handles) = directory.raft() {
            let mut metrics = handles.raft.metrics();
            let leader = metrics.borrow().current_leader;
            if leader == Some(node_id) {
                return Ok(());
            }
            let _ = tokio::time::timeout_at(deadline, metrics.changed()).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("node {node_id} did not become leader within {LEADER_WAIT_MS_MAX} ms");
        }
    }
}
